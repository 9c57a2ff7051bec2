"""Attention processors: xformers, PyTorch 2's scaled-dot-product attention, attention slicing."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pytest_sdopt.core.errors import StackUnsupported
from pytest_sdopt.stacks.promises import Promise, MEMORY, SPEED
from pytest_sdopt.stacks.spec import (ApplyContext, Effect, OptimizationSpec, Phase, counted, diffusers_version, first_method,
                                      needs_cuda, needs_package)


def _apply_sdpa(pipe: Any, ctx: ApplyContext) -> None:
    import torch.nn.functional as F

    if not hasattr(F, "scaled_dot_product_attention"):
        raise StackUnsupported("sdpa", "needs torch >= 2.0 (F.scaled_dot_product_attention)")
    try:
        from diffusers.models.attention_processor import AttnProcessor2_0
    except ImportError:
        raise StackUnsupported("sdpa", f"needs AttnProcessor2_0, which this diffusers ({diffusers_version()}) lacks") from None
    # Set explicitly on every attention layer: the default processor differs between versions,
    # and unet.set_attention_backend() is a no-op for SD 1.5's UNet.
    for part in ("unet", "vae"):
        module = getattr(pipe, part, None)
        if module is not None and hasattr(module, "set_attn_processor"):
            module.set_attn_processor(AttnProcessor2_0())


def _apply_attention_slicing(pipe: Any, ctx: ApplyContext) -> None:
    unet = getattr(pipe, "unet", None)
    method = first_method("attention_slicing", [("pipe", pipe, "enable_attention_slicing"),
                                                 ("pipe.unet", unet, "set_attention_slice")])
    method("auto")


def _apply_xformers(pipe: Any, ctx: ApplyContext) -> None:
    first_method("xformers", [("pipe", pipe, "enable_xformers_memory_efficient_attention")])()


ATTENTION_PARTS = ("unet", "vae")


def _attention_processors(pipe: Any) -> tuple[tuple[str, str, str], ...]:
    """(part, layer, processor) of every attention layer of the UNet and the VAE; a sliced
    processor with its slice size, since attention_slicing may only change that."""
    found = []
    for part in ATTENTION_PARTS:
        processors = getattr(getattr(pipe, part, None), "attn_processors", None) or {}
        for layer, processor in sorted(processors.items()):
            label = type(processor).__name__
            if getattr(processor, "slice_size", None) is not None:
                label += f"(slice_size={processor.slice_size})"
            found.append((part, layer, label))
    return tuple(found)


def _processors_unchanged(snapshot: tuple[tuple[str, str, str], ...]) -> str:
    if not snapshot:
        return "changed nothing: the UNet and VAE have no attention layers"
    kinds = {label for _part, _layer, label in snapshot}
    per_part = Counter(part for part, _layer, _label in snapshot)
    if len(kinds) == 1:
        where = ", ".join(f"{n} in the {part}" for part, n in per_part.items())
        return f"changed nothing: every attention layer already used {kinds.pop()} ({where})"
    used = "; ".join(f"{part}: " + counted(Counter(label for p, _layer, label in snapshot if p == part))
                     for part in per_part)
    return f"changed nothing: the attention layers already used, and still use, {used}"


ATTENTION_EFFECT = Effect(_attention_processors, _processors_unchanged)

SPECS = (
    OptimizationSpec("xformers", Phase.ATTENTION, "xformers memory-efficient attention", 0.98,
                     _apply_xformers, needs=(needs_package("xformers"), needs_cuda), exclusive_group="attention",
                     effect=ATTENTION_EFFECT, acts_on=("unet",),
                     promises=(Promise(MEMORY, 1.0, ("cuda",), "FACTS.md: no gain on PyTorch >= 2.0, and no loss"),
                               Promise(SPEED, 0.9, ("cuda",), "FACTS.md: no gain on PyTorch >= 2.0 (SDPA is built in)"))),
    OptimizationSpec("sdpa", Phase.ATTENTION, "PyTorch 2 scaled-dot-product attention processors", 0.99,
                     _apply_sdpa, exclusive_group="attention", effect=ATTENTION_EFFECT, acts_on=("unet",),
                     promises=(Promise(MEMORY, 1.05, ("cuda",), "torch >= 2 uses SDPA by default: setting it explicitly changes nothing"),
                               Promise(SPEED, 0.9, ("cuda", "cpu"), "torch >= 2 uses SDPA by default: setting it explicitly changes nothing"))),
    OptimizationSpec("attention_slicing", Phase.ATTENTION, "attention computed in slices", 0.99,
                     _apply_attention_slicing, exclusive_group="attention", effect=ATTENTION_EFFECT, acts_on=("unet",),
                     promises=(Promise(MEMORY, 1.0, ("cuda",), "FACTS.md: older diffusers docs, ~3.2 GB about 10% slower"),
                               Promise(SPEED, 0.8, ("cuda",), "FACTS.md: older diffusers docs, about 10% slower"),
                               Promise(SPEED, 0.55, ("cpu",), "benchmarks/promise_ratios.py on tiny (128x128, one thread, 2026-12-02): 0.75x (0.66x-0.86x)"))),
)
