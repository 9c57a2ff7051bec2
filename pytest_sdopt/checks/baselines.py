"""The baseline store: each stack's image and metrics, per model and scenario, on disk.

Layout (DESIGN §4), under the baseline dir:

    <model>/<scenario>/scenario.json     the scenario in full (the folder name abbreviates the prompt)
    <model>/<scenario>/<stack>.png       the stack's image (lossless)
    <model>/<scenario>/<stack>.json      the stack's metrics, one entry per device fingerprint

Images are shared by every device (the initial latents come from a seeded CPU generator);
speed and memory are not, so metrics are kept per fingerprint (device name, torch, diffusers).
Every write goes to a temporary file in the same folder and is renamed over the old one, so a
reader never sees half a file; metric updates are read-modify-write under a file lock, so
pytest-xdist workers recording different devices do not lose each other's entries. Only
`record` writes, and only `--sdopt-update-baselines` calls it; it returns a `BaselineWrite`
per file, which the session lists at its end (a replaced image with its SSIM to the old one).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.core.files import atomic_write, safe_name
from pytest_sdopt.config.call_args import document, key_part
from pytest_sdopt.config.defaults import NAMED_MODELS, TEXT_TO_IMAGE
from pytest_sdopt.config.scenario import Scenario

SCHEMA = 1
# Besides these, each entry keeps the run's speed figure with its interval (speed.SpeedFigure.fields).
METRIC_FIELDS = ("its", "total_s", "peak_vram_bytes", "peak_vram_reserved_bytes", "peak_device_bytes", "peak_host_bytes",
                 "run_host_bytes")


def model_label(model: str) -> str:
    """How stored files name a model: a folder by its own name (not a path that differs per machine),
    anything else as given."""
    path = Path(model).expanduser()
    if model not in NAMED_MODELS and path.exists():
        return path.resolve().name
    return model


def model_key(model: str) -> str:
    """A folder name for a model: hub ids keep org and name (`org--name`), folders their own name."""
    return safe_name(model_label(model).replace("/", "--"))


def scenario_key(scenario: Scenario) -> str:
    """`128x128-10steps-seed1-cfg7.5-p1a2b3c4d`: everything that decides the image except the device;
    with the pipeline's own call arguments, `-a<hash of them>` after it (config/call_args.py)."""
    prompt = hashlib.sha256(scenario.prompt.encode("utf-8")).hexdigest()[:9]
    task = "" if scenario.task == TEXT_TO_IMAGE else f"{scenario.task}-"
    return (f"{task}{scenario.size_text}-{scenario.steps}steps-seed{scenario.seed}-cfg{scenario.guidance:g}-p{prompt}"
            f"{key_part(scenario.call_args)}")


def stack_key(stack: str) -> str:
    return safe_name(stack.replace(":", "-"))  # tome:0.3 -> tome-0.3 (':' is not portable)


def fingerprint(env: dict[str, Any]) -> str:
    """What a stored speed or memory figure is comparable with: the same device, torch and diffusers.
    The CPU thread count is not part of it: memory does not depend on it, and max_its_drop says
    when a speed was stored with another count (each entry keeps its `cpu_threads`)."""
    device = env.get("device_name") or "unknown device"
    return f"{device} | torch {env.get('torch')} | diffusers {env.get('diffusers')}"


@dataclass
class Baseline:
    """What `sdopt.baseline(stack)` returns: the stored image and metrics (None where nothing is stored)."""

    stack: str
    image_path: Path
    image: Any  # a PIL image
    metrics: dict[str, Any] | None  # this device's (same fingerprint)
    all_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # every fingerprint's

    @property
    def exists(self) -> bool:
        return self.image is not None


