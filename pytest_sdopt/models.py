"""Where pipelines come from: the embedded `tiny`, `sd15-random`, a local folder, or a cached hub id.

`resolve_model(text)` checks the name without importing torch and returns a `ModelSource`;
its `load(device)` returns a fresh pipeline every call, so no state from one stack (hooks,
patches, dtypes) can leak into the next. Weights load from safetensors only: a pickle can
run code, so a folder that has only `.bin` / `.ckpt` / `.pt` weights is refused.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pytest_sdopt.errors import SdoptUsageError

EMBEDDED = Path(__file__).resolve().parent / "embedded"
TINY_DIR = EMBEDDED / "tiny"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """A named model and how to make a fresh pipeline of it."""

    name: str  # as the user gave it; what results and baselines are filed under
    kind: str  # "embedded", "sd15-random", "folder" or "hub"
    folder: Path | None = None  # where from_pretrained reads it (None for sd15-random)
    default_size: tuple[int, int] | None = None  # None: the pipeline's own default
    default_steps: int | None = None

    def load(self, device: Any) -> Any:
        """A new pipeline in float32. sd15-random is built directly on `device`; others load on CPU."""
        if self.kind == "sd15-random":
            return _build_sd15_random(device)
        assert self.folder is not None
        return _load_folder(self.folder, self.name)


def resolve_model(text: str) -> ModelSource:
    """Check a model name and say where it comes from; torch-free, so it runs at configure time."""
    spec = text.strip()
    if spec == "tiny":
        facts = json.loads((TINY_DIR / "sdopt_model.json").read_text(encoding="utf-8"))
        return ModelSource("tiny", "embedded", TINY_DIR, tuple(facts["default_size"]), facts["default_steps"])
    if spec == "sd15-random":
        from pytest_sdopt.architectures import SD15

        return ModelSource("sd15-random", "sd15-random", None, SD15.default_size, SD15.default_steps)
    path = Path(spec).expanduser()
    if path.exists():
        return ModelSource(spec, "folder", _checked_folder(path, spec), _folder_default_size(path))
    if spec.startswith(("/", ".", "~")) or "\\" in spec or not _HUB_ID.match(spec):
        raise SdoptUsageError(
            f"model {spec!r} is neither 'tiny' (embedded), 'sd15-random', an existing diffusers folder, "
            f"nor a hub id such as 'org/name' (no folder exists at {str(path.absolute())!r})."
        )
    folder = _cached_snapshot(spec)
    return ModelSource(spec, "hub", _checked_folder(folder, spec), _folder_default_size(folder))


def _cached_snapshot(repo_id: str) -> Path:
    """The hub id's snapshot in the local cache; pytest-sdopt never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        raise SdoptUsageError(
            f"model {repo_id!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}), and pytest-sdopt "
            f"never downloads. Fetch it once where there is network (`hf download {repo_id}`), point HF_HOME "
            f"or HF_HUB_CACHE at a cache that has it, or pass a local diffusers folder."
        ) from None


def _checked_folder(path: Path, name: str) -> Path:
    if not path.is_dir():
        raise SdoptUsageError(
            f"model {name!r} is a file, not a diffusers pipeline folder. Single-file checkpoints are not "
            f"loaded; convert once with `StableDiffusionPipeline.from_single_file(...).save_pretrained(folder)`."
        )
    if not (path / "model_index.json").is_file():
        raise SdoptUsageError(
            f"model folder {str(path)!r} is not a diffusers pipeline: it has no model_index.json. "
            f"Point --sdopt-model at the folder that `save_pretrained()` wrote."
        )
    pickles_only = [
        part.name for part in sorted(path.iterdir())
        if part.is_dir()
        and any(f.suffix in PICKLE_SUFFIXES for f in part.iterdir())
        and not any(f.suffix == ".safetensors" for f in part.iterdir())
    ]
    if pickles_only:
        raise SdoptUsageError(
            f"model folder {str(path)!r} has only pickle weights (.bin/.ckpt) in {', '.join(pickles_only)}; "
            f"pytest-sdopt loads safetensors only, because a pickle can run code when loaded. Convert them "
            f"once with `pipe.save_pretrained(folder, safe_serialization=True)`."
        )
    return path


def _folder_default_size(path: Path) -> tuple[int, int] | None:
    """The size the pipeline would pick: UNet sample size times the VAE's downscale factor."""
    try:
        unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((path / "vae" / "config.json").read_text(encoding="utf-8"))
        side = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a UNet pipeline: the pipeline's own default applies
    return side, side


def _load_folder(folder: Path, name: str) -> Any:
    from diffusers import DiffusionPipeline

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    extra: dict[str, Any] = {}
    if index.get("safety_checker") not in (None, [None, None]):
        # The safety checker blanks images it dislikes: a benchmark must see the real output.
        extra.update(safety_checker=None, requires_safety_checker=False)
    try:
        with _quiet_progress_bars():
            return DiffusionPipeline.from_pretrained(folder, use_safetensors=True, local_files_only=True, **extra)
    except (OSError, ValueError) as exc:
        raise SdoptUsageError(f"model {name!r} could not be loaded from {str(folder)!r}: {exc}") from exc


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """No loading bars in test output; the user's own setting is restored afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = []
    for library in (diffusers_logging, transformers_logging):
        if library.is_progress_bar_enabled():
            library.disable_progress_bar()
            restore.append(library)
    try:
        yield
    finally:
        for library in restore:
            library.enable_progress_bar()


def _build_sd15_random(device: Any) -> Any:
    """SD 1.5's architecture with seeded random weights, created on `device` (no download)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from pytest_sdopt.architectures import SD15, build_components

    tokenizer = CLIPTokenizer.from_pretrained(TINY_DIR / "tokenizer")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    parts = build_components(SD15, seed=0, device=device, special_token_ids=ids)
    return StableDiffusionPipeline(**parts, tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)

