"""The README's Quick start is what CI runs, and its downstream example is the file examples/ ships
and the suite runs: neither may drift apart."""

import re
import shlex
from pathlib import Path

from tests.conftest import FAST

REPO = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_quick_start_is_two_commands_and_ci_runs_both():
    commands = quick_start_commands()
    assert len(commands) == 2
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for command in commands:
        assert command in ci, command
    assert "torch==2.13.0" in commands[0]  # the CPU build on disk, not a multi-GB CUDA download


def use_it_in_your_repo() -> tuple[str, list[list[str]]]:
    """The section's python block, and its bash block's commands (comments dropped)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Use it in your repo\n", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return python, [shlex.split(line, comments=True) for line in bash.splitlines() if line.strip()]


def test_the_downstream_example_is_the_file_the_suite_runs():
    python, _ = use_it_in_your_repo()
    assert python == (REPO / "examples" / "test_optimizations_hold.py").read_text(encoding="utf-8")


def test_the_downstream_example_records_then_passes_as_the_readme_says(pytester):
    python, commands = use_it_in_your_repo()
    record, check = commands[:2]
    assert record == ["pytest", "-p", "pytest_sdopt", "--sdopt-update-baselines"]
    assert check == ["pytest", "-p", "pytest_sdopt"]
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_sd_optimizations.py").write_text(python, encoding="utf-8")
    quiet = ("-W", "ignore::pytest.PytestAssertRewriteWarning", "-p", "no:cacheprovider")
    recorded = pytester.runpytest(*record[1:], *quiet, *FAST)
    recorded.assert_outcomes(passed=4)
    assert sorted(path.stem for path in (pytester.path / "baselines").rglob("*.png")) == [
        "fp16", "fp16+tome", "fp16+vae_tiling", "fp32"]
    # Checked against what was just recorded, every gate the example sets holds on CPU.
    checked = pytester.runpytest(*check[1:], *quiet, *FAST)
    checked.assert_outcomes(passed=4)
    checked.stdout.fnmatch_lines(["test_optimizations_hold?fp16+vae_tiling? * fp16+vae_tiling * cpu * pass*"])
