"""`sdopt compare OLD NEW`: exit 0 on a match, 1 naming each regressed stack and figure, 2 on bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_sdopt.cli import main
from tests.conftest import FAST

SOURCE = """
import pytest

@pytest.mark.parametrize("stack", ["fp32", "bf16", "xformers"])
def test_hold(sdopt, stack):
    sdopt.check(sdopt.run(stack), min_ssim=None)
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """One real session's results folder (results.json + results-images/), made once for this module."""
    root = tmp_path_factory.mktemp("recorded")
    (root / "test_hold.py").write_text(SOURCE)
    # Three runs: a speed FAIL needs two or more on each side (one run cannot show it was disturbed).
    subprocess.run([sys.executable, "-m", "pytest", "-p", "pytest_sdopt", "-q", *FAST, "--sdopt-repeats", "3", "--sdopt-json",
                    str(root / "old" / "results.json"), "-p", "no:cacheprovider"], cwd=root, check=True,
                   capture_output=True)
    # The figures' own spreads as a quiet machine gives them: these tests are of the comparison's logic,
    # and the spread this shared machine happened to measure (up to +-68% under load) would decide them.
    edit(root / "old", lambda document: [run["figures"].update(machine_relative_spread=0.02, best_its_spread=0.02)
                                         for run in document["runs"] if run["figures"]])
    return root / "old"


@pytest.fixture
def new(recorded, tmp_path) -> Path:
    """A copy of the recorded results to doctor."""
    return Path(shutil.copytree(recorded, tmp_path / "new"))


def edit(folder: Path, change) -> None:
    path = folder / "results.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def run_of(document, stack):
    return next(run for run in document["runs"] if run["stack"] == stack)


def test_a_run_compared_with_itself_has_no_regression(recorded, capsys):
    assert main(["compare", str(recorded), str(recorded / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "no regression in 3 stacks" in out
    assert "1.0000" in out and "skipped on both sides" in out


def slower(factor):
    """Every speed figure of bf16 multiplied by `factor`, as a slower diffusers would measure them."""
    def change(document):
        figures = run_of(document, "bf16")["figures"]
        for name in ("its", "best_its", "machine_relative_its"):
            figures[name] *= factor
    return change


def test_it_s_lowered_by_a_fifth_is_a_regression_of_that_stack(recorded, new, capsys):
    edit(new, slower(0.8))
    assert main(["compare", str(recorded), str(new)]) == 1
    out = capsys.readouterr().out
    assert "1 of 3 stacks regressed: bf16 (test_hold.py::test_hold[bf16]): its -20.0% ± " in out
    assert "(machine-relative: " in out  # the figure the gate compares on CPU, not raw it/s
    # Against a 22% limit three runs each side cannot tell a 20% drop: inconclusive, shown, and not a failure ...
    assert main(["compare", str(recorded), str(new), "--fail", "its:22%"]) == 0
    out = capsys.readouterr().out
    assert "1 of 3 stacks inconclusive: bf16 (test_hold.py::test_hold[bf16]): its -20.0% ± " in out
    assert "inconclusive, this run's 3 runs" in out and "--sdopt-settle 60" in out
    # ... except with --strict.
    assert main(["compare", str(recorded), str(new), "--fail", "its:22%", "--strict"]) == 1


def test_a_speed_change_inside_the_noise_is_not_a_regression(recorded, new, capsys):
    edit(new, slower(0.97))  # 3% slower, three runs each side: the noise cannot say it is past 5%
    assert main(["compare", str(recorded), str(new)]) == 0
    assert "INCONCLUSIVE: its -3.0% ± " in capsys.readouterr().out


def test_a_replaced_image_is_a_regression_named_by_its_ssim(recorded, new, capsys):
    image = new / run_of(json.loads((new / "results.json").read_text()), "fp32")["image"]
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    assert main(["compare", str(recorded), str(new), "--html", str(new / "cmp.html")]) == 1
    out = capsys.readouterr().out
    assert "fp32 (test_hold.py::test_hold[fp32]): ssim 0.0" in out and "(limit >= 0.98)" in out
    page = (new / "cmp.html").read_text()
    assert page.index("regression</span> fp32") < page.index("ok</span> bf16")  # regressions first
    assert page.count("data:image/png;base64,") >= 3


def test_memory_growth_and_a_missing_stack_are_reported(recorded, new, capsys):
    def change(document):
        run_of(document, "fp32")["figures"]["run_host_bytes"] += 200_000_000  # past the allocator's noise
        run_of(document, "fp32")["figures"]["peak_host_bytes"] *= 2  # the process peak is not what compares
        document["runs"] = [run for run in document["runs"] if run["stack"] != "bf16"]

    edit(new, change)
    assert main(["compare", str(recorded), str(new)]) == 1
    out = capsys.readouterr().out
    assert "fp32 (test_hold.py::test_hold[fp32]): host +" in out and "(run's own host " in out
    assert "bf16 (test_hold.py::test_hold[bf16]): missing in NEW" in out
    assert main(["compare", str(new), str(recorded), "--fail", "host:150%"]) == 0  # new in NEW is only a note
    assert "new in NEW" in capsys.readouterr().out


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(schema_version=99), "has results schema version 99; this pytest-sdopt reads versions 1, 2, 3"),
    (lambda d: d.update(tool="other"), "is not a pytest-sdopt results file"),
    (lambda d: d["runs"][0].update(outcome="great"), "does not match the results schema: runs/0/outcome"),
    (lambda d: run_of(d, "bf16")["scenario"].update(size=[128, 128]),
     "different scenarios compared: bf16 (test_hold.py::test_hold[bf16]) ran on tiny, 64x64, 2 steps, seed 1 in OLD "
     "but on tiny, 128x128, 2 steps, seed 1 in NEW"),
])
def test_bad_input_exits_2_with_a_message(recorded, new, capsys, damage, message):
    edit(new, damage)
    assert main(["compare", str(recorded), str(new / "results.json")]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_or_absent_files_and_bad_thresholds_exit_2(recorded, tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{ not json")
    assert main(["compare", str(recorded), str(tmp_path / "broken.json")]) == 2
    assert "cannot be read as JSON" in capsys.readouterr().err
    assert main(["compare", str(recorded), str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(recorded), str(tmp_path)]) == 2
    assert "must hold exactly one pytest-sdopt results file" in capsys.readouterr().err
    assert main(["compare", str(recorded), str(recorded), "--fail", "speed:5%"]) == 2
    assert "unknown metric 'speed'" in capsys.readouterr().err


def test_the_console_script_is_installed_and_exits_with_the_verdict(recorded):
    script = Path(sys.executable).with_name("sdopt")
    completed = subprocess.run([str(script), "compare", str(recorded), str(recorded)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert "no regression" in completed.stdout


def test_the_help_shows_percentages_as_written(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "defaults its:5% vram:5% host:10% ssim:0.02" in out and "%%" not in out
