"""Hooks pytest-sdopt calls, for a downstream conftest.py or plugin to implement.

    # conftest.py
    from pytest_sdopt.stacks import Effect, OptimizationSpec, Phase

    def pytest_sdopt_register_optimizations(config):
        return [OptimizationSpec("my_attention", Phase.ATTENTION, "our fused attention", 0.98,
                                 apply=apply_my_attention, effect=Effect(snapshot, unchanged))]

Those of a plugin or of a conftest.py at the root (an initial conftest) are registered before
the settings are read, so `--sdopt-matrix`, `--sdopt-reference`, stacks such as
`fp16+my_attention` and `sdopt.run("my_attention")` know them; a conftest deeper in the tree
registers its own as it is loaded. They are removed again when the session ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pluggy

if TYPE_CHECKING:
    from pytest_sdopt.stacks import OptimizationSpec

hookspec = pluggy.HookspecMarker("pytest")


@hookspec(historic=True)
def pytest_sdopt_register_optimizations(config: Any) -> Sequence[OptimizationSpec] | None:
    """Return the optimizations (pytest_sdopt.stacks.OptimizationSpec) this plugin adds, or None.

    Each is one name (a word: letters, digits, underscores, new to the registry), its `Phase`
    (which fixes its place in a stack), a one-line summary, its default `min_ssim` against the
    reference, `apply(pipe, ctx)`, what it `needs` (requirements checked before the model loads:
    `needs_cuda`, `needs_package("xformers")`, or your own `device_type -> reason | None`), and an
    `Effect` that shows it acted (required: an optimization that changes nothing would pass as the
    reference redrawn). `exclusive_group` puts it in a group of which a stack holds at most one
    (precision, attention, offload)."""
