"""Which device a run uses, and how to wait for it. torch is imported only when called."""

from __future__ import annotations

from typing import Any

from pytest_sdopt.errors import SdoptUsageError


def resolve_device(name: str) -> Any:
    """`auto` -> cuda when available, else cpu; an explicit device must exist here.

    An explicitly requested device that is missing is an error, not a skip: a nightly GPU job
    whose GPU vanished must go red, not quietly skip everything.
    """
    import torch

    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise SdoptUsageError(f"device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SdoptUsageError(
                f"device {name!r} asks for CUDA, but torch.cuda.is_available() is False here "
                f"(torch {torch.__version__}). Use --sdopt-device auto or cpu, or install a CUDA build of torch."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SdoptUsageError(f"device {name!r} does not exist: this machine has {count} CUDA device(s).")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SdoptUsageError(f"device {name!r} asks for MPS, which is not available here. Use auto or cpu.")
    elif device.type != "cpu":
        raise SdoptUsageError(f"device {name!r} is not supported: use auto, cpu, cuda, cuda:N or mps.")
    return device


def synchronize(device: Any) -> None:
    """Wait for queued kernels, so a timestamp means the work before it is done."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
