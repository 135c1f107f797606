"""Drag the explorers' sliders with the mouse in JupyterLab and check that caption and figure follow.

This is what a student does, end to end: kernel, ipywidgets comms, the labextension and the library callback.
MPN_BROWSER_NOTEBOOKS points the tests at another folder of notebooks with the same names (see conftest.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

pytestmark = pytest.mark.browser

REPOSITORY_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
ATTENTION_NOTEBOOK = "04_attention.ipynb"
EMBEDDINGS_NOTEBOOK = "05_embeddings_over_training.ipynb"
KERNEL_START_TIMEOUT_MS = 120 * 1000
KERNEL_IDLE = re.compile(r"^(?!No Kernel).+ \| Idle$")
# A cell may train models when the run cache is empty, on two CPU cores.
RUN_TIMEOUT_MS = 15 * 60 * 1000
# After the mouse is released the kernel redraws a matplotlib figure before the widgets change.
UPDATE_TIMEOUT_MS = 30 * 1000
# Ends the wait for Run All: no cell queued or running ([*]) is left, or a dialog (e.g. the kernel died) is open.
RUN_ENDED = """() => document.querySelector('.jp-Dialog') !== null ||
    ![...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].some(p => p.textContent.includes('*'))"""


def click_menu(page: Page, menu: str, item: str) -> None:
    page.get_by_role("menuitem", name=menu, exact=True).click()
    page.get_by_role("menuitem", name=item, exact=True).click()


def run_all_cells(page: Page, url: str) -> Locator:
    """Open the notebook at ``url``, run every cell and return its panel once the kernel is idle again."""
    page.goto(url)
    panel = page.locator(".jp-NotebookPanel")
    # The status bar reads "<kernel> | <state>" from one source; the toolbar's indicator says idle even
    # before a kernel is attached, and Run All then opens a "Select Kernel" dialog instead of running.
    kernel_status = page.get_by_title(re.compile("^Change kernel for"))
    expect(kernel_status).to_have_text(KERNEL_IDLE, timeout=KERNEL_START_TIMEOUT_MS)
    # The committed notebooks carry execution counts; cleared prompts read [ ], so afterwards a number in
    # every prompt means this run executed every cell, and a [ ] means it stopped early.
    click_menu(page, "Edit", "Clear Outputs of All Cells")
    click_menu(page, "Run", "Run All Cells")  # marks every code cell [*] at once
    page.wait_for_function(RUN_ENDED, timeout=RUN_TIMEOUT_MS)
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        pytest.fail(f"JupyterLab opened a dialog while running the notebook: {dialog.inner_text()}")
    prompts = panel.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    unrun = [i for i, prompt in enumerate(prompts) if not re.fullmatch(r"\[\d+\]:", prompt.strip())]
    if unrun and unrun[0] == 0:
        pytest.fail(f"Run All did not run the first code cell (prompts: {prompts})")
    if unrun:
        last_run = panel.locator(".jp-CodeCell").nth(unrun[0] - 1)
        pytest.fail(f"Run All stopped before code cell {unrun[0] + 1} of {len(prompts)}; the cell before it "
                    f"printed:\n{last_run.locator('.jp-OutputArea').inner_text()[-3000:]}")
    expect(kernel_status).to_have_text(KERNEL_IDLE, timeout=UPDATE_TIMEOUT_MS)
    return panel


def drag_slider(explorer: Locator, description: str, to: str) -> str:
    """Drag the handle of the slider labelled ``description`` past its track's "start" or "end"; return the readout."""
    page = explorer.page
    label = page.locator(".widget-label", has_text=re.compile(f"^{description}$"))
    slider = explorer.locator(".widget-slider").filter(has=label)
    handle, track = slider.locator(".noUi-handle"), slider.locator(".noUi-base")
    low, high = handle.get_attribute("aria-valuemin"), handle.get_attribute("aria-valuemax")
    assert low != high, f"the {description} slider offers a single value, so dragging it cannot change anything"
    handle.scroll_into_view_if_needed()
    grip, rail = handle.bounding_box(), track.bounding_box()
    y = grip["y"] + grip["height"] / 2
    page.mouse.move(grip["x"] + grip["width"] / 2, y)
    page.mouse.down()
    # In steps, as a hand would, and beyond the track: noUiSlider follows pointer moves and stops at the end.
    page.mouse.move(rail["x"] - 30 if to == "start" else rail["x"] + rail["width"] + 30, y, steps=10)
    page.mouse.up()
    expect(handle, f"the drag did not take the {description} slider to its {to}").to_have_attribute(
        "aria-valuenow", low if to == "start" else high)
    return slider.locator(".widget-readout").inner_text().strip()


