"""Lessons in a real browser: JupyterLab in headless Chromium runs them.

Lesson 2: the dashboard appears, a key press on the replica slider adds a replica, and the
chart shows it. Lesson 3: a static chart renders, and choosing another strategy in the
dashboard's dropdown changes the share chart."""
from __future__ import annotations

import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from browser import CHROMIUM_ARGS, chromium_path, jupyterlab

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
LESSON = "02_horizontal_vs_vertical.ipynb"
LESSON3 = "03_load_balancer_strategies.ipynb"
# Messages a browser prints for reasons that are not our page's fault.
BENIGN_CONSOLE = ("favicon", "Failed to load resource: the server responded with a status of 404")


@contextmanager
def lesson_page(tmp_path, lesson: str, shot: str):
    """JupyterLab in headless Chromium with `lesson` open; a screenshot lands in test-artifacts/ at the end."""
    from playwright.sync_api import sync_playwright
    executable = chromium_path()
    assert executable, ("Chromium is missing: `make test` installs it as root on Debian "
                        "(apt-get install chromium); elsewhere install Chromium and re-run.")
    # Serve a copy: JupyterLab autosaves outputs into the notebooks it runs.
    course = tmp_path / "course"
    shutil.copytree(ROOT / "lessons", course / "lessons")
    with jupyterlab(course, tmp_path) as (base, token), sync_playwright() as play:
        context = play.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=executable, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1500, "height": 1100})
        page = context.pages[0] if context.pages else context.new_page()
        page.console_errors = []
        page.on("console", lambda msg: msg.type == "error" and page.console_errors.append(msg.text))
        page.on("pageerror", lambda exc: page.console_errors.append(str(exc)))
        page.goto(f"{base}/lab/tree/lessons/{lesson}?token={token}")
        try:
            yield page
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / shot), full_page=False)
            context.close()


@pytest.fixture
def page(tmp_path):
    with lesson_page(tmp_path, LESSON, "lesson02-final.png") as page:
        yield page


@pytest.fixture
def page3(tmp_path):
    with lesson_page(tmp_path, LESSON3, "lesson03-final.png") as page:
        yield page


def wait_idle(page, timeout_s: float) -> None:
    # The status bar, not the toolbar's circle, tells reliably when the kernel is idle.
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=timeout_s * 1000)


def share_legend(dashboard) -> set[str]:
    return {text for text in dashboard.locator(".js-plotly-plot .legendtext").all_text_contents()}


def test_lesson2_dashboard_reacts_to_the_replica_slider(page):
    wait_idle(page, 90)
    # The dashboard needs only the stack: run the first cell, not the experiments above the
    # dashboard (nbval runs those; lesson 3's test sees a static chart render in the page).
    run_cell(page, "lab = start(")
    page.get_by_text("lesson02: the stack is at its starting topology").first.wait_for(timeout=120_000)
    wait_idle(page, 60)

    dash_cell = page.locator(".jp-CodeCell", has_text="live.dashboard(").first
    dash_cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    slider = dash_cell.locator(".widget-slider .noUi-handle").first
    slider.wait_for(timeout=60_000)
    deadline = time.monotonic() + 30
    while "app-1" not in share_legend(dash_cell) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "app-1" in share_legend(dash_cell), "the share chart never showed app-1's traffic"

    slider.focus()
    moved_at = time.monotonic()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")          # 1 -> 3 replicas
    while "app-3" not in share_legend(dash_cell) and time.monotonic() < moved_at + 20:
        time.sleep(0.1)
    reaction = time.monotonic() - moved_at
    ARTIFACTS.mkdir(exist_ok=True)
    dash_cell.screenshot(path=str(ARTIFACTS / "lesson02-dashboard.png"))
    assert {"app-2", "app-3"} <= share_legend(dash_cell), f"chart after the slider move: {share_legend(dash_cell)}"
    print(f"slider key press -> app-3 in the share chart: {reaction:.2f} s")

    # The dashboard's own cells, in the browser: the slider moved from code and awaited (top-level
    # await in the page's kernel), its claim checked, the dashboard stopped. The rest of the
    # lesson has no widget: nbval runs it (running it here again cost ~45 s of every make test).
    stop_cell = page.locator(".jp-CodeCell", has_text="dash.stop()").first
    first = page.locator(".jp-CodeCell", has_text="dash.controls[").first
    first.locator(".jp-InputArea-editor").click()
    presses = page.evaluate(CELLS_FROM_TO_JS, ["dash.controls[", "dash.stop()"])
    assert presses and presses >= 3, f"the dashboard's cells are not where the test expects them: {presses}"
    for _ in range(presses):
        page.keyboard.press("Shift+Enter")             # run the cell, move to the next one
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = lambda: [t for t in errors.all_text_contents() if "Error" in t or "Traceback" in t]  # noqa: E731
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not re.fullmatch(r"\[\d+\]:", prompt(stop_cell)) and not tracebacks():
        time.sleep(0.2)
    wait_idle(page, 60)
    assert not tracebacks(), tracebacks()[0][:2000]
    assert re.fullmatch(r"\[\d+\]:", prompt(stop_cell)), f"dash.stop() never ran: {prompt(stop_cell)!r}"
    assert page.get_by_text("Loading widget").count() == 0, "a widget never rendered"
    console = [m for m in page.console_errors if not any(b in m for b in BENIGN_CONSOLE)]
    assert not console, console


