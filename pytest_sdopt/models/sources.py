"""Where pipelines come from: the embedded `tiny`, a published architecture with random weights
(`sd15-random`, `sdxl-random`, `sd3-random`), a local folder, or a cached hub id.

`resolve_model(text)` checks the name without importing torch and returns a `ModelSource`;
its `load(device)` returns a fresh pipeline every call, so no state from one stack (hooks,
patches, dtypes) can leak into the next. Weights load from safetensors only: a pickle can
run code, so a folder that has only `.bin` / `.ckpt` / `.pt` weights is refused.

Loading fresh is cheap because the weights stay in memory between stacks, outside the
process: safetensors files are memory-mapped, so after the first load every later one reads
the OS page cache (0.08 s for `tiny`, 0.14 s for SD 1.5 on the 2-core CI machine). The page
cache is not the process's memory, so it adds nothing to the host peaks sdopt measures; only
the pages a live pipeline maps count, and those are its weights. A random architecture has no
files, so it is built once (seeded, on the CPU) and saved under the results folder; building
SD 1.5 again for every stack took 15 s each on that machine.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.config.defaults import (DEFAULT_GUIDANCE, DEFAULT_PROMPT, EMBEDDED_MODELS, RANDOM_MODELS, TEXT_TO_IMAGE,
                                         looks_like_path)
from pytest_sdopt.models.families import (BY_FAMILY, SD15 as SD15_FAMILY, Denoiser, Family, null_components,
                                          read_family)
from pytest_sdopt.models.tasks import pipeline_class

EMBEDDED = Path(__file__).resolve().parent / "embedded"
TINY_DIR = EMBEDDED / "tiny"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


@dataclass(frozen=True)
class ModelSource:
    """A named model and how to make a fresh pipeline of it."""

    name: str  # as the user gave it; what results and baselines are filed under
    kind: str  # "embedded", "random" (a published architecture with seeded random weights), "folder" or "hub"
    folder: Path | None = None  # where from_pretrained reads it (None for a random architecture)
    default_size: tuple[int, int] | None = None  # None: the pipeline's own default
    default_steps: int | None = None
    default_prompt: str = DEFAULT_PROMPT  # what runs draw unless a prompt is set
    default_guidance: float = DEFAULT_GUIDANCE
    cache: Path | None = None  # a random architecture: where its weights are saved once (None: built every load)
    family: Family = SD15_FAMILY  # which pipeline class it loads as (models/families.py)
    denoiser: Denoiser = Denoiser("unet", "UNet2DConditionModel")  # what optimizations that act on one see

    def complete(self, scenario: Any) -> Any:
        """`scenario` with what it leaves unset (None) taken from this model's defaults."""
        from dataclasses import replace

        return replace(scenario, size=scenario.size or self.default_size, steps=scenario.steps or self.default_steps,
                       prompt=self.default_prompt if scenario.prompt is None else scenario.prompt,
                       guidance=self.default_guidance if scenario.guidance is None else scenario.guidance)

    def scenario(self, device: str, seed: int = 1) -> Any:
        """The scenario a run of this model draws when nothing is set (what benchmarks measure)."""
        from pytest_sdopt.config.scenario import Scenario

        return self.complete(Scenario(self.name, device, None, seed, None, None, None))

    def pipeline_class_name(self) -> str:
        """The diffusers pipeline class this model loads as (from model_index.json; torch-free)."""
        return self.family.pipeline

    def call_parameters(self, task: str = TEXT_TO_IMAGE) -> tuple[str, frozenset[str] | None]:
        """The task's pipeline class's name and the keywords its `__call__` names (None: a class
        diffusers does not have, so nothing can be checked). A catch-all `**kwargs` is not counted:
        diffusers' pipelines keep it for deprecated arguments, and a typo must not vanish into it."""
        name, parameters = self._call_signature(task)
        if parameters is None:
            return name, None
        return name, frozenset(key for key, parameter in parameters.items() if key != "self"
                               and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL))

    def call_default(self, task: str, name: str) -> Any:
        """The default of keyword `name` in the task's pipeline's `__call__` (None: it has none)."""
        parameter = (self._call_signature(task)[1] or {}).get(name)
        return None if parameter is None or parameter.default is parameter.empty else parameter.default

    def _call_signature(self, task: str) -> tuple[str, Any]:
        import inspect

        import diffusers

        name = pipeline_class(self.family.name, task)
        cls = getattr(diffusers, name, None)
        return name, None if cls is None else inspect.signature(cls.__call__).parameters

    def load(self) -> Any:
        """A new float32 pipeline on the CPU; the stack moves it where it runs."""
        if self.kind == "random":
            from pytest_sdopt.models.architectures import RANDOM

            arch = RANDOM[self.name]
            if self.cache is None:
                return _build_random(arch, "cpu")
            return _load_folder(materialize(arch, self.cache), self.name)
        assert self.folder is not None
        return _load_folder(self.folder, self.name)


