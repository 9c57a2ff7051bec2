"""Every sdopt setting in one table: its command-line option, ini key, marker keyword and parser.

Precedence (DESIGN §2): `sdopt.run()` / `sdopt.check()` keyword > `@pytest.mark.sdopt` >
command line > ini > default. `SessionSettings` resolves the command line and ini once per
session; `resolve_scenario` layers the marker and keyword overrides on top, per run.
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from pytest_sdopt.errors import SdoptUsageError
from pytest_sdopt.parsing import parse_float, parse_image_size, parse_int
from pytest_sdopt.scenario import Measurement, Scenario

DEFAULT_PROMPT = "high resolution, a photograph of an astronaut riding a horse"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SdoptUsageError(f"{what} must be a non-empty string, not {value!r}.")
    return value.strip()


def _prompt(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise SdoptUsageError(f"{what} must be a string, not {value!r}.")
    return value


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


@dataclass(frozen=True)
class Setting:
    name: str  # --sdopt-NAME, ini sdopt_NAME, marker keyword NAME.replace("-", "_")
    help: str
    default: Any  # already parsed
    parse: Callable[[object, str], Any]
    in_marker: bool = True  # may @pytest.mark.sdopt(...) and sdopt.run(...) override it?
    is_flag: bool = False
    metavar: str | None = None

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
    Setting("model", "tiny (embedded, default), sd15-random, a diffusers folder, or a cached hub id",
            "tiny", _text, metavar="MODEL"),
    Setting("device", "auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps", "auto", _text,
            metavar="DEVICE"),
    Setting("prompt", "the prompt every run draws", DEFAULT_PROMPT, _prompt, metavar="TEXT"),
    Setting("seed", "generator seed (default 1)", 1, lambda v, w: parse_int(v, w, 0), metavar="N"),
    Setting("size", "image size WxH, e.g. 512x512 (default: the model's)", None, _size, metavar="WxH"),
    Setting("steps", "denoising steps (default: the model's)", None, lambda v, w: parse_int(v, w, 1), metavar="N"),
    Setting("guidance", "classifier-free guidance scale (default 7.5)", 7.5,
            lambda v, w: parse_float(v, w, 0.0), metavar="SCALE"),
    Setting("repeats", "measured runs per stack (default 3)", 3, lambda v, w: parse_int(v, w, 1), metavar="N"),
    Setting("warmup", "unmeasured warm-up runs per stack (default 1)", 1, lambda v, w: parse_int(v, w, 0),
            metavar="N"),
    Setting("strict", "fail, instead of skip, a stack that cannot run on this machine", False, _flag,
            in_marker=False, is_flag=True),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}
SCENARIO_KEYS = ("model", "device", "prompt", "seed", "size", "steps", "guidance")
MEASUREMENT_KEYS = ("repeats", "warmup")
RUN_KEYWORDS = SCENARIO_KEYS + MEASUREMENT_KEYS
MARKER_KEYWORDS = RUN_KEYWORDS  # the gates join these with the gate keywords


def add_options(parser: Any) -> None:
    """Register `--sdopt-NAME` and ini `sdopt_NAME` for every setting (pytest's Parser)."""
    group = parser.getgroup("sdopt", "Stable Diffusion optimization regression tests (pytest-sdopt)")
    for setting in SETTINGS:
        dest = f"sdopt_{setting.keyword}"
        if setting.is_flag:
            group.addoption(setting.cli, action="store_true", default=None, dest=dest, help=setting.help)
        else:
            group.addoption(setting.cli, default=None, dest=dest, metavar=setting.metavar, help=setting.help)
        parser.addini(setting.ini, help=setting.help, type="string", default="")


@dataclass(frozen=True)
class SessionSettings:
    """Command line over ini over defaults, parsed once; bad values are usage errors at start-up."""

    values: Mapping[str, Any]

    @classmethod
    def from_config(cls, config: Any) -> "SessionSettings":
        values = {}
        for setting in SETTINGS:
            raw, source = config.getoption(f"sdopt_{setting.keyword}"), setting.cli
            if raw is None:
                raw, source = config.getini(setting.ini), f"ini option {setting.ini}"
                if raw in ("", None):
                    values[setting.name] = setting.default
                    continue
            values[setting.name] = setting.parse(raw, source)
        return cls(values)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def marker_overrides(markers: Iterable[Any]) -> dict[str, Any]:
    """The keywords of `@pytest.mark.sdopt` markers, closest first (a method's beats its class's)."""
    merged: dict[str, Any] = {}
    for marker in markers:
        if marker.args:
            raise SdoptUsageError(
                f"@pytest.mark.sdopt takes keywords only, e.g. @pytest.mark.sdopt(steps=4); got positional "
                f"{marker.args!r}."
            )
        for key, value in marker.kwargs.items():
            if key not in MARKER_KEYWORDS:
                raise SdoptUsageError(
                    f"@pytest.mark.sdopt got an unknown keyword {key!r}. Valid keywords: {', '.join(MARKER_KEYWORDS)}."
                )
            merged.setdefault(key, value)
    return {key: BY_NAME[key].parse(value, f"@pytest.mark.sdopt({key}=...)") for key, value in merged.items()}


def keyword_overrides(kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(RUN_KEYWORDS))
    if unknown:
        raise SdoptUsageError(f"{where} got unknown keyword(s) {', '.join(unknown)}. Valid: {', '.join(RUN_KEYWORDS)}.")
    return {key: BY_NAME[key].parse(value, f"{where}({key}=...)") for key, value in kwargs.items()}


def resolve_run(session: SessionSettings, marker: Mapping[str, Any],
                keywords: Mapping[str, Any]) -> tuple[Scenario, Measurement]:
    """Layer keyword > marker > session (command line > ini > default) into a scenario and measurement."""
    def pick(name: str) -> Any:
        for layer in (keywords, marker):
            if name in layer:
                return layer[name]
        return session[name]

    scenario = Scenario(**{name: pick(name) for name in SCENARIO_KEYS})
    return scenario, Measurement(repeats=pick("repeats"), warmup=pick("warmup"))
