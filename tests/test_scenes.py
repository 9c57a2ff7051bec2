"""The captioned scenes the embedded model is trained on, and reading a scene off an image."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from pytest_sdopt.models.scenes import (CLEAR, COLOURS, CORE, HELD_OUT, JITTER, LEAST_FIT, RADIUS, SHAPES, Scene, all_scenes, draw,
                                       held_out_scenes, outline_fits, read_scene, regions, training_scenes)


def test_every_caption_reads_back_as_its_scene():
    scenes = all_scenes()
    assert len(scenes) == len(COLOURS) * (len(COLOURS) - 1) * len(SHAPES) == 90
    assert len({scene.caption for scene in scenes}) == len(scenes)
    for scene in scenes:
        assert Scene.from_caption(scene.caption) == scene
    assert Scene("red", "circle", "blue").caption == "a red circle on a blue background"


@pytest.mark.parametrize("caption", ["a red circle", "a pink circle on a blue background",
                                     "a red blob on a blue background", "a red circle on a red background", ""])
def test_a_caption_that_is_no_scene_is_refused_with_an_example(caption):
    with pytest.raises(ValueError, match="not a scene caption.*e.g. 'a red circle on a blue background'"):
        Scene.from_caption(caption)


def test_held_out_scenes_are_never_trained_on_but_each_of_their_pairs_is():
    trained, held = training_scenes(), held_out_scenes()
    assert len(HELD_OUT) == len(held) == 8 and len(trained) == 82 and not set(trained) & HELD_OUT
    trained_pairs = {(i, pair) for scene in trained
                     for i, pair in enumerate(itertools.combinations((scene.colour, scene.shape, scene.background), 2))}
    for scene in held:
        for i, pair in enumerate(itertools.combinations((scene.colour, scene.shape, scene.background), 2)):
            assert (i, pair) in trained_pairs, (scene, pair)


class Extreme:
    """An rng that always draws one end of every range: the drawings farthest from the canonical one."""

    def __init__(self, ends):
        self.ends = iter(ends)

    def uniform(self, low, high):
        return high if next(self.ends) else low


@pytest.mark.parametrize("shape", SHAPES)
def test_every_drawing_reads_as_its_own_scene_even_at_the_extremes_of_size_and_position(shape):
    """The core and the clear region hold, and the shape is told apart, for the smallest and the
    largest shape pushed to each corner of its jitter."""
    scene = Scene("yellow", shape, "black")
    core, clear = regions(128, 128)
    for ends in itertools.product((0, 1), repeat=3):
        image = draw(scene, 128, Extreme(ends))
        reading = read_scene(image, scene)
        assert reading.matches_shape, (str(reading), ends)
        assert np.abs(image[core].astype(int) - COLOURS["yellow"]).max() <= 1, ends  # all shape, not just its mean
        assert np.abs(image[clear].astype(int) - COLOURS["black"]).max() <= 1, ends


def test_the_regions_leave_room_for_the_jitter():
    assert JITTER + CORE < 0.5 * 1.25 * RADIUS[0]  # the core inside the smallest triangle's inscribed circle
    assert 1.25 * RADIUS[1] + JITTER < CLEAR  # the largest triangle's corners inside the clear distance


def test_a_seed_jitters_the_drawing_and_the_same_seed_repeats_it():
    scene = Scene("red", "square", "green")
    first, again = draw(scene, 64, random.Random(1)), draw(scene, 64, random.Random(1))
    other = draw(scene, 64, random.Random(2))
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_a_wrong_image_reads_as_a_mismatch_naming_what_it_shows():
    scene = Scene("red", "circle", "blue")
    swapped = read_scene(draw(Scene("blue", "circle", "red"), 96), scene)
    assert not swapped.matches and (swapped.shape_colour, swapped.background_colour) == ("blue", "red")
    assert "MISMATCH" in str(swapped)
    square = read_scene(draw(Scene("red", "square", "blue"), 96), scene)
    assert square.matches and not square.matches_shape and square.shape == "square"
    empty = read_scene(np.full((96, 96, 3), COLOURS["blue"], dtype=np.uint8), scene)
    assert not empty.matches and empty.fits == {} and empty.shape is None and "no shape-coloured region" in str(empty)


def test_stray_pixels_of_the_shapes_colour_do_not_change_the_shape_it_reads():
    """What the bounding-box fill got wrong: a few pixels apart from the shape (a VAE's speckle)
    widened the box, and a square read as a circle."""
    scene = Scene("red", "square", "blue")
    image = draw(scene, 128).copy()
    for x, y in ((30, 64), (64, 100), (97, 40)):  # within the clear distance, away from the square
        image[y, x] = COLOURS["red"]
    reading = read_scene(image, scene)
    assert reading.matches_shape, str(reading)
    assert reading.fits["square"] > 0.95 > reading.fits["circle"]


def test_a_region_that_is_none_of_the_shapes_reads_as_no_shape():
    scene = Scene("white", "circle", "black")
    plus = np.full((128, 128, 3), COLOURS["black"], dtype=np.uint8)
    plus[60:68, 36:92] = plus[36:92, 60:68] = COLOURS["white"]
    reading = read_scene(plus, scene)
    assert reading.matches and reading.shape is None and not reading.matches_shape
    assert max(reading.fits.values()) < LEAST_FIT and "no shape" in str(reading)


def test_random_blobs_mostly_read_as_no_shape_and_seldom_as_a_corner_shape():
    """A model that draws a blob of the right colours cannot pass the shape checks by luck:
    seeded smooth blobs around the centre read as no shape more often than as any shape, and as
    a square or a triangle (which need corners) seldom."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    _, clear = regions(128, 128)
    ys, xs = np.mgrid[0:128, 0:128]
    shapes = []
    for _ in range(100):
        field = ndimage.gaussian_filter(rng.standard_normal((128, 128)), 8)
        field = field / field.std() - np.hypot(xs - 64, ys - 64) / 25
        region = (field > np.quantile(field, 0.9)) & ~clear
        fits = outline_fits(region)
        shapes.append(max(fits, key=fits.__getitem__) if max(fits.values()) >= LEAST_FIT else None)
    counts = {shape: shapes.count(shape) for shape in (*SHAPES, None)}
    assert counts[None] == max(counts.values()), counts
    assert counts["square"] + counts["triangle"] <= 20, counts
