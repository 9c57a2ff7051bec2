"""What a run draws (Scenario) and how it is measured (Measurement): plain values, no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    """Model, device, prompt, seed, size, steps, guidance: everything that decides the image.

    `prompt`, `size`, `steps` and `guidance` are None only until the model's defaults are filled in.
    """

    model: str
    device: str
    prompt: str | None
    seed: int
    size: tuple[int, int] | None
    steps: int | None
    guidance: float | None

    @property
    def size_text(self) -> str:
        return f"{self.size[0]}x{self.size[1]}" if self.size else "default"


@dataclass(frozen=True)
class Measurement:
    """How many runs: unmeasured warm-ups first, then measured repeats, then more measured runs
    while settling the speed figure (see speed.py; `settle_s` None: the default, checks only).
    `cpu_threads`: torch's intra-op threads during a CPU run (None: devices.DEFAULT_CPU_THREADS)."""

    repeats: int
    warmup: int
    settle_s: float | None = None
    cpu_threads: int | None = None
