"""Where the weights live and how they are laid out: the CPU offloads, group offload, channels-last."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pytest_sdopt.stacks.promises import Promise, MEMORY, SPEED
from pytest_sdopt.stacks.spec import (ApplyContext, Effect, OptimizationSpec, Phase, counted, first_method, needs_cuda,
                                      needs_package, torch_modules)


def _apply_sequential_offload(pipe: Any, ctx: ApplyContext) -> None:
    first_method("sequential_cpu_offload", [("pipe", pipe, "enable_sequential_cpu_offload")])(device=ctx.device)


def _apply_model_offload(pipe: Any, ctx: ApplyContext) -> None:
    first_method("model_cpu_offload", [("pipe", pipe, "enable_model_cpu_offload")])(device=ctx.device)


def _apply_unet_resident_offload(pipe: Any, ctx: ApplyContext) -> None:
    from pytest_sdopt.stacks.offload import keep_unet_resident

    keep_unet_resident(pipe, ctx.device)


def _apply_group_offload(pipe: Any, ctx: ApplyContext) -> None:
    import torch

    enable = first_method("group_offload", [("pipe", pipe, "enable_group_offload")])
    # Streams overlap transfers with compute, but exist only on CUDA.
    enable(onload_device=ctx.device, offload_device=torch.device("cpu"), offload_type="block_level",
           num_blocks_per_group=1, use_stream=ctx.device.type == "cuda")


def _hooks(pipe: Any) -> tuple[tuple[str, str, str], ...]:
    """(component, module, hook) for every accelerate hook (`_hf_hook`) and diffusers hook
    (`_diffusers_hook`) on the pipeline's modules: what the offloads register."""
    found = []
    for name, part in torch_modules(pipe):
        for path, module in part.named_modules():
            accelerate_hook = getattr(module, "_hf_hook", None)
            if accelerate_hook is not None:
                found.append((name, path, type(accelerate_hook).__name__))
            registry = getattr(module, "_diffusers_hook", None)
            for hook_name in getattr(registry, "_hook_order", ()):
                found.append((name, path, hook_name))
    return tuple(found)


def _hooks_unchanged(snapshot: tuple[tuple[str, str, str], ...]) -> str:
    if not snapshot:
        return "changed nothing: it registered no offload hook on any component"
    kinds = Counter(hook for _name, _path, hook in snapshot)
    return f"changed nothing: the pipeline already had the same hooks, {counted(kinds)}"


HOOK_EFFECT = Effect(_hooks, _hooks_unchanged)


def _apply_channels_last(pipe: Any, ctx: ApplyContext) -> None:
    import torch

    for part in ("unet", "vae"):
        module = getattr(pipe, part, None)
        if module is not None:
            module.to(memory_format=torch.channels_last)


def _conv_strides(pipe: Any) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """The strides of the UNet's and VAE's 4-D weights: what channels-last reorders."""
    found = []
    for part in ("unet", "vae"):
        module = getattr(pipe, part, None)
        for name, p in module.named_parameters() if module is not None else ():
            if p.dim() == 4:
                found.append((part, name, tuple(p.stride())))
    return tuple(found)


def _strides_unchanged(snapshot: tuple[tuple[str, str, tuple[int, ...]], ...]) -> str:
    if not snapshot:
        return "changed nothing: the UNet and VAE have no 4-D (convolution) weights to reorder"
    return f"changed nothing: all {len(snapshot)} convolution weights of the UNet and VAE were already channels-last"


SPECS = (
    OptimizationSpec("sequential_cpu_offload", Phase.PLACEMENT, "every layer to the GPU only while it runs", 0.99,
                     _apply_sequential_offload, needs=(needs_package("accelerate"), needs_cuda),
                     exclusive_group="offload", places_pipeline=True, effect=HOOK_EFFECT,
                     promises=(Promise(MEMORY, 0.35, ("cuda",), "FACTS.md: lowest VRAM; FACTS.md, H200 matrix of sd15-random 0.23x"),
                               Promise(SPEED, 0.02, ("cuda",), "FACTS.md: much slower; FACTS.md, H200 matrix of sd15-random 0.05x"))),
    OptimizationSpec("model_cpu_offload", Phase.PLACEMENT, "each model to the GPU only while it runs", 0.99,
                     _apply_model_offload, needs=(needs_package("accelerate"), needs_cuda),
                     exclusive_group="offload", places_pipeline=True, effect=HOOK_EFFECT,
                     promises=(Promise(MEMORY, 0.8, ("cuda",), "FACTS.md: 3.6 GB (0.43x); FACTS.md, H200 matrix of sd15-random 0.67x"),
                               Promise(SPEED, 0.4, ("cuda",), "FACTS.md: normal speed after a slow start; FACTS.md, H200 matrix of sd15-random 0.59x"))),
    OptimizationSpec("unet_resident_offload", Phase.PLACEMENT,
                     "UNet stays on the GPU; text encoder and VAE go there only while they run", 0.99,
                     _apply_unet_resident_offload, needs=(needs_package("accelerate"), needs_cuda), acts_on=("unet",),
                     exclusive_group="offload", places_pipeline=True, effect=HOOK_EFFECT,
                     promises=(Promise(MEMORY, 0.97, ("cuda",), "FACTS.md: 3.2 GB in fp16; FACTS.md, H200 matrix of sd15-random 0.91x"),
                               Promise(SPEED, 0.8, ("cuda",), "FACTS.md: about fp16 speed; FACTS.md, H200 matrix of sd15-random 0.93x"))),
    OptimizationSpec("group_offload", Phase.PLACEMENT, "groups of blocks onloaded as they run (diffusers hooks)",
                     0.99, _apply_group_offload, exclusive_group="offload", places_pipeline=True,
                     effect=HOOK_EFFECT,
                     promises=(Promise(MEMORY, 0.55, ("cuda",), "FACTS.md, H200 matrix of sd15-random 0.41x"),
                               Promise(SPEED, 0.1, ("cuda",), "FACTS.md, H200 matrix of sd15-random 0.21x")),
                     promises_nothing=(("cpu", "it onloads to the device it already runs on"),)),
    OptimizationSpec("channels_last", Phase.PLACEMENT, "UNet and VAE in channels-last memory format", 0.99,
                     _apply_channels_last, effect=Effect(_conv_strides, _strides_unchanged), acts_on=("unet",),
                     promises=(Promise(SPEED, 0.9, ("cuda",), "FACTS.md: +27% on an A100 with torch.compile; alone, no loss"),
                               Promise(SPEED, 0.75, ("cpu",), "benchmarks/promise_ratios.py on tiny (128x128, one thread, 2026-12-02): 0.93x (0.83x-1.04x)"))),
)
