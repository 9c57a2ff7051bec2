"""How fast the machine is right now: a fixed reference workload, timed beside each measured call.

Why: on a shared CPU machine the same code moves 10-35% between states that last minutes
(neighbours on the host), so a speed recorded at one time and checked at another cannot tell a
10% slowdown from a slow state, however the run's own steps are summarised. A workload that does
not depend on the code under test, timed just before and just after each call, says how fast the
machine was during it. `max_its_drop` on CPU then compares it/s *relative to the machine*
(`machine_relative_its`: steps in the time the reference takes).

The workload is a small UNet-like stack of plain torch modules (no diffusers, no model weights):
residual blocks of convolutions and group norms, attention over the pixels and to a 77-token
context, a down- and an up-sampling, at the sizes of the embedded model's UNet; seeded, ~4 ms on
one core. A small model spends much of a step in Python and in torch's per-op dispatch, not in
arithmetic, so the reference does too: across 14 fresh processes, twice
(benchmarks/reference_tracking.py), model steps relative to it spread 1.1-1.3% (standard deviation), against 1.6-2.3%
for the first reference, a few convolutions and attention products (~1.5 ms) that machine states
slowed differently from the model. The figure is stored with the reference's name
(`machine_reference`); one stored under another reference is compared as the best call's it/s.

What it cannot see: a slowdown of torch itself (its dispatch, its kernels) slows the reference as
much as the model, so on CPU the gate catches regressions in diffusers and in how a stack uses
torch, not in torch alone. It runs in the run's thread setting (--sdopt-cpu-threads).
"""

from __future__ import annotations

import time
from typing import Any

REPETITIONS = 2  # before and after each call; the fastest is the reading (interference only slows)
REFERENCE_NAME = "unet-like-1"  # stored with the figure; change it whenever the workload changes


def _build_unet_like(seed: int) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        """A resnet block, then self- and cross-attention over the pixels with a feed-forward."""

        def __init__(self, channels: int, context: int = 32, time: int = 64):
            super().__init__()
            self.norm1, self.conv1 = nn.GroupNorm(8, channels), nn.Conv2d(channels, channels, 3, padding=1)
            self.norm2, self.conv2 = nn.GroupNorm(8, channels), nn.Conv2d(channels, channels, 3, padding=1)
            self.time = nn.Linear(time, channels)
            self.norm3 = nn.LayerNorm(channels)
            self.query, self.out = nn.Linear(channels, channels), nn.Linear(channels, channels)
            self.key, self.value = nn.Linear(context, channels), nn.Linear(context, channels)
            self.ff_in, self.ff_out = nn.Linear(channels, 4 * channels), nn.Linear(4 * channels, channels)

        def forward(self, x: Any, t: Any, context: Any) -> Any:
            h = self.conv1(F.silu(self.norm1(x))) + self.time(t)[:, :, None, None]
            x = x + self.conv2(F.silu(self.norm2(h)))
            batch, channels, height, width = x.shape
            tokens = x.flatten(2).transpose(1, 2)
            normed = self.norm3(tokens)
            heads = [z.view(batch, -1, 2, channels // 2).transpose(1, 2)
                     for z in (self.query(normed), self.key(context), self.value(context))]
            attended = F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(batch, -1, channels)
            tokens = tokens + self.out(attended)
            tokens = tokens + self.ff_out(F.gelu(self.ff_in(self.norm3(tokens))))
            return tokens.transpose(1, 2).reshape(batch, channels, height, width)

    class UnetLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.head = nn.Conv2d(4, 32, 3, padding=1), nn.Conv2d(32, 4, 3, padding=1)
            self.fine_in = nn.ModuleList([Block(32), Block(32)])
            self.down, self.up = nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.Conv2d(64, 32, 3, padding=1)
            self.coarse = nn.ModuleList([Block(64), Block(64)])
            self.fine_out = nn.ModuleList([Block(32), Block(32)])

        def forward(self, x: Any, t: Any, context: Any) -> Any:
            h = self.stem(x)
            for block in self.fine_in:
                h = block(h, t, context)
            h = self.down(h)
            for block in self.coarse:
                h = block(h, t, context)
            h = self.up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            for block in self.fine_out:
                h = block(h, t, context)
            return self.head(h)

    torch.manual_seed(seed)  # nn.Module initialisers draw from the global generator
    return UnetLike().eval().requires_grad_(False)


class ReferenceWorkload:
    """A fixed torch workload; `seconds()` times it (the fastest of a few repetitions)."""

    def __init__(self, seed: int = 0):
        import torch

        state = torch.random.get_rng_state()  # the caller's global RNG stays as it was
        try:
            self.module = _build_unet_like(seed)
            generator = torch.Generator().manual_seed(seed)
            # A batch of 2 at 16x16 latents and a 77-token context: the embedded model with guidance.
            self.inputs = (torch.randn(2, 4, 16, 16, generator=generator), torch.randn(2, 64, generator=generator),
                           torch.randn(2, 77, 32, generator=generator))
        finally:
            torch.random.set_rng_state(state)
        self.run()  # the first call allocates; it is not a reading

    def run(self) -> Any:
        import torch

        with torch.no_grad():
            return self.module(*self.inputs)

    def seconds(self, repetitions: int = REPETITIONS) -> float:
        fastest = float("inf")
        for _ in range(repetitions):
            start = time.perf_counter()
            self.run()
            fastest = min(fastest, time.perf_counter() - start)
        return fastest
