"""The optimization registry: every named optimization, the built-in ones and those a plugin or
conftest registers (the `pytest_sdopt_register_optimizations` hook, hookspecs.py).

The built-ins come one family per module (precision, attention, vae, token_merging, placement,
compilation), so a new optimization is one `OptimizationSpec` in one file. The order here is the
canonical order within a phase and the order `--sdopt-matrix` runs them in.
"""

from __future__ import annotations

from typing import Iterable

from pytest_sdopt.config.defaults import REFERENCE
from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.stacks import attention, compilation, placement, precision, token_merging, vae
from pytest_sdopt.stacks.spec import OptimizationSpec, Phase

BUILT_IN: tuple[OptimizationSpec, ...] = (*precision.SPECS, *attention.SPECS, *vae.SPECS, *token_merging.SPECS,
                                          *placement.SPECS, *compilation.SPECS)
REGISTRY: dict[str, OptimizationSpec] = {spec.name: spec for spec in BUILT_IN}


def canonical_order(spec: OptimizationSpec) -> tuple[int, int]:
    """Phase first, then the order of registration."""
    return spec.phase, list(REGISTRY).index(spec.name)


def register(specs: Iterable[OptimizationSpec], source: str = "a plugin") -> list[str]:
    """Add optimizations a plugin or conftest declares; their names must be new. Returns the names.

    A name that is taken, a phase that is not a `Phase`, or a spec without an `Effect` (an
    optimization must show that it acted, or a run of it would only redraw the reference) is a
    usage error naming `source`."""
    added = []
    for spec in specs:
        if not isinstance(spec, OptimizationSpec):
            raise SdoptUsageError(f"{source} registered {spec!r}: an optimization is a pytest_sdopt.stacks.OptimizationSpec.")
        if spec.name in REGISTRY and REGISTRY[spec.name] is not spec:
            raise SdoptUsageError(f"{source} registered an optimization named {spec.name!r}, which is taken: choose "
                                  f"another name.")
        if not spec.name or any(mark in spec.name for mark in "+:, ") or not spec.name.isascii():
            raise SdoptUsageError(f"{source} registered an optimization named {spec.name!r}: a name is one word of "
                                  f"letters, digits and underscores (it is spelt in stacks such as fp16+NAME).")
        if not isinstance(spec.phase, Phase):
            raise SdoptUsageError(f"{source} registered {spec.name!r} with phase {spec.phase!r}: use one of "
                                  f"{', '.join(p.name for p in Phase)} (pytest_sdopt.stacks.Phase).")
        if spec.effect is None:
            raise SdoptUsageError(f"{source} registered {spec.name!r} without an effect: give it an Effect that "
                                  f"shows it acted, so a run of it can never pass as the reference redrawn.")
        REGISTRY[spec.name] = spec
        added.append(spec.name)
    return added


def unregister(names: Iterable[str]) -> None:
    """Remove optimizations a plugin registered (at the end of its session); built-ins stay."""
    built_in = {spec.name for spec in BUILT_IN}
    for name in names:
        if name not in built_in and name != REFERENCE:
            REGISTRY.pop(name, None)
