"""The 'graph' and 'subgraph' tabs: the browser graph view (or the server's plotly drawing for graphs
too large for it), and the pinned nodes' subgraph with supernodes."""

from __future__ import annotations

import streamlit as st

from circuits.explorer.state import KIND_COLOURS, _pack, guarded, ranked_nodes, state


def graph_figure(graph, influence, labels: dict):
    import numpy as np
    import plotly.graph_objects as go

    nan = float("nan")
    from circuits import export

    rank = {i: n.sublayer_rank for i, n in enumerate(graph.nodes)}
    slots: dict[tuple[int, int], list[int]] = {}
    for i, n in enumerate(graph.nodes):
        slots.setdefault((rank[i], n.pos), []).append(i)
    x, y = [0.0] * graph.n_nodes, [0.0] * graph.n_nodes
    for (r, pos), rows in slots.items():
        rows.sort(key=lambda i: -float(influence[i]))
        for k, i in enumerate(rows):
            x[i] = pos + (k - (len(rows) - 1) / 2) * min(0.8 / max(1, len(rows)), 0.2)
            y[i] = r
    fig = go.Figure()
    w = graph.edge_weight
    if graph.n_edges:
        scale = float(w.abs().max())
        order = w.abs().argsort(descending=True)[:1500]  # the strongest edges keep the page responsive
        weights = w[order].tolist()
        targets, sources = graph.edge_index[:, order].tolist()
        for sign, colour in ((1, "rgba(33,102,172,{a})"), (-1, "rgba(178,24,43,{a})")):
            for lo, hi, width in ((0.5, 1.01, 3.0), (0.15, 0.5, 1.6), (0.0, 0.15, 0.6)):
                xs, ys = [], []
                for v, t, s_ in zip(weights, targets, sources, strict=True):
                    if (v >= 0) != (sign > 0) or not lo <= abs(v) / scale < hi:
                        continue
                    xs += [x[s_], x[t], nan]
                    ys += [y[s_], y[t], nan]
                if xs:  # numpy arrays: plotly validates them in bulk (lists are checked element by element)
                    fig.add_trace(go.Scatter(x=np.array(xs), y=np.array(ys), mode="lines", hoverinfo="skip",
                                             showlegend=False,
                                             line={"width": width, "color": colour.format(a=0.35 + 0.5 * lo)}))
    inf = influence.clamp_min(0)
    size = (8 + 30 * (inf / inf.max().clamp_min(1e-12)).sqrt()).tolist()
    for kind, colour in KIND_COLOURS.items():
        rows = [i for i, n in enumerate(graph.nodes) if n.kind == kind]
        if not rows:
            continue
        text = [f"{labels.get(export.node_id(graph.nodes[i])) or export.node_label(graph, graph.nodes[i])}<br>"
                f"activation {float(graph.activations[i]):.3f}<br>influence {float(influence[i]):.4f}"
                for i in rows]
        fig.add_trace(go.Scatter(x=np.array([x[i] for i in rows]), y=np.array([y[i] for i in rows]),
                                 mode="markers", name=KIND_WORDS.get(kind, kind),
                                 marker={"size": np.array([size[i] for i in rows]), "color": colour,
                                         "line": {"width": 1, "color": "#333"}},
                                 customdata=np.array(rows), hovertext=text, hoverinfo="text"))
    toks = graph.metadata.get("token_strings", [])
    ranks = sorted(set(rank.values()))
    names = {n.sublayer_rank: n.sublayer_name for n in graph.nodes}
    fig.update_layout(height=620, margin={"l": 10, "r": 10, "t": 10, "b": 10}, clickmode="event+select",
                      xaxis={"tickmode": "array", "tickvals": list(range(len(toks))), "ticktext": toks,
                             "showgrid": False},
                      yaxis={"tickmode": "array", "tickvals": ranks, "ticktext": [names[r] for r in ranks],
                             "showgrid": True}, legend={"orientation": "h"})
    return fig


#: The legend's words for the node kinds (as the browser graph view's)
KIND_WORDS = {"token": "token", "attn_feature": "attention feature", "mlp_feature": "transcoder feature",
              "attn_error": "attention error", "mlp_error": "MLP error", "logit": "logit",
              "logit_diff": "logit difference"}


def server_graph(g, influence, labels: dict) -> None:
    """The pruned graph drawn by the server (plotly), for graphs too large to send to the browser view."""
    s = state()
    event = st.plotly_chart(graph_figure(g, influence, labels), on_select="rerun", selection_mode="points",
                            key="graph_chart", width="stretch")
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "points", [])
    if points and points[0].get("customdata") is not None:
        s["selected"] = g.nodes[int(points[0]["customdata"])]


