"""The Snakemake HTML report of the analysis opens in headless Chromium: no errors, every figure and table shown.

The report of the shared hand-made study (``analysis_study``, tests/_analysis_study.py) is loaded in Chromium
driven over the DevTools protocol (tests/_chromium.py). Snakemake 9 reports are a single-page React app, so the
test clicks through it like a reader: each category of the menu, each result's view button and its info
button, and checks that every figure decodes to the size of the PNG on disk, every table links the exact file
bytes, every result carries its own caption, and the page raised no exception or console error on the way.
Skips when Chromium or Snakemake is not installed (CI installs Debian's ``chromium``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from _analysis_study import REPO
from _chromium import HeadlessChromium, find_chromium

from kdcore.analysis import outputs

pytestmark = pytest.mark.slow

CHROMIUM = find_chromium()
REPORT_RST = REPO / "workflow" / "report"
#: The tables the analysis rules put in the report, per category (design.md: runs, comparisons, selection,
#: moderation; comparison only when a reference zip is configured, which this study does not). summary.json is
#: under Summary, listed by its warnings label.
REPORT_TABLES = {
    "Tables": (
        "runs.csv",
        "comparisons.csv",
        "selection.csv",
        "moderation.csv",
        "moderation_sensitivity.csv",
        *(f"{name}.csv" for name in outputs.LOGIT_TABLES if name != "audit"),  # audit: only when asked for
    ),
    "Summary": ("summary.json",),
}
#: The LaTeX tables of this study: every table of kdcore.analysis.outputs (the audit only when asked for).
N_TEX_TABLES = len(outputs.TEX_TABLES) + len(outputs.LOGIT_TABLES) - 1

#: Page-side helpers: the navbar's links and result rows, found by their visible text.
HELPERS_JS = r"""
window.__kd = {
  norm: (s) => (s || "").replace(/\s+/g, " ").trim(),
  navbar: () => document.querySelector("#app nav"),
  content() { const nav = this.navbar(); return [...nav.parentElement.children].find((c) => c !== nav && c.classList.contains("grow")); },
  link(text) {
    return [...this.navbar().querySelectorAll("a")].find((a) => this.norm(a.textContent) === text);
  },
  click(text) { const a = this.link(text); if (!a) return false; a.click(); return true; },
  rows() {
    return [...this.navbar().querySelectorAll("table tbody tr")].map((tr) => this.norm(tr.cells[0].textContent));
  },
  row(name) {
    return [...this.navbar().querySelectorAll("table tbody tr")].find((tr) => this.norm(tr.cells[0].textContent) === name);
  },
  buttons(name) { const tr = this.row(name); return tr ? [...tr.cells[tr.cells.length - 1].querySelectorAll("a")] : []; },
  caption() {
    const items = [...this.navbar().querySelectorAll("li")];
    const i = items.findIndex((li) => this.norm(li.textContent).toLowerCase() === "description");
    return i < 0 ? null : this.norm(items[i + 1].textContent);
  },
  image() {
    const img = this.content().querySelector("img");
    if (!img || !img.complete || img.naturalWidth === 0) return null;
    const r = img.getBoundingClientRect();
    return {src: img.src.slice(0, 30), tail: img.src.slice(-64), width: img.naturalWidth, height: img.naturalHeight,
            box: [r.left, r.top, r.width, r.height]};
  },
};
true
"""


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG file's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def caption_openings(name: str) -> str:
    """The first words of a caption .rst file (its first line, whitespace normalised)."""
    return _norm((REPORT_RST / f"{name}.rst").read_text().splitlines()[0])[:40]


def figure_caption_openings(figures: list[str]) -> dict[str, str]:
    """The opening words of each figure's branch of figure.rst (a Jinja if/elif/else on the figure name)."""
    parts = re.split(r"\{%-?\s*(.*?)\s*-?%\}", (REPORT_RST / "figure.rst").read_text())
    branches: dict[str, str] = {}
    else_text = ""
    for tag, text in zip(parts[1::2], parts[2::2], strict=False):
        match = re.fullmatch(r'(?:el)?if snakemake\.wildcards\.figure == "(\w+)"', tag)
        if match:
            branches[match.group(1)] = _norm(text)[:40]
        elif tag == "else":
            else_text = _norm(text)[:40]
    return {name: branches.get(name, else_text) for name in figures}


