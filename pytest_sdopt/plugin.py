"""pytest hooks only: each hands off to the plain objects in the other modules.

Loaded by `pytest -p pytest_sdopt` or the pytest11 entry point (both under the name
`pytest_sdopt`, so it is never registered twice). pytest loads it in every session of a repo
where it is installed, so the import stays small (settings and option parsing only, no torch):
the session object and everything behind it are created by the first hook that needs them.
Measured by benchmarks/import_cost.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.config.settings import MARKER_KEYWORDS, SessionSettings, add_options

if TYPE_CHECKING:
    from pytest_sdopt.harness.session import SdoptSession

SETTINGS_KEY = pytest.StashKey[SessionSettings]()
SESSION_KEY = pytest.StashKey["SdoptSession"]()


def sdopt_session(config: pytest.Config) -> "SdoptSession":
    """The session's SdoptSession, made on first use (a session with no sdopt tests never makes one)."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        from pytest_sdopt.harness.session import SdoptSession

        session = config.stash[SESSION_KEY] = SdoptSession(config.stash[SETTINGS_KEY])
    return session


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_sdopt import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"sdopt({', '.join(k + '=...' for k in MARKER_KEYWORDS)}): per-test pytest-sdopt settings.",
    )
    try:
        _register_optimizations(config)
        settings = SessionSettings.from_config(config, stack_name=_stack_name)
    except SdoptUsageError as exc:
        raise pytest.UsageError(f"pytest-sdopt: {exc}") from None
    config.stash[SETTINGS_KEY] = settings
    # The session's very end: after pytest's own last collections, which the freeze keeps short.
    config.add_cleanup(_unfreeze)


def _register_optimizations(config: pytest.Config) -> None:
    """What plugins and conftests declare through pytest_sdopt_register_optimizations (hookspecs.py).

    A historic hook: the plugins and initial conftests loaded by now answer at once, before the
    settings that name stacks are read; a conftest loaded later (deeper in the tree, during
    collection) answers as it is loaded. What they add is removed when the session ends, so an
    in-process session (pytester) never inherits another's optimizations."""
    added: list[str] = []

    def register_answer(specs: Any) -> None:
        if not specs:
            return
        from pytest_sdopt.stacks import register

        added.extend(register(list(specs), "pytest_sdopt_register_optimizations"))

    def unregister_all() -> None:
        if added:
            from pytest_sdopt.stacks import unregister

            unregister(added)

    config.add_cleanup(unregister_all)
    config.hook.pytest_sdopt_register_optimizations.call_historic(result_callback=register_answer,
                                                                  kwargs={"config": config})


def _stack_name(text: str) -> str:
    """A stack's canonical name, for the settings that name stacks (imported only when one is given)."""
    from pytest_sdopt.stacks import parse_stack

    return parse_stack(text).name


def pytest_report_header(config: pytest.Config) -> str | None:
    values = config.stash.get(SETTINGS_KEY, None)
    if values is None:
        return None
    header = f"sdopt: model={values.model} device={values.device} baselines={_shown(config, values.baseline_dir)}"
    mode = values.update_baselines
    return header + (f" (updating: {mode})" if mode else "")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`--sdopt-matrix` with no paths given runs the matrix alone, not the repo's whole test suite."""
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is not None and settings.matrix and config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return None


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, which then applies to the matrix too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is not None and settings.matrix:
        from pytest_sdopt.matrix import matrix_items

        items.extend(matrix_items(session, sdopt_session(config)))
    _warn_misspelled_markers(config, items)


