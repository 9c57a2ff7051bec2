"""--sdopt-matrix: one gated test per stack, no test file needed, and the table at the end."""

from importlib.metadata import version
from pathlib import Path

import pytest

from pytest_sdopt.checks.baselines import BaselineStore
from pytest_sdopt.models.sources import resolve_model
from pytest_sdopt.stacks import REGISTRY
from tests.conftest import CPU_STACKS, FAST

REPO = Path(__file__).resolve().parent.parent
QUIET = ("-W", "ignore::pytest.PytestAssertRewriteWarning")


def matrix(pytester, *args):
    return pytester.runpytest("-p", "pytest_sdopt", *QUIET, *FAST, *args)


def test_the_matrix_fails_without_baselines_then_passes_and_prints_its_table(pytester):
    first = matrix(pytester, "--sdopt-matrix=fp32,bf16,xformers", "-rs")
    first.assert_outcomes(failed=2, skipped=1)
    first.stdout.fnmatch_lines(["*Record it with:", "*pytest -p pytest_sdopt * --sdopt-matrix=fp32,bf16,xformers * "
                                                    "--sdopt-update-baselines"])
    matrix(pytester, "--sdopt-matrix=fp32,bf16,xformers", "--sdopt-update-baselines").assert_outcomes(
        passed=2, skipped=1)
    result = matrix(pytester, "--sdopt-matrix=fp32,bf16,xformers", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines([
        "collected 3 items",
        "sdopt-matrix ..s*",
        "*= sdopt =*",
        f"torch {version('torch')}, diffusers {version('diffusers')}, transformers * on *",  # this machine's versions
        "stack * device * it/s * vs ref * peak VRAM * vs ref * peak host * run host * vs ref * SSIM * verdict",
        "fp32 * cpu * 1.00x* * n/a * - * MB * MB * 1.00x * 1.0000 * pass",
        "bf16 * cpu * *x* * n/a * - * MB * MB * *x * 0.9* * pass",
        "xformers * skipped: xformers needs xformers, but xformers is not installed (pip install xformers)",
        "SKIPPED ?1? sdopt-matrix:1: sdopt: stack 'xformers' cannot run here: xformers needs xformers*",
    ])


def test_a_bare_matrix_flag_means_every_registered_optimization(pytester):
    result = pytester.runpytest("-p", "pytest_sdopt", "--sdopt-matrix", "--collect-only", "-q")
    result.stdout.fnmatch_lines([f"sdopt-matrix::{name}" for name in REGISTRY] + [f"{len(REGISTRY)} tests collected*"])


def test_matrix_tests_are_selected_and_deselected_like_any_other(pytester):
    result = pytester.runpytest("-p", "pytest_sdopt", "--sdopt-matrix=fp32,fp16+tome:0.3,bf16", "-k", "tome",
                                "--collect-only", "-q")
    result.stdout.fnmatch_lines(["sdopt-matrix::fp16+tome:0.3", "1/3 tests collected (2 deselected)*"])


def test_the_matrix_alone_leaves_the_repos_tests_out_unless_paths_are_given(pytester):
    pytester.makepyfile(test_repo="def test_repo_suite(): pass")
    alone = pytester.runpytest("-p", "pytest_sdopt", "--sdopt-matrix=fp32", "--collect-only", "-q")
    alone.stdout.fnmatch_lines(["sdopt-matrix::fp32", "1 test collected*"])
    both = pytester.runpytest("-p", "pytest_sdopt", "--sdopt-matrix=fp32", "test_repo.py", "--collect-only", "-q")
    both.stdout.fnmatch_lines_random(["test_repo.py::test_repo_suite", "sdopt-matrix::fp32", "2 tests collected*"])


@pytest.mark.parametrize("value, message", [
    ("fp32,bf17", "--sdopt-matrix: unknown optimization 'bf17' in stack 'bf17'. Did you mean 'bf16'?*"),
    ("fp32,,bf16", "--sdopt-matrix must be 'all' or stacks separated by commas, e.g. fp16,fp16+tome; not 'fp32,,bf16'."),
    ("fp16+bf16", "--sdopt-matrix: *fp16+bf16*"),
])
def test_a_bad_matrix_list_is_a_usage_error(pytester, value, message):
    result = pytester.runpytest("-p", "pytest_sdopt", f"--sdopt-matrix={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-sdopt: {message}"])


def test_the_shipped_baselines_cover_the_main_job_on_the_embedded_model():
    """The README's main job runs the matrix on tiny's default scenario: its images must be in baselines/."""
    tiny = resolve_model("tiny")
    scenario = tiny.scenario("cpu")
    store = BaselineStore(REPO / "baselines", REPO / ".sdopt" / ".locks")
    for stack in [*CPU_STACKS[:-1], "compile"]:
        image = store.read_image(scenario, stack)
        assert image is not None and image.size == tiny.default_size, stack
    # Speed and memory figures belong to the machine that measured them: none are shipped.
    assert not list((REPO / "baselines").rglob("*.json")) or all(
        p.name == "scenario.json" for p in (REPO / "baselines").rglob("*.json"))


def test_the_matrix_with_promises_passes_on_the_embedded_model_and_shows_each_promise(pytester):
    """What CI runs on a fresh clone (`--sdopt-matrix --sdopt-promises`), at the suite's small size:
    every CPU promise the registry makes is kept or inconclusive, none broken, each shown in the table."""
    stacks = "fp32,bf16,attention_slicing,vae_slicing,tome,channels_last"
    result = matrix(pytester, f"--sdopt-matrix={stacks}", "--sdopt-promises", "--sdopt-min-ssim", "off",
                    "--sdopt-min-self-ssim", "off", "--sdopt-settle", "20")
    result.assert_outcomes(passed=6)
    output = result.stdout.str()
    assert "BROKEN" not in output and "promise broken" not in output
    result.stdout.fnmatch_lines_random([
        "*stack * verdict * promises*",
        "attention_slicing * speed *x >= 0.55x *",
        "tome * speed *x >= 0.75x *",
        "channels_last * speed *x >= 0.75x *",
        "vae_slicing * speed *x >= 0.85x *",
    ])
