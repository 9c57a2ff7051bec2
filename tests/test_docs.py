"""The docs site: its reference tables come from the code, it builds with `mkdocs build --strict`,
and its pages render in a real browser with Material's navigation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from docs import tables
from pytest_sdopt.config import settings
from pytest_sdopt.stacks import REGISTRY, Effect, OptimizationSpec, Phase, needs_cuda, needs_package, register
from tests import browser

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
MKDOCS = Path(sys.executable).with_name("mkdocs")


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of every markdown table in `markdown`, as lists of cells."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|( --- \|)+", line):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return [row for row in rows if row and row[0] not in ("command line<br>ini", "name", "field", "NAME", "gate")]


def section(page: str, heading: str) -> str:
    text = (DOCS / page).read_text(encoding="utf-8")
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


# --- (a) the generated tables are the code's ----------------------------------------------------


def test_the_settings_table_has_a_row_per_setting_with_its_option_ini_key_keyword_and_default():
    rows = table_rows(tables.settings_table())
    options = [row[0].split("<br>")[0].strip("`").split()[0].split("[")[0] for row in rows]
    assert options == [s.cli for s in settings.SETTINGS]
    for row, setting in zip(rows, settings.SETTINGS):
        options, keyword, default, meaning = row
        ini = options.split("<br>")[1]
        assert ini == f"`{setting.ini}`"
        if setting.kind == "session":  # not a marker keyword: the marker refuses it
            assert setting.keyword not in settings.MARKER_KEYWORDS and keyword == "— (session)"
        else:
            assert setting.keyword in settings.MARKER_KEYWORDS
            assert keyword == f"`{setting.keyword}`<br>{setting.kind}: `{tables.CALL_OF_KIND[setting.kind]}`"
        assert default == tables.default_text(setting.default)
        assert meaning == tables.cell(setting.help)
    assert rows[0][2] == "`tiny`" and "`--sdopt-update-baselines[=MODE]`" in tables.settings_table()


def test_the_gates_table_holds_only_the_gates_settings():
    rows = table_rows(tables.settings_table(["gate"]))
    assert [row[1].split("`")[1] for row in rows] == list(settings.GATE_KEYWORDS)
    with pytest.raises(ValueError, match="no setting is of kind"):
        tables.settings_table(["gates"])  # a typo in a page's marker fails the build


def test_the_settings_table_is_rendered_from_settings_when_called(monkeypatch):
    made_up = replace(settings.BY_NAME["min-its"], name="max-made-up", help="gate: a setting added | here")
    monkeypatch.setattr(settings, "SETTINGS", settings.SETTINGS + (made_up,))
    rendered = tables.render("<!-- sdopt:settings gate -->")
    assert "`--sdopt-max-made-up ITS`" in rendered and "`sdopt_max_made_up`" in rendered
    assert "a setting added \\| here" in rendered  # a pipe in a help text does not split the row
    monkeypatch.setattr(settings, "SETTINGS", tuple(s for s in settings.SETTINGS if s.name != "min-its"))
    assert "--sdopt-min-its" not in tables.render("<!-- sdopt:settings -->")


def test_the_stacks_table_has_a_row_per_registered_optimization():
    rows = table_rows(tables.stacks_table())
    assert [row[0].split("`")[1] for row in rows] == list(REGISTRY)
    for row, spec in zip(rows, REGISTRY.values()):
        name, phase, summary, needs, acts_on, group, floors = row
        assert acts_on == ("any pipeline" if spec.acts_on is None else "a UNet (SD 1.5, SDXL)"), (name, acts_on)
        min_ssim, min_self_ssim = floors.split(" / ")
        assert phase == spec.phase.name.lower().replace("_", " ") and summary == tables.cell(spec.summary)
        assert float(min_ssim) == spec.default_min_ssim and float(min_self_ssim) == spec.default_min_self_ssim
        assert group == (f"`{spec.exclusive_group}`" if spec.exclusive_group else "—")
        assert len(needs.split(", ")) == max(len(spec.needs), 1)
    by_name = {row[0].split("`")[1]: row for row in rows}
    assert by_name["xformers"][3] == "the `xformers` package, a CUDA device"
    assert "`tome:R` (R default 0.5)" in by_name["tome"][0]


def test_the_stacks_table_is_rendered_from_the_registry_when_called(monkeypatch):
    spec = OptimizationSpec("made_up", Phase.VAE, "an optimization made up here", 0.42, lambda pipe, ctx: None,
                            needs=(needs_package("made_up_pkg"), needs_cuda), effect=Effect(lambda pipe: 0, str))
    monkeypatch.setitem(REGISTRY, "made_up", spec)
    row = next(row for row in table_rows(tables.render("<!-- sdopt:stacks -->")) if "made_up" in row[0])
    assert row[1:] == ["vae", "an optimization made up here", "the `made_up_pkg` package, a CUDA device",
                       "any pipeline", "—", "0.42 / 0.98"]


def _property_paths(node: dict, schema: dict, prefix: str = "") -> list[str]:
    """Every property of the schema as a dotted path, walked here independently of docs/tables.py."""
    if "$ref" in node:
        target = schema
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    paths = []
    for branch in node.get("oneOf", []):
        paths += _property_paths(branch, schema, prefix)
    if "items" in node:
        paths += _property_paths(node["items"], schema, prefix[:-1] + "[].")
    for name, child in node.get("properties", {}).items():
        paths += [prefix + name, *_property_paths(child, schema, f"{prefix}{name}.")]
    return paths


def test_the_schema_table_has_a_row_per_property_of_the_results_schema():
    schema = json.loads(tables.SCHEMA_FILE.read_text(encoding="utf-8"))
    paths = _property_paths(schema, schema)
    assert len(paths) > 50 and "runs[].figures.machine_relative_its" in paths and "runs[].gates[].status" in paths
    rows = table_rows(tables.schema_table())
    assert [row[0].strip("`") for row in rows] == paths
    for row in rows:
        if row[0] == "`runs[].gates[].status`":
            assert all(status in row[1] for status in ("pass", "FAIL", "n/a", "inconclusive"))
        if row[0] == "`runs[].figures.run_host_bytes`":
            assert row[2] == "" and "the run itself added" in row[3]


def test_the_schema_table_is_rendered_from_the_schema_file_when_called(tmp_path):
    schema = json.loads(tables.SCHEMA_FILE.read_text(encoding="utf-8"))
    schema["$defs"]["run"]["properties"]["made_up"] = {"type": "string", "description": "added here"}
    schema["$defs"]["run"]["required"].append("made_up")
    (tmp_path / "schema.json").write_text(json.dumps(schema), encoding="utf-8")
    assert ["`runs[].made_up`", "string", "yes", "added here"] in table_rows(tables.schema_table(tmp_path / "schema.json"))


def test_markers_are_whole_lines_and_a_misspelt_one_is_an_error():
    quoted = "prose quoting `<!-- sdopt:settings -->` stays as it is"
    assert tables.render(quoted) == quoted
    for bad in ("<!-- sdopt:setings -->", "<!-- sdopt:settings gate>", "<!--sdopt:stacks -->"):
        with pytest.raises(ValueError, match="marker"):
            tables.render(f"text\n{bad}\ntext")
    markers = {page.name: tables.MARKER.findall(page.read_text(encoding="utf-8")) for page in DOCS.glob("*.md")}
    assert markers["settings.md"] == [("settings", "")] and markers["gates.md"] == [("settings", "gate"), ("promises", "")]
    assert markers["stacks.md"] == [("stacks", "")] and markers["reports.md"] == [("schema", "")]


def test_the_hand_written_tables_name_exactly_what_the_code_has():
    applied = [row[0] for row in table_rows(section("stacks.md", "## How each is applied"))]
    assert [re.findall(r"`(\w+)", name)[0] for name in applied] == list(REGISTRY)
    gates = [row[0].strip("`") for row in table_rows((DOCS / "gates.md").read_text().split("## Setting a gate")[0])]
    assert gates == list(settings.GATE_KEYWORDS)
    described = {name for row in table_rows(section("settings.md", "## What the values mean"))
                 for name in re.findall(r"`([\w-]+)`", row[0])}
    assert described == {s.name for s in settings.SETTINGS}


def test_the_registration_example_on_the_stacks_page_registers(monkeypatch):
    page = section("stacks.md", "## Registering your own optimization")
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    code = code.replace("from my_project.attention import FusedAttnProcessor", "class FusedAttnProcessor: pass")
    namespace: dict = {}
    exec(compile(code, "stacks.md", "exec"), namespace)
    monkeypatch.setattr("pytest_sdopt.stacks.registry.REGISTRY", dict(REGISTRY))
    from pytest_sdopt.stacks import registry

    assert register(namespace["pytest_sdopt_register_optimizations"](None)) == ["fused_attention"]
    spec = registry.REGISTRY["fused_attention"]
    assert spec.exclusive_group == "attention" and spec.phase is Phase.ATTENTION
    assert spec.effect.unchanged(["AttnProcessor2_0"]) == "changed nothing: the UNet already used AttnProcessor2_0"


# --- (b) the site builds, warning-free --------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not MKDOCS.exists():
        pytest.skip(f"mkdocs is not installed beside {sys.executable}: pip install -e '.[test]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(out)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    assert not re.search(r"^(WARNING|ERROR)\b", built.stdout + built.stderr, re.M), built.stderr
    return out


def test_the_site_builds_with_strict_and_its_pages_carry_the_generated_tables(site):
    gates = (site / "gates.html").read_text(encoding="utf-8")
    assert "sdopt:settings" not in gates and "--sdopt-max-its-drop" in gates
    assert all(name in (site / "stacks.html").read_text(encoding="utf-8") for name in REGISTRY)
    assert "runs[].figures.machine_relative_its" in (site / "reports.html").read_text(encoding="utf-8")
    fixture = (site / "fixture.html").read_text(encoding="utf-8")  # mkdocstrings rendered the docstrings
    assert "Warm-up then measured runs" in fixture and 'id="pytest_sdopt.fixture.Sdopt.check"' in fixture
    models = (site / "models.html").read_text(encoding="utf-8")
    images = re.findall(r'<img [^>]*src="(tiny/[^"]+\.png)"', models)
    assert len(images) == 12 and all((site / image).is_file() for image in images)
    # the example test is included from examples/ as it is (pymdownx.snippets), not copied
    assert "test_reference_matches_its_baseline" in (site / "getting-started.html").read_text(encoding="utf-8")


def test_the_readmes_links_lead_somewhere(site):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        assert (REPO / path).exists(), target
        if anchor:
            page = (site / Path(path).relative_to("docs").with_suffix(".html")).read_text(encoding="utf-8")
            assert f'id="{anchor}"' in page, target


# --- (c) the pages render in a real browser ---------------------------------------------------


def nav_titles() -> list[str]:
    import yaml  # PyYAML, which mkdocs brings

    config = yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)

    def titles(entries) -> list[str]:
        found = []
        for entry in entries:
            for title, value in entry.items():
                found += [title, *titles(value)] if isinstance(value, list) else [title]
        return found

    return titles(config["nav"])


@pytest.mark.parametrize("page", ["index.html", "gates.html"])
def test_a_page_renders_in_a_headless_browser_with_materials_navigation(site, page, tmp_path):
    url = (site / page).as_uri()
    shot = browser.screenshot(url, tmp_path / "shot.png")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1600, 1280)
    assert (pixels.std(axis=(0, 1)) > 20).all()  # not a blank page
    # Material's stylesheet applied: the header bar is the theme's indigo (#4051b5)
    header = pixels[5:40, :, :]
    indigo = (abs(header - np.array([0x40, 0x51, 0xB5])) < 8).all(axis=-1)
    assert indigo.mean() > 0.5
    dom = browser.dom(url, tmp_path)
    primary = dom.split("md-nav--primary", 1)[1].split("md-sidebar--secondary", 1)[0]  # the left-hand nav
    for title in nav_titles():
        assert f">{title}<" in re.sub(r">\s+", ">", re.sub(r"\s+<", "<", primary)), title
    assert 'md-nav__link--active' in primary
    if page == "gates.html":
        assert "Three verdicts: pass, FAIL, inconclusive" in dom and "--sdopt-max-its-drop" in dom
