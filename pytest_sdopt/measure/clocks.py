"""How the step clock marks a moment of a pipeline call: a host timestamp, or a CUDA event.

A host timestamp only means "the work before it is done" after the device is synchronized, and
synchronizing at every step stalls the queue: the host waits for the GPU to drain, then the GPU
waits for the host to launch the next step's first kernels. So on CUDA a mark is an event
recorded on the run's stream, which stalls nothing: the call runs as it would unmeasured, and
the marks become host seconds once, after the call's final synchronize. (On a host-bound H200
the overhead benchmark could not tell the two apart within its noise, 1.01-1.08x either way over
5-7 pairs; the event clock is kept because it cannot perturb what it measures.) On CPU and MPS
a mark is `time.perf_counter()` after a synchronize, which on CPU is free.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from pytest_sdopt.measure.devices import synchronize


class Marks(Protocol):
    def start(self) -> float: ...  # the call's start in host seconds (the device is idle then)

    def mark(self) -> Any: ...  # a moment, cheap to take

    def end(self) -> float: ...  # waits for the device; the call's end in host seconds

    def seconds(self, mark: Any) -> float: ...  # a mark in host seconds; valid after end()


class HostMarks:
    """`perf_counter` after a synchronize: every mark waits for the device."""

    def __init__(self, device: Any):
        self.device = device

    def start(self) -> float:
        return self.mark()

    def mark(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def end(self) -> float:
        return self.mark()

    def seconds(self, mark: float) -> float:
        return mark


class CudaEventMarks:
    """CUDA events on the device's current stream, read against one event recorded at the start."""

    def __init__(self, device: Any, cuda: Any = None):
        if cuda is None:
            import torch

            cuda = torch.cuda
        self.device, self.cuda = device, cuda
        self._origin: Any = None
        self._origin_s = 0.0

    def _event(self) -> Any:
        event = self.cuda.Event(enable_timing=True)
        event.record(self.cuda.current_stream(self.device))
        return event

    def start(self) -> float:
        # The device is idle after the synchronize, so the origin event fires as it is recorded.
        self.cuda.synchronize(self.device)
        self._origin = self._event()
        self._origin_s = time.perf_counter()
        return self._origin_s

    def mark(self) -> Any:
        return self._event()

    def end(self) -> float:
        self.cuda.synchronize(self.device)
        return time.perf_counter()

    def seconds(self, mark: Any) -> float:
        return self._origin_s + self._origin.elapsed_time(mark) / 1000.0  # elapsed_time is in ms


def marks_for(device: Any) -> Marks:
    return CudaEventMarks(device) if getattr(device, "type", None) == "cuda" else HostMarks(device)
