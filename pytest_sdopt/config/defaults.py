"""Names and defaults that several layers share, each named once here.

`REFERENCE` is the stack every other is compared with (the precision family's float32 entry is
registered under it); the prompt and guidance are what a model that names none of its own draws;
`NAMED_MODELS` are the model names that are never folders, so the settings can anchor a relative
model folder without knowing how models load.
"""

from __future__ import annotations

import re
from pathlib import Path

REFERENCE = "fp32"
# The prompt and guidance of a model that names none of its own (the embedded `tiny` names a
# scene it was trained on, and the guidance it draws cleanly at).
DEFAULT_PROMPT = "high resolution, a photograph of an astronaut riding a horse"
DEFAULT_GUIDANCE = 7.5
# What a run does (models/tasks.py): draw from a prompt, redraw an init image, or repaint a masked part.
TEXT_TO_IMAGE, IMG2IMG, INPAINT = "text-to-image", "img2img", "inpaint"
TASKS = (TEXT_TO_IMAGE, IMG2IMG, INPAINT)
RANDOM_MODELS = ("sd15-random", "sdxl-random", "sd3-random")  # published architectures, random weights
EMBEDDED_MODELS = ("tiny", "tiny-xl", "tiny-sd3")  # trained here, shipped in the package: SD 1.5, SDXL, SD3
NAMED_MODELS = (*EMBEDDED_MODELS, *RANDOM_MODELS)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_path(spec: str) -> bool:
    """A model name that can only be a folder: absolute, ./ ../ ~, a backslash, or more than org/name."""
    return spec.startswith(("/", ".", "~")) or "\\" in spec or not _HUB_ID.match(spec)


def is_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec))


def anchor_model_path(text: str, base: Path) -> str:
    """A relative folder name taken from `base`, as the other path settings are: the ini file's folder
    for an ini value, the rootdir for a marker or keyword, the invocation folder on the command line.
    Named models and absolute paths stay as they are; so does an `org/name` that is no folder under
    `base` (it may be a hub id)."""
    spec = text.strip()
    path = Path(spec).expanduser()
    if spec in NAMED_MODELS or path.is_absolute():
        return spec
    anchored = Path(base) / path
    if anchored.exists() or looks_like_path(spec):
        return str(anchored.resolve())
    return spec
