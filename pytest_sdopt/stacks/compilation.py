"""torch.compile of the denoiser (the UNet, or SD3's transformer)."""

from __future__ import annotations

from typing import Any

from pytest_sdopt.core.errors import StackUnsupported
from pytest_sdopt.stacks.promises import Promise, SPEED
from pytest_sdopt.stacks.spec import ApplyContext, Effect, OptimizationSpec, Phase, denoiser_of, needs_compiler_toolchain


def _apply_compile(pipe: Any, ctx: ApplyContext) -> None:
    denoiser = denoiser_of(pipe)
    if not callable(getattr(denoiser, "compile", None)):
        raise StackUnsupported("compile", "needs torch >= 2.2 (nn.Module.compile)")
    # In place, so the pipeline's denoiser keeps its type and config; the warm-up run absorbs compilation.
    denoiser.compile()


def _compiled(pipe: Any) -> bool | None:
    denoiser = denoiser_of(pipe)
    if denoiser is None or not hasattr(denoiser, "_compiled_call_impl"):
        return None
    return denoiser._compiled_call_impl is not None  # what nn.Module.compile() sets


def _compile_unchanged(_was_compiled: bool) -> str:
    return "changed nothing: the denoiser was already compiled"


SPECS = (
    OptimizationSpec("compile", Phase.COMPILE, "torch.compile of the denoiser (UNet or transformer)", 0.98,
                     _apply_compile, needs=(needs_compiler_toolchain,),
                     effect=Effect(_compiled, _compile_unchanged),
                     promises=(Promise(SPEED, 1.0, ("cuda",), "FACTS.md: 31 -> 37 it/s on an A100; FACTS.md, H200 matrix of sd15-random 1.15x"),),
                     promises_nothing=(("cpu", "its CPU gain depends on the C++ toolchain and the model's size"),)),
)
