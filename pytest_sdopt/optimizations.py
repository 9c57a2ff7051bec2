"""The optimization registry, stack parsing, and applying a stack to a pipeline.

A stack such as `"fp16+vae_tiling+tome:0.3"` is parsed once into a `Stack`: its optimizations
in canonical phase order (precision -> attention -> VAE -> token merging -> placement ->
compile), whatever the spelling. Each registered `OptimizationSpec` says what it needs (checked
before the model loads, so an impossible stack skips cheaply), how it is applied (adapting to
diffusers' API by feature detection, not by version string) and its default `min_ssim`.

An optimization that changes nothing is not a pass: the run would only redraw the reference.
So each one (bar `fp32`, the reference itself) has an `Effect`, checked as it is applied with
no pipeline call: a snapshot of the state it changes, taken before and after (parameter dtypes
for fp16/bf16, float8-stored UNet weights for layerwise_fp8, the UNet's and VAE's attention
processors for sdpa/xformers/attention_slicing, `vae.use_tiling`/`vae.use_slicing`, accelerate
and diffusers hooks for the offloads, weight strides for channels_last, the UNet's compiled call
for compile), and for tome, whose patch always changes the blocks' classes, a count of the
patched blocks where tomesd will merge tokens. No change means `Stack.apply` raises
`StackUnsupported` with what was found, so the stack skips with that reason (fails under
--sdopt-strict). These check the pipeline, not the scenario: vae_tiling still decodes untiled
when the latents fit in one tile, and vae_slicing only splits a batch of several images.

Nothing here imports torch at module import: the plugin parses stacks at configure time.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable

from pytest_sdopt.errors import OutOfMemoryWhile, SdoptUsageError, StackUnsupported, first_line, is_out_of_memory
from pytest_sdopt.settings import REFERENCE  # the default reference stack, named once


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


# --- how optimizations are applied (torch imported lazily, inside) -------------------------


@dataclass(frozen=True)
class ApplyContext:
    """What an optimization's apply function may use besides the pipeline."""

    device: Any  # torch.device the stack runs on
    value: float | None  # the optimization's parameter (tome's ratio), None when it takes none


def _first_method(name: str, candidates: list[tuple[str, Any, str]]) -> Callable[..., Any]:
    """The first (object, method) that exists: absorbs API moves between diffusers versions."""
    for _label, owner, method in candidates:
        bound = getattr(owner, method, None) if owner is not None else None
        if callable(bound):
            return bound
    tried = " or ".join(f"{label}.{method}()" for label, _owner, method in candidates)
    raise StackUnsupported(name, f"needs {tried}, which this diffusers ({_diffusers_version()}) lacks")


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _set_dtype(dtype_name: str) -> Callable[[Any, ApplyContext], None]:
    def apply(pipe: Any, ctx: ApplyContext) -> None:
        import torch

        dtype = getattr(torch, dtype_name)
        # Also done for fp32: a model saved in fp16 must still give a true fp32 reference.
        # Component by component, and only where the dtype differs: pipe.to(dtype) makes
        # diffusers warn about keep-in-fp32 modules even when a model has none.
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module) and getattr(component, "dtype", dtype) != dtype:
                torch.nn.Module.to(component, dtype=dtype)

    return apply


def _apply_sdpa(pipe: Any, ctx: ApplyContext) -> None:
    import torch.nn.functional as F

    if not hasattr(F, "scaled_dot_product_attention"):
        raise StackUnsupported("sdpa", "needs torch >= 2.0 (F.scaled_dot_product_attention)")
    try:
        from diffusers.models.attention_processor import AttnProcessor2_0
    except ImportError:
        raise StackUnsupported("sdpa", f"needs AttnProcessor2_0, which this diffusers ({_diffusers_version()}) lacks") from None
    # Set explicitly on every attention layer: the default processor differs between versions,
    # and unet.set_attention_backend() is a no-op for SD 1.5's UNet.
    for part in ("unet", "vae"):
        module = getattr(pipe, part, None)
        if module is not None and hasattr(module, "set_attn_processor"):
            module.set_attn_processor(AttnProcessor2_0())


def _apply_attention_slicing(pipe: Any, ctx: ApplyContext) -> None:
    unet = getattr(pipe, "unet", None)
    method = _first_method("attention_slicing", [("pipe", pipe, "enable_attention_slicing"),
                                                 ("pipe.unet", unet, "set_attention_slice")])
    method("auto")


def _apply_xformers(pipe: Any, ctx: ApplyContext) -> None:
    _first_method("xformers", [("pipe", pipe, "enable_xformers_memory_efficient_attention")])()


