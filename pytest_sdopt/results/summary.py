"""What the session ran, one row per run, and the table printed at the end of the session.

The table reads run entries (plain data, see report.py), so a pytest-xdist controller prints
the runs of all its workers. Columns: stack, device, it/s and its ratio to the reference run
(marked `?` where a run was disturbed), peak VRAM with its ratio, the process's peak host memory
and the host memory the run itself added with its ratio, SSIM against the reference's baseline,
and the verdict (inconclusive gates named in it). A gate that could not apply shows in the verdict as n/a; a run that was never
checked says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from pytest_sdopt.config.defaults import REFERENCE
from pytest_sdopt.config.parsers import format_bytes


@dataclass
class RunRecord:
    """A run as it happens in this process (live objects); report.run_entry() makes it plain data."""

    nodeid: str
    test: str  # the test's name as the table shows it
    stack: str
    reference: str = REFERENCE
    result: Any = None  # RunResult; None when the stack was skipped
    checked: Any = None  # CheckedRun, once sdopt.check() ran
    skipped: str | None = None
    in_matrix: bool = False
    note: str | None = None  # why a run was made that no test checks (the reference, recorded)
    order: int = 0  # the test's place in the session's collection
    error: str | None = None  # the run itself failed (out of memory): no figures, a failed outcome
    run: int = 1  # the n-th run of this stack in this test: with nodeid and stack, the run's identity


def run_label(entry: dict[str, Any]) -> str:
    """The test's name as tables show it, with `#n` for a later run of the same stack in that test."""
    run = entry.get("run") or 1
    return entry["test"] if run == 1 else f"{entry['test']} #{run}"


def verdict(entry: dict[str, Any]) -> str:
    if entry["outcome"] == "skipped":
        return f"skipped: {entry['skip_reason']}"
    if entry["outcome"] == "unchecked":
        return entry["note"] or "not checked"
    if entry["outcome"] == "failed" and entry["figures"] is None:
        return f"FAIL: {entry['note']}"
    failed = list(dict.fromkeys(g["gate"] for g in entry["gates"] if g["status"] == "FAIL"))
    inconclusive = list(dict.fromkeys(g["gate"] for g in entry["gates"] if g["status"] == "inconclusive"))
    not_applicable = sorted({g["gate"] for g in entry["gates"] if g["status"] == "n/a"})
    if entry["outcome"] == "failed" and not failed:  # --sdopt-strict failed it on inconclusive gates
        text = f"FAIL (strict): {', '.join(inconclusive)} inconclusive"
        inconclusive = []
    else:
        text = f"FAIL: {', '.join(failed)}" if failed else "pass"
    notes = [f"inconclusive: {', '.join(inconclusive)}"] if inconclusive else []
    notes += [f"n/a: {', '.join(not_applicable)}"] if not_applicable else []
    return f"{text} ({'; '.join(notes)})" if notes else text


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}x"


# A ratio of two speeds is marked (`0.07x?`) when either run was disturbed: its calls disagree by
# more than this (the half-width of its 95% interval), or the machine's speed (the reference
# workload, machine.py) differed by more than 25% between the two runs.
DISTURBED_SPREAD = 0.10
DISTURBED_MACHINE_MOVE = 1.25
DISTURBED_MARK = "?"


