"""A stack such as `"fp16+vae_tiling+tome:0.3"`: parsed once into a `Stack`, its optimizations in
canonical phase order (precision -> attention -> VAE -> token merging -> placement -> compile), whatever
the spelling; and applying it to a pipeline."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pytest_sdopt.config.defaults import REFERENCE
from pytest_sdopt.core.errors import OutOfMemoryWhile, SdoptUsageError, StackUnsupported, first_line, is_out_of_memory
from pytest_sdopt.stacks.registry import REGISTRY, canonical_order
from pytest_sdopt.stacks.spec import DENOISER_WORDS, ApplyContext, OptimizationSpec, Phase


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

    def unmet_by_model(self, model: str, denoiser: Any) -> StackUnsupported | None:
        """Why this stack cannot act on `model`, whose denoiser is `denoiser` (a models.families.Denoiser:
        `.kind`, `.words()`), found without loading it."""
        for opt in self.optimizations:
            kinds = opt.spec.acts_on
            if kinds is not None and denoiser.kind not in kinds:
                wanted = " or ".join(DENOISER_WORDS.get(kind, kind) for kind in kinds)
                return StackUnsupported(opt.name, f"needs {wanted}; {model}'s denoiser is {denoiser.words()}")
        return None

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

    ordered = sorted(parsed, key=lambda opt: canonical_order(opt.spec))
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