def resolve_model(text: str, cache: Path | None = None) -> ModelSource:
    """Check a model name and say where it comes from; torch-free, so it runs at configure time.

    `cache`: the folder where models without files (the random architectures) are saved once.
    """
    spec = text.strip()
    if spec in EMBEDDED_MODELS:
        folder = EMBEDDED / spec
        facts = json.loads((folder / "sdopt_model.json").read_text(encoding="utf-8"))
        return ModelSource(spec, "embedded", folder, tuple(facts["default_size"]), facts["default_steps"],
                           facts.get("default_prompt", DEFAULT_PROMPT), facts.get("default_guidance", DEFAULT_GUIDANCE),
                           **_family_fields(folder, spec))
    if spec in RANDOM_MODELS:
        from pytest_sdopt.models.architectures import RANDOM

        arch = RANDOM[spec]
        family = BY_FAMILY[arch.family]
        return ModelSource(spec, "random", None, arch.default_size, arch.default_steps, cache=cache, family=family,
                           denoiser=Denoiser(family.denoiser, family.denoiser_class))
    path = Path(spec).expanduser()
    if path.exists():
        folder = _checked_folder(path, spec)
        return ModelSource(spec, "folder", folder, _folder_default_size(path), **_family_fields(folder, spec))
    if looks_like_path(spec):
        raise SdoptUsageError(
            f"model folder {str(path.absolute())!r} does not exist (no such folder). A relative folder is taken from "
            f"the ini file's folder for an ini value, the rootdir for a marker or keyword, and the current folder "
            f"on the command line. (Other models: {_named_models()}; a cached hub id 'org/name'.)"
        )
    folder = _checked_folder(_cached_snapshot(spec, str(path.absolute())), spec)
    return ModelSource(spec, "hub", folder, _folder_default_size(folder), **_family_fields(folder, spec))


def _named_models() -> str:
    quoted = lambda names: ", ".join(repr(name) for name in names)  # noqa: E731
    return f"{quoted(EMBEDDED_MODELS)}, embedded; {quoted(RANDOM_MODELS)}, random weights"


def _family_fields(folder: Path, name: str) -> dict[str, Any]:
    family, denoiser = read_family(folder, name)
    return {"family": family, "denoiser": denoiser}


def _cached_snapshot(repo_id: str, as_folder: str) -> Path:
    """The hub id's snapshot in the local cache; pytest-sdopt never downloads. `as_folder`: where the
    name was looked for as a folder first (an org/name can be either)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:  # not cached; anything else (a permission error, a corrupt cache) says itself
        raise SdoptUsageError(
            f"model {repo_id!r} is no folder (none at {as_folder!r}) and, as a hub id, not in the local Hugging "
            f"Face cache ({HF_HUB_CACHE}); pytest-sdopt never downloads. Fetch it once where there is network "
            f"(`hf download {repo_id}`), point HF_HOME or HF_HUB_CACHE at a cache that has it, or pass a local "
            f"diffusers folder."
        ) from None
    except ValueError as exc:  # huggingface_hub's HFValidationError: not a form the hub accepts
        raise SdoptUsageError(f"model {repo_id!r} is no folder (none at {as_folder!r}) and not a valid hub id: "
                              f"{exc}") from None
    except OSError as exc:  # the cache is there but cannot be read: that, not a missing model, is the fix
        raise SdoptUsageError(f"model {repo_id!r}: the Hugging Face cache ({HF_HUB_CACHE}) could not be read: "
                              f"{exc}") from None


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
    """The size the pipeline would pick: the denoiser's sample size times the VAE's downscale factor."""
    for denoiser in ("unet", "transformer"):  # SD 1.5 / SDXL; SD3
        try:
            config = json.loads((path / denoiser / "config.json").read_text(encoding="utf-8"))
            vae = json.loads((path / "vae" / "config.json").read_text(encoding="utf-8"))
            side = int(config["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return side, side
    return None  # neither: the pipeline's own default applies


def _load_folder(folder: Path, name: str) -> Any:
    from diffusers import DiffusionPipeline

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    # Components the folder lists as absent (SD3 without T5) are passed as None, as diffusers wants.
    extra: dict[str, Any] = {name: None for name in null_components(folder)}
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


def materialize(arch: Any, cache: Path, seed: int = 0) -> Path:
    """The folder holding `arch` with seeded random weights, built and saved the first time.

    Built on the CPU whatever the device: CUDA's generator draws other numbers than the CPU's,
    and every stack (offloads start from CPU weights) must see the same model. Keyed by the
    library versions that decide the weights; older folders of the same architecture are
    removed, so the cache holds one copy. A file lock lets pytest-xdist workers share it.
    """
    from importlib import metadata

    from filelock import FileLock

    versions = "-".join(f"{name}{metadata.version(name).split('+')[0]}" for name in ("torch", "diffusers", "transformers"))
    folder = Path(cache) / f"{arch.name}-seed{seed}-{versions}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{arch.name}.lock")):
        if not (folder / "model_index.json").is_file():
            for stale in folder.parent.glob(f"{arch.name}-seed{seed}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            building = folder.with_name(f".{folder.name}.partial")
            shutil.rmtree(building, ignore_errors=True)
            _build_random(arch, "cpu", seed).save_pretrained(building, safe_serialization=True)
            os.replace(building, folder)  # a crash mid-save leaves only the .partial folder behind
    return folder


def _build_random(arch: Any, device: Any, seed: int = 0) -> Any:
    """`arch` with seeded random weights, created on `device` (no download). Every text encoder
    reads prompts through the embedded tokenizer (its ids are a subset of CLIP's vocabulary)."""
    import diffusers
    from transformers import CLIPTokenizer

    from pytest_sdopt.models.architectures import build_components

    tokenizer = CLIPTokenizer.from_pretrained(TINY_DIR / "tokenizer")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    with _quiet_progress_bars():
        parts = build_components(arch, seed=seed, device=device, special_token_ids=ids)
    pipeline = getattr(diffusers, BY_FAMILY[arch.family].pipeline)
    if arch.family == "sd15":
        return pipeline(**parts, tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                        requires_safety_checker=False)
    if arch.family == "sdxl":
        return pipeline(**parts, tokenizer=tokenizer, tokenizer_2=tokenizer)
    return pipeline(**parts, tokenizer=tokenizer, tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
