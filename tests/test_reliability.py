"""Failures that must not take a session down: out of memory (injected at the boundary), the order
of stacks, hostile names, and an xdist matrix merged into one set of results."""

import json

from hypothesis import given
from hypothesis import strategies as st

from pytest_sdopt.similarity import artifact_folder
from tests.conftest import FAST


def test_out_of_memory_fails_its_own_test_frees_everything_and_the_next_test_runs(run_sdopt):
    result = run_sdopt("""
        import gc
        import pytest
        import torch
        from diffusers import DiffusionPipeline
        from pytest_sdopt.runner import StepClock

        def test_a_stack_too_big(sdopt, monkeypatch):
            def out_of_memory(self, *args):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            monkeypatch.setattr(StepClock, "on_step_end", out_of_memory)
            sdopt.run("fp32")

        def test_the_next_one(sdopt):
            gc.collect()
            assert not [o for o in gc.get_objects() if isinstance(o, DiffusionPipeline)]  # nothing left behind
            assert sdopt.run("fp32").image.size == (64, 64)
    """)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "sdopt: stack 'fp32' ran out of memory (peak host memory * MB of * GB); torch said: CUDA out of memory. "
        "Tried to allocate 20.00 GiB. Its memory was freed and the next tests run normally.*"])
    assert "Traceback" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()
    # the table and the results say so too
    result.stdout.fnmatch_lines(["test_a_stack_too_big * fp32 * FAIL: out of memory (CUDA out of memory. Tried to "
                                 "allocate 20.00 GiB)"])


def test_stacks_give_the_same_images_in_either_order(run_sdopt):
    result = run_sdopt("""
        import numpy as np

        def test_orders(sdopt):
            first = [sdopt.run(stack) for stack in ("tome", "fp16", "fp32")]
            second = [sdopt.run(stack) for stack in ("fp32", "fp16", "tome")][::-1]
            for a, b in zip(first, second):
                assert a.stack == b.stack
                assert np.array_equal(np.asarray(a.image), np.asarray(b.image)), a.stack
                # host memory: the same within noise, never an earlier run's leftovers on top
                assert abs(a.peak_host_bytes - b.peak_host_bytes) < 0.15 * b.peak_host_bytes, a.stack
    """)
    result.assert_outcomes(passed=1)


@given(st.text(min_size=1, max_size=80), st.sampled_from(["fp16", "fp16+tome:0.3", "bf16+sdpa"]))
def test_no_test_name_writes_outside_the_results_dir(tmp_path_factory, name, stack):
    root = tmp_path_factory.getbasetemp() / "results"
    folder = artifact_folder(root, f"tests/test_x.py::test[{name}]", stack)
    assert folder.resolve().is_relative_to(root.resolve())
    assert folder.parent.parent == root  # exactly <results>/<test>/<stack>


def test_hostile_parametrize_ids_stay_inside_the_results_dir(run_sdopt, pytester):
    result = run_sdopt("""
        import pytest

        @pytest.mark.parametrize("name", ["../../escaped", "/abs/path", "..\\\\win"])
        def test_hostile(sdopt, name):
            sdopt.check(sdopt.run("fp32"), min_ssim=0.99)
    """)
    result.assert_outcomes(failed=3)  # no baseline yet
    written = run_sdopt("""
        import pytest

        @pytest.mark.parametrize("name", ["../../escaped", "/abs/path", "..\\\\win"])
        def test_hostile(sdopt, name):
            sdopt.check(sdopt.run("fp32"), min_ssim=0.99)
    """, "--sdopt-update-baselines")
    written.assert_outcomes(passed=3)
    assert not (pytester.path.parent / "escaped").exists()
    files = [p for p in pytester.path.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(pytester.path.resolve()) for p in files)


def test_an_xdist_matrix_with_two_workers_merges_every_stack_exactly_once(pytester):
    stacks = "fp32,bf16,attention_slicing,vae_slicing,xformers"
    quiet = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
    common = ("-p", "pytest_sdopt", *quiet, *FAST, f"--sdopt-matrix={stacks}")
    pytester.runpytest_subprocess(*common, "--sdopt-update-baselines").assert_outcomes(passed=4, skipped=1)
    result = pytester.runpytest_subprocess(*common, "-n", "2", "--sdopt-json", "merged.json",
                                           "--sdopt-html", "merged.html")
    result.assert_outcomes(passed=4, skipped=1)
    runs = json.loads((pytester.path / "merged.json").read_text())["runs"]
    assert sorted(run["stack"] for run in runs) == sorted(stacks.split(","))
    assert [run["stack"] for run in runs] == stacks.split(",")  # in collection order, not finishing order
    assert (pytester.path / "merged.html").read_text().count("<section") == 5
    result.stdout.fnmatch_lines(["*= sdopt =*", "stack * verdict", "fp32 * pass*", "bf16 * pass*", "attention_slicing * pass*",
                                 "vae_slicing * pass*", "xformers * skipped:*"])
