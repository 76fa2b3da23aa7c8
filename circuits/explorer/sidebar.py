"""The sidebar: prompt, target, trace button, model and pruning settings (values live in the session
state), and the graph view's reports (thresholds moved, node clicked) taken into that state."""

from __future__ import annotations

import streamlit as st

from circuits.explorer.state import DICTIONARY_SETS, MODELS, N_LAYERS, SIDEBAR_DEFAULTS, TARGET_MODES, state


def _thresholds_moved() -> None:
    """A threshold changed in the sidebar: the graph view adopts the sidebar's values (see `graph_tab`)."""
    st.session_state["threshold_epoch"] = st.session_state.get("threshold_epoch", 0) + 1


def apply_view_report() -> None:
    """Take the graph view's last report (thresholds moved or a node clicked in the browser) into the page state,
    before the sidebar's widgets are drawn, so that every tab reruns with it. Each report is applied once."""
    s = state()
    rep, view = st.session_state.get("graph_view"), s.get("view")
    if not isinstance(rep, dict) or view is None or rep.get("graph_id") != view["packed"].graph_id:
        return
    tag = (rep.get("instance"), rep.get("seq"))
    if tag == s.get("view_report"):
        return
    s["view_report"] = tag
    try:
        node_t = min(max(round(float(rep["node_threshold"]), 2), 0.05), 1.0)
        edge_t = min(max(round(float(rep["edge_threshold"]), 2), 0.05), 1.0)
        cap = min(max(int(rep.get("cap") or 0), 0), 5000)
    except (KeyError, TypeError, ValueError):
        return
    st.session_state["node_threshold"], st.session_state["edge_threshold"] = node_t, edge_t
    st.session_state["cap"] = cap
    picked = rep.get("selected")
    if isinstance(picked, int) and 0 <= picked < view["graph"].n_nodes:
        s["selected"] = view["graph"].nodes[picked]


def init_sidebar_state() -> None:
    """The sidebar widgets' values live in the session state (see SIDEBAR_DEFAULTS); an opened graph's prompt,
    model and target are put there before the widgets are drawn."""
    s = st.session_state
    for k, v in SIDEBAR_DEFAULTS.items():
        s.setdefault(k, list(v) if isinstance(v, list) else v)
    pending = s.pop("pending_sidebar", None) or {}
    for k, v in pending.items():
        s[k] = v
    if "layers" in pending:
        s["layers_for"] = s["model"]
    if s["model"] not in MODELS:
        s["model"] = "organism"
    if s["dicts"] not in DICTIONARY_SETS[s["model"]]:
        s["dicts"] = DICTIONARY_SETS[s["model"]][0]
    n_layers = N_LAYERS[s["model"]]
    previous = s.get("layers_for")
    if (previous is not None and previous != s["model"]) or any(not 0 <= x < n_layers for x in s["layers"]):
        s["layers"] = list(range(n_layers))  # another model: all of its layers
    s["layers_for"] = s["model"]


def sidebar() -> dict:
    """The sidebar. The trace button comes right after the prompt and target, so it is on screen without
    scrolling; the model and pruning settings follow."""
    init_sidebar_state()
    sb = st.sidebar
    prompt = sb.text_area("prompt", height=90, key="prompt")
    mode = sb.radio("target", list(TARGET_MODES), horizontal=True, key="target_mode")
    token = baseline = ""
    cum_prob, max_logits = 0.95, 10
    if mode == "salient logits":
        c = sb.columns(2)
        cum_prob = c[0].slider("cumulative probability", 0.05, 1.0, step=0.05, key="cum_prob")
        max_logits = c[1].number_input("max logits", 1, 50, key="max_logits")
    else:
        c = sb.columns(2)
        token = c[0].text_input("token", key="token")
        if mode == "contrast":
            baseline = c[1].text_input("minus token", key="baseline")
    go = sb.button("trace", type="primary", key="trace", width="stretch")
    note = sb.empty()  # filled by `prompt_note`: after the trace when the button was pressed (it may replace it)
    if not go:
        prompt_note(note, prompt)
    model = sb.selectbox("model", list(MODELS), key="model")
    dicts = sb.selectbox("dictionaries", list(DICTIONARY_SETS[model]), key="dicts")
    layers = sb.multiselect("replaced layers", list(range(N_LAYERS[model])), key="layers")
    node_t = sb.slider("node threshold", 0.05, 1.0, step=0.01, key="node_threshold", on_change=_thresholds_moved)
    edge_t = sb.slider("edge threshold", 0.05, 1.0, step=0.01, key="edge_threshold", on_change=_thresholds_moved)
    cap = sb.number_input("feature cap (0 = none)", 0, 5000, key="cap", on_change=_thresholds_moved)
    return {"prompt": prompt, "model": model, "dicts": dicts, "layers": tuple(layers),
            "target_mode": TARGET_MODES[mode], "token": token, "baseline": baseline, "cum_prob": cum_prob,
            "max_logits": int(max_logits), "node_threshold": node_t, "edge_threshold": edge_t,
            "cap": int(cap) or None, "go": go, "note": note}


def prompt_note(note, prompt: str) -> None:
    """Say in the sidebar when the graph shown is not the sidebar prompt's (the tabs use the graph shown)."""
    shown, graph = state().get("run"), state().get("graph")
    if shown is not None and shown.get("prompt") != prompt:
        what = ("an aggregated case-study circuit" if graph is not None and graph.metadata.get("aggregated") else
                "a graph saved without its prompt" if shown.get("prompt") is None else "not this prompt's")
        note.caption(f"The graph shown is {what}: **trace** replaces it with this prompt's.")