class BaselineStore:
    def __init__(self, root: Path, lock_dir: Path):
        self.root = Path(root)
        self.lock_dir = Path(lock_dir)  # outside the baseline dir: lock files must not end up committed

    def folder(self, scenario: Scenario) -> Path:
        return self.root / model_key(scenario.model) / scenario_key(scenario)

    def image_path(self, scenario: Scenario, stack: str) -> Path:
        return self.folder(scenario) / f"{stack_key(stack)}.png"

    def metrics_path(self, scenario: Scenario, stack: str) -> Path:
        return self.folder(scenario) / f"{stack_key(stack)}.json"

    # -- reading --------------------------------------------------------------------------

    def read_image(self, scenario: Scenario, stack: str) -> Any:
        """The stored image as RGB (a PIL image), or None when none is stored."""
        from PIL import Image

        path = self.image_path(scenario, stack)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as image:
                image.load()  # a truncated file fails here, not later inside SSIM
                mode = image.mode
                rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise BaselineError(f"the baseline image {path} cannot be read ({exc}). Restore it from version control, "
                                f"or record it again with --sdopt-update-baselines.") from None
        if mode != "RGB":  # sdopt writes RGB only: anything else was put there by hand
            raise BaselineError(f"the baseline image {path} is in mode {mode!r}, not RGB, so it was not written by "
                                f"pytest-sdopt. Restore it from version control, or record it again with "
                                f"--sdopt-update-baselines.")
        return rgb

    def read_metrics(self, scenario: Scenario, stack: str) -> dict[str, dict[str, Any]]:
        """Every fingerprint's metrics for the stack; {} when none are stored."""
        path = self.metrics_path(scenario, stack)
        if not path.is_file():
            return {}
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BaselineError(f"the stored metrics {path} cannot be read ({exc}). Restore the file from version "
                                f"control, or delete it and record it again with --sdopt-update-baselines.") from None
        if not isinstance(document, dict) or document.get("schema") != SCHEMA:
            raise BaselineError(f"the stored metrics {path} are not in schema {SCHEMA} (found "
                                f"{document.get('schema') if isinstance(document, dict) else document!r}). "
                                f"Record them again with --sdopt-update-baselines.")
        return dict(document.get("metrics", {}))

    def baseline(self, scenario: Scenario, stack: str, env: dict[str, Any]) -> Baseline:
        every = self.read_metrics(scenario, stack)
        return Baseline(stack, self.image_path(scenario, stack), self.read_image(scenario, stack),
                        every.get(fingerprint(env)), every)

    # -- writing (only under --sdopt-update-baselines) ---------------------------------------

    def record(self, result: Any, image: bool = True, metrics: bool = True,
               tolerance: float | None = None) -> list["BaselineWrite"]:
        """Store the run's image and/or its metrics under its device's fingerprint. Returns what was
        written, with the SSIM of a replaced image to the old one (`tolerance`: the stack's own
        min_ssim, below which a replacement is flagged). A folder that cannot be written is a
        BaselineError naming it, not the temporary file's traceback."""
        folder = self.folder(result.scenario)
        try:
            return self._record(result, folder, image, metrics, tolerance)
        except PermissionError as exc:
            where = Path(exc.filename).parent if exc.filename else folder
            raise BaselineError(f"cannot write baselines into {str(where)!r}: permission denied. Make that folder "
                                f"writable (it may have been checked out or copied read-only), or point "
                                f"--sdopt-baseline-dir at a writable copy.") from None
        except OSError as exc:
            raise BaselineError(f"cannot write baselines into {str(folder)!r}: {exc.strerror or exc}.") from None

    def _record(self, result: Any, folder: Path, image: bool, metrics: bool,
                tolerance: float | None) -> list["BaselineWrite"]:
        from filelock import FileLock

        scenario = result.scenario
        folder.mkdir(parents=True, exist_ok=True)
        writes = []
        atomic_write(folder / "scenario.json", _json_bytes(_scenario_document(scenario)))
        if image:
            path = self.image_path(scenario, result.stack)
            old = self._old_image(scenario, result.stack)
            ssim = None
            if old is not None:
                from pytest_sdopt.checks.similarity import ImageSizeMismatch, compare

                try:
                    ssim = compare(result.image, old).ssim
                except ImageSizeMismatch:
                    ssim = 0.0  # another size: nothing alike
            atomic_write(path, lambda handle: result.image.convert("RGB").save(handle, format="PNG"))
            writes.append(BaselineWrite(str(path), result.stack, replaced=old is not None, ssim_to_old=ssim,
                                        tolerance=tolerance))
        if metrics:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            lock_name = hashlib.sha256(str(self.metrics_path(scenario, result.stack)).encode()).hexdigest()[:16]
            with FileLock(self.lock_dir / f"{lock_name}.lock", timeout=120):
                every = self.read_metrics(scenario, result.stack)
                key = fingerprint(result.env)
                replaced = key in every
                every[key] = _metrics_entry(result)
                document = {"schema": SCHEMA, "stack": result.stack, "model": model_label(scenario.model),
                            "metrics": dict(sorted(every.items()))}
                atomic_write(self.metrics_path(scenario, result.stack), _json_bytes(document))
            speed = result.speed
            spread = speed.relative_spread if speed.relative_its is not None else speed.best_spread
            writes.append(BaselineWrite(str(self.metrics_path(scenario, result.stack)), result.stack, replaced=replaced,
                                        fingerprint=key, speed_spread=spread))
        return writes

    def _old_image(self, scenario: Scenario, stack: str) -> Any:
        try:
            return self.read_image(scenario, stack)
        except BaselineError:  # unreadable: replacing it is the repair
            return None


