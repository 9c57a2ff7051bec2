"""sdopt.check() as a downstream repo meets it: the DESIGN §1 file (examples/), run on the embedded
model with small settings, before and after its baselines exist, and with impossible gates."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAST

EXAMPLE = (Path(__file__).resolve().parent.parent / "examples" / "test_optimizations_hold.py").read_text()
QUIET = ("-W", "ignore::pytest.PytestAssertRewriteWarning")


@pytest.fixture
def downstream(pytester):
    """The example file in a fresh repo; run(*args) runs it the way its README says."""
    pytester.makepyfile(test_optimizations_hold=EXAMPLE)

    def run(*args):
        return pytester.runpytest("-p", "pytest_sdopt", *QUIET, *FAST, *args)

    return run


def recorded_command(result) -> list[str]:
    lines = result.stdout.lines
    index = next(i for i, line in enumerate(lines) if line.strip() == "Record it with:")
    command = shlex.split(lines[index + 1].strip())
    assert command[0] == "pytest"
    return command[1:]


def baseline_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "baselines").rglob("*")) if p.is_file()}


def test_before_baselines_exist_each_test_fails_and_names_the_command_that_records_them(downstream, pytester):
    result = downstream()
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines([
        "*sdopt: stack 'fp16' failed 1 of 3 gates (tiny, 64x64, 2 steps, seed 1, cpu):",
        "*FAIL  min_ssim*limit >= 0.85 against fp32's baseline",
        "*no baseline image of 'fp32' for this scenario (expected baselines/tiny/64x64-2steps-seed1-cfg1.5-p*/fp32.png).",
        "*Record it with:",
        "*pytest -p pytest_sdopt * 'test_optimizations_hold.py::test_optimizations_hold?fp16?' --sdopt-update-baselines",
        "*n/a   max_vram            limit <= 5.10 GB: no CUDA allocator on a cpu run",
    ])
    assert not (pytester.path / "baselines").exists()  # a failing check never writes a baseline

    # The named command is exact: it records what this one test needs (fp16 and its reference, fp32) ...
    pytester.runpytest(*recorded_command(result)).assert_outcomes(passed=1)
    assert sorted(Path(name).name for name in baseline_files(pytester.path)) == [
        "fp16.json", "fp16.png", "fp32.json", "fp32.png", "scenario.json"]
    # ... after which the whole file passes.
    downstream().assert_outcomes(passed=4)


def test_after_update_baselines_it_passes_and_plain_runs_never_touch_the_baselines(downstream, pytester):
    downstream("--sdopt-update-baselines").assert_outcomes(passed=4)
    stored = baseline_files(pytester.path)
    assert {Path(name).stem for name in stored} == {"fp16", "fp16+vae_tiling", "fp16+tome", "fp32", "scenario"}
    result = downstream()
    result.assert_outcomes(passed=4)
    assert baseline_files(pytester.path) == stored
    result.stdout.fnmatch_lines(["*= sdopt =*", "test * stack * device * it/s * SSIM * verdict",
                                 "test_optimizations_hold?fp16? * fp16 * cpu * pass (n/a: max_vram)"])


def test_impossible_gates_fail_with_one_listing_of_every_violated_gate(downstream):
    downstream("--sdopt-update-baselines").assert_outcomes(passed=4)
    result = downstream("--sdopt-min-its", "1e9", "--sdopt-max-host-memory", "1MB", "-k", "fp16+tome")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*sdopt: stack 'fp16+tome' failed 2 of 5 gates (tiny, 64x64, 2 steps, seed 1, cpu):",
        "*FAIL  max_host_memory     measured * MB, limit <= 1.00 MB",
        "*FAIL  min_its             measured * it/s, limit >= 1e+09 it/s",
        "*n/a   max_vram*",
        "*pass  min_ssim            measured SSIM 0.9* against fp32's baseline, limit >= 0.85",
        "*pass  min_self_ssim       measured SSIM 1.0000 against its own baseline, limit >= 0.95",
    ])
    result.stdout.fnmatch_lines(["*fp16+tome*FAIL: max_host_memory, min_its (n/a: max_vram)"])


def test_a_baseline_replaced_by_noise_fails_and_leaves_actual_baseline_and_diff_images(downstream, pytester):
    downstream("--sdopt-update-baselines").assert_outcomes(passed=4)
    reference = next((pytester.path / "baselines").rglob("fp32.png"))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(reference)
    result = downstream("-k", "fp16 and not tome and not vae")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*FAIL  min_ssim            measured SSIM 0.0* against fp32's baseline, limit >= 0.85",
        "*actual:   .sdopt/test_optimizations_hold.py--test_optimizations_hold?fp16?/fp16/actual.png",
        "*baseline: .sdopt/*/fp16/baseline.png",
        "*diff:     .sdopt/*/fp16/diff.png",
        "images of failed comparisons: .sdopt/",
    ])
    folder = pytester.path / ".sdopt" / "test_optimizations_hold.py--test_optimizations_hold[fp16]" / "fp16"
    assert np.array_equal(np.asarray(Image.open(folder / "baseline.png")), noise)
    assert Image.open(folder / "diff.png").size == (64, 64)
    assert Image.open(folder / "actual.png").size == (64, 64)
    # The stored baseline was reported, not repaired: only --sdopt-update-baselines writes it.
    assert np.array_equal(np.asarray(Image.open(reference)), noise)


def test_a_baseline_of_another_size_is_its_own_error(downstream, pytester):
    downstream("--sdopt-update-baselines", "-k", "reference").assert_outcomes(passed=1)
    reference = next((pytester.path / "baselines").rglob("fp32.png"))
    Image.new("RGB", (32, 64)).save(reference)
    result = downstream("-k", "reference")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL  min_ssim*",
                                 "*the baseline image is 32x64 but this run drew 64x64; images of different sizes "
                                 "are not compared (baseline baselines/*/fp32.png)*"])


def test_a_stored_speed_figure_catches_an_unmistakable_slowdown(run_sdopt, pytester, fake_timing):
    """The slowdown is injected at the timing boundary (tests/conftest.py FAKE_TIMING: steps read 100x
    longer), never measured against another day. It once slept a second per step and failed under load:
    with another process on one of the 2 cores, a 2-thread torch run's steps took as long as that sleep
    (each parallel region waits for the descheduled thread), so the recording read 0.47 it/s too."""
    source = """
        def test_speed(sdopt):
            sdopt.check(sdopt.run("fp32"))
    """
    runs = ("--sdopt-repeats", "2")  # a FAIL needs two runs on each side
    fake_timing(0.01, 0.004)
    run_sdopt(source, "--sdopt-update-baselines", *runs).assert_outcomes(passed=1)
    fake_timing(1.0, 0.004)
    # No settling: a check that does not pass would otherwise re-measure for 30 s before its verdict.
    result = run_sdopt(source, "--sdopt-max-its-drop", "50%", "--sdopt-settle", "0", *runs)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL  max_its_drop        measured 1.00 it/s (best of 2 runs); relative to the "
                                 "machine's speed, -99.0% ± *% vs stored (median of 2 runs), limit <= 50% slower than stored"])
    # One run on a side is not enough to fail, however slow it reads: it may be the moment the machine was taken.
    one = run_sdopt(source, "--sdopt-max-its-drop", "50%", "--sdopt-settle", "0", "--sdopt-repeats", "1")
    one.assert_outcomes(passed=1)
    one.stdout.fnmatch_lines(["*INCONCLUSIVE  max_its_drop*-99.0%*", "*inconclusive: this run's figure rests on 1 run, "
                              "and one run cannot tell a slower code from a moment the machine was taken from it; "
                              "to settle it: --sdopt-repeats 3 or more*"])
    # Switched off, the same run passes: the failure came from the stored figure alone.
    run_sdopt(source, *runs).assert_outcomes(passed=1)


def test_a_stored_memory_figure_catches_growth(run_sdopt, pytester):
    """The growth is injected: 400 MB held while the UNet runs, unmistakable against the run's own ~20 MB,
    whatever else the machine does. Stored figures are the run's own, so the order of tests does not matter."""
    source = """
        import numpy as np
        import pytest
        from diffusers import UNet2DConditionModel

        @pytest.fixture
        def bloated(request, monkeypatch):
            if request.config.getoption("sdopt_update_baselines"):
                return
            original = UNet2DConditionModel.forward
            def forward(self, *args, **kwargs):
                held = np.ones(400 * 2**20, dtype=np.uint8)  # touched: resident, not only reserved
                try:
                    return original(self, *args, **kwargs)
                finally:
                    del held
            monkeypatch.setattr(UNet2DConditionModel, "forward", forward)

        def test_memory(sdopt, bloated):
            sdopt.check(sdopt.run("fp32"))
    """
    run_sdopt(source, "--sdopt-update-baselines").assert_outcomes(passed=1)
    entry = next(iter(json.loads(next((pytester.path / "baselines").rglob("fp32.json")).read_text())["metrics"].values()))
    assert 0 < entry["run_host_bytes"] < entry["peak_host_bytes"]  # the run's own, beside the process peak
    result = run_sdopt(source, "--sdopt-max-memory-growth", "50%")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL  max_memory_growth   measured host (the run's own) * MB vs * MB stored (+*%), "
                                 "limit <= 50% more than stored"])


