"""The circuits explorer (Streamlit): trace a prompt's feature circuit and investigate it. UI only — every number
comes from the `circuits` library.

    streamlit run app.py
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import streamlit as st

from circuits import CircuitsError

EXAMPLE_PROMPT = "When Mary and John went to the store, John gave a drink to"
KIND_COLOURS = {"token": "#9e9e9e", "attn_feature": "#3182bd", "mlp_feature": "#31a354", "attn_error": "#9ecae1",
                "mlp_error": "#a1d99b", "logit": "#e6550d", "logit_diff": "#e6550d"}
GALLERY = Path(__file__).parent / "data" / "graphs"
#: Case-study report folders: the shipped ones, and those `circuits study` writes under ./reports.
STUDY_DIRS = (Path(__file__).parent / "data" / "studies", Path("reports"))

st.set_page_config(page_title="circuits explorer", layout="wide")


# -- library calls (cached) ------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="loading the model and its dictionaries ...")
def load(model_name: str, dicts_name: str):
    from circuits import load_dictionaries, load_model

    model, _ = load_model(model_name)
    return model, load_dictionaries(dicts_name, model)


@st.cache_resource
def dashboards_for(model_name: str, dicts_name: str):
    from circuits import dashboards
    from circuits.model import DATA_DIR

    model, dset = load(model_name, dicts_name)
    path = DATA_DIR / "dashboards" / f"{model_name}.sqlite"
    try:
        return dashboards.Dashboards(path, replacement(model_name, dicts_name, None)), None
    except CircuitsError as e:
        return None, str(e)


def replacement(model_name: str, dicts_name: str, layers: tuple[int, ...] | None):
    from circuits import ReplacementModel

    model, dset = load(model_name, dicts_name)
    chosen = [d for d in dset if layers is None or d.cfg.layer in layers]
    return ReplacementModel(model, chosen, name=model_name)


def guarded(fn, *args, **kwargs):
    """Run a library call; show a specific message instead of a traceback, keep the current graph."""
    try:
        return fn(*args, **kwargs)
    except CircuitsError as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 — the page must never show a traceback
        st.error(f"unexpected error ({type(e).__name__}): {e}")
        st.session_state["last_traceback"] = traceback.format_exc()
    return None


# -- state -----------------------------------------------------------------------------------------------------


def state():
    s = st.session_state
    s.setdefault("graph", None)  # the full graph
    s.setdefault("trace_key", None)
    s.setdefault("selected", None)  # Node
    s.setdefault("ui", {"pins": [], "supernodes": [], "labels": {}})
    return s


def do_trace(settings: dict) -> None:
    from circuits import attribute
    from circuits.attribution import Contrast, Logit, TopLogits

    s = state()
    rm = guarded(replacement, settings["model"], settings["dicts"], settings["layers"])
    if rm is None:
        return
    if settings["target_mode"] == "contrast":
        target = Contrast(settings["token"], settings["baseline"])
    elif settings["target_mode"] == "token":
        target = Logit((settings["token"],))
    else:
        target = TopLogits(settings["cum_prob"], settings["max_logits"])
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = guarded(attribute, rm, settings["prompt"], target, method="auto")
    for w in caught:
        if issubclass(w.category, UserWarning):
            st.warning(str(w.message))
    if graph is None:
        return
    s["graph"] = graph
    s["files"] = None
    s["settings"] = dict(settings)
    s["selected"] = None
    s["ui"] = {"pins": [], "supernodes": [], "labels": {}}


def ranked_nodes(graph):
    """`pruning.rank_nodes(graph)` (independent of the thresholds), computed once per graph for the server's
    pruning and the graph view."""
    from circuits.pruning import rank_nodes

    s = state()
    cached = s.get("ranked")
    if cached is None or cached[0] is not graph:
        cached = s["ranked"] = (graph, rank_nodes(graph))
    return cached[1]


def pruned(node_threshold: float, edge_threshold: float, max_features: int | None):
    from circuits import prune

    g = state()["graph"]
    return guarded(lambda: prune(g, node_threshold, edge_threshold, max_features, ranked=ranked_nodes(g)))


def with_ui(graph):
    """The graph with the page's pins, supernodes and labels in its metadata (for saving)."""
    graph.metadata["ui"] = state()["ui"]
    return graph