def keep_screenshot(path: Path) -> None:
    """Copy a screenshot into ``$KD_REPORT_SCREENSHOTS`` when set (to look at it, e.g. as a CI artefact)."""
    folder = os.environ.get("KD_REPORT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def data_uri_bytes(uri: str) -> bytes:
    """The payload of a base64 ``data:`` URI."""
    head, _, payload = uri.partition(",")
    assert head.startswith("data:") and head.endswith(";base64"), head[:80]
    return base64.b64decode(payload)


@pytest.fixture(scope="module")
def report(analysis_study: Path) -> Path:
    """Working directory of the finished hand-made study with ``results/report.html`` (shared, read only)."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed (CI: apt-get install chromium)")
    assert (analysis_study / "results/report.html").is_file()
    return analysis_study


@pytest.fixture(scope="module")
def browser(report: Path) -> Any:
    """Headless Chromium with the report loaded and its app rendered (the workflow description shown)."""
    assert CHROMIUM is not None
    with HeadlessChromium(CHROMIUM) as chromium:
        chromium.navigate((report / "results/report.html").as_uri())
        chromium.wait_for("document.querySelector('#app nav') !== null", timeout=20)
        chromium.evaluate(HELPERS_JS)
        yield chromium


def assert_no_problems(browser: HeadlessChromium) -> None:
    browser.drain()
    assert not browser.problems, "page errors:\n" + "\n".join(map(str, browser.problems))


def show_category(browser: HeadlessChromium, category: str) -> list[str]:
    """Go home through the breadcrumbs, open a result category from the menu; return its results' names."""
    browser.evaluate("__kd.navbar().querySelector('ol a').click(); true")
    browser.wait_for("!!__kd.link('Statistics')")
    assert browser.evaluate(f"__kd.click({category!r})"), category
    return browser.wait_for("__kd.rows().length ? __kd.rows() : null")


def result_caption(browser: HeadlessChromium, category: str, name: str) -> str:
    """Click a result's info button and return its Description (caption) text; back to the category after."""
    browser.evaluate(f"__kd.buttons({name!r})[1].click(); true")
    caption = browser.wait_for("__kd.caption()")
    show_category(browser, category)
    return caption


def test_report_opens_without_errors(browser: HeadlessChromium) -> None:
    show_category(browser, "Figures")  # somewhere else first, then back to the workflow page
    browser.evaluate("__kd.navbar().querySelector('ol a').click(); true")
    assert browser.wait_for("__kd.click('Workflow')")
    nav = browser.evaluate("__kd.norm(__kd.navbar().innerText)")
    for item in ("Workflow", "Statistics", "About", "Figures", "LaTeX tables", "Tables", "Summary"):
        assert item in nav, nav
    description = browser.evaluate("__kd.norm(__kd.content().innerText)")
    assert caption_openings("workflow") in description
    # the rule graph (vega) and the runtime statistics render too
    browser.wait_for("__kd.content().querySelector('svg, canvas') !== null")
    assert browser.evaluate("__kd.click('Statistics')")
    browser.wait_for("__kd.content().querySelector('svg, canvas') !== null")
    assert_no_problems(browser)
    # nothing beyond the bundled libraries' own warnings was logged
    assert all(kind in ("warning", "info", "log", "debug") for kind, _ in browser.console_messages), (
        browser.console_messages
    )


def test_every_figure_renders_with_its_caption(browser: HeadlessChromium, report: Path, tmp_path: Path) -> None:
    figures = sorted(p.stem for p in (report / "results/figures").glob("*.png"))
    assert len(figures) == 5, figures
    expected = figure_caption_openings(figures)
    assert sorted(show_category(browser, "Figures")) == figures
    captions = {}
    for name in figures:
        png = report / f"results/figures/{name}.png"
        tail = base64.b64encode(png.read_bytes()).decode()[-64:]
        browser.evaluate(f"__kd.buttons({name!r})[0].click(); true")
        # wait until this figure's own bytes are shown (the previous one stays until React re-renders), decoded
        image = browser.wait_for(f"(() => {{ const i = __kd.image(); return i && i.tail === {tail!r} ? i : null; }})()")
        assert image["src"].startswith("data:image/png"), image
        assert (image["width"], image["height"]) == png_size(png)
        assert image["box"][2] > 100 and image["box"][3] > 100, image  # laid out, not collapsed
        if name == "gain_vs_capacity":
            shot, box = browser.screenshot(tmp_path / "gain_vs_capacity.png"), image["box"]
            keep_screenshot(shot)
        captions[name] = result_caption(browser, "Figures", name)
        assert expected[name] in captions[name], (name, expected[name], captions[name])
    assert len(set(captions.values())) == len(figures), captions
    assert_no_problems(browser)

    # the screenshot shows the figure drawn: many distinct colours where the image lies
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (browser.height, browser.width)
    left, top, width, height = (int(v) for v in box)
    inside = pixels[top : top + height, left : left + width, :3].reshape(-1, 3)
    assert len({tuple(p) for p in inside[:: max(1, len(inside) // 20000)]}) > 50


@pytest.mark.parametrize("category", ["LaTeX tables", "Tables", "Summary"])
def test_every_table_is_listed_with_caption_and_data(browser: HeadlessChromium, report: Path, category: str) -> None:
    tables = report / "results/tables"
    if category == "LaTeX tables":
        # the report lists the LaTeX tables of kdcore.analysis.outputs.TEX_TABLES (the stored-logit tables are
        # in the report as CSV)
        assert len(list(tables.glob("*.tex"))) == N_TEX_TABLES, sorted(tables.glob("*.tex"))
        files = {name: tables / f"{name}.tex" for name in sorted(outputs.TEX_TABLES)}
        openings = dict.fromkeys(files, caption_openings("latex"))
    elif category == "Summary":
        # a labelled result is listed by its label (the warnings of summary.json, "none" for this study)
        notes = json.loads((tables / "summary.json").read_text())["notes"]
        files = {" | ".join(notes) if notes else "none": tables / "summary.json"}
        openings = dict.fromkeys(files, caption_openings("summary"))
    else:
        files = {str(Path("results/tables") / name): tables / name for name in REPORT_TABLES[category]}
        openings = {row: caption_openings(Path(row).stem) for row in files}
    assert sorted(show_category(browser, category)) == sorted(files)
    for row, path in files.items():
        href = browser.evaluate(f"__kd.buttons({row!r})[0].getAttribute('href')")
        assert data_uri_bytes(href) == path.read_bytes(), row  # the report embeds the file as written
        caption = result_caption(browser, category, row)
        assert openings[row] in caption, (row, openings[row], caption)
    assert_no_problems(browser)
