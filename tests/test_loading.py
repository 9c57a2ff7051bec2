"""How the plugin is loaded: -p and autoload, never twice, and never importing torch up front."""

import json
import subprocess
import sys

import pytest


def test_importing_the_plugin_imports_neither_torch_nor_diffusers():
    code = "import sys, pytest_sdopt, pytest_sdopt.plugin; print(sorted(m for m in ('torch', 'diffusers', " \
           "'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("autoload", [True, False])
def test_dash_p_registers_the_options_once_with_or_without_autoload(pytester, monkeypatch, autoload):
    if autoload:
        monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    else:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess("-p", "pytest_sdopt", "--help")
    assert result.ret == 0
    help_text = result.stdout.str()
    assert help_text.count("--sdopt-model=MODEL") == 1
    assert help_text.count("sdopt_model ") == 1  # the ini key


def test_autoload_alone_loads_it_and_disabling_autoload_leaves_it_out(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    assert "--sdopt-model" in pytester.runpytest_subprocess("--help").stdout.str()
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "--sdopt-model" not in pytester.runpytest_subprocess("--help").stdout.str()


# What a repo with the plugin installed pays in every session: the hooks, the settings table
# and option parsing. The rest is imported by the first hook that needs it.
LOADED_UP_FRONT = ["pytest_sdopt", "pytest_sdopt.config", "pytest_sdopt.config.defaults", "pytest_sdopt.config.parsers",
                   "pytest_sdopt.config.settings", "pytest_sdopt.core", "pytest_sdopt.core.errors",
                   "pytest_sdopt.hookspecs", "pytest_sdopt.plugin"]


@pytest.mark.parametrize("report", [(), ("--sdopt-json", "results.json")])
def test_a_session_without_sdopt_tests_imports_only_the_plugins_front(pytester, report):
    pytester.makeconftest("""
        import sys

        def pytest_unconfigure(config):
            with open("imported.txt", "w") as out:
                out.write(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers",
                                                                                        "pytest_sdopt"))))
    """)
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest_subprocess("-p", "pytest_sdopt", *report)
    result.assert_outcomes(passed=1)
    imported = (pytester.path / "imported.txt").read_text().split()
    assert not [name for name in imported if name.split(".")[0] in ("torch", "diffusers")]
    if report:  # asked for a report: it is written (empty), which needs the report modules but still no torch
        assert json.loads((pytester.path / "results.json").read_text())["runs"] == []
    else:
        assert imported == LOADED_UP_FRONT
    result.stdout.fnmatch_lines(["sdopt: model=tiny device=auto baselines=baselines/"])  # the report header
