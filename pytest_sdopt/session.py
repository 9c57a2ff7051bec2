"""State shared by every sdopt test of a pytest session: settings, resolved models, environments."""

from __future__ import annotations

from typing import Any

from pytest_sdopt.environment import describe
from pytest_sdopt.errors import SdoptUsageError
from pytest_sdopt.models import ModelSource, resolve_model
from pytest_sdopt.settings import SessionSettings


class SdoptSession:
    """Created at pytest_configure, kept in config.stash; plain object, testable without pytest."""

    def __init__(self, settings: SessionSettings):
        self.settings = settings
        self._models: dict[str, ModelSource | SdoptUsageError] = {}
        self._environments: dict[str, dict[str, Any]] = {}

    def model(self, name: str) -> ModelSource:
        """Resolve a model name once per session (a bad name fails every test that uses it)."""
        if name not in self._models:
            try:
                self._models[name] = resolve_model(name)
            except SdoptUsageError as exc:
                self._models[name] = exc
        found = self._models[name]
        if isinstance(found, SdoptUsageError):
            raise found
        return found

    def environment(self, device: Any) -> dict[str, Any]:
        key = str(device)
        if key not in self._environments:
            self._environments[key] = describe(device)
        return dict(self._environments[key])
