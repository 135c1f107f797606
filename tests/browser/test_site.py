"""The static site (`make site`): every page renders in Chromium, with its figures and its formulas.

The site is built from the committed notebooks' outputs (never executed again), the README and the
docstrings. Each page is opened from disk (no server), MathJax is given time to typeset, and the page
must have no image that failed to load, no formula MathJax could not read and no raw markup left in its
visible text (Markdown, LaTeX or HTML that was not rendered).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(path.stem for path in (REPOSITORY / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGES = ["docs/index", "README", "docs/api", *(f"notebooks/{name}" for name in NOTEBOOKS)]
# what visible text must never show: unrendered Markdown, LaTeX or HTML
RAW = ["$$", r"\(", r"\[", r"\frac", r"\mathrm", r"\sum", "```", "](http", "**", "<div", "<img", "{eval-rst}",
       "{toctree}", "children=("]
# the page's prose: its text without code or signatures (code may hold ** or $$ and mean them)
PROSE = """(() => { const article = document.querySelector('article').cloneNode(true);
  article.querySelectorAll('pre, code, .sig, mjx-container, script, style').forEach(node => node.remove());
  return article.innerText; })()"""

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("site")
    completed = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going", "-c",
                                "docs", ".", str(output)], cwd=REPOSITORY, capture_output=True, text=True,
                               timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return output


def test_the_site_has_a_page_for_the_readme_the_api_and_every_notebook(site):
    missing = [page for page in PAGES if not (site / f"{page}.html").is_file()]
    assert not missing, missing
    index = (site / "docs" / "index.html").read_text()
    assert all(f"{Path(page).name}.html" in index for page in PAGES if page != "docs/index")


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_its_images_and_formulas_and_shows_no_raw_markup(site, static_page, name):
    static_page.goto((site / f"{name}.html").as_uri())
    static_page.wait_for_load_state("load")
    static_page.evaluate("async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise; }")
    broken = static_page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                                  ".map(i => i.getAttribute('src'))")
    assert not broken, f"{name}: images that did not load: {broken[:5]}"
    assert static_page.locator("mjx-merror").count() == 0, f"{name}: a formula MathJax could not read"
    text = static_page.evaluate(PROSE)
    shown = [raw for raw in RAW if raw in text]
    assert not shown, f"{name}: raw markup {shown} in the page's text"
    if name.startswith("notebooks/") and name[-2:] not in ("07",):
        assert static_page.locator("article img").count() >= 1, f"{name}: no figure"