CELLS_FROM_TO_JS = """([first, last]) => {
    // How many Shift+Enter presses run every cell from the one holding `first` to the one holding `last`.
    const cells = [...document.querySelectorAll('.jp-Notebook .jp-Cell')];
    const at = text => cells.findIndex(c => c.classList.contains('jp-CodeCell') && c.textContent.includes(text));
    const a = at(first), b = at(last);
    return a >= 0 && b >= a ? b - a + 1 : null;
}"""


def run_cell(page, text: str) -> None:
    """Run the first code cell holding `text` (Shift+Enter in its editor)."""
    page.locator(".jp-CodeCell", has_text=text).first.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def prompt(cell) -> str:
    return cell.locator(".jp-InputPrompt").first.inner_text().strip()


LAST_SHARES_JS = """(title) => {
    for (const el of document.querySelectorAll('.js-plotly-plot')) {
        const t = el.layout && el.layout.title;
        const text = t && (t.text !== undefined ? t.text : t);
        if (String(text).includes(title)) {
            const out = {};
            for (const d of el.data || []) {
                const ys = (d.y || []).filter(v => v !== null && v !== undefined);
                if (ys.length) out[d.name] = ys[ys.length - 1];
            }
            return out;
        }
    }
    return null;
}"""


def last_shares(page) -> dict:
    """Each replica's latest share (%) as the share chart draws it, read from the plotly figure in the page."""
    return page.evaluate(LAST_SHARES_JS, "Share of traffic") or {}


def test_lesson3_strategy_dropdown_changes_the_share_chart(page3):
    page = page3
    wait_idle(page, 90)
    run_cell(page, "lab = start(")
    page.get_by_text("lesson03: the stack is at its starting topology").first.wait_for(timeout=120_000)
    wait_idle(page, 60)
    # A static figure (plotly's renderer in JupyterLab, not a widget): the keys-moved chart, a
    # 2-second cell. The dashboard cell below resets the strategy it leaves behind.
    run_cell(page, "moved_when_a_replica_joins(")
    page.get_by_text("who has to move?").first.wait_for(timeout=60_000)
    wait_idle(page, 60)

    dash_cell = page.locator(".jp-CodeCell", has_text="live.dashboard(").first
    dash_cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    dropdown = dash_cell.locator(".widget-dropdown select").first
    dropdown.wait_for(timeout=60_000)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shares = last_shares(page)
        if len(shares) == 4 and all(v > 5 for v in shares.values()):
            break
        time.sleep(0.2)
    assert len(shares) == 4 and all(v > 5 for v in shares.values()), f"least_conn should spread the load: {shares}"

    # ip_hash: every request of this load comes from 127.0.0.1, one client, so one replica takes all.
    chosen_at = time.monotonic()
    dropdown.select_option("ip_hash")
    changed_s = None          # first redraw showing one replica clearly ahead
    while time.monotonic() < chosen_at + 20:
        shares = last_shares(page)
        if shares and changed_s is None and max(shares.values()) > 50:
            changed_s = time.monotonic() - chosen_at
        if shares and max(shares.values()) > 90:
            break
        time.sleep(0.05)
    settled_s = time.monotonic() - chosen_at
    ARTIFACTS.mkdir(exist_ok=True)
    dash_cell.screenshot(path=str(ARTIFACTS / "lesson03-dashboard.png"))
    assert max(shares.values()) > 90, f"under ip_hash one client lands on one replica: {shares}"
    print(f"strategy dropdown -> share chart changed (one replica > 50%) in {changed_s:.2f} s, "
          f"> 90% in {settled_s:.2f} s (the other replicas first finish their long requests)")
    assert changed_s < 2.0, changed_s

    console = [m for m in page.console_errors if not any(b in m for b in BENIGN_CONSOLE)]
    assert not console, console
