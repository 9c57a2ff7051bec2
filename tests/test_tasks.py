"""img2img and inpainting (SD 1.5 and SDXL): the task's pipeline derived from the model's components,
a drawn init image and mask unless the run gives its own, gated like text-to-image, and keyed by
the task and the images' hash."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pytest_sdopt.config.call_args import ImageArgument, freeze
from pytest_sdopt.models.tasks import default_image, default_mask, unsupported


def test_img2img_and_inpainting_run_with_drawn_images_gated_against_their_own_baselines(run_sdopt, pytester):
    source = """
        import pytest

        @pytest.mark.parametrize("task", ["img2img", "inpaint"])
        @pytest.mark.parametrize("stack", ["fp32", "tome"])
        def test_task(sdopt, task, stack):
            result = sdopt.run(stack, task=task, strength=0.6)
            assert result.scenario.task == task and result.image.size == (64, 64)
            assert sorted(result.scenario.call_arguments) == (["image", "mask_image", "strength"] if task == "inpaint"
                                                               else ["image", "strength"])
            sdopt.check(result)
    """
    run_sdopt(source, "--sdopt-update-baselines").assert_outcomes(passed=4)
    result = run_sdopt(source, "--sdopt-json=results.json")
    result.assert_outcomes(passed=4)
    folders = sorted(path.name for path in (pytester.path / "baselines" / "tiny").iterdir())
    assert [name.split("-")[0] for name in folders] == ["img2img", "inpaint"], folders
    for folder in folders:
        assert sorted(path.name for path in (pytester.path / "baselines" / "tiny" / folder).iterdir()) == [
            "fp32.json", "fp32.png", "scenario.json", "tome.json", "tome.png"]
        scenario = json.loads((pytester.path / "baselines" / "tiny" / folder / "scenario.json").read_text())
        assert scenario["task"] == folder.split("-")[0]
        assert scenario["call_args"]["image"].startswith("image 64x64 sha256:")
    runs = json.loads((pytester.path / "results.json").read_text())["runs"]
    assert {run["scenario"]["task"] for run in runs} == {"img2img", "inpaint"}
    assert all(gate["status"] != "FAIL" for run in runs for gate in run["gates"])


def test_an_init_image_of_the_runs_own_changes_the_image_the_key_and_the_size(run_sdopt):
    result = run_sdopt("""
        import numpy as np
        from PIL import Image

        def test_own(sdopt):
            drawn = sdopt.run("fp32", task="img2img")
            own = Image.new("RGB", (48, 40), (240, 215, 40))
            given = sdopt.run("fp32", task="img2img", image=own)
            assert given.scenario.size == (48, 40) and given.image.size == (48, 40)
            assert drawn.scenario.call_args != given.scenario.call_args
            assert sdopt.baseline("fp32", task="img2img", image=own).image_path.parent.name != \\
                sdopt.baseline("fp32", task="img2img").image_path.parent.name
    """)
    result.assert_outcomes(passed=1)


def test_a_task_argument_its_pipeline_does_not_take_and_a_bad_task_are_refused(run_sdopt):
    result = run_sdopt("""
        def test_mask_for_img2img(sdopt):
            sdopt.run("fp32", task="img2img", mask_image=None)

        def test_bad_task(sdopt):
            sdopt.run("fp32", task="outpaint")

        def test_no_steps_left(sdopt):
            sdopt.run("fp32", task="img2img", strength=0.3)
    """)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines_random([
        "*an img2img run of 2 steps at strength 0.3 denoises int(2 x 0.3) = 0 steps, so it would draw nothing; raise "
        "steps or strength.",
        "*sdopt.run got unknown keyword(s) mask_image: neither an sdopt setting nor an argument of "
        "StableDiffusionImg2ImgPipeline.__call__.*",
        "*sdopt.run(task=...) must be one of text-to-image, img2img, inpaint, not 'outpaint'.",
    ])


def test_the_matrix_runs_a_task(pytester):
    from tests.conftest import FAST

    result = pytester.runpytest("-p", "pytest_sdopt", "-W", "ignore::pytest.PytestAssertRewriteWarning", *FAST,
                                "--sdopt-matrix=fp32,vae_tiling", "--sdopt-task", "inpaint", "--sdopt-update-baselines")
    result.assert_outcomes(passed=2)
    assert [path.name.split("-")[0] for path in (pytester.path / "baselines" / "tiny").iterdir()] == ["inpaint"]


# --- the plain objects ------------------------------------------------------------------------


def test_sd3_has_no_img2img_here_and_says_which_families_do():
    assert unsupported("img2img", "sd15", "tiny") is None
    assert str(unsupported("inpaint", "sd3", "my-sd3")) == "task 'inpaint' runs on SD 1.5 and SDXL models; my-sd3 is SD3."


def test_the_drawn_images_are_a_trained_scene_and_a_centred_mask_and_hash_by_their_pixels():
    image, mask = default_image((64, 64)), default_mask((64, 64))
    pixels = np.asarray(mask)
    assert pixels[32, 32].tolist() == [255, 255, 255] and pixels[2, 2].tolist() == [0, 0, 0]
    assert pixels.mean() == pytest.approx(255 * 0.25, rel=0.05)  # a square of half the side
    frozen = dict(freeze({"image": image}, "sdopt.run"))["image"]
    assert isinstance(frozen, ImageArgument) and frozen == ImageArgument.of(default_image((64, 64)))
    assert frozen != ImageArgument.of(mask)
    assert np.array_equal(np.asarray(frozen.image()), np.asarray(image))
