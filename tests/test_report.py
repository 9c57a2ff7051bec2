"""The session's results as files: the JSON (validated against its schema), pytest-xdist's merge,
junitxml properties, and the HTML report, opened in a real headless browser where one exists."""

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from pytest_sdopt.results.report import SCHEMA_FILE, load_results
from tests.conftest import FAST

SOURCE = """
    import pytest

    @pytest.mark.parametrize("stack", ["fp32", "bf16", "xformers"])
    def test_hold(sdopt, stack):
        sdopt.check(sdopt.run(stack), max_vram="5GB")
"""


def test_the_json_validates_against_the_documented_schema_and_holds_every_figure(run_sdopt, pytester):
    run_sdopt(SOURCE, "--sdopt-update-baselines").assert_outcomes(passed=2, skipped=1)
    run_sdopt(SOURCE, "--sdopt-json", "out/results.json").assert_outcomes(passed=2, skipped=1)
    document = json.loads((pytester.path / "out" / "results.json").read_text())
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text()))
    runs = {run["stack"]: run for run in document["runs"]}
    assert [run["stack"] for run in document["runs"]] == ["fp32", "bf16", "xformers"]  # collection order
    bf16 = runs["bf16"]
    assert bf16["outcome"] == "passed" and bf16["figures"]["its"] > 0 and bf16["figures"]["peak_host_bytes"] > 0
    assert len(bf16["step_times_s"]) == 1 and len(bf16["step_times_s"][0]) == 3  # 2 steps: 3 PNDM iterations
    assert {g["gate"]: g["status"] for g in bf16["gates"]}["max_vram"] == "n/a"
    assert 0.9 < bf16["ssim"] <= 1
    assert (pytester.path / "out" / bf16["image"]).is_file()  # relative to the JSON's folder
    assert runs["xformers"]["outcome"] == "skipped" and "xformers" in runs["xformers"]["skip_reason"]
    loaded, _ = load_results(pytester.path / "out")
    assert Path(loaded["runs"][0]["image"]).is_absolute()


def test_xdist_workers_merge_into_one_json_and_one_table(pytester):
    pytester.makepyfile(test_hold=SOURCE)
    quiet = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
    update = pytester.runpytest_subprocess("-p", "pytest_sdopt", *quiet, *FAST, "--sdopt-update-baselines")
    update.assert_outcomes(passed=2, skipped=1)
    result = pytester.runpytest_subprocess("-p", "pytest_sdopt", *quiet, *FAST, "-n", "2",
                                           "--sdopt-json", "merged.json")
    result.assert_outcomes(passed=2, skipped=1)
    document = json.loads((pytester.path / "merged.json").read_text())
    assert sorted(run["stack"] for run in document["runs"]) == ["bf16", "fp32", "xformers"]
    result.stdout.fnmatch_lines(["*= sdopt =*", "test * stack * verdict", "test_hold?fp32? * fp32 *pass*",
                                 "test_hold?bf16? * bf16 *pass*", "test_hold?xformers? * xformers * skipped:*"])


def test_junitxml_carries_each_tests_figures_as_properties(run_sdopt, pytester):
    run_sdopt(SOURCE, "--sdopt-update-baselines", "-k", "fp32").assert_outcomes(passed=1)
    run_sdopt(SOURCE, "-k", "fp32", "--junitxml", "junit.xml").assert_outcomes(passed=1)
    case = ET.parse(pytester.path / "junit.xml").find(".//testcase")
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert float(properties["sdopt fp32 it/s"]) > 0
    assert properties["sdopt fp32 peak VRAM bytes"] == "n/a"
    assert int(properties["sdopt fp32 peak host bytes"]) > 0
    assert properties["sdopt fp32 SSIM"] == "1.0000" and properties["sdopt fp32 verdict"] == "pass"


class _Structure(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.image_sources, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("class"))
        if tag == "img":
            self.image_sources.append(attrs.get("src", ""))
        if tag in ("link", "script") or (tag == "a" and attrs.get("href", "").startswith("http")):
            self.links.append(tag)


@pytest.fixture
def html_report(run_sdopt, pytester) -> Path:
    """A report with failures: the fp32 baseline replaced by noise fails both fp32 and bf16."""
    run_sdopt(SOURCE, "--sdopt-update-baselines").assert_outcomes(passed=2, skipped=1)
    reference = next((pytester.path / "baselines").rglob("fp32.png"))
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(reference)
    result = run_sdopt(SOURCE, "--sdopt-html", "report.html")
    result.assert_outcomes(failed=2, skipped=1)
    return pytester.path / "report.html"


def test_the_html_report_is_one_offline_file_with_failures_first(html_report):
    structure = _Structure()
    structure.feed(html_report.read_text())
    assert structure.sections == ["failed", "failed", "skipped"]
    assert structure.links == []  # nothing to fetch: it opens offline
    # per failed stack: reference, actual, diff
    assert len(structure.image_sources) == 6 and all(s.startswith("data:image/png;base64,") for s in structure.image_sources)
    text = html_report.read_text()
    assert "FAIL min_ssim" in text and "reference: fp32" in text and "diff (SSIM" in text


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def test_the_html_report_renders_in_a_real_headless_browser(html_report, tmp_path):
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        pytest.skip("no headless browser here: .ci/run installs Debian's chromium (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,1600", f"--screenshot={shot}", html_report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1600, 1280)
    assert (pixels.std(axis=(0, 1)) > 20).all()  # not a blank page
    # the failure banner's red (#c62828) is on screen, and so are the images' many colours
    red = (abs(pixels[..., 0] - 0xC6) < 8) & (abs(pixels[..., 1] - 0x28) < 8) & (abs(pixels[..., 2] - 0x28) < 8)
    assert red.sum() > 500
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000


def test_the_results_json_gets_the_same_file_mode_as_the_html_report(run_sdopt, pytester):
    run_sdopt("""
        def test_one(sdopt):
            sdopt.run("fp32")
    """, "--sdopt-json", "out/results.json", "--sdopt-html", "out/report.html").assert_outcomes(passed=1)
    modes = {name: (pytester.path / "out" / name).stat().st_mode & 0o777 for name in ("results.json", "report.html")}
    assert modes["results.json"] == modes["report.html"], modes  # was 0600 (a temporary file's) beside 0644