def graph_tab(full, g, influence, settings: dict, labels: dict) -> None:
    """The graph view component: the full graph goes to the browser once, which prunes and draws it for any
    thresholds at once (and reports them back); a click on a node selects it."""
    from circuits.graph_view import MAX_BROWSER_EDGES, graph_view, is_published, publish, retire

    s = state()
    if full.n_edges > MAX_BROWSER_EDGES:
        st.caption(f"{full.n_edges:,} edges are more than the browser view takes ({MAX_BROWSER_EDGES:,}): the "
                   "server prunes and draws this graph (use the sidebar's thresholds)")
        server_graph(g, influence, labels)
        return
    view = s.get("view")
    shared = s.get("shared_view")
    if (view is None or view["graph"] is not full) and shared is not None and shared["graph"] is full:
        if view is not None and not view.get("shared"):
            retire(view["packed"].graph_id)
        view = s["view"] = shared
    if view is None or view["graph"] is not full:
        with st.spinner("preparing the graph view ..."):
            packed = guarded(_pack, full, ranked_nodes(full))
        if packed is None:
            return
        # the example's file is shared by every tab: it is never retired by one of them
        old_id = view["packed"].graph_id if view and not view.get("shared") else None
        published = guarded(publish, packed, retire=old_id)
        if published is None:
            return
        view = s["view"] = {"graph": full, "packed": packed, "published": published,
                            "index": {n: i for i, n in enumerate(full.nodes)}}
    elif not is_published(view["published"]):  # removed as stale (a day old) by another tab
        guarded(publish, view["packed"])
    selected = view["index"].get(s["selected"]) if s["selected"] is not None else None
    guarded(graph_view, view["published"], node_threshold=settings["node_threshold"],
            edge_threshold=settings["edge_threshold"], cap=settings["cap"],
            epoch=st.session_state.get("threshold_epoch", 0), selected=selected, user_labels=labels,
            key="graph_view", user_groups=user_groups(view, s["ui"]["supernodes"]))
    st.caption("Edges: blue excites, red inhibits, width ∝ |weight|; orange: the highlighted route. Marker size: "
               "influence on the target. Purple diamonds: supernodes (×N features; click to expand).")


def pinned_subgraph(g, pins: list):
    """The pins' subgraph of the shown graph `g`: the pinned nodes present in it, and the token and target nodes
    joined to one of them by an edge (tokens with no edge to a pin are left out)."""
    import torch

    present = set(pins) & set(g.nodes)
    rows = torch.tensor([n in present for n in g.nodes], dtype=torch.bool)
    ends = torch.tensor([n.kind == "token" or n.kind.startswith("logit") for n in g.nodes], dtype=torch.bool)
    t, src = g.edge_index
    touching = torch.zeros(g.n_nodes, dtype=torch.bool)
    touching[src[rows[t]]] = True  # sources of edges into a pin
    touching[t[rows[src]]] = True  # targets of edges out of a pin
    return g.subgraph(rows | (ends & touching))


def user_groups(view: dict, supernodes: list[dict]) -> list[dict]:
    """The page's supernodes as the view's groups (`{"name", "members": [full-graph node index]}`)."""
    from circuits.graph import Node

    index = view["index"]
    return [{"name": sn["name"], "members": [index[m] for m in (Node.from_json(v) for v in sn["nodes"]) if m in index]}
            for sn in supernodes if not sn.get("auto")]  # automatic ones saved in a file are the view's own


def view_supernodes(view: dict | None, supernodes: list[dict] = ()) -> list[tuple[str, list]]:
    """The supernodes the graph view draws (the page's first, then the automatic ones, each keeping the members no
    earlier group took), as ``(name, member nodes)``; empty when the view has not been drawn (e.g. graphs drawn by
    the server)."""
    from circuits.graph_view import merged_groups

    if not view:
        return []
    nodes = view["graph"].nodes
    groups = merged_groups(user_groups(view, list(supernodes)), view["packed"].meta.get("supernodes", []))
    return [(g["name"], [nodes[i] for i in g["members"]]) for g in groups]


def subgraph_view(g) -> None:
    from circuits import export
    from circuits.graph import Node
    from circuits.ids import parse_node

    s = state()
    pins = [Node.from_json(p) for p in s["ui"]["pins"]]
    from circuits.explorer.markup import _md_escape

    custom = s["ui"]["labels"]
    st.markdown(f"**pinned nodes** ({len(pins)}): " + (", ".join(_md_escape(custom.get(export.node_id(n)) or
                                                                            export.node_label(g, n)) for n in pins)
                                                      or "none yet: select a node and press 'pin this node' in its tab"))
    if pins:
        sub = pinned_subgraph(g, pins)
        missing = len(set(pins) - set(g.nodes))
        st.caption(f"subgraph of the pins: {sub.n_nodes} nodes, {sub.n_edges} edges (with the tokens and targets "
                   "joined to a pin by an edge)" + (f"; {missing} pinned node(s) are pruned away at these thresholds"
                                                  if missing else ""))
        if sub.n_edges:
            from circuits.pruning import influence

            st.plotly_chart(graph_figure(sub, influence(sub), s["ui"]["labels"]), width="stretch",
                            key="sub_chart")
        if st.button("clear pins", key="clear_pins"):
            s["ui"]["pins"] = []
    groups = view_supernodes(s.get("view"), s["ui"]["supernodes"])
    if groups:
        with st.expander(f"the graph view's supernodes ({len(groups)}: yours first, then automatic ones)"):
            for name, members in groups:
                st.write(f"**{name}**: " + ", ".join(export.node_label(g, n) for n in members))
    with st.form("supernode", clear_on_submit=True):
        name = st.text_input("supernode name", key="sn_name")
        members = st.multiselect("members", [export.node_id(n) for n in g.nodes if n.kind.endswith("_feature")],
                                 key="sn_members", select_all=False)
        if st.form_submit_button("add supernode"):
            if not name.strip() or not members:
                st.warning("a supernode needs a name and at least one member")
            else:
                nodes = [guarded(parse_node, k) for k in members]
                if None not in nodes:
                    s["ui"]["supernodes"].append({"name": name.strip(), "nodes": [n.to_json() for n in nodes]})
                    st.rerun()  # the view and the list above show it
    for k, sn in enumerate(list(s["ui"]["supernodes"])):
        if sn.get("auto"):  # saved by `circuits trace` with the graph: listed in the expander above
            continue
        c1, c2 = st.columns([6, 1])
        c1.write(f"**{sn['name']}**: " + ", ".join(export.node_label(g, Node.from_json(n)) for n in sn["nodes"]))
        if c2.button("remove", key=f"sn_remove_{k}"):
            s["ui"]["supernodes"].pop(k)
            st.rerun()
