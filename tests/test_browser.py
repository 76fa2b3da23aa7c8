"""End to end in a real headless Chromium (Playwright against the Debian chromium): start the app, type a prompt,
trace, select a node (from the list, and by clicking it in the graph view), check the inspector, save a screenshot;
move the graph view's threshold and the sidebar's and check each follows the other."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APP = Path(__file__).resolve().parent.parent / "app.py"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
                             "--server.headless", "true", "--browser.gatherUsageStats", "false",
                             "--server.fileWatcherType", "none"], cwd=APP.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + proc.stdout.read().decode()[-2000:])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def page(server):
    """A Chromium page on the app, once the example graph is traced (it is traced on open)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(server)
        page.get_by_text("pruned to").first.wait_for(timeout=120_000)
        yield page
        browser.close()


def _show_node_tab(page, deadline_s: float = 60.0) -> None:
    """Open the "node" tab and wait until its inspector is visible. A click on the canvas or the list starts a
    rerun; a tab clicked while that rerun is in flight can be drawn again unselected, so click until it shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    visible = page.locator("strong:text-is('incoming edges') >> visible=true")
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        page.get_by_role("tab", name="node", exact=True).click()
        try:
            visible.first.wait_for(timeout=3_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError("the node tab never showed the inspector ('incoming edges')")


def test_trace_select_and_inspect_in_chromium(page, tmp_path):
    assert page.locator("text=Traceback").count() == 0
    prompt = page.get_by_role("textbox", name="prompt")
    prompt.fill("When Anna and David went to the park, David gave a book to")
    page.get_by_role("textbox", name="token", exact=True).fill("Anna")
    page.get_by_role("textbox", name="minus token").fill("David")
    page.get_by_role("button", name="trace").click()
    page.get_by_test_id("stMarkdownContainer").filter(has_text="pruned to").filter(
        has_text="When Anna and David went to the park").first.wait_for(timeout=60_000)  # the header
    # select a node through the list (the next test clicks one in the graph view)
    page.get_by_label("select a node").click()
    page.keyboard.type("M3#")  # a layer-3 transcoder feature
    page.keyboard.press("Enter")
    _show_node_tab(page)
    page.get_by_text("activation on every token of the prompt").first.wait_for(timeout=30_000)
    page.get_by_text("promotes:").first.wait_for(timeout=30_000)  # its dashboard
    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.locator("text=Traceback").count() == 0


def _view(page):
    """The graph view component's frame, once it has drawn the graph."""
    frame = page.frame_locator("iframe[title*=graph_view]")
    frame.locator("#status").filter(has_text="showing").wait_for(timeout=60_000)
    return frame


def test_clicking_a_node_in_the_graph_canvas_selects_it(page):
    """A click on a plotted feature node (not the list) selects it: the node tab shows its inspector."""
    view = _view(page)
    view.locator(".js-plotly-plot .scatterlayer path.point").first.wait_for(timeout=60_000)
    # the index of the trace holding MLP features, read from the plot's own data
    frame = next(f for f in page.frames if "graph_view" in f.url)
    index = frame.evaluate("""() => document.querySelector('.js-plotly-plot').data
                               .findIndex(t => t.name === 'transcoder feature')""")
    assert index >= 0
    point = view.locator(".js-plotly-plot .scatterlayer .trace").nth(index).locator("path.point").first
    point.click(force=True)
    _show_node_tab(page)
    heading = page.locator("h3").filter(has_text=re.compile(r"^M\d+#\d+@")).first
    heading.wait_for(timeout=30_000)  # the inspector shows the clicked MLP feature
    assert page.locator("text=Traceback").count() == 0


def test_view_thresholds_reprune_in_the_browser_and_reach_the_page(page):
    """Moving the view's node threshold redraws the graph in the browser (its count changes before any rerun can
    finish), then the sidebar slider and the page header follow; a sidebar move is adopted by the view."""
    view = _view(page)
    status = view.locator("#status")
    before = int(status.get_attribute("data-nodes"))
    header = page.get_by_text("pruned to").first
    assert f"pruned to {before:,} /" in header.inner_text()  # the browser's pruning equals the server's
    view.locator("#node").focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")  # 0.80 -> 0.70
    view.locator("#node_v").filter(has_text="0.70").wait_for(timeout=5_000)
    deadline = time.time() + 60
    while int(status.get_attribute("data-nodes")) == before and time.time() < deadline:
        time.sleep(0.05)
    after = int(status.get_attribute("data-nodes"))
    assert after < before
    page.get_by_text(f"pruned to {after:,} /").first.wait_for(timeout=60_000)  # the page reran with 0.70
    thumb = page.get_by_test_id("stSliderThumbValue").first  # the sidebar's node threshold
    assert thumb.inner_text() == "0.70"
    slider = page.get_by_role("slider").nth(0)
    slider.focus()
    page.keyboard.press("End")  # the sidebar's node threshold to 1.0: the view adopts it
    view.locator("#node_v").filter(has_text="1.00").wait_for(timeout=60_000)
    deadline = time.time() + 60
    while int(status.get_attribute("data-nodes")) <= before and time.time() < deadline:
        time.sleep(0.05)
    final = int(status.get_attribute("data-nodes"))
    assert final > before
    page.get_by_text(f"pruned to {final:,} /").first.wait_for(timeout=60_000)
    assert page.locator("text=Traceback").count() == 0


# -- issue 16 --------------------------------------------------------------------------------------------------


def _open(browser, server):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(server)
    page.get_by_text("pruned to").first.wait_for(timeout=120_000)
    return page


