"""The circuits explorer (Streamlit): trace a prompt's feature circuit and investigate it. UI only — every number
comes from the `circuits` library.

    streamlit run app.py

Every tab works on the graph that is shown — traced here, opened from the gallery, uploaded, or a case study's
circuit — with that graph's own prompt, model and dictionaries (its metadata), never the sidebar's unsaved edits.
The model, its dictionaries and the example prompt's graph are made once per server process and shared by every
browser tab (a new tab shows the example at once); everything else is per tab (`st.session_state`).
"""

from __future__ import annotations

import html
import json
import threading
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
MODELS = ("organism", "gpt2")
DICTIONARY_SETS = {"organism": ("organism",), "gpt2": ("gpt2-transcoders", "gpt2-attn-kk")}
N_LAYERS = {"organism": 4, "gpt2": 12}
TARGET_MODES = {"salient logits": "salient", "token": "token", "contrast": "contrast"}
#: The sidebar's first values. Each widget reads its value from the session state only (no default argument), so
#: that the page can set it — the prompt of an opened graph, the thresholds moved in the graph view — without
#: Streamlit's "created with a default value but also had its value set via the Session State API" warning.
SIDEBAR_DEFAULTS = {"prompt": EXAMPLE_PROMPT, "model": "organism", "dicts": "organism", "layers": [0, 1, 2, 3],
                    "target_mode": "contrast", "token": "Mary", "baseline": "John", "cum_prob": 0.95,
                    "max_logits": 10, "node_threshold": 0.8, "edge_threshold": 0.98, "cap": 0}
#: What a trace depends on (the sidebar's other values only prune or draw).
TRACE_KEYS = ("prompt", "model", "dicts", "layers", "target_mode", "token", "baseline", "cum_prob", "max_logits")

st.set_page_config(page_title="circuits explorer", layout="wide")


# -- library calls (cached per process) ------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def model_lock() -> threading.RLock:
    """One lock per process around everything that runs the shared model: hooks are added to the one cached
    `HookedTransformer` for a forward pass, so two tabs must not run it at the same time."""
    return threading.RLock()


@st.cache_resource(show_spinner=False)
def load(model_name: str, dicts_name: str):
    """The model and its dictionary set, loaded once per server process (shared by every tab)."""
    from circuits import load_dictionaries, load_model

    model, _ = load_model(model_name)
    return model, load_dictionaries(dicts_name, model)


@st.cache_resource(show_spinner=False)
def dashboards_for(model_name: str, dicts_name: str):
    """The feature dashboards of a model's dictionary set (one object per process: it reads from any thread)."""
    from circuits import dashboards
    from circuits.model import DATA_DIR

    path = DATA_DIR / "dashboards" / f"{model_name}.sqlite"
    try:
        return dashboards.Dashboards(path, replacement(model_name, dicts_name)), None
    except CircuitsError as e:
        return None, str(e)


def replacement(model_name: str, dicts_name: str, layers: tuple[int, ...] | None = None,
                names: tuple[str, ...] | None = None):
    """A replacement model over the set's dictionaries of `layers` (all when None), or exactly those `names` (the
    dictionaries a graph was traced with)."""
    from circuits import ReplacementModel

    model, dset = load(model_name, dicts_name)
    if names is not None:
        missing = sorted(set(names) - {d.cfg.name for d in dset})
        if missing:
            raise CircuitsError(f"the graph was traced with dictionaries that the {dicts_name!r} set does not have: "
                                f"{', '.join(missing)}")
    chosen = [d for d in dset if (layers is None or d.cfg.layer in layers) and (names is None or d.cfg.name in names)]
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


def on_model(fn, *args, **kwargs):
    """`guarded` for a call that runs the shared model, one tab at a time (see `model_lock`). Lock order: a cached
    function's own lock, then this one, then `load`'s (which takes no other lock) — never the reverse."""

    def locked():
        with model_lock():
            return fn(*args, **kwargs)

    return guarded(locked)


def _target(settings: dict):
    from circuits.attribution import Contrast, Logit, TopLogits

    if settings["target_mode"] == "contrast":
        return Contrast(settings["token"], settings["baseline"])
    if settings["target_mode"] == "token":
        return Logit((settings["token"],))
    return TopLogits(settings["cum_prob"], settings["max_logits"])


