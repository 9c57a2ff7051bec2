"""One check of a run: gather what every gate needs (baselines, SSIM, stored metrics), apply the gates.

`check_run` is what `sdopt.check()` and the matrix call. It writes baselines only when the
context says `--sdopt-update-baselines`, and leaves actual / baseline / diff images behind for
every failed comparison. No pytest here: the fixture turns a failed `CheckedRun` into one test
failure.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pytest_sdopt import gates
from pytest_sdopt.baselines import BaselineStore, fingerprint
from pytest_sdopt.gates import GateLimits, GateOutcome, ReferenceComparison, StoredMetrics
from pytest_sdopt.parsing import shown
from pytest_sdopt.similarity import ImageSizeMismatch, compare, write_artifacts

UPDATE_FLAG = "--sdopt-update-baselines"


@dataclass
class CheckContext:
    store: BaselineStore
    update: bool  # --sdopt-update-baselines: record this run (and the reference) before comparing
    artifact_folder: Path  # where this test's failed comparison of this stack leaves its images
    update_command: str  # the exact command that records the missing baselines
    record: Callable[[Any], None]  # stores a RunResult as its stack's baseline (update mode only)
    record_reference: Callable[[str], None]  # runs and records the reference stack, once (update mode only)


@dataclass
class CheckedRun:
    result: Any  # RunResult
    limits: GateLimits
    outcomes: list[GateOutcome]

    @property
    def failed(self) -> list[GateOutcome]:
        return [outcome for outcome in self.outcomes if outcome.failed]

    @property
    def ssim(self) -> float | None:
        return next((outcome.value for outcome in self.outcomes if outcome.gate == "min_ssim"), None)

    def failure_message(self) -> str:
        scenario = self.result.scenario
        where = f"{scenario.model}, {scenario.size_text}, {scenario.steps} steps, seed {scenario.seed}, {self.result.device}"
        return gates.failure_message(self.result.stack, where, self.outcomes)


def check_run(result: Any, limits: GateLimits, context: CheckContext) -> CheckedRun:
    outcomes: list[GateOutcome] = []
    if limits.max_vram is not None:
        outcomes.append(gates.max_vram(result, limits.max_vram))
    if limits.max_host_memory is not None:
        outcomes.append(gates.max_host_memory(result, limits.max_host_memory))
    if limits.min_its is not None:
        outcomes.append(gates.min_its(result, limits.min_its))

    device_fingerprint = fingerprint(result.env)
    stored_before = context.store.read_metrics(result.scenario, result.stack).get(device_fingerprint)
    if context.update:
        context.record(result)
        if limits.min_ssim is not None and limits.reference != result.stack:
            context.record_reference(limits.reference)
    if limits.min_ssim is not None:
        outcomes.append(gates.min_ssim(compare_with_reference(result, limits, context), limits.min_ssim))

    stored = StoredMetrics(device_fingerprint, stored_before, recorded_now=context.update)
    if limits.max_its_drop is not None:
        outcomes.append(gates.max_its_drop(result, limits.max_its_drop, stored))
    if limits.max_memory_growth is not None:
        outcomes.extend(gates.max_memory_growth(result, limits.max_memory_growth, stored))
    return CheckedRun(result, limits, outcomes)


def compare_with_reference(result: Any, limits: GateLimits, context: CheckContext) -> ReferenceComparison:
    reference, folder = limits.reference, context.artifact_folder
    path = context.store.image_path(result.scenario, reference)
    baseline = context.store.read_image(result.scenario, reference)
    if baseline is None:
        return ReferenceComparison(reference, None, problem=(
            f"no baseline image of {reference!r} for this scenario (expected {shown(path)}).\n"
            f"Record it with:\n    {context.update_command}"))
    try:
        similarity = compare(result.image, baseline)
    except ImageSizeMismatch as exc:
        artifacts = write_artifacts(folder, result.image, baseline, None)
        return ReferenceComparison(reference, None, problem=f"{exc} (baseline {shown(path)})",
                                   artifacts=tuple((label, shown(Path(p))) for label, p in artifacts))
    if similarity.ssim + gates.SSIM_EPSILON >= (limits.min_ssim or 0.0):
        shutil.rmtree(folder, ignore_errors=True)  # images of an earlier failure would only mislead
        return ReferenceComparison(reference, similarity.ssim)
    artifacts = write_artifacts(folder, result.image, baseline, similarity)
    return ReferenceComparison(reference, similarity.ssim, artifacts=tuple((label, shown(Path(p))) for label, p in artifacts))


def update_command(invocation_args: Sequence[str], positional_args: Sequence[str], select: str | None) -> str:
    """The session's own command line, narrowed to `select` (a node id) when given, plus the update flag."""
    positional = set(positional_args) if select else set()
    args = [arg for arg in invocation_args if arg not in positional]
    if select:
        args.append(select)
    if UPDATE_FLAG not in args:
        args.append(UPDATE_FLAG)
    return shlex.join(["pytest", *args])
