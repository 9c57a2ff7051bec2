"""Precision: the reference's float32, fp16 and bf16 weights, and UNet weights stored in float8."""

from __future__ import annotations

from typing import Any, Callable

from pytest_sdopt.config.defaults import REFERENCE
from pytest_sdopt.core.errors import StackUnsupported
from pytest_sdopt.stacks.promises import Promise, MEMORY, SPEED
from pytest_sdopt.stacks.spec import ApplyContext, Effect, OptimizationSpec, Phase, denoiser_of, first_method, torch_modules


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


def _apply_layerwise_fp8(pipe: Any, ctx: ApplyContext) -> None:
    import torch

    if not hasattr(torch, "float8_e4m3fn"):
        raise StackUnsupported("layerwise_fp8", f"needs torch.float8_e4m3fn, which this torch ({torch.__version__}) lacks")
    denoiser = denoiser_of(pipe)  # the UNet, or SD3's transformer
    enable = first_method("layerwise_fp8", [("pipe.unet" if getattr(pipe, "unet", None) is not None else "pipe.transformer",
                                                   denoiser, "enable_layerwise_casting")])
    enable(storage_dtype=torch.float8_e4m3fn, compute_dtype=denoiser.dtype)


def _weight_dtypes(pipe: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((name, tuple(sorted({str(p.dtype).removeprefix("torch.") for p in part.parameters()})))
                 for name, part in torch_modules(pipe))


def _dtypes_unchanged(snapshot: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    by_dtypes: dict[str, list[str]] = {}
    for name, dtypes in snapshot:
        by_dtypes.setdefault(" and ".join(dtypes) or "no", []).append(name)
    held = "; ".join(f"{', '.join(names)} already held {dtypes} weights" for dtypes, names in by_dtypes.items())
    return f"changed nothing: {held or 'the pipeline has no torch modules'}"


def _float8_weights(pipe: Any) -> tuple[str, ...] | None:
    denoiser = denoiser_of(pipe)
    if denoiser is None:
        return None
    return tuple(name for name, p in denoiser.named_parameters() if str(p.dtype).startswith("torch.float8"))


def _float8_unchanged(snapshot: tuple[str, ...]) -> str:
    if snapshot:
        return f"changed nothing: the UNet already stored {len(snapshot)} weights in float8, and no more after it"
    return ("changed nothing: no UNet weight is stored in float8 after it "
            "(diffusers' layerwise casting skipped every layer)")


DTYPE_EFFECT = Effect(_weight_dtypes, _dtypes_unchanged)


# The reference's own limit is below 1.0: the same seeded image redrawn on another CPU or GPU
# differs in the last bit of a few pixels, and the reference must survive that, not a real change.
SPECS = (
    OptimizationSpec(REFERENCE, Phase.PRECISION, "float32 weights (the reference)", 0.99,
                     _set_dtype("float32"), exclusive_group="precision",
                     promises_nothing=(("cpu", "the reference itself"), ("cuda", "the reference itself"))),
    OptimizationSpec("fp16", Phase.PRECISION, "float16 weights", 0.95,
                     _set_dtype("float16"), exclusive_group="precision", effect=DTYPE_EFFECT,
                     default_min_self_ssim=0.95,
                     promises=(Promise(MEMORY, 0.65, ("cuda",), "FACTS.md: 4.7 of 8.4 GB (0.56x); FACTS.md, H200 matrix of sd15-random 0.51x"),
                               Promise(SPEED, 1.0, ("cuda",), "FACTS.md: 19.1 vs 7.51 it/s (2.54x); FACTS.md, H200 matrix of sd15-random 1.12x, host-bound")),
                     promises_nothing=(("cpu", "fp16 is not for CPU: no hardware support, it runs very slowly (FACTS.md)"),)),
    OptimizationSpec("bf16", Phase.PRECISION, "bfloat16 weights", 0.9,
                     _set_dtype("bfloat16"), exclusive_group="precision", effect=DTYPE_EFFECT,
                     default_min_self_ssim=0.95,
                     promises=(Promise(MEMORY, 0.65, ("cuda",), "FACTS.md: 4.7 of 8.4 GB (0.56x)"),
                               Promise(SPEED, 1.0, ("cuda",), "FACTS.md: 19.1 vs 7.51 it/s (2.54x)")),
                     promises_nothing=(("cpu", "no measured CPU gain to promise (bf16 arithmetic is emulated on most CPUs)"),)),
    OptimizationSpec("layerwise_fp8", Phase.PRECISION, "denoiser weights (UNet or transformer) stored in float8, computed in the pipeline dtype",
                     0.85, _apply_layerwise_fp8, effect=Effect(_float8_weights, _float8_unchanged), default_min_self_ssim=0.95,
                     promises=(Promise(MEMORY, 0.85, ("cuda",), "UNet weights stored in 1 byte instead of 4: the UNet is 860 M of SD 1.5's 1066 M parameters"),),
                     promises_nothing=(("cpu", "it saves weight memory only; on CPU the weights are mapped files, not the run's own memory"),)),
)