def test_host_memory_figures_do_not_depend_on_the_tests_before(run_sdopt, pytester):
    """Recorded alone, then checked as the last of a file: the run's own figure is compared, not a process
    peak that grew with the tests before it (503 MB first, 585 MB by the 11th, issue 15)."""
    source = """
        import pytest

        @pytest.mark.parametrize("stack", ["bf16", "tome", "fp16", "vae_tiling", "fp32"])
        def test_memory(sdopt, stack):
            sdopt.check(sdopt.run(stack), min_ssim=None, min_self_ssim=None)
    """
    run_sdopt(source, "--sdopt-update-baselines", "-k", "fp32").assert_outcomes(passed=1, deselected=4)
    result = run_sdopt(source, "--sdopt-max-memory-growth", "10%", "--sdopt-json", "out.json")
    result.assert_outcomes(passed=5)
    fp32 = next(run for run in json.loads((pytester.path / "out.json").read_text())["runs"] if run["stack"] == "fp32")
    growth = next(g for g in fp32["gates"] if g["gate"] == "max_memory_growth")
    assert growth["status"] == "pass" and growth["measured"].startswith("host (the run's own)")


def test_check_rejects_what_is_not_a_run_result_and_unknown_gates(run_sdopt):
    result = run_sdopt("""
        def test_not_a_result(sdopt):
            sdopt.check("fp16")

        def test_unknown_gate(sdopt):
            sdopt.check(sdopt.run("fp32"), max_ram="1GB")

        def test_bad_limit(sdopt):
            sdopt.check(sdopt.run("fp32"), max_vram="five gigs")
    """)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines_random([
        "*sdopt: sdopt.check() takes the RunResult that sdopt.run() returned, not str.",
        "*sdopt: sdopt.check got unknown keyword(s) max_ram. Valid: max_vram, max_host_memory, min_its, min_ssim, "
        "min_self_ssim, reference, max_its_drop, max_memory_growth, min_speedup, max_memory_ratio, promises.",
        "*sdopt: sdopt.check(max_vram=...) must be a byte count such as*not 'five gigs'.",
    ])
    assert "Traceback" not in result.stdout.str()


def test_baseline_gives_the_stored_image_and_this_devices_metrics(run_sdopt):
    source = """
        import numpy as np

        def test_custom_assertion(sdopt, request):
            before = sdopt.baseline("fp32")
            run = sdopt.run("fp32")
            if request.config.getoption("sdopt_update_baselines"):
                assert not before.exists and before.metrics is None
                sdopt.check(run)
                return
            assert np.array_equal(np.asarray(before.image), np.asarray(run.image))
            assert before.metrics["its"] > 0 and before.metrics["env"]["torch"]
            assert sdopt.baseline("xformers").image is None  # reading needs no GPU
    """
    run_sdopt(source, "--sdopt-update-baselines").assert_outcomes(passed=1)
    run_sdopt(source).assert_outcomes(passed=1)


def test_gates_on_a_marker_that_no_check_applies_are_reported(run_sdopt):
    result = run_sdopt("""
        import pytest

        @pytest.mark.sdopt(min_its=1e9)
        def test_forgot_to_check(sdopt):
            sdopt.run("fp32")
    """)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*SdoptWarning: @pytest.mark.sdopt sets min_its, but the run(s) of fp32 were never "
                                 "checked: call sdopt.check(result) to apply the gates."])
