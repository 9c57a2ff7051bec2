#!/usr/bin/env python
"""False alarms and detection power of the speed gate's three verdicts with the default settings.

The speed gate `max_its_drop` says pass, FAIL or inconclusive (DESIGN.md section 5). Here it
runs as a user who sets nothing would run it: no --sdopt-settle, no --sdopt-cpu-threads,
so 3 measured runs on one CPU thread, a check re-measured for up to 30 s when it does not
surely pass, the default limit (25% on CPU), on the embedded model. Each session records
its own baseline in a fresh scratch project (`--sdopt-update-baselines`), then checks it in a
second pytest session, so sessions are independent. Scenarios, `--sessions` of each, taken in
turn (a, b, c, d, a, ...) so a slow spell of the machine falls on all of them alike:

  (a) recorded quiet, checked while a CPU-bound process occupies one core;
  (b) recorded under that load, checked quiet;
  (c) recorded and checked with `-n 2` (pytest-xdist), 4 stacks so both workers run;
  (d) a 50% slowdown (each denoising step works 50% longer, speed_gate.py's injection),
      checked under the load, recorded quiet without it.

Every stack of every check is one verdict. A FAIL in (a)-(c) is a false alarm (target 0);
inconclusive is counted and shown but is not one. In (d) a FAIL is a detection (target
>= 9 in 10): a real regression that large must not read inconclusive.

    .venv/bin/python benchmarks/verdicts.py [--sessions 10] [--only a,b,c,d] [--cpu-threads N]

Each session line shows the verdict with the gate's measured and detail text, so the reason
for a verdict can be read; `--keep DIR` keeps every session's results JSON (per-call step and
reference times) for a closer look. Each scenario's session is two pytest sessions, 1-2 minutes
each on a 2-core machine (`--sessions 1`, 8 of them, took 8-14 minutes while other tests shared
it). The load average is printed with the summary: on a shared machine "quiet" is not quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from findings import PYTHON, Finding, add_findings_option, finish, timed_child
from speed_gate import CONFTEST  # the per-step busy-loop slowdown, active only when SDOPT_SLOWDOWN is set

TEST = '''
import pytest


@pytest.mark.parametrize("stack", [{stacks}])
def test_speed(sdopt, stack):
    sdopt.check(sdopt.run(stack), min_ssim=None, min_self_ssim=None, max_memory_growth=None)
'''
STACKS = ("fp32", "tome")
MATRIX_STACKS = ("fp32", "bf16", "tome", "vae_tiling")  # (c): enough tests that both workers run
SLOWDOWN = 0.5
# One core kept busy. It also stops by itself once its parent is gone (checked every ~10 ms), so
# not even a benchmark killed outright leaves it spinning.
LOAD = '''
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(200000):
        pass
'''


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    record_loaded: bool = False
    check_loaded: bool = False
    workers: int = 0  # pytest-xdist -n, 0: none
    stacks: tuple[str, ...] = STACKS
    slowdown: float = 0.0  # injected into the check only

    @property
    def detects(self) -> bool:
        return self.slowdown > 0


SCENARIOS = {s.key: s for s in (
    Scenario("a", "recorded quiet, checked with a core busy", check_loaded=True),
    Scenario("b", "recorded with a core busy, checked quiet", record_loaded=True),
    Scenario("c", "recorded and checked with -n 2", workers=2, stacks=MATRIX_STACKS),
    Scenario("d", f"{SLOWDOWN:.0%} slowdown checked with a core busy, recorded quiet", check_loaded=True,
             slowdown=SLOWDOWN),
)}


@contextmanager
def cpu_load(active: bool) -> Iterator[None]:
    """A CPU-bound process for the duration, killed on the way out whatever happened."""
    if not active:
        yield
        return
    hog = subprocess.Popen([PYTHON, "-c", LOAD], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


EXTRA_OPTIONS: list[str] = []  # --cpu-threads N: every session gets --sdopt-cpu-threads N (not the defaults)


def pytest_session(project: Path, options: list[str], loaded: bool, slowdown: float = 0.0,
                   keep: Path | None = None) -> list[dict]:
    """One `pytest -p pytest_sdopt` session in the project; its runs from --sdopt-json (copied to `keep`)."""
    results = project / "results.json"
    results.unlink(missing_ok=True)
    with cpu_load(loaded):
        _, output = timed_child([PYTHON, "-m", "pytest", "-p", "pytest_sdopt", "-q", "-p", "no:cacheprovider",
                                 f"--sdopt-json={results}", *EXTRA_OPTIONS, *options], cwd=project,
                                env={"SDOPT_SLOWDOWN": str(slowdown)})
    if not results.is_file():
        raise RuntimeError(f"no results JSON from pytest {' '.join(options)}:\n{output[-3000:]}")
    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results, keep)
    return json.loads(results.read_text())["runs"]


def speed_verdicts(runs: list[dict]) -> list[dict]:
    """Per stack: the max_its_drop gate's status, measured and detail text (or why there is none)."""
    verdicts = []
    for run in runs:
        gate = next((g for g in run["gates"] if g["gate"] == "max_its_drop"), None)
        if gate is None:
            why = run.get("skip_reason") or run.get("note") or f"test {run['outcome']}, no speed gate"
            verdicts.append({"stack": run["stack"], "status": "none", "measured": "", "detail": str(why)})
        else:
            verdicts.append({"stack": run["stack"], "status": gate["status"], "measured": gate["measured"],
                             "detail": gate["detail"]})
    return verdicts


