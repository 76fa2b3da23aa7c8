"""The explorer's fixes for issue 16 through Streamlit's AppTest (no browser): opened graphs drive every tab, the
header, dashboard contexts, uploads loaded once, bad uploads, the widget-state warning, the intervene picker."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import transformer_lens  # noqa: F401  imported before AppTest's script thread first imports torch (see test_app.py)

pytest.importorskip("streamlit")
import streamlit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LYON = "Lyon is a city in France. The capital of the country containing Lyon is"


def _header(at) -> str:
    """The header's text as shown (Markdown escapes removed)."""
    head = next(m.value for m in at.markdown if "pruned to" in m.value)
    return re.sub(r"\\(.)", r"\1", head)


def _open_example(at, name: str) -> None:
    at.selectbox(key="gallery").set_value(name).run()
    at.button(key="open_example").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"opened {name}" in s.value for s in at.success)


def _pick_feature(at, kind: str = "mlp_feature") -> str:
    """Select a feature node of the shown (pruned) graph in the node list; its id."""
    from circuits import export, prune

    g = prune(at.session_state["graph"], at.slider(key="node_threshold").value,
              at.slider(key="edge_threshold").value).graph
    feature = export.node_id(next(n for n in g.nodes if n.kind == kind))
    at.selectbox(key="node_pick").set_value(feature).run()
    assert not at.exception, [e.value for e in at.exception]
    return feature


