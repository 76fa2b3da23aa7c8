"""The explorer's "why this attention" panel (issue 18 item 5) through Streamlit's AppTest, and once in Chromium: what
it shows equals `explain_attention` computed here independently (its own model, its own run of the prompt), its
defaults come from the graph's per-head edge parts, its jump selects the node, and graphs it cannot explain
(aggregated, autograd) get a message instead of a traceback."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import transformer_lens  # noqa: F401  imported before AppTest's script thread first imports torch (see test_app.py)

pytest.importorskip("streamlit")
import streamlit  # noqa: E402
import test_browser  # noqa: E402
from test_browser import CHROMIUM, _show_node_tab  # noqa: E402

server, page = test_browser.server, test_browser.page  # the browser fixtures (a server for this module)

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def organism_rm():
    """The organism's replacement model with every dictionary, made here (not the app's cached one)."""
    from circuits import load_dictionaries, load_model
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism")
    return ReplacementModel(model, load_dictionaries("organism", model), name="organism")


def _shown(at):
    """The pruned graph the page shows."""
    from circuits import prune

    return prune(at.session_state["graph"], at.slider(key="node_threshold").value,
                 at.slider(key="edge_threshold").value).graph


def _pick(at, node) -> None:
    from circuits import export

    at.selectbox(key="node_pick").set_value(export.node_id(node)).run()
    assert not at.exception, [e.value for e in at.exception]


def _frame(at, first_column: str):
    """The dataframe whose first column is `first_column` (the panel's tables are told apart by their columns)."""
    found = [d.value for d in at.dataframe if list(d.value.columns)[:1] == [first_column]]
    assert found, [list(d.value.columns) for d in at.dataframe]
    return found


def _ident(n, pos: int) -> str:
    from circuits import export

    return f"const@{pos}" if n is None else export.node_id(n)


def _pattern_chart(at) -> list[float]:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    (spec,) = [s for s in specs if "pattern row of" in json.dumps(s.get("layout", {}).get("title", ""))]
    return spec["data"][0]["y"]


def test_the_panel_shows_explain_attention_of_the_default_head_and_key(app, organism_rm):
    """On the example IOI graph, the last-position attention feature of layer 3: the panel's head and key are the
    graph's largest per-head edge part (`default_route`), and its pattern row, top pairs (without and with constant
    parts), per-side marginals and contrast nets equal `explain_attention` run here on the graph's prompt; the shown
    marginals with their constant parts sum to the score."""
    from circuits.attribution.head_routes import default_route
    from circuits.attribution.qk import explain_attention

    at = app
    full, g = at.session_state["graph"], _shown(at)
    node = next(n for n in reversed(g.nodes) if n.kind == "attn_feature" and n.layer == 3)
    _pick(at, node)
    assert not at.error, [e.value for e in at.error]
    assert any(m.value == "#### why this attention" for m in at.markdown)
    head, key = default_route(full, node)
    assert (at.selectbox(key="qk_head").value, at.selectbox(key="qk_key").value) == (head, key)
    assert at.selectbox(key="qk_versus").value == -1 and at.toggle(key="qk_constants").value is False

    cache = organism_rm.run(PROMPT)
    qk = explain_attention(organism_rm, cache, node.layer, head, node.pos, key)
    assert _pattern_chart(at) == pytest.approx(qk.pattern.tolist(), abs=1e-6)
    assert len(_pattern_chart(at)) == node.pos + 1

    (pairs,) = _frame(at, "query")
    want = qk.top(10, constants=False)
    assert list(pairs["query"]) == [_ident(t.query, node.pos) for t in want]
    assert list(pairs["key"]) == [_ident(t.key, t.key_pos) for t in want]
    assert list(pairs["contribution"]) == pytest.approx([t.contribution for t in want], rel=1e-4, abs=1e-6)
    assert "const@" not in " ".join(pairs["query"]) + " ".join(pairs["key"])

    q_side, k_side = _frame(at, "node")
    for shown, want in ((q_side, qk.query_marginals()), (k_side, qk.key_marginals())):
        assert list(shown.columns)[:2] == ["node", "contribution"]  # a long label column hid it off screen
        assert list(shown["node"]) == [_ident(m.node, m.pos) for m in want]
        assert list(shown["contribution"]) == pytest.approx([m.contribution for m in want], rel=1e-4, abs=1e-6)
        consts = shown[shown["node"].str.startswith("const@")]
        assert len(consts) >= 1  # the constant parts are shown: with the sources they sum to the score
        assert float(shown["contribution"].sum()) == pytest.approx(qk.score, rel=1e-4, abs=1e-4)
    header = next(m.value for m in at.markdown if m.value.startswith("**score L3."))
    assert f"{qk.value:+.4f}" in header

    # the constant parts in the pairs, on request
    at.toggle(key="qk_constants").set_value(True).run()
    (pairs,) = _frame(at, "query")
    with_constants = qk.top(10)
    assert list(pairs["query"]) == [_ident(t.query, node.pos) for t in with_constants]
    assert list(pairs["contribution"]) == pytest.approx([t.contribution for t in with_constants], rel=1e-4, abs=1e-6)

    # a contrast with a second key: the value, the marginals and the net per source over both keys
    other = next(p for p in range(node.pos + 1) if p != key and p > 0)
    at.selectbox(key="qk_versus").set_value(other).run()
    assert not at.exception and not at.error
    qk2 = explain_attention(organism_rm, cache, node.layer, head, node.pos, (key, other))
    q_side, _ = _frame(at, "node")
    assert float(q_side["contribution"].sum()) == pytest.approx(qk2.score, rel=1e-4, abs=1e-4)
    (net,) = _frame(at, "key-side source")
    want_net = qk2.key_net()
    assert list(net["key-side source"]) == [n.name for n in want_net]
    assert list(net["net"]) == pytest.approx([n.contribution for n in want_net], rel=1e-4, abs=1e-6)
    assert list(net[f"at {key}"] + net[f"at {other}"]) == pytest.approx(list(net["net"]), abs=1e-5)

    # the first-order pattern change instead of the score (the key side then spans every position ≤ the query)
    at.radio(key="qk_quantity").set_value("pattern").run()
    qk3 = explain_attention(organism_rm, cache, node.layer, head, node.pos, (key, other), quantity="pattern")
    header = next(m.value for m in at.markdown if m.value.startswith("**pattern (first order) L3."))
    assert f"{qk3.value:+.4f}" in header
    _, k_side = _frame(at, "node")
    assert set(k_side["pos"]) == set(range(node.pos + 1))
    assert float(k_side["contribution"].sum()) == pytest.approx(qk3.value, rel=1e-4, abs=1e-5)
    at.radio(key="qk_quantity").set_value("score").run()

    # another head: its own strongest key; the results are kept per (graph, head, query, keys) in the session
    from circuits.attribution.head_routes import head_shares

    shares = head_shares(full, node)
    other_head = (head + 1) % shares.shape[0]
    at.selectbox(key="qk_versus").set_value(-1).run()
    at.selectbox(key="qk_head").set_value(other_head).run()
    assert at.selectbox(key="qk_key").value == int(shares[other_head].argmax())
    results = at.session_state["qk_store"]["results"]
    assert {(node.layer, head, node.pos, (key,), "score"), (node.layer, head, node.pos, (key, other), "score"),
            (node.layer, other_head, node.pos, (int(shares[other_head].argmax()),), "score")} <= set(results)


def test_starting_from_an_incoming_edge_explains_its_strongest_head(app, organism_rm):
    """"On an edge through a head": choosing one of the feature's incoming edges explains the head carrying most
    of it, from the feature's position to the edge source's position — the value shown is `explain_attention`'s."""
    from circuits.attribution.head_routes import edge_routes
    from circuits.attribution.qk import explain_attention

    at = app
    full, g = at.session_state["graph"], _shown(at)
    node = next(n for n in reversed(g.nodes) if n.kind == "attn_feature" and n.layer == 3)
    _pick(at, node)
    routes = edge_routes(full, node, 20)
    i = next(i for i, r in enumerate(routes) if r.source.pos != at.selectbox(key="qk_key").value)
    at.selectbox(key="qk_edge").set_value(i).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    r = routes[i]
    assert (at.selectbox(key="qk_head").value, at.selectbox(key="qk_key").value) == (r.head, r.source.pos)
    qk = explain_attention(organism_rm, organism_rm.run(PROMPT), node.layer, r.head, node.pos, r.source.pos)
    header = next(m.value for m in at.markdown if m.value.startswith(f"**score L{node.layer}.H{r.head} "))
    assert f"{qk.value:+.4f}" in header and f"{node.pos}→{r.source.pos}" in header
    assert _pattern_chart(at) == pytest.approx(qk.pattern.tolist(), abs=1e-6)
    at.selectbox(key="qk_head").set_value((r.head + 1) % full.metadata["n_heads"]).run()  # by hand: no edge
    assert at.selectbox(key="qk_edge").value == -1 and not at.exception


def test_go_to_a_node_selects_it_in_the_inspector(app, monkeypatch):
    """The panel's "select in the inspector" selects the chosen node: the inspector shows it, and the node list
    follows, without Streamlit's "created with a default value but also had its value set via the Session State
    API" warning (the list is reset, not set; the panel's widgets take their values from the session state only)."""
    import logging

    from streamlit.elements.lib import policies

    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    records: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Catch()
    logging.getLogger(policies._LOGGER.name).addHandler(handler)
    try:
        _go_to(app)
    finally:
        logging.getLogger(policies._LOGGER.name).removeHandler(handler)
    assert not [r for r in records if "created with a default value" in r], records


def _go_to(at) -> None:
    g = _shown(at)
    node = next(n for n in reversed(g.nodes) if n.kind == "attn_feature" and n.layer == 3)
    _pick(at, node)
    goto = at.selectbox(key="qk_goto")
    target = goto.options[1] if len(goto.options) > 1 else goto.options[0]
    target_id = target.split(" — ")[0]
    goto.set_value(target_id).run()
    at.button(key="qk_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    from circuits import export

    assert export.node_id(at.session_state["selected"]) == target_id
    assert at.subheader[0].value.startswith(target_id) or at.subheader[0].value == export.node_label(
        at.session_state["graph"], at.session_state["selected"])
    if not target_id.startswith("E#"):
        assert at.selectbox(key="node_pick").value == target_id


def test_an_aggregated_study_graph_gets_a_message(app):
    """An aggregated case-study circuit has no single prompt: the panel says so (no traceback, no error)."""
    at = app
    at.sidebar.radio(key="page").set_value("case studies").run()
    options = at.selectbox(key="study_pick").options
    at.selectbox(key="study_pick").set_value(next(o for o in options if o.startswith("ioi "))).run()
    at.button(key="study_open").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["graph"].metadata.get("aggregated")
    node = next(n for n in _shown(at).nodes if n.kind == "attn_feature")
    _pick(at, node)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("aggregates" in i.value and "one prompt" in i.value for i in at.info)
    assert "qk_head" not in [w.key for w in at.selectbox]  # no head picker: nothing was run


class _Upload:
    """What `st.file_uploader` returns; the same object on every rerun, as the real uploader keeps its file."""

    def __init__(self, data: bytes, name: str, file_id: str):
        self._data, self.name, self.file_id, self.size = data, name, file_id, len(data)

    def getvalue(self) -> bytes:
        return self._data


def test_an_autograd_graph_gets_a_message(app, organism_rm, monkeypatch):
    """A graph made with the autograd method keeps no per-head parts: the panel says so and how to get them."""
    from circuits import export, prune
    from circuits.attribution import attribute

    graph = attribute(organism_rm, "Mary and John", method="autograd")  # a short prompt: autograd is slow
    assert graph.metadata["method"] == "autograd"
    small = prune(graph, 0.8, 0.98).graph
    data = json.dumps(export.to_dict(small)).encode()
    monkeypatch.setattr(streamlit, "file_uploader", lambda *a, **k: _Upload(data, "auto.json", "auto-1"))
    app.run(timeout=60)
    assert not app.exception, [e.value for e in app.exception]
    assert app.session_state["graph"].metadata["method"] == "autograd"
    node = next(n for n in _shown(app).nodes if n.kind == "attn_feature")
    _pick(app, node)
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert any("autograd method" in i.value and "per-head" in i.value for i in app.info)


def test_a_graph_of_another_model_gets_a_message(app, monkeypatch):
    """A graph traced on a model the explorer does not run: the panel says which model, and runs nothing."""
    data = json.loads((ROOT / "data" / "graphs" / "ioi_abba.json").read_text())
    data["metadata"]["model"] = "my-model"
    monkeypatch.setattr(streamlit, "file_uploader",
                        lambda *a, **k: _Upload(json.dumps(data).encode(), "other.json", "other-qk"))
    app.run(timeout=60)
    assert not app.exception, [e.value for e in app.exception]
    nodes = [n for n in _shown(app).nodes if n.kind == "attn_feature"]
    if not nodes:
        pytest.skip("the gallery graph keeps no attention feature at these thresholds")
    _pick(app, nodes[-1])
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert any("'my-model'" in i.value and "attention" in i.value for i in app.info)


# -- in a real browser ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)")
def test_the_panel_renders_in_chromium(page, tmp_path):
    """In headless Chromium: select a layer-3 attention feature from the list; the node tab shows the panel — its
    heading, the score line, the pattern row chart and the pairs table — and no traceback. Screenshot:
    $QK_SHOT_DIR/qk_panel.png when set (else the test's tmp folder)."""
    page.get_by_label("select a node").click()
    page.keyboard.type("A3#")
    page.keyboard.press("Enter")
    _show_node_tab(page)
    page.get_by_text("why this attention").first.wait_for(timeout=60_000)
    page.get_by_text(re.compile(r"score L3\.H\d+ \d+→\d+")).first.wait_for(timeout=60_000)
    page.get_by_text("top 10 query-side × key-side pairs").first.wait_for(timeout=30_000)
    page.locator(".js-plotly-plot .gtitle").filter(has_text="pattern row of").first.wait_for(timeout=30_000)
    page.get_by_text("why this attention").first.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    shot = Path(os.environ.get("QK_SHOT_DIR", tmp_path)) / "qk_panel.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.get_by_text("query side").first.scroll_into_view_if_needed()  # the marginals (a second screenshot)
    page.wait_for_timeout(500)
    page.screenshot(path=str(shot.with_name("qk_panel_tables.png")))
    assert page.locator("text=Traceback").count() == 0
