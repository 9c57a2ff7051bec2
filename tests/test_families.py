"""The Stable Diffusion families from folders in diffusers' own dummy-component layout (SD 1.5,
SDXL, SD3 without T5): each loads through `from_pretrained(folder)`, draws deterministically,
runs every CPU stack that can act on it, and skips the rest with the precise reason."""

from __future__ import annotations

import json
import shutil

import pytest

import family_folders
from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.models.families import Denoiser, denoiser_of, BY_PIPELINE
from pytest_sdopt.models.sources import resolve_model
from pytest_sdopt.stacks import parse_stack

BUILDERS = {"sd15": family_folders.sd15, "sdxl": family_folders.sdxl, "sd3": family_folders.sd3}
# What needs a UNet (the attention processors, ToMe, channels-last) and what acts on any pipeline.
# sdpa changes nothing on a UNet under torch 2 (it is the default there), so it skips on every family.
UNET_ONLY = ("sdpa", "attention_slicing", "tome", "channels_last")
ANY_DENOISER = ("fp32", "bf16", "vae_tiling", "vae_slicing", "layerwise_fp8", "group_offload")
# An older diffusers (the CI's oldest leg) has no pipeline-level group offload: that stack skips there.
LACKS_GROUP_OFFLOAD = int(not hasattr(__import__("diffusers").DiffusionPipeline, "enable_group_offload"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build(root / f"dummy-{name}") for name, build in BUILDERS.items()}


@pytest.mark.parametrize("family, pipeline, denoiser", [
    ("sd15", "StableDiffusionPipeline", Denoiser("unet", "UNet2DConditionModel")),
    ("sdxl", "StableDiffusionXLPipeline", Denoiser("unet", "UNet2DConditionModel")),
    ("sd3", "StableDiffusion3Pipeline", Denoiser("transformer", "SD3Transformer2DModel")),
])
def test_a_folder_says_its_family_and_denoiser_without_loading(folders, family, pipeline, denoiser):
    source = resolve_model(str(folders[family]))
    assert (source.family.name, source.pipeline_class_name(), source.denoiser) == (family, pipeline, denoiser)
    assert source.default_size == (64, 64)  # the denoiser's sample size (32) times the VAE's factor (2)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3"])
def test_each_family_runs_its_stacks_draws_deterministically_and_skips_what_cannot_act(run_sdopt, folders, family):
    stacks = ANY_DENOISER + UNET_ONLY
    result = run_sdopt(f"""
        import numpy as np
        import pytest

        @pytest.mark.parametrize("stack", {list(stacks)!r})
        def test_stack(sdopt, stack):
            first = sdopt.run(stack)
            assert first.image.size == (64, 64)
            if stack == "fp32":
                again = sdopt.run(stack)
                assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    """, "--sdopt-model", str(folders[family]))
    name = folders[family].name  # a folder is named by its own name, not its path
    if family == "sd3":
        result.assert_outcomes(passed=len(ANY_DENOISER) - LACKS_GROUP_OFFLOAD,
                               skipped=len(UNET_ONLY) + LACKS_GROUP_OFFLOAD)
        result.stdout.fnmatch_lines_random([
            f"*stack 'tome' cannot run here: tome needs a UNet; {name}'s denoiser is a transformer "
            f"(SD3Transformer2DModel)",
            f"*stack 'sdpa' cannot run here: sdpa needs a UNet; {name}'s denoiser is a transformer*",
            f"*stack 'channels_last' cannot run here: channels_last needs a UNet; {name}'s denoiser*",
        ])
    else:
        result.assert_outcomes(passed=len(stacks) - 1 - LACKS_GROUP_OFFLOAD, skipped=1 + LACKS_GROUP_OFFLOAD)
        result.stdout.fnmatch_lines(["*stack 'sdpa' cannot run here: sdpa changed nothing: every attention layer "
                                     "already used AttnProcessor2_0*"])


def test_sdxl_takes_its_own_call_arguments(run_sdopt, folders):
    result = run_sdopt("""
        def test_second_prompt(sdopt):
            result = sdopt.run("fp32", prompt_2="a green square", negative_prompt_2="blurry")
            assert result.scenario.call_arguments == {"negative_prompt_2": "blurry", "prompt_2": "a green square"}
    """, "--sdopt-model", str(folders["sdxl"]))
    result.assert_outcomes(passed=1)


def test_sdxl_runs_img2img_and_inpainting_and_sd3_says_it_does_not(run_sdopt, folders):
    source = """
        import pytest

        @pytest.mark.parametrize("task", ["img2img", "inpaint"])
        def test_task(sdopt, task):
            result = sdopt.run("vae_tiling", task=task, negative_prompt_2="blurry", strength=0.75)
            assert result.image.size == (64, 64)
    """
    run_sdopt(source, "--sdopt-model", str(folders["sdxl"])).assert_outcomes(passed=2)
    refused = run_sdopt(source, "--sdopt-model", str(folders["sd3"]))
    refused.assert_outcomes(failed=2)
    refused.stdout.fnmatch_lines(["*task 'img2img' runs on SD 1.5 and SDXL models; dummy-sd3 is SD3."])


def test_a_pipeline_class_sdopt_does_not_run_is_a_usage_error_naming_the_supported_ones(folders, tmp_path):
    img2img = shutil.copytree(folders["sd15"], tmp_path / "an-upscaler-folder")
    index = json.loads((img2img / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionUpscalePipeline"
    (img2img / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(SdoptUsageError) as error:
        resolve_model(str(img2img))
    assert str(error.value).startswith(
        f"model {str(img2img)!r} is a StableDiffusionUpscalePipeline (its model_index.json), which pytest-sdopt does not "
        f"run; it runs these pipeline classes: StableDiffusionPipeline (sd15), StableDiffusionXLPipeline (sdxl), "
        f"StableDiffusion3Pipeline (sd3), and the img2img and inpainting pipelines of SD 1.5 and SDXL "
        f"(StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionXLImg2ImgPipeline, "
        f"StableDiffusionXLInpaintPipeline).")


def test_a_denoiser_class_sdopt_does_not_know_runs_only_what_needs_nothing_of_it():
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["my_library", "MyUNet"]}
    denoiser = denoiser_of(index, BY_PIPELINE["StableDiffusionPipeline"])
    assert denoiser == Denoiser(None, "MyUNet")
    assert parse_stack("fp16+vae_tiling+group_offload").unmet_by_model("mine", denoiser) is None
    assert str(parse_stack("fp16+tome").unmet_by_model("mine", denoiser)) == (
        "tome needs a UNet; mine's denoiser is a MyUNet, which sdopt does not know")
