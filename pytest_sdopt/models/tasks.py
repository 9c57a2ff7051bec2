"""What a run does with the model: text-to-image, img2img or inpainting (SD 1.5 and SDXL).

The model loads as its text-to-image pipeline (or whatever its folder holds) and `for_task`
derives the task's pipeline from the same components with the class's `from_pipe`, so no weights
are loaded twice and every stack acts on the pipeline that runs. A run that names no init image
or mask gets ones drawn by the scene generator at the scenario's size: a scene the embedded
model was trained on, and a square mask over its middle (white: repainted), so the matrix runs
these tasks with no test code. They are call arguments like any other, so their hash is part of
the baseline's key.
"""

from __future__ import annotations

from typing import Any

from pytest_sdopt.config.defaults import IMG2IMG, INPAINT, TASKS, TEXT_TO_IMAGE
from pytest_sdopt.core.errors import SdoptUsageError

__all__ = ["PIPELINE_CLASSES", "TASKS", "for_task", "defaults_for", "pipeline_class", "unsupported"]

# What a task's call needs beyond a prompt, drawn when the run gives none.
NEEDS = {TEXT_TO_IMAGE: (), IMG2IMG: ("image",), INPAINT: ("image", "mask_image")}
DEFAULT_SCENE = ("red", "circle", "green")  # colour, shape, background: a caption `tiny` was trained on
MASK_SIDE = 0.5  # the default mask: a centred square of half the image's side
PIPELINE_CLASSES = {
    ("sd15", TEXT_TO_IMAGE): "StableDiffusionPipeline", ("sd15", IMG2IMG): "StableDiffusionImg2ImgPipeline",
    ("sd15", INPAINT): "StableDiffusionInpaintPipeline", ("sdxl", TEXT_TO_IMAGE): "StableDiffusionXLPipeline",
    ("sdxl", IMG2IMG): "StableDiffusionXLImg2ImgPipeline", ("sdxl", INPAINT): "StableDiffusionXLInpaintPipeline",
    ("sd3", TEXT_TO_IMAGE): "StableDiffusion3Pipeline",
}  # the one table of which family runs which task as which class (families.py reads it too)
TASK_FAMILIES = {task: tuple(family for family, of in PIPELINE_CLASSES if of == task) for task in TASKS}


def pipeline_class(family: str, task: str) -> str:
    """The diffusers class a run of `task` on a `family` model calls."""
    return PIPELINE_CLASSES[(family, task)]


def unsupported(task: str, family: str, model: str) -> SdoptUsageError | None:
    if family in TASK_FAMILIES[task]:
        return None
    names = {"sd15": "SD 1.5", "sdxl": "SDXL", "sd3": "SD3"}
    runs_on = " and ".join(names[name] for name in TASK_FAMILIES[task])
    return SdoptUsageError(f"task {task!r} runs on {runs_on} models; {model} is {names.get(family, family)}.")


def default_image(size: tuple[int, int]) -> Any:
    """The default init image: the scene `a red circle on a green background` at `size` (a PIL image)."""
    from PIL import Image

    from pytest_sdopt.models.scenes import Scene, draw

    width, height = size
    drawn = Image.fromarray(draw(Scene(*DEFAULT_SCENE), size=max(width, height)))
    return drawn.resize((width, height), Image.Resampling.BOX) if width != height else drawn


def default_mask(size: tuple[int, int]) -> Any:
    """The default mask: white (repainted) in a centred square of half the side, black elsewhere."""
    from PIL import Image, ImageDraw

    width, height = size
    mask = Image.new("RGB", (width, height), (0, 0, 0))
    half_w, half_h = width * MASK_SIDE / 2, height * MASK_SIDE / 2
    ImageDraw.Draw(mask).rectangle((width / 2 - half_w, height / 2 - half_h, width / 2 + half_w - 1,
                                    height / 2 + half_h - 1), fill=(255, 255, 255))
    return mask


def defaults_for(task: str, size: tuple[int, int], given: set[str]) -> dict[str, Any]:
    """The init image and mask the task needs and the run did not give."""
    draw = {"image": default_image, "mask_image": default_mask}
    return {name: draw[name](size) for name in NEEDS[task] if name not in given}


def for_task(pipe: Any, task: str, family: str) -> Any:
    """`pipe`'s components as the task's pipeline of `family` (the same objects: nothing is copied).

    The class is named, not found through diffusers' AutoPipeline: that imports every pipeline
    diffusers has, and with transformers 5 an older diffusers (0.35) fails on one of them."""
    import diffusers

    wanted = pipeline_class(family, task)
    if type(pipe).__name__ == wanted:
        return pipe
    return getattr(diffusers, wanted).from_pipe(pipe)
