"""The captioned scenes the embedded `tiny` model is trained on, and reading a scene off an image.

A scene is one shape of one colour in the middle of a background of another colour, captioned
e.g. "a red circle on a blue background". `draw` renders one (size and position jittered by a
seeded generator, so a prompt has many images), and `read_scene` measures an image the other way
round: the mean colour where every drawing has its shape, the mean colour where every drawing
has background, the named colour nearest to each, and which shape's outline the shape-coloured
region overlaps best. That is how the tests check that the trained model draws what a prompt
says, including prompts it never saw (`HELD_OUT`).

Why no places ("on the left") in the captions: a UNet this small, trained for an hour on a CPU,
did not learn them (it placed the shape wherever the starting noise suggested, 7000 steps in);
colours and shapes it learns well.

numpy and PIL draw (scripts/make_tiny_model.py trains on these); reading adds scipy's labelling.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

# Named colours, far enough apart that the nearest one is unambiguous after a VAE round trip.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
CENTRE = (0.5, 0.5)  # where a shape is drawn, as fractions of the width and height
RADIUS = (0.15, 0.22)  # the shape's size, as a fraction of the image side (drawn uniformly)
JITTER = 0.03  # how far the centre may move from CENTRE, as a fraction of the side
CORE = 0.05  # radius of the region every drawing of the shape covers, around CENTRE
CLEAR = 0.34  # beyond this distance from CENTRE, every drawing is background


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"

    @classmethod
    def from_caption(cls, caption: str) -> "Scene":
        match = re.fullmatch(r"a (\w+) (\w+) on a (\w+) background", caption.strip())
        if not match or match[1] not in COLOURS or match[2] not in SHAPES or match[3] not in COLOURS \
                or match[1] == match[3]:
            raise ValueError(f"not a scene caption: {caption!r} (e.g. {EXAMPLE.caption!r})")
        return cls(match[1], match[2], match[3])


EXAMPLE = Scene("red", "circle", "blue")


def all_scenes() -> list[Scene]:
    """Every scene: each shape in each colour on each other colour (90)."""
    return [Scene(colour, shape, background)
            for colour, shape, background in itertools.product(COLOURS, SHAPES, COLOURS) if colour != background]


# Seeded, so the split is fixed: 8 of the 90 scenes are never captioned in training. Every pair
# within them (colour and shape, colour and background, shape and background) is, so a
# held-out prompt asks the model to compose what it learned.
HELD_OUT = frozenset(random.Random(0).sample(all_scenes(), 8))


def training_scenes() -> list[Scene]:
    return [scene for scene in all_scenes() if scene not in HELD_OUT]


def held_out_scenes() -> list[Scene]:
    return [scene for scene in all_scenes() if scene in HELD_OUT]


def draw(scene: Scene, size: int = 128, rng: random.Random | None = None, supersample: int = 4) -> Any:
    """The scene as an RGB uint8 array (size x size x 3). `rng` jitters the shape's size and
    position (None: at the centre, the middle size); edges are anti-aliased."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = rng or _Middle()
    side = size * supersample
    radius = rng.uniform(*RADIUS) * side
    fx, fy = CENTRE
    cx = (fx + rng.uniform(-JITTER, JITTER)) * side
    cy = (fy + rng.uniform(-JITTER, JITTER)) * side
    image = Image.new("RGB", (side, side), COLOURS[scene.background])
    _outline(ImageDraw.Draw(image), scene.shape, cx, cy, radius, COLOURS[scene.colour])
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


# A shape's area per squared radius, as `_outline` draws it (the square and the triangle are
# sized to about the circle's area, so size does not tell them apart).
AREA_PER_RADIUS2 = {"circle": math.pi, "square": (2 * 0.885) ** 2, "triangle": 3 * math.sqrt(3) / 4 * 1.25 ** 2}


def _outline(pen: Any, shape: str, cx: float, cy: float, radius: float, fill: Any) -> None:
    """Paint `shape` centred on (cx, cy) (its centroid) at `radius`: what `draw` draws and what
    `read_scene` compares an image with."""
    if shape == "circle":
        pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif shape == "square":
        half = 0.885 * radius  # about the circle's area
        pen.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:  # an upright equilateral triangle around the centre, about the circle's area
        r = 1.25 * radius
        pen.polygon([(cx, cy - r), (cx - 0.866 * r, cy + 0.5 * r), (cx + 0.866 * r, cy + 0.5 * r)], fill=fill)


class _Middle:
    """An rng stand-in that picks the middle of every range: the scene's canonical drawing."""

    def uniform(self, low: float, high: float) -> float:
        return (low + high) / 2


