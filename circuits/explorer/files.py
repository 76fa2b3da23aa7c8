"""The 'files' tab: downloads (JSON, DOT, circuit-tracer JSON, SVG), uploads and the example gallery; and
opening a graph file's bytes (also used by the case-studies page)."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from circuits.errors import CircuitsError
from circuits.explorer.state import GALLERY, guarded, run_of, show_graph, sidebar_from_graph, state, with_ui


def files(full, g) -> None:
    from circuits import export

    which = st.radio("graph to save", ["pruned", "full"], horizontal=True, key="save_which")
    # what the files are made from: the graph, the pruning, and the pins, labels and supernodes saved with it
    basis = (id(full), which, g.n_nodes, g.n_edges, json.dumps(state()["ui"], sort_keys=True, default=str))
    if st.button("prepare downloads", key="make_files"):  # serialising is work: only when asked
        out = with_ui(g if which == "pruned" else full)
        st.session_state["files"] = {
            "json": json.dumps(export.to_dict(out)), "dot": export.to_dot(out),
            "ct": json.dumps(export.to_circuit_tracer(out)), "svg": guarded(_svg, out), "basis": basis}
    ready = st.session_state.get("files")
    if ready and ready.get("basis") != basis:  # prepared before the graph, pruning, pins or labels changed
        st.session_state.pop("files")
        st.caption("What the downloads would hold changed since they were prepared (pruned or full, the graph, its "
                   "pruning, pins, labels or supernodes): prepare them again.")
        ready = None
    if ready:
        c = st.columns(4)
        c[0].download_button("JSON", ready["json"], f"graph_{which}.json", "application/json", key="dl_json")
        c[1].download_button("DOT", ready["dot"], f"graph_{which}.dot", "text/vnd.graphviz", key="dl_dot")
        c[2].download_button("circuit-tracer JSON", ready["ct"], f"graph_{which}_ct.json", "application/json",
                             key="dl_ct")
        if ready["svg"] is not None:
            c[3].download_button("SVG", ready["svg"], f"graph_{which}.svg", "image/svg+xml", key="dl_svg")
    uploaded = st.file_uploader("open a saved graph (JSON)", type=["json"], key="upload")
    # The uploader keeps its file across reruns: load each upload once (loading reruns the page, which would
    # otherwise load it again, forever)
    if uploaded is not None and st.session_state.get("uploaded_id") != uploaded.file_id:
        st.session_state["uploaded_id"] = uploaded.file_id
        load_graph_bytes(uploaded.getvalue(), uploaded.name)
    elif uploaded is None:
        st.session_state.pop("uploaded_id", None)  # the same file uploaded again later is a new upload
    examples = sorted(GALLERY.glob("*.json")) if GALLERY.exists() else []
    if examples:
        pick = st.selectbox("example graphs", ["—"] + [p.name for p in examples], key="gallery")
        if pick != "—" and st.button("open example", key="open_example"):
            load_graph_bytes((GALLERY / pick).read_bytes(), pick, fold=True)


def _svg(graph) -> str:
    import tempfile

    from circuits import export

    with tempfile.TemporaryDirectory() as tmp:
        return export.render(graph, Path(tmp) / "g.svg", "svg").read_text()


def load_graph_bytes(data: bytes, name: str, fold: bool = False) -> None:
    """Open a graph file's bytes: every defect (not UTF-8, not JSON, nested too deeply, not a graph) is one message
    and keeps the current graph. The sidebar shows the opened graph's prompt from the next run on.

    ``fold``: fold BOS features and errors into constants (`circuits.graph.fold_bos`), as every traced graph is —
    used for the gallery (the shipped graphs are stored folded; a file written with `--show-bos` or before folding
    existed is folded on open). A user's own upload is shown as saved."""
    from circuits import export
    from circuits.graph import fold_bos

    s = state()
    graph = guarded(export.loads, data, name)
    if graph is None:
        return
    if fold:
        graph = fold_bos(graph)
    run = run_of(graph, st.session_state.get("dicts"))
    if not _fits(graph, run, name):
        return
    show_graph(graph, run)
    s["pending_sidebar"] = sidebar_from_graph(graph)
    s["flash"] = f"opened {name}: {graph.n_nodes} nodes, {graph.n_edges} edges"
    st.rerun()


def _fits(graph, run: dict, name: str) -> bool:
    """False (with one message; the current graph stays) when the graph names nodes its dictionaries cannot hold
    (`circuits.interventions.check_graph_fits`). Only the embedded organism is checked here: another model (GPT-2)
    would be loaded, or downloaded, just to open a file, and viewing needs no model; the tabs that run it check their
    own inputs."""
    from circuits.explorer.state import replacement
    from circuits.interventions import check_graph_fits

    if run["dicts"] is None or run["model"] != "organism":
        return True
    try:
        rm = replacement(run["model"], run["dicts"], names=run["dictionaries"])
    except Exception:  # noqa: BLE001 — not loadable here (another model, offline): viewing needs no model
        return True
    try:
        check_graph_fits(rm, graph, name)
    except CircuitsError as e:
        st.error(str(e))
        return False
    return True

