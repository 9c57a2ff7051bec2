"""Token Merging (tomesd), and which of its patched blocks will merge tokens on a model."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from pytest_sdopt.stacks.promises import Promise, SPEED
from pytest_sdopt.stacks.spec import ApplyContext, Effect, OptimizationSpec, Phase, needs_package


def _apply_tome(pipe: Any, ctx: ApplyContext) -> None:
    import tomesd

    tomesd.apply_patch(pipe, ratio=ctx.value)


def _reset_tome_generator(pipe: Any) -> None:
    # tomesd forks the global RNG once and keeps that generator across calls, so repeats would
    # differ; clearing it makes each call fork again from the seed the runner just set.
    info = getattr(getattr(pipe, "unet", None), "_tome_info", None)
    if isinstance(info, dict) and "generator" in info.get("args", {}):
        info["args"]["generator"] = None


def tome_merging_blocks(pipe: Any) -> tuple[list[str], dict[str, int]]:
    """After tomesd.apply_patch: the patched blocks that will merge tokens, and the downsample
    of every patched block (its name -> tomesd's downsample at the UNet's default latent size).

    tomesd's compute_merge merges in a block only when `ceil(sqrt(latent_tokens // block_tokens))`
    is at most `max_downsample` (1 by default: only the highest resolution). A block's token count
    follows from its UNet level: each down block's downsampler halves the latent (ceil, as a
    stride-2 padded convolution does), and each up block's upsampler doubles it back to the
    matching level. Level 0 has downsample 1 at every size; deeper levels only on a latent side of 1.
    """
    model = pipe.unet if hasattr(pipe, "unet") else pipe  # what tomesd patches
    info = getattr(model, "_tome_info", None)
    max_downsample = info["args"]["max_downsample"] if isinstance(info, dict) else 1
    patched = [] if info is None else [name for name, module in model.named_modules()
                                        if module is not model and getattr(module, "_tome_info", None) is info]
    levels = _unet_levels(model)
    size = getattr(getattr(model, "config", None), "sample_size", None) or 64
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    downsample: dict[str, int] = {}
    for name in patched:
        level = next((lv for prefix, lv in levels.items() if name.startswith(prefix)), None)
        if level is None:  # outside the UNet's down/mid/up blocks: not provably idle, count it as merging
            downsample[name] = 1
            continue
        h, w = height, width
        for _ in range(level):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        downsample[name] = int(math.ceil(math.sqrt((height * width) // (h * w))))
    merging = [name for name in patched if downsample[name] <= max_downsample]
    return merging, downsample


def _unet_levels(model: Any) -> dict[str, int]:
    """Module-name prefix -> resolution level (number of halvings) for a UNet's blocks."""
    levels: dict[str, int] = {}
    level = 0
    for index, block in enumerate(getattr(model, "down_blocks", None) or ()):
        levels[f"down_blocks.{index}."] = level
        level += 1 if getattr(block, "downsamplers", None) else 0
    if getattr(model, "mid_block", None) is not None:
        levels["mid_block."] = level
    for index, block in enumerate(getattr(model, "up_blocks", None) or ()):
        levels[f"up_blocks.{index}."] = level
        level -= 1 if getattr(block, "upsamplers", None) else 0
    return levels


def _tome_inert(pipe: Any) -> str | None:
    merging, downsample = tome_merging_blocks(pipe)
    if merging:
        return None
    if not downsample:
        return "changed nothing on this model: it has no BasicTransformerBlock, the only block tomesd patches"
    model = pipe.unet if hasattr(pipe, "unet") else pipe
    max_downsample = model._tome_info["args"]["max_downsample"]
    where = "its highest resolution" if max_downsample == 1 else f"downsample {max_downsample} or less"
    found = sorted(Counter(downsample.values()).items())
    if len(found) == 1:
        blocks = f"all {len(downsample)} of its transformer blocks are at downsample {found[0][0]}"
    else:
        blocks = (f"its {len(downsample)} transformer blocks are at downsample "
                  + ", ".join(f"{d} ({n})" for d, n in found))
    return (f"changed nothing on this model: no attention at {where}, where tomesd merges "
            f"(max_downsample={max_downsample}); {blocks}")


SPECS = (
    OptimizationSpec("tome", Phase.TOKEN_MERGING, "Token Merging (tomesd); tome:R sets the ratio", 0.8,
                     _apply_tome, needs=(needs_package("tomesd"),), default_value=0.5, value_range=(0.0, 1.0),
                     before_each_call=_reset_tome_generator, effect=Effect(inert=_tome_inert),
                     default_min_self_ssim=0.95, acts_on=("unet",),
                     promises=(Promise(SPEED, 1.0, ("cuda",), "FACTS.md: ~19 -> ~20 it/s; tomesd's authors 1.87x at ratio 0.5"),
                               # On CPU at small sizes merging costs about what it saves: a cost ceiling.
                               Promise(SPEED, 0.75, ("cpu",), "benchmarks/promise_ratios.py on tiny (128x128, one thread, 2026-12-02): 0.91x (0.89x-0.93x)"))),
)
