"""The embedded models are trained: each draws what a prompt says (prompts it never saw included),
seeds vary the drawing, and on `tiny` the SSIM gate tells an optimization's drift from a broken stack."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from pytest_sdopt.models.sources import resolve_model
from pytest_sdopt.models.scenes import Scene, all_scenes, draw, held_out_scenes, read_scene, training_scenes

SEEDS = (1, 2, 3, 4, 5)
# The held-out prompts are 3 circles and 5 squares (15 and 25 of 40 drawings): a model that drew
# every shape as a square would get 25/40 shapes right, as a circle 15/40; random blobs read as no
# shape more often than not (tests/test_scenes.py), about 7/40. So the shape floors sit above 25,
# and a second check asks that squares be drawn squarer than circles. Measured on the shipped
# weights (scripts/draw_tiny_samples.py --model M --held-out), each threshold a few below:
# tiny: held-out colours 40/40, shapes 39/40, trained prompts' shapes 40/40.
# tiny-xl (guidance 1.5): 39/40, 33/40, 40/40.
# tiny-sd3: 40/40, 40/40, 40/40 (at tiny's width it drew one rounded blob for "square" and "circle"
# alike, 21/40 held-out shapes: a coin's toss, which the floor above 25 and SQUARER both refuse).
# Per model: held-out colours right, held-out shapes right, trained shapes right (each of 40).
FLOORS = {"tiny": (36, 35, 36), "tiny-xl": (35, 29, 36), "tiny-sd3": (36, 35, 36)}
# How much squarer (square fit minus circle fit) the held-out squares come out than the held-out
# circles, on average: tiny 0.18, tiny-xl 0.15, tiny-sd3 0.21; drawings read back through the VAE 0.22.
SQUARER = 0.08


@pytest.fixture(scope="module", params=list(FLOORS))
def tiny(request):
    # No skip under a diffusers that pads SD3's missing T5 otherwise (0.35: 77 positions, not 256):
    # tiny-sd3 draws another image there, but the same scenes (docs/models.md), so its figures hold.
    source = resolve_model(request.param)
    pipe = source.load()
    pipe.set_progress_bar_config(disable=True)
    return source, pipe


def drawn(tiny, prompt: str, seed: int = 1):
    """The prompt drawn at the model's defaults (what an sdopt run draws unless told otherwise)."""
    source, pipe = tiny
    width, height = source.default_size
    return pipe(prompt, num_inference_steps=source.default_steps, width=width, height=height,
                guidance_scale=source.default_guidance, generator=torch.Generator().manual_seed(seed)).images[0]


def readings(tiny, scenes):
    return [read_scene(drawn(tiny, scene.caption, seed), scene) for scene in scenes for seed in SEEDS]


@pytest.fixture(scope="module")
def held_out(tiny):
    return readings(tiny, held_out_scenes())


def test_prompts_it_never_saw_are_drawn_in_the_named_colours_where_the_prompt_puts_them(tiny, held_out):
    """Shape's colour at the centre, background's at the border: both must be the named ones."""
    right = sum(reading.matches for reading in held_out)
    assert right >= FLOORS[tiny[0].name][0], f"{right}/{len(held_out)}:\n" + "\n".join(map(str, held_out))


def test_prompts_it_never_saw_are_drawn_in_the_named_shape_more_often_than_chance(tiny, held_out):
    right = sum(reading.matches_shape for reading in held_out)
    assert right >= FLOORS[tiny[0].name][1], f"{right}/{len(held_out)}:\n" + "\n".join(map(str, held_out))


def test_prompts_it_never_saw_draw_squares_squarer_than_circles(tiny, held_out):
    """The shape word changes the drawing: a count of right shapes alone would pass a model that
    draws one shape for both words whenever the prompts ask mostly for that one."""
    floor = FLOORS[tiny[0].name][1]
    assert floor > sum(reading.scene.shape == "square" for reading in held_out)  # more than "always a square" scores
    lean = {shape: np.mean([r.fits["square"] - r.fits["circle"] for r in held_out if r.scene.shape == shape and r.fits])
            for shape in ("square", "circle")}
    assert lean["square"] - lean["circle"] >= SQUARER, lean


