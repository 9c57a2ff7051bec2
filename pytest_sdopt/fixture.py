"""The `sdopt` fixture's object: seeded pipelines and runs with any optimization stack.

Every public method turns sdopt's own errors into test outcomes a user can act on: bad input
fails the test with one paragraph and no traceback; a stack this machine cannot run skips
with the precise reason (or fails under --sdopt-strict).
"""

from __future__ import annotations

import gc
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import pytest

from pytest_sdopt.devices import resolve_device
from pytest_sdopt.errors import SdoptUsageError, StackUnsupported
from pytest_sdopt.memory import return_freed_memory_to_the_os
from pytest_sdopt.models import ModelSource
from pytest_sdopt.optimizations import Stack, StackApplyError, parse_stack
from pytest_sdopt.scenario import Measurement, Scenario
from pytest_sdopt.session import SdoptSession
from pytest_sdopt.settings import keyword_overrides, marker_overrides, resolve_run


@dataclass(frozen=True)
class PlannedRun:
    """Everything a run needs, resolved and checked before any model is loaded."""

    stack: Stack
    scenario: Scenario
    measurement: Measurement
    source: ModelSource
    device: Any


class Sdopt:
    """What a test gets as `sdopt`. See the README's fixture reference."""

    def __init__(self, session: SdoptSession, node: pytest.Item):
        self._session = session
        self._node = node
        self.results: list[Any] = []  # RunResults of this test, in order

    # -- public API ---------------------------------------------------------------------

    def pipeline(self, stack: str = "fp32", **overrides: Any) -> Any:
        """A fresh pipeline with `stack` applied, on the run's device (keywords: model, device)."""
        with self._outcomes(stack):
            plan = self.plan(stack, overrides, "sdopt.pipeline")
            return self._build(plan)

    def run(self, stack: str = "fp32", **overrides: Any) -> Any:
        """Warm-up then measured runs of `stack` on a fresh pipeline; returns a RunResult."""
        from pytest_sdopt.runner import run_pipeline

        with self._outcomes(stack):
            plan = self.plan(stack, overrides, "sdopt.run")
            release_memory()  # what an earlier run left must not count in this one's peaks
            pipe = self._build(plan)
            try:
                result = run_pipeline(pipe, plan.stack, plan.scenario, plan.measurement, plan.device,
                                      self._session.environment(plan.device))
            finally:
                del pipe
                release_memory()
        self.results.append(result)
        return result

    def plan(self, stack: str | Stack, overrides: dict[str, Any], where: str = "sdopt.run") -> PlannedRun:
        """Parse and layer the settings (keyword > marker > command line > ini > default).

        Raises SdoptUsageError for bad input and StackUnsupported when the stack cannot run here.
        """
        parsed = parse_stack(stack)
        marker = marker_overrides(self._node.iter_markers("sdopt"))
        scenario, measurement = resolve_run(self._session.settings, marker, keyword_overrides(overrides, where))
        source = self._session.model(scenario.model)
        device = resolve_device(scenario.device)
        scenario = replace(scenario, device=str(device), size=scenario.size or source.default_size,
                           steps=scenario.steps or source.default_steps)
        unmet = parsed.unmet_requirement(device.type)
        if unmet is not None:
            raise unmet
        return PlannedRun(parsed, scenario, measurement, source, device)

    def close(self) -> None:
        release_memory()

    # -- internals ----------------------------------------------------------------------

    def _build(self, plan: PlannedRun) -> Any:
        import torch

        # sd15-random is created where it runs (no 4 GB detour through host memory), except
        # for offloads, which start from CPU-resident weights.
        load_device = torch.device("cpu") if plan.stack.places_pipeline else plan.device
        pipe = plan.source.load(load_device)
        plan.stack.apply(pipe, plan.device)
        return pipe

    @contextmanager
    def _outcomes(self, stack: object) -> Iterator[None]:
        try:
            yield
        except (SdoptUsageError, StackApplyError) as exc:
            pytest.fail(f"sdopt: {exc}", pytrace=False)
        except StackUnsupported as exc:
            message = f"sdopt: stack {str(stack)!r} cannot run here: {exc}"
            if self._session.settings["strict"]:
                pytest.fail(f"{message} (--sdopt-strict makes this a failure)", pytrace=False)
            skip_at_test(message)


def skip_at_test(message: str) -> None:
    """Skip, reported at the test's own location (as a skip marker is), not inside this plugin."""
    try:
        raise pytest.skip.Exception(message, _use_item_location=True)
    except TypeError:  # a pytest without that keyword: the plain skip still carries the reason
        pytest.skip(message)


def release_memory() -> None:
    """Drop what a finished run held, so the next test's figures start clean."""
    gc.collect()
    torch = sys.modules.get("torch")  # never import torch just to clean up
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return_freed_memory_to_the_os()
