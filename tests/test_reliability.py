"""Failures that must not take a session down: out of memory (injected at the boundary), the order
of stacks, hostile names, and an xdist matrix merged into one set of results."""

import json
import re

import numpy as np

from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pytest_sdopt.checks.similarity import artifact_folder
from tests.conftest import FAST


def test_out_of_memory_fails_its_own_test_frees_everything_and_the_next_test_runs(run_sdopt):
    result = run_sdopt("""
        import gc
        import pytest
        import torch
        from diffusers import DiffusionPipeline
        from pytest_sdopt.measure.runner import StepClock

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
        "sdopt: stack 'fp32' ran out of memory while measuring (peak host memory * MB of * GB); torch said: CUDA out of "
        "memory. Tried to allocate 20.00 GiB. Its memory was freed and the next tests run normally.*"])
    assert "Traceback" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()
    # the table and the results say so too
    result.stdout.fnmatch_lines(["test_a_stack_too_big * fp32 * FAIL: out of memory while measuring (CUDA out of "
                                 "memory. Tried to allocate 20.00 GiB)"])


def test_out_of_memory_is_torchs_error_the_cpu_allocators_or_pythons_and_nothing_else():
    import torch

    from pytest_sdopt.core.errors import is_out_of_memory

    try:
        torch.empty(2 ** 62, dtype=torch.uint8)  # more than any address space: the CPU allocator refuses it
    except RuntimeError as exc:
        refused = exc
    assert is_out_of_memory(refused)  # a plain RuntimeError in torch 2.13, not torch.OutOfMemoryError
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory.")) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("can't allocate memory"))


# Each phase of a run, run out of memory where it really would: inside the library call (a loaded
# pipeline, diffusers' placement, tomesd's patch, the UNet's forward). Each injection keeps a weak
# reference to what it held, so the next test can tell whether the failure still holds it (a raw
# torch error's frames, kept by pytest as sys.last_value until the next failure, would).
OUT_OF_MEMORY_CONFTEST = """
import gc
import weakref

import pytest
import tomesd
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

HELD = []
TORCH_SAYS = "CUDA out of memory. Tried to allocate 20.00 GiB"


def hold(thing):
    HELD.append(weakref.ref(thing))


@pytest.fixture
def out_of_memory_while(monkeypatch):
    load = DiffusionPipeline.from_pretrained.__func__

    def inject(phase):
        if phase in ("loading", "placing"):
            def loading(cls, *args, **kwargs):
                pipe = load(cls, *args, **kwargs)
                hold(pipe)
                if phase == "loading":  # the weights are in, memory runs out before the call returns
                    raise torch.OutOfMemoryError(TORCH_SAYS)
                pipe.vae.to("meta")  # on a CPU machine every part loads where it runs: one must be elsewhere
                return pipe

            def placing(self, *args, **kwargs):
                raise torch.OutOfMemoryError(TORCH_SAYS)

            monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(loading))
            monkeypatch.setattr(DiffusionPipeline, "to", placing)
        elif phase == "applying":
            def applying(pipe, **kwargs):
                hold(pipe)
                raise torch.OutOfMemoryError(TORCH_SAYS)

            monkeypatch.setattr(tomesd, "apply_patch", applying)
        else:  # measuring: the CPU allocator's own error (a RuntimeError), as a real CPU run gets it
            forward = UNet2DConditionModel.forward

            def measuring(self, *args, **kwargs):
                hold(self)
                torch.empty(2 ** 62, dtype=torch.uint8)  # more than any address space: refused at once
                return forward(self, *args, **kwargs)

            monkeypatch.setattr(UNet2DConditionModel, "forward", measuring)

    return inject


@pytest.fixture
def nothing_held():
    def check():
        gc.collect()
        alive = [ref() for ref in HELD if ref() is not None]
        HELD.clear()
        return not alive
    return check
"""

PHASES = {"loading": ("fp32", "loading the model"), "placing": ("fp32", "placing the pipeline on cpu"),
          "applying": ("tome", "applying 'tome'"), "measuring": ("fp32", "measuring")}


def test_out_of_memory_in_any_phase_fails_its_own_test_naming_the_phase_and_the_next_test_runs(run_sdopt, pytester):
    pytester.makeconftest(OUT_OF_MEMORY_CONFTEST)
    source = "".join(f"""
def test_{name}(sdopt, out_of_memory_while):
    out_of_memory_while({name!r})
    sdopt.run({stack!r})

def test_after_{name}(sdopt, nothing_held):
    assert nothing_held()  # no frame of the failure holds what it allocated
    assert sdopt.run("fp32").image.size == (64, 64)
