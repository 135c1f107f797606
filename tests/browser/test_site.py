"""The static site (`make site`): every page renders in Chromium, with its figures, its formulas and its tables.

The site is built from the committed notebooks' outputs (never executed again), the README and the
docstrings. Each page is opened from disk (no server), MathJax is given time to typeset, and the page
must have no image that failed to load, no formula MathJax could not read, no raw markup in anything a
reader sees (the prose and the cells' outputs alike: Markdown, LaTeX or HTML that was not rendered, such
as a table printed with ``display(Markdown(...))`` shown as its pipe text), and nothing wider than the
content column (a code cell or a table that scrolls sideways hides part of itself).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(path.stem for path in (REPOSITORY / "notebooks").glob("*.ipynb"))
PAGES = ["docs/index", "README", "docs/api", *(f"notebooks/{name}" for name in NOTEBOOKS)]

# What a reader sees: the page's article, rendered, without what is code and meant as code (code cells, code
# blocks, inline code, signatures) and without typeset formulas. The cells' outputs stay in, text outputs
# (<pre> inside .cell_output) included. The clone is laid out off screen, so innerText keeps its line breaks.
SEEN = """() => {
  const article = document.querySelector('article');
  const clone = article.cloneNode(true);
  clone.querySelectorAll('.cell_input, .sig, code, mjx-container, script, style').forEach(node => node.remove());
  clone.querySelectorAll('pre').forEach(node => { if (!node.closest('.cell_output')) node.remove(); });
  const holder = document.createElement('div');
  holder.style.cssText = `position: absolute; left: -100000px; top: 0; width: ${article.clientWidth}px`;
  holder.appendChild(clone);
  document.body.appendChild(holder);
  const text = clone.innerText;
  holder.remove();
  return text;
}"""
# Markup that was not rendered, as a reader would see it on one line of the page
RAW = {
    "a Markdown table row": re.compile(r"^\s*\|.*\|.*\|\s*$"),
    "Markdown bold": re.compile(r"\*\*|(?<!\w)__\w"),
    "Markdown emphasis": re.compile(r"(?<![\w*])\*[^\s*][^*\n]*(?<=\S)\*(?![\w*])"),
    "a Markdown code span": re.compile(r"`"),
    "a Markdown heading": re.compile(r"^\s*#{1,6} \S"),
    "a Markdown link": re.compile(r"\]\("),
    "an HTML tag": re.compile(r"</?(div|img|span|table|tr|td|br|p|b|i|em|strong|sup|sub)\b[^>]*>"),
    "LaTeX math delimiters": re.compile(r"\$\$|\$[^$\s][^$\n]*\$|\\\(|\\\["),
    "a LaTeX command": re.compile(r"\\[A-Za-z]{2,}"),
    "a MyST directive": re.compile(r"\{(eval-rst|toctree|code-cell|math)\}"),
    "a widget's repr": re.compile(r"children=\("),
}
# Elements of the article wider than the content column: one that scrolls (or clips) sideways, or one that
# sticks out past the column's right edge; the outermost of them only. MathJax's assistive copy of a formula
# is clipped on purpose.
TOO_WIDE = """() => {
  const column = (document.querySelector('.content') || document.querySelector('article')).getBoundingClientRect();
  const outermost = [], found = [];
  for (const node of document.querySelector('article').querySelectorAll('*')) {
    if (node.closest('mjx-assistive-mml') || outermost.some(wide => wide.contains(node))) continue;
    const box = node.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    const hides = node.scrollWidth > node.clientWidth + 1 && getComputedStyle(node).overflowX !== 'visible';
    const sticksOut = box.right > column.right + 0.5;
    if (hides || sticksOut) {
      outermost.push(node);
      found.push(`<${node.tagName.toLowerCase()} class="${node.className}"> ${Math.round(box.width)} px, `
                 + `${node.scrollWidth} px of content, column ends at ${Math.round(column.right)} px: `
                 + (node.innerText || '').trim().slice(0, 80).replace(/\\s+/g, ' '));
    }
  }
  return found;
}"""

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("site")
    completed = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going", "-c",
                                "docs", ".", str(output)], cwd=REPOSITORY, capture_output=True, text=True,
                               timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return output


def _open(page, site: Path, name: str) -> None:
    page.goto((site / f"{name}.html").as_uri())
    page.wait_for_load_state("load")
    page.evaluate("async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise; }")


def raw_markup(text: str) -> list[str]:
    """Each line of ``text`` that shows unrendered markup, with what it shows."""
    return [f"{what}: {line.strip()[:120]!r}" for line in text.splitlines() for what, pattern in RAW.items()
            if pattern.search(line)]


def test_raw_markup_is_recognised_in_a_line_and_rendered_text_passes():
    shown = raw_markup("| variant | R@1 |\n|---|---|\nthe **MPN** and $\\frac{a}{b}$ and `code`\n## Results")
    assert {entry.split(":")[0] for entry in shown} == {"a Markdown table row", "Markdown bold",
                                                        "LaTeX math delimiters", "a LaTeX command",
                                                        "a Markdown code span", "a Markdown heading"}
    assert not raw_markup("variant\tR@1 (%)\nMPN (messages on)\t78.7 ± 0.4\n2400 steps (B*), 5 × 3, a_b, 2 * 3")


def test_the_site_has_a_page_for_the_readme_the_api_and_every_notebook(site):
    missing = [page for page in PAGES if not (site / f"{page}.html").is_file()]
    assert not missing, missing
    index = (site / "docs" / "index.html").read_text()
    assert all(f"{Path(page).name}.html" in index for page in PAGES if page != "docs/index")


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_its_images_and_formulas_and_shows_no_raw_markup_outputs_included(site, static_page,
                                                                                           name):
    _open(static_page, site, name)
    broken = static_page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                                  ".map(i => i.getAttribute('src'))")
    assert not broken, f"{name}: images that did not load: {broken[:5]}"
    assert static_page.locator("mjx-merror").count() == 0, f"{name}: a formula MathJax could not read"
    shown = raw_markup(static_page.evaluate(SEEN))
    assert not shown, f"{name}: raw markup where a reader sees it ({len(shown)} lines): {shown[:5]}"
    if name.startswith("notebooks/0"):  # every lesson draws; the appendix holds the study's tables only
        assert static_page.locator("article img").count() >= 1, f"{name}: no figure"


@pytest.mark.parametrize("name", PAGES)
def test_every_page_fits_its_content_column(site, static_page, name):
    _open(static_page, site, name)
    too_wide = static_page.evaluate(TOO_WIDE)
    assert not too_wide, f"{name}: {len(too_wide)} elements wider than the content column: {too_wide[:5]}"
