"""The 'logit lens' tab: the top token of every layer's residual stream at every position."""

from __future__ import annotations

import streamlit as st

from circuits.explorer.checks import single_prompt
from circuits.explorer.state import guarded, on_model, run_model


def lens_view(full, run: dict) -> None:
    import plotly.graph_objects as go

    from circuits.attribution.targets import token_string
    from circuits.lens import logit_lens

    if not single_prompt(full, run):
        return
    key = (id(full), run["prompt"])
    if st.session_state.get("lens_key") != key:  # once per graph, not on every rerun
        rm = run_model(run)
        cache = None if rm is None else on_model(rm.run, run["prompt"])
        if cache is None:
            return
        lens = guarded(logit_lens, rm, cache)
        if lens is None:
            return
        toks = [token_string(rm.model, t) for t in cache.tokens.tolist()]
        text = [[token_string(rm.model, t) for t in row] for row in lens.top_tokens]
        st.session_state["lens"] = (lens, toks, text)
        st.session_state["lens_key"] = key
    lens, toks, text = st.session_state["lens"]
    st.caption(f"logit lens on the graph's prompt: {run['prompt']!r}")
    fig = go.Figure(go.Heatmap(z=lens.top_probs.tolist(), x=[f"{i}:{t}" for i, t in enumerate(toks)],
                               y=lens.layers, text=text, texttemplate="%{text}", colorscale="Blues",
                               colorbar={"title": "p(top)"}))
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    st.plotly_chart(fig, width="stretch")
