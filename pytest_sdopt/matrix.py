"""The built-in matrix: `--sdopt-matrix[=LIST]` collects one gated test per stack, with no test file.

Each test runs its stack on the session's scenario and checks it with the gates set on the
command line or in ini (and each stack's default min_ssim). The tests hang under one collector,
`sdopt-matrix`, so they read `sdopt-matrix::fp16` in reports and `-k`, `--deselect` and
`--collect-only` treat them like any other test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_sdopt.config.settings import ALL
from pytest_sdopt.harness.session import SdoptSession

MATRIX = "sdopt-matrix"


class MatrixCollector(pytest.Collector):
    def __init__(self, *, sdopt_session: SdoptSession, stacks: tuple[str, ...], **kwargs: Any):
        super().__init__(**kwargs)
        self.sdopt_session = sdopt_session
        self.stacks = stacks

    def collect(self) -> list["MatrixItem"]:
        return [MatrixItem.from_parent(self, name=stack, stack=stack) for stack in self.stacks]


class MatrixItem(pytest.Item):
    def __init__(self, *, stack: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.stack = stack

    def runtest(self) -> None:
        from pytest_sdopt.fixture import Sdopt

        sdopt = Sdopt(self.parent.sdopt_session, self, in_matrix=True)
        try:
            sdopt.check(sdopt.run(self.stack))
        finally:
            sdopt.close()

    def reportinfo(self) -> tuple[Path, int, str]:
        # A line number is required for skips reported at the test: "sdopt-matrix:1: <reason>".
        return self.path, 0, self.nodeid


def matrix_items(session: pytest.Session, sdopt_session: SdoptSession) -> list[MatrixItem]:
    stacks = sdopt_session.settings.matrix
    if not stacks:
        return []
    if stacks == (ALL,):  # every registered optimization, those a plugin registered included
        from pytest_sdopt.stacks import REGISTRY

        stacks = tuple(REGISTRY)
    collector = MatrixCollector.from_parent(session, name=MATRIX, nodeid=MATRIX,
                                            path=Path(session.config.rootpath) / MATRIX,
                                            sdopt_session=sdopt_session, stacks=tuple(stacks))
    items = collector.collect()
    # Reported like any collected node, so "collected N items" and collection hooks count them.
    session.ihook.pytest_collectreport(report=pytest.CollectReport(MATRIX, "passed", None, list(items)))
    return items
