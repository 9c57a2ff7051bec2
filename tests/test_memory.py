"""Memory trackers: host memory measured for real; CUDA and NVML through fakes of their boundary."""

import os
import time
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import torch

from pytest_sdopt.measure.memory import (CudaMemoryTracker, HostMemoryTracker, NvmlProcessTracker, high_water_mark, nvml_handle, restart_high_water_marks)
from pytest_sdopt.models.sources import resolve_model
from pytest_sdopt.stacks import parse_stack
from pytest_sdopt.measure.runner import run_pipeline
from pytest_sdopt.config.scenario import Measurement, Scenario

MB = 10**6
BALLAST = 256 * MB


def rss() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


def touched(nbytes: int) -> np.ndarray:
    block = np.empty(nbytes, dtype=np.uint8)
    block.fill(1)  # pages count in RSS only once written
    return block


@pytest.mark.parametrize("method", ["VmHWM", "psutil sampling"])
def test_host_tracker_sees_an_allocation_made_during_the_run(method):
    tracker = HostMemoryTracker() if method == "VmHWM" else HostMemoryTracker(clear_refs_path="/nonexistent/clear_refs")
    before = rss()
    tracker.start()
    block = touched(BALLAST)
    time.sleep(0.05)  # let the sampler see it
    del block
    tracker.stop()
    assert tracker.method == method
    assert tracker.peaks()["peak_host_bytes"] >= before + 0.9 * BALLAST


def test_host_tracker_does_not_count_an_earlier_peak():
    block = touched(2 * BALLAST)
    del block  # the session's high-water mark now includes it
    tracker = HostMemoryTracker()
    tracker.start()
    tracker.stop()
    assert tracker.peaks()["peak_host_bytes"] < rss() + 0.5 * BALLAST


def test_a_run_start_restarts_the_peaks_a_run_that_runs_out_of_memory_early_reports():
    """Before its first measured call a run has no tracker: its figure is the high-water mark since it began."""
    block = touched(2 * BALLAST)
    del block  # the process's high-water mark now includes it
    resets = []
    cuda = SimpleNamespace(reset_peak_memory_stats=resets.append)
    restart_high_water_marks(torch.device("cpu"), cuda=cuda)
    assert high_water_mark() < rss() + 0.5 * BALLAST  # the earlier peak no longer counts
    assert resets == []  # a CPU run leaves CUDA alone
    restart_high_water_marks(torch.device("cuda", 0), cuda=cuda)
    assert resets == [torch.device("cuda", 0)]


class FakeCuda:
    """Exactly the torch.cuda functions the tracker uses."""

    def __init__(self):
        self.calls = []
        self.allocated, self.reserved = 0, 0

    def synchronize(self, device):
        self.calls.append("synchronize")

    def empty_cache(self):
        self.calls.append("empty_cache")
        self.reserved = self.allocated

    def reset_peak_memory_stats(self, device):
        self.calls.append("reset_peak_memory_stats")

    def max_memory_allocated(self, device):
        return self.allocated

    def max_memory_reserved(self, device):
        return self.reserved


def test_cuda_tracker_empties_the_cache_and_resets_peaks_before_the_run():
    cuda = FakeCuda()
    tracker = CudaMemoryTracker("cuda:0", cuda=cuda)
    tracker.start()
    assert cuda.calls == ["synchronize", "empty_cache", "reset_peak_memory_stats"]
    cuda.allocated, cuda.reserved = 4_700_000_000, 5_100_000_000
    tracker.stop()
    assert tracker.peaks() == {"peak_vram_bytes": 4_700_000_000, "peak_vram_reserved_bytes": 5_100_000_000}


def test_nvml_tracker_keeps_the_peak_of_this_process_only():
    usage = {"mine": 1_000, "other": 9_999_999}
    nvml = SimpleNamespace(
        nvmlDeviceGetComputeRunningProcesses=lambda handle: [
            SimpleNamespace(pid=4242, usedGpuMemory=usage["mine"]),
            SimpleNamespace(pid=7, usedGpuMemory=usage["other"]),
        ],
    )
    tracker = NvmlProcessTracker(nvml, handle="gpu0", pid=4242)
    tracker.start()
    usage["mine"] = 3_200_000_000
    time.sleep(0.05)
    usage["mine"] = 1_000  # freed before the end: the sampled peak remains
    tracker.stop()
    assert tracker.peaks() == {"peak_device_bytes": 3_200_000_000}


class Hungry:
    """The real pipeline, but each call also holds a known ballast while it runs."""

    def __init__(self, pipe):
        self._pipe = pipe

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        ballast = touched(BALLAST)  # noqa: F841 (held until the call returns)
        return self._pipe(**kwargs)


def test_a_run_reports_host_peaks_that_see_what_the_call_allocated():
    stack = parse_stack("fp32")
    scenario = Scenario("tiny", "cpu", "a red circle", 1, (64, 64), 2, 7.5)
    results = []
    for wrap in (lambda pipe: pipe, Hungry):
        pipe = resolve_model("tiny").load()
        stack.apply(pipe, torch.device("cpu"))
        results.append(run_pipeline(wrap(pipe), stack, scenario, Measurement(1, 0), torch.device("cpu"), {}))
    plain, hungry = results
    assert plain.peak_host_bytes and hungry.peak_host_bytes
    assert hungry.peak_host_bytes - plain.peak_host_bytes >= 0.9 * BALLAST
    assert plain.peak_vram_bytes is None and plain.peak_device_bytes is None  # nothing to measure on CPU


def test_nvml_finds_the_cuda_device_by_pci_bus_id_not_by_index():
    # Under CUDA_VISIBLE_DEVICES=3, CUDA's device 0 is NVML's device 3.
    nvml = SimpleNamespace(
        nvmlDeviceGetHandleByPciBusId=lambda location: f"nvml:{location}",
        nvmlDeviceGetHandleByIndex=lambda index: f"nvml#{index}",
    )
    pinned = SimpleNamespace(pci_domain_id=0, pci_bus_id=0x3B, pci_device_id=0)
    assert nvml_handle(nvml, 0, pinned) == "nvml:00000000:3B:00.0"
    assert nvml_handle(nvml, 0, SimpleNamespace()) == "nvml#0"  # a torch without PCI fields: the index


def test_nvml_errors_are_contained_and_other_errors_are_not():
    """Only NVML's own errors mean "no reading now"; anything else (a bug, a permission problem) shows."""
    class NVMLError(Exception):
        pass

    def failing(error):
        def query(handle):
            raise error
        return query

    transient = SimpleNamespace(NVMLError=NVMLError, nvmlDeviceGetComputeRunningProcesses=failing(NVMLError("busy")))
    assert NvmlProcessTracker(transient, handle="gpu0", pid=1)._used() == 0
    broken = SimpleNamespace(NVMLError=NVMLError, nvmlDeviceGetComputeRunningProcesses=failing(PermissionError("no")))
    with pytest.raises(PermissionError):
        NvmlProcessTracker(broken, handle="gpu0", pid=1)._used()
    pinned = SimpleNamespace(pci_bus_id=0x3B, pci_device_id=0, pci_domain_id=0)
    unresolved = SimpleNamespace(NVMLError=NVMLError, nvmlDeviceGetHandleByPciBusId=failing(NVMLError("not found")),
                                 nvmlDeviceGetHandleByIndex=lambda index: f"nvml#{index}")
    assert nvml_handle(unresolved, 2, pinned) == "nvml#2"  # NVML could not resolve the bus id: the index
