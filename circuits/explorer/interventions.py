"""The 'intervene' tab: zero, scale or clamp features of the pruned graph and see the logits change."""

from __future__ import annotations

import streamlit as st

from circuits.explorer.checks import single_prompt
from circuits.explorer.state import guarded, on_model, run_model


def interventions(g, run: dict) -> None:
    import pandas as pd

    from circuits import Edit, export, intervene
    from circuits.attribution.targets import token_string
    from circuits.ids import parse_node
    from circuits.interventions import graph_metric

    if not single_prompt(g, run):
        return
    feats = [n for n in g.nodes if n.kind.endswith("_feature")]
    if not feats:
        st.info("the pruned graph has no features to intervene on")
        return
    labels = {export.node_id(n): export.node_label(g, n) for n in feats}
    # select_all=False: the picker's "Select all" entry is the one Enter picks after typing a search
    chosen = st.multiselect("features", list(labels), format_func=lambda k: labels.get(k, k), key="iv_nodes",
                            select_all=False, placeholder="type an id such as M3#1184@14, or a label")
    mode = st.radio("edit", ["zero", "scale", "clamp"], horizontal=True, key="iv_mode")
    value = 0.0
    if mode != "zero":  # zeroing takes no value
        value = st.number_input("scale factor" if mode == "scale" else "clamp value", value=2.0, min_value=-1e4,
                                max_value=1e4, key="iv_value")
    frozen = st.toggle("frozen attention and LayerNorm", value=False, key="iv_frozen")
    if st.button("run intervention", key="iv_run"):
        if not chosen:
            st.warning("choose at least one feature")
            return
        nodes = [guarded(parse_node, k) for k in chosen]
        if None in nodes:
            return
        edits = [Edit.zero(n) if mode == "zero" else Edit(n, "scale" if mode == "scale" else "set", float(value))
                 for n in nodes]
        rm = run_model(run)
        result = None if rm is None else on_model(intervene, rm, run["prompt"], edits, frozen=frozen)
        if result is None:
            return
        before, after = result.clean_logits[-1].softmax(-1), result.logits[-1].softmax(-1)
        top = sorted(set(before.topk(8).indices.tolist()) | set(after.topk(8).indices.tolist()),
                     key=lambda t: -float(after[t]))
        # tokens quoted: the leading space shows
        st.dataframe(pd.DataFrame([{"token": repr(token_string(rm.model, t)), "p before": float(before[t]),
                                    "p after": float(after[t]),
                                    "logit change": float(result.logit_change[-1, t])} for t in top]),
                     width="stretch", hide_index=True)
        found = graph_metric(g)
        if found is not None:
            metric, name = found
            m0, m1 = float(metric(result.clean_logits)), float(metric(result.logits))
            st.write(f"metric {name}: {m0:.3f} → **{m1:.3f}** ({m1 - m0:+.3f})")
