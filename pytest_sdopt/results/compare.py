"""Two result sets side by side: what `sdopt compare OLD NEW` prints and decides (no argparse here).

Runs are matched by test node id and stack. A regression is a figure past its threshold, a
stack that ran before and is missing or skipped now, or gates that held before and fail now.
Speed has three verdicts, as the max_its_drop gate (speed.judge_speed, on the same figures the
results JSON stores: machine-relative on CPU, with their intervals): a drop surely past the
threshold is a regression, one that the noise cannot tell from it is inconclusive (shown, with
why; it fails only with --strict). Comparing results of different scenarios is refused: their
figures do not compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_sdopt.checks.gates import HOST_NOISE_BYTES
from pytest_sdopt.config.parsers import format_bytes
from pytest_sdopt.results.summary import run_label

DEFAULT_THRESHOLDS = {"its": 0.05, "vram": 0.05, "host": 0.10, "ssim": 0.02}
SCENARIO_FIELDS = ("model", "prompt", "seed", "size", "steps", "guidance")  # not the device


class ComparisonError(Exception):
    """The two result sets cannot be compared; the message says why."""


@dataclass
class StackComparison:
    nodeid: str
    stack: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    ssim: float | None = None  # old image against new image
    regressions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)  # what the noise could not decide
    its_change: str = "-"  # the speed change as compared, with its noise: "-16.9% ± 20.1%"
    run: int = 1  # which run of this stack in its test (see summary.RunRecord.run)

    @property
    def name(self) -> str:
        """The stack, and the run where the test ran that stack more than once: "fp32 #2"."""
        return self.stack if self.run == 1 else f"{self.stack} #{self.run}"


def _key(entry: dict[str, Any]) -> tuple[str, str, int]:
    """A run's identity: its test, its stack, and which run of that stack in the test (files written
    before the run number existed hold one run per test and stack: 1)."""
    return entry["nodeid"], entry["stack"], entry.get("run") or 1


def _scenario(entry: dict[str, Any]) -> dict[str, Any] | None:
    return None if entry["scenario"] is None else {k: entry["scenario"][k] for k in SCENARIO_FIELDS}


def _describe(scenario: dict[str, Any]) -> str:
    size = "x".join(str(v) for v in scenario["size"]) if scenario["size"] else "default size"
    return f"{scenario['model']}, {size}, {scenario['steps']} steps, seed {scenario['seed']}"


def compare_results(old: dict[str, Any], new: dict[str, Any], thresholds: dict[str, float]) -> list[StackComparison]:
    old_runs = {_key(entry): entry for entry in old["runs"]}
    new_runs = {_key(entry): entry for entry in new["runs"]}
    for key in old_runs.keys() & new_runs.keys():
        before, after = _scenario(old_runs[key]), _scenario(new_runs[key])
        if before is not None and after is not None and before != after:
            which = key[1] if key[2] == 1 else f"{key[1]} (run {key[2]})"
            raise ComparisonError(f"different scenarios compared: {which} ({key[0]}) ran on {_describe(before)} "
                                  f"in OLD but on {_describe(after)} in NEW. Record both sides with the same "
                                  f"model, size, steps, seed, prompt and guidance.")
    keys = list(dict.fromkeys([*old_runs, *new_runs]))
    return [_compare_one(key, old_runs.get(key), new_runs.get(key), thresholds) for key in keys]


def _compare_one(key: tuple[str, str, int], old: dict[str, Any] | None, new: dict[str, Any] | None,
                 thresholds: dict[str, float]) -> StackComparison:
    row = StackComparison(key[0], key[1], old, new, run=key[2])
    if new is None:
        row.regressions.append("missing in NEW")
        return row
    if old is None:
        row.notes.append("new in NEW")
        return row
    if new["figures"] is None:
        if old["figures"] is not None:
            why = f"skipped in NEW: {new['skip_reason']}" if new["outcome"] == "skipped" else f"failed in NEW: {new['note']}"
            row.regressions.append(why)
        else:
            row.notes.append("skipped on both sides")
        return row
    if old["figures"] is None:
        row.notes.append(f"skipped in OLD: {old['skip_reason']}")
        return row
    before, after = old["figures"], new["figures"]
    if "its" in thresholds and before["its"] > 0:
        _compare_speed(before, after, thresholds["its"], row)
    # Host memory: the run's own where both sides have it (not the process peak, which grows with the
    # tests before it), and a growth within the allocator's noise (gates.HOST_NOISE_BYTES) is none.
    own = bool(before.get("run_host_bytes") and after.get("run_host_bytes") is not None)
    host_field, host_label = ("run_host_bytes", "run's own host") if own else ("peak_host_bytes", "peak host")
    for metric, field_name, label in (("vram", "peak_vram_bytes", "peak VRAM"), ("host", host_field, host_label)):
        if metric in thresholds and before.get(field_name) and after.get(field_name) is not None:
            change = after[field_name] / before[field_name] - 1
            noise = metric == "host" and after[field_name] - before[field_name] <= HOST_NOISE_BYTES
            if change > thresholds[metric] + 1e-12 and not noise:
                row.regressions.append(f"{metric} {change:+.1%} ({label} {format_bytes(before[field_name])} -> "
                                       f"{format_bytes(after[field_name])}; limit +{thresholds[metric]:.0%})")
    row.ssim = _image_ssim(old, new, row)
    if row.ssim is not None and "ssim" in thresholds and row.ssim < 1 - thresholds["ssim"] - 1e-12:
        row.regressions.append(f"ssim {row.ssim:.4f} between the OLD and NEW image (limit >= {1 - thresholds['ssim']:g})")
    if old["outcome"] == "passed" and new["outcome"] == "failed":
        failed = ", ".join(g["gate"] for g in new["gates"] if g["status"] == "FAIL")
        row.regressions.append(f"gates fail in NEW: {failed}")
    _compare_promises(old, new, row)
    return row


PROMISE_GATES = ("min_speedup", "max_memory_ratio")


def _compare_promises(old: dict[str, Any], new: dict[str, Any], row: StackComparison) -> None:
    """A promise (or a promise gate's bound) that held in OLD and breaks in NEW is a regression of its
    own, whatever the rest of the check did: the optimization stopped doing what it is for."""
    before = {g["gate"]: g for g in old.get("gates") or () if g["gate"] in PROMISE_GATES}
    for gate in new.get("gates") or ():
        held = before.get(gate["gate"])
        if held is not None and held["status"] == "pass" and gate["status"] == "FAIL":
            row.regressions.append(f"promise broken in NEW: {gate['gate']} {gate['measured'].split(' (')[0]} "
                                   f"({gate['limit']}; held in OLD at {held['measured'].split(' (')[0]})")


def _compare_speed(before: dict[str, Any], after: dict[str, Any], limit: float, row: StackComparison) -> None:
    from pytest_sdopt.measure.figures import SpeedFigure
    from pytest_sdopt.checks.speed import Verdict, judge_speed

    old, new = SpeedFigure.stored(before), SpeedFigure.stored(after)
    if old.cpu_threads and new.cpu_threads and old.cpu_threads != new.cpu_threads:
        row.notes.append(f"its not compared: OLD ran with {old.cpu_threads} CPU threads, NEW with {new.cpu_threads} "
                         f"(record both with the same --sdopt-cpu-threads)")
        return
    judged = judge_speed(new, old, limit)
    figure = "machine-relative" if judged.machine_relative else "best call"
    row.its_change = f"{-judged.drop:+.1%} ± {judged.noise:.1%}" if judged.noise < 1 else f"{-judged.drop:+.1%} ± >100%"
    text = (f"its {row.its_change} ({figure}: {before['its']:.2f} -> {after['its']:.2f} it/s; "
            f"limit -{limit:.0%})")
    if judged.verdict is Verdict.FAIL:
        row.regressions.append(text)
    elif judged.verdict is Verdict.INCONCLUSIVE:
        row.inconclusive.append(f"{text}: inconclusive, {judged.why}; to settle it: {judged.remedy}")


def _image_ssim(old: dict[str, Any], new: dict[str, Any], row: StackComparison) -> float | None:
    from pathlib import Path

    from pytest_sdopt.checks.similarity import ImageSizeMismatch, compare

    paths = [entry["image"] for entry in (old, new)]
    if not all(path and Path(path).is_file() for path in paths):
        row.notes.append("no image on both sides (record with --sdopt-json)")
        return None
    from PIL import Image

    with Image.open(paths[0]) as before, Image.open(paths[1]) as after:
        try:
            return compare(after.convert("RGB"), before.convert("RGB")).ssim
        except ImageSizeMismatch as exc:
            row.regressions.append(f"image size changed: {exc}")
            return None


def _change(before: float | None, after: float | None) -> str:
    if before is None or after is None or not before:
        return "-"
    return f"{after / before - 1:+.1%}"


def comparison_rows(rows: list[StackComparison]) -> tuple[list[str], list[list[str]]]:
    header = ["test", "stack", "it/s old", "it/s new", "change", "VRAM old", "VRAM new", "change", "host old",
              "host new", "change", "SSIM old/new", "verdict"]
    body = []
    for row in rows:
        def figure(entry: dict[str, Any] | None, name: str, kind: str) -> tuple[str, float | None]:
            value = (entry or {}).get("figures") and entry["figures"].get(name)  # type: ignore[index]
            if value is None:
                return "-", None
            return (f"{value:.2f}" if kind == "its" else format_bytes(value)), value

        entry = row.new or row.old or {}
        cells = [run_label(entry) if "test" in entry else row.nodeid, row.stack]
        for name, kind in (("its", "its"), ("peak_vram_bytes", "bytes"), ("peak_host_bytes", "bytes")):
            (old_text, old_value), (new_text, new_value) = figure(row.old, name, kind), figure(row.new, name, kind)
            change = row.its_change if name == "its" and row.its_change != "-" else _change(old_value, new_value)
            cells += [old_text, new_text, change]
        cells.append("-" if row.ssim is None else f"{row.ssim:.4f}")
        verdict = "REGRESSION: " + "; ".join(row.regressions) if row.regressions else "ok"
        if row.inconclusive:
            verdict = ("REGRESSION: " + "; ".join(row.regressions) + "; " if row.regressions else "") + \
                "INCONCLUSIVE: " + "; ".join(row.inconclusive)
        if row.notes:
            verdict += f" ({'; '.join(row.notes)})"
        cells.append(verdict)
        body.append(cells)
    return header, body
