"""The benchmark scripts run from a checkout and print their table; no timing is asserted here
(figures from a shared machine belong in the benchmark's own output, never in a test verdict)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    # These mean the CPU: the scripts take `auto`, which is CUDA on a machine with a GPU.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_the_overhead_benchmark_prints_a_ratio_and_a_verdict_per_stack():
    done = run("overhead.py", "--stacks", "fp32,tome", "--pairs", "1")
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: a target missed, which is the benchmark's to say
    rows = re.findall(r"^overhead (\S+)\s+(\d+\.\d{3})\s+<= 1\.03\s+(pass|FAIL)$", done.stdout, re.M)
    assert [row[0] for row in rows] == ["fp32", "tome"] and all(float(row[1]) > 0 for row in rows)


def test_the_memory_benchmark_compares_with_a_bare_process_of_its_own():
    done = run("memory_accuracy.py", "--stacks", "fp32")
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert re.search(r"fp32: sdopt reports \d+\.\d MB; the bare run's ru_maxrss is \d+\.\d MB", done.stdout)
    assert re.search(r"^host peak vs OS \(fp32\)\s+[+-]\d+\.\d%\s+within 5%\s+(pass|FAIL)$", done.stdout, re.M)


def test_run_names_the_parts_it_knows():
    done = run("run.py", "--only", "overheads")
    assert done.returncode == 2 and "unknown part(s) overheads; choose from overhead, matrix, import, memory, " \
                                   "speed" in done.stderr
