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
