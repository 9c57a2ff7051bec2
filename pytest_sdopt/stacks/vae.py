"""The VAE's decoding: in tiles, or one image of the batch at a time."""

from __future__ import annotations

from typing import Any, Callable

from pytest_sdopt.stacks.promises import Promise, MEMORY, SPEED, a_batch_of_several, larger_than_a_vae_tile
from pytest_sdopt.stacks.spec import ApplyContext, Effect, OptimizationSpec, Phase, first_method


def _vae_switch(name: str, vae_method: str, pipe_method: str) -> Callable[[Any, ApplyContext], None]:
    def apply(pipe: Any, ctx: ApplyContext) -> None:
        # Newer diffusers only has it on the VAE; older ones also had it on the pipeline.
        first_method(name, [("pipe.vae", getattr(pipe, "vae", None), vae_method), ("pipe", pipe, pipe_method)])()

    return apply


def _vae_flag(attribute: str) -> Callable[[Any], "bool | None"]:
    def snapshot(pipe: Any) -> bool | None:
        return getattr(getattr(pipe, "vae", None), attribute, None)

    return snapshot


def _flag_unchanged(attribute: str, doing: str) -> Callable[[Any], str]:
    def unchanged(value: Any) -> str:
        if value:
            return f"changed nothing: the VAE already {doing} (vae.{attribute} was already {value})"
        return f"changed nothing: vae.{attribute} stayed {value}"

    return unchanged


SPECS = (
    OptimizationSpec("vae_tiling", Phase.VAE, "VAE decodes in overlapping tiles", 0.85,
                     _vae_switch("vae_tiling", "enable_tiling", "enable_vae_tiling"),
                     effect=Effect(_vae_flag("use_tiling"), _flag_unchanged("use_tiling", "decoded in tiles")),
                     promises=(Promise(MEMORY, 0.9, ("cuda",), "FACTS.md: 7.6 -> 5.1 GB at 1024x1024 (tiling saves 20-30%)",
                                       larger_than_a_vae_tile),
                               Promise(MEMORY, 1.0, ("cpu",), "decoding in tiles never needs more memory than decoding whole",
                                       larger_than_a_vae_tile),
                               Promise(SPEED, 0.8, ("cpu",), "benchmarks/promise_ratios.py on tiny (128x128, one thread, 2026-12-02): 1.01x (0.93x-1.11x)"))),
    OptimizationSpec("vae_slicing", Phase.VAE, "VAE decodes one image of the batch at a time", 0.98,
                     _vae_switch("vae_slicing", "enable_slicing", "enable_vae_slicing"),
                     effect=Effect(_vae_flag("use_slicing"),
                                   _flag_unchanged("use_slicing", "decoded one image at a time")),
                     promises=(Promise(MEMORY, 1.0, ("cuda", "cpu"), "FACTS.md: diffusers' nightly VAE slicing ceiling with 4 images",
                                       a_batch_of_several),
                               Promise(SPEED, 0.85, ("cpu",), "benchmarks/promise_ratios.py on tiny (128x128, one thread, 2026-12-02): 1.01x (0.97x-1.05x)"))),
)
