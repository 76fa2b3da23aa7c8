"""The Streamlit explorer's main flows through streamlit.testing.v1.AppTest (no browser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformer_lens  # noqa: F401  imported here first: torch imported for the first time inside AppTest's

# script thread fails ("module 'torch' has no attribute '_utils'"), a test-harness artefact

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def _header(at) -> str:
    return at.markdown[0].value


def test_opens_with_the_example_traced(app):
    head = _header(app)
    assert "Mary" in head and "pruned to" in head and "nodes" in head
    assert "= 14.49 (logit difference)" in head  # the value says what it is
    assert not app.error
    assert not any("replaces it" in c.value for c in app.sidebar.caption)  # the graph shown is the sidebar's prompt's


def test_slider_reprunes_and_target_change_retraces(app):
    before = _header(app)
    app.slider(key="node_threshold").set_value(0.4).run()
    after = _header(app)
    assert after != before and not app.exception
    app.radio(key="target_mode").set_value("salient logits").run()
    app.button(key="trace").click().run()
    assert "p=" in _header(app) and not app.exception


def test_select_node_shows_inspector_with_dashboard(app):
    options = app.selectbox(key="node_pick").options
    feature = next(o for o in options if o.startswith(("A", "M")) and "#" in o)
    app.selectbox(key="node_pick").set_value(app.selectbox(key="node_pick").options[options.index(feature)]).run()
    assert not app.exception
    assert app.subheader and app.subheader[0].value == feature
    text = " ".join(m.value for m in app.markdown)
    assert "promotes" in " ".join(w.value for w in app.markdown) or "density" in text


def test_intervention_reports_metric_change(app):
    ms = app.multiselect(key="iv_nodes")
    ms.select(ms.options[0]).run()
    app.radio(key="iv_mode").set_value("zero").run()
    app.button(key="iv_run").click().run()
    assert not app.exception and not app.error
    assert app.dataframe and any("metric" in m.value and "→" in m.value for m in app.markdown)


def test_faithfulness_button(app):
    app.button(key="faith").click().run()
    text = " ".join(m.value for m in app.markdown)
    (table,) = [d.value for d in app.dataframe if "convention" in d.value.columns]
    assert list(table["convention"]) == ["standard mean ablation", "held-inactive mean ablation (variant)",
                                         "zero ablation"]
    assert "standard mean ablation" in text and "random circuits of the same shape" in text
    app.run()  # a rerun (a slider moved elsewhere, a pin) keeps the results: they vanished before
    assert any("convention" in d.value.columns for d in app.dataframe)


def test_pin_label_and_supernode_are_kept_in_the_saved_json(app):
    options = [o.split()[0] for o in app.selectbox(key="node_pick").options]  # shown as "id description"
    feature = next(o for o in options if o != "—")
    app.selectbox(key="node_pick").set_value(feature).run()
    app.button(key="pin").click().run()
    assert app.button(key="pin").label == "unpin this node"  # the button says what a second press does
    from circuits import export

    fid = export.node_id(app.session_state["selected"])
    app.text_input(key=f"label_in:{fid}").input("my label").run()
    app.button(key="save_label").click().run()
    ui = app.session_state["ui"]
    assert ui["pins"] and ui["labels"] == {fid: "my label"}
    pick = app.selectbox(key="node_pick")  # the node list names the node by its new label, and keeps it selected
    assert pick.value == fid and f"{fid} my label" in pick.options, (pick.value, pick.options[:3])
    other = next(o for o in options if o not in ("—", feature))  # another node's box starts empty (it kept the
    app.selectbox(key="node_pick").set_value(other).run()  # previous node's text, and saving gave it that label)
    assert app.text_input(key=f"label_in:{export.node_id(app.session_state['selected'])}").value == ""
    app.selectbox(key="node_pick").set_value(feature).run()
    assert any(h.value == "my label" for h in app.subheader)  # the heading shows the saved label
    from circuits import export, prune

    graph = prune(app.session_state["graph"], 0.5, 0.5, 20).graph  # what the page saves (small, for speed)
    graph.metadata["ui"] = ui
    back = export.from_dict(json.loads(json.dumps(export.to_dict(graph))))
    assert back.metadata["ui"]["labels"] == ui["labels"] and back.metadata["ui"]["pins"] == ui["pins"]


def test_gallery_opens_a_saved_graph(app):
    app.selectbox(key="gallery").set_value("two_hop_lyon.json").run()
    app.button(key="open_example").click().run()
    assert not app.exception and any("opened two_hop_lyon.json" in s.value for s in app.success)
    assert "Paris" in _header(app)


def test_bad_input_is_a_message_and_keeps_the_graph(app):
    before = _header(app)
    app.text_area(key="prompt").input("   ").run()
    app.button(key="trace").click().run()
    assert any("empty" in e.value for e in app.error) and not app.exception
    assert _header(app) == before
    app.text_area(key="prompt").input("When Mary and John went to the store, John gave a drink to").run()
    app.text_input(key="token").input("Zorblax Quux").run()
    app.button(key="trace").click().run()
    assert any("not a single token" in e.value for e in app.error) and not app.exception
    app.text_area(key="prompt").input(" ".join(["Mary"] * 300)).run()
    app.button(key="trace").click().run()
    assert any("context" in e.value for e in app.error) and _header(app) == before
    assert any("not this prompt's" in c.value for c in app.sidebar.caption)  # the sidebar says the graph is older
    app.text_area(key="prompt").input("When Mary and Zorblax went to the store, Mary gave a drink to").run()
    app.text_input(key="token").input("Mary").run()
    app.button(key="trace").click().run()
    assert any("unknown words" in w.value for w in app.warning) and not app.exception


def test_gpt2_offline_is_a_message(app, no_network):
    app.selectbox(key="model").set_value("gpt2").run()
    app.button(key="trace").click().run()
    assert not app.exception and any("gpt2" in e.value and "organism" in e.value for e in app.error)
    assert "Mary" in _header(app)  # the organism graph is still there


def test_case_studies_page_lists_reports_and_opens_the_circuit(app):
    at = app
    at.sidebar.radio(key="page").set_value("case studies").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(h.value == "Case studies" for h in at.header)
    options = at.selectbox(key="study_pick").options
    assert any(o.startswith("ioi ") for o in options)
    at.selectbox(key="study_pick").set_value(next(o for o in options if o.startswith("ioi "))).run()
    assert any("Standard mean ablation, features alone" in m.value for m in at.markdown)  # the report's headline
    at.button(key="study_open").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.radio(key="page").value == "explorer"
    assert any("opened ioi/circuit.json" in s.value for s in at.success)
    assert "IO − S" in _header(at)  # the aggregated graph's target
    assert any("aggregates" in i.value for i in at.info)  # single-prompt checks say why they do not apply
    assert any("aggregated case-study circuit" in c.value for c in at.sidebar.caption)  # not the sidebar's prompt


def test_a_graph_view_report_moves_the_thresholds_and_selects_the_clicked_node(app):
    """What the browser's graph view sends back (thresholds it re-pruned with, a clicked node) reaches every tab:
    the sidebar sliders, the server's pruning in the header, the node inspector. Each report applies once."""
    from circuits import prune

    view = app.session_state["view"]
    full = view["graph"]
    clicked = next(i for i, n in enumerate(full.nodes) if n.kind == "mlp_feature")
    report = {"instance": "t", "seq": 1, "graph_id": view["packed"].graph_id, "node_threshold": 0.6,
              "edge_threshold": 0.9, "cap": 0, "selected": clicked}
    app.session_state["graph_view"] = report
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.slider(key="node_threshold").value == 0.6 and app.slider(key="edge_threshold").value == 0.9
    expected = prune(full, 0.6, 0.9).graph
    assert f"pruned to {expected.n_nodes:,} / {expected.n_edges:,}" in _header(app)
    assert app.session_state["selected"] == full.nodes[clicked]
    app.slider(key="node_threshold").set_value(0.5).run()  # a later sidebar move is not undone by the old report
    assert app.slider(key="node_threshold").value == 0.5
    app.session_state["graph_view"] = {**report, "seq": 2, "graph_id": "another graph"}  # a stale view: ignored
    app.run()
    assert app.slider(key="node_threshold").value == 0.5 and not app.exception


