"""Settings: the one table of every option, ini key and marker keyword, its parsers, the values a
run and a check resolve to (scenario, measurement, limits) and the names shared by every layer."""