# -- views -----------------------------------------------------------------------------------------------------


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
                                 mode="markers", name=kind,
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


def node_inspector(g, full, settings, influence) -> None:
    import pandas as pd
    import plotly.express as px

    from circuits import export

    s = state()
    node = s["selected"]
    if node is None or node not in set(g.nodes):
        st.info("Select a node: click it in the graph, or pick it from the list above.")
        return
    row_full = full.row(node)
    st.subheader(export.node_label(full, node))
    st.caption(f"{export.node_id(node)} · activation {float(full.activations[row_full]):.4f} · pre-activation "
               f"{float(full.pre_activations[row_full]):.4f} · constant {float(full.constants[row_full]):.4f}")
    c1, c2 = st.columns(2)
    with c1:
        if st.button("pin this node", key="pin"):
            if node.to_json() not in s["ui"]["pins"]:
                s["ui"]["pins"].append(node.to_json())
        label = st.text_input("custom label", value=s["ui"]["labels"].get(export.node_id(node), ""), key="label_in")
        if st.button("save label", key="save_label"):
            if label.strip():
                s["ui"]["labels"][export.node_id(node)] = label.strip()
            else:
                s["ui"]["labels"].pop(export.node_id(node), None)
    with c2:
        if node.kind.endswith("_feature"):
            db, why = dashboards_for(settings["model"], settings["dicts"])
            name = f"{'attn_sae' if node.kind == 'attn_feature' else 'transcoder'}_L{node.layer}"
            if db is None:
                st.warning(f"no dashboard: {why}")
            else:
                dash = guarded(db.get, name, node.index)
                if dash is not None:
                    st.markdown(f"**{dash.label}** — density {dash.density:.3%}, max {dash.max_activation:.2f}")
                    st.write("promotes: " + ", ".join(f"`{t}` {v:+.2f}" for t, v in dash.logits_top[:6]))
                    st.write("suppresses: " + ", ".join(f"`{t}` {v:+.2f}" for t, v in dash.logits_bottom[:6]))
                    for e in dash.top_examples()[:5]:
                        text = "".join(f"**[{t}]**" if i == e.focus else t for i, t in enumerate(e.tokens))
                        st.markdown(f"`{e.activation:.2f}` {text}")
    incoming = full.incoming(node)
    rows_in = [{"source": export.node_label(full, n), "weight": w} for n, w in incoming.items()]
    out_mask = full.edge_index[1] == row_full
    rows_out = [{"target": export.node_label(full, full.nodes[int(t)]), "weight": float(w)}
                for t, w in zip(full.edge_index[0][out_mask], full.edge_weight[out_mask], strict=True)]
    a, b = st.columns(2)
    a.markdown(f"**incoming edges** ({len(rows_in)})")
    a.dataframe(pd.DataFrame(rows_in).sort_values("weight", key=abs, ascending=False) if rows_in else pd.DataFrame(),
                height=260, width="stretch")
    b.markdown(f"**outgoing edges** ({len(rows_out)})")
    b.dataframe(pd.DataFrame(rows_out).sort_values("weight", key=abs, ascending=False) if rows_out
                else pd.DataFrame(), height=260, width="stretch")
    if node.kind.endswith("_feature"):
        from circuits import dashboards

        name = f"{'attn_sae' if node.kind == 'attn_feature' else 'transcoder'}_L{node.layer}"
        key = (settings["model"], settings["dicts"], settings["layers"], settings["prompt"], name, node.index)
        if st.session_state.get("acts_key") != key:
            rm = replacement(settings["model"], settings["dicts"], settings["layers"])
            st.session_state["acts"] = guarded(dashboards.activations_on, rm, settings["prompt"], name, node.index)
            st.session_state["acts_key"] = key
        acts = st.session_state["acts"]
        if acts:
            st.markdown("**activation on every token of the prompt**")
            st.plotly_chart(px.bar(x=[f"{i}:{t}" for i, (t, _) in enumerate(acts)], y=[a for _, a in acts],
                                   labels={"x": "token", "y": "activation"}, height=240), width="stretch")
    if node.kind == "attn_feature" and full.head_weights is not None:
        mask = full.edge_index[0] == row_full
        heads = full.head_weights[mask]
        if heads.numel():
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


