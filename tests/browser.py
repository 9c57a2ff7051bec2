"""A headless chromium for the tests that look at rendered pages (the docs site; the HTML report's
test in test_report.py does the same inline): found on PATH, else the test skips saying why."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Headless, offline and quiet: no sandbox (containers, root), no GPU, no first-run or background
# traffic, and a fresh profile per call (tmp_dir), so no state leaks between runs.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def browser() -> str:
    """The browser's path, or skip the test with the reason and the fix."""
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip("no headless browser here: .ci/run installs Debian's chromium (apt-get install chromium)")
    return found


def _run(url: str, tmp_dir: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_dir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run([browser(), *FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=120, check=True)


def screenshot(url: str, shot: Path, size: tuple[int, int] = (1280, 1600)) -> Path:
    """A PNG of `url` at `size` (width, height)."""
    _run(url, shot.parent, f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}")
    return shot


def dom(url: str, tmp_dir: Path) -> str:
    """The page's DOM after its scripts ran (chromium's --dump-dom)."""
    return _run(url, tmp_dir, "--dump-dom").stdout
