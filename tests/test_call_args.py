"""The pipeline's own call arguments pass through `sdopt.run` and `@pytest.mark.sdopt`, checked
against the loaded pipeline's `__call__`, and are part of the scenario: the image, the baseline
folder's key, scenario.json and the results JSON."""

from __future__ import annotations

import json

import pytest

from pytest_sdopt.config.call_args import freeze, key_part, merged, unaccepted
from pytest_sdopt.config.scenario import Scenario
from pytest_sdopt.core.errors import SdoptUsageError


def test_a_negative_prompt_changes_the_image_and_the_baseline_key_and_is_recorded(run_sdopt, pytester):
    result = run_sdopt("""
        import numpy as np

        def test_negative(sdopt):
            plain = sdopt.run("fp32")
            negative = sdopt.run("fp32", negative_prompt="a red circle")
            assert plain.scenario.call_args == ()
            assert negative.scenario.call_arguments == {"negative_prompt": "a red circle"}
            difference = np.abs(np.asarray(plain.image, float) - np.asarray(negative.image, float)).mean()
            assert difference > 1.0, difference
            again = sdopt.run("fp32", negative_prompt="a red circle")
            assert np.array_equal(np.asarray(again.image), np.asarray(negative.image))
            sdopt.check(negative, min_ssim=None, min_self_ssim=0.99)
    """, "--sdopt-update-baselines", "--sdopt-json=results.json")
    result.assert_outcomes(passed=1)
    folders = sorted(path.name for path in (pytester.path / "baselines" / "tiny").iterdir())
    assert len(folders) == 1 and folders[0].endswith(key_part((("negative_prompt", "a red circle"),))), folders
    scenario = json.loads((pytester.path / "baselines" / "tiny" / folders[0] / "scenario.json").read_text())
    assert scenario["call_args"] == {"negative_prompt": "a red circle"}
    runs = json.loads((pytester.path / "results.json").read_text())["runs"]
    assert [run["scenario"]["call_args"] for run in runs] == [{}, *[{"negative_prompt": "a red circle"}] * 2]


def test_marker_arguments_pass_through_and_a_keyword_beats_the_marker(run_sdopt):
    result = run_sdopt("""
        import pytest

        @pytest.mark.sdopt(negative_prompt="blurry", guidance_rescale=0.5)
        def test_marked(sdopt):
            assert sdopt.run("fp32").scenario.call_arguments == {"negative_prompt": "blurry", "guidance_rescale": 0.5}
            assert sdopt.run("fp32", negative_prompt="dark").scenario.call_arguments == {
                "negative_prompt": "dark", "guidance_rescale": 0.5}
    """)
    result.assert_outcomes(passed=1)