def checks(full, g, settings) -> None:
    from circuits.interventions import faithfulness, graph_metric, standard_ablations
    from circuits.pruning import graph_scores

    key = (id(full), g.n_nodes, g.n_edges)
    if st.session_state.get("scores_key") != key:  # scoring the full graph takes a moment: once per graph
        st.session_state["scores"] = (graph_scores(full), graph_scores(g))
        st.session_state["scores_key"] = key
    fs, ps = st.session_state["scores"]
    c = st.columns(4)
    c[0].metric("replacement (full)", f"{fs.replacement:.3f}")
    c[1].metric("completeness (full)", f"{fs.completeness:.3f}")
    c[2].metric("replacement (pruned)", f"{ps.replacement:.3f}")
    c[3].metric("completeness (pruned)", f"{ps.completeness:.3f}")
    if aggregated_notice(full):
        return
    n = len(full.metadata["token_strings"])
    rm = replacement(settings["model"], settings["dicts"], settings["layers"])
    shortest = min((d.context_size for d in rm.dictionaries), default=n)
    if n > shortest:
        st.warning(f"the prompt has {n} tokens but a dictionary was trained on {shortest}-token contexts")
    if full.metadata.get("bos_pos") == 0:
        st.caption("position 0 is BOS (attention sinks make it large; its nodes are token/error nodes at pos 0)")
    found = graph_metric(full)
    if found is not None and st.button("compute faithfulness (zero and mean ablation)", key="faith"):
        metric, _ = found
        ablations = standard_ablations(rm)
        for ab in ablations:
            f = guarded(faithfulness, rm, settings["prompt"], g, metric, ab)
            if f is not None:
                st.write(f"faithfulness ({f.ablation} ablation): **{f.score:.3f}** — circuit {f.circuit:.3f}, "
                         f"empty {f.empty:.3f}, model {f.full:.3f} ({f.n_features} features, {f.n_errors} errors)")


def aggregated_notice(graph) -> bool:
    """Case-study graphs aggregate many prompts by role: single-prompt tools do not apply to them."""
    if not graph.metadata.get("aggregated"):
        return False
    st.info(f"This graph aggregates {graph.metadata.get('n_prompts', 'many')} prompts of the "
            f"{graph.metadata.get('study', '')} study by role (positions are roles): faithfulness and interventions "
            "need a single prompt; the study's report has them (page 'case studies').")
    return True


def interventions(g, settings) -> None:
    import pandas as pd

    from circuits import Edit, export, intervene
    from circuits.attribution.targets import token_string
    from circuits.interventions import graph_metric

    if aggregated_notice(g):
        return
    feats = [n for n in g.nodes if n.kind.endswith("_feature")]
    if not feats:
        st.info("the pruned graph has no features to intervene on")
        return
    labels = {export.node_id(n): export.node_label(g, n) for n in feats}
    chosen = st.multiselect("features", [export.node_id(n) for n in feats], format_func=lambda k: labels[k],
                            key="iv_nodes")
    mode = st.radio("edit", ["zero", "scale", "clamp"], horizontal=True, key="iv_mode")
    value = st.number_input("value (scale factor or clamp value)", value=2.0, min_value=-1e4, max_value=1e4,
                            key="iv_value")
    frozen = st.toggle("frozen attention and LayerNorm", value=False, key="iv_frozen")
    if st.button("run intervention", key="iv_run"):
        if not chosen:
            st.warning("choose at least one feature")
            return
        from circuits.graph import Node

        nodes = [Node(k.split(":")[0], *map(int, k.split(":")[1:])) for k in chosen]
        edits = [Edit.zero(n) if mode == "zero" else Edit(n, "scale" if mode == "scale" else "set", float(value))
                 for n in nodes]
        rm = replacement(settings["model"], settings["dicts"], settings["layers"])
        result = guarded(intervene, rm, settings["prompt"], edits, frozen=frozen)
        if result is None:
            return
        before, after = result.clean_logits[-1].softmax(-1), result.logits[-1].softmax(-1)
        top = sorted(set(before.topk(8).indices.tolist()) | set(after.topk(8).indices.tolist()),
                     key=lambda t: -float(after[t]))
        st.dataframe(pd.DataFrame([{"token": token_string(rm.model, t), "p before": float(before[t]),
                                    "p after": float(after[t]),
                                    "logit change": float(result.logit_change[-1, t])} for t in top]),
                     width="stretch")
        found = graph_metric(g)
        if found is not None:
            metric, name = found
            m0, m1 = float(metric(result.clean_logits)), float(metric(result.logits))
            st.write(f"metric {name}: {m0:.3f} → **{m1:.3f}** ({m1 - m0:+.3f})")


