"""What a run draws (Scenario), how it is measured (Measurement) and the limits a check applies
(GateLimits): plain values resolved from the settings, no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_sdopt.config.defaults import REFERENCE, TEXT_TO_IMAGE


@dataclass(frozen=True)
class Scenario:
    """Model, device, prompt, seed, size, steps, guidance and the pipeline's own call arguments:
    everything that decides the image.

    `prompt`, `size`, `steps` and `guidance` are None only until the model's defaults are filled in.
    `call_args`: keywords passed to the pipeline's `__call__` as given (`negative_prompt`,
    `clip_skip`, ...), as sorted (name, value) pairs so the scenario stays hashable; values are
    JSON values (config/call_args.py), so the baseline key and scenario.json can record them.
    """

    model: str
    device: str
    prompt: str | None
    seed: int
    size: tuple[int, int] | None
    steps: int | None
    guidance: float | None
    call_args: tuple[tuple[str, Any], ...] = ()
    task: str = TEXT_TO_IMAGE  # or img2img, inpaint (models/tasks.py)

    @property
    def call_arguments(self) -> dict[str, Any]:
        return {name: _thawed(value) for name, value in self.call_args}

    @property
    def images_per_prompt(self) -> int:
        """How many images one call draws (the pipeline's `num_images_per_prompt`, 1 unless set)."""
        return int(dict(self.call_args).get("num_images_per_prompt") or 1)

    @property
    def size_text(self) -> str:
        return f"{self.size[0]}x{self.size[1]}" if self.size else "default"


@dataclass(frozen=True)
class Measurement:
    """How many runs: unmeasured warm-ups first, then measured repeats, then more measured runs
    while settling the speed figure (see measure/settling.py; `settle_s` None: the default, checks only).
    `cpu_threads`: torch's intra-op threads during a CPU run (None: devices.DEFAULT_CPU_THREADS)."""

    repeats: int
    warmup: int
    settle_s: float | None = None
    cpu_threads: int | None = None


@dataclass(frozen=True)
class GateLimits:
    """The limits one check applies; None: that gate is not set (or switched off)."""

    max_vram: int | None = None
    max_host_memory: int | None = None
    min_its: float | None = None
    min_ssim: float | None = None
    reference: str = REFERENCE
    min_self_ssim: float | None = None
    max_its_drop: float | None = None
    max_memory_growth: float | None = None
    min_speedup: float | None = None
    max_memory_ratio: float | None = None
    promises: bool = False  # apply the registry's promises where min_speedup / max_memory_ratio are not set

    @property
    def checks_promises(self) -> bool:
        """Whether the check measures the stack beside the reference (the promise gates)."""
        return bool(self.promises or self.min_speedup is not None or self.max_memory_ratio is not None)


def _thawed(value: Any) -> Any:
    """A call argument as the pipeline takes it: lists where the scenario keeps tuples, a PIL image
    where it keeps an image's bytes and hash (config/call_args.ImageArgument)."""
    if isinstance(value, tuple):
        return [_thawed(item) for item in value]
    return value.image() if hasattr(value, "image") and hasattr(value, "sha256") else value
