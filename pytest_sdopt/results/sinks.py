"""Where a finished session's runs go besides the terminal: the results JSON and the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_sdopt.core.files import atomic_write_text
from pytest_sdopt.results.report import results_document, write_results


def write_reports(session: Any, version: str) -> None:
    entries = session.entries()
    if session.settings.json:
        write_results(Path(session.settings.json), results_document(entries, version))
    if session.settings.html:
        from pytest_sdopt.results.html_report import session_page

        path = Path(session.settings.html)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, session_page(entries, version))
