"""pytest hooks only: each hands off to the plain objects in the other modules.

Loaded by `pytest -p pytest_sdopt` or the pytest11 entry point (both under the name
`pytest_sdopt`, so it is never registered twice). Importing it does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from pytest_sdopt.errors import SdoptUsageError
from pytest_sdopt.session import SdoptSession
from pytest_sdopt.settings import MARKER_KEYWORDS, SessionSettings, add_options
from pytest_sdopt.summary import environment_line, render_table

SESSION_KEY = pytest.StashKey[SdoptSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"sdopt({', '.join(k + '=...' for k in MARKER_KEYWORDS)}): per-test pytest-sdopt settings.",
    )
    try:
        settings = SessionSettings.from_config(config)
    except SdoptUsageError as exc:
        raise pytest.UsageError(f"pytest-sdopt: {exc}") from None
    config.stash[SESSION_KEY] = SdoptSession(settings)


def pytest_report_header(config: pytest.Config) -> str | None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return None
    values = session.settings
    header = f"sdopt: model={values['model']} device={values['device']} baselines={_shown(config, session.store.root)}"
    return header + (" (updating)" if values["update-baselines"] else "")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`--sdopt-matrix` with no paths given runs the matrix alone, not the repo's whole test suite."""
    session = config.stash.get(SESSION_KEY, None)
    if session is not None and session.settings["matrix"] and config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return None


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, which then applies to the matrix too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    sdopt_session = config.stash.get(SESSION_KEY, None)
    if sdopt_session is not None and sdopt_session.settings["matrix"]:
        from pytest_sdopt.matrix import matrix_items

        items.extend(matrix_items(session, sdopt_session))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without xdist, and that is fine
def pytest_testnodedown(node: object, error: object) -> None:
    """Controller: collect a worker's runs, so one table, one JSON and one report cover them all."""
    session = node.config.stash.get(SESSION_KEY, None)  # type: ignore[attr-defined]
    output = getattr(node, "workeroutput", None) or {}
    if session is not None and output.get("sdopt_entries"):
        session.worker_entries.extend(output["sdopt_entries"])


def pytest_sessionfinish(session: pytest.Session) -> None:
    sdopt_session = session.config.stash.get(SESSION_KEY, None)
    if sdopt_session is None:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the runs to the controller, write nothing
        workeroutput["sdopt_entries"] = sdopt_session.entries()
        return
    from pytest_sdopt.sinks import write_reports

    write_reports(sdopt_session, version=_version())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None or hasattr(config, "workerinput"):
        return
    entries = session.entries()
    if not entries:
        return
    terminalreporter.write_sep("=", "sdopt")
    environment = environment_line(entries)
    if environment:
        terminalreporter.write_line(environment)
    for line in render_table(entries):
        terminalreporter.write_line(line)
    if any(gate["artifacts"] for entry in entries for gate in entry["gates"] if gate["status"] == "FAIL"):
        terminalreporter.write_line(f"images of failed comparisons: {_shown(config, session.results_dir)}")
    for name in ("json", "html"):
        if session.settings[name]:
            terminalreporter.write_line(f"sdopt {name}: {_shown(config, session.settings[name]).rstrip('/')}")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pytest-sdopt")
    except metadata.PackageNotFoundError:
        return "unknown"


def _shown(config: pytest.Config, path: Path) -> str:
    from pytest_sdopt.checking import shown

    return shown(path, config.invocation_params.dir) + "/"


@pytest.fixture
def sdopt(request: pytest.FixtureRequest) -> Iterator["Sdopt"]:  # noqa: F821
    """Seeded Stable Diffusion pipelines with any optimization stack: sdopt.pipeline(stack), sdopt.run(stack),
    sdopt.check(result, **gates), sdopt.baseline(stack)."""
    from pytest_sdopt.fixture import Sdopt

    fixture = Sdopt(request.config.stash[SESSION_KEY], request.node, request=request)
    yield fixture
    fixture.close()
