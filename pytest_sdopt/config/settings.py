"""Every sdopt setting in one table: its command-line option, ini key, marker keyword and parser.

Precedence (DESIGN §2): `sdopt.run()` / `sdopt.check()` keyword > `@pytest.mark.sdopt` >
command line > ini > default. `SessionSettings` resolves the command line and ini once per
session; `resolve_run` and `resolve_gates` layer the marker and keyword overrides on top.
A gate set to `None` (or "off" on the command line / in ini) is switched off at that layer.
Nothing here imports torch, and the module imports little else: pytest loads it in every
session of a repo that has the plugin installed, sdopt tests or not (benchmarks/import_cost.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from pytest_sdopt.config.defaults import REFERENCE, TASKS, TEXT_TO_IMAGE, anchor_model_path
from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.config.parsers import (parse_byte_size, parse_float, parse_fraction, parse_image_size, parse_int, parse_ssim)

if TYPE_CHECKING:
    from pytest_sdopt.config.scenario import GateLimits
    from pytest_sdopt.config.scenario import Measurement, Scenario

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SdoptUsageError(f"{what} must be a non-empty string, not {value!r}.")
    return value.strip()


def _task(value: object, what: str) -> str:
    text = _text(value, what).lower()
    if text not in TASKS:
        raise SdoptUsageError(f"{what} must be one of {', '.join(TASKS)}, not {value!r}.")
    return text


def _prompt(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise SdoptUsageError(f"{what} must be a string, not {value!r}.")
    return value


_DEVICE_FORM = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _device(value: object, what: str) -> str:
    """The device's form is checked here (a usage error at start-up); whether it exists, when a run asks."""
    text = _text(value, what)
    if not _DEVICE_FORM.fullmatch(text.lower()):
        raise SdoptUsageError(f"{what} {text!r} is not a device: use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps.")
    return text


def _size(value: object, what: str) -> tuple[int, int] | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "default")):
        return None
    return parse_image_size(value, what)


