"""The orchestration: the session's shared state, and one test's runs and checks end to end."""