def regions(width: int, height: int) -> tuple[Any, Any]:
    """Boolean masks (height x width): where every drawing has its shape (the core) and where
    every drawing has only background (far from the centre)."""
    import numpy as np

    fx, fy = CENTRE
    ys, xs = np.mgrid[0:height, 0:width]
    distance = np.hypot((xs + 0.5) / width - fx, (ys + 0.5) / height - fy)
    return distance <= CORE, distance >= CLEAR


def nearest_colour(rgb: Any) -> str:
    return min(COLOURS, key=lambda name: sum((float(a) - b) ** 2 for a, b in zip(rgb, COLOURS[name])))


# Below this overlap with its best-fitting outline, the shape-coloured region is no shape at all
# (a smear, two blobs joined, a ring). Every drawing read back through each embedded model's VAE
# overlaps its own outline by 0.86 or more (tests/test_scenes.py), a trained model's drawings by
# 0.76 or more; a circle and a square of one area overlap by 0.85.
LEAST_FIT = 0.6


@dataclass(frozen=True)
class SceneReading:
    """What an image shows where a scene's caption puts things."""

    scene: Scene
    shape_rgb: tuple[float, float, float]  # mean colour of the shape's core
    background_rgb: tuple[float, float, float]  # mean colour far from the shape
    # Per shape, the overlap (intersection over union) of the shape-coloured region with that
    # shape's outline at the region's centroid and area; empty: no shape-coloured region.
    fits: dict[str, float] = field(default_factory=dict)

    @property
    def shape_colour(self) -> str:
        return nearest_colour(self.shape_rgb)

    @property
    def background_colour(self) -> str:
        return nearest_colour(self.background_rgb)

    @property
    def shape(self) -> str | None:
        """The shape whose outline the region overlaps best; None when it fits none (LEAST_FIT)."""
        if not self.fits or max(self.fits.values()) < LEAST_FIT:
            return None
        return max(self.fits, key=self.fits.__getitem__)

    @property
    def matches(self) -> bool:
        """The named colours are where the caption puts them."""
        return self.shape_colour == self.scene.colour and self.background_colour == self.scene.background

    @property
    def matches_shape(self) -> bool:
        return self.matches and self.shape == self.scene.shape

    def __str__(self) -> str:
        def rgb(values: tuple[float, float, float]) -> str:
            return "(" + ", ".join(f"{v:.0f}" for v in values) + ")"

        verdict = "" if self.matches_shape else "  MISMATCH"
        fits = ", ".join(f"{name} {fit:.2f}" for name, fit in self.fits.items()) or "no shape-coloured region"
        return (f"{self.scene.caption!r}: shape {rgb(self.shape_rgb)} ~ {self.shape_colour}, "
                f"background {rgb(self.background_rgb)} ~ {self.background_colour}, "
                f"fits {fits} ~ {self.shape or 'no shape'}{verdict}")


def read_scene(image: Any, scene: Scene) -> SceneReading:
    """Measure `image` (PIL or an H x W x 3 array) where `scene`'s caption puts the shape and the background."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    core, clear = regions(pixels.shape[1], pixels.shape[0])
    # The shape: pixels nearer the caption's shape colour than its background colour, within the clear distance.
    to_shape = ((pixels - COLOURS[scene.colour]) ** 2).sum(axis=-1)
    to_background = ((pixels - COLOURS[scene.background]) ** 2).sum(axis=-1)
    region = (to_shape < to_background) & ~clear
    return SceneReading(scene, tuple(pixels[core].mean(axis=0)), tuple(pixels[clear].mean(axis=0)),
                        outline_fits(region))


def outline_fits(region: Any, supersample: int = 4) -> dict[str, float]:
    """Per shape, how well `region` (a boolean mask) overlaps that shape's outline drawn at the
    region's centroid with the region's area (intersection over union, with the outline's
    anti-aliased coverage). Only the largest connected part counts, holes filled: why not the
    bounding box's fill, which this replaced: one stray pixel of the shape's colour widens the
    box, and a third of `tiny`'s squares read back through its own VAE read as circles."""
    import numpy as np
    from PIL import Image, ImageDraw
    from scipy import ndimage

    labels, parts = ndimage.label(region)
    if not parts:
        return {}
    sizes = ndimage.sum_labels(region, labels, index=range(1, parts + 1))
    shape = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    ys, xs = np.nonzero(shape)
    cx, cy, area = xs.mean() + 0.5, ys.mean() + 0.5, float(len(xs))
    height, width = shape.shape
    fits = {}
    for name in SHAPES:
        canvas = Image.new("L", (width * supersample, height * supersample), 0)
        radius = math.sqrt(area / AREA_PER_RADIUS2[name]) * supersample
        _outline(ImageDraw.Draw(canvas), name, cx * supersample, cy * supersample, radius, 255)
        coverage = np.asarray(canvas.resize((width, height), Image.Resampling.BOX), dtype=np.float64) / 255
        fits[name] = float(np.minimum(coverage, shape).sum() / np.maximum(coverage, shape).sum())
    return fits
