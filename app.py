"""The circuits explorer (Streamlit): trace a prompt's feature circuit and investigate it. UI only — every number
comes from the `circuits` library.

    streamlit run app.py

Every tab works on the graph that is shown — traced here, opened from the gallery, uploaded, or a case study's
circuit — with that graph's own prompt, model and dictionaries (its metadata), never the sidebar's unsaved edits.
The model, its dictionaries and the example prompt's graph are made once per server process and shared by every
browser tab (a new tab shows the example at once); everything else is per tab (`st.session_state`).

The views live in `circuits/explorer/` (one module per part of the page, listed in its `__init__`); this script sets
up the page and wires them.
"""

from __future__ import annotations

import streamlit as st

from circuits.explorer.checks import checks
from circuits.explorer.files import files
from circuits.explorer.graph_tab import graph_tab, subgraph_view
from circuits.explorer.inspector import node_inspector
from circuits.explorer.interventions import interventions
from circuits.explorer.lens import lens_view
from circuits.explorer.markup import header_text
from circuits.explorer.sidebar import apply_view_report, prompt_note, sidebar
from circuits.explorer.state import (
    SIDEBAR_DEFAULTS,
    _shared_view,
    do_trace,
    example_view,
    guarded,
    pruned,
    show_graph,
    state,
    use_threads,
)
from circuits.explorer.studies_page import studies_page

st.set_page_config(page_title="circuits explorer", layout="wide")


# -- page ------------------------------------------------------------------------------------------------------


def first_graph(notices) -> None:
    """A new tab's first graph: the example, made once per process (with a progress indicator while the first tab
    of a fresh server loads the model and traces it)."""
    with notices, st.spinner("loading the model and its dictionaries and tracing the example prompt (once per "
                             "server) ...", show_time=True):
        ex = guarded(example_view)
    if ex is not None:
        show_graph(ex["graph"], ex["run"], _shared_view(ex), ex["ranked"])


def main() -> None:
    from circuits import export

    bad_threads = use_threads()  # the torch-threads rule, in this run's thread (docs/cli.md)
    if bad_threads is not None:
        st.error(bad_threads)
        return
    s = state()
    if st.session_state.pop("goto_explorer", False):
        st.session_state["page"] = "explorer"
    page = st.sidebar.radio("page", ["explorer", "case studies"], horizontal=True, key="page")
    if page == "case studies":
        for k in SIDEBAR_DEFAULTS:  # keep the explorer's sidebar values while its widgets are not drawn
            if k in s:
                s[k] = s[k]
        studies_page()
        return
    apply_view_report()
    settings = sidebar()
    # Messages (a trace's error or warnings, "opened ...") go to one container that is always there, so the
    # header and the tabs below keep their place on the page and the graph view is not drawn anew
    notices = st.container()
    header = st.empty()
    if s.get("flash"):
        notices.success(s.pop("flash"))
    if s["graph"] is None and not s.get("tried_example"):
        s["tried_example"] = True
        first_graph(notices)
    elif settings["go"]:
        with notices, st.spinner("tracing ..."):
            do_trace(settings)
        prompt_note(settings["note"], settings["prompt"])  # after the trace: true of the graph now shown
    if s["graph"] is None:
        header.info("Type a prompt and press trace.")
        return
    run = s["run"]
    full = s["graph"]
    with notices:
        result = pruned(settings["node_threshold"], settings["edge_threshold"], settings["cap"])
    if result is None:
        return
    g = result.graph
    influence = result.node_influence[result.node_mask]
    tabs = st.tabs(["graph", "node", "subgraph", "checks", "intervene", "logit lens", "files"])
    labels = s["ui"]["labels"]
    with tabs[0]:
        by_id = {export.node_id(n): n for n in g.nodes if n.kind != "token"}
        # a label given on this page names the node in the list too (a plain dict: format_func must not read the
        # session); the list's identity is its key, so renaming a node keeps the selection
        names = {k: f"{k} {labels[k]}" if labels.get(k) else export.node_label(g, n) for k, n in by_id.items()}
        options = ["—", *by_id]
        # the list follows the selection (a click in the graph view, a jump from the QK panel), and a pick in the
        # list selects: only when it changes (its stored value used to override every later click)
        current = export.node_id(s["selected"]) if s["selected"] in set(g.nodes) else "—"
        if st.session_state.get("node_pick") != current:
            st.session_state["node_pick"] = current if current in by_id else "—"

        def picked():
            k = st.session_state["node_pick"]
            s["selected"] = by_id.get(k) if k != "—" else s["selected"]

        st.selectbox("select a node", options, format_func=lambda k: names.get(k, k), key="node_pick",
                     on_change=picked)
        graph_tab(full, g, influence, settings, labels)
    # the header after the graph view: the browser gets the new graph no later than its title
    header.markdown(header_text(full, g))
    with tabs[1]:
        node_inspector(g, full, run, influence)
    with tabs[2]:
        subgraph_view(g)
    with tabs[3]:
        checks(full, g, run)
    with tabs[4]:
        interventions(g, run)
    with tabs[5]:
        lens_view(full, run)
    with tabs[6]:
        files(full, g)


if __name__ == "__main__":
    main()
