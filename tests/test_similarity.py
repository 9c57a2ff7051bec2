"""SSIM through scikit-image, size mismatches as errors of their own, and the images left behind."""

import numpy as np
import pytest
from PIL import Image

from pytest_sdopt.checks.similarity import ImageSizeMismatch, artifact_folder, compare, diff_image, write_artifacts

RNG = np.random.default_rng(0)
SMOOTH = np.stack([*np.meshgrid(np.arange(64) * 4, np.arange(64) * 4), np.full((64, 64), 128)], -1).astype(np.uint8)


def test_identical_images_score_one_and_noise_scores_near_zero():
    assert compare(SMOOTH, Image.fromarray(SMOOTH)).ssim == pytest.approx(1.0)
    noise = RNG.integers(0, 256, SMOOTH.shape, dtype=np.uint8)
    assert compare(SMOOTH, noise).ssim < 0.1


def test_a_slight_change_scores_between():
    shifted = np.clip(SMOOTH.astype(int) + RNG.integers(-3, 4, SMOOTH.shape), 0, 255).astype(np.uint8)
    assert 0.5 < compare(SMOOTH, shifted).ssim < 1.0


def test_images_of_different_sizes_are_never_compared():
    with pytest.raises(ImageSizeMismatch, match="baseline image is 64x32 but this run drew 64x64"):
        compare(SMOOTH, SMOOTH[:32])


def test_the_diff_image_is_white_where_the_images_differ():
    changed = SMOOTH.copy()
    changed[:16, :16] = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    diff = np.asarray(diff_image(compare(changed, SMOOTH)))
    assert diff.shape == (64, 64)
    assert diff[:8, :8].mean() > 100 and diff[40:, 40:].mean() < 5


def test_artifacts_are_written_as_pngs_named_by_role(tmp_path):
    folder = artifact_folder(tmp_path, "tests/test_x.py::test_hold[fp16+tome:0.3]", "fp16+tome:0.3")
    assert folder == tmp_path / "tests_test_x.py--test_hold[fp16+tome_0.3]" / "fp16+tome-0.3"
    written = dict(write_artifacts(folder, Image.fromarray(SMOOTH), SMOOTH, compare(SMOOTH, SMOOTH)))
    assert sorted(written) == ["actual", "baseline", "diff"]
    assert Image.open(written["diff"]).size == (64, 64)
    only_two = dict(write_artifacts(tmp_path / "mismatch", SMOOTH, SMOOTH[:32], None))
    assert sorted(only_two) == ["actual", "baseline"]
