"""scripts/gpu_check.sh and the `cuda` marker, on a machine without a GPU: the check says so and
stops with its own exit code; its Python parts (probes, summary) run through on the embedded model
on the CPU, with the allocator faked at the torch.cuda boundary. tests/test_cuda.py holds the
checks that need the GPU itself."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, NO_CUDA

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
QUIET = ("-W", "ignore::pytest.PytestAssertRewriteWarning")


def probes_module():
    spec = importlib.util.spec_from_file_location("gpu_probes", REPO / "scripts" / "gpu_probes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_check(*args: str, **env: str) -> subprocess.CompletedProcess:
    # CUDA hidden, so the no-GPU path is what runs on a machine with a GPU too.
    environment = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment,
                          timeout=120)


def test_the_cuda_marker_is_registered(request):
    assert any(line.startswith("cuda:") for line in request.config.getini("markers"))


@pytest.mark.parametrize("available", [False, True])
def test_cuda_marked_tests_skip_saying_why_without_a_gpu_and_run_with_one(pytester, monkeypatch, available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)  # the boundary the hook reads
    pytester.makeconftest("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    pytester.makepyfile(test_marked="""
        import pytest

        @pytest.mark.cuda
        def test_on_the_gpu():
            pass

        def test_anywhere():
            pass
    """)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    if available:
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines([f"SKIPPED [[]1[]] test_marked.py:*: {NO_CUDA}"])


def test_without_a_gpu_the_check_says_so_runs_nothing_and_exits_3(tmp_path):
    done = gpu_check(str(tmp_path / "findings"))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "gpu_check: no CUDA GPU: torch.cuda.is_available() is False" in done.stdout
    assert "nothing was run" in done.stdout and "Traceback" not in done.stdout + done.stderr
    findings = tmp_path / "findings"
    summary = (findings / "summary.txt").read_text()
    assert "no CUDA GPU" in summary and "exit 3" in summary
    assert sorted(p.name for p in findings.iterdir()) == ["gpu-check.log", "summary.txt"]


def test_the_check_takes_its_folder_from_out_when_no_argument_is_given(tmp_path):
    done = gpu_check(OUT=str(tmp_path / "out"))
    assert done.returncode == 3
    assert (tmp_path / "out" / "summary.txt").is_file()


def test_without_torch_or_python_the_check_names_what_is_missing_and_exits_4(tmp_path):
    stub = tmp_path / "stub" / "torch"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("stub: no torch here")\n')
    done = gpu_check(str(tmp_path / "a"), PYTHONPATH=str(stub.parent))
    assert done.returncode == 4, done.stdout + done.stderr
    assert "gpu_check: torch is not importable (ImportError: stub: no torch here); nothing was run" in done.stdout
    missing = gpu_check(str(tmp_path / "b"), PYTHON=str(tmp_path / "no-such-python"))
    assert missing.returncode == 4
    assert f"no Python interpreter '{tmp_path / 'no-such-python'}'" in missing.stderr


def test_the_check_takes_one_folder_at_most(tmp_path):
    done = gpu_check(str(tmp_path / "a"), str(tmp_path / "b"))
    assert done.returncode == 2
    assert "one argument at most" in done.stderr and "scripts/gpu_check.sh [FOLDER]" in done.stderr


def test_the_check_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_check_script_passes_shellcheck():
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_the_summary_lists_each_part_and_each_stack_of_a_real_results_file(pytester, tmp_path, capsys):
    findings = tmp_path / "findings"
    pytester.runpytest("-p", "pytest_sdopt", *QUIET, *FAST, "--sdopt-matrix=fp32,bf16,xformers",
                       "--sdopt-update-baselines", "--sdopt-json", str(findings / "tiny-matrix.json"))
    capsys.readouterr()  # the inner session's output
    parts = tmp_path / "parts.tsv"
    parts.write_text("tiny matrix\tpass\t12\t90\tSSIM gates passed\n"
                     "probe sdpa\tTIMEOUT\t25\t25\tstopped after its 25 s budget\n")
    assert probes_module().main(["summary", "--out", str(findings), "--parts", str(parts)]) == 0
    printed = capsys.readouterr().out
    assert printed == (findings / "summary.txt").read_text()
    lines = printed.splitlines()
    assert lines[1].startswith("  torch ") and " on " in lines[1]  # the versions and device the runs had
    assert any(line.split()[:3] == ["tiny", "matrix", "pass"] for line in lines)
    assert any(line.split()[:3] == ["probe", "sdpa", "TIMEOUT"] for line in lines)
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("  fp32") or line.startswith("  bf16")
            or line.startswith("  xformers")}
    assert rows["fp32"][1] == "passed" and rows["fp32"][-1] == "1.0000"
    assert rows["bf16"][1] == "passed" and 0.9 <= float(rows["bf16"][-1]) <= 1.0
    assert rows["xformers"][1] == "skipped" and "xformers is not installed" in " ".join(rows["xformers"])
    assert "  (sd15-random-matrix.json was not written)" in lines
    assert "  precision: no result (did not run, or ran out of its time)" in lines
    assert lines[-1] == "1 of 2 parts passed; not passed: probe sdpa"


class FakeCuda:
    """torch.cuda as the memory tracker uses it: a fixed peak, so the probes' figures are checkable."""

    def __init__(self):
        self.resets = 0

    def synchronize(self, device=None):
        pass

    def empty_cache(self):
        pass

    def reset_peak_memory_stats(self, device=None):
        self.resets += 1

    def max_memory_allocated(self, device=None):
        return 1000 * self.resets

    def max_memory_reserved(self, device=None):
        return 2000 * self.resets