def caption_and_figure(explorer: Locator) -> tuple[Locator, Locator]:
    expect(explorer).to_be_visible(timeout=UPDATE_TIMEOUT_MS)
    caption, figure = explorer.locator(".widget-html-content"), explorer.locator("img.widget-image")
    # ipywidgets shows each new PNG under a fresh blob: URL, so a changed src means a redrawn figure.
    expect(figure).to_have_attribute("src", re.compile("^blob:"))
    return caption, figure


def drag_and_check_redraw(explorer: Locator, slider: str, caption_shows) -> None:
    """Drag ``slider`` to its start, then to its end; after each drag the caption must show the value
    (``caption_shows(value)`` gives the matcher), and after the second the figure must be redrawn.

    The first drag is needed because a notebook may leave the slider anywhere; waiting for its caption
    also settles the figure compared against (the explorers write the caption after the image).
    """
    caption, figure = caption_and_figure(explorer)
    first = drag_slider(explorer, slider, to="start")
    caption_shows(expect(caption, f"the caption did not move to {slider} {first}"), first)
    figure_before = figure.get_attribute("src")

    last = drag_slider(explorer, slider, to="end")

    caption_shows(expect(caption, f"the caption did not move to {slider} {last}"), last)
    expect(figure, "the figure was not redrawn").not_to_have_attribute("src", figure_before, timeout=UPDATE_TIMEOUT_MS)


def test_dragging_the_head_slider_redraws_the_attention_explorer(page, jupyter_lab):
    panel = run_all_cells(page, jupyter_lab.open(ATTENTION_NOTEBOOK))
    explorer = panel.locator(".attention-explorer").first
    drag_and_check_redraw(explorer, "head", lambda check, head: check.to_contain_text(
        f"head {head} of", timeout=UPDATE_TIMEOUT_MS))


def test_dragging_the_epoch_slider_redraws_the_embedding_explorer(page, jupyter_lab):
    panel = run_all_cells(page, jupyter_lab.open(EMBEDDINGS_NOTEBOOK))
    explorer = panel.locator(".epoch-explorer").first
    drag_and_check_redraw(explorer, "epoch", lambda check, epoch: check.to_have_text(
        re.compile(rf"^epoch {epoch}\b"), timeout=UPDATE_TIMEOUT_MS))
    # on a 1400 × 1000 screen: the map at its own resolution (not stretched), slider and map seen together
    figure = explorer.locator("img.widget-image")
    natural, shown = figure.evaluate("img => [img.naturalWidth, img.getBoundingClientRect().width]")
    assert abs(natural - shown) <= 1, f"the figure is drawn at {shown} px, its image is {natural} px wide"
    assert explorer.bounding_box()["height"] <= 1000 - 60, "slider and map do not fit on one screen"


NOTEBOOKS = sorted(path.name for path in (REPOSITORY_NOTEBOOKS).glob("[0-9][0-9]_*.ipynb"))
# What JupyterLab shows where it failed to render something: a MathJax error, a widget it could not
# display, an error output.
RENDERING_ERRORS = """() => {
    const problems = [];
    document.querySelectorAll('mjx-merror, .MathJax_Error').forEach(e => problems.push('math: ' + e.textContent));
    document.querySelectorAll('.jp-RenderedMarkdown').forEach(e => {
        if (e.textContent.includes('Math input error')) problems.push('math input error in: ' +
            e.textContent.slice(0, 80));
    });
    document.querySelectorAll('.jp-OutputArea-output').forEach(e => {
        if (e.textContent.includes('Error displaying widget')) problems.push('widget: ' + e.textContent.slice(0, 120));
    });
    document.querySelectorAll('[data-mime-type="application/vnd.jupyter.error"]').forEach(
        e => problems.push('error output: ' + e.textContent.slice(0, 200)));
    return problems;
}"""


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_a_committed_notebook_renders_without_errors(page, jupyter_lab, notebook):
    page.goto(jupyter_lab.open(notebook))
    panel = page.locator(".jp-NotebookPanel")
    expect(panel.locator(".jp-Cell").first).to_be_visible(timeout=KERNEL_START_TIMEOUT_MS)
    # every markdown cell rendered, and MathJax done with the formulas (it typesets after rendering)
    page.wait_for_function("() => document.querySelectorAll('.jp-MarkdownCell:not(.jp-mod-rendered)').length === 0",
                           timeout=UPDATE_TIMEOUT_MS)
    page.wait_for_timeout(3000)
    problems = page.evaluate(RENDERING_ERRORS)
    assert not problems, f"{notebook}: {problems}"
