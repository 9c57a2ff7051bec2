"""One check of a run: gather what every gate needs (baselines, SSIM, stored metrics), apply the gates.

`check_run` is what `sdopt.check()` and the matrix call. It writes baselines only when the
context says `--sdopt-update-baselines`, in its mode: `checked` (the bare flag) records the
checked stack and the reference only where it is missing, `all` re-records the reference too,
`missing` writes only what is absent. It leaves actual / baseline / diff images behind for
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
    update: str | None  # --sdopt-update-baselines' mode (settings.UPDATE_MODES), None: never write
    artifact_folder: Path  # where this test's failed comparison of this stack leaves its images
    update_command: str  # the exact command that records the missing baselines
    # Stores a RunResult as its stack's baseline: its image and/or its metrics (update mode only).
    record: Callable[..., None]
    # Runs and records the reference stack, once per scenario (update mode only); `only_missing`:
    # write only what is absent.
    record_reference: Callable[[str, bool], None]
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


def check_run(result: Any, limits: GateLimits, context: CheckContext) -> CheckedRun:
    outcomes: list[GateOutcome] = []
    if limits.max_vram is not None:
        outcomes.append(gates.max_vram(result, limits.max_vram))
    if limits.max_host_memory is not None:
        outcomes.append(gates.max_host_memory(result, limits.max_host_memory))
    if limits.min_its is not None:
        outcomes.append(gates.min_its(result, limits.min_its))

    scenario, stack = result.scenario, result.stack
    device_fingerprint = fingerprint(result.env)
    stored_before = context.store.read_metrics(scenario, stack).get(device_fingerprint)
    own_image_before = context.store.read_image(scenario, stack)
    image_recorded = metrics_recorded = False
    if context.update:
        # `missing` writes only what is absent; the other modes replace this stack's baseline.
        image_recorded = context.update != "missing" or own_image_before is None
        metrics_recorded = context.update != "missing" or stored_before is None
        if image_recorded or metrics_recorded:
            context.record(result, image=image_recorded, metrics=metrics_recorded,
                           tolerance=limits.min_self_ssim or limits.min_ssim)
        if limits.min_ssim is not None and limits.reference != stack:
            # A narrowed update must not rewrite the reference every other stack is compared with:
            # only `all` re-records it; otherwise it is recorded where it is missing.
            if context.update == "all" or context.store.read_image(scenario, limits.reference) is None:
                context.record_reference(limits.reference, context.update == "missing")
    if limits.min_ssim is not None:
        outcomes.append(gates.min_ssim(compare_with_reference(result, limits, context), limits.min_ssim))
    # The reference's min_ssim already compares it with its own image.
    if limits.min_self_ssim is not None and stack != limits.reference:
        outcomes.append(own_image_outcome(result, limits, context, own_image_before, image_recorded))

    stored = StoredMetrics(device_fingerprint, stored_before, recorded_now=metrics_recorded)
    if limits.max_its_drop is not None:
        outcomes.append(gates.max_its_drop(result, limits.max_its_drop, stored))
    if limits.max_memory_growth is not None:
        outcomes.extend(gates.max_memory_growth(result, limits.max_memory_growth, stored))
    return CheckedRun(result, limits, outcomes, strict=context.strict)


def own_image_outcome(result: Any, limits: GateLimits, context: CheckContext, own_image: Any,
                      just_recorded: bool) -> GateOutcome:
    """min_self_ssim: the run's image against the same stack's stored image (as it was before this
    check recorded anything), so a lossy stack drifting within its tolerance to the reference is seen."""
    limit = limits.min_self_ssim
    assert limit is not None
    if just_recorded:
        return gates.min_self_ssim(None, limit, "this run's image was just recorded (--sdopt-update-baselines; the "
                                                "session's end lists what it replaced)")
    path = shown(context.store.image_path(result.scenario, result.stack))
    if own_image is None:
        return gates.min_self_ssim(None, limit, f"no image of its own stored yet ({path}); --sdopt-update-baselines "
                                                f"records it")
    folder = context.artifact_folder.with_name(context.artifact_folder.name + "-own")
    try:
        similarity = compare(result.image, own_image)
    except ImageSizeMismatch as exc:
        return gates.min_self_ssim(None, limit, f"{exc} ({path})", failed=True)
    if similarity.ssim + gates.SSIM_EPSILON >= limit:
        shutil.rmtree(folder, ignore_errors=True)
        return gates.min_self_ssim(similarity.ssim, limit)
    artifacts = write_artifacts(folder, result.image, own_image, similarity)
    return gates.min_self_ssim(similarity.ssim, limit, artifacts=tuple((label, shown(Path(p))) for label, p in artifacts))


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
