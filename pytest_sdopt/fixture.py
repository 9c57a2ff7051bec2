"""The `sdopt` fixture's object: seeded pipelines, runs, checks and baselines for any stack.

A thin facade over the orchestrator (harness/runs.py): it hands the orchestrator the test's
identity and turns sdopt's own errors into test outcomes a user can act on: bad input fails
the test with one paragraph and no traceback; a stack this machine cannot run skips with the
precise reason (or fails under --sdopt-strict); a check fails once, listing every gate. It also
writes the junitxml properties and lends pytest-benchmark's fixture to a run that asks for it.
"""

from __future__ import annotations

import warnings
import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from pytest_sdopt.checks.baselines import Baseline
from pytest_sdopt.checks.checking import CheckedRun, update_command
from pytest_sdopt.checks.promises import PROMISE_GATES
from pytest_sdopt.config.defaults import REFERENCE
from pytest_sdopt.config.settings import GATE_KEYWORDS
from pytest_sdopt.core.errors import PipelineCallFailed, RunOutOfMemory, SdoptUsageError, SdoptWarning, StackUnsupported
from pytest_sdopt.harness.runs import PlannedRun, NodeIdentity, Orchestrator
from pytest_sdopt.harness.session import SdoptSession
from pytest_sdopt.measure.cleanup import release_memory
from pytest_sdopt.stacks import Stack, StackApplyError

if TYPE_CHECKING:
    from pytest_sdopt.measure.runner import RunResult


