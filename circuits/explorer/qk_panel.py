""""Why this attention": the QK decomposition of one head's attention from an attention feature's
position (circuits.attribution.qk), shown in the node inspector."""

from __future__ import annotations

import streamlit as st

from circuits.explorer.state import MODELS, dashboards_for, guarded, on_model, run_model, state


def qk_unavailable(full, run: dict) -> str | None:
    """Why the QK panel cannot explain this graph's heads (None when it can)."""
    meta = full.metadata
    if meta.get("aggregated"):
        return (f"This graph aggregates {meta.get('n_prompts', 'many')} prompts of the {meta.get('study', '')} "
                "study by role (positions are roles): a head's attention is explained on one prompt — open or trace "
                "a single-prompt graph.")
    if run["prompt"] is None:
        return "This graph does not record the prompt it was traced on, so its attention cannot be recomputed."
    if run["model"] not in MODELS:
        return (f"This graph was traced on the model {run['model']!r}; the explorer runs {' and '.join(MODELS)}, so it "
                "cannot recompute its attention.")
    if full.head_weights is None or not bool(full.head_weights.abs().sum() > 0):
        return (f"This graph was made with the {meta.get('method', 'autograd')} method, which keeps no per-head edge "
                "parts, so there is no head to start from. Trace it with every attention layer replaced (sidebar: "
                "replaced layers) to get the analytic method's per-head parts.")
    return None


def qk_store(full, run: dict) -> dict | None:
    """The QK results of the graph shown (its prompt run once; each (head, query, keys, quantity) explained once),
    kept in the session state; None after saying why the model could not be run."""
    from circuits.attribution.sources import collect_sources

    s = state()
    store = s.get("qk_store")
    if store is None or store["graph"] is not full:
        store = s["qk_store"] = {"graph": full, "rm": None, "cache": None, "sources": None, "results": {}}
    if store["cache"] is None:
        rm = run_model(run)
        cache = None if rm is None else on_model(rm.run, run["prompt"])
        if cache is None:
            return None
        if cache.n_pos != len(full.metadata.get("token_strings") or []):
            st.error(f"the graph's prompt gives {cache.n_pos} tokens here but the graph has "
                     f"{len(full.metadata.get('token_strings') or [])}: its attention cannot be recomputed")
            return None
        sources = on_model(collect_sources, rm, cache)
        if sources is None:
            return None
        store.update(rm=rm, cache=cache, sources=sources)
    return store


def qk_explained(store: dict, layer: int, head: int, query: int, keys: tuple[int, ...], quantity: str):
    """`explain_attention` for the panel's choice, once per (graph, head, query, keys, quantity)."""
    from circuits.attribution.qk import explain_attention

    key = (layer, head, query, keys, quantity)
    if key not in store["results"]:
        got = on_model(explain_attention, store["rm"], store["cache"], layer, head, query,
                       keys if len(keys) == 2 else keys[0], quantity=quantity, sources=store["sources"])
        if got is None:
            return None
        store["results"][key] = got
    return store["results"][key]


def _jump_to(node) -> None:
    """Select `node` in the inspector (a button's callback: it runs before the page is drawn)."""
    state()["selected"] = node
    # the node list starts again from the selected node (setting its value here would make Streamlit warn that the
    # widget has a default index and a value set through the session state)
    st.session_state.pop("node_pick", None)


def _qk_by_hand() -> None:
    """Head, key or contrast chosen by hand: the edge picker no longer describes the choice."""
    st.session_state["qk_edge"] = -1


def _qk_from_edge(edges: list) -> None:
    """The edge picker's callback: explain the chosen edge's strongest head at its source's position."""
    ss = st.session_state
    i = ss.get("qk_edge", -1)
    if isinstance(i, int) and 0 <= i < len(edges):
        ss["qk_head"], ss["qk_key"], ss["qk_versus"] = edges[i].head, edges[i].source.pos, -1
        state()["qk_key_for"] = edges[i].head