def test_every_scene_drawn_and_read_back_through_the_models_vae_reads_as_itself(tiny):
    """The reader and the VAE hold: a denoiser that drew the training images exactly would pass
    every shape check (each of the 90 scenes, jittered)."""
    _, pipe = tiny
    rng = random.Random(7)
    scenes = all_scenes()
    images = torch.tensor(np.stack([draw(scene, 128, rng) for scene in scenes])).permute(0, 3, 1, 2)
    with torch.no_grad():
        decoded = torch.cat([pipe.vae.decode(pipe.vae.encode(batch.float() / 127.5 - 1).latent_dist.mode()).sample
                             for batch in images.split(30)])
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).to(torch.uint8).numpy()
    wrong = [str(read_scene(image, scene)) for image, scene in zip(pixels, scenes)
             if not read_scene(image, scene).matches_shape]
    assert not wrong, "\n".join(wrong)


def test_trained_prompts_are_drawn_in_the_named_shape(tiny):
    trained = readings(tiny, random.Random(0).sample(training_scenes(), 8))
    right = sum(reading.matches_shape for reading in trained)
    assert right >= FLOORS[tiny[0].name][2], f"{right}/{len(trained)}:\n" + "\n".join(map(str, trained))


def test_the_default_prompt_is_a_trained_scene_it_draws(tiny):
    source, _ = tiny
    scene = Scene.from_caption(source.default_prompt)
    assert scene in training_scenes()
    reading = read_scene(drawn(tiny, source.default_prompt), scene)
    assert reading.matches  # its colours where the prompt puts them
    assert reading.matches_shape  # and its shape (a triangle)


def test_different_seeds_draw_different_images_of_the_same_prompt(tiny):
    scene = held_out_scenes()[0]
    images = [np.asarray(drawn(tiny, scene.caption, seed), dtype=np.float64) for seed in (1, 2, 3)]
    for first, second in ((0, 1), (0, 2), (1, 2)):
        assert np.abs(images[first] - images[second]).mean() > 2.0, (first, second)  # not one image with noise
    again = np.asarray(drawn(tiny, scene.caption, 1), dtype=np.float64)
    assert np.array_equal(again, images[0])


# A stack broken on purpose: cross-attention that ignores the prompt (its keys and values see zeros),
# registered as a downstream conftest.py registers its own optimization (hookspecs.py).
PROMPT_BLIND = """
import torch

from pytest_sdopt.stacks import Effect, OptimizationSpec, Phase


class PromptBlind:
    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0
        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            encoder_hidden_states = torch.zeros_like(encoder_hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def blind(pipe, ctx):
    pipe.unet.set_attn_processor(PromptBlind())


def processors(pipe):
    return sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})


def pytest_sdopt_register_optimizations(config):
    return [OptimizationSpec("prompt_blind", Phase.ATTENTION, "cross-attention that ignores the prompt", 0.99, blind,
                             effect=Effect(processors, lambda before: f"changed nothing: {before}"))]
"""

BROKEN = """
import pytest


@pytest.mark.parametrize("stack", ["tome", "vae_tiling", "prompt_blind"])
def test_drift(sdopt, stack):
    result = sdopt.run(stack)
    sdopt.check(result, min_ssim=0.8)  # tome's default, the loosest of the three
"""


def test_the_ssim_gate_passes_drift_and_fails_a_stack_that_ignores_the_prompt(run_sdopt, pytester):
    """At the model's default 128x128 (twice the VAE's 64-px tile), against recorded fp32 baselines."""
    settings = ("--sdopt-size", "default", "--sdopt-steps", "10", "--sdopt-json", "out.json")
    pytester.makeconftest(PROMPT_BLIND)
    run_sdopt(BROKEN, "--sdopt-update-baselines", *settings, "-k", "tome").assert_outcomes(passed=1)
    result = run_sdopt(BROKEN, *settings)
    result.assert_outcomes(passed=2, failed=1)
    runs = {run["stack"]: run for run in json.loads((pytester.path / "out.json").read_text())["runs"]}
    ssim = {stack: runs[stack]["ssim"] for stack in runs}
    from pytest_sdopt.stacks import REGISTRY

    for stack in ("tome", "vae_tiling"):
        assert REGISTRY[stack].default_min_ssim <= ssim[stack] < 0.999, ssim  # drifts, measurably, within its tolerance
        assert runs[stack]["outcome"] == "passed"
    print(ssim)  # shown with -s: the README quotes these
    assert ssim["prompt_blind"] < min(REGISTRY[s].default_min_ssim for s in ("tome", "vae_tiling")), ssim
    assert runs["prompt_blind"]["outcome"] == "failed"
    result.stdout.fnmatch_lines(["*FAIL  min_ssim*"])