def one_session(scenario: Scenario, keep: Path | None = None) -> list[dict]:
    """Record fresh in a scratch project of its own, then check; the check's verdicts. With `keep`
    (a path prefix), both sessions' results JSON are kept as <keep>-record.json and <keep>-check.json."""
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        (project / "test_speed.py").write_text(TEST.format(stacks=", ".join(map(repr, scenario.stacks))))
        (project / "conftest.py").write_text(CONFTEST)
        workers = ["-n", str(scenario.workers)] if scenario.workers else []
        recorded = pytest_session(project, ["--sdopt-update-baselines", *workers], scenario.record_loaded,
                                  keep=keep and keep.with_name(keep.name + "-record.json"))
        unrecorded = [r["stack"] for r in recorded if r["outcome"] != "passed"]
        if unrecorded:
            raise RuntimeError(f"({scenario.key}) the recording did not pass for {', '.join(unrecorded)}: "
                               + "; ".join(str(r.get("note") or r.get("skip_reason")) for r in recorded))
        return speed_verdicts(pytest_session(project, workers, scenario.check_loaded, scenario.slowdown,
                                             keep=keep and keep.with_name(keep.name + "-check.json")))


def why_inconclusive(detail: str) -> str:
    """The gate's reason, without the figures that vary from run to run."""
    reason = next((part for part in detail.split("; ") if part.startswith("inconclusive: ")), detail)
    reason = reason.removeprefix("inconclusive: ")
    return re.sub(r"\d+(\.\d+)?", "N", reason)


def measure(sessions: int, keys: list[str], keep: Path | None = None,
            verbose: bool = True) -> tuple[list[Finding], list[str]]:
    load_before = os.getloadavg()[0]
    counts = {key: Counter() for key in keys}
    reasons = {key: Counter() for key in keys}
    for index in range(sessions):
        for key in keys:
            scenario = SCENARIOS[key]
            for verdict in one_session(scenario, keep and keep / f"{key}-{index + 1}"):
                counts[key][verdict["status"]] += 1
                if verdict["status"] == "inconclusive":
                    reasons[key][why_inconclusive(verdict["detail"])] += 1
                line = (f"  ({key}) session {index + 1} {verdict['stack']:<10} {verdict['status']:<12} "
                        f"{verdict['measured']}{'; ' + verdict['detail'] if verdict['detail'] else ''}")
                if verbose:
                    print(line, flush=True)
    # Another process's load makes "quiet" a loaded machine too: say how busy the machine was.
    notes = [f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} "
             f"CPUs; the sessions' own load adds about 1 to 2"]
    findings = []
    for key in keys:
        scenario, counted = SCENARIOS[key], counts[key]
        total = sum(counted.values())
        fails, inconclusive, passes = counted["FAIL"], counted["inconclusive"], counted["pass"]
        other = total - fails - inconclusive - passes  # n/a, or no gate at all: no verdict
        rest = f", {other} without a verdict" if other else ""
        measured = f"{fails}/{total} ({passes} pass, {inconclusive} inconclusive{rest})"
        command = f"benchmarks/verdicts.py --only {key} --sessions {sessions}"
        what = f"({key}) {scenario.title}, " + (" ".join(EXTRA_OPTIONS) or "defaults")
        notes.append(f"({key}) {scenario.title}: {total} verdicts over {sessions} session"
                     f"{'' if sessions == 1 else 's'}: {fails} FAIL, {inconclusive} inconclusive, {passes} pass{rest}")
        notes += [f"      inconclusive x{n}: {reason}" for reason, n in reasons[key].most_common()]
        if scenario.detects:
            needed = total - total // 10
            findings.append(Finding(f"speed gate detections {what}", measured, f">= {needed}/{total}",
                                    total > 0 and fails >= needed, command))
        else:  # a stack without a verdict would make 0 false alarms mean nothing: it misses the target too
            findings.append(Finding(f"speed gate false alarms {what}", measured, "0",
                                    total > 0 and fails == 0 and not other, command))
    return findings, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10, help="record-and-check sessions per scenario")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated subset of a,b,c,d")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep every session's results JSON here (<scenario>-<session>-record/check.json)")
    parser.add_argument("--cpu-threads", type=int, default=None, metavar="N",
                        help="run every session with --sdopt-cpu-threads N instead of the defaults (for comparison)")
    add_findings_option(parser)
    args = parser.parse_args()
    if args.cpu_threads is not None:
        EXTRA_OPTIONS.extend(["--sdopt-cpu-threads", str(args.cpu_threads)])
    keys = [key.strip() for key in args.only.split(",")]
    unknown = sorted(set(keys) - set(SCENARIOS))
    if unknown or args.sessions < 1:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}" if unknown else "--sessions must be >= 1")
    # A terminated benchmark unwinds like an interrupted one, so the load's `finally` kills it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    findings, notes = measure(args.sessions, keys, Path(args.keep) if args.keep else None)
    return finish(findings, notes, args.findings_json)


if __name__ == "__main__":
    sys.exit(main())
