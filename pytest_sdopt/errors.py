"""The ways sdopt input can be wrong or incomplete, kept apart from torch so the plugin can raise them early."""


class SdoptUsageError(ValueError):
    """Bad input from the user (option, marker, stack, model): one paragraph that names the fix.

    The plugin turns it into a pytest usage error at configure time, or a test failure
    without a traceback when it is found while a test runs.
    """


class StackUnsupported(Exception):
    """A valid stack that cannot run here (no CUDA, a missing package or diffusers API).

    The plugin turns it into a skip with this exact reason, or a failure under --sdopt-strict.
    """

    def __init__(self, optimization: str, reason: str):
        # reason is a verb phrase: "needs a CUDA device (this run is on cpu)"
        super().__init__(f"{optimization} {reason}")
        self.optimization = optimization
        self.reason = reason


class RunOutOfMemory(Exception):
    """A run exhausted its device's memory; the message has the peak reached and the ceiling."""


class SdoptWarning(UserWarning):
    """Something a test asked for did not happen (gates set on a marker that no check applied)."""
