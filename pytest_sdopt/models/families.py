"""The Stable Diffusion families pytest-sdopt runs, and what a model folder says it is.

Read from `model_index.json` alone (torch-free, at configure time): the pipeline class names the
family, and the denoiser component (`unet` or `transformer`, with its class) decides which
optimizations can act on it (an optimization's `acts_on`, stacks/spec.py). A pipeline class
that is none of the supported ones is a usage error naming them; a supported pipeline whose
denoiser is a class sdopt does not know runs the optimizations that need nothing
denoiser-specific, and the rest skip with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pytest_sdopt.config.defaults import TEXT_TO_IMAGE
from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.models.tasks import PIPELINE_CLASSES
from pytest_sdopt.stacks.spec import DENOISER_WORDS


@dataclass(frozen=True)
class Family:
    name: str  # "sd15", "sdxl", "sd3"
    pipeline: str  # the diffusers text-to-image pipeline class
    denoiser: str  # the component that denoises: "unet" or "transformer"
    denoiser_class: str  # the class sdopt knows it as


FAMILIES = (
    Family("sd15", "StableDiffusionPipeline", "unet", "UNet2DConditionModel"),
    Family("sdxl", "StableDiffusionXLPipeline", "unet", "UNet2DConditionModel"),
    Family("sd3", "StableDiffusion3Pipeline", "transformer", "SD3Transformer2DModel"),
)
BY_PIPELINE = {family.pipeline: family for family in FAMILIES}
BY_FAMILY = {family.name: family for family in FAMILIES}
# A folder saved from an img2img or inpainting pipeline holds the same components: it loads as that
# class, and the run's task (models/tasks.py) derives the pipeline it needs from it.
TASK_PIPELINES = {cls: family for (family, task), cls in PIPELINE_CLASSES.items() if task != TEXT_TO_IMAGE}
SD15 = BY_PIPELINE["StableDiffusionPipeline"]
DENOISER_KINDS = {"UNet2DConditionModel": "unet", "SD3Transformer2DModel": "transformer"}


@dataclass(frozen=True)
class Denoiser:
    """What denoises in a model: its kind (`unet`, `transformer`; None: a class sdopt does not know)
    and its class name."""

    kind: str | None
    class_name: str

    def words(self) -> str:
        if self.kind is None:
            return f"a {self.class_name}, which sdopt does not know"
        return f"{DENOISER_WORDS[self.kind]} ({self.class_name})"


def supported_classes() -> str:
    return ", ".join(f"{family.pipeline} ({family.name})" for family in FAMILIES)


def read_family(folder: Path, name: str) -> tuple[Family, Denoiser]:
    """The family and denoiser of the pipeline folder `folder` (its model_index.json), or a usage
    error naming the supported pipeline classes."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SdoptUsageError(f"model {name!r}: {folder / 'model_index.json'} cannot be read ({exc}).") from None
    pipeline = str(index.get("_class_name") or "")
    family = BY_PIPELINE.get(pipeline) or BY_FAMILY.get(TASK_PIPELINES.get(pipeline, ""))
    if family is None:
        raise SdoptUsageError(
            f"model {name!r} is a {pipeline or 'pipeline with no _class_name'} (its model_index.json), which "
            f"pytest-sdopt does not run; it runs these pipeline classes: {supported_classes()}, and the img2img "
            f"and inpainting pipelines of SD 1.5 and SDXL ({', '.join(TASK_PIPELINES)})."
        )
    return family, denoiser_of(index, family)


def denoiser_of(index: dict, family: Family) -> Denoiser:
    entry = index.get(family.denoiser)
    class_name = str(entry[1]) if isinstance(entry, list) and len(entry) == 2 and entry[1] else "none"
    return Denoiser(DENOISER_KINDS.get(class_name) if class_name == family.denoiser_class else None, class_name)


def null_components(folder: Path) -> list[str]:
    """Components model_index.json lists as absent (`[null, null]`), such as SD3's T5
    (`text_encoder_3`) or a removed safety checker: they are passed as None when loading, which
    diffusers otherwise refuses ("expected [...] but only {...} were passed")."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    return sorted(key for key, value in index.items()
                  if not key.startswith("_") and isinstance(value, list) and value in ([None, None], [None]))
