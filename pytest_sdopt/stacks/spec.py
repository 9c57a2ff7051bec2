"""What an optimization is: its phase, what it needs, how it is applied, and how it shows that it acted.

An optimization that changes nothing is not a pass: the run would only redraw the reference.
So each one (bar the reference itself) has an `Effect`, checked as it is applied with no
pipeline call: a snapshot of the state it changes, taken before and after. No change means
`Stack.apply` raises `StackUnsupported` with what was found, so the stack skips with that reason
(fails under --sdopt-strict). Effects check the pipeline, not the scenario: vae_tiling still
decodes untiled when the latents fit in one tile, and vae_slicing only splits a batch of several
images. Nothing here imports torch at module import: the plugin parses stacks at configure time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable

from pytest_sdopt.core.errors import StackUnsupported
from pytest_sdopt.stacks.promises import Promise


class Phase(IntEnum):
    PRECISION = 0
    ATTENTION = 1
    VAE = 2
    TOKEN_MERGING = 3
    PLACEMENT = 4
    COMPILE = 5


# --- what an optimization needs (checked before loading the model) -----------------------

Requirement = Callable[[str], "str | None"]  # device type -> reason it cannot run, or None


def needs_cuda(device_type: str) -> str | None:
    return None if device_type == "cuda" else f"needs a CUDA device (this run is on {device_type})"


def needs_package(module: str, pip_name: str | None = None) -> Requirement:
    def check(device_type: str) -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"needs {module}, but {module} is not installed (pip install {pip_name or module})"
        return None

    return check


def needs_compiler_toolchain(device_type: str) -> str | None:
    """torch.compile's inductor needs a C++ compiler on CPU and triton on CUDA."""
    if device_type == "cuda":
        return needs_package("triton")(device_type)
    if device_type == "cpu" and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        return "needs a C++ compiler for torch.compile on CPU (g++ or clang++, or set CXX)"
    if device_type not in ("cpu", "cuda"):
        return f"needs cpu or cuda for torch.compile (this run is on {device_type})"
    return None


# --- what applying may use -------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyContext:
    """What an optimization's apply function may use besides the pipeline."""

    device: Any  # torch.device the stack runs on
    value: float | None  # the optimization's parameter (tome's ratio), None when it takes none


def first_method(name: str, candidates: list[tuple[str, Any, str]]) -> Callable[..., Any]:
    """The first (object, method) that exists: absorbs API moves between diffusers versions."""
    for _label, owner, method in candidates:
        bound = getattr(owner, method, None) if owner is not None else None
        if callable(bound):
            return bound
    tried = " or ".join(f"{label}.{method}()" for label, _owner, method in candidates)
    raise StackUnsupported(name, f"needs {tried}, which this diffusers ({diffusers_version()}) lacks")


def diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


# --- how an optimization shows that it acted (torch imported lazily, inside) ----------------


@dataclass(frozen=True)
class Effect:
    """How to see that an optimization acted on a pipeline; `Stack.apply` checks it for each one.

    `snapshot(pipe)` is the state the optimization changes, as plain values compared with `==`
    (None where that state cannot be read: then it is not judged). The same before and after
    applying means it changed nothing, and `unchanged(that snapshot)` says so in words: a verb
    phrase after the optimization's name, "changed nothing: ...". `inert(pipe)`, asked after
    applying, covers a change a snapshot cannot judge (tome always patches, but may patch only
    blocks where tomesd merges no token): the reason it will do nothing, or None.
    """

    snapshot: Callable[[Any], Any] | None = None
    unchanged: Callable[[Any], str] | None = None
    inert: Callable[[Any], "str | None"] | None = None

    def take(self, pipe: Any) -> Any:
        return self.snapshot(pipe) if self.snapshot is not None else None

    def missing(self, pipe: Any, before: Any) -> str | None:
        """Why applying changed nothing on `pipe` (`before`: the snapshot taken first), or None."""
        if self.snapshot is not None and before is not None and self.snapshot(pipe) == before:
            assert self.unchanged is not None
            return self.unchanged(before)
        return self.inert(pipe) if self.inert is not None else None


def torch_modules(pipe: Any) -> list[tuple[str, Any]]:
    import torch

    return [(name, part) for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)]


def counted(counts: Counter) -> str:
    return ", ".join(f"{label} ({n})" for label, n in sorted(counts.items()))


@dataclass(frozen=True)
class OptimizationSpec:
    """One named optimization: what it does, what it needs, how it is applied."""

    name: str
    phase: Phase
    summary: str
    default_min_ssim: float
    apply: Callable[[Any, ApplyContext], None]
    needs: tuple[Requirement, ...] = ()
    exclusive_group: str | None = None  # at most one optimization of a group per stack
    places_pipeline: bool = False  # it decides where the weights live: no plain pipe.to(device)
    default_value: float | None = None  # set when it takes a parameter (tome:0.3)
    value_range: tuple[float, float] | None = None  # open interval of valid parameters
    before_each_call: Callable[[Any], None] | None = None  # reset per-call state (seeding)
    effect: Effect | None = None  # how it shows that it acted; None only for the reference (fp32)
    # min_self_ssim: against the stack's own stored image. Near 1: the same seeded run draws the
    # same image; below it only for what moves between devices (reduced precision, tomesd's
    # random merges), since images are shared by every device.
    default_min_self_ssim: float = 0.98
    # What it promises against the reference, per device type (promises.py): the promise gates
    # (min_speedup, max_memory_ratio, --sdopt-promises) check these. `promises_nothing`:
    # (device type, why) where it promises nothing, so the gate says n/a with that reason.
    promises: tuple[Promise, ...] = ()
    promises_nothing: tuple[tuple[str, str], ...] = ()
    # The denoisers it acts on ("unet", "transformer": models/families.py); None: any pipeline (it
    # works on the pipeline's parts in general: precision, the VAE, offloads). A model whose
    # denoiser is none of these skips the stack, naming both.
    acts_on: tuple[str, ...] | None = None


DENOISER_WORDS = {"unet": "a UNet", "transformer": "a transformer"}


def denoiser_of(pipe: Any) -> Any:
    """The pipeline's denoiser: its UNet (SD 1.5, SDXL) or transformer (SD3); None if neither."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else getattr(pipe, "transformer", None)
