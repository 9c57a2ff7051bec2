from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest

# pytester's in-process runs restore sys.modules afterwards, dropping what an inner session
# imported. For torch that means importing its C extension twice (a segfault), and for the
# lazily imported transformers/diffusers submodules new class objects that diffusers' own
# isinstance checks no longer recognise. So the heavy libraries are imported here and kept
# across inner sessions. (The tests that prove the plugin does not import torch run in
# subprocesses, where none of this applies.)
import _pytest.pytester  # noqa: E402
import accelerate  # noqa: F401,E402
import diffusers  # noqa: F401,E402
import tomesd  # noqa: F401,E402
import torch  # noqa: F401,E402
import transformers  # noqa: F401,E402

KEPT_ACROSS_INNER_SESSIONS = ("torch", "diffusers", "transformers", "accelerate", "tomesd", "tokenizers",
                              "safetensors", "huggingface_hub", "PIL", "numpy", "scipy", "skimage", "sympy",
                              "triton", "pytest_sdopt")


class _KeepHeavyModules(_pytest.pytester.SysModulesSnapshot):
    def __init__(self, preserve=None):
        def keep(name: str) -> bool:
            return name.split(".")[0] in KEPT_ACROSS_INNER_SESSIONS or bool(preserve and preserve(name))

        super().__init__(preserve=keep)


@pytest.fixture(autouse=True)
def _keep_heavy_modules(monkeypatch):
    monkeypatch.setattr(_pytest.pytester, "SysModulesSnapshot", _KeepHeavyModules)


from pytest_sdopt.models.sources import TINY_DIR

# Small and quick: 64x64 (8x8 latents), 2 steps (3 PNDM iterations), one measured run. The gates
# relative to stored speed and memory are off: one unwarmed run on a shared 2-core machine varies
# by more than their 10% default, and in-process pytester sessions share one growing process.
# The tests of those two gates switch them back on and inject a change too large to miss.
SMALL = ("--sdopt-size", "64x64", "--sdopt-steps", "2", "--sdopt-repeats", "1", "--sdopt-warmup", "0",
         "--sdopt-max-its-drop", "off", "--sdopt-max-memory-growth", "off")
# The tests that mean CPU say so: with `auto` (the default) a machine with a CUDA GPU would run
# them there, and their CPU figures, messages and skips would not hold.
ON_CPU = ("--sdopt-device", "cpu")
FAST = (*SMALL, *ON_CPU)
NO_CUDA = "no CUDA GPU: torch.cuda.is_available() is False"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`cuda`-marked tests run only where torch sees a CUDA GPU; elsewhere they skip, saying why."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if marked and not torch.cuda.is_available():
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=NO_CUDA))


@functools.cache
def sd3_t5_positions() -> int:
    """How many zero positions this diffusers' SD3 pipeline puts where T5's would be (77 in 0.35, 256 in 0.42)."""
    from pytest_sdopt.models.sources import resolve_model

    pipe = resolve_model("tiny-sd3").load()
    return pipe._get_t5_prompt_embeds(prompt="a circle", device="cpu").shape[1]


def skip_unless_tiny_sd3_draws_as_recorded(model: str) -> None:
    """tiny-sd3 was trained, and its baselines recorded, with 256 zero T5 positions; a diffusers
    that pads otherwise draws another image of the same scene (fp32's SSIM 0.9762 under 0.35.2: an
    upgrade-visible change the upgrade gate reports), so the recorded images cannot be checked there."""
    if model == "tiny-sd3" and sd3_t5_positions() != 256:
        pytest.skip(f"this diffusers pads SD3 without T5 with {sd3_t5_positions()} zero positions, not the 256 "
                    f"tiny-sd3 was trained and its baselines recorded with (diffusers 0.42): another image")


# Stacks that run on a CPU-only machine (compile too, but it is tested on its own: ~75 s).
CPU_STACKS = ("fp32", "fp16", "bf16", "vae_tiling", "vae_slicing", "attention_slicing", "sdpa", "tome",
              "layerwise_fp8", "channels_last", "group_offload", "fp16+vae_tiling+tome:0.3")


@pytest.fixture
def run_sdopt(pytester: pytest.Pytester):
    """Run a real pytest session with the plugin on `source`, with FAST settings (on the CPU) unless overridden."""

    def run(source: str, *args: str, fast: bool = True, subprocess: bool = False,
            device: str | None = "cpu") -> pytest.RunResult:
        """`device`: the --sdopt-device the session runs on (None: the plugin's default, auto)."""
        pytester.makepyfile(test_downstream=source)
        # The outer session imported pytest_sdopt already, so inner ones cannot assert-rewrite it.
        quiet = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
        on = ("--sdopt-device", device) if device else ()
        argv = ("-p", "pytest_sdopt", "-rs", *quiet, *(SMALL if fast else ()), *on, *args)
        return pytester.runpytest_subprocess(*argv) if subprocess else pytester.runpytest(*argv)

    return run


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    """The embedded model copied to a plain folder, as a user's saved pipeline would be."""
    folder = tmp_path / "my-model"
    shutil.copytree(TINY_DIR, folder)
    return folder


# A conftest for inner sessions whose speed verdicts must depend on the test alone: the steps' and
# the reference workload's timings are faked at their boundary (StepClock.step_times,
# ReferenceWorkload.seconds) from SDOPT_FAKE_STEP_S and SDOPT_FAKE_REFERENCE_S, comma-separated
# seconds per measured call (the last value repeats). Everything else runs for real.
FAKE_TIMING = """
import os

import pytest

from pytest_sdopt.measure.machine import ReferenceWorkload
from pytest_sdopt.measure.runner import StepClock


def _series(name):
    return [float(value) for value in os.environ[name].split(",")]


@pytest.fixture(autouse=True)
def fake_timing(monkeypatch):
    if "SDOPT_FAKE_STEP_S" not in os.environ:
        return
    steps, reference = _series("SDOPT_FAKE_STEP_S"), _series("SDOPT_FAKE_REFERENCE_S")
    counts = {"calls": 0, "readings": 0}

    def step_times(self):
        index = counts["calls"]
        counts["calls"] += 1
        return [steps[min(index, len(steps) - 1)]] * len(self.step_ends)

    def seconds(self, repetitions=2):
        index = counts["readings"] // 2  # read before and after each measured call
        counts["readings"] += 1
        return reference[min(index, len(reference) - 1)]

    monkeypatch.setattr(StepClock, "step_times", step_times)
    monkeypatch.setattr(ReferenceWorkload, "seconds", seconds)
"""


@pytest.fixture
def fake_timing(pytester: pytest.Pytester, monkeypatch):
    """Install FAKE_TIMING in the inner project; returns set(step_s, reference_s) for the next session."""
    pytester.makeconftest(FAKE_TIMING)

    def set_timing(step_s, reference_s) -> None:
        join = lambda values: ",".join(str(v) for v in (values if isinstance(values, (list, tuple)) else [values]))
        monkeypatch.setenv("SDOPT_FAKE_STEP_S", join(step_s))
        monkeypatch.setenv("SDOPT_FAKE_REFERENCE_S", join(reference_s))

    return set_timing