def lens_view(settings) -> None:
    import plotly.graph_objects as go

    from circuits.attribution.targets import token_string
    from circuits.lens import logit_lens

    key = (settings["model"], settings["dicts"], settings["layers"], settings["prompt"])
    if st.session_state.get("lens_key") != key:  # once per traced prompt, not on every rerun
        rm = replacement(settings["model"], settings["dicts"], settings["layers"])
        cache = guarded(rm.run, settings["prompt"])
        if cache is None:
            return
        lens = logit_lens(rm, cache)
        toks = [token_string(rm.model, t) for t in cache.tokens.tolist()]
        text = [[token_string(rm.model, t) for t in row] for row in lens.top_tokens]
        st.session_state["lens"] = (lens, toks, text)
        st.session_state["lens_key"] = key
    lens, toks, text = st.session_state["lens"]
    fig = go.Figure(go.Heatmap(z=lens.top_probs.tolist(), x=[f"{i}:{t}" for i, t in enumerate(toks)],
                               y=lens.layers, text=text, texttemplate="%{text}", colorscale="Blues",
                               colorbar={"title": "p(top)"}))
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    st.plotly_chart(fig, width="stretch")


def files(full, g) -> None:
    from circuits import export

    which = st.radio("graph to save", ["pruned", "full"], horizontal=True, key="save_which")
    if st.button("prepare downloads", key="make_files"):  # serialising is work: only when asked
        out = with_ui(g if which == "pruned" else full)
        st.session_state["files"] = {
            "json": json.dumps(export.to_dict(out)), "dot": export.to_dot(out),
            "ct": json.dumps(export.to_circuit_tracer(out)), "svg": guarded(_svg, out)}
    ready = st.session_state.get("files")
    if ready:
        c = st.columns(4)
        c[0].download_button("JSON", ready["json"], "graph.json", "application/json", key="dl_json")
        c[1].download_button("DOT", ready["dot"], "graph.dot", "text/vnd.graphviz", key="dl_dot")
        c[2].download_button("circuit-tracer JSON", ready["ct"], "graph_ct.json", "application/json", key="dl_ct")
        if ready["svg"] is not None:
            c[3].download_button("SVG", ready["svg"], "graph.svg", "image/svg+xml", key="dl_svg")
    uploaded = st.file_uploader("open a saved graph (JSON)", type=["json"], key="upload")
    if uploaded is not None:
        load_graph_bytes(uploaded.getvalue(), uploaded.name)
    examples = sorted(GALLERY.glob("*.json")) if GALLERY.exists() else []
    if examples:
        pick = st.selectbox("example graphs", ["—"] + [p.name for p in examples], key="gallery")
        if pick != "—" and st.button("open example", key="open_example"):
            load_graph_bytes((GALLERY / pick).read_bytes(), pick)


def _svg(graph) -> str:
    import tempfile

    from circuits import export

    with tempfile.TemporaryDirectory() as tmp:
        return export.render(graph, Path(tmp) / "g.svg", "svg").read_text()


def load_graph_bytes(data: bytes, name: str) -> None:
    from circuits import export

    s = state()
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        st.error(f"{name}: not valid JSON ({e})")
        return
    graph = guarded(export.from_dict, parsed, name)
    if graph is None:
        return
    s["graph"] = graph
    s["ui"] = {"pins": [], "supernodes": [], "labels": {}, **(graph.metadata.get("ui") or {})}
    s["selected"] = None
    s["flash"] = f"opened {name}: {graph.n_nodes} nodes, {graph.n_edges} edges"
    st.rerun()


# -- page ------------------------------------------------------------------------------------------------------


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