def test_a_graph_too_large_for_the_browser_view_is_drawn_by_the_server(monkeypatch):
    import circuits.graph_view

    monkeypatch.setattr(circuits.graph_view, "MAX_BROWSER_EDGES", 10)
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("more than the browser view takes" in c.value for c in at.caption)
    assert at.get("plotly_chart") and not at.get("graph_view") and "view" not in at.session_state


def test_unpin_removes_the_pin(app):
    feature = next(o for o in app.selectbox(key="node_pick").options if o != "—")
    app.selectbox(key="node_pick").set_value(feature).run()
    app.button(key="pin").click().run()
    assert len(app.session_state["ui"]["pins"]) == 1
    app.button(key="pin").click().run()
    assert app.session_state["ui"]["pins"] == [] and app.button(key="pin").label == "pin this node"



def test_the_sidebar_does_not_call_a_freshly_traced_graph_another_prompts(app):
    """Right after a trace the sidebar said 'The graph shown is not this prompt's' (drawn before the trace ran)."""
    app.text_area(key="prompt").input("When Anna and David went to the park, David gave a book to").run()
    assert any("not this prompt's" in c.value for c in app.sidebar.caption)  # true before the trace
    app.text_input(key="token").input("Anna").run()
    app.text_input(key="baseline").input("David").run()
    app.button(key="trace").click().run()
    assert not app.exception and "Anna" in _header(app)
    assert not any("replaces it" in c.value for c in app.sidebar.caption)