def qk_panel(full, g, run: dict, node) -> None:
    """"Why this attention": the QK decomposition of one head's attention from the attention feature's position —
    the pattern row, the top (query-side, key-side) pairs, the per-side marginals, and a way to jump to those nodes.
    Head and key default to the largest per-head part of the feature's incoming edges (`head_routes.default_route`)."""
    import pandas as pd
    import plotly.graph_objects as go

    from circuits import export
    from circuits.attribution.head_routes import default_route, edge_routes, head_shares

    s, ss = state(), st.session_state
    st.markdown("#### why this attention")
    st.caption("The QK side: which sources in the query's and the keys' residual streams made the head look where it "
               "did (exact, frozen LayerNorm scales; docs/qk-attribution.md). The heatmap above gives each head's "
               "edges into this feature by source position.")
    why = qk_unavailable(full, run)
    if why is not None:
        st.info(why)
        return
    shares = guarded(head_shares, full, node)
    route = guarded(default_route, full, node) if shares is not None else None
    if shares is None or route is None:
        st.info("This feature's incoming edges have no per-head parts, so there is no head to start from.")
        return
    toks = full.metadata.get("token_strings") or []

    def tok(p: int) -> str:
        return repr(toks[p]) if 0 <= p < len(toks) else "?"

    n_heads, query = shares.shape[0], node.pos
    positions = list(range(query + 1))
    head_total = shares.sum(1)
    prev = s.get("qk_for")
    # a new node (or the widgets' values dropped while another node was shown): the node's own defaults
    if prev is None or prev[0] is not full or prev[1] != node or not {"qk_head", "qk_key", "qk_versus", "qk_edge"} <= set(ss):
        s["qk_for"] = (full, node)
        ss["qk_head"], ss["qk_key"], ss["qk_versus"], ss["qk_edge"] = route[0], route[1], -1, -1
        s["qk_key_for"] = route[0]
    edges = guarded(edge_routes, full, node, 20) or []
    edge_texts = {i: f"{export.node_label(full, r.source)} (pos {r.source.pos}): weight {r.weight:+.3f}, of which "
                     f"L{node.layer}.H{r.head} carries {r.head_part:+.3f}" for i, r in enumerate(edges)}
    st.selectbox("start from an incoming edge (its strongest head, its source's position)", [-1] + list(edge_texts),
                 key="qk_edge", format_func=lambda i: edge_texts.get(i, "—"), on_change=_qk_from_edge,
                 args=(edges,))
    c = st.columns([3, 3, 3, 2, 2, 1])
    head = c[0].selectbox("head", list(range(n_heads)), key="qk_head",
                          format_func=lambda h: f"L{node.layer}.H{h} ({float(head_total[h] / head_total.sum()):.0%})",
                          help="the head's share of the per-head parts of the feature's incoming edges",
                          on_change=_qk_by_hand)
    if s.get("qk_key_for") != head:  # another head: its own strongest source position
        s["qk_key_for"] = head
        ss["qk_key"] = int(shares[head].argmax())
    row = shares[head]
    key = c[1].selectbox("key position", positions, key="qk_key",
                         format_func=lambda p: f"{p}: {tok(p)} ({float(row[p] / row.sum().clamp_min(1e-30)):.0%})",
                         help="the share of this head's edge parts that come from each source position",
                         on_change=_qk_by_hand)
    versus = c[2].selectbox("versus (a contrast)", [-1] + positions, key="qk_versus",
                            format_func=lambda p: "none" if p < 0 else f"{p}: {tok(p)}", on_change=_qk_by_hand)
    quantity = c[3].radio("explain", ["score", "pattern"], key="qk_quantity",
                          format_func=lambda q: "score" if q == "score" else "pattern (1st order)")
    constants = c[4].toggle("constants", key="qk_constants",
                            help="list pairs with a constant part (biases, LayerNorm β) among the top pairs")
    k = int(c[5].number_input("pairs", 1, 100, value=10, key="qk_top"))
    if versus == key:
        st.info("A contrast needs a second key position different from the first: choose another, or none.")
        return
    keys = (key,) if versus < 0 else (key, versus)
    store = qk_store(full, run)
    if store is None:
        return
    qk = qk_explained(store, node.layer, head, query, keys, quantity)
    if qk is None:
        return

    def ident(n, pos: int) -> str:
        return f"const@{pos}" if n is None else export.node_id(n)

    db, _ = dashboards_for(run["model"], run["dicts"])
    known = store.setdefault("labels", {})  # feature labels from the dashboards, read once per graph

    def label(n) -> str:
        """The page's label of the node, else its dashboard's label, else the node's description."""
        if n is None:
            return "constant part (biases, LayerNorm β)"
        mine = s["ui"]["labels"].get(export.node_id(n))
        if mine:
            return mine
        if n not in known:
            known[n] = (guarded(db.labels, [n]) or {}).get(n) if db is not None and n.kind.endswith("_feature") \
                else None
        return known[n] or export.node_label(full, n)

    total = qk.total()
    what = ("pre-softmax score" if quantity == "score" else "first-order pattern change (linearised, not A itself)")
    st.markdown(f"**{qk.describe()}** — {what}: **{qk.value:+.4f}**; Σ of all {len(qk.query_nodes)} × "
                f"{len(qk.key_nodes)} terms {total:+.4f}; pattern at the key{'s' if len(keys) > 1 else ''}: "
                + ", ".join(f"A[{query}, {q}] = {float(qk.pattern[q]):.4f}" for q in keys))
    colours = ["#e6550d" if p == keys[0] else "#3182bd" if len(keys) > 1 and p == keys[1] else "#bdbdbd"
               for p in positions]
    fig = go.Figure(go.Bar(x=[f"{p}:{toks[p] if p < len(toks) else '?'}" for p in positions],
                           y=[float(v) for v in qk.pattern.tolist()], marker_color=colours,
                           customdata=[float(v) for v in qk.scores.tolist()],
                           hovertemplate="%{x}<br>pattern %{y:.4f}<br>score %{customdata:.3f}<extra></extra>"))
    fig.update_layout(height=220, margin={"l": 10, "r": 10, "t": 30, "b": 10}, yaxis={"title": "attention"},
                      title={"text": f"pattern row of L{node.layer}.H{head} from {query}:{tok(query)}",
                             "font": {"size": 13}})
    st.plotly_chart(fig, width="stretch", key="qk_pattern")

    pairs = qk.top(k, constants=constants)
    st.markdown(f"**top {len(pairs)} query-side × key-side pairs**"
                + ("" if constants else " (pairs of two sources; turn on 'constants' for the rest)"))
    st.dataframe(pd.DataFrame([{"query": ident(t.query, query), "query label": label(t.query),
                                "key": ident(t.key, t.key_pos), "key label": label(t.key), "key pos": t.key_pos,
                                "contribution": t.contribution} for t in pairs]),
                 width="stretch", hide_index=True, key="qk_pairs")
    qm, km = qk.query_marginals(), qk.key_marginals()
    a, b = st.columns(2)
    for col, side, rows in ((a, "query side", qm), (b, "key side", km)):
        const = sum(m.contribution for m in rows if m.node is None)
        col.markdown(f"**{side}** ({len(rows)} rows, each summed over the other side): sources "
                     f"{sum(m.contribution for m in rows if m.node is not None):+.4f} + constant parts {const:+.4f}"
                     f" = {sum(m.contribution for m in rows):+.4f}")
        # the contribution right after the node: a long label column pushed it out of a half-width table
        col.dataframe(pd.DataFrame([{"node": ident(m.node, m.pos), "contribution": m.contribution, "pos": m.pos,
                                     "label": label(m.node)} for m in rows]),
                      width="stretch", hide_index=True, height=280, key=f"qk_{side.split()[0]}_marginals")
    if len(keys) == 2:
        net = qk.key_net()
        st.markdown(f"**key side, net per source over both keys** ({keys[0]} counts +, {keys[1]} counts −: a source "
                    "at both keys — e.g. a dense feature — mostly cancels here)")
        st.dataframe(pd.DataFrame([{"key-side source": n.name, "net": n.contribution,
                                    **{f"at {q}": sum(m.contribution for m in n.parts if m.pos == q) for q in keys}}
                                   for n in net]), width="stretch", hide_index=True, height=240, key="qk_net")
    # jump to a node shown above (those of the pruned graph: the inspector shows its nodes)
    shown: list = []
    for n in [t.query for t in pairs] + [t.key for t in pairs] + [m.node for m in qm[:10]] + [m.node for m in km[:10]]:
        if n is not None and n not in shown:
            shown.append(n)
    in_g = set(g.nodes)
    here = [n for n in shown if n in in_g]
    if here:
        c = st.columns([4, 1])
        names = {export.node_id(n): n for n in here}
        if ss.get("qk_goto") not in names:
            ss["qk_goto"] = next(iter(names))
        texts = {i: f"{i} — {label(n)}" for i, n in names.items()}  # (format_func must not read the session)
        pick = c[0].selectbox("go to a node shown above", list(names), key="qk_goto",
                              format_func=lambda i: texts.get(i, i))
        c[1].button("select in the inspector", key="qk_go", on_click=_jump_to, args=(names[pick],))
    if len(here) < len(shown):
        missing = len(shown) - len(here)
        st.caption(f"{missing} of the {len(shown)} nodes shown {'is' if missing == 1 else 'are'} not in the pruned "
                   "graph (lower the thresholds to inspect them)")
