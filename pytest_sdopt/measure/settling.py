"""Settling: re-measuring before a speed verdict counts (the policy of when is the caller's: a check
passes a `good_enough` test, built by the orchestrator from the speed gate, so measuring never
reads the checking layer)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Settled:
    """What settling did: extra measured calls and the seconds they took."""

    calls: int = 0
    seconds: float = 0.0
    reason: str = ""  # "recording" or "checking"; "" when nothing was re-measured


RECORDING_FACTOR = 2  # a recording settles this many times longer than a check
# Without --sdopt-settle, a check whose speed verdict is not yet pass re-measures this long before
# the verdict counts (a check that passes on its first runs costs nothing more). Three runs give no
# interval of their own, so a 50% slowdown (-33% it/s) checked on a machine with a busy core read
# inconclusive against a 25% limit; re-measured, its interval narrows to the session's 1.5% and
# it is caught (benchmarks/verdicts.py, row (d)). Recordings are not extended by default: a
# recording pays it on every stack, a check only where the evidence is not yet clear.
CHECK_SETTLE_S = 30.0
# Without --sdopt-settle, a recording that a speed gate will read measures until its figure has an
# interval of its own (MIN_INTERVAL_SAMPLES runs over MIN_INTERVAL_SPAN_S s of steps: ~12-15 s on
# `tiny`), for at most this long. Every later check is judged against it: recorded from 3 runs, a
# figure's range was up to +-10% and a 50% slowdown (-33% it/s) read -30.7% +- 10.2% against a 25%
# limit, inconclusive (benchmarks/verdicts.py, row (d)).
RECORDING_SETTLE_S = 60.0


def settle(measure_once: Callable[[], None], budget_s: float, measuring_since: float,
           good_enough: Callable[[], bool] | None, clock: Callable[[], float] = time.monotonic) -> Settled:
    """Keep calling `measure_once` (one more measured call) within a budget counted from
    `measuring_since` (when the first measured call began).

    `good_enough` None is a recording: measure for RECORDING_FACTOR x `budget_s`. Otherwise a
    check: within `budget_s`, stop as soon as `good_enough()` (the speed gate surely passes on
    what was measured so far: judge_speed's verdict is pass), and never start when it already
    holds. A reading past the limit is re-measured for the whole budget before it counts.
    """
    reason = "recording" if good_enough is None else "checking"
    if budget_s <= 0 or (good_enough is not None and good_enough()):
        return Settled()
    if good_enough is None:
        budget_s *= RECORDING_FACTOR
    started, calls = clock(), 0
    while clock() - measuring_since < budget_s:
        measure_once()
        calls += 1
        if good_enough is not None and good_enough():
            break
    return Settled(calls, clock() - started, reason if calls else "")


def settle_recording(measure_once: Callable[[], None], measuring_since: float, has_interval: Callable[[], bool],
                     clock: Callable[[], float] = time.monotonic) -> Settled:
    """A recording without --sdopt-settle: more measured calls until `has_interval()` (the figure has
    an interval of its own), within RECORDING_SETTLE_S counted from `measuring_since`."""
    started, calls = clock(), 0
    while not has_interval() and clock() - measuring_since < RECORDING_SETTLE_S:
        measure_once()
        calls += 1
    return Settled(calls, clock() - started, "recording" if calls else "")
