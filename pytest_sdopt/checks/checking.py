"""One check of a run: gather what every gate needs (baselines, SSIM, stored metrics), apply the gates.

`check_run` is what `sdopt.check()` and the matrix call, after the orchestrator
(harness/runs.py) has recorded what --sdopt-update-baselines asks for: it reads the store and
writes nothing but the actual / baseline / diff images of a failed comparison. No pytest here:
the fixture turns a failed `CheckedRun` into one test failure.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pytest_sdopt.checks import gates
from pytest_sdopt.checks.baselines import BaselineStore, fingerprint
from pytest_sdopt.config.scenario import GateLimits
from pytest_sdopt.checks.promises import PromiseInputs
from pytest_sdopt.checks.gates import GateOutcome, ReferenceComparison, StoredMetrics
from pytest_sdopt.config.parsers import shown
from pytest_sdopt.checks.similarity import ImageSizeMismatch, compare, write_artifacts

UPDATE_FLAG = "--sdopt-update-baselines"


@dataclass(frozen=True)
class CheckInputs:
    """What a check reads besides the run and its limits: the store (for the reference's image),
    what was stored for this stack before the check recorded anything, and where a failed
    comparison leaves its images."""

    store: BaselineStore
    artifact_folder: Path  # where this test's failed comparison of this stack leaves its images
    update_command: str  # the exact command that records the missing baselines
    stored_metrics: dict[str, Any] | None = None  # this device's stored metrics of the stack, before
    own_image: Any = None  # the stack's own stored image, before
    image_recorded: bool = False  # this check's update recorded the stack's image / metrics
    metrics_recorded: bool = False
    strict: bool = False  # --sdopt-strict


@dataclass
class CheckedRun:
    result: Any  # RunResult
    limits: GateLimits
    outcomes: list[GateOutcome]
    strict: bool = False  # --sdopt-strict: an inconclusive gate fails the check too

    @property
    def failed(self) -> list[GateOutcome]:
        """The gates that fail the check: FAIL, and inconclusive under --sdopt-strict."""
        return [outcome for outcome in self.outcomes if outcome.failed or (self.strict and outcome.inconclusive)]

    @property
    def inconclusive(self) -> list[GateOutcome]:
        return [outcome for outcome in self.outcomes if outcome.inconclusive]

    @property
    def ssim(self) -> float | None:
        return next((outcome.value for outcome in self.outcomes if outcome.gate == "min_ssim"), None)

    def failure_message(self) -> str:
        scenario = self.result.scenario
        where = f"{scenario.model}, {scenario.size_text}, {scenario.steps} steps, seed {scenario.seed}, {self.result.device}"
        return gates.failure_message(self.result.stack, where, self.outcomes, self.strict)


def check_run(result: Any, limits: GateLimits, inputs: CheckInputs, promised: PromiseInputs | None = None) -> CheckedRun:
    """Every gate that is set, applied to `result`: a function of the run, what was stored and the
    limits (it writes nothing but a failed comparison's images)."""
    outcomes: list[GateOutcome] = []
    if limits.max_vram is not None:
        outcomes.append(gates.max_vram(result, limits.max_vram))
    if limits.max_host_memory is not None:
        outcomes.append(gates.max_host_memory(result, limits.max_host_memory))
    if limits.min_its is not None:
        outcomes.append(gates.min_its(result, limits.min_its))
    if limits.min_ssim is not None:
        outcomes.append(gates.min_ssim(compare_with_reference(result, limits, inputs), limits.min_ssim))
    # The reference's min_ssim already compares it with its own image.
    if limits.min_self_ssim is not None and result.stack != limits.reference:
        outcomes.append(own_image_outcome(result, limits, inputs))
    stored = StoredMetrics(fingerprint(result.env), inputs.stored_metrics, recorded_now=inputs.metrics_recorded)
    if limits.max_its_drop is not None:
        outcomes.append(gates.max_its_drop(result, limits.max_its_drop, stored))
    if limits.max_memory_growth is not None:
        outcomes.extend(gates.max_memory_growth(result, limits.max_memory_growth, stored))
    if promised is not None:
        outcomes.extend(promised.outcomes(result.stack))
    return CheckedRun(result, limits, outcomes, strict=inputs.strict)


def own_image_outcome(result: Any, limits: GateLimits, inputs: CheckInputs) -> GateOutcome:
    """min_self_ssim: the run's image against the same stack's stored image (as it was before this
    check recorded anything), so a lossy stack drifting within its tolerance to the reference is seen."""
    limit, own_image = limits.min_self_ssim, inputs.own_image
    assert limit is not None
    if inputs.image_recorded:
        return gates.min_self_ssim(None, limit, "this run's image was just recorded (--sdopt-update-baselines; the "
                                                "session's end lists what it replaced)")
    path = shown(inputs.store.image_path(result.scenario, result.stack))
    if own_image is None:
        return gates.min_self_ssim(None, limit, f"no image of its own stored yet ({path}); --sdopt-update-baselines "
                                                f"records it")
    folder = inputs.artifact_folder.with_name(inputs.artifact_folder.name + "-own")
    try:
        similarity = compare(result.image, own_image)
    except ImageSizeMismatch as exc:
        return gates.min_self_ssim(None, limit, f"{exc} ({path})", failed=True)
    if similarity.ssim + gates.SSIM_EPSILON >= limit:
        shutil.rmtree(folder, ignore_errors=True)
        return gates.min_self_ssim(similarity.ssim, limit)
    artifacts = write_artifacts(folder, result.image, own_image, similarity)
    return gates.min_self_ssim(similarity.ssim, limit, artifacts=tuple((label, shown(Path(p))) for label, p in artifacts))


def compare_with_reference(result: Any, limits: GateLimits, inputs: CheckInputs) -> ReferenceComparison:
    reference, folder = limits.reference, inputs.artifact_folder
    path = inputs.store.image_path(result.scenario, reference)
    baseline = inputs.store.read_image(result.scenario, reference)
    if baseline is None:
        return ReferenceComparison(reference, None, problem=(
            f"no baseline image of {reference!r} for this scenario (expected {shown(path)}).\n"
            f"Record it with:\n    {inputs.update_command}"))
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