def _warn_misspelled_markers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.sdpot(max_vram=...)` is a mark pytest knows nothing of: say which one was meant."""
    from pytest_sdopt.core.errors import SdoptWarning
    from pytest_sdopt.config.settings import misspelled_marker

    registered = [line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")]
    for item in items:
        name = misspelled_marker((mark.name for mark in item.iter_markers()), registered)
        if name is not None:
            item.warn(SdoptWarning(f"@pytest.mark.{name} is not @pytest.mark.sdopt: its keywords are ignored, so no "
                                   f"gate or setting of it applies to this test. Did you mean @pytest.mark.sdopt? "
                                   f"(--strict-markers makes an unknown mark an error)"))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without xdist, and that is fine
def pytest_testnodedown(node: object, error: object) -> None:
    """Controller: collect a worker's runs, so one table, one JSON and one report cover them all."""
    config = node.config  # type: ignore[attr-defined]
    output = getattr(node, "workeroutput", None) or {}
    if SETTINGS_KEY in config.stash and output.get("sdopt_entries"):
        sdopt_session(config).worker_entries.extend(output["sdopt_entries"])
    if SETTINGS_KEY in config.stash and output.get("sdopt_writes"):
        sdopt_session(config).worker_writes.extend(output["sdopt_writes"])


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        return
    if SESSION_KEY in config.stash:
        config.stash[SESSION_KEY].finish()  # the reports' images, where a report is asked for
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the runs to the controller, write no report
        if SESSION_KEY in config.stash:
            workeroutput["sdopt_entries"] = config.stash[SESSION_KEY].entries()
            workeroutput["sdopt_writes"] = [write.as_dict() for write in config.stash[SESSION_KEY].writes]
        return
    if SESSION_KEY not in config.stash and not (settings.json or settings.html):
        return  # no sdopt test ran and no report was asked for
    from pytest_sdopt.results.sinks import write_reports

    write_reports(sdopt_session(config), version=_version())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None or hasattr(config, "workerinput"):
        return
    entries = session.entries()
    writes = session.all_writes()
    if writes:
        _write_baseline_list(terminalreporter, config, writes, session.settings.update_baselines)
    if not entries:
        return
    from pytest_sdopt.results.summary import environment_line, render_table

    terminalreporter.write_sep("=", "sdopt")
    environment = environment_line(entries)
    if environment:
        terminalreporter.write_line(environment)
    for line in render_table(entries):
        terminalreporter.write_line(line)
    if any(gate["artifacts"] for entry in entries for gate in entry["gates"] if gate["status"] == "FAIL"):
        terminalreporter.write_line(f"images of failed comparisons: {_shown(config, session.results_dir)}")
    for name, path in (("json", session.settings.json), ("html", session.settings.html)):
        if path:
            terminalreporter.write_line(f"sdopt {name}: {_shown(config, path).rstrip('/')}")


def _write_baseline_list(terminalreporter: pytest.TerminalReporter, config: pytest.Config, writes: list,
                         mode: str | None) -> None:
    """Every file --sdopt-update-baselines wrote, so no baseline ever changes unseen."""
    from pytest_sdopt.config.parsers import shown

    terminalreporter.write_sep("=", f"sdopt baselines written (--sdopt-update-baselines={mode})")
    for write in writes:
        line = write.describe(shown(Path(write.path), config.invocation_params.dir))
        terminalreporter.write_line(("WARNING: " if write.suspicious else "") + line,
                                    yellow=write.suspicious, bold=write.suspicious)


def _unfreeze() -> None:
    """Nothing of the user's stays out of the cyclic collector's sight after the session (isolation.py)."""
    from pytest_sdopt.measure.isolation import unfreeze

    unfreeze()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pytest-sdopt")
    except metadata.PackageNotFoundError:
        return "unknown"


def _shown(config: pytest.Config, path: Path) -> str:
    from pytest_sdopt.config.parsers import shown

    return shown(path, config.invocation_params.dir) + "/"


@pytest.fixture
def sdopt(request: pytest.FixtureRequest) -> Iterator["Sdopt"]:  # noqa: F821
    """Seeded Stable Diffusion pipelines with any optimization stack: sdopt.pipeline(stack), sdopt.run(stack),
    sdopt.check(result, **gates), sdopt.baseline(stack)."""
    from pytest_sdopt.fixture import Sdopt

    fixture = Sdopt(sdopt_session(request.config), request.node, request=request)
    yield fixture
    fixture.close()
