#!/usr/bin/env python
"""Draw the sample images of the README and docs/models.md with the embedded `tiny` model: docs/tiny/*.png.

    python scripts/draw_tiny_samples.py [--out docs/tiny]

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

from pytest_sdopt.models.scenes import HELD_OUT, Scene, held_out_scenes, read_scene  # noqa: E402

TRAINED = ("a yellow triangle on a blue background", "a red circle on a green background",
           "a white triangle on a black background")
SEEDS = (1, 2)


def main() -> None:
    import torch

    from pytest_sdopt.models.sources import resolve_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "tiny")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = resolve_model("tiny")
    pipe = source.load()
    pipe.set_progress_bar_config(disable=True)
    held = [scene.caption for scene in held_out_scenes()[::3]]
    print("| prompt | held out | seed 1 | seed 2 | read back (seed 1) |\n| --- | --- | --- | --- | --- |")
    for number, prompt in enumerate([*TRAINED, *held], 1):
        scene = Scene.from_caption(prompt)
        cells = []
        for seed in SEEDS:
            image = pipe(prompt, num_inference_steps=source.default_steps, width=source.default_size[0],
                         height=source.default_size[1], guidance_scale=source.default_guidance,
                         generator=torch.Generator().manual_seed(seed)).images[0]
            path = args.out / f"{number}-seed{seed}.png"
            image.save(path)
            cells.append(f"![{prompt}, seed {seed}]({path.relative_to(REPO).as_posix()})")
            if seed == SEEDS[0]:
                reading = read_scene(image, scene)
        verdict = f"{reading.shape_colour} {reading.shape}, {reading.background_colour} background"
        print(f"| {prompt} | {'yes' if scene in HELD_OUT else 'no'} | {' | '.join(cells)} | {verdict} |")


if __name__ == "__main__":
    main()
