"""Results as plain data: one entry per run, and the versioned results document (`--sdopt-json`).

Everything after a run reads entries, never live objects: the terminal table, the JSON file,
the HTML report, junitxml properties, `sdopt compare`, and the merge of pytest-xdist workers
(a worker sends its entries to the controller as plain JSON-able data). The schema is
`results.schema.json` next to this module and is documented in docs/reports.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from pytest_sdopt.config.call_args import document
from pytest_sdopt.checks.similarity import run_suffix
from pytest_sdopt.core.files import atomic_write_text, safe_name

SCHEMA_VERSION = 3  # 3: the promise gates (min_speedup, max_memory_ratio); 2: the inconclusive verdict, run_host_bytes, the speed figure's intervals
READABLE_VERSIONS = (1, 2, 3)  # `sdopt compare` still reads files written before
SCHEMA_FILE = Path(__file__).resolve().parent / "results.schema.json"
FIGURES = ("its", "total_s", "peak_vram_bytes", "peak_vram_reserved_bytes", "peak_device_bytes", "peak_host_bytes")
# Optional in the schema: files written before they existed lack them.
TIMINGS = ("run_host_bytes", "reference_s", "warmup_s", "call_s")


class ResultsError(Exception):
    """A results file or folder that cannot be used; the message names it and why."""


def outcome_of(record: Any) -> str:
    if record.error is not None:
        return "failed"
    if record.skipped is not None:
        return "skipped"
    if record.checked is None:
        return "unchecked"
    return "failed" if record.checked.failed else "passed"


def image_file(record: Any, images_dir: Path) -> Path:
    """Where a run's image is kept for the reports: `<order>-<stack>[.runN].png` in `images_dir`."""
    stack = safe_name(record.stack.replace(":", "-"))
    return Path(images_dir) / f"{record.order:04d}-{stack}{run_suffix(record.run)}.png"


def save_image(record: Any, images_dir: Path) -> Path | None:
    """Save a run's image for the reports (None: the run has no image); the session's end does it once."""
    if record.result is None:
        return None
    path = image_file(record, images_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record.result.image.save(path, format="PNG")
    return path


def run_entry(record: Any, image: Path | None = None, reference_image: Path | None = None) -> dict[str, Any]:
    """One run as plain data, referring to its saved `image` (save_image) and the reference's stored one."""
    result = record.result
    entry: dict[str, Any] = {
        "nodeid": record.nodeid,
        "test": record.test,
        "stack": record.stack,
        "reference": record.reference,
        "in_matrix": record.in_matrix,
        "order": record.order,
        "run": record.run,
        "outcome": outcome_of(record),
        "skip_reason": record.skipped,
        "note": record.error or record.note,
        "device": result.device if result is not None else None,
        "scenario": None,
        "figures": None,
        "step_times_s": [],
        "env": {},
        "gates": [],
        "ssim": None,
        "image": None,
        "reference_image": None,
    }
    if result is None:
        return entry
    scenario = asdict(result.scenario)
    scenario["size"] = list(scenario["size"]) if scenario["size"] else None
    scenario["call_args"] = document(result.scenario.call_args)
    figures = {name: getattr(result, name) for name in FIGURES + TIMINGS}
    figures.update(result.speed.fields())  # the speed figure every verdict reads, with its intervals
    figures["settled_s"] = result.settled.seconds
    entry.update(scenario=scenario, figures=figures,
                 step_times_s=result.step_times_s, env=dict(result.env))
    if record.checked is not None:
        entry["ssim"] = record.checked.ssim
        entry["gates"] = [{"gate": o.gate, "status": o.status.value, "measured": o.measured, "limit": o.limit,
                           "detail": o.detail, "value": o.value, "artifacts": dict(o.artifacts)}
                          for o in record.checked.outcomes]
    if image is not None:
        entry["image"] = str(image)
    if reference_image is not None and Path(reference_image).is_file():
        entry["reference_image"] = str(reference_image)
    return entry


def results_document(entries: Iterable[dict[str, Any]], version: str) -> dict[str, Any]:
    runs = sorted(entries, key=lambda entry: (entry["order"], entry["nodeid"], entry["stack"], entry.get("run", 1)))
    return {"schema_version": SCHEMA_VERSION, "tool": "pytest-sdopt", "tool_version": version,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": runs}


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write atomically, with image paths relative to the file's folder (the folder can move)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    runs = []
    for entry in document["runs"]:
        entry = dict(entry)
        for key in ("image", "reference_image"):
            if entry.get(key):
                entry[key] = _relative(Path(entry[key]), base)
        runs.append(entry)
    text = json.dumps({**document, "runs": runs}, indent=2) + "\n"
    atomic_write_text(path, text)


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), base)).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


def load_results(location: str | Path) -> tuple[dict[str, Any], Path]:
    """A results document from a JSON file, or from a folder holding exactly one; with its folder.

    Image paths in the returned document are absolute. Raises ResultsError for anything unusable.
    """
    path = Path(location)
    if path.is_dir():
        candidates = sorted(p for p in path.glob("*.json") if _looks_like_results(p))
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise ResultsError(f"{path} must hold exactly one pytest-sdopt results file (*.json written by "
                               f"--sdopt-json); found {found}.")
        path = candidates[0]
    if not path.is_file():
        raise ResultsError(f"{path} does not exist: give a results file written by --sdopt-json, or its folder.")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResultsError(f"{path} cannot be read as JSON ({exc}).") from None
    if not isinstance(document, dict) or document.get("tool") != "pytest-sdopt":
        raise ResultsError(f"{path} is not a pytest-sdopt results file (no \"tool\": \"pytest-sdopt\").")
    if document.get("schema_version") not in READABLE_VERSIONS:
        raise ResultsError(f"{path} has results schema version {document.get('schema_version')!r}; this "
                           f"pytest-sdopt reads versions {', '.join(map(str, READABLE_VERSIONS))}. Compare files written by the same "
                           f"major version, or re-run the older side.")
    errors = schema_errors(document)
    if errors:
        raise ResultsError(f"{path} does not match the results schema: {errors[0]}")
    base = path.parent.resolve()
    for entry in document["runs"]:
        for key in ("image", "reference_image"):
            if entry.get(key):
                entry[key] = str((base / entry[key]).resolve())
    return document, path


def _looks_like_results(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            return '"pytest-sdopt"' in handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return False


def schema_errors(document: Any) -> list[str]:
    """Where `document` breaks the published schema (jsonschema, when installed; else the basics)."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    try:
        import jsonschema
    except ImportError:  # the schema's top level still guards against the worst
        runs = document.get("runs") if isinstance(document, dict) else None
        return [] if isinstance(runs, list) and all(isinstance(run, dict) for run in runs) else ["runs is not a list"]
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
            for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))]
