"""Self-contained HTML pages: the session report (`--sdopt-html`) and the comparison (`sdopt compare --html`).

One file, no external assets: images are embedded as data URIs, styles inline, no script. It
opens offline and can be attached to a CI run as is. Failures come first and are marked.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Iterable

from pytest_sdopt.checks.similarity import run_suffix
from pytest_sdopt.results.summary import table_rows, verdict

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1b1b1b; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 0 0 8px; }
.meta { color: #555; margin-bottom: 16px; }
table.summary { border-collapse: collapse; margin-bottom: 24px; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
table.summary td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td, section.failed { background: #fde8e8; } tr.skipped td { color: #777; }
section { border: 1px solid #ccc; border-radius: 6px; padding: 12px 16px; margin-bottom: 16px; }
section.failed { border: 2px solid #c62828; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; color: #fff; }
.badge.failed { background: #c62828; } .badge.passed { background: #2e7d32; }
.badge.skipped, .badge.unchecked { background: #777; }
.images { display: flex; gap: 16px; flex-wrap: wrap; margin: 8px 0; }
figure { margin: 0; } figcaption { color: #555; font-size: 12px; }
figure img { width: 256px; height: auto; image-rendering: pixelated; border: 1px solid #999; }
ul.gates { margin: 4px 0; padding-left: 20px; } li.FAIL { color: #c62828; font-weight: 600; }
li.inconclusive { color: #b26a00; font-weight: 600; }
"""


def data_uri(image: Any) -> str:
    """A PIL image (or a path to one) as a PNG data URI."""
    from PIL import Image

    if not hasattr(image, "save"):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure(caption: str, image: Any) -> str:
    return (f'<figure><img alt="{html.escape(caption)}" src="{data_uri(image)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def image_triptych(reference_path: str | None, actual_path: str | None, reference_label: str,
                   actual_label: str) -> str:
    """Reference, actual and their SSIM diff side by side (whichever of them exist)."""
    from pytest_sdopt.checks.similarity import ImageSizeMismatch, compare, diff_image

    parts = []
    reference = Path(reference_path) if reference_path and Path(reference_path).is_file() else None
    actual = Path(actual_path) if actual_path and Path(actual_path).is_file() else None
    if reference is not None:
        parts.append(figure(reference_label, reference))
    if actual is not None:
        parts.append(figure(actual_label, actual))
    if reference is not None and actual is not None:
        from PIL import Image

        with Image.open(reference) as ref, Image.open(actual) as act:
            try:
                similarity = compare(act.convert("RGB"), ref.convert("RGB"))
                parts.append(figure(f"diff (SSIM {similarity.ssim:.4f}; white: differs)", diff_image(similarity)))
            except ImageSizeMismatch as exc:
                parts.append(f"<p>{html.escape(str(exc))}</p>")
    return f'<div class="images">{"".join(parts)}</div>' if parts else ""


def page(title: str, meta: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<div class="meta">{meta}</div>{body}</body></html>\n')


def table(header: list[str], rows: list[list[str]], classes: list[str]) -> str:
    numeric = {"it/s", "vs ref", "peak VRAM", "peak host", "SSIM", "old", "new", "change"}
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        f'<tr class="{css}">' + "".join(
            f'<td class="{"num" if header[i] in numeric else ""}">{html.escape(cell)}</td>'
            for i, cell in enumerate(row)) + "</tr>"
        for row, css in zip(rows, classes))
    return f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_RANK = {"failed": 0, "passed": 1, "unchecked": 2, "skipped": 3}


def session_page(entries: Iterable[dict[str, Any]], version: str) -> str:
    entries = sorted(entries, key=lambda e: (_RANK[e["outcome"]], e["order"]))  # failures first
    header, rows = table_rows(entries)
    summary = table(header, rows, [entry["outcome"] for entry in entries])
    sections = []
    for entry in entries:
        outcome, run = entry["outcome"], entry.get("run") or 1
        figures = entry["figures"] or {}
        facts = []
        if figures:
            facts.append(f"{figures['its']:.2f} it/s")
            for key, label in (("peak_vram_bytes", "peak VRAM"), ("peak_host_bytes", "peak host")):
                if figures.get(key) is not None:
                    facts.append(f"{label} {figures[key] / 1e6:.1f} MB")
        if entry["ssim"] is not None:
            facts.append(f"SSIM {entry['ssim']:.4f} against {entry['reference']}")
        gates = "".join(f'<li class="{html.escape(g["status"])}">{html.escape(g["status"])} {html.escape(g["gate"])}: '
                        f"{html.escape(', '.join(x for x in (g['measured'], g['limit'], g['detail']) if x))}</li>"
                        for g in entry["gates"])
        images = image_triptych(entry["reference_image"], entry["image"], f"reference: {entry['reference']}",
                                f"actual: {entry['stack']}")
        sections.append(
            f'<section class="{outcome}" id="run-{entry["order"]}-{html.escape(entry["stack"])}{run_suffix(run)}">'
            f'<h2><span class="badge {outcome}">{html.escape(outcome)}</span> {html.escape(entry["stack"])} '
            f'<small>{html.escape(entry["nodeid"])}{f" (run {run} of this stack)" if run > 1 else ""}</small></h2>'
            f'<div>{html.escape(" · ".join(facts) or verdict(entry))}</div>'
            f'{f"<ul class=gates>{gates}</ul>" if gates else ""}{images}</section>')
    counts = {name: sum(1 for e in entries if e["outcome"] == name) for name in _RANK}
    env = next((e["env"] for e in entries if e["env"]), {})
    meta = html.escape(", ".join(f"{n} {name}" for name, n in counts.items() if n) + " · " + ", ".join(
        f"{k} {v}" for k, v in env.items() if v and k in ("device_name", "torch", "diffusers", "driver"))
        + f" · pytest-sdopt {version}")
    return page("pytest-sdopt report", meta, summary + "".join(sections))


def comparison_page(rows: list[Any], header: list[str], body: list[list[str]], old_name: str, new_name: str) -> str:
    """`sdopt compare --html`: the table, then the old and new image of every stack with their diff."""
    classes = ["failed" if row.regressions else "passed" for row in rows]
    order = sorted(range(len(rows)), key=lambda i: (not rows[i].regressions, i))  # regressions first
    summary = table(header, [body[i] for i in order], [classes[i] for i in order])
    sections = []
    for i in order:
        row = rows[i]
        images = image_triptych((row.old or {}).get("image"), (row.new or {}).get("image"), "OLD", "NEW")
        sections.append(f'<section class="{classes[i]}"><h2><span class="badge {classes[i]}">'
                        f'{"regression" if row.regressions else "ok"}</span> {html.escape(row.stack)} '
                        f"<small>{html.escape(row.nodeid)}</small></h2><div>{html.escape(body[i][-1])}</div>"
                        f"{images}</section>")
    meta = html.escape(f"OLD: {old_name} · NEW: {new_name}")
    return page("pytest-sdopt comparison", meta, summary + "".join(sections))