def sidebar() -> dict:
    sb = st.sidebar
    sb.title("circuits")
    prompt = sb.text_area("prompt", EXAMPLE_PROMPT, height=90, key="prompt")
    model = sb.selectbox("model", ["organism", "gpt2"], key="model")
    dicts = sb.selectbox("dictionaries", ["organism"] if model == "organism" else
                         ["gpt2-transcoders", "gpt2-attn-kk"], key="dicts")
    n_layers = 4 if model == "organism" else 12
    layers = sb.multiselect("replaced layers", list(range(n_layers)), default=list(range(n_layers)), key="layers")
    mode = sb.radio("target", ["salient logits", "token", "contrast"], index=2, key="target_mode")
    token = baseline = ""
    cum_prob, max_logits = 0.95, 10
    if mode == "salient logits":
        cum_prob = sb.slider("cumulative probability", 0.05, 1.0, 0.95, 0.05, key="cum_prob")
        max_logits = sb.number_input("max logits", 1, 50, 10, key="max_logits")
    else:
        token = sb.text_input("token", "Mary", key="token")
        if mode == "contrast":
            baseline = sb.text_input("minus token", "John", key="baseline")
    node_t = sb.slider("node threshold", 0.05, 1.0, 0.8, 0.01, key="node_threshold", on_change=_thresholds_moved)
    edge_t = sb.slider("edge threshold", 0.05, 1.0, 0.98, 0.01, key="edge_threshold", on_change=_thresholds_moved)
    cap = sb.number_input("feature cap (0 = none)", 0, 5000, 0, key="cap", on_change=_thresholds_moved)
    go = sb.button("trace", type="primary", key="trace")
    return {"prompt": prompt, "model": model, "dicts": dicts, "layers": tuple(layers),
            "target_mode": {"salient logits": "salient", "token": "token", "contrast": "contrast"}[mode],
            "token": token, "baseline": baseline, "cum_prob": cum_prob, "max_logits": int(max_logits),
            "node_threshold": node_t, "edge_threshold": edge_t, "cap": int(cap) or None, "go": go}


def study_reports() -> dict[str, Path]:
    out = {}
    for base in STUDY_DIRS:
        if base.is_dir():
            for report in sorted(base.glob("*/report.md")):
                out[f"{report.parent.name} ({base})"] = report.parent
    return out


def studies_page() -> None:
    """Lists case-study reports; shows one (Markdown, plots, tables) and opens its aggregated circuit."""
    import re

    st.header("Case studies")
    reports = study_reports()
    if not reports:
        st.info("No reports yet. Run e.g. `circuits study ioi --n 200` (writes reports/ioi).")
        return
    pick = st.selectbox("report", list(reports), key="study_pick")
    folder = reports[pick]
    text = (folder / "report.md").read_text()
    c = st.columns(2)
    if c[0].button("open the aggregated circuit in the explorer", key="study_open"):
        st.session_state["goto_explorer"] = True  # the page radio is switched before it is drawn next run
        load_graph_bytes((folder / "circuit.json").read_bytes(), f"{folder.name}/circuit.json")
    if (folder / "results.json").exists():
        c[1].download_button("results.json", (folder / "results.json").read_bytes(), f"{folder.name}_results.json",
                             "application/json", key="study_dl")
    for chunk in re.split(r"(!\[[^\]]*\]\([^)]+\))", text):  # local images go through st.image
        m = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", chunk)
        if m:
            path = folder / m.group(2)
            if path.exists():
                st.image(str(path), caption=m.group(1))
        elif chunk.strip():
            st.markdown(chunk)


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
    from circuits import export
    from circuits.graph_view import MAX_BROWSER_EDGES, graph_view, pack, publish

    s = state()
    if full.n_edges > MAX_BROWSER_EDGES:
        st.caption(f"{full.n_edges:,} edges are more than the browser view takes ({MAX_BROWSER_EDGES:,}): the "
                   "server prunes and draws this graph (use the sidebar's thresholds)")
        server_graph(g, influence, labels)
        return
    view = s.get("view")
    if view is None or view["graph"] is not full:
        with st.spinner("preparing the graph view ..."):
            packed = guarded(pack, full, [export.node_label(full, n) for n in full.nodes], KIND_COLOURS,
                             ranked_nodes(full))
        if packed is None:
            return
        published = guarded(publish, packed, retire=view["packed"].graph_id if view else None)
        if published is None:
            return
        view = s["view"] = {"graph": full, "packed": packed, "published": published,
                            "index": {n: i for i, n in enumerate(full.nodes)}}
    selected = view["index"].get(s["selected"]) if s["selected"] is not None else None
    guarded(graph_view, view["published"], node_threshold=settings["node_threshold"],
            edge_threshold=settings["edge_threshold"], cap=settings["cap"],
            epoch=st.session_state.get("threshold_epoch", 0), selected=selected, user_labels=labels,
            key="graph_view")