def disturbed(figures: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Whether a speed ratio of these two runs' figures (results entries) is no evidence."""
    key = "machine_relative_spread" if figures.get("machine_relative_its") is not None else "best_its_spread"
    if any((side.get(key) or 0) > DISTURBED_SPREAD for side in (figures, reference)):
        return True
    now, then = figures.get("machine_reference_s"), reference.get("machine_reference_s")
    return bool(now and then and max(now / then, then / now) > DISTURBED_MACHINE_MOVE)


def _speed_ratio(figures: dict[str, Any], reference: dict[str, Any]) -> str:
    text = _ratio(figures["its"], reference.get("its"))
    return text + DISTURBED_MARK if text != "-" and disturbed(figures, reference) else text


def _bytes(value: int | None) -> str:
    return "n/a" if value is None else format_bytes(value)


def reference_entry(entry: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The session's run of this entry's reference stack on the same scenario, if there was one."""
    if entry["figures"] is None:
        return None
    for other in entries:
        if other["figures"] is not None and other["stack"] == entry["reference"] \
                and other["scenario"] == entry["scenario"]:
            return other
    return None


PROMISE_WORDS = {"pass": "kept", "FAIL": "BROKEN", "inconclusive": "?"}
PROMISE_LABELS = {"min_speedup": "speed", "max_memory_ratio": "memory"}


def promise_cell(entry: dict[str, Any]) -> str:
    """The promise gates of a run as the table shows them: `speed 0.51x >= 0.90x BROKEN; memory 0.3x <= 1.00x kept`."""
    parts = []
    for gate in entry.get("gates") or ():
        if gate["gate"] not in PROMISE_LABELS or gate["status"] == "n/a" or gate.get("value") is None:
            continue
        bound = " ".join(gate["limit"].split()[:2])  # ">= 0.90x"
        parts.append(f"{PROMISE_LABELS[gate['gate']]} {gate['value']:.2f}x {bound} {PROMISE_WORDS[gate['status']]}")
    return "; ".join(parts) or "-"


def table_rows(entries: Iterable[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    entries = list(entries)
    show_test = any(not entry["in_matrix"] for entry in entries)
    show_promises = any(gate["gate"] in PROMISE_LABELS for entry in entries for gate in entry.get("gates") or ())
    header = (["test"] if show_test else []) + ["stack", "device", "it/s", "vs ref", "peak VRAM", "vs ref",
                                                 "peak host", "run host", "vs ref", "SSIM", "verdict"]
    header += ["promises"] if show_promises else []
    rows = []
    for entry in entries:
        cells = [run_label(entry)] if show_test else []
        figures = entry["figures"]
        if figures is None:
            cells += [entry["stack"], "", "", "", "", "", "", "", "", "", verdict(entry)]
            cells += [""] if show_promises else []
        else:
            reference = (reference_entry(entry, entries) or {}).get("figures") or {}
            cells += [
                entry["stack"], entry["device"], f"{figures['its']:.2f}", _speed_ratio(figures, reference),
                _bytes(figures["peak_vram_bytes"]), _ratio(figures["peak_vram_bytes"], reference.get("peak_vram_bytes")),
                _bytes(figures["peak_host_bytes"]), _bytes(figures.get("run_host_bytes")),
                _ratio(figures.get("run_host_bytes"), reference.get("run_host_bytes")),
                "-" if entry["ssim"] is None else f"{entry['ssim']:.4f}", verdict(entry),
            ]
            cells += [promise_cell(entry)] if show_promises else []
        rows.append(cells)
    return header, rows


def render_table(entries: Iterable[dict[str, Any]]) -> list[str]:
    header, rows = table_rows(entries)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {"it/s", "vs ref", "peak VRAM", "peak host", "run host", "SSIM"}

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) if header[i] in numeric else cell.ljust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(header), *(line(row) for row in rows)]
    speed_column = header.index("it/s") + 1
    if any(row[speed_column].endswith(DISTURBED_MARK) for row in rows):
        lines.append(f"{DISTURBED_MARK}: a disturbed run (its calls disagree by more than {DISTURBED_SPREAD:.0%}, or the "
                     f"machine's speed moved more than {DISTURBED_MACHINE_MOVE - 1:.0%} between it and the reference's): "
                     f"that speed ratio is no evidence")
    return lines


def environment_line(entries: Iterable[dict[str, Any]]) -> str | None:
    """The versions and hardware of the first run, once above the table."""
    for entry in entries:
        env = entry["env"]
        if env:
            parts = [f"{name} {env[name]}" for name in ("torch", "diffusers", "transformers") if env.get(name)]
            return f"{', '.join(parts)} on {env.get('device_name', 'unknown device')}"
    return None
