"""The captioned scenes the embedded `tiny` model is trained on, and reading a scene off an image.

A scene is one shape of one colour in the middle of a background of another colour, captioned
e.g. "a red circle on a blue background". `draw` renders one (size and position jittered by a
seeded generator, so a prompt has many images), and `read_scene` measures an image the other way
round: the mean colour where every drawing has its shape, the mean colour where every drawing
has background, the named colour nearest to each, and which shape the shape-coloured pixels
fill like. That is how the tests check that the trained model draws what a prompt says,
including prompts it never saw (`HELD_OUT`).

Why no places ("on the left") in the captions: a UNet this small, trained for an hour on a CPU,
did not learn them (it placed the shape wherever the starting noise suggested, 7000 steps in);
colours and shapes it learns well.

numpy and PIL only: scripts/make_tiny_model.py trains on these, the tests read with them.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
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
# How much of its bounding box each shape fills: what tells them apart in an image.
FILL = {"circle": 0.785, "square": 1.0, "triangle": 0.5}
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
    pen = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif scene.shape == "square":
        half = 0.885 * radius  # about the circle's area
        pen.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:  # an upright equilateral triangle around the centre, about the circle's area
        r = 1.25 * radius
        pen.polygon([(cx, cy - r), (cx - 0.866 * r, cy + 0.5 * r), (cx + 0.866 * r, cy + 0.5 * r)], fill=fill)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


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


@dataclass(frozen=True)
class SceneReading:
    """What an image shows where a scene's caption puts things."""

    scene: Scene
    shape_rgb: tuple[float, float, float]  # mean colour of the shape's core
    background_rgb: tuple[float, float, float]  # mean colour far from the shape
    fill: float  # how much of their bounding box the pixels of the shape's colour fill (0: none)

    @property
    def shape_colour(self) -> str:
        return nearest_colour(self.shape_rgb)

    @property
    def background_colour(self) -> str:
        return nearest_colour(self.background_rgb)

    @property
    def shape(self) -> str:
        """The shape whose fill of its bounding box is nearest to the measured one."""
        return min(FILL, key=lambda name: abs(FILL[name] - self.fill))

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
        return (f"{self.scene.caption!r}: shape {rgb(self.shape_rgb)} ~ {self.shape_colour}, "
                f"background {rgb(self.background_rgb)} ~ {self.background_colour}, "
                f"fill {self.fill:.2f} ~ {self.shape}{verdict}")


def read_scene(image: Any, scene: Scene) -> SceneReading:
    """Measure `image` (PIL or an H x W x 3 array) where `scene`'s caption puts the shape and the background."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    core, clear = regions(pixels.shape[1], pixels.shape[0])
    # The shape: pixels nearer the caption's shape colour than its background colour, within the clear distance.
    to_shape = ((pixels - COLOURS[scene.colour]) ** 2).sum(axis=-1)
    to_background = ((pixels - COLOURS[scene.background]) ** 2).sum(axis=-1)
    ys, xs = np.nonzero((to_shape < to_background) & ~clear)
    fill = 0.0
    if len(xs):
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        fill = len(xs) / box
    return SceneReading(scene, tuple(pixels[core].mean(axis=0)), tuple(pixels[clear].mean(axis=0)), float(fill))