def _flag(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise SdoptUsageError(f"{what} must be true or false, not {value!r}.")


class _Off:
    """A gate switched off at some settings layer (None in a marker, "off" on the command line)."""

    def __repr__(self) -> str:
        return "off"


OFF = _Off()


def _switchable(parse: Callable[[object, str], Any]) -> Callable[[object, str], Any]:
    """A gate's parser that also accepts None (in a marker or keyword) or "off" to switch it off."""
    def parse_gate(value: object, what: str) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none")):
            return OFF
        return parse(value, what)

    return parse_gate


def _stack_text(value: object, what: str) -> str:
    """A stack's spelling; which names exist is the stacks layer's to say (the caller's `stack_name`)."""
    return _text(value, what)


ALL = "all"  # --sdopt-matrix's every registered optimization, expanded where the registry is known


def _matrix(value: object, what: str) -> tuple[str, ...] | None:
    """`all` (every registered optimization on its own) or a comma-separated list of stacks."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "off", "none")):
        return None
    if isinstance(value, str) and value.strip().lower() == ALL:
        return (ALL,)
    parts = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not parts or any(not str(part).strip() for part in parts):
        raise SdoptUsageError(f"{what} must be 'all' or stacks separated by commas, e.g. fp16,fp16+tome; "
                              f"not {value!r}.")
    return tuple(str(part).strip() for part in parts)


StackName = Callable[[str], str]  # a stack's spelling -> its canonical name, or SdoptUsageError


def _named_stacks(setting: "Setting", value: Any, what: str, stack_name: StackName | None) -> Any:
    """A stack-naming setting's value with each stack checked and canonical (`stack_name`, from the
    stacks layer); duplicates in the matrix dropped, since they would collect the same test twice."""
    if stack_name is None or not setting.names_stacks or value is None or value is OFF:
        return value

    def canonical(text: str) -> str:
        try:
            return stack_name(text)
        except SdoptUsageError as exc:
            raise SdoptUsageError(f"{what}: {exc}") from None

    if isinstance(value, tuple):
        return value if value == (ALL,) else tuple(dict.fromkeys(canonical(part) for part in value))
    return canonical(value)


UPDATE_MODES = {
    "checked": "record the stacks the selected tests check, and the reference only where it is missing",
    "all": "also run and re-record each scenario's reference stack",
    "missing": "record only what is absent: images and this device's metrics not stored yet",
}


def _update_mode(value: object, what: str) -> str | None:
    """--sdopt-update-baselines[=MODE]: a bare flag (or true) is `checked`; off / false: no update."""
    if value is None or value is False:
        return None
    if value is True:
        return "checked"
    text = str(value).strip().lower()
    if text in _FALSE:
        return None
    if text in _TRUE:
        return "checked"
    if text in UPDATE_MODES:
        return text
    modes = "; ".join(f"{name}: {meaning}" for name, meaning in UPDATE_MODES.items())
    if any(mark in text for mark in ("/", "::", ".py")) or Path(text).exists():
        raise SdoptUsageError(f"{what} takes an optional MODE, and took {value!r}, which looks like a test path: put "
                              f"the paths before the flag, or write it as --sdopt-update-baselines=checked. {modes}.")
    raise SdoptUsageError(f"{what} must be one of {', '.join(UPDATE_MODES)} (or a bare flag: checked), not "
                          f"{value!r}. {modes}.")


@dataclass(frozen=True)
class Setting:
    name: str  # --sdopt-NAME, ini sdopt_NAME, marker keyword NAME.replace("-", "_")
    help: str
    default: Any  # already parsed
    parse: Callable[[object, str], Any]
    kind: str = "scenario"  # scenario | measurement | gate | session (session: not in the marker)
    is_flag: bool = False
    is_path: bool = False  # command line: relative to the invocation dir; ini: to the ini file's dir
    metavar: str | None = None
    names_stacks: bool = False  # its value names stacks: checked against the registry by the caller

    @property
    def cli(self) -> str:
        return f"--sdopt-{self.name}"

    @property
    def ini(self) -> str:
        return f"sdopt_{self.name.replace('-', '_')}"

    @property
    def keyword(self) -> str:
        return self.name.replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("model", "tiny (embedded, default), tiny-xl, tiny-sd3 (embedded SDXL, SD3), sd15-random, sdxl-random, "
            "sd3-random, a diffusers folder, or a cached hub id",
            "tiny", _text, metavar="MODEL"),
    Setting("device", "auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps", "auto", _device,
            metavar="DEVICE"),
    Setting("prompt", "the prompt every run draws (default: the model's own, else an astronaut riding a horse)",
            None, _prompt, metavar="TEXT"),
    Setting("seed", "generator seed (default 1)", 1, lambda v, w: parse_int(v, w, 0), metavar="N"),
    Setting("size", "image size WxH, e.g. 512x512 (default: the model's)", None, _size, metavar="WxH"),
    Setting("steps", "denoising steps (default: the model's)", None, lambda v, w: parse_int(v, w, 1), metavar="N"),
    Setting("guidance", "classifier-free guidance scale (default: the model's own, else 7.5)", None,
            lambda v, w: parse_float(v, w, 0.0), metavar="SCALE"),
    Setting("task", "what a run does: text-to-image (default), img2img or inpaint (SD 1.5 and SDXL); an init image "
            "and mask are drawn unless a run passes image= / mask_image=", TEXT_TO_IMAGE, _task, metavar="TASK"),
    Setting("repeats", "measured runs per stack (default 3)", 3, lambda v, w: parse_int(v, w, 1),
            kind="measurement", metavar="N"),
    Setting("warmup", "unmeasured warm-up runs per stack (default 1)", 1, lambda v, w: parse_int(v, w, 0),
            kind="measurement", metavar="N"),
    Setting("settle", "seconds of re-measuring on a noisy machine: a check whose max-its-drop does not surely pass "
            "re-measures up to this long first (default 30); given, a recording measures twice this long too",
            None, lambda v, w: parse_float(v, w, 0.0), kind="measurement", metavar="SECONDS"),
    Setting("cpu-threads", "intra-op threads of a CPU run (default 1: steadiest on a shared machine, and the same "
            "under pytest-xdist); a speed stored with another count is not compared",
            None, lambda v, w: parse_int(v, w, 1), kind="measurement", metavar="N"),
    # gates: None means "not set here"; OFF means switched off at this layer
    Setting("max-vram", "gate: ceiling on the CUDA allocator's peak, e.g. 5.1GB (off by default)", None,
            _switchable(lambda v, w: parse_byte_size(v, w)), kind="gate", metavar="SIZE"),
    Setting("max-host-memory", "gate: ceiling on the process's peak RSS during a run, e.g. 6GiB", None,
            _switchable(lambda v, w: parse_byte_size(v, w)), kind="gate", metavar="SIZE"),
    Setting("min-its", "gate: minimum denoising steps per second", None,
            _switchable(lambda v, w: parse_float(v, w, 0.0)), kind="gate", metavar="ITS"),
    Setting("min-ssim", "gate: minimum SSIM against the reference's baseline (default: per optimization)", None,
            _switchable(parse_ssim), kind="gate", metavar="SSIM"),
    Setting("min-self-ssim", "gate: minimum SSIM against the stack's own stored image, so drift within min-ssim is "
            "seen too (default: per optimization)", None, _switchable(parse_ssim), kind="gate", metavar="SSIM"),
    Setting("reference", f"the stack min-ssim compares against (default {REFERENCE})", REFERENCE, _stack_text,
            kind="gate", metavar="STACK", names_stacks=True),
    Setting("max-its-drop", "gate: largest it/s drop against this device's stored metrics (default 10% on CUDA, "
            "25% elsewhere)", None, _switchable(parse_fraction), kind="gate", metavar="PERCENT"),
    Setting("max-memory-growth", "gate: largest peak-memory growth against this device's stored metrics "
            "(default 10%)", 0.10, _switchable(lambda v, w: parse_fraction(v, w, maximum=None)), kind="gate",
            metavar="PERCENT"),
    # promise gates: ratios to the reference measured side by side in this session (stacks/promises.py)
    Setting("min-speedup", "gate: least it/s ratio to the reference, measured interleaved with it in this session, "
            "e.g. 1.2 (off by default)", None, _switchable(lambda v, w: parse_float(v, w, 0.0)), kind="gate",
            metavar="RATIO"),
    Setting("max-memory-ratio", "gate: largest peak-memory ratio to the reference in this session (VRAM on CUDA, "
            "the run's own host memory elsewhere), e.g. 0.6 (off by default)", None,
            _switchable(lambda v, w: parse_float(v, w, 0.0)), kind="gate", metavar="RATIO"),
    Setting("promises", "check each stack against what the registry says its optimizations promise (speed and "
            "memory ratios to the reference on this device); min-speedup / max-memory-ratio, where set, win",
            False, _flag, kind="gate", is_flag=True),
    # the session's own
    Setting("baseline-dir", "where baselines are stored (default: baselines/ under rootdir)", None, _text,
            kind="session", is_path=True, metavar="DIR"),
    Setting("update-baselines", "record baselines (the only way one is ever written): bare or =checked records the "
            "stacks the selected tests check and the reference only where it is missing; =all also re-records the "
            "reference; =missing records only what is absent. Every write is listed at the session's end",
            None, _update_mode, kind="session", metavar="MODE"),
    Setting("results-dir", "where failed comparisons leave actual, baseline and diff images (default: .sdopt/ "
            "under rootdir)", None, _text, kind="session", is_path=True, metavar="DIR"),
    Setting("matrix", "collect one gated test per stack: --sdopt-matrix (every registered optimization) or "
            "--sdopt-matrix=fp16,fp16+tome", None, _matrix, kind="session", metavar="STACKS", names_stacks=True),
    Setting("json", "write the session's results to this file (a versioned schema; images beside it)", None, _text,
            kind="session", is_path=True, metavar="PATH"),
    Setting("html", "write a self-contained HTML report of the session to this file", None, _text,
            kind="session", is_path=True, metavar="PATH"),
    Setting("benchmark", "feed the first sdopt.run of every test to pytest-benchmark, as if it requested "
            "the benchmark fixture", False, _flag, kind="session", is_flag=True),
    Setting("share-gpus", "under pytest -n, let more workers than GPUs share them (each worker otherwise gets "
            "a GPU of its own)", False, _flag, kind="session", is_flag=True),
    Setting("strict", "fail, instead of skip, a stack that cannot run on this machine", False, _flag,
            kind="session", is_flag=True),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}
BY_KEYWORD = {setting.keyword: setting for setting in SETTINGS}
SCENARIO_KEYS = tuple(s.keyword for s in SETTINGS if s.kind == "scenario")
MEASUREMENT_KEYS = tuple(s.keyword for s in SETTINGS if s.kind == "measurement")
GATE_KEYWORDS = tuple(s.keyword for s in SETTINGS if s.kind == "gate")
RUN_KEYWORDS = SCENARIO_KEYS + MEASUREMENT_KEYS
MARKER_KEYWORDS = RUN_KEYWORDS + GATE_KEYWORDS
BARE_VALUES = {"matrix": "all", "update-baselines": "checked"}  # what the option means given without a value


def add_options(parser: Any) -> None:
    """Register `--sdopt-NAME` and ini `sdopt_NAME` for every setting (pytest's Parser)."""
    group = parser.getgroup("sdopt", "Stable Diffusion optimization regression tests (pytest-sdopt)")
    for setting in SETTINGS:
        dest = f"sdopt_{setting.keyword}"
        cli_help = setting.help.replace("%", "%%")  # argparse %-formats help texts; ini help is shown as is
        if setting.is_flag:
            group.addoption(setting.cli, action="store_true", default=None, dest=dest, help=cli_help)
        elif setting.name in BARE_VALUES:  # a bare --sdopt-matrix means every registered optimization
            group.addoption(setting.cli, nargs="?", const=BARE_VALUES[setting.name], default=None, dest=dest,
                            metavar=setting.metavar, help=cli_help)
        else:
            group.addoption(setting.cli, default=None, dest=dest, metavar=setting.metavar, help=cli_help)
        parser.addini(setting.ini, help=setting.help, type="string", default="")


@dataclass(frozen=True)
class SessionSettings:
    """Command line over ini over defaults, parsed once; bad values are usage errors at start-up."""

    values: Mapping[str, Any]  # by option name (max-vram), plus rootdir; read them as attributes

    @classmethod
    def from_config(cls, config: Any, stack_name: StackName | None = None) -> "SessionSettings":
        """`stack_name`: the stacks layer's canonical spelling of a stack, for the settings that name
        stacks (--sdopt-reference, --sdopt-matrix); a misspelt one is a usage error at start-up."""
        values, given = {}, set()
        ini_dir = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
        for setting in SETTINGS:
            raw, source, base = config.getoption(f"sdopt_{setting.keyword}"), setting.cli, config.invocation_params.dir
            if raw is None:
                raw, source, base = config.getini(setting.ini), f"ini option {setting.ini}", ini_dir
                if raw in ("", None):
                    values[setting.name] = setting.default
                    continue
            value = _named_stacks(setting, setting.parse(raw, source), source, stack_name)
            given.add(setting.name)
            values[setting.name] = (Path(base) / Path(value).expanduser()).resolve() if setting.is_path else value
            if setting.name == "model":  # a folder, or a name: anchored like the paths when it is a folder
                values["model"] = anchor_model_path(value, Path(base))
        root = Path(config.rootpath)
        values["rootdir"] = root  # what a relative model folder in a marker or keyword is taken from
        values["baseline-dir"] = values["baseline-dir"] or root / "baselines"
        values["results-dir"] = values["results-dir"] or root / ".sdopt"
        # Folders the user named are checked now; defaults only when used (a read-only checkout
        # running no sdopt test must not fail at start-up).
        written = {"results-dir", "json", "html"} | ({"baseline-dir"} if values["update-baselines"] else set())
        for name in sorted(written & given):
            folder = values[name] if name.endswith("dir") else Path(values[name]).parent
            _check_writable(folder, BY_NAME[name].cli)
        return cls(values)

    def get(self, keyword: str) -> Any:
        """By marker keyword (max_vram), for code that layers settings by name; elsewhere the attributes."""
        return self.values[BY_KEYWORD[keyword].name]

    @property
    def rootdir(self) -> Path | None:
        """What a relative model folder in a marker or keyword is taken from."""
        return self.values.get("rootdir")


def _attribute(setting: Setting) -> property:
    return property(lambda self: self.values[setting.name], doc=setting.help)


# One attribute per setting, named as its marker keyword (settings.max_vram, settings.update_baselines):
# generated from the table, so an attribute and its option cannot drift apart.
for _setting in SETTINGS:
    setattr(SessionSettings, _setting.keyword, _attribute(_setting))


def _check_writable(folder: Path, what: str) -> None:
    """Fail at start-up, not at the first failed comparison, when a folder sdopt writes cannot be made."""
    import os

    existing = Path(folder)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SdoptUsageError(f"{what} {str(folder)!r} cannot be created: {str(existing)!r} is a file. Choose "
                              f"another folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SdoptUsageError(f"{what} {str(folder)!r} is not writable here ({str(existing)!r} is read-only to this "
                              f"user). Choose a folder you can write, e.g. under the repository.")


def misspelled_marker(names: Iterable[str], registered: Iterable[str]) -> str | None:
    """The first unregistered marker name that looks like a misspelt `sdopt` (`sdpot`, `sdop`, `sd_opt`):
    pytest ignores such a marker's keywords, so its ceilings would silently not apply."""
    import difflib

    known = set(registered) | {"sdopt"}
    for name in names:
        if name not in known and difflib.get_close_matches(name.lower().replace("_", ""), ["sdopt"], n=1, cutoff=0.78):
            return name
    return None


def marker_overrides(markers: Iterable[Any], stack_name: StackName | None = None,
                     call_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keywords of `@pytest.mark.sdopt` markers, closest first (a method's beats its class's).

    `call_args`: where keywords that are no sdopt setting go (the pipeline's own arguments, checked
    against its signature when a run is planned); None: such a keyword is an error here."""
    merged: dict[str, Any] = {}
    for marker in markers:
        if marker.args:
            raise SdoptUsageError(
                f"@pytest.mark.sdopt takes keywords only, e.g. @pytest.mark.sdopt(steps=4); got positional "
                f"{marker.args!r}."
            )
        for key, value in marker.kwargs.items():
            if key not in MARKER_KEYWORDS and call_args is not None:
                call_args.setdefault(key, value)
                continue
            if key not in MARKER_KEYWORDS:
                raise SdoptUsageError(
                    f"@pytest.mark.sdopt got an unknown keyword {key!r}. Valid keywords: {', '.join(MARKER_KEYWORDS)}."
                )
            merged.setdefault(key, value)
    return {key: _parsed(key, value, f"@pytest.mark.sdopt({key}=...)", stack_name) for key, value in merged.items()}


def _parsed(keyword: str, value: Any, what: str, stack_name: StackName | None) -> Any:
    setting = BY_KEYWORD[keyword]
    return _named_stacks(setting, setting.parse(value, what), what, stack_name)


def keyword_overrides(kwargs: Mapping[str, Any], where: str, valid: tuple[str, ...] = RUN_KEYWORDS,
                      stack_name: StackName | None = None) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise SdoptUsageError(f"{where} got unknown keyword(s) {', '.join(unknown)}. Valid: {', '.join(valid)}.")
    return {key: _parsed(key, value, f"{where}({key}=...)", stack_name) for key, value in kwargs.items()}


def resolve_run(session: SessionSettings, marker: Mapping[str, Any],
                keywords: Mapping[str, Any]) -> tuple["Scenario", "Measurement"]:
    """Layer keyword > marker > session (command line > ini > default) into a scenario and measurement."""
    from pytest_sdopt.config.scenario import Measurement, Scenario

    def pick(name: str) -> Any:
        return _layered(name, session, marker, keywords)

    scenario = Scenario(**{name: pick(name) for name in SCENARIO_KEYS})
    if ("model" in keywords or "model" in marker) and session.rootdir is not None:
        scenario = replace(scenario, model=anchor_model_path(scenario.model, session.rootdir))
    return scenario, Measurement(repeats=pick("repeats"), warmup=pick("warmup"), settle_s=pick("settle"),
                                 cpu_threads=pick("cpu_threads"))


# A CPU run's speed varies far more between processes than a GPU's: on a shared 2-core machine
# two runs minutes apart differ by 10-15% in it/s, a GPU's by a few percent.
DEFAULT_ITS_DROP = {"cuda": 0.10}
DEFAULT_ITS_DROP_ELSEWHERE = 0.25


def resolve_gates(session: SessionSettings, marker: Mapping[str, Any], keywords: Mapping[str, Any],
                  default_min_ssim: float, device_type: str, default_min_self_ssim: float | None = None) -> "GateLimits":
    """Layer the gates the same way; min_ssim and min_self_ssim fall back to the stack's registry
    defaults and max_its_drop to the device's. Returns the limits with switched-off gates as None.
    """
    from pytest_sdopt.config.scenario import GateLimits

    limits = {name: _layered(name, session, marker, keywords) for name in GATE_KEYWORDS}
    if limits["min_ssim"] is None:
        limits["min_ssim"] = default_min_ssim
    if limits["min_self_ssim"] is None:
        limits["min_self_ssim"] = default_min_self_ssim
    if limits["max_its_drop"] is None:
        limits["max_its_drop"] = DEFAULT_ITS_DROP.get(device_type, DEFAULT_ITS_DROP_ELSEWHERE)
    return GateLimits(**{name: None if value is OFF else value for name, value in limits.items()})


def _layered(keyword: str, session: SessionSettings, marker: Mapping[str, Any], keywords: Mapping[str, Any]) -> Any:
    for layer in (keywords, marker):
        if keyword in layer:
            return layer[keyword]
    return session.get(keyword)
