"""Image similarity: scikit-image SSIM on RGB uint8, and the images a failed comparison leaves behind.

DESIGN §4: `structural_similarity(..., channel_axis=-1, data_range=255)`. Images of different
sizes are never compared (no cropping to the overlap): that is an error of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_sdopt.core.files import safe_name


class ImageSizeMismatch(Exception):
    """The run's image and the baseline differ in size; the message names both sizes."""


@dataclass(frozen=True)
class Similarity:
    ssim: float
    ssim_map: Any  # per-pixel, per-channel SSIM (H, W, 3), for the diff image


def as_rgb_array(image: Any) -> Any:
    import numpy as np

    if hasattr(image, "convert"):  # a PIL image
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB uint8 image, got an array of shape {array.shape} and dtype {array.dtype}")
    return array


def compare(actual: Any, baseline: Any) -> Similarity:
    """SSIM of two RGB images (PIL or uint8 arrays) of the same size."""
    from skimage.metrics import structural_similarity

    actual, baseline = as_rgb_array(actual), as_rgb_array(baseline)
    if actual.shape != baseline.shape:
        raise ImageSizeMismatch(
            f"the baseline image is {baseline.shape[1]}x{baseline.shape[0]} but this run drew "
            f"{actual.shape[1]}x{actual.shape[0]}; images of different sizes are not compared"
        )
    score, ssim_map = structural_similarity(actual, baseline, channel_axis=-1, data_range=255, full=True)
    return Similarity(float(score), ssim_map)


def diff_image(similarity: Similarity) -> Any:
    """Where the images differ in structure: white where SSIM is low, black where they agree."""
    import numpy as np
    from PIL import Image

    dissimilarity = np.clip(1.0 - similarity.ssim_map.mean(axis=-1), 0.0, 1.0)
    return Image.fromarray((dissimilarity * 255).round().astype(np.uint8), mode="L")


def write_artifacts(folder: Path, actual: Any, baseline: Any, similarity: Similarity | None) -> tuple[tuple[str, str], ...]:
    """Save actual, baseline and (when the sizes matched) diff images; returns (label, path) pairs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images = {"actual": actual, "baseline": baseline}
    if similarity is not None:
        images["diff"] = diff_image(similarity)
    written = []
    for label, image in images.items():
        path = folder / f"{label}.png"
        if not hasattr(image, "save"):
            image = Image.fromarray(image)
        image.save(path, format="PNG")
        written.append((label, str(path)))
    return tuple(written)


def artifact_folder(results_dir: Path, nodeid: str, stack: str, run: int = 1) -> Path:
    """`<results dir>/<test>/<stack>/`: a test's artifacts are found by its name; a later run of the
    same stack in that test (`run` > 1) gets `<stack>.run<N>/`, so it never overwrites the first's."""
    return Path(results_dir) / safe_name(nodeid.replace("::", "--"), "[],") / (safe_name(stack.replace(":", "-"))
                                                                        + run_suffix(run))


def run_suffix(run: int) -> str:
    """What a later run of a stack in the same test adds to its file names ("" for the first)."""
    return "" if run == 1 else f".run{run}"
