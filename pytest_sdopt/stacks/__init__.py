"""Optimizations and stacks of them: the registry (one module per family), parsing, applying.

What a downstream plugin needs to declare its own optimization is re-exported here:
`OptimizationSpec`, `Phase`, `Effect`, `ApplyContext` and the requirement helpers.
"""

from pytest_sdopt.stacks.registry import REGISTRY, register, unregister
from pytest_sdopt.stacks.spec import (ApplyContext, Effect, OptimizationSpec, Phase, Requirement, needs_compiler_toolchain,
                                      needs_cuda, needs_package)
from pytest_sdopt.stacks.stack import Optimization, Stack, StackApplyError, parse_stack, valid_names

__all__ = ["REGISTRY", "ApplyContext", "Effect", "Optimization", "OptimizationSpec", "Phase", "Requirement", "Stack",
           "StackApplyError", "needs_compiler_toolchain", "needs_cuda", "needs_package", "parse_stack", "register",
           "unregister", "valid_names"]
