#!/usr/bin/env python
"""Draw the sample images of the README and docs/models.md with an embedded model: docs/<model>/*.png.

    python scripts/draw_tiny_samples.py [--model tiny|tiny-xl|tiny-sd3] [--out docs/<model>]
    python scripts/draw_tiny_samples.py --model tiny-xl --held-out   # the held-out figures only, no files

Some prompts from training and some held out (never captioned in training), each drawn at the
model's defaults (128x128, 10 steps, its guidance) with two seeds and read back with
pytest_sdopt.models.scenes.read_scene; prints the docs' table (docs/models.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pytest_sdopt.config.defaults import EMBEDDED_MODELS  # noqa: E402
from pytest_sdopt.models.scenes import HELD_OUT, Scene, held_out_scenes, read_scene, training_scenes  # noqa: E402

TRAINED = ("a yellow triangle on a blue background", "a red circle on a green background",
           "a white triangle on a black background")
SEEDS = (1, 2)
CHECK_SEEDS = (1, 2, 3, 4, 5)  # what tests/test_tiny_model.py counts


def draw_at_defaults(source, pipe, prompt: str, seed: int):
    import torch

    return pipe(prompt, num_inference_steps=source.default_steps, width=source.default_size[0],
                height=source.default_size[1], guidance_scale=source.default_guidance,
                generator=torch.Generator().manual_seed(seed)).images[0]


def held_out_figures(source, pipe) -> str:
    """Held-out prompts' colours and shapes right, and trained prompts' shapes, as the tests count them."""
    import random

    held = [read_scene(draw_at_defaults(source, pipe, s.caption, seed), s)
            for s in held_out_scenes() for seed in CHECK_SEEDS]
    trained = [read_scene(draw_at_defaults(source, pipe, s.caption, seed), s)
               for s in random.Random(0).sample(training_scenes(), 8) for seed in CHECK_SEEDS]
    return (f"{source.name}: held-out colours {sum(r.matches for r in held)}/{len(held)}, "
            f"shapes {sum(r.matches_shape for r in held)}/{len(held)}; "
            f"trained shapes {sum(r.matches_shape for r in trained)}/{len(trained)}")


def main() -> None:
    from pytest_sdopt.models.sources import resolve_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=EMBEDDED_MODELS, default="tiny")
    parser.add_argument("--out", type=Path, help="default: docs/<model>")
    parser.add_argument("--held-out", action="store_true", help="print the held-out figures only")
    args = parser.parse_args()
    source = resolve_model(args.model)
    pipe = source.load()
    pipe.set_progress_bar_config(disable=True)
    if args.held_out:
        print(held_out_figures(source, pipe))
        return
    out = args.out or REPO / "docs" / args.model
    out.mkdir(parents=True, exist_ok=True)
    held = [scene.caption for scene in held_out_scenes()[::3]]
    print("| prompt | held out | seed 1 | seed 2 | read back (seed 1) |\n| --- | --- | --- | --- | --- |")
    for number, prompt in enumerate([*TRAINED, *held], 1):
        scene = Scene.from_caption(prompt)
        cells = []
        for seed in SEEDS:
            image = draw_at_defaults(source, pipe, prompt, seed)
            path = out / f"{number}-seed{seed}.png"
            image.save(path)
            cells.append(f"![{prompt}, seed {seed}]({path.relative_to(REPO).as_posix()})")
            if seed == SEEDS[0]:
                reading = read_scene(image, scene)
        verdict = f"{reading.shape_colour} {reading.shape}, {reading.background_colour} background"
        print(f"| {prompt} | {'yes' if scene in HELD_OUT else 'no'} | {' | '.join(cells)} | {verdict} |")


if __name__ == "__main__":
    main()
