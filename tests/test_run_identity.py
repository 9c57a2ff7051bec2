"""Every run has its own identity: two runs of one stack in one test (other seeds) keep their own
image, artifacts, JSON entry and row in `sdopt compare`, instead of overwriting each other."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pytest_sdopt.cli import main

def _runs(path):
    return json.loads(path.read_text())["runs"]


def test_two_runs_of_one_stack_keep_their_own_images_entries_and_comparison_rows(run_sdopt, pytester, capsys):
    source = """
        def test_two_seeds(sdopt):
            sdopt.run("fp32", seed=1)
            sdopt.run("fp32", seed=2)
    """
    run_sdopt(source, "--sdopt-json", "old/results.json").assert_outcomes(passed=1)
    runs = _runs(pytester.path / "old" / "results.json")
    assert [(run["stack"], run["run"], run["scenario"]["seed"]) for run in runs] == [("fp32", 1, 1), ("fp32", 2, 2)]
    images = [pytester.path / "old" / run["image"] for run in runs]
    assert len(set(images)) == 2 and images[1].name.endswith("-fp32.run2.png")
    # Different seeds draw different pictures: had one file overwritten the other, they would be equal.
    assert Image.open(images[0]).tobytes() != Image.open(images[1]).tobytes()

    run_sdopt(source, "--sdopt-json", "new/results.json").assert_outcomes(passed=1)
    capsys.readouterr()
    assert main(["compare", str(pytester.path / "old"), str(pytester.path / "new"), "--fail", "its:100%"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("test_two_seeds")]
    assert len(rows) == 2, out  # one row per run, not one collapsed row of two seeds
    assert rows[1].startswith("test_two_seeds #2")

    # A second run of the same stack with another seed is not "the same run with another scenario".
    new = pytester.path / "new" / "results.json"
    document = json.loads(new.read_text())
    document["runs"] = document["runs"][:1]  # NEW lost its second run: that run, not the first, is missing
    new.write_text(json.dumps(document))
    assert main(["compare", str(pytester.path / "old"), str(pytester.path / "new"), "--fail", "its:100%"]) == 1
    out = capsys.readouterr().out
    missing = [line for line in out.splitlines() if line.startswith("test_two_seeds") and "missing in NEW" in line]
    assert len(missing) == 1 and missing[0].startswith("test_two_seeds #2"), out
    assert "1 of 2 stacks regressed: fp32 #2 (test_downstream.py::test_two_seeds): missing in NEW" in out


def test_a_second_failing_run_of_a_stack_leaves_its_own_artifacts(run_sdopt, pytester):
    source = """
        import pytest

        def test_two_seeds(sdopt):
            failures = 0
            for result in [sdopt.run("fp32", seed=1), sdopt.run("fp32", seed=2)]:
                try:
                    sdopt.check(result)
                except pytest.fail.Exception:
                    failures += 1
            assert failures == 2
    """
    run_sdopt(source.replace("assert failures == 2", "assert failures == 0"), "--sdopt-update-baselines") \
        .assert_outcomes(passed=1)
    stored = sorted(pytester.path.glob("baselines/tiny/*/fp32.png"))
    assert len(stored) == 2  # one per seed: two scenarios
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for path in stored:  # both baselines replaced: both runs fail their SSIM comparison
        Image.fromarray(noise).save(path)
    run_sdopt(source).assert_outcomes(passed=1)
    folders = sorted(pytester.path.glob(".sdopt/*two_seeds*/*"))
    assert [folder.name for folder in folders] == ["fp32", "fp32.run2"]
    actual = [Image.open(folder / "actual.png").tobytes() for folder in folders]
    assert actual[0] != actual[1]  # each run's own image, not the second written over the first
