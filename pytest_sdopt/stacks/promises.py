"""What an optimization promises against the reference stack, measured in the same session.

A promise is a ratio to the reference (fp32) on one device type: `speed` (the stack's it/s over
the reference's, at least `bound`) or `memory` (its peak memory over the reference's, at most
`bound`: VRAM on CUDA, the run's own host memory elsewhere), with the scenario conditions under
which it holds and where the figure comes from. The bounds are conservative: what a healthy
setup keeps with room to spare, not the best published figure. Where an optimization promises
nothing on a device (fp16 on CPU), `nothing_on` says so and why, so the gate says n/a with that
reason rather than passing silently.

A stack of several optimizations promises, per metric: for speed, the product of its
optimizations' bounds (fp16's gain times an offload's cost); for memory, the smallest saving's
bound (the deepest cut sets the ceiling), raised by any optimization that costs memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

SPEED, MEMORY = "speed", "memory"
METRICS = (SPEED, MEMORY)

# scenario, pipeline -> why the promise does not apply to this scenario, or None
Condition = Callable[[Any, Any], "str | None"]


@dataclass(frozen=True)
class Promise:
    metric: str  # SPEED (ratio >= bound) or MEMORY (ratio <= bound)
    bound: float
    devices: tuple[str, ...]  # the device types it holds on: ("cuda",), ("cpu", "cuda")
    source: str  # where the figure comes from (FACTS.md, diffusers' own tests, this project's benchmarks)
    condition: Condition | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"a promise's metric is one of {', '.join(METRICS)}, not {self.metric!r}")
        if not self.bound > 0:
            raise ValueError(f"a promise's bound is a ratio above 0, not {self.bound!r}")

    def unmet_condition(self, scenario: Any, pipe: Any) -> str | None:
        return self.condition(scenario, pipe) if self.condition is not None else None


@dataclass(frozen=True)
class StackPromise:
    """What a stack promises on one metric and device: the bound, and the optimizations it comes from."""

    metric: str
    bound: float | None  # None: nothing is promised (then `reason` says why)
    sources: tuple[str, ...] = ()
    reason: str = ""

    def text(self, reference: str) -> str:
        if self.bound is None:
            return f"no {self.metric} promise ({self.reason})"
        sign = ">=" if self.metric == SPEED else "<="
        return f"{label(self.metric)} {sign} {self.bound:.2f}x {reference}'s"


def label(metric: str, device_type: str | None = None) -> str:
    if metric == SPEED:
        return "speed"
    return "VRAM" if device_type == "cuda" else "memory" if device_type is None else "host memory"


def stack_promise(optimizations: Iterable[Any], metric: str, device_type: str, scenario: Any,
                  pipe: Any) -> StackPromise:
    """Combine the promises of `optimizations` (each with `.name` and `.spec`) on one metric and device."""
    bounds: list[tuple[str, float]] = []
    quiet: list[str] = []
    for opt in optimizations:
        spec = opt.spec
        promise = next((p for p in spec.promises if p.metric == metric and device_type in p.devices), None)
        if promise is None:
            reason = dict(spec.promises_nothing).get(device_type)
            if reason:
                quiet.append(f"{opt.name}: {reason}")
            continue
        unmet = promise.unmet_condition(scenario, pipe)
        if unmet is not None:
            return StackPromise(metric, None, reason=f"{opt.name}'s promise needs {unmet}")
        bounds.append((opt.name, promise.bound))
    if not bounds:
        why = "; ".join(quiet) or f"none of its optimizations promises a {metric} ratio on {device_type}"
        return StackPromise(metric, None, reason=why)
    if metric == SPEED:
        bound = 1.0
        for _, b in bounds:
            bound *= b
    else:
        savings = [b for _, b in bounds if b <= 1.0]
        costs = [b for _, b in bounds if b > 1.0]
        bound = (min(savings) if savings else 1.0) * (max(costs) if costs else 1.0)
    return StackPromise(metric, bound, tuple(name for name, _ in bounds))


# --- conditions ----------------------------------------------------------------------------


def larger_than_a_vae_tile(scenario: Any, pipe: Any) -> str | None:
    """VAE tiling saves memory only when the image is larger than one tile (else it decodes whole)."""
    vae = getattr(pipe, "vae", None)
    tile = getattr(vae, "tile_sample_min_size", None)
    size = getattr(scenario, "size", None)
    if tile is None or not size:
        return None
    if max(size) <= tile:
        return (f"an image larger than the VAE's {tile}-px tile; this scenario is {size[0]}x{size[1]}, which it "
                f"decodes whole")
    return None


def a_batch_of_several(scenario: Any, pipe: Any) -> str | None:
    """VAE slicing decodes a batch one image at a time: it saves nothing on one image."""
    images = getattr(scenario, "images_per_prompt", 1) or 1
    return None if images > 1 else "a batch of more than one image; this scenario draws one"