def _vae_switch(name: str, vae_method: str, pipe_method: str) -> Callable[[Any, ApplyContext], None]:
    def apply(pipe: Any, ctx: ApplyContext) -> None:
        # Newer diffusers only has it on the VAE; older ones also had it on the pipeline.
        _first_method(name, [("pipe.vae", getattr(pipe, "vae", None), vae_method), ("pipe", pipe, pipe_method)])()

    return apply


def _apply_tome(pipe: Any, ctx: ApplyContext) -> None:
    import tomesd

    tomesd.apply_patch(pipe, ratio=ctx.value)


def _reset_tome_generator(pipe: Any) -> None:
    # tomesd forks the global RNG once and keeps that generator across calls, so repeats would
    # differ; clearing it makes each call fork again from the seed the runner just set.
    info = getattr(getattr(pipe, "unet", None), "_tome_info", None)
    if isinstance(info, dict) and "generator" in info.get("args", {}):
        info["args"]["generator"] = None


def _apply_sequential_offload(pipe: Any, ctx: ApplyContext) -> None:
    _first_method("sequential_cpu_offload", [("pipe", pipe, "enable_sequential_cpu_offload")])(device=ctx.device)


def _apply_model_offload(pipe: Any, ctx: ApplyContext) -> None:
    _first_method("model_cpu_offload", [("pipe", pipe, "enable_model_cpu_offload")])(device=ctx.device)


def _apply_unet_resident_offload(pipe: Any, ctx: ApplyContext) -> None:
    from pytest_sdopt.offload import keep_unet_resident

    keep_unet_resident(pipe, ctx.device)


def _apply_group_offload(pipe: Any, ctx: ApplyContext) -> None:
    import torch

    enable = _first_method("group_offload", [("pipe", pipe, "enable_group_offload")])
    # Streams overlap transfers with compute, but exist only on CUDA.
    enable(onload_device=ctx.device, offload_device=torch.device("cpu"), offload_type="block_level",
           num_blocks_per_group=1, use_stream=ctx.device.type == "cuda")


def _apply_layerwise_fp8(pipe: Any, ctx: ApplyContext) -> None:
    import torch

    if not hasattr(torch, "float8_e4m3fn"):
        raise StackUnsupported("layerwise_fp8", f"needs torch.float8_e4m3fn, which this torch ({torch.__version__}) lacks")
    unet = pipe.unet
    enable = _first_method("layerwise_fp8", [("pipe.unet", unet, "enable_layerwise_casting")])
    enable(storage_dtype=torch.float8_e4m3fn, compute_dtype=unet.dtype)


def _apply_channels_last(pipe: Any, ctx: ApplyContext) -> None:
    import torch

    for part in ("unet", "vae"):
        module = getattr(pipe, part, None)
        if module is not None:
            module.to(memory_format=torch.channels_last)


def _apply_compile(pipe: Any, ctx: ApplyContext) -> None:
    unet = pipe.unet
    if not callable(getattr(unet, "compile", None)):
        raise StackUnsupported("compile", "needs torch >= 2.2 (nn.Module.compile)")
    # In place, so pipe.unet keeps its type and config; the warm-up run absorbs compilation.
    unet.compile()


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


def _modules(pipe: Any) -> list[tuple[str, Any]]:
    import torch

    return [(name, part) for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)]


def _counted(counts: Counter) -> str:
    return ", ".join(f"{label} ({n})" for label, n in sorted(counts.items()))


