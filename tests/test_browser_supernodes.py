"""The explorer's supernode view in a real headless Chromium (issue 21): the graph view opens on the supernode level,
a click on a supernode diamond expands it into its members, a click on a listed route highlights it, "collapse
all" merges the groups back, and the grouping menu switches to layer × position cells or to single nodes. Uses tests/test_browser.py's server and page fixtures (one app server for the module)."""

from __future__ import annotations

import time

import pytest
from test_browser import CHROMIUM, page, server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                reason="chromium is not installed (apt-get install -y chromium)")


def _status(view) -> dict:
    status = view.locator("#status")
    return {k: int(status.get_attribute(f"data-{k}") or -1) for k in ("nodes", "markers", "groups", "expanded")}


def _wait_for(view, predicate, what: str, deadline_s: float = 30.0) -> dict:
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        now = _status(view)
        if predicate(now):
            return now
        time.sleep(0.2)
    raise AssertionError(f"the graph view never showed {what}; status {_status(view)}")


def test_supernode_expands_on_click_and_routes_highlight(page):  # noqa: F811
    view = page.frame_locator("iframe[title*=graph_view]")
    view.locator("#status").filter(has_text="showing").wait_for(timeout=60_000)
    before = _wait_for(view, lambda s: s["groups"] > 0, "a collapsed supernode")
    assert before["expanded"] == 0 and before["markers"] < before["nodes"]  # diamonds stand for several nodes
    frame = next(f for f in page.frames if "graph_view" in f.url)
    index = frame.evaluate("""() => document.querySelector('.js-plotly-plot').data
                               .findIndex(t => t.name === 'supernode')""")
    assert index >= 0
    diamond = view.locator(".js-plotly-plot .scatterlayer .trace").nth(index).locator("path.point").first
    diamond.click(force=True)
    after = _wait_for(view, lambda s: s["expanded"] == 1, "the clicked supernode expanded")
    assert after["groups"] == before["groups"] - 1 and after["markers"] > before["markers"]
    assert after["nodes"] == before["nodes"]  # the same pruned graph, drawn at a finer level
    # the routes under the plot: a click highlights one
    route = view.locator("#paths button.path").first
    assert "→" in route.inner_text()
    route.click()
    view.locator("#paths button.path.on").first.wait_for(timeout=10_000)
    view.locator("#collapse").click()
    _wait_for(view, lambda s: s["expanded"] == 0 and s["groups"] == before["groups"], "every supernode collapsed")
    # the coarser level: every layer × position cell one diamond; fewer markers than the supernode level
    view.locator("#grouping").select_option("cells")
    _wait_for(view, lambda s: s["markers"] < before["markers"], "the layer × position cells")
    view.locator("#grouping").select_option("none")
    _wait_for(view, lambda s: s["groups"] == 0 and s["markers"] == s["nodes"], "every node on its own")
    assert page.locator("text=Traceback").count() == 0


def test_a_supernode_added_on_the_page_is_drawn_by_the_view(page):  # noqa: F811
    """A supernode made in the subgraph tab is sent to the graph view and drawn there, named in a diamond's hover
    (it used to appear only in the tab's list)."""
    view = page.frame_locator("iframe[title*=graph_view]")
    view.locator("#status").filter(has_text="showing").wait_for(timeout=60_000)
    page.get_by_role("tab", name="subgraph", exact=True).click()
    page.get_by_label("supernode name").fill("my planted group")
    members = page.get_by_label("members")
    for _ in range(2):  # the first two features offered
        members.click()
        page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.get_by_role("button", name="add supernode").click()
    page.locator("strong:text-is('my planted group') >> visible=true").first.wait_for(timeout=30_000)
    page.get_by_role("tab", name="graph", exact=True).click()
    frame = next(f for f in page.frames if "graph_view" in f.url)
    deadline = time.time() + 30
    while time.time() < deadline:
        names = frame.evaluate("""() => (document.querySelector('.js-plotly-plot').data
                                   .find(t => t.name === 'supernode') || {hovertext: []}).hovertext""")
        if any("my planted group" in n for n in names):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"the view never drew the page's supernode; its supernodes: {names[:5]}")
    assert page.locator("text=Traceback").count() == 0
