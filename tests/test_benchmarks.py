"""The benchmark scripts run from a checkout, print their table, and exit 1 exactly when a row of
it says FAIL. No timing is asserted here (figures from a shared machine belong in the benchmark's
own output, never in a test verdict): whichever verdicts a run prints, its exit code must agree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    # These mean the CPU: the scripts take `auto`, which is CUDA on a machine with a GPU.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=600, env=env)


def printed_verdicts(stdout: str) -> dict[str, str]:
    """item -> pass/FAIL, read from the table under the `item measured target verdict` header."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if re.fullmatch(r"item\s+measured\s+target\s+verdict", line))
    rows = [re.fullmatch(r"(.+?)\s{2,}\S.*\s(pass|FAIL)", line) for line in lines[header + 1:]]
    assert all(rows), lines[header + 1:]
    return {row.group(1): row.group(2) for row in rows}


def assert_exit_code_matches_verdicts(done: subprocess.CompletedProcess, findings_json: Path) -> dict[str, str]:
    assert done.returncode in (0, 1), done.stderr[-2000:]  # anything else is a crash, not a verdict
    verdicts = printed_verdicts(done.stdout)
    written = {found["item"]: "pass" if found["passed"] else "FAIL"
               for found in json.loads(findings_json.read_text())["findings"]}
    assert verdicts == written  # the table and the file run.py reads say the same
    expected = 0 if all(verdict == "pass" for verdict in verdicts.values()) else 1
    assert done.returncode == expected, (verdicts, done.returncode)
    return verdicts


def test_the_overhead_benchmark_prints_a_ratio_and_a_verdict_per_stack(tmp_path):
    out = tmp_path / "overhead.json"
    done = run("overhead.py", "--stacks", "fp32,tome", "--pairs", "1", "--findings-json", str(out))
    verdicts = assert_exit_code_matches_verdicts(done, out)
    assert list(verdicts) == ["overhead fp32", "overhead tome"]
    rows = re.findall(r"^overhead (\S+)\s+(\d+\.\d{3})\s+<= 1\.03\s+(pass|FAIL)$", done.stdout, re.M)
    assert [row[0] for row in rows] == ["fp32", "tome"] and all(float(row[1]) > 0 for row in rows)


def test_the_memory_benchmark_compares_with_a_bare_process_of_its_own(tmp_path):
    out = tmp_path / "memory.json"
    done = run("memory_accuracy.py", "--stacks", "fp32", "--findings-json", str(out))
    verdicts = assert_exit_code_matches_verdicts(done, out)
    assert list(verdicts) == ["host peak vs OS (fp32)"]
    assert re.search(r"fp32: sdopt reports \d+\.\d MB; the bare run's ru_maxrss is \d+\.\d MB", done.stdout)
    assert re.search(r"^host peak vs OS \(fp32\)\s+[+-]\d+\.\d%\s+within 5%\s+(pass|FAIL)$", done.stdout, re.M)


@pytest.mark.parametrize("passed, expected", [((True, True), 0), ((True, False), 1), ((False, False), 1)])
def test_a_missed_target_is_printed_as_fail_and_exits_1(capsys, passed, expected):
    """Verdicts known in advance, through the one function every benchmark ends with."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from findings import Finding, finish
    finally:
        sys.path.remove(str(BENCHMARKS))
    findings = [Finding(f"row {i}", "1.000", "<= 1.03", ok, "cmd") for i, ok in enumerate(passed)]
    assert finish(findings, ["a note"], None) == expected
    printed = printed_verdicts(capsys.readouterr().out)
    assert printed == {f"row {i}": "pass" if ok else "FAIL" for i, ok in enumerate(passed)}


def test_run_names_the_parts_it_knows():
    done = run("run.py", "--only", "overheads")
    assert done.returncode == 2 and "unknown part(s) overheads; choose from overhead, matrix, import, memory, " \
                                   "speed" in done.stderr