def _weight_dtypes(pipe: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((name, tuple(sorted({str(p.dtype).removeprefix("torch.") for p in part.parameters()})))
                 for name, part in _modules(pipe))


def _dtypes_unchanged(snapshot: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    by_dtypes: dict[str, list[str]] = {}
    for name, dtypes in snapshot:
        by_dtypes.setdefault(" and ".join(dtypes) or "no", []).append(name)
    held = "; ".join(f"{', '.join(names)} already held {dtypes} weights" for dtypes, names in by_dtypes.items())
    return f"changed nothing: {held or 'the pipeline has no torch modules'}"


def _float8_weights(pipe: Any) -> tuple[str, ...] | None:
    unet = getattr(pipe, "unet", None)
    if unet is None:
        return None
    return tuple(name for name, p in unet.named_parameters() if str(p.dtype).startswith("torch.float8"))


def _float8_unchanged(snapshot: tuple[str, ...]) -> str:
    if snapshot:
        return f"changed nothing: the UNet already stored {len(snapshot)} weights in float8, and no more after it"
    return ("changed nothing: no UNet weight is stored in float8 after it "
            "(diffusers' layerwise casting skipped every layer)")


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
    used = "; ".join(f"{part}: " + _counted(Counter(label for p, _layer, label in snapshot if p == part))
                     for part in per_part)
    return f"changed nothing: the attention layers already used, and still use, {used}"


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


def _hooks(pipe: Any) -> tuple[tuple[str, str, str], ...]:
    """(component, module, hook) for every accelerate hook (`_hf_hook`) and diffusers hook
    (`_diffusers_hook`) on the pipeline's modules: what the offloads register."""
    found = []
    for name, part in _modules(pipe):
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
    return f"changed nothing: the pipeline already had the same hooks, {_counted(kinds)}"


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


def _compiled(pipe: Any) -> bool | None:
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "_compiled_call_impl"):
        return None
    return unet._compiled_call_impl is not None  # what nn.Module.compile() sets


def _compile_unchanged(_was_compiled: bool) -> str:
    return "changed nothing: the UNet was already compiled"


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


DTYPE_EFFECT = Effect(_weight_dtypes, _dtypes_unchanged)
ATTENTION_EFFECT = Effect(_attention_processors, _processors_unchanged)
HOOK_EFFECT = Effect(_hooks, _hooks_unchanged)


# --- the registry ------------------------------------------------------------------------


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


# fp32's own limit is below 1.0: the same seeded image redrawn on another CPU or GPU differs
# in the last bit of a few pixels, and the reference must survive that, not a real change.
_SPECS = (
    OptimizationSpec("fp32", Phase.PRECISION, "float32 weights (the reference)", 0.99,
                     _set_dtype("float32"), exclusive_group="precision"),
    OptimizationSpec("fp16", Phase.PRECISION, "float16 weights", 0.95,
                     _set_dtype("float16"), exclusive_group="precision", effect=DTYPE_EFFECT,
                     default_min_self_ssim=0.95),
    OptimizationSpec("bf16", Phase.PRECISION, "bfloat16 weights", 0.9,
                     _set_dtype("bfloat16"), exclusive_group="precision", effect=DTYPE_EFFECT,
                     default_min_self_ssim=0.95),
    OptimizationSpec("layerwise_fp8", Phase.PRECISION, "UNet weights stored in float8, computed in the pipeline dtype",
                     0.85, _apply_layerwise_fp8, effect=Effect(_float8_weights, _float8_unchanged), default_min_self_ssim=0.95),
    OptimizationSpec("xformers", Phase.ATTENTION, "xformers memory-efficient attention", 0.98,
                     _apply_xformers, needs=(needs_package("xformers"), needs_cuda), exclusive_group="attention",
                     effect=ATTENTION_EFFECT),
    OptimizationSpec("sdpa", Phase.ATTENTION, "PyTorch 2 scaled-dot-product attention processors", 0.99,
                     _apply_sdpa, exclusive_group="attention", effect=ATTENTION_EFFECT),
    OptimizationSpec("attention_slicing", Phase.ATTENTION, "attention computed in slices", 0.99,
                     _apply_attention_slicing, exclusive_group="attention", effect=ATTENTION_EFFECT),
    OptimizationSpec("vae_tiling", Phase.VAE, "VAE decodes in overlapping tiles", 0.85,
                     _vae_switch("vae_tiling", "enable_tiling", "enable_vae_tiling"),
                     effect=Effect(_vae_flag("use_tiling"), _flag_unchanged("use_tiling", "decoded in tiles"))),
    OptimizationSpec("vae_slicing", Phase.VAE, "VAE decodes one image of the batch at a time", 0.98,
                     _vae_switch("vae_slicing", "enable_slicing", "enable_vae_slicing"),
                     effect=Effect(_vae_flag("use_slicing"),
                                   _flag_unchanged("use_slicing", "decoded one image at a time"))),
    OptimizationSpec("tome", Phase.TOKEN_MERGING, "Token Merging (tomesd); tome:R sets the ratio", 0.8,
                     _apply_tome, needs=(needs_package("tomesd"),), default_value=0.5, value_range=(0.0, 1.0),
                     before_each_call=_reset_tome_generator, effect=Effect(inert=_tome_inert),
                     default_min_self_ssim=0.95),
    OptimizationSpec("sequential_cpu_offload", Phase.PLACEMENT, "every layer to the GPU only while it runs", 0.99,
                     _apply_sequential_offload, needs=(needs_package("accelerate"), needs_cuda),
                     exclusive_group="offload", places_pipeline=True, effect=HOOK_EFFECT),
    OptimizationSpec("model_cpu_offload", Phase.PLACEMENT, "each model to the GPU only while it runs", 0.99,
                     _apply_model_offload, needs=(needs_package("accelerate"), needs_cuda),
                     exclusive_group="offload", places_pipeline=True, effect=HOOK_EFFECT),
    OptimizationSpec("unet_resident_offload", Phase.PLACEMENT,
                     "UNet stays on the GPU; text encoder and VAE go there only while they run", 0.99,
                     _apply_unet_resident_offload, needs=(needs_package("accelerate"), needs_cuda),
                     exclusive_group="offload", places_pipeline=True, effect=HOOK_EFFECT),
    OptimizationSpec("group_offload", Phase.PLACEMENT, "groups of blocks onloaded as they run (diffusers hooks)",
                     0.99, _apply_group_offload, exclusive_group="offload", places_pipeline=True,
                     effect=HOOK_EFFECT),
    OptimizationSpec("channels_last", Phase.PLACEMENT, "UNet and VAE in channels-last memory format", 0.99,
                     _apply_channels_last, effect=Effect(_conv_strides, _strides_unchanged)),
    OptimizationSpec("compile", Phase.COMPILE, "torch.compile of the UNet", 0.98,
                     _apply_compile, needs=(needs_compiler_toolchain,),
                     effect=Effect(_compiled, _compile_unchanged)),
)

REGISTRY: dict[str, OptimizationSpec] = {spec.name: spec for spec in _SPECS}
_ORDER = {name: index for index, name in enumerate(REGISTRY)}


@dataclass(frozen=True)
class Optimization:
    """One optimization of a stack, with its parameter when it takes one (`tome:0.3`)."""

    spec: OptimizationSpec
    value: float | None = None

    @property
    def name(self) -> str:
        if self.value is None or self.value == self.spec.default_value:
            return self.spec.name
        # repr, not :g: the shortest text that parses back to this exact value. :g kept 6 digits,
        # so tome:0.1000001 was named tome:0.1 and shared that stack's baselines.
        return f"{self.spec.name}:{self.value!r}"


@dataclass(frozen=True)
class Stack:
    """Optimizations applied together, in canonical phase order."""

    optimizations: tuple[Optimization, ...]

    @property
    def name(self) -> str:
        """Canonical spelling: phase order, default parameters dropped, `fp32` implied."""
        return "+".join(opt.name for opt in self.optimizations)

    def __str__(self) -> str:
        return self.name

    @property
    def places_pipeline(self) -> bool:
        return any(opt.spec.places_pipeline for opt in self.optimizations)

    @property
    def default_min_ssim(self) -> float:
        """The loosest tolerance of its optimizations: each may drift that much."""
        return min(opt.spec.default_min_ssim for opt in self.optimizations)

    @property
    def default_min_self_ssim(self) -> float:
        """The loosest of its optimizations' tolerances against the stack's own stored image."""
        return min(opt.spec.default_min_self_ssim for opt in self.optimizations)

    def unmet_requirement(self, device_type: str) -> StackUnsupported | None:
        """Why this stack cannot run on `device_type`, found without loading the model."""
        for opt in self.optimizations:
            for requirement in opt.spec.needs:
                reason = requirement(device_type)
                if reason:
                    return StackUnsupported(opt.name, reason)
        return None

    def apply(self, pipe: Any, device: Any) -> None:
        """Apply every optimization in phase order, then place the pipeline on `device`.

        The plain `pipe.to(device)` is skipped when an offload decides placement itself
        (model offload replaces `pipe.to("cuda")`). Raises StackUnsupported naming the first
        optimization that changed nothing on this pipeline, and what it found instead, and
        OutOfMemoryWhile naming the placement or the optimization that ran out of memory.
        """
        precision = [opt for opt in self.optimizations if opt.spec.exclusive_group == "precision"]
        steps = list(self.optimizations) if precision else [Optimization(REGISTRY[REFERENCE]), *self.optimizations]
        placed = self.places_pipeline
        for opt in steps:
            if not placed and opt.spec.phase >= Phase.PLACEMENT:
                _place(pipe, device)
                placed = True
            _apply_one(opt, pipe, device)
        if not placed:
            _place(pipe, device)

    def before_each_call(self, pipe: Any) -> None:
        for opt in self.optimizations:
            if opt.spec.before_each_call is not None:
                opt.spec.before_each_call(pipe)


def _place(pipe: Any, device: Any) -> None:
    """pipe.to(device), only when a component is elsewhere (diffusers warns on fp16 -> cpu even as a no-op)."""
    import torch

    if not any(isinstance(part, torch.nn.Module) and part.device != device for part in pipe.components.values()):
        return
    out_of_memory = None
    try:
        pipe.to(device)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        out_of_memory = first_line(exc)
    if out_of_memory is not None:  # raised outside the handler: torch's exception, and what it holds, is gone
        raise OutOfMemoryWhile(f"placing the pipeline on {device}", out_of_memory)


def _apply_one(opt: Optimization, pipe: Any, device: Any) -> None:
    """Apply one optimization; StackUnsupported if it changed nothing (see `Effect`)."""
    effect = opt.spec.effect
    out_of_memory = None
    try:
        before = effect.take(pipe) if effect is not None else None
        opt.spec.apply(pipe, ApplyContext(device=device, value=opt.value))
        no_effect = effect.missing(pipe, before) if effect is not None else None
    except (StackUnsupported, SdoptUsageError):
        raise
    except Exception as exc:  # a diffusers/torch error while applying: name the optimization
        if not is_out_of_memory(exc):
            raise StackApplyError(opt.name, exc) from exc
        out_of_memory = first_line(exc)  # only the text: the exception's frames hold the tensors
    if out_of_memory is not None:
        raise OutOfMemoryWhile(f"applying {opt.name!r}", out_of_memory)
    if no_effect is not None:
        raise StackUnsupported(opt.name, no_effect)


class StackApplyError(RuntimeError):
    """Applying one optimization raised: reported as a test failure naming the optimization."""

    def __init__(self, optimization: str, cause: BaseException):
        super().__init__(f"applying {optimization!r} failed: {type(cause).__name__}: {cause}")
        self.optimization = optimization


# --- parsing -------------------------------------------------------------------------------


def valid_names() -> str:
    return ", ".join(REGISTRY) + " (tome takes a ratio: tome:0.3)"


def parse_stack(text: object) -> Stack:
    """`"fp16+vae_tiling+tome:0.3"` -> Stack, or SdoptUsageError naming the problem and the fix."""
    if isinstance(text, Stack):
        return text
    if not isinstance(text, str) or not text.strip():
        raise SdoptUsageError(
            f"a stack is optimization names joined by '+', e.g. 'fp16+vae_tiling', not {text!r}. "
            f"Valid names: {valid_names()}."
        )
    parts = [part.strip() for part in text.split("+")]
    if any(not part for part in parts):
        raise SdoptUsageError(f"stack {text!r} has an empty name between '+' signs. Valid names: {valid_names()}.")
    parsed = [_parse_optimization(part, text) for part in parts]

    seen: dict[str, str] = {}
    groups: dict[str, str] = {}
    for opt in parsed:
        if opt.spec.name in seen:
            raise SdoptUsageError(f"stack {text!r} names {opt.spec.name} twice: keep one.")
        seen[opt.spec.name] = opt.name
        group = opt.spec.exclusive_group
        if group is not None:
            if group in groups:
                raise SdoptUsageError(
                    f"stack {text!r} combines {groups[group]} and {opt.name}, which conflict: both set the "
                    f"{group} ({_group_members(group)}). Keep one of them."
                )
            groups[group] = opt.name

    ordered = sorted(parsed, key=lambda opt: (opt.spec.phase, _ORDER[opt.spec.name]))
    if len(ordered) > 1:  # fp32 is what every stack starts from: "fp32+vae_tiling" is "vae_tiling"
        ordered = [opt for opt in ordered if opt.spec.name != REFERENCE]
    return Stack(tuple(ordered))


def _group_members(group: str) -> str:
    return ", ".join(spec.name for spec in REGISTRY.values() if spec.exclusive_group == group)


def _parse_optimization(part: str, stack_text: str) -> Optimization:
    name, sep, raw_value = part.partition(":")
    name = name.strip()
    spec = REGISTRY.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SdoptUsageError(
            f"unknown optimization {name!r} in stack {stack_text!r}.{hint} Valid names: {valid_names()}."
        )
    if not sep:
        return Optimization(spec, spec.default_value)
    if spec.value_range is None:
        raise SdoptUsageError(f"optimization {name!r} takes no parameter, but stack {stack_text!r} gives {part!r}.")
    low, high = spec.value_range
    try:
        value = float(raw_value)
    except ValueError:
        value = float("nan")
    if not low < value < high:
        raise SdoptUsageError(
            f"{name}'s parameter must be a number between {low:g} and {high:g} (exclusive), e.g. {name}:0.3; "
            f"stack {stack_text!r} gives {raw_value.strip()!r}."
        )
    return Optimization(spec, value)
