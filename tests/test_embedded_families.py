"""The embedded SDXL and SD3 models (`tiny-xl`, `tiny-sd3`) as users run them: the matrix against
the shipped baselines, determinism, the stacks that cannot act and why, img2img and inpainting
with gates, the pipeline's own arguments in the image and the key, and `sdopt compare`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_sdopt.checks.baselines import BaselineStore
from pytest_sdopt.config.call_args import key_part
from pytest_sdopt.models.sources import resolve_model
from tests.conftest import FAST, skip_unless_tiny_sd3_draws_as_recorded

REPO = Path(__file__).resolve().parent.parent
QUIET = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
# What the matrix runs on each at its default scenario on a CPU, and what skips there and why.
# SDXL's UNet has no attention at its highest resolution, where ToMe merges by default
# (max_downsample=1), so tomesd patches blocks that merge nothing on it, as on the real SDXL.
MATRIX_RUNS = {
    "tiny-xl": ("fp32", "fp16", "bf16", "vae_tiling", "vae_slicing", "attention_slicing", "layerwise_fp8",
                "channels_last", "group_offload", "compile"),
    "tiny-sd3": ("fp32", "fp16", "bf16", "vae_tiling", "vae_slicing", "layerwise_fp8", "group_offload", "compile"),
}
MATRIX_SKIPS = {
    "tiny-xl": ("*stack 'sdpa' cannot run here: sdpa changed nothing: every attention layer already used "
                "AttnProcessor2_0*",
                "*stack 'tome' cannot run here: tome *"),
    "tiny-sd3": ("*stack 'tome' cannot run here: tome needs a UNet; tiny-sd3's denoiser is a transformer "
                 "(SD3Transformer2DModel)*",
                 "*stack 'sdpa' cannot run here: sdpa needs a UNet; tiny-sd3's denoiser is a transformer*",
                 "*stack 'attention_slicing' cannot run here: attention_slicing needs a UNet*",
                 "*stack 'channels_last' cannot run here: channels_last needs a UNet*"),
}


@pytest.mark.parametrize("model", MATRIX_RUNS)
def test_the_shipped_baselines_cover_each_embedded_models_default_scenario(model):
    """`pytest -p pytest_sdopt --sdopt-model tiny-xl --sdopt-matrix` on a fresh clone reads these."""
    source = resolve_model(model)
    store = BaselineStore(REPO / "baselines", REPO / ".sdopt" / ".locks")
    for stack in MATRIX_RUNS[model]:
        image = store.read_image(source.scenario("cpu"), stack)
        assert image is not None and image.size == source.default_size == (128, 128), stack


@pytest.mark.parametrize("model", MATRIX_RUNS)
def test_the_matrix_passes_on_each_embedded_family_against_the_shipped_baselines(pytester, model):
    """At the model's default scenario, as the README's command runs it; the SSIM gates read baselines/.
    (compile and the offloads are left out here for time: CI runs the whole matrix on each.)"""
    skip_unless_tiny_sd3_draws_as_recorded(model)
    stacks = [s for s in MATRIX_RUNS[model] if s not in ("compile", "group_offload", "fp16")]
    skipped = "sdpa,tome,channels_last" if model == "tiny-sd3" else "sdpa,tome"
    result = pytester.runpytest("-p", "pytest_sdopt", *QUIET, "-rs", "--sdopt-model", model, "--sdopt-device", "cpu",
                                f"--sdopt-matrix={','.join(stacks)},{skipped}", "--sdopt-repeats", "1",
                                "--sdopt-warmup", "0", "--sdopt-baseline-dir", str(REPO / "baselines"))
    result.assert_outcomes(passed=len(stacks), skipped=len(skipped.split(",")))
    result.stdout.fnmatch_lines_random([*MATRIX_SKIPS[model][:2], "*vae_tiling * pass *"])


@pytest.mark.parametrize("model", MATRIX_RUNS)
def test_each_embedded_family_draws_deterministically_and_seeds_differ(run_sdopt, model):
    result = run_sdopt("""
        import numpy as np

        def test_again(sdopt):
            first, again = sdopt.run("fp32"), sdopt.run("fp32")
            other = sdopt.run("fp32", seed=2)
            assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
            assert np.abs(np.asarray(first.image, float) - np.asarray(other.image, float)).mean() > 1.0
    """, "--sdopt-model", model)
    result.assert_outcomes(passed=1)


def test_tiny_xl_runs_img2img_and_inpainting_gated_against_their_own_baselines(run_sdopt, pytester):
    source = """
        import pytest

        @pytest.mark.parametrize("task", ["img2img", "inpaint"])
        def test_task(sdopt, task):
            result = sdopt.run("vae_slicing", task=task, strength=0.75)
            assert result.image.size == (64, 64) and result.scenario.task == task
            sdopt.check(result, min_ssim=0.95, max_host_memory="8GB")
    """
    recorded = run_sdopt(source, "--sdopt-model", "tiny-xl", "--sdopt-update-baselines")
    recorded.assert_outcomes(passed=2)
    keys = sorted(path.name for path in (pytester.path / "baselines" / "tiny-xl").iterdir())
    assert [key.split("-")[0] for key in keys] == ["img2img", "inpaint"], keys
    assert all("-a" in key for key in keys), keys  # the init image's, the mask's and strength's hash
    gated = run_sdopt(source, "--sdopt-model", "tiny-xl", "--sdopt-json", "out.json")
    gated.assert_outcomes(passed=2)
    runs = json.loads((pytester.path / "out.json").read_text())["runs"]
    assert sorted(run["scenario"]["task"] for run in runs) == ["img2img", "inpaint"]
    assert all(run["ssim"] is not None and run["ssim"] >= 0.95 for run in runs), runs  # compared, not skipped


def test_tiny_sd3_takes_its_own_arguments_into_the_image_and_the_key_and_names_what_it_accepts(run_sdopt, pytester):
    result = run_sdopt("""
        import numpy as np
        import pytest

        def test_negative(sdopt):
            plain = sdopt.run("fp32")
            negative = sdopt.run("fp32", negative_prompt="a red circle", max_sequence_length=77)
            assert negative.scenario.call_arguments == {"max_sequence_length": 77, "negative_prompt": "a red circle"}
            assert np.abs(np.asarray(plain.image, float) - np.asarray(negative.image, float)).mean() > 1.0
            sdopt.check(negative, min_ssim=None, min_self_ssim=0.99)

        def test_unknown(sdopt):
            sdopt.run("fp32", prompt_4="a square")
    """, "--sdopt-model", "tiny-sd3", "--sdopt-update-baselines")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*unknown keyword(s) prompt_4: neither an sdopt setting nor an argument of "
                                 "StableDiffusion3Pipeline.__call__*prompt_3*"])
    folders = [path.name for path in (pytester.path / "baselines" / "tiny-sd3").iterdir()]
    expected = key_part((("max_sequence_length", 77), ("negative_prompt", "a red circle")))
    assert len(folders) == 1 and folders[0].endswith(expected), folders


HOLD = """
import pytest