def trace(settings: dict):
    """The graph of the sidebar's prompt and target (library errors raise); the trace's warnings as texts."""
    import warnings

    from circuits import attribute

    rm = replacement(settings["model"], settings["dicts"], tuple(settings["layers"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = attribute(rm, settings["prompt"], _target(settings), method="auto")
    return graph, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@st.cache_resource(show_spinner=False)
def example_view() -> dict:
    """The example prompt's graph with its ranking and published graph view, made once per server process: a new
    tab shows it without tracing or sending anything new (the browser may even have the graph file cached)."""
    from circuits.graph_view import publish
    from circuits.pruning import rank_nodes

    settings = {**SIDEBAR_DEFAULTS, "target_mode": "contrast"}
    with model_lock():
        graph, messages = trace(settings)
    ranked = rank_nodes(graph)
    packed = _pack(graph, ranked)
    return {"graph": graph, "messages": messages, "ranked": ranked, "packed": packed, "published": publish(packed),
            "run": run_of(graph, settings["dicts"])}


def _pack(graph, ranked):
    from circuits import export
    from circuits.graph_view import pack

    return pack(graph, [export.node_label(graph, n) for n in graph.nodes], KIND_COLOURS, ranked)


# -- state -----------------------------------------------------------------------------------------------------


def state():
    s = st.session_state
    s.setdefault("graph", None)  # the full graph shown
    s.setdefault("run", None)  # what the graph was made with: model, dictionaries, prompt (see run_of)
    s.setdefault("selected", None)  # Node
    s.setdefault("ui", {"pins": [], "supernodes": [], "labels": {}})
    return s


def run_of(graph, dicts_hint: str | None = None) -> dict:
    """What every tab uses to run the model on `graph`: its model, dictionary set and dictionaries, and its prompt
    (None when the graph has no single prompt: an aggregated case-study circuit, or a graph saved without one)."""
    meta = graph.metadata
    model = meta.get("model") or "organism"
    sets = DICTIONARY_SETS.get(model, ())
    dicts = dicts_hint if dicts_hint in sets else (sets[0] if sets else None)
    names = meta.get("dictionaries")
    prompt = meta.get("prompt") if isinstance(meta.get("prompt"), str) and not meta.get("aggregated") else None
    return {"model": model, "dicts": dicts, "dictionaries": tuple(names) if names else None, "prompt": prompt}


def run_model(run: dict):
    """The replacement model of the graph shown (guarded: None after showing why not)."""
    return guarded(replacement, run["model"], run["dicts"], names=run["dictionaries"])


def show_graph(graph, run: dict, view: dict | None = None, ranked=None) -> None:
    """Make `graph` the page's graph; every per-graph result of the previous one is dropped."""
    s = state()
    s["graph"], s["run"] = graph, run
    s["selected"] = None
    s["files"] = None
    s["ui"] = {"pins": [], "supernodes": [], "labels": {}, **(graph.metadata.get("ui") or {})}
    for key in ("lens", "lens_key", "acts", "acts_key", "scores", "scores_key", "iv_nodes", "qk_store", "qk_for"):
        s.pop(key, None)
    s["ranked"] = (graph, ranked) if ranked is not None else None
    s["shared_view"] = view  # the graph view of the example, published once per process (see graph_tab)


def sidebar_from_graph(graph) -> dict:
    """The sidebar values that trace `graph` again: its prompt, model and target (applied before the sidebar is
    drawn next run, so that the sidebar shows the graph that the tabs use)."""
    meta = graph.metadata
    run = run_of(graph)
    if run["prompt"] is None or run["model"] not in MODELS:
        return {}
    out = {"prompt": run["prompt"], "model": run["model"], "dicts": run["dicts"]}
    if run["dictionaries"]:
        layers = sorted({int(n.rsplit("_L", 1)[1]) for n in run["dictionaries"] if "_L" in n
                         and n.rsplit("_L", 1)[1].isdigit()})
        if layers:
            out["layers"] = layers
    target = meta.get("target") or {}
    if target.get("kind") == "top_logits":
        out.update(target_mode="salient logits", cum_prob=float(target.get("cum_prob", 0.95)),
                   max_logits=int(target.get("max_logits", 10)))
    elif target.get("kind") == "contrast":
        out.update(target_mode="contrast", token=str(target.get("token", "")).strip(),
                   baseline=str(target.get("baseline", "")).strip())
    elif target.get("kind") == "logit" and target.get("tokens"):
        out.update(target_mode="token", token=str(target["tokens"][0]).strip())
    return out


def do_trace(settings: dict) -> None:
    """Trace the sidebar's prompt (the example's graph is made once per process); on an error the message shows
    and the current graph stays."""
    if trace_settings(settings) == trace_settings(SIDEBAR_DEFAULTS):
        ex = guarded(example_view)
        if ex is None:
            return
        show_graph(ex["graph"], ex["run"], _shared_view(ex), ex["ranked"])
        return
    result = on_model(trace, settings)
    if result is None:
        return
    graph, messages = result
    for m in messages:
        st.warning(m)
    show_graph(graph, run_of(graph, settings["dicts"]))


def trace_settings(settings: dict) -> tuple:
    return tuple(tuple(settings[k]) if isinstance(settings[k], list | tuple) else settings[k] for k in TRACE_KEYS)


def _shared_view(ex: dict) -> dict:
    return {"graph": ex["graph"], "packed": ex["packed"], "published": ex["published"], "shared": True,
            "index": {n: i for i, n in enumerate(ex["graph"].nodes)}}


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
    """A copy of the graph with the page's pins, supernodes and labels in its metadata (for saving; the graph
    itself may be the example shared by every tab, so it is not changed)."""
    import copy

    out = copy.copy(graph)
    out.metadata = {**graph.metadata, "ui": state()["ui"]}
    return out


def header_text(graph, g) -> str:
    """The page header: the graph's prompt (its own text: joining token strings loses the space before an unknown
    word), or for an aggregated circuit its roles; the targets; node and edge counts."""
    meta = graph.metadata
    if meta.get("aggregated"):
        title = "roles: " + " · ".join(str(t) for t in meta.get("token_strings", []))
    elif isinstance(meta.get("prompt"), str):
        title = meta["prompt"]
    else:
        toks = meta.get("token_strings", [])
        title = "".join(toks[1:] if meta.get("bos_pos") == 0 else toks)
    targets = []
    for t in meta.get("targets", []):
        label = str(t["label"])
        text = label if "'" in label or '"' in label else repr(label)  # a contrast label quotes its tokens itself
        if not meta.get("aggregated") and t.get("value") is not None:  # an aggregated target has no single value
            text += f" {t['value']:.2f}"
            if t.get("probability") is not None:
                text += f" (p={t['probability']:.2f})"
        targets.append(text)
    return (f"**{_md_escape(title.strip())}** → {_md_escape(', '.join(targets))}  \n"
            f"{graph.n_nodes} nodes / {graph.n_edges:,} edges, pruned to {g.n_nodes} / {g.n_edges:,}")


def _md_escape(text: str) -> str:
    """Text shown literally inside Markdown (a prompt may hold `*`, `_`, `<`, ...)."""
    out = text.replace("\\", "\\\\")
    for ch in "`*_[]<>#|~$":
        out = out.replace(ch, "\\" + ch)
    return out


def context_html(tokens: list[str], focus: int, activation: float) -> str:
    """One dashboard context as HTML: the activating token highlighted, every token shown literally."""
    parts = []
    for i, t in enumerate(tokens):
        text = html.escape(t)
        parts.append(f"<mark style='background:#fde68a;font-weight:600'>{text}</mark>" if i == focus else text)
    return (f"<div style='white-space:pre-wrap;font-size:0.9em;margin:0.1em 0'><code>{activation:.2f}</code> "
            f"{''.join(parts)}</div>")


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
                    st.write("promotes: " + ", ".join(f"`{t}` {v:+.2f}" for t, v in dash.logits_top[:6]))
                    st.write("suppresses: " + ", ".join(f"`{t}` {v:+.2f}" for t, v in dash.logits_bottom[:6]))
                    st.html("".join(context_html(e.tokens, e.focus, e.activation) for e in dash.top_examples()[:5]))
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
    if node.kind == "attn_feature":
        guarded(qk_panel, full, g, run, node)  # whatever fails in the panel is a message, never a traceback


# -- why this attention (QK) ------------------------------------------------------------------------------------


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
    Head and key default to the largest per-head part of the feature's incoming edges (`qk.default_route`)."""
    import pandas as pd
    import plotly.graph_objects as go

    from circuits import export
    from circuits.attribution.qk import default_route, edge_routes, head_shares

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
        col.dataframe(pd.DataFrame([{"node": ident(m.node, m.pos), "label": label(m.node), "pos": m.pos,
                                     "contribution": m.contribution} for m in rows]),
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


def single_prompt(graph, run: dict) -> bool:
    """Whether the single-prompt tools (faithfulness, interventions, logit lens) apply; if not, say why."""
    if aggregated_notice(graph):
        return False
    if run["prompt"] is None:
        st.info("This graph does not record the prompt it was traced on, so the model cannot be run on it.")
        return False
    if run["model"] not in MODELS:
        st.info(f"This graph was traced on the model {run['model']!r}; the explorer runs {' and '.join(MODELS)}.")
        return False
    return True


def checks(full, g, run: dict) -> None:
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
    if not single_prompt(full, run):
        return
    rm = run_model(run)
    if rm is None:
        return
    n = len(full.metadata["token_strings"])
    shortest = min((d.context_size for d in rm.dictionaries), default=n)
    if n > shortest:
        st.warning(f"the prompt has {n} tokens but a dictionary was trained on {shortest}-token contexts")
    if full.metadata.get("bos_pos") == 0:
        st.caption("position 0 is BOS (attention sinks make it large; its nodes are token/error nodes at pos 0)")
    found = graph_metric(full)
    if found is not None and st.button("compute faithfulness (zero and mean ablation)", key="faith"):
        metric, _ = found
        st.caption(f"on the graph's prompt: {run['prompt']!r}")
        for ab in on_model(standard_ablations, rm) or []:
            f = on_model(faithfulness, rm, run["prompt"], g, metric, ab)
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
    value = st.number_input("value (scale factor or clamp value)", value=2.0, min_value=-1e4, max_value=1e4,
                            key="iv_value")
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
        st.dataframe(pd.DataFrame([{"token": token_string(rm.model, t), "p before": float(before[t]),
                                    "p after": float(after[t]),
                                    "logit change": float(result.logit_change[-1, t])} for t in top]),
                     width="stretch")
        found = graph_metric(g)
        if found is not None:
            metric, name = found
            m0, m1 = float(metric(result.clean_logits)), float(metric(result.logits))
            st.write(f"metric {name}: {m0:.3f} → **{m1:.3f}** ({m1 - m0:+.3f})")


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
            load_graph_bytes((GALLERY / pick).read_bytes(), pick)


def _svg(graph) -> str:
    import tempfile

    from circuits import export

    with tempfile.TemporaryDirectory() as tmp:
        return export.render(graph, Path(tmp) / "g.svg", "svg").read_text()


def load_graph_bytes(data: bytes, name: str) -> None:
    """Open a graph file's bytes: every defect (not UTF-8, not JSON, nested too deeply, not a graph) is one message
    and keeps the current graph. The sidebar shows the opened graph's prompt from the next run on."""
    from circuits import export

    s = state()
    graph = guarded(export.loads, data, name)
    if graph is None:
        return
    show_graph(graph, run_of(graph, st.session_state.get("dicts")))
    s["pending_sidebar"] = sidebar_from_graph(graph)
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
    model = sb.selectbox("model", list(MODELS), key="model")
    dicts = sb.selectbox("dictionaries", list(DICTIONARY_SETS[model]), key="dicts")
    layers = sb.multiselect("replaced layers", list(range(N_LAYERS[model])), key="layers")
    node_t = sb.slider("node threshold", 0.05, 1.0, step=0.01, key="node_threshold", on_change=_thresholds_moved)
    edge_t = sb.slider("edge threshold", 0.05, 1.0, step=0.01, key="edge_threshold", on_change=_thresholds_moved)
    cap = sb.number_input("feature cap (0 = none)", 0, 5000, key="cap", on_change=_thresholds_moved)
    return {"prompt": prompt, "model": model, "dicts": dicts, "layers": tuple(layers),
            "target_mode": TARGET_MODES[mode], "token": token, "baseline": baseline, "cum_prob": cum_prob,
            "max_logits": int(max_logits), "node_threshold": node_t, "edge_threshold": edge_t,
            "cap": int(cap) or None, "go": go}


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
        st.session_state.pop("goto_explorer", None)  # not opened (the message says why): stay here
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
            key="graph_view")


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
        names = {k: export.node_label(g, n) for k, n in by_id.items()}
        options = list(by_id)
        current = export.node_id(s["selected"]) if s["selected"] in set(g.nodes) else None
        pick = st.selectbox("select a node", ["—"] + options, index=options.index(current) + 1 if current else 0,
                            format_func=lambda k: names.get(k, k), key="node_pick")
        if pick != "—":
            s["selected"] = by_id[pick]
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


def subgraph_view(g) -> None:
    from circuits import export
    from circuits.graph import Node
    from circuits.ids import parse_node

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
                                 key="sn_members", select_all=False)
        if st.form_submit_button("add supernode"):
            if not name.strip() or not members:
                st.warning("a supernode needs a name and at least one member")
            else:
                nodes = [guarded(parse_node, k) for k in members]
                if None not in nodes:
                    s["ui"]["supernodes"].append({"name": name.strip(), "nodes": [n.to_json() for n in nodes]})
    for sn in s["ui"]["supernodes"]:
        st.write(f"**{sn['name']}**: " + ", ".join(export.node_label(g, Node.from_json(n)) for n in sn["nodes"]))


if __name__ == "__main__":
    main()
