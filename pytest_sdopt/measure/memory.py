"""Peak memory of one pipeline call, behind one small interface: start(), stop(), peaks().

- `HostMemoryTracker`: the process's peak RSS during the run. On Linux, writing "5" to
  /proc/self/clear_refs resets the kernel's high-water mark (VmHWM) to the current RSS, so
  the peak read at stop is this run's, not the session's. Elsewhere (or where that write is
  refused) a thread samples RSS with psutil.
- `CudaMemoryTracker`: the caching allocator's peak allocated and peak reserved bytes, after
  emptying the cache and resetting the peak counters.
- `NvmlProcessTracker`: the whole process's device memory as the driver sees it (CUDA
  context and non-PyTorch allocations included), sampled through NVML.

The device trackers take the `torch.cuda` / `pynvml` module as an argument: tests pass fakes
of exactly that boundary, so these paths are tested without a GPU.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Protocol

SAMPLE_INTERVAL_S = 0.005


class MemoryTracker(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def peaks(self) -> dict[str, int | None]: ...


class _Sampler:
    """Calls `read()` every few milliseconds on a thread and keeps the maximum."""

    def __init__(self, read: Any):
        self._read = read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = 0

    def start(self) -> None:
        self.peak = self._read() or 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sdopt-memory-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.peak = max(self.peak, self._read() or 0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._read() or 0)


def _read_status_kib(field: str, status_path: str = "/proc/self/status") -> int | None:
    try:
        with open(status_path, encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_high_water_mark(clear_refs_path: str = "/proc/self/clear_refs",
                          status_path: str = "/proc/self/status") -> bool:
    """Set the kernel's peak RSS of this process (VmHWM) to its RSS now; False where that cannot be done.

    The mark is the process's, not sdopt's: what reads it afterwards (`/usr/bin/time -v`, `wait4`'s
    maxrss, a VmHWM reader) sees the peak since the last reset, not the process's lifetime peak."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(clear_refs_path, "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return _read_status_kib("VmHWM", status_path) is not None


class HostMemoryTracker:
    """Peak RSS of this process between start() and stop()."""

    def __init__(self, clear_refs_path: str = "/proc/self/clear_refs", status_path: str = "/proc/self/status"):
        self._clear_refs = clear_refs_path
        self._status = status_path
        self._sampler: _Sampler | None = None
        self._peak: int | None = None
        self.method = ""

    def start(self) -> None:
        self._peak = None
        if reset_high_water_mark(self._clear_refs, self._status):
            self.method = "VmHWM"
            return
        import psutil

        process = psutil.Process(os.getpid())
        self.method = "psutil sampling"
        self._sampler = _Sampler(lambda: process.memory_info().rss)
        self._sampler.start()

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._peak = self._sampler.peak
            self._sampler = None
        else:
            self._peak = _read_status_kib("VmHWM", self._status)

    def peaks(self) -> dict[str, int | None]:
        return {"peak_host_bytes": self._peak}


class CudaMemoryTracker:
    """The PyTorch CUDA allocator's peaks for one device."""

    def __init__(self, device: Any, cuda: Any = None):
        if cuda is None:
            import torch

            cuda = torch.cuda
        self._cuda = cuda
        self._device = device
        self._allocated: int | None = None
        self._reserved: int | None = None

    def start(self) -> None:
        self._cuda.synchronize(self._device)
        self._cuda.empty_cache()  # what an earlier run cached must not count as this one's reserve
        self._cuda.reset_peak_memory_stats(self._device)

    def stop(self) -> None:
        self._cuda.synchronize(self._device)
        self._allocated = int(self._cuda.max_memory_allocated(self._device))
        self._reserved = int(self._cuda.max_memory_reserved(self._device))

    def peaks(self) -> dict[str, int | None]:
        return {"peak_vram_bytes": self._allocated, "peak_vram_reserved_bytes": self._reserved}


class NvmlProcessTracker:
    """Peak device memory of this process as NVML reports it (sampled: NVML has no peak counter)."""

    def __init__(self, nvml: Any, handle: Any, pid: int | None = None):
        self._nvml = nvml
        self._pid = os.getpid() if pid is None else pid
        self._handle = handle
        self._sampler = _Sampler(self._used)
        self._peak: int | None = None

    def _used(self) -> int:
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except nvml_error(self._nvml):  # a transient NVML error must not end the run; a bug here still shows
            return 0
        return sum(int(p.usedGpuMemory or 0) for p in processes if p.pid == self._pid)

    def start(self) -> None:
        self._sampler.start()

    def stop(self) -> None:
        self._sampler.stop()
        self._peak = self._sampler.peak or None

    def peaks(self) -> dict[str, int | None]:
        return {"peak_device_bytes": self._peak}


def open_nvml() -> Any | None:
    """pynvml, initialised, or None where nvidia-ml-py or a driver is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # NVMLError_LibraryNotFound / DriverNotLoaded: no NVIDIA driver here
        return None
    return pynvml


def nvml_error(nvml: Any) -> Any:
    """The error type NVML raises (every NVMLError_* derives from it); nothing for a stand-in without one."""
    return getattr(nvml, "NVMLError", ())


def nvml_handle(nvml: Any, device_index: int, properties: Any) -> Any:
    """The NVML handle of the CUDA device `device_index`, matched by PCI bus id.

    CUDA's index is not NVML's under CUDA_VISIBLE_DEVICES (how xdist workers get pinned to
    one GPU each), so the index is only the fallback where torch exposes no PCI location.
    """
    bus = getattr(properties, "pci_bus_id", None)
    if bus is not None:
        location = f"{getattr(properties, 'pci_domain_id', 0):08X}:{bus:02X}:{properties.pci_device_id:02X}.0"
        try:
            return nvml.nvmlDeviceGetHandleByPciBusId(location)
        except nvml_error(nvml):  # an NVML that cannot resolve it: fall back to the index
            pass
    return nvml.nvmlDeviceGetHandleByIndex(device_index)


def trackers_for(device: Any) -> list[MemoryTracker]:
    """Host memory always; on CUDA also the allocator and, where NVML works, the process's device memory."""
    trackers: list[MemoryTracker] = [HostMemoryTracker()]
    if device.type == "cuda":
        trackers.append(CudaMemoryTracker(device))
        nvml = open_nvml()
        if nvml is not None:
            import torch

            index = device.index or 0
            handle = nvml_handle(nvml, index, torch.cuda.get_device_properties(index))
            trackers.append(NvmlProcessTracker(nvml, handle))
    return trackers


def restart_high_water_marks(device: Any, cuda: Any = None) -> None:
    """At a run's start: the process's peak counters start again (the kernel's VmHWM; on CUDA the
    allocator's peaks), so a run that runs out of memory before its first measured call (loading,
    placing, applying) reports its own peak, not an earlier run's (see `high_water_mark`)."""
    reset_high_water_mark()
    if getattr(device, "type", None) == "cuda":
        if cuda is None:
            import torch

            cuda = torch.cuda
        cuda.reset_peak_memory_stats(device)


def high_water_mark() -> int | None:
    """The kernel's peak RSS of this process since its last reset (VmHWM; None off Linux)."""
    return _read_status_kib("VmHWM")


def resident_bytes() -> int | None:
    """The process's resident size now (VmRSS; psutil where /proc is not there)."""
    rss = _read_status_kib("VmRSS")
    if rss is not None:
        return rss
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process(os.getpid()).memory_info().rss)


def return_freed_memory_to_the_os() -> None:
    """glibc keeps freed heap for reuse; trim it so the next run's RSS starts from what is really live."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
