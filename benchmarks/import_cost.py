"""What installing pytest-sdopt costs a repo's test runs that use none of it (issue 7, item 3).

`pytest --co -q` on a project with no sdopt tests, with the plugin loaded (autoload) and with it
blocked (`-p no:pytest_sdopt`), in pairs whose order alternates, so both see the same machine
load. The ratio is the median of the pairs' ratios (target <= 1.05: the plugin must not import
torch). A ratio of medians, with the loaded run always first, once read 1.076 where the same code
had read 1.015: a ~0.8 s process is at the mercy of the machine's state, and pairing cancels it.

    .venv/bin/python benchmarks/import_cost.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from findings import Finding, add_findings_option, finish

TARGET = 1.05


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *args], cwd=cwd,
                   check=True, capture_output=True)
    return time.perf_counter() - start


def measure(rounds: int = 15) -> tuple[list[Finding], list[str]]:
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        (project / "test_plain.py").write_text("def test_one():\n    assert True\n")
        timed([], project)  # warm the file system cache once
        loaded, blocked = [], []
        for index in range(rounds):
            if index % 2:
                blocked.append(timed(["-p", "no:pytest_sdopt"], project))
                loaded.append(timed([], project))
            else:
                loaded.append(timed([], project))
                blocked.append(timed(["-p", "no:pytest_sdopt"], project))
    with_plugin, without = statistics.median(loaded), statistics.median(blocked)
    ratio = statistics.median(a / b for a, b in zip(loaded, blocked))
    line = (f"pytest --co -q, {rounds} pairs: with pytest-sdopt {with_plugin:.3f} s, without {without:.3f} s (medians); "
            f"median pair ratio {ratio:.3f}")
    return [Finding("import cost (pytest --co, no sdopt tests)", f"{ratio:.3f}", f"<= {TARGET}", ratio <= TARGET,
                    "benchmarks/import_cost.py")], [line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    add_findings_option(parser)
    args = parser.parse_args()
    return finish(*measure(args.rounds), args.findings_json)


if __name__ == "__main__":
    sys.exit(main())
