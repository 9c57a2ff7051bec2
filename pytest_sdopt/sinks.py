"""Where a finished session's runs go besides the terminal: the results JSON and the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_sdopt.report import results_document, write_results


def write_reports(session: Any, version: str) -> None:
    entries = session.entries()
    if session.settings["json"]:
        write_results(Path(session.settings["json"]), results_document(entries, version))
    if session.settings["html"]:
        from pytest_sdopt.html_report import session_page

        path = Path(session.settings["html"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(session_page(entries, version), encoding="utf-8")
