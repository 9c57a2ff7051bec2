"""The ways sdopt input can be wrong or incomplete, kept apart from torch so the plugin can raise them early."""

import re
import sys


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
    """A run exhausted its device's memory; the message has the phase, the peak reached and the ceiling."""


class PipelineCallFailed(Exception):
    """The pipeline's own call raised (not out of memory): one paragraph naming the error, where in
    which library it was raised, the call arguments sdopt passed through and the versions, instead
    of a traceback through diffusers' internals."""


def where_raised(exc: BaseException) -> str:
    """`diffusers/pipelines/.../pipeline_x.py:123 in encode_prompt`: the innermost frame, from the
    library's folder down (site-packages and the user's paths left out)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    path = frame.filename.replace("\\", "/")
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{frame.lineno} in {frame.name}"


class OutOfMemoryWhile(Exception):
    """Memory ran out while a run's pipeline was built: loading it, placing it on the device, or
    applying one optimization (`phase` says which, as "loading the model").

    It carries torch's text only, never torch's exception: that exception's frames hold every
    tensor allocated so far, so it is dropped where it is caught and this one raised after.
    """

    def __init__(self, phase: str, error: str):
        super().__init__(f"out of memory while {phase}: {error}")
        self.phase = phase
        self.error = error


# The CPU allocator of torch (2.13 included) raises a plain RuntimeError, not OutOfMemoryError.
_CPU_ALLOCATOR_OUT = re.compile(r"DefaultCPUAllocator: (can't allocate|not enough) memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA's allocator), the CPU allocator's RuntimeError, or Python's MemoryError."""
    torch = sys.modules.get("torch")  # a torch error needs torch loaded: never import it to ask
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and bool(_CPU_ALLOCATOR_OUT.search(str(exc))))


def first_line(exc: BaseException) -> str:
    """What torch said, in one line (its CUDA message goes on about allocator settings)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "out of memory"


class SdoptWarning(UserWarning):
    """Something a test asked for did not happen (gates set on a marker that no check applied)."""