def main() -> None:
    from circuits import export

    s = state()
    if st.session_state.pop("goto_explorer", False):
        st.session_state["page"] = "explorer"
    page = st.sidebar.radio("page", ["explorer", "case studies"], horizontal=True, key="page")
    if page == "case studies":
        studies_page()
        return
    apply_view_report()
    settings = sidebar()
    if s.get("flash"):
        st.success(s.pop("flash"))
    if settings["go"] or s["graph"] is None and s.get("settings") is None:
        with st.spinner("tracing ..."):
            do_trace(settings)
        s.setdefault("settings", dict(settings))
    if s["graph"] is None:
        st.info("Type a prompt and press trace.")
        return
    run = s.get("settings", settings)
    full = s["graph"]
    result = pruned(settings["node_threshold"], settings["edge_threshold"], settings["cap"])
    if result is None:
        return
    g = result.graph
    influence = result.node_influence[result.node_mask]
    targets = ", ".join(f"{t['label']!r} {t['value']:.2f}" + (f" (p={t['probability']:.2f})"
                                                               if t.get("probability") is not None else "")
                        for t in full.metadata["targets"])
    st.markdown(f"**{''.join(full.metadata['token_strings'][1:]).strip()}** → {targets}  \n"
                f"{full.n_nodes} nodes / {full.n_edges:,} edges, pruned to {g.n_nodes} / {g.n_edges:,}")
    tabs = st.tabs(["graph", "node", "subgraph", "checks", "intervene", "logit lens", "files"])
    labels = s["ui"]["labels"]
    with tabs[0]:
        by_id = {export.node_id(n): n for n in g.nodes if n.kind != "token"}
        names = {k: export.node_label(g, n) for k, n in by_id.items()}
        options = list(by_id)
        current = export.node_id(s["selected"]) if s["selected"] in set(g.nodes) else None
        pick = st.selectbox("select a node", ["—"] + options, index=options.index(current) + 1 if current else 0,
                            format_func=lambda k: names.get(k, k), key="node_pick")
        if pick != "—":
            s["selected"] = by_id[pick]
        graph_tab(full, g, influence, settings, labels)
    with tabs[1]:
        node_inspector(g, full, run, influence)
    with tabs[2]:
        subgraph_view(g)
    with tabs[3]:
        checks(full, g, run)
    with tabs[4]:
        interventions(g, run)
    with tabs[5]:
        lens_view(run)
    with tabs[6]:
        files(full, g)


def subgraph_view(g) -> None:
    from circuits import export
    from circuits.graph import Node

    s = state()
    pins = [Node.from_json(p) for p in s["ui"]["pins"]]
    st.markdown(f"**pinned nodes** ({len(pins)}): " + (", ".join(export.node_label(g, n) for n in pins) or "none"))
    if pins:
        present = [n for n in pins if n in set(g.nodes)]
        keep = [n in set(present) or n.kind in ("token",) or n.kind.startswith("logit") for n in g.nodes]
        import torch

        sub = g.subgraph(torch.tensor(keep))
        st.caption(f"subgraph of the pins: {sub.n_nodes} nodes, {sub.n_edges} edges")
        if sub.n_edges:
            from circuits.pruning import influence

            st.plotly_chart(graph_figure(sub, influence(sub), s["ui"]["labels"]), width="stretch",
                            key="sub_chart")
        if st.button("clear pins", key="clear_pins"):
            s["ui"]["pins"] = []
    with st.form("supernode"):
        name = st.text_input("supernode name", key="sn_name")
        members = st.multiselect("members", [export.node_id(n) for n in g.nodes if n.kind.endswith("_feature")],
                                 key="sn_members")
        if st.form_submit_button("add supernode"):
            if not name.strip() or not members:
                st.warning("a supernode needs a name and at least one member")
            else:
                s["ui"]["supernodes"].append({"name": name.strip(), "nodes": [
                    [k.split(":")[0], *map(int, k.split(":")[1:])] for k in members]})
    for sn in s["ui"]["supernodes"]:
        st.write(f"**{sn['name']}**: " + ", ".join(export.node_label(g, Node.from_json(n)) for n in sn["nodes"]))


if __name__ == "__main__":
    main()
