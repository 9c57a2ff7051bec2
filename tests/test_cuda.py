"""On a real CUDA GPU: what the fakes at the torch.cuda / NVML boundary stand in for elsewhere.

Every test here is marked `cuda`; tests/conftest.py skips them where torch.cuda.is_available()
is False. `scripts/gpu_check.sh` runs them (with the matrices and the probes) in one command.
Nothing here asserts a speed: a GPU's figures belong in the check's JSON, not in a verdict.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from pytest_sdopt.measure.memory import CudaMemoryTracker, NvmlProcessTracker, nvml_handle, open_nvml
from pytest_sdopt.stacks import REGISTRY

pytestmark = pytest.mark.cuda

REPO = Path(__file__).resolve().parent.parent
QUIET = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
MiB = 2**20
OFFLOADS = ("model_cpu_offload", "sequential_cpu_offload", "group_offload", "unet_resident_offload")


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def test_the_vram_trackers_peak_is_the_allocators_for_a_known_allocation():
    device = _device()
    # A larger block before the run: a tracker that did not reset the peak would report it.
    earlier = torch.empty(512 * MiB, dtype=torch.uint8, device=device)
    del earlier
    live = torch.cuda.memory_allocated(device)
    tracker = CudaMemoryTracker(device)
    tracker.start()
    known = torch.empty(256 * MiB, dtype=torch.uint8, device=device)
    known.fill_(1)
    del known
    tracker.stop()
    peaks = tracker.peaks()
    assert peaks["peak_vram_bytes"] == torch.cuda.max_memory_allocated(device)
    # 256 MiB is a whole number of the allocator's 2 MiB blocks: the run's own peak is exactly it.
    assert peaks["peak_vram_bytes"] - live == 256 * MiB, (peaks, live)
    assert peaks["peak_vram_reserved_bytes"] >= peaks["peak_vram_bytes"]


def test_nvml_reads_this_process_memory_on_the_device_torch_uses():
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (pip install nvidia-ml-py): no NVML figures")
    nvml = open_nvml()
    assert nvml is not None, "nvidia-ml-py is installed but nvmlInit() failed: no NVIDIA driver visible to NVML"
    device = _device()
    properties = torch.cuda.get_device_properties(device)
    handle = nvml_handle(nvml, device.index, properties)
    if getattr(properties, "pci_bus_id", None) is not None:  # matched by PCI location, not by index
        assert nvml.nvmlDeviceGetPciInfo(handle).bus == properties.pci_bus_id
    held = torch.empty(1024 * MiB, dtype=torch.uint8, device=device)
    held.fill_(1)
    torch.cuda.synchronize(device)
    tracker = NvmlProcessTracker(nvml, handle)
    tracker.start()
    time.sleep(0.05)
    tracker.stop()
    del held
    peak = tracker.peaks()["peak_device_bytes"]
    assert peak is not None, (
        "NVML lists no compute process with this pid on the device (in a container NVML may see other pids): "
        "peak_device_bytes stays empty here")
    assert peak >= 1024 * MiB, peak  # the held gigabyte, plus the CUDA context


def test_a_real_out_of_memory_fails_its_own_test_and_the_next_test_passes(run_sdopt):
    # The UNet asks for more than the device has free, inside the plugin's measured run.
    result = run_sdopt("""
        import gc

        import torch
        from diffusers import DiffusionPipeline, UNet2DConditionModel

        def test_a_stack_too_big(sdopt, monkeypatch):
            forward = UNet2DConditionModel.forward

            def greedy(self, sample, *args, **kwargs):
                # more than is free, counting what the allocator could hand back from its cache
                free, _ = torch.cuda.mem_get_info(sample.device)
                cached = torch.cuda.memory_reserved(sample.device) - torch.cuda.memory_allocated(sample.device)
                torch.empty(free + cached + 2**30, dtype=torch.uint8, device=sample.device)
                return forward(self, sample, *args, **kwargs)

            monkeypatch.setattr(UNet2DConditionModel, "forward", greedy)
            sdopt.run("fp32")

        def test_the_next_one(sdopt):
            gc.collect()
            assert not [o for o in gc.get_objects() if isinstance(o, DiffusionPipeline)]  # nothing left behind
            assert torch.cuda.memory_allocated() < 64 * 2**20, torch.cuda.memory_allocated()
            result = sdopt.run("fp32")
            assert result.device.startswith("cuda") and result.image.size == (64, 64)
    """, device="cuda")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "*sdopt: stack 'fp32' ran out of memory (peak VRAM reserved * of * on cuda:*); torch said: CUDA out of "
        "memory. Tried to allocate *. Its memory was freed and the next tests run normally.*"])
    assert "Traceback" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()
    result.stdout.fnmatch_lines(["test_a_stack_too_big * fp32 * FAIL: out of memory (CUDA out of memory. Tried to*"])


def test_the_offload_stacks_run_on_the_embedded_model_on_cuda_and_draw_fp32s_image(run_sdopt):
    # --sdopt-strict: an offload that cannot run or changes nothing fails here instead of skipping.
    result = run_sdopt(f"""
        import pytest

        from pytest_sdopt.checks.similarity import compare

        @pytest.mark.parametrize("stack", {list(OFFLOADS)!r})
        def test_offload(sdopt, stack):
            plain = sdopt.run("fp32")
            result = sdopt.run(stack)
            assert result.device == plain.device and result.device.startswith("cuda")
            assert result.peak_vram_bytes and result.peak_vram_reserved_bytes
            ssim = compare(result.image, plain.image).ssim
            print(f"{{stack}}: SSIM {{ssim:.4f}} to fp32; peak VRAM {{result.peak_vram_bytes}} B, "
                  f"fp32 {{plain.peak_vram_bytes}} B")
            assert ssim >= 0.99, ssim
    """, "--sdopt-strict", "-rA", device="cuda")
    print(result.stdout.str()[-4000:])
    result.assert_outcomes(passed=len(OFFLOADS))


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_the_embedded_matrix_on_cuda_passes_its_ssim_gates_against_the_shipped_baselines(pytester):
    """The CPU-recorded images in baselines/tiny/ are what a GPU's run is compared with (compile is left
    to scripts/gpu_check.sh: its compilation alone would take most of this test's time)."""
    stacks = ",".join(name for name in REGISTRY if name != "compile")
    shipped = REPO / "baselines"
    before = _files(shipped)
    result = pytester.runpytest(
        "-p", "pytest_sdopt", *QUIET, "-rs", f"--sdopt-matrix={stacks}", "--sdopt-device", "cuda",
        "--sdopt-baseline-dir", str(shipped), "--sdopt-repeats", "1", "--sdopt-warmup", "1",
        "--sdopt-max-its-drop", "off", "--sdopt-max-memory-growth", "off")
    table = result.stdout.str().split("= sdopt =", 1)[-1]
    print(table)  # SSIM per stack, for the check's log
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("passed", 0) > 0, outcomes
    result.stdout.fnmatch_lines(["fp32 * cuda:* pass*"])  # ran on the GPU, against the CPU's image
    assert _files(shipped) == before  # compared with, never written