def _dashboard_shows(page) -> None:
    """Select a layer-3 transcoder feature from the list; its dashboard must show (not an SQLite error)."""
    page.get_by_label("select a node").click()
    page.keyboard.type("M3#")
    page.keyboard.press("Enter")
    _show_node_tab(page)
    page.get_by_text("promotes:").first.wait_for(timeout=60_000)
    assert page.get_by_text("ProgrammingError").count() == 0 and page.locator("text=Traceback").count() == 0
    # the contexts' activating tokens, highlighted (no **[...]** markers)
    page.locator("mark >> visible=true").first.wait_for(timeout=30_000)
    assert page.get_by_text("**[").count() == 0


def test_dashboards_in_tabs_one_after_another_and_at_once(server):
    """Issue 16 item 1: every later tab showed `ProgrammingError: SQLite objects created in a thread can only be
    used in that same thread` once the first had closed. Two tabs one after the other (the first closed), then two
    open at once, each with a dashboard."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        first = _open(browser, server)
        _dashboard_shows(first)
        first.close()
        second = _open(browser, server)
        _dashboard_shows(second)
        second.reload()
        second.get_by_text("pruned to").first.wait_for(timeout=120_000)
        third = _open(browser, server)
        _dashboard_shows(second)
        _dashboard_shows(third)
        browser.close()


def test_upload_in_the_browser_loads_once_and_settles(page):
    """Issue 16 item 16: an uploaded graph reran the page endlessly. It opens once and the page goes idle."""
    page.get_by_role("tab", name="files", exact=True).click()
    page.locator("input[type=file]").set_input_files(str(APP.parent / "data" / "graphs" / "two_hop_lyon.json"))
    page.get_by_text("opened two_hop_lyon.json").first.wait_for(timeout=60_000)
    page.get_by_test_id("stMarkdownContainer").filter(has_text="pruned to").filter(
        has_text="Lyon is a city in France").first.wait_for(timeout=60_000)  # the header
    running = page.get_by_test_id("stStatusWidget")
    deadline, idle_since = time.time() + 30, None
    while time.time() < deadline:  # idle (no "running" indicator) for 3 s in a row
        if running.count() and running.first.is_visible():
            idle_since = None
        elif idle_since is None:
            idle_since = time.time()
        elif time.time() - idle_since > 3:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the page kept rerunning after the upload")
    assert page.get_by_role("textbox", name="prompt").input_value().startswith("Lyon is a city")
    assert page.locator("text=Traceback").count() == 0
    # the graph view was drawn while its tab was hidden: shown now, it has its full height (it stayed 0 px)
    page.get_by_role("tab", name="graph", exact=True).click()
    frame = page.locator("iframe[title*=graph_view]").first
    deadline = time.time() + 30
    while time.time() < deadline and (frame.bounding_box() or {}).get("height", 0) < 300:
        time.sleep(0.2)
    assert (frame.bounding_box() or {}).get("height", 0) >= 300, frame.bounding_box()
    _view(page)  # and the graph is drawn in it


def test_trace_never_shows_the_old_graph_under_the_new_title(page):
    """Issue 16 item 3: after a trace the old graph stayed under the new title for ~2 s. While the header shows the
    new prompt, the graph view shows the new graph or a loading state, never the old one."""
    view = _view(page)
    status = view.locator("#status")
    old = status.get_attribute("data-graph")
    assert old
    page.get_by_role("textbox", name="prompt").fill("When Anna and David went to the park, David gave a book to")
    page.get_by_role("textbox", name="token", exact=True).fill("Anna")
    page.get_by_role("textbox", name="minus token").fill("David")
    page.wait_for_timeout(500)
    page.get_by_role("button", name="trace").click()
    frame = next(f for f in page.frames if "graph_view" in f.url)
    deadline = time.time() + 60
    while time.time() < deadline:
        header = page.get_by_text("pruned to").first.inner_text()
        shown = frame.evaluate("() => document.getElementById('status').dataset.graph || ''")
        if "Anna and David" in header:
            assert shown != old, "the old graph is drawn under the new title"
            if shown:
                break
        time.sleep(0.01)
    else:
        raise AssertionError("the new graph was never drawn")


def test_a_bad_target_keeps_the_graph_view_and_the_sidebar_fits(page):
    """Issue 16 item 3: a target that is not one token blanked the graph area (the error shifted the view, which
    was drawn anew); the trace button was below the fold at 1000 px; Enter in the intervene picker chose
    "Select all"."""
    page.set_viewport_size({"width": 1600, "height": 1000})
    trace = page.get_by_role("button", name="trace")
    box = trace.bounding_box()
    assert box is not None and box["y"] + box["height"] <= 1000, box  # on screen without scrolling
    _view(page)
    frame = next(f for f in page.frames if "graph_view" in f.url)
    frame.evaluate("() => { window.sameDocument = true; }")
    page.get_by_role("textbox", name="token", exact=True).fill("Zorblax Quux")
    page.wait_for_timeout(500)
    trace.click()
    page.get_by_text("not a single token").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    frame = next(f for f in page.frames if "graph_view" in f.url)
    assert frame.evaluate("() => window.sameDocument === true")  # the same view, not drawn anew
    assert "showing" in frame.evaluate("() => document.getElementById('status').textContent")
    page.get_by_role("tab", name="intervene", exact=True).click()
    picker = page.get_by_label("features")
    picker.click()
    page.keyboard.type("M")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    chips = page.get_by_test_id("stMultiSelect").filter(has_text="features").locator("[data-tag]")
    chips.first.wait_for(timeout=10_000)
    assert chips.count() == 1  # one feature, not all of them
    assert page.locator("text=Traceback").count() == 0
