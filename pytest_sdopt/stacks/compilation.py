"""torch.compile of the UNet."""

from __future__ import annotations

from typing import Any

from pytest_sdopt.core.errors import StackUnsupported
from pytest_sdopt.stacks.promises import Promise, SPEED
from pytest_sdopt.stacks.spec import ApplyContext, Effect, OptimizationSpec, Phase, needs_compiler_toolchain


def _apply_compile(pipe: Any, ctx: ApplyContext) -> None:
    unet = pipe.unet
    if not callable(getattr(unet, "compile", None)):
        raise StackUnsupported("compile", "needs torch >= 2.2 (nn.Module.compile)")
    # In place, so pipe.unet keeps its type and config; the warm-up run absorbs compilation.
    unet.compile()


def _compiled(pipe: Any) -> bool | None:
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "_compiled_call_impl"):
        return None
    return unet._compiled_call_impl is not None  # what nn.Module.compile() sets


def _compile_unchanged(_was_compiled: bool) -> str:
    return "changed nothing: the UNet was already compiled"


SPECS = (
    OptimizationSpec("compile", Phase.COMPILE, "torch.compile of the UNet", 0.98,
                     _apply_compile, needs=(needs_compiler_toolchain,),
                     effect=Effect(_compiled, _compile_unchanged),
                     promises=(Promise(SPEED, 1.0, ("cuda",), "FACTS.md: 31 -> 37 it/s on an A100; FACTS.md, H200 matrix of sd15-random 1.15x"),),
                     promises_nothing=(("cpu", "its CPU gain depends on the C++ toolchain and the model's size"),)),
)
