"""MkDocs hooks (mkdocs.yml `hooks:`): the reference tables are rendered from the code at build time.

Each page's `<!-- sdopt:NAME -->` markers are replaced by docs/tables.py. This checkout comes first
on sys.path, so the tables describe the package beside these docs, not another installed copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))

from mkdocs.exceptions import PluginError  # noqa: E402

from docs import tables  # noqa: E402


def on_page_markdown(markdown: str, page, config, files) -> str:
    try:
        return tables.render(markdown)
    except ValueError as exc:
        raise PluginError(f"docs/{page.file.src_uri}: {exc}") from None