def test_an_unknown_argument_names_the_pipeline_what_it_accepts_and_the_likely_one(run_sdopt):
    result = run_sdopt("""
        import pytest

        def test_typo(sdopt):
            sdopt.run("fp32", negativ_prompt="blurry")

        @pytest.mark.sdopt(max_ram="1GB")
        def test_marker(sdopt):
            sdopt.run("fp32")
    """)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random([
        "*sdopt.run got unknown keyword(s) negativ_prompt: neither an sdopt setting nor an argument of "
        "StableDiffusionPipeline.__call__. Did you mean 'negativ_prompt' -> 'negative_prompt'? sdopt settings: model, *"
        "StableDiffusionPipeline.__call__ also accepts: *clip_skip*guidance_rescale*negative_prompt*",
        "*@pytest.mark.sdopt got unknown keyword(s) max_ram: neither an sdopt setting nor an argument of "
        "StableDiffusionPipeline.__call__. Did you mean 'max_ram' -> 'max_vram'?*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_arguments_sdopt_sets_itself_and_gates_are_refused_naming_what_to_use(run_sdopt):
    result = run_sdopt("""
        def test_owned(sdopt):
            sdopt.run("fp32", guidance_scale=3.0)

        def test_gate(sdopt):
            sdopt.run("fp32", min_ssim=0.9)

        def test_object(sdopt):
            sdopt.run("fp32", cross_attention_kwargs=object())
    """)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines_random([
        "*sdopt.run got guidance_scale (sdopt's `guidance` setting): these pipeline arguments are set by sdopt*",
        "*sdopt.run got min_ssim: gates are checked, not run; pass them to sdopt.check(result, min_ssim=...).",
        "*sdopt.run(cross_attention_kwargs=...) got a object; a pipeline call argument passed through sdopt is a "
        "string, number, boolean, None, a PIL image or a list of them*",
    ])


def test_several_images_per_prompt_reach_the_scenario_and_vae_slicings_promise(run_sdopt):
    result = run_sdopt("""
        def test_batch(sdopt):
            one = sdopt.run("vae_slicing")
            two = sdopt.run("vae_slicing", num_images_per_prompt=2)
            assert (one.scenario.images_per_prompt, two.scenario.images_per_prompt) == (1, 2)
            assert len(two.images) == 2
            checked = sdopt.check(two, min_ssim=None, min_self_ssim=None, promises=True)
            memory = next(o for o in checked.outcomes if o.gate == "max_memory_ratio")
            assert "a batch of more than one image" not in memory.detail, memory.detail
            one_checked = sdopt.check(one, min_ssim=None, min_self_ssim=None, promises=True)
            memory = next(o for o in one_checked.outcomes if o.gate == "max_memory_ratio")
            assert memory.status.value == "n/a" and "a batch of more than one image" in memory.detail
    """, "--sdopt-settle", "0")
    result.assert_outcomes(passed=1)


def test_a_pipeline_call_that_raises_fails_its_test_in_one_paragraph_and_the_next_runs(run_sdopt, pytester):
    pytester.makeconftest("""
        from pytest_sdopt.stacks import Effect, OptimizationSpec, Phase

        def broken(pipe, ctx):
            def forward(*args, **kwargs):
                raise AttributeError("'UNet2DConditionModel' object has no attribute 'text_model'")
            pipe.unet.forward = forward

        def pytest_sdopt_register_optimizations(config):
            return [OptimizationSpec("broken", Phase.COMPILE, "a UNet whose call raises", 0.99, broken,
                                     effect=Effect(lambda pipe: pipe.unet.forward, lambda _: "left it"))]
    """)
    result = run_sdopt("""
        def test_broken(sdopt):
            sdopt.run("broken", negative_prompt="blurry")

        def test_next(sdopt):
            sdopt.run("fp32")
    """, "--sdopt-json=results.json")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "*sdopt: stack 'broken': the pipeline's call failed on model 'tiny' (64x64, 2 steps): AttributeError: "
        "'UNet2DConditionModel' object has no attribute 'text_model' (raised at *conftest.py:* in forward). The call "
        "passed negative_prompt='blurry' through to the pipeline. With torch *, diffusers *, transformers *; an error "
        "inside diffusers or transformers is most often a version mismatch between them.",
    ])
    assert "Traceback" not in result.stdout.str()
    runs = json.loads((pytester.path / "results.json").read_text())["runs"]
    assert runs[0]["outcome"] == "failed" and "the pipeline's call failed (AttributeError" in runs[0]["note"]


# --- the plain objects, without pytest -------------------------------------------------------


def test_call_arguments_freeze_to_sorted_json_values_and_merge_later_wins():
    frozen = freeze({"negative_prompt": ["a", "b"], "clip_skip": 2}, "sdopt.run")
    assert frozen == (("clip_skip", 2), ("negative_prompt", ("a", "b")))
    scenario = Scenario("tiny", "cpu", "p", 1, (64, 64), 2, 1.5, frozen)
    assert scenario.call_arguments == {"clip_skip": 2, "negative_prompt": ["a", "b"]}
    assert hash(scenario) == hash(Scenario("tiny", "cpu", "p", 1, (64, 64), 2, 1.5, frozen))
    assert merged((("a", 1), ("b", 1)), (("b", 2),)) == (("a", 1), ("b", 2))
    assert key_part(()) == "" and key_part(frozen) != key_part((("clip_skip", 1),))
    with pytest.raises(SdoptUsageError, match="finite number"):
        freeze({"guidance_rescale": float("nan")}, "sdopt.run")


def test_a_pipeline_whose_class_diffusers_lacks_checks_nothing():
    assert unaccepted((("anything", 1),), None, "MyPipeline", ("model",), "sdopt.run") is None
    error = unaccepted((("anything", 1),), {"negative_prompt"}, "P", ("model",), "sdopt.run")
    assert error is not None and "P.__call__ also accepts: negative_prompt." in str(error)
