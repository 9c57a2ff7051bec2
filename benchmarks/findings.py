"""What every benchmark returns: a measured ratio, its target, and whether it met it.

Benchmarks print ratios measured side by side in one run, never absolute times compared with
another day's: the figures only mean something next to each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass(frozen=True)
class Finding:
    item: str  # what was measured
    measured: str  # the figure, formatted
    target: str  # e.g. "<= 1.03"
    passed: bool
    command: str  # what reproduces it on its own

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "FAIL"


def render(findings: list[Finding]) -> list[str]:
    """A plain-text table, the same one docs/performance.md quotes."""
    rows = [("item", "measured", "target", "verdict")] + [(f.item, f.measured, f.target, f.verdict) for f in findings]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def add_findings_option(parser) -> None:
    parser.add_argument("--findings-json", default=None, help="also write the findings here (benchmarks/run.py reads it)")


def add_model_cache_option(parser) -> None:
    parser.add_argument("--model-cache", default=None, metavar="DIR",
                        help="where sd15-random's weights are saved once and read back, as the plugin does "
                             "under <results-dir>/models (default: built in memory by every load)")


def finish(findings: list[Finding], notes: list[str], findings_json: str | None) -> int:
    """Print the notes and the table; write them for run.py when asked. Exit status 1 when a target is missed."""
    print("\n".join([*notes, *render(findings)]))
    if findings_json:
        Path(findings_json).write_text(json.dumps({"findings": [asdict(f) for f in findings], "notes": notes}))
    return 0 if all(f.passed for f in findings) else 1


def load_findings(path: Path) -> tuple[list[Finding], list[str]]:
    document = json.loads(Path(path).read_text())
    return [Finding(**found) for found in document["findings"]], document["notes"]


def timed_child(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of a child process, and its output; a failing child stops the benchmark loudly."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: tests failed, which some benchmarks expect
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall, done.stdout + done.stderr


def on_path() -> None:
    """Let a benchmark run as a plain script from a checkout: the repo and this folder importable."""
    for folder in (REPO, Path(__file__).resolve().parent):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