@dataclass(frozen=True)
class BaselineWrite:
    """One file --sdopt-update-baselines wrote, for the list at the end of the session."""

    path: str
    stack: str
    replaced: bool  # an earlier file (image) or this device's entry (metrics) was there
    ssim_to_old: float | None = None  # a replaced image: its SSIM to the new one
    tolerance: float | None = None  # the stack's own min_ssim: a replacement below it is flagged
    fingerprint: str | None = None  # metrics: whose entry
    speed_spread: float | None = None  # metrics: the recorded speed's 95% half-width, as a fraction

    @property
    def disturbed(self) -> bool:
        """Metrics recorded while the machine was disturbed: checks against them will be inconclusive."""
        return self.speed_spread is not None and self.speed_spread > DISTURBED_RECORDING_SPREAD

    @property
    def suspicious(self) -> bool:
        """A replaced image that differs from the old one by more than the stack's own tolerance, or
        a speed recorded on a disturbed machine."""
        return self.disturbed or (self.replaced and self.ssim_to_old is not None and self.tolerance is not None
                                  and self.ssim_to_old + 1e-9 < self.tolerance)

    def describe(self, shown_path: str) -> str:
        verb = "replaced" if self.replaced else "new"
        if self.fingerprint is not None:
            text = f"{verb} {shown_path} ({self.fingerprint})"
            if self.disturbed:
                text += (f": its speed was recorded on a disturbed machine (its runs disagree by "
                         f"±{min(self.speed_spread, 9.99):.0%}), so checks against it will be inconclusive; record "  # type: ignore[type-var]
                         f"again on a quieter machine, or with --sdopt-settle 60")
            return text
        if self.ssim_to_old is None:
            return f"{verb} {shown_path}"
        text = f"{verb} {shown_path}: SSIM {self.ssim_to_old:.4f} to the old image"
        if self.suspicious:
            text += (f", below {self.stack}'s min_ssim {self.tolerance:g}: look at it before you commit it "
                     f"(git diff shows the old one)")
        return text

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for a pytest-xdist worker to hand to the controller."""
        return {"path": self.path, "stack": self.stack, "replaced": self.replaced, "ssim_to_old": self.ssim_to_old,
                "tolerance": self.tolerance, "fingerprint": self.fingerprint, "speed_spread": self.speed_spread}


# A recording whose runs disagree by more than this (the half-width of its speed's 95% interval)
# was made on a disturbed machine: the session's list of writes says so.
DISTURBED_RECORDING_SPREAD = 0.10


class BaselineError(SdoptUsageError):
    """A stored baseline exists but cannot be used; the message says how to repair it."""


def _scenario_document(scenario: Scenario) -> dict[str, Any]:
    return {"schema": SCHEMA, "model": model_label(scenario.model), "size": list(scenario.size) if scenario.size else None,
            "steps": scenario.steps, "seed": scenario.seed, "guidance": scenario.guidance, "prompt": scenario.prompt,
            **({"call_args": document(scenario.call_args)} if scenario.call_args else {}),
            **({"task": scenario.task} if scenario.task != TEXT_TO_IMAGE else {})}


def _metrics_entry(result: Any) -> dict[str, Any]:
    entry = {name: getattr(result, name) for name in METRIC_FIELDS}
    entry.update(result.speed.fields())
    entry["repeats"] = len(result.step_times_s)
    entry["device"] = result.device
    entry["env"] = result.env
    entry["recorded_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return entry


def _json_bytes(document: Any) -> Callable[[Any], None]:
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    return lambda handle: handle.write(text.encode("utf-8"))
