"""How fast the machine is right now: a fixed reference workload, timed beside each measured call.

Why: on a shared CPU machine the same code moves 10-35% between states that last minutes
(neighbours on the host), so a speed recorded at one time and checked at another cannot tell a
10% slowdown from a slow state, however the run's own steps are summarised. A workload that does
not depend on the code under test, timed just before and just after each call, says how fast the
machine was during it. `max_its_drop` on CPU then compares it/s *relative to the machine*
(`machine_relative_its`: steps in the time the reference takes), which on the CI machine cut the
state-to-state spread of the figure from 10.5% to 2.9% (single-threaded, 8 minutes, interleaved).

The workload is plain torch (no diffusers, no model weights): a few convolutions, group norms
and attention products at the sizes of a small UNet's, seeded, ~1.5 ms on one core. It runs in
the run's thread setting (--sdopt-cpu-threads), like the pipeline.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

REPETITIONS = 2  # before and after each call; the fastest is the reading (interference only slows)


class ReferenceWorkload:
    """A fixed torch workload; `seconds()` times it (the fastest of a few repetitions)."""

    def __init__(self, seed: int = 0):
        import torch

        generator = torch.Generator().manual_seed(seed)

        def weight(*shape: int) -> Any:
            return torch.randn(*shape, generator=generator) * 0.05

        self.conv_small, self.conv_large = weight(32, 32, 3, 3), weight(64, 64, 3, 3)
        self.projections = [weight(32, 32) for _ in range(3)]
        self.fine, self.coarse = torch.randn(2, 32, 16, 16, generator=generator), torch.randn(2, 64, 8, 8, generator=generator)
        self.run()  # the first call allocates; it is not a reading

    def run(self) -> Any:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            fine = self.fine
            for _ in range(3):
                fine = F.silu(F.group_norm(F.conv2d(fine, self.conv_small, padding=1), 8))
            coarse = self.coarse
            for _ in range(3):
                coarse = F.silu(F.group_norm(F.conv2d(coarse, self.conv_large, padding=1), 8))
            tokens = fine.flatten(2).transpose(1, 2)
            for _ in range(2):
                query, key, value = (tokens @ projection for projection in self.projections)
                tokens = F.scaled_dot_product_attention(query, key, value)
            return tokens

    def seconds(self, repetitions: int = REPETITIONS) -> float:
        fastest = float("inf")
        for _ in range(repetitions):
            start = time.perf_counter()
            self.run()
            fastest = min(fastest, time.perf_counter() - start)
        return fastest


def machine_relative_samples(step_times_per_call: Sequence[Sequence[float]],
                             reference_s: Sequence[float]) -> list[float]:
    """Per measured call: the call's steps per second x the reference's seconds around it, i.e. how
    many steps the code runs in the time the machine takes for the reference workload. Empty when
    the reference was not timed beside every call (CUDA runs, figures recorded before it existed)."""
    from pytest_sdopt.speed import call_its

    if not reference_s or len(reference_s) != len(step_times_per_call):
        return []
    return [call_its(times) * reference for times, reference in zip(step_times_per_call, reference_s)]


def machine_relative_its(step_times_per_call: Sequence[Sequence[float]], reference_s: Sequence[float]) -> float | None:
    """The median of `machine_relative_samples`: what max_its_drop compares on CPU; None without them."""
    samples = machine_relative_samples(step_times_per_call, reference_s)
    return statistics.median(samples) if samples else None
