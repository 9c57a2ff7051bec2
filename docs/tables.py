"""The docs' reference tables, rendered from the code so they cannot drift from it.

`render(markdown)` replaces each marker, a line of its own, with its table: `<!-- sdopt:settings -->` (every setting,
from `pytest_sdopt.config.settings.SETTINGS`), `<!-- sdopt:settings gate -->` (only the settings of
those kinds), `<!-- sdopt:stacks -->` (every registered optimization, from
`pytest_sdopt.stacks.REGISTRY`) and `<!-- sdopt:schema -->` (the results JSON's fields, from
`pytest_sdopt/results/results.schema.json`). docs/hooks.py calls it for every page at build time;
tests/test_docs.py calls the functions directly. Each reads the code when called, not when this
module is imported. An unknown marker is an error, so a misspelt one fails the build.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parent.parent
SCHEMA_FILE = REPO / "pytest_sdopt" / "results" / "results.schema.json"
# A marker is a line of its own (so prose can quote one in backticks).
MARKER = re.compile(r"^<!-- sdopt:(?P<name>[a-z]+)(?: (?P<args>[a-z, ]+?))? -->[ \t]*$", re.M)
MARKER_LINE = re.compile(r"^[ \t]*<!--\s*sdopt:.*$", re.M)
MARKER_KINDS = ("scenario", "measurement", "gate")  # the kinds @pytest.mark.sdopt takes; "session" is not one
CALL_OF_KIND = {"scenario": "sdopt.run", "measurement": "sdopt.run", "gate": "sdopt.check"}


def cell(text: object) -> str:
    """Text safe inside a markdown table cell: no pipes, no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- settings ----------------------------------------------------------------------------------


