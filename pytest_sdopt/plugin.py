"""pytest hooks only: each hands off to the plain objects in the other modules.

Loaded by `pytest -p pytest_sdopt` or the pytest11 entry point (both under the name
`pytest_sdopt`, so it is never registered twice). Importing it does not import torch.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from pytest_sdopt.errors import SdoptUsageError
from pytest_sdopt.session import SdoptSession
from pytest_sdopt.settings import MARKER_KEYWORDS, SessionSettings, add_options

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
    return f"sdopt: model={values['model']} device={values['device']}"


@pytest.fixture
def sdopt(request: pytest.FixtureRequest) -> Iterator["Sdopt"]:  # noqa: F821
    """Seeded Stable Diffusion pipelines with any optimization stack: sdopt.pipeline(stack), sdopt.run(stack)."""
    from pytest_sdopt.fixture import Sdopt

    fixture = Sdopt(request.config.stash[SESSION_KEY], request.node)
    yield fixture
    fixture.close()
