"""What the session ran, one row per run, and the table printed at the end of the session.

Columns: stack, device, it/s and its ratio to the reference run, peak VRAM and peak host
memory with their ratios, SSIM against the reference's baseline, and the verdict. A gate that
could not apply shows in the verdict as n/a; a run that was never checked says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from pytest_sdopt.parsing import format_bytes


@dataclass
class RunRecord:
    nodeid: str
    test: str  # the test's name as the table shows it
    stack: str
    reference: str = "fp32"
    result: Any = None  # RunResult; None when the stack was skipped
    checked: Any = None  # CheckedRun, once sdopt.check() ran
    skipped: str | None = None
    in_matrix: bool = False
    note: str | None = None  # why a run was made that no test checks (the reference, recorded)

    @property
    def verdict(self) -> str:
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        if self.checked is None:
            return self.note or "not checked"
        failed = [outcome.gate for outcome in self.checked.failed]
        not_applicable = sorted({o.gate for o in self.checked.outcomes if o.status.value == "n/a"})
        verdict = f"FAIL: {', '.join(dict.fromkeys(failed))}" if failed else "pass"
        return f"{verdict} (n/a: {', '.join(not_applicable)})" if not_applicable else verdict


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}x"


def _bytes(value: int | None) -> str:
    return "n/a" if value is None else format_bytes(value)


def _reference_result(record: RunRecord, records: list[RunRecord]) -> Any:
    if record.result is None:
        return None
    for other in records:
        if (other.result is not None and other.stack == record.reference
                and other.result.scenario == record.result.scenario):
            return other.result
    return None


def table_rows(records: Iterable[RunRecord]) -> tuple[list[str], list[list[str]]]:
    records = list(records)
    show_test = any(not record.in_matrix for record in records)
    header = (["test"] if show_test else []) + ["stack", "device", "it/s", "vs ref", "peak VRAM", "vs ref",
                                                 "peak host", "vs ref", "SSIM", "verdict"]
    rows = []
    for record in records:
        result, reference = record.result, _reference_result(record, records)
        cells = [record.test] if show_test else []
        if result is None:
            cells += [record.stack, "", "", "", "", "", "", "", "", record.verdict]
        else:
            ssim = record.checked.ssim if record.checked is not None else None
            cells += [
                record.stack, result.device, f"{result.its:.2f}", _ratio(result.its, reference and reference.its),
                _bytes(result.peak_vram_bytes), _ratio(result.peak_vram_bytes, reference and reference.peak_vram_bytes),
                _bytes(result.peak_host_bytes), _ratio(result.peak_host_bytes, reference and reference.peak_host_bytes),
                "-" if ssim is None else f"{ssim:.4f}", record.verdict,
            ]
        rows.append(cells)
    return header, rows


def render_table(records: Iterable[RunRecord]) -> list[str]:
    header, rows = table_rows(records)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {"it/s", "vs ref", "peak VRAM", "peak host", "SSIM"}

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) if header[i] in numeric else cell.ljust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), *(line(row) for row in rows)]


def environment_line(records: Iterable[RunRecord]) -> str | None:
    """The versions and hardware of the first run, once above the table."""
    for record in records:
        if record.result is not None and record.result.env:
            env = record.result.env
            parts = [f"{name} {env[name]}" for name in ("torch", "diffusers", "transformers") if env.get(name)]
            return f"{', '.join(parts)} on {env.get('device_name', 'unknown device')}"
    return None
