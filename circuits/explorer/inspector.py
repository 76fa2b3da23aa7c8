"""The 'node' tab: the selected node's numbers, pin and label, dashboard, edges, activations on the
prompt, per-head contributions, and for attention features the QK panel."""

from __future__ import annotations

import streamlit as st

from circuits.dashboards.store import enrichment_evidence
from circuits.explorer.markup import _md_escape, context_html
from circuits.explorer.qk_panel import qk_panel
from circuits.explorer.state import MODELS, dashboards_for, guarded, on_model, run_model, state


def node_inspector(g, full, run: dict, influence) -> None:
    import pandas as pd
    import plotly.express as px

    from circuits import export

    s = state()
    node = s["selected"]
    if node is None or node not in set(g.nodes):
        st.info("Select a node: click it in the graph, or pick it from the list above.")
        return
    row_full = full.row(node)
    custom = s["ui"]["labels"].get(export.node_id(node))  # may come from an opened file: escaped
    st.subheader(_md_escape(custom) if custom else export.node_label(full, node))
    st.caption(f"{export.node_id(node)} · activation {float(full.activations[row_full]):.4f} · pre-activation "
               f"{float(full.pre_activations[row_full]):.4f} · constant {float(full.constants[row_full]):.4f}")
    c1, c2 = st.columns(2)
    with c1:
        pinned = node.to_json() in s["ui"]["pins"]
        if st.button("unpin this node" if pinned else "pin this node", key="pin"):
            if pinned:
                s["ui"]["pins"].remove(node.to_json())
            else:
                s["ui"]["pins"].append(node.to_json())
            st.rerun()  # the button and the subgraph tab show the new state
        label = st.text_input("custom label", value=s["ui"]["labels"].get(export.node_id(node), ""), key=f"label_in:{export.node_id(node)}")  # one box per node: it shows that node's label
        if st.button("save label", key="save_label"):
            if label.strip():
                s["ui"]["labels"][export.node_id(node)] = label.strip()
            else:
                s["ui"]["labels"].pop(export.node_id(node), None)
            st.rerun()  # the heading shows the label
    with c2:
        if node.kind.endswith("_feature") and run["model"] in MODELS:
            db, why = dashboards_for(run["model"], run["dicts"])
            name = f"{'attn_sae' if node.kind == 'attn_feature' else 'transcoder'}_L{node.layer}"
            if db is None:
                st.warning(f"no dashboard: {why}")
            else:
                dash = guarded(db.get, name, node.index)
                if dash is not None:
                    st.markdown(f"**{_md_escape(dash.label)}** — density {dash.density:.3%}, max "
                                f"{dash.max_activation:.2f}")
                    evidence = enrichment_evidence(dash)
                    if evidence is not None:  # what the label counted (top 20 logits), beside the top 6 shown
                        st.caption(_md_escape(evidence))
                    st.write("promotes: " + ", ".join(f"`{t}` {v:+.2f}" for t, v in dash.logits_top[:6]))
                    st.write("suppresses: " + ", ".join(f"`{t}` {v:+.2f}" for t, v in dash.logits_bottom[:6]))
                    st.caption("logit effect per unit of activation; the top 6 each way (the label's promote / "
                               "suppress claims count the top 20)")
                    st.html("".join(context_html(e.tokens, e.focus, e.activation) for e in dash.top_examples()[:5]))
    incoming = full.incoming(node)
    rows_in = [{"source": export.node_label(full, n), "weight": w} for n, w in incoming.items()]
    out_mask = full.edge_index[1] == row_full
    rows_out = [{"target": export.node_label(full, full.nodes[int(t)]), "weight": float(w)}
                for t, w in zip(full.edge_index[0][out_mask], full.edge_weight[out_mask], strict=True)]
    a, b = st.columns(2)
    a.markdown(f"**incoming edges** ({len(rows_in)})")
    a.dataframe(pd.DataFrame(rows_in).sort_values("weight", key=abs, ascending=False) if rows_in else pd.DataFrame(),
                height=260, width="stretch", hide_index=True)
    b.markdown(f"**outgoing edges** ({len(rows_out)})")
    b.dataframe(pd.DataFrame(rows_out).sort_values("weight", key=abs, ascending=False) if rows_out
                else pd.DataFrame(), height=260, width="stretch", hide_index=True)
    if node.kind.endswith("_feature") and run["prompt"] is not None and run["model"] in MODELS:
        from circuits import dashboards

        name = f"{'attn_sae' if node.kind == 'attn_feature' else 'transcoder'}_L{node.layer}"
        key = (id(full), name, node.index)
        if st.session_state.get("acts_key") != key:
            rm = run_model(run)
            st.session_state["acts"] = None if rm is None else on_model(dashboards.activations_on, rm, run["prompt"], name, node.index)
            st.session_state["acts_key"] = key
        acts = st.session_state["acts"]
        if acts:
            st.markdown("**activation on every token of the prompt**")
            st.plotly_chart(px.bar(x=[f"{i}:{t}" for i, (t, _) in enumerate(acts)], y=[a for _, a in acts],
                                   labels={"x": "token", "y": "activation"}, height=240), width="stretch")
    if node.kind == "attn_feature" and full.head_weights is not None:
        mask = full.edge_index[0] == row_full
        heads = full.head_weights[mask]
        if heads.numel() and not bool(heads.any()):  # the method kept no per-head parts: no empty grid
            st.caption("per-head contributions: this graph's attribution method keeps no per-head parts")
        elif heads.numel():
            pos = [full.nodes[int(s_)].pos for s_ in full.edge_index[1][mask]]
            n_pos = len(full.metadata["token_strings"])
            grid = [[0.0] * n_pos for _ in range(heads.shape[1])]
            for k, p in enumerate(pos):
                for h in range(heads.shape[1]):
                    grid[h][p] += float(heads[k, h])
            st.markdown("**per-head, per-source-position contributions** (sum of incoming edge parts)")
            st.plotly_chart(px.imshow(grid, x=[f"{i}:{t}" for i, t in enumerate(full.metadata["token_strings"])],
                                      y=[f"head {h}" for h in range(heads.shape[1])], color_continuous_scale="RdBu",
                                      color_continuous_midpoint=0, aspect="auto", height=300),
                            width="stretch")
    if node.kind == "attn_feature":
        guarded(qk_panel, full, g, run, node)  # whatever fails in the panel is a message, never a traceback