def test_the_probes_run_through_their_own_code_on_the_embedded_model_on_cpu(tmp_path, monkeypatch):
    probes = probes_module()
    cuda = FakeCuda()
    for name, value in dict(DEVICE="cpu", MODEL="tiny", CUDA=cuda, PRECISION_CASES=((64, 7.5),),
                            PRECISION_STEPS=2, SDPA_SIZE=64, SDPA_STEPS=1, TILING_SIZE=64, TILING_STEPS=1).items():
        monkeypatch.setattr(probes, name, value)
    out = tmp_path / "findings"
    out.mkdir()
    for probe in ("precision", "sdpa", "vae-tiling"):
        assert probes.run_probe(probe, out, tmp_path / "work") == 0, json.loads((out / "probes.json").read_text())
    found = json.loads((out / "probes.json").read_text())
    assert list(found) == ["precision", "sdpa", "vae-tiling"]  # one file, a section per probe

    cases = found["precision"]["cases"]
    assert [(c["stack"], c["sdpa_kernel"]) for c in cases] == [
        ("fp32", "default"), ("fp16", "default"), ("bf16", "default"), ("fp16", "math")]
    for case in cases:
        assert case["non_finite_latents_per_step"] == [0, 0, 0]  # PNDM: steps + 1 iterations, all finite
        assert case["decoded_non_finite"] == 0
        if case["stack"] == "fp32":
            assert case["ssim_to_fp32"] == 1.0 and case["relative_distance_to_fp32_per_step"] == []
        else:
            assert len(case["relative_distance_to_fp32_per_step"]) == 3
            assert 0 < case["ssim_to_fp32"] <= 1 and 0 < case["ssim_to_fp32_with_fp32_vae"] <= 1
    assert found["precision"]["verdict"].startswith(("finite and close to fp32", "finite everywhere"))

    sdpa = found["sdpa"]
    assert sdpa["default"]["attention_ops"].get("aten::scaled_dot_product_attention", 0) > 0  # the profiler saw it
    assert sdpa["default"]["processors"]["unet"] == {"AttnProcessor2_0": 20}
    assert sdpa["default"]["peak"] == {"peak_vram_bytes": 1000, "peak_vram_reserved_bytes": 2000}
    # On the embedded model the explicit processors are diffusers' defaults: the stack changes nothing.
    assert "sdpa changed nothing" in sdpa["explicit sdpa"]["skipped"]

    tiling = found["vae-tiling"]
    assert tiling["fp16"]["denoise_peak"]["peak_vram_bytes"] < tiling["fp16"]["decode_peak"]["peak_vram_bytes"]
    assert 0 < tiling["ssim_tiled_to_untiled"] <= 1 and "published 7.6 -> 5.1 GB" in tiling["verdict"]


def test_a_probe_that_fails_records_its_error_and_the_next_one_still_runs(tmp_path, monkeypatch):
    probes = probes_module()

    def broken(work):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(probes.PROBES, "precision", broken)
    monkeypatch.setitem(probes.PROBES, "sdpa", lambda work: {"verdict": "fine"})
    assert probes.run_probe("precision", tmp_path, tmp_path) == 1
    assert probes.run_probe("sdpa", tmp_path, tmp_path) == 0
    found = json.loads((tmp_path / "probes.json").read_text())
    assert found["precision"]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert found["sdpa"]["verdict"] == "fine"
    assert probes.probe_lines(tmp_path / "probes.json")[0].startswith("  precision: FAILED after ")


def test_the_profile_rows_tell_the_sdpa_kernels_from_the_unfused_path():
    rows = probes_module().profile_rows([
        ("aten::scaled_dot_product_attention", 32, 0.0),
        ("aten::_scaled_dot_product_efficient_attention", 32, 0.0),
        ("fmha_cutlassF_f32_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<float>)", 32, 900.0),
        ("ampere_sgemm_128x64_tn", 100, 1200.0),
        ("aten::conv2d", 50, 0.0),
    ])
    assert rows["attention_ops"] == {"aten::scaled_dot_product_attention": 32,
                                     "aten::_scaled_dot_product_efficient_attention": 32}
    assert [k["kernel"][:19] for k in rows["attention_kernels"]] == ["fmha_cutlassF_f32_a"]
    assert [k["kernel"][:12] for k in rows["top_kernels"]] == ["ampere_sgemm", "fmha_cutlass"]
