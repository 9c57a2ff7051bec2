"""State shared by every sdopt test of a pytest session: settings, resolved models, environments,
the baseline store, and the record of every run for the end-of-session table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_sdopt.checks.baselines import BaselineStore
from pytest_sdopt.measure.environment import describe
from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.models.sources import ModelSource, resolve_model
from pytest_sdopt.config.settings import SessionSettings
from pytest_sdopt.results.report import run_entry, save_image
from pytest_sdopt.results.summary import RunRecord


_PRIMED: set[tuple[str, ...]] = set()  # (model, device) primed in this process (runner.prime)


class SdoptSession:
    """Created at pytest_configure, kept in config.stash; plain object, testable without pytest."""

    def __init__(self, settings: SessionSettings):
        self.settings = settings
        self.results_dir = Path(settings.results_dir)
        self.store = BaselineStore(Path(settings.baseline_dir), lock_dir=self.results_dir / ".locks")
        self.records: list[RunRecord] = []
        self.worker_entries: list[dict[str, Any]] = []  # what pytest-xdist workers sent (controller only)
        self._entries: list[dict[str, Any]] | None = None
        self._images: dict[int, Path] = {}  # id(RunRecord) -> its saved image (finish())
        self.promise_references: dict[Any, Any] = {}  # (reference, scenario) -> its RunResult (promise gates)
        self.references_recorded: set[Any] = set()  # (stack, scenario) recorded under --sdopt-update-baselines
        self.writes: list[Any] = []  # baselines.BaselineWrite: every file --sdopt-update-baselines wrote
        self.worker_writes: list[dict[str, Any]] = []  # what pytest-xdist workers wrote (controller only)
        self._models: dict[str, ModelSource | SdoptUsageError] = {}
        self._environments: dict[str, dict[str, Any]] = {}

    def model(self, name: str) -> ModelSource:
        """Resolve a model name once per session (a bad name fails every test that uses it)."""
        if name not in self._models:
            try:
                self._models[name] = resolve_model(name, cache=self.results_dir / "models")
            except SdoptUsageError as exc:
                self._models[name] = exc
        found = self._models[name]
        if isinstance(found, SdoptUsageError):
            raise found
        return found

    def prime(self, source: ModelSource, device: Any) -> None:
        """runner.prime, once per model and device in this process (its one-time costs are the process's)."""
        key = (source.kind, source.name, str(source.folder), str(device))
        if key in _PRIMED:
            return
        _PRIMED.add(key)
        from pytest_sdopt.stacks import parse_stack
        from pytest_sdopt.measure.runner import prime

        prime(source.load, parse_stack(self.settings.reference), device)

    def environment(self, device: Any) -> dict[str, Any]:
        key = str(device)
        if key not in self._environments:
            self._environments[key] = describe(device)
        return dict(self._environments[key])

    def record(self, record: RunRecord) -> RunRecord:
        self.records.append(record)
        return record

    @property
    def images_dir(self) -> Path | None:
        """Where each run's image is kept for the JSON and HTML reports (None when neither is asked for)."""
        json_path, html_path = self.settings.json, self.settings.html
        if json_path:
            return Path(json_path).with_name(Path(json_path).stem + "-images")
        return self.results_dir / "report-images" if html_path else None

    def finish(self) -> None:
        """At the session's end: save each run's image where the JSON and HTML reports refer to it
        (only when one is asked for); entries() then refers to them."""
        images_dir = self.images_dir
        if images_dir is None:
            return
        for record in self.records:
            if id(record) not in self._images:
                path = save_image(record, images_dir)
                if path is not None:
                    self._images[id(record)] = path
        self._entries = None  # made again, with the images

    def entries(self) -> list[dict[str, Any]]:
        """Every run of the session as plain data: this process's, then its workers'. Made once (again
        after finish()); reading them writes nothing."""
        if self._entries is None:
            own = []
            for record in self.records:
                reference = None
                if record.result is not None:
                    reference = self.store.image_path(record.result.scenario, record.reference)
                own.append(run_entry(record, self._images.get(id(record)), reference))
            self._entries = sorted(own + self.worker_entries, key=lambda e: (e["order"], e["nodeid"]))
        return self._entries

    def all_writes(self) -> list[Any]:
        """This process's baseline writes, then its workers' (as BaselineWrite)."""
        from pytest_sdopt.checks.baselines import BaselineWrite

        return [*self.writes, *(BaselineWrite(**write) for write in self.worker_writes)]

    def record_check(self, checked: Any) -> None:
        """Attach a check to the record of the run it checked."""
        for record in reversed(self.records):
            if record.result is checked.result:
                record.checked = checked
                record.reference = checked.limits.reference
                return
