"""The pipeline's own call arguments: keywords of `sdopt.run` and `@pytest.mark.sdopt` that are no
sdopt setting pass through to the pipeline's `__call__` (`negative_prompt`, `clip_skip`,
`guidance_rescale`, `num_images_per_prompt`, ...).

Torch-free: this module only checks a keyword's form and value and freezes it into the scenario;
whether the loaded pipeline accepts it is checked against its `__call__` signature
(`accepted_by`, given the names the models layer reads). Values are JSON values (strings,
numbers, booleans, None, lists of them), because they decide the image: they go into the
baseline folder's key and `scenario.json`, and must read back the same. The one exception is an
image (img2img's `image`, inpainting's `mask_image`): kept as its RGB pixels with their sha256,
which stands for it in the key and the files.
"""

from __future__ import annotations

import hashlib
import json
import math
from difflib import get_close_matches
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pytest_sdopt.core.errors import SdoptUsageError

# The pipeline arguments sdopt sets itself, and the setting that decides each: passing one through
# would bypass the seeded, measured call (or make the scenario lie about what was drawn).
OWNED = {
    "prompt": "prompt", "guidance_scale": "guidance", "num_inference_steps": "steps", "width": "size",
    "height": "size", "generator": "seed", "latents": "seed", "output_type": None, "return_dict": None,
    "callback_on_step_end": None, "callback_on_step_end_tensor_inputs": None, "callback": None,
    "callback_steps": None,
}


@dataclass(frozen=True)
class ImageArgument:
    """An image passed to the pipeline, as the scenario keeps it: hashable, compared by its pixels."""

    sha256: str
    size: tuple[int, int]
    pixels: bytes = field(repr=False, compare=False)

    @classmethod
    def of(cls, image: Any) -> "ImageArgument":
        rgb = image.convert("RGB")
        pixels = rgb.tobytes()
        digest = hashlib.sha256(f"{rgb.size[0]}x{rgb.size[1]}:".encode() + pixels).hexdigest()
        return cls(digest, rgb.size, pixels)

    def image(self) -> Any:
        from PIL import Image

        return Image.frombytes("RGB", self.size, self.pixels)

    def text(self) -> str:
        return f"image {self.size[0]}x{self.size[1]} sha256:{self.sha256}"


def _is_image(value: Any) -> bool:
    return callable(getattr(value, "convert", None)) and callable(getattr(value, "tobytes", None)) \
        and hasattr(value, "size") and hasattr(value, "mode")


def frozen(name: str, value: Any, where: str) -> Any:
    """`value` as the scenario keeps it (lists as tuples), or a usage error naming what is accepted."""
    if value is None or isinstance(value, (str, bool, int, ImageArgument)):
        return value
    if _is_image(value):
        return ImageArgument.of(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SdoptUsageError(f"{where}({name}={value!r}): a call argument must be a finite number.")
        return value
    if isinstance(value, (list, tuple)):
        return tuple(frozen(name, item, where) for item in value)
    raise SdoptUsageError(
        f"{where}({name}=...) got a {type(value).__name__}; a pipeline call argument passed through sdopt is a "
        f"string, number, boolean, None, a PIL image or a list of them, because it is part of the baseline's key "
        f"and scenario.json.")


def freeze(arguments: Mapping[str, Any], where: str) -> tuple[tuple[str, Any], ...]:
    owned = sorted(name for name in arguments if name in OWNED)
    if owned:
        said = [f"{name} (sdopt's `{OWNED[name]}` setting)" if OWNED[name] else f"{name} (sdopt sets it)"
                for name in owned]
        raise SdoptUsageError(f"{where} got {', '.join(said)}: these pipeline arguments are set by sdopt for a "
                              f"seeded, measured call; use the setting named instead.")
    return tuple(sorted((name, frozen(name, value, where)) for name, value in arguments.items()))


def merged(*layers: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """Later layers win per argument (a keyword beats its test's marker)."""
    combined: dict[str, Any] = {}
    for layer in layers:
        combined.update(layer)
    return tuple(sorted(combined.items()))


def unaccepted(call_args: Iterable[tuple[str, Any]], accepted: Iterable[str] | None, pipeline: str,
               settings: Iterable[str], where: str) -> SdoptUsageError | None:
    """The error for call arguments `pipeline.__call__` does not take (`accepted` None: it takes any)."""
    if accepted is None:
        return None
    allowed = set(accepted)
    unknown = sorted(name for name, _ in call_args if name not in allowed)
    if not unknown:
        return None
    offered = sorted(allowed - set(OWNED))
    known = [*settings, *offered]
    hints = [f"{name!r} -> {close[0]!r}" for name in unknown if (close := get_close_matches(name, known, 1, 0.75))]
    return SdoptUsageError(
        f"{where} got unknown keyword(s) {', '.join(unknown)}: neither an sdopt setting nor an argument of "
        f"{pipeline}.__call__.{' Did you mean ' + ', '.join(hints) + '?' if hints else ''} sdopt settings: "
        f"{', '.join(settings)}. {pipeline}.__call__ also accepts: {', '.join(offered)}.")


def key_part(call_args: tuple[tuple[str, Any], ...]) -> str:
    """`-a1b2c3d4e5` for the baseline folder's name when arguments are passed; '' when none."""
    if not call_args:
        return ""
    text = json.dumps(dict(call_args), sort_keys=True, separators=(",", ":"), default=_json_default)
    return "-a" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:9]


def document(call_args: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """As JSON files write them: a mapping, lists for tuples, an image as its size and hash."""
    return json.loads(json.dumps(dict(call_args), default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, ImageArgument):
        return value.text()
    raise TypeError(f"{type(value).__name__} is not a call argument sdopt keeps")