@pytest.mark.parametrize("stack", ["fp32", "vae_tiling"])
def test_hold(sdopt, stack):
    sdopt.check(sdopt.run(stack), min_ssim=None)
"""


@pytest.mark.parametrize("model", MATRIX_RUNS)
def test_sdopt_compare_reads_each_familys_runs(tmp_path, model):
    """Two sessions on the model, compared: the same figures are no regression; a replaced image is one."""
    (tmp_path / "test_hold.py").write_text(HOLD)
    for name in ("old", "new"):
        subprocess.run([sys.executable, "-m", "pytest", "-p", "pytest_sdopt", "-q", *FAST, "--sdopt-model", model,
                        "--sdopt-json", str(tmp_path / name / "results.json"), "-p", "no:cacheprovider"],
                       cwd=tmp_path, check=True, capture_output=True, timeout=600)
    compare = [sys.executable, "-m", "pytest_sdopt.cli", "compare", str(tmp_path / "old"), str(tmp_path / "new"),
               "--fail", "its:100%", "--fail", "host:50%", "--fail", "ssim:0.02"]
    same = subprocess.run(compare, capture_output=True, text=True, timeout=120)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no regression in 2 stacks" in same.stdout
    document = json.loads((tmp_path / "new" / "results.json").read_text())
    assert {run["scenario"]["model"] for run in document["runs"]} == {model}
    image = next((tmp_path / "new").rglob("*vae_tiling*.png"))
    from PIL import Image

    Image.new("RGB", Image.open(image).size, (255, 0, 255)).save(image)
    changed = subprocess.run(compare, capture_output=True, text=True, timeout=120)
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "vae_tiling" in changed.stdout and "ssim" in changed.stdout