""" for name, (stack, _phase) in PHASES.items()) + """
def test_pipeline_loading(sdopt, out_of_memory_while):
    out_of_memory_while("loading")
    sdopt.pipeline("fp32")

def test_after_pipeline_loading(sdopt, nothing_held):
    assert nothing_held()
    assert sdopt.pipeline("fp32") is not None
"""
    result = run_sdopt(source, "--sdopt-json", "out.json")
    result.assert_outcomes(failed=5, passed=5)
    said = "CUDA out of memory. Tried to allocate 20.00 GiB. Its memory was freed and the next tests run normally.*"
    for name, (stack, phase) in PHASES.items():
        if name == "measuring":
            said = "[[]enforce fail at *DefaultCPUAllocator: can't allocate memory* Its memory was freed*"
        # the failure is that one paragraph, right under the test's header: no traceback, no chain
        result.stdout.fnmatch_lines([f"*_ test_{name} _*", f"sdopt: stack {stack!r} ran out of memory while {phase} "
                                     f"(peak host memory * of *); torch said: {said}", "*_ test_*"], consecutive=True)
    result.stdout.fnmatch_lines(["*_ test_pipeline_loading _*", "sdopt: stack 'fp32' ran out of memory while loading "
                                 "the model (peak host memory * of *); torch said: CUDA out of memory*", "*= sdopt =*"],
                                consecutive=True)
    output = result.stdout.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output and "site-packages" not in output
    runs = {run["test"]: run for run in json.loads((pytester.path / "out.json").read_text())["runs"]}
    for name, (stack, phase) in PHASES.items():
        assert runs[f"test_{name}"]["outcome"] == "failed" and runs[f"test_{name}"]["stack"] == stack
        assert runs[f"test_{name}"]["note"].startswith(f"out of memory while {phase} (")
        assert runs[f"test_after_{name}"]["outcome"] == "unchecked"  # ran, and was never checked
    assert "test_pipeline_loading" not in runs  # a pipeline handed out is no run


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
    outside = pytester.path.parent / "abs-escape"  # an absolute id aimed at a sibling of the project
    ids = ["../../escaped", str(outside), "..", "..\\..\\win", "odd: *?<>|\"'\t%$~ é ☃",
           "L" * 300 + "1", "L" * 300 + "2"]  # the last two share far more than a folder name holds
    source = f"""
        import pytest

        @pytest.mark.parametrize("name", {ids!r}, ids={ids!r})
        def test_hostile(sdopt, name):
            sdopt.check(sdopt.run("fp32"), min_ssim=0.99)
    """
    run_sdopt(source, "-p", "no:cacheprovider", "--sdopt-update-baselines").assert_outcomes(passed=len(ids))
    # A different stored image makes every comparison fail, and a failed one writes its artifacts
    # (actual, baseline, diff) under the test's own name: the writes these ids aim elsewhere.
    stored = next((pytester.path / "baselines").rglob("fp32.png"))
    Image.fromarray(255 - np.asarray(Image.open(stored).convert("RGB"))).save(stored)
    before = {path for path in pytester.path.parent.rglob("*") if path.is_file()}

    quiet = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
    result = pytester.runpytest("-p", "pytest_sdopt", "-p", "no:cacheprovider", *quiet, *FAST)  # the same file
    result.assert_outcomes(failed=len(ids))

    results_dir = (pytester.path / ".sdopt").resolve()
    written = {path for path in pytester.path.parent.rglob("*") if path.is_file()} - before
    assert written, "the failed comparisons wrote no artifacts"
    outside_results = [path for path in written if not path.resolve().is_relative_to(results_dir)]
    assert not outside_results
    assert not outside.exists() and not (pytester.path.parent / "escaped").exists()
    images = sorted(path for path in written if path.suffix == ".png")
    folders = {path.parent for path in images}
    assert len(folders) == len(ids)  # one folder per test: no two ids share (and overwrite) one
    for folder in folders:
        assert sorted(path.name for path in folder.iterdir()) == ["actual.png", "baseline.png", "diff.png"]
        assert folder.parent.parent == results_dir and len(folder.parent.name) <= 150
    # and the failure messages point at those files
    # (in the failures section: where CI is set, pytest's short summary repeats each whole message)
    failures = result.stdout.str().split("short test summary info")[0]
    shown = re.findall(r"(?:actual|baseline|diff): +(\S+\.png)", failures)
    assert len(shown) == 3 * len(ids)
    assert {(pytester.path / path).resolve() for path in shown} == {path.resolve() for path in images}


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