class Sdopt:
    """What a test gets as `sdopt`: seeded pipelines with a stack applied, measured runs, checks
    against every gate that is set, and the stored baselines.

    Settings layer keyword > `@pytest.mark.sdopt` > command line > ini > default. A stack that
    cannot run here skips with the reason (fails under --sdopt-strict); bad input fails the test
    with one paragraph.
    """

    def __init__(self, session: SdoptSession, node: pytest.Item, in_matrix: bool = False, request: Any = None):
        self._session = session
        self._node = node
        self._request = request  # the fixture request, to fetch pytest-benchmark's fixture under --sdopt-benchmark
        config = node.config
        select = None if in_matrix else node.nodeid  # a matrix test has no selectable path
        self._runs = Orchestrator(session, NodeIdentity(
            nodeid=node.nodeid, name=node.name, markers=lambda: node.iter_markers("sdopt"),
            update_command=update_command(config.invocation_params.args, config.args, select),
            in_matrix=in_matrix, order=_collection_index(node)))
        self._checked: list[Any] = []  # the RunResults sdopt.check() has seen
        self._handed_out: list[weakref.ref] = []  # what sdopt.pipeline() returned, to release at close

    @property
    def results(self) -> "list[RunResult]":
        """The RunResults of this test's runs, in order."""
        return self._runs.results

    # -- public API ---------------------------------------------------------------------

    def pipeline(self, stack: str = REFERENCE, **overrides: Any) -> Any:
        """A fresh pipeline with `stack` applied, on the run's device (keywords: model, device)."""
        with self._outcomes(stack):
            pipe, watched = self._runs.pipeline(self.plan(stack, overrides, "sdopt.pipeline"))
            self._handed_out += watched
            return pipe

    def run(self, stack: str = REFERENCE, **overrides: Any) -> "RunResult":
        """Warm-up then measured runs of `stack` on a fresh pipeline; returns a RunResult."""
        with self._outcomes(stack):
            result = self._runs.run(self.plan(stack, overrides, "sdopt.run"), benchmark=self._unused_benchmark())
        self._properties(result.stack, {"it/s": f"{result.its:.3f}", "peak VRAM bytes": result.peak_vram_bytes,
                                        "peak host bytes": result.peak_host_bytes})
        return result

    def check(self, result: "RunResult", **gates: Any) -> CheckedRun:
        """Apply every gate that is set (keyword > marker > command line > ini > default) to `result`.

        Fails the test once, listing each gate with its measured value, its limit and the images
        a failed comparison left behind. Returns the CheckedRun when every gate held.
        """
        from pytest_sdopt.measure.runner import RunResult

        with self._outcomes(getattr(result, "stack", "?")):
            if not isinstance(result, RunResult):
                raise SdoptUsageError(f"sdopt.check() takes the RunResult that sdopt.run() returned, not "
                                      f"{type(result).__name__}.")
            checked = self._runs.check(result, gates)
        self._checked.append(result)
        self._properties(result.stack, {
            "SSIM": None if checked.ssim is None else f"{checked.ssim:.4f}",
            "verdict": verdict_text(checked),
            **{o.gate: f"{o.value:.2f}x {' '.join(o.limit.split()[:2])} {o.status.value}"
               for o in checked.outcomes if o.gate in PROMISE_GATES and o.value is not None}})
        if checked.failed:
            pytest.fail(checked.failure_message(), pytrace=False)
        if checked.inconclusive:  # does not fail the test (--sdopt-strict makes it), but is never silent
            warnings.warn(SdoptWarning(checked.failure_message()), stacklevel=2)
        return checked

    def baseline(self, stack: str = REFERENCE, **overrides: Any) -> Baseline:
        """The stored image and metrics of `stack` in this test's scenario (None where nothing is stored)."""
        with self._outcomes(stack):
            return self._runs.baseline(self.plan(stack, overrides, "sdopt.baseline", runnable_here=False))

    def plan(self, stack: str | Stack, overrides: dict[str, Any], where: str = "sdopt.run",
             runnable_here: bool = True) -> PlannedRun:
        """Parse and layer the settings (keyword > marker > command line > ini > default); see Orchestrator.plan."""
        return self._runs.plan(stack, overrides, where, runnable_here)

    def close(self) -> None:
        release_memory(self._handed_out)
        self._warn_of_unapplied_gates()

    def _warn_of_unapplied_gates(self) -> None:
        """Gates on a marker only act through sdopt.check(): a test that never calls it must hear so."""
        unchecked = [result.stack for result in self.results if all(result is not c for c in self._checked)]
        if not unchecked:
            return
        try:
            marker = self._runs.marker()
        except SdoptUsageError:
            return  # already reported by the run itself
        gates = [name for name in GATE_KEYWORDS if name in marker]
        if gates:
            warnings.warn(SdoptWarning(
                f"@pytest.mark.sdopt sets {', '.join(gates)}, but the run(s) of {', '.join(unchecked)} were never "
                f"checked: call sdopt.check(result) to apply the gates."), stacklevel=2)

    # -- internals ----------------------------------------------------------------------

    def _properties(self, stack: str, values: dict[str, Any]) -> None:
        """junitxml <property> entries (record_property's storage), so CI systems show the figures."""
        for name, value in values.items():
            self._node.user_properties.append((f"sdopt {stack} {name}", "n/a" if value is None else str(value)))

    def _unused_benchmark(self) -> Any:
        """The test's pytest-benchmark fixture, if it requested one (or --sdopt-benchmark asks for it)
        and nothing has used it yet."""
        funcargs = getattr(self._node, "funcargs", {})
        benchmark = funcargs.get("benchmark")
        if benchmark is None and self._session.settings.benchmark and self._request is not None:
            try:
                benchmark = self._request.getfixturevalue("benchmark")
            except pytest.FixtureLookupError:
                raise SdoptUsageError("--sdopt-benchmark needs pytest-benchmark, which is not installed "
                                      "(pip install pytest-benchmark).") from None
        if benchmark is None or getattr(benchmark, "disabled", True) or getattr(benchmark, "_mode", None):
            return None
        return benchmark

    @contextmanager
    def _outcomes(self, stack: object) -> Iterator[None]:
        # The failure is raised `from None`: it would otherwise carry the error as its context (even
        # after the except block, since a context manager's exit runs while the error is in flight),
        # and pytest would print it twice ("During handling of the above exception, ...").
        failure = skipped = None
        try:
            yield
        except (SdoptUsageError, StackApplyError, RunOutOfMemory, PipelineCallFailed) as exc:
            failure = f"sdopt: {exc}"
        except StackUnsupported as exc:
            skipped = f"sdopt: stack {str(stack)!r} cannot run here: {exc}"
            if self._session.settings.strict:
                failure = f"{skipped} (--sdopt-strict makes this a failure)"
            else:
                self._runs.record_skip(str(stack), str(exc))
        if failure is not None:
            raise pytest.fail.Exception(failure, pytrace=False) from None
        if skipped is not None:
            skip_at_test(skipped)


def verdict_text(checked: CheckedRun) -> str:
    """The check's verdict in one line, for junitxml properties: pass, FAIL: gates, or pass with the
    inconclusive gates named."""
    if checked.failed:
        return "FAIL: " + ", ".join(dict.fromkeys(o.gate for o in checked.failed))
    if checked.inconclusive:
        return "pass (inconclusive: " + ", ".join(dict.fromkeys(o.gate for o in checked.inconclusive)) + ")"
    return "pass"


def _collection_index(node: Any) -> int:
    """The test's place in the session's collection: merged results keep the order tests ran in."""
    try:
        return node.session.items.index(node)
    except (AttributeError, ValueError):
        return len(getattr(node.session, "items", ()))


def skip_at_test(message: str) -> None:
    """Skip, reported at the test's own location (as a skip marker is), not inside this plugin."""
    try:
        raise pytest.skip.Exception(message, _use_item_location=True)
    except TypeError:  # a pytest without that keyword: the plain skip still carries the reason
        pytest.skip(message)