def test_an_opened_example_drives_every_tab_with_its_own_prompt(app):
    """Issue 16 item 2: after opening the two-hop example, faithfulness, the logit lens, node activations and
    interventions run on the example's prompt (they used the sidebar's and failed with an IndexError), and the
    sidebar shows that prompt (and its target) so that 'trace' reproduces it."""
    at = app
    _open_example(at, "two_hop_lyon.json")
    assert at.text_area(key="prompt").value == LYON
    assert at.radio(key="target_mode").value == "salient logits"
    assert LYON in _header(at) and "Paris" in _header(at)
    at.button(key="faith").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    text = " ".join(m.value for m in at.markdown)
    (table,) = [d.value for d in at.dataframe if "convention" in d.value.columns]
    assert list(table["convention"]) == ["standard mean ablation", "held-inactive mean ablation (variant)",
                                         "zero ablation"]
    assert "standard mean ablation" in text and "random circuits of the same shape" in text
    assert any(LYON in c.value for c in at.caption if "faithfulness" not in c.value and "prompt" in c.value)
    lens = [c for c in at.caption if c.value.startswith("logit lens on the graph's prompt")]
    assert lens and LYON in lens[0].value
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Lyon" in spec and "France" in spec for spec in charts)  # the lens' token axis
    _pick_feature(at)
    assert not at.error, [e.value for e in at.error]
    assert any("activation on every token" in m.value for m in at.markdown)
    ms = at.multiselect(key="iv_nodes")
    ms.select(ms.options[0]).run()
    at.button(key="iv_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("metric" in m.value and "Paris" in m.value for m in at.markdown)
    (table,) = [d.value for d in at.dataframe if "p after" in d.value.columns]
    assert list(table.columns) == ["token", "p before", "p after", "logit change"]  # 'p before' was lost to a comment


def test_header_keeps_the_prompt_text_and_aggregated_roles_are_separated(app):
    """Issue 16 item 3: an unknown word keeps its space in the header (was `and<|unk|>`); the aggregated IOI circuit
    shows its roles apart and no made-up target value (was `IOS1S2andENDother → 'IO − S' 0.00`)."""
    at = app
    at.text_area(key="prompt").input("When Mary and Zorblax went to the store, Mary gave a drink to").run()
    at.text_input(key="token").input("Zorblax").run()  # not one token: a message, the graph stays
    at.button(key="trace").click().run()
    assert any("not a single token" in e.value for e in at.error)
    assert "When Mary and John went to the store" in _header(at)
    at.text_input(key="token").input("Mary").run()
    at.text_input(key="baseline").input("John").run()
    at.button(key="trace").click().run()
    assert not at.exception
    assert "Mary and Zorblax went" in _header(at)
    at.sidebar.radio(key="page").set_value("case studies").run()
    options = at.selectbox(key="study_pick").options
    at.selectbox(key="study_pick").set_value(next(o for o in options if o.startswith("ioi "))).run()
    at.button(key="study_open").click().run()
    assert not at.exception, [e.value for e in at.exception]
    head = _header(at)
    assert "roles: BOS · IO · S1 · S2 · and · END · other" in head
    assert "IOS1S2" not in head and "0.00" not in head.split("\n")[0]
    # the sidebar kept its prompt (an aggregated circuit has no single prompt to show)
    assert at.text_area(key="prompt").value == "When Mary and Zorblax went to the store, Mary gave a drink to"


def test_dashboard_contexts_highlight_the_token_without_raw_markers(app):
    """Issue 16 item 3: contexts showed raw `**[...]**` markers; the activating token is now highlighted."""
    at = app
    _pick_feature(at)
    assert not any("**[" in m.value for m in at.markdown)
    bodies = [h.proto.body for h in at.get("html")]
    contexts = [b for b in bodies if "<mark" in b]
    assert contexts and all("**[" not in b for b in contexts)


def test_the_intervene_picker_has_no_select_all_entry(app):
    """Issue 16 item 3: Enter after typing in the picker chose Streamlit's "Select all" entry."""
    assert app.multiselect(key="iv_nodes").proto.select_all is False or \
        app.multiselect(key="iv_nodes").proto.select_all == 0


def test_no_widget_default_value_warning_when_the_view_moves_the_thresholds(app, monkeypatch):
    """Issue 16 item 3: `The widget with key "node_threshold" was created with a default value but also had its
    value set via the Session State API` (Streamlit logs it once per process: the flag is reset here)."""
    from streamlit.elements.lib import policies

    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    records: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Catch()
    logger = logging.getLogger(policies._LOGGER.name)
    logger.addHandler(handler)
    try:
        view = app.session_state["view"]
        report = {"instance": "t", "seq": 1, "graph_id": view["packed"].graph_id, "node_threshold": 0.6,
                  "edge_threshold": 0.9, "cap": 3, "selected": None}
        app.session_state["graph_view"] = report
        app.run()
        _open_example(app, "two_hop_lyon.json")  # sets the sidebar's prompt and target from the graph
        app.run()
    finally:
        logger.removeHandler(handler)
    assert not app.exception
    assert not [r for r in records if "created with a default value" in r], records


class _Upload:
    """What `st.file_uploader` returns; the same object on every rerun, as the real uploader keeps its file."""

    def __init__(self, data: bytes, name: str, file_id: str):
        self._data, self.name, self.file_id, self.size = data, name, file_id, len(data)

    def getvalue(self) -> bytes:
        return self._data


def _uploading(monkeypatch, upload: _Upload) -> list[str]:
    """Make the page's uploader hold `upload`; returns the list of names that `export.loads` was called with."""
    from circuits import export

    calls: list[str] = []
    real = export.loads

    def counting(data, source="graph"):
        calls.append(source)
        return real(data, source)

    monkeypatch.setattr(export, "loads", counting)
    monkeypatch.setattr(streamlit, "file_uploader", lambda *a, **k: upload)
    return calls


def test_an_uploaded_graph_is_loaded_once(app, monkeypatch):
    """Issue 16 item 16: `st.rerun()` while the uploader still held the file loaded it again on every run, forever
    (617 loads in 90 s). Now one load; the page settles; later reruns do not load it again."""
    data = (ROOT / "data" / "graphs" / "two_hop_lyon.json").read_bytes()
    calls = _uploading(monkeypatch, _Upload(data, "mine.json", "file-1"))
    app.run(timeout=60)
    assert not app.exception, [e.value for e in app.exception]
    assert calls == ["mine.json"]
    assert any("opened mine.json" in s.value for s in app.success) and "Paris" in _header(app)
    app.slider(key="node_threshold").set_value(0.7).run(timeout=60)
    assert calls == ["mine.json"] and app.text_area(key="prompt").value == LYON


@pytest.mark.parametrize("data, says", [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (b'{"format": "circuits-graph", "x": "\xff\xfe"}', "not UTF-8"),
    (b"{not json", "not valid JSON"),
    (b'{"hello": 1}', "mine.json"),
])
def test_a_bad_upload_is_one_message_and_keeps_the_graph(app, monkeypatch, data, says):
    """Issue 16 items 20 and 'never a traceback': a deeply nested JSON file (RecursionError), invalid UTF-8,
    invalid JSON, a JSON file that is not a graph: one error message, the current graph stays."""
    before = _header(app)
    calls = _uploading(monkeypatch, _Upload(data, "mine.json", f"bad-{says}"))
    app.run(timeout=60)
    assert not app.exception, [e.value for e in app.exception]
    assert len(app.error) == 1 and says in app.error[0].value and "Traceback" not in app.error[0].value
    assert _header(app) == before and calls == ["mine.json"]
    app.run(timeout=60)  # the same file still in the uploader: not read again
    assert calls == ["mine.json"]


def test_an_upload_whose_nodes_do_not_fit_the_dictionaries_is_one_message(app, monkeypatch):
    """A graph file naming feature 999999 of transcoder L0 (it has 1,792) was opened, and the tabs then failed one by
    one (an IndexError on faithfulness). It is refused when opened, with one message; the current graph stays."""
    import json

    data = json.loads((ROOT / "data" / "graphs" / "two_hop_lyon.json").read_text())
    k = next(i for i, kind in enumerate(data["nodes"]["kind"]) if kind == "mlp_feature")
    data["nodes"]["index"][k] = 999999
    before = _header(app)
    _uploading(monkeypatch, _Upload(json.dumps(data).encode(), "bad.json", "bad-index"))
    app.run(timeout=60)
    assert not app.exception, [e.value for e in app.exception]
    assert len(app.error) == 1 and "999999" in app.error[0].value and "features 0..1791" in app.error[0].value
    assert _header(app) == before


def test_the_sidebar_trace_button_comes_right_after_the_target(app):
    """Issue 16 item 3: the trace button was below the fold; it now follows the prompt and target inputs."""
    keys = [getattr(w, "key", None) for w in app.sidebar]
    assert keys.index("trace") < keys.index("model") < keys.index("node_threshold")


def test_supernode_members_are_canonical_ids(app):
    """Issue 16 item 5 (explorer side): the supernode form lists canonical ids (`M3#1184@14`) and stores the nodes
    they name (it split them on ':' and failed); the node list shows canonical ids too."""
    from circuits.graph import Node
    from circuits.ids import format_node

    at = app
    ms = at.multiselect(key="sn_members")
    members = ms.options[:2]
    assert all("#" in m and "@" in m and ":" not in m for m in members)
    at.text_input(key="sn_name").input("pair")
    for m in members:
        ms.select(m)
    at.button[[b.label for b in at.button].index("add supernode")].click().run()
    assert not at.exception, [e.value for e in at.exception]
    (sn,) = at.session_state["ui"]["supernodes"]
    assert sn["name"] == "pair" and [format_node(Node.from_json(n)) for n in sn["nodes"]] == members


def test_a_graph_of_another_model_says_so_instead_of_running_the_organism(app, monkeypatch):
    """An opened graph is never run on a model it was not traced on: single-prompt tabs say which model it needs."""
    import json

    data = json.loads((ROOT / "data" / "graphs" / "two_hop_lyon.json").read_text())
    data["metadata"]["model"] = "my-model"
    _uploading(monkeypatch, _Upload(json.dumps(data).encode(), "other.json", "other-1"))
    app.run(timeout=60)
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert any("'my-model'" in i.value for i in app.info)
    assert app.text_area(key="prompt").value != LYON  # the sidebar cannot trace it: left as it was


def test_example_graphs_open_with_bos_folded(app, monkeypatch, tmp_path):
    """Issue 21 item 3: gallery graphs open BOS-folded, like every traced graph: no feature or error node at the BOS
    position, the folded weight in the constants. The shipped ones are stored folded (regenerated 2026-11-30); a
    gallery file written without folding (`circuits trace --show-bos`, or older files) is folded on open."""
    from circuits import export
    from circuits.cli import main
    from circuits.explorer import files
    from circuits.graph import bos_mask

    shipped = export.loads((ROOT / "data" / "graphs" / "induction.json").read_bytes(), "induction.json")
    assert shipped.metadata.get("bos_folded") is not None and not bool(bos_mask(shipped).any())
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    assert main(["trace", "zoo Tokyo red cake zoo Tokyo red", "--show-bos", "--json", str(gallery / "raw.json")]) == 0
    raw = export.loads((gallery / "raw.json").read_bytes(), "raw.json")
    assert bool(bos_mask(raw).any())  # the file itself has BOS nodes (else this test could not fail)
    monkeypatch.setattr(files, "GALLERY", gallery)
    app.run()
    _open_example(app, "raw.json")
    shown = app.session_state["graph"]
    assert shown.metadata.get("bos_folded") is not None
    assert not bool(bos_mask(shown).any())
    assert shown.n_nodes == raw.n_nodes - int(bos_mask(raw).sum())


def test_the_subgraph_tab_draws_a_pins_neighbours_and_lists_the_views_supernodes(app):
    """The subgraph tab keeps only the tokens and targets joined to a pin (it drew every token), and lists the
    supernodes the graph view starts with (it listed only the ones typed into its form)."""
    from circuits.explorer.graph_tab import pinned_subgraph
    from circuits.graph import Node

    at = app
    _pick_feature(at)
    at.button(key="pin").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (pin,) = [Node.from_json(p) for p in at.session_state["ui"]["pins"]]
    from circuits import prune

    g = prune(at.session_state["graph"], at.slider(key="node_threshold").value,
              at.slider(key="edge_threshold").value).graph
    sub = pinned_subgraph(g, [pin])
    n_tokens = sum(n.kind == "token" for n in g.nodes)
    assert sum(n.kind == "token" for n in sub.nodes) < n_tokens  # some token has no edge to this one feature
    assert any(f"subgraph of the pins: {sub.n_nodes} nodes" in c.value for c in at.caption)
    groups = at.session_state["view"]["packed"].meta["supernodes"]
    assert groups, "the example graph's view starts with supernodes"
    (exp,) = [e for e in at.expander if "the graph view's supernodes" in e.label]
    assert f"({len(groups)}:" in exp.label
    assert any(groups[0]["name"] in m.value for m in exp.markdown)


def test_a_click_in_the_view_selects_after_a_pick_from_the_list_and_the_list_follows(app):
    """The list's stored value overrode every later click: after picking M3#… from it, clicking another node in the
    graph view kept the picked one. A selection made elsewhere now wins and the list shows it."""
    from circuits import export

    at = app
    picked = _pick_feature(at)
    assert export.node_id(at.session_state["selected"]) == picked
    from circuits import prune

    g = prune(at.session_state["graph"], at.slider(key="node_threshold").value,
              at.slider(key="edge_threshold").value).graph
    other = next(n for n in g.nodes if n.kind == "attn_feature")
    at.session_state["selected"] = other  # what a click in the view (or a QK jump) does
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["selected"] == other
    assert at.selectbox(key="node_pick").value == export.node_id(other)
    at.run()  # and it stays: the list does not put its old pick back
    assert at.session_state["selected"] == other


def test_prepared_downloads_are_dropped_when_what_they_hold_changes(app):
    """Downloads prepared before a pin kept the old state ('pins': []) without a word; now they are dropped and the
    tab says to prepare them again."""
    import json

    at = app
    at.button(key="make_files").click().run()
    assert at.session_state["files"]["json"]
    assert json.loads(at.session_state["files"]["json"])["ui"]["pins"] == []
    _pick_feature(at)
    at.button(key="pin").click().run()
    assert "files" not in at.session_state
    assert any("prepare them again" in c.value for c in at.caption)
    at.button(key="make_files").click().run()
    saved = json.loads(at.session_state["files"]["json"])["ui"]
    assert len(saved["pins"]) == 1
    assert saved["saved_by"] == "explorer"  # `circuits trace --json` will not replace it without --force


def test_a_supernode_made_on_the_page_reaches_the_graph_view_and_can_be_removed(app):
    """Supernodes added in the subgraph tab never reached the graph view (its groups were packed once per graph);
    they are now sent to it, drawn first, listed first, and each has a remove button."""
    from circuits.explorer.graph_tab import user_groups, view_supernodes

    at = app
    ms = at.multiselect(key="sn_members")
    for m in ms.options[:2]:
        ms.select(m)
    at.text_input(key="sn_name").input("my group")
    at.button[[b.label for b in at.button].index("add supernode")].click().run()
    assert not at.exception, [e.value for e in at.exception]
    view = at.session_state["view"]
    sent = user_groups(view, at.session_state["ui"]["supernodes"])
    assert [g["name"] for g in sent] == ["my group"] and len(sent[0]["members"]) == 2
    listed = view_supernodes(view, at.session_state["ui"]["supernodes"])
    assert listed[0][0] == "my group"
    members = set(listed[0][1])
    assert all(not members & set(nodes) for _, nodes in listed[1:])  # automatic groups keep the others only
    (exp,) = [e for e in at.expander if "the graph view's supernodes" in e.label]
    assert any("my group" in m.value for m in exp.markdown)
    at.button(key="sn_remove_0").click().run()
    assert at.session_state["ui"]["supernodes"] == []


def test_merged_groups_give_members_to_the_first_group_that_takes_them():
    from circuits.graph_view import merged_groups

    got = merged_groups([{"name": "mine", "members": [1, 2]}],
                        [{"name": "a", "members": [2, 3, 4]}, {"name": "b", "members": [4, 5]}, {"name": "c",
                                                                                               "members": [1, 6]}])
    assert got == [{"name": "mine", "members": [1, 2]}, {"name": "a", "members": [3, 4]}]  # b and c keep one each


def test_a_stored_supernode_removed_on_the_page_stays_removed():
    """A supernode saved in a file was baked into the view's groups when the file was opened, so 'remove' gave its
    members back to the baked copy; stored groups are now the page's to send."""
    from circuits.graph_view import merged_groups

    packed = [{"name": "saved", "members": [1, 2], "stored": True}, {"name": "auto", "members": [3, 4]}]
    assert merged_groups([], packed) == [{"name": "auto", "members": [3, 4]}]
    assert merged_groups([{"name": "saved", "members": [1, 2]}], packed)[0]["name"] == "saved"