def default_text(value: Any) -> str:
    """A setting's parsed default as a reader writes it; None: no fixed default (the help says what applies)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`"


def option_text(setting: Any) -> str:
    from pytest_sdopt.config.settings import BARE_VALUES

    if setting.is_flag:
        return f"`{setting.cli}`"
    if setting.name in BARE_VALUES:
        return f"`{setting.cli}[={setting.metavar}]`"
    return f"`{setting.cli} {setting.metavar}`" if setting.metavar else f"`{setting.cli}`"


def keyword_text(setting: Any) -> str:
    """The marker's and the call's keyword, and which call takes it; a session setting has none."""
    if setting.kind not in MARKER_KINDS:
        return "— (session)"
    return f"`{setting.keyword}`<br>{setting.kind}: `{CALL_OF_KIND[setting.kind]}`"


def settings_table(kinds: Iterable[str] | None = None) -> str:
    """One row per setting of `kinds` (all when None): option and ini key, keyword, default, help."""
    from pytest_sdopt.config import settings

    wanted = None if kinds is None else set(kinds)
    rows = [(f"{option_text(s)}<br>`{s.ini}`", keyword_text(s), default_text(s.default), cell(s.help))
            for s in settings.SETTINGS if wanted is None or s.kind in wanted]
    if not rows:
        raise ValueError(f"no setting is of kind {sorted(wanted or ())}")
    return _table(("command line<br>ini", "marker / call keyword", "default", "what it sets"), rows)


# --- stacks ------------------------------------------------------------------------------------


def requirement_text(need: Callable[..., Any]) -> str:
    """What a requirement checks, in words: a package's name, a CUDA device, or its docstring's first line."""
    from pytest_sdopt.stacks import spec

    if need is spec.needs_cuda:
        return "a CUDA device"
    if getattr(need, "__qualname__", "").startswith(f"{spec.needs_package.__name__}.<locals>"):
        names = inspect.getclosurevars(need).nonlocals
        return f"the `{names['module']}` package"
    doc = inspect.getdoc(need)
    if doc:
        return cell(doc.splitlines()[0].rstrip("."))
    return f"`{getattr(need, '__name__', repr(need))}`"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def stacks_table() -> str:
    """One row per registered optimization, in registration (canonical within a phase) order."""
    from pytest_sdopt.stacks import REGISTRY

    rows = []
    for name, spec in REGISTRY.items():
        label = f"`{name}`" if spec.default_value is None else f"`{name}`, `{name}:R` (R default {spec.default_value:g})"
        rows.append((label, spec.phase.name.lower().replace("_", " "), cell(spec.summary),
                     ", ".join(requirement_text(need) for need in spec.needs) or "—",
                     acts_on_text(spec.acts_on),
                     f"`{spec.exclusive_group}`" if spec.exclusive_group else "—",
                     f"{_number(spec.default_min_ssim)} / {_number(spec.default_min_self_ssim)}"))
    return _table(("name", "phase", "what it does", "needs", "acts on", "one per stack of",
                   "default `min_ssim` / `min_self_ssim`"), rows)


def acts_on_text(kinds: tuple[str, ...] | None) -> str:
    """The denoisers an optimization acts on, in words (models/families.py: SD 1.5 and SDXL have a
    UNet, SD3 a transformer)."""
    if kinds is None:
        return "any pipeline"
    return " or ".join({"unet": "a UNet (SD 1.5, SDXL)", "transformer": "a transformer (SD3)"}.get(kind, kind)
                       for kind in kinds)


def promises_table() -> str:
    """One row per registered optimization and device type: its promised speed and memory ratios to
    the reference, their conditions and sources, or why it promises nothing there."""
    from pytest_sdopt.stacks import REGISTRY
    from pytest_sdopt.stacks.promises import MEMORY, SPEED

    rows = []
    for name, spec in REGISTRY.items():
        nothing = dict(spec.promises_nothing)
        for device in ("cuda", "cpu"):
            promised = {p.metric: p for p in spec.promises if device in p.devices}
            if not promised and device not in nothing:
                continue
            if not promised:
                rows.append((f"`{name}`", device, "—", "—", cell(f"promises nothing: {nothing[device]}")))
                continue

            def bound(metric: str, sign: str) -> str:
                promise = promised.get(metric)
                if promise is None:
                    return "—"
                condition = promise.condition.__doc__.splitlines()[0] if promise.condition and promise.condition.__doc__ else ""
                return f"{sign} {promise.bound:.2f}x" + (f" ({cell(condition.rstrip('.'))})" if condition else "")

            sources = "; ".join(dict.fromkeys(p.source for p in promised.values()))
            rows.append((f"`{name}`", device, bound(SPEED, "≥"), bound(MEMORY, "≤"), cell(sources)))
    return _table(("name", "device", "speed vs the reference", "memory vs the reference", "source"), rows)


# --- the results JSON schema -------------------------------------------------------------------


def _resolve(node: dict, schema: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $refs are rendered, not {ref!r}")
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _object_of(node: dict, schema: dict) -> dict | None:
    """The object schema inside `node` (itself, or the non-null branch of a oneOf), if any."""
    node = _resolve(node, schema)
    if "properties" in node:
        return node
    for branch in node.get("oneOf", []) + node.get("anyOf", []):
        branch = _resolve(branch, schema)
        if "properties" in branch:
            return branch
    return None


def type_text(node: dict, schema: dict) -> str:
    node = _resolve(node, schema)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in node["enum"])
    if "oneOf" in node or "anyOf" in node:
        return " or ".join(type_text(branch, schema) for branch in node.get("oneOf", []) + node.get("anyOf", []))
    kinds = node.get("type", "any")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    words = []
    for kind in kinds:
        if kind == "array" and "items" in node:
            words.append(f"array of {type_text(node['items'], schema)}")
        elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
            words.append(f"object of {type_text(node['additionalProperties'], schema)}")
        else:
            words.append(kind)
    text = " or ".join(words)
    if "minimum" in node:
        text += f" (≥ {node['minimum']})"
    return text


def schema_fields(schema: dict) -> list[tuple[str, str, bool, str]]:
    """(path, type, required, description) of every property, depth first: `runs[].figures.its`."""
    fields: list[tuple[str, str, bool, str]] = []

    def walk(node: dict, prefix: str) -> None:
        obj = _object_of(node, schema)
        if obj is None:
            return
        required = set(obj.get("required", ()))
        for name, child in obj["properties"].items():
            path = f"{prefix}{name}"
            resolved = _resolve(child, schema)
            fields.append((path, type_text(child, schema), name in required, resolved.get("description", "")))
            items = resolved.get("items")
            if isinstance(items, dict) and _object_of(items, schema) is not None:
                walk(items, f"{path}[].")
            elif _object_of(child, schema) is not None:
                walk(child, f"{path}.")

    walk(schema, "")
    return fields


def schema_table(schema_file: Path | None = None) -> str:
    schema = json.loads(Path(schema_file or SCHEMA_FILE).read_text(encoding="utf-8"))
    rows = [(f"`{path}`", cell(kind), "yes" if required else "", cell(description))
            for path, kind, required, description in schema_fields(schema)]
    return _table(("field", "type", "required", "meaning"), rows)


# --- markers -----------------------------------------------------------------------------------


def _settings_marker(args: str | None) -> str:
    return settings_table(None if not args else [kind.strip() for kind in args.split(",")])


TABLES: dict[str, Callable[[str | None], str]] = {
    "settings": _settings_marker,
    "stacks": lambda args: stacks_table(),
    "promises": lambda args: promises_table(),
    "schema": lambda args: schema_table(),
}


def render(markdown: str) -> str:
    """`markdown` with every `<!-- sdopt:NAME [ARGS] -->` marker replaced by its table."""
    malformed = unknown_markers(markdown)
    if malformed:
        raise ValueError(f"docs marker(s) not understood: {', '.join(map(repr, malformed))}; the form is "
                         f"<!-- sdopt:NAME --> or <!-- sdopt:NAME ARGS -->")

    def table(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"unknown docs marker {match[0]!r}: known are {', '.join(TABLES)}")
        return TABLES[name](match["args"])

    return MARKER.sub(table, markdown)


def unknown_markers(markdown: str) -> list[str]:
    """Lines that start like a marker but that the marker pattern does not read (a typo): refused."""
    return [line.strip() for line in MARKER_LINE.findall(markdown) if not MARKER.fullmatch(line)]
