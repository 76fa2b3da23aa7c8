"""Page state and library calls of the explorer: the options it offers (models, dictionary sets, sidebar
defaults), the model and dictionaries cached once per server process, the lock around the shared model,
errors shown as messages (`guarded`), tracing, and the per-tab session state of the graph shown."""

from __future__ import annotations

import threading
import traceback
from pathlib import Path

import streamlit as st

from circuits import CircuitsError

EXAMPLE_PROMPT = "When Mary and John went to the store, John gave a drink to"
KIND_COLOURS = {"token": "#9e9e9e", "attn_feature": "#3182bd", "mlp_feature": "#31a354", "attn_error": "#9ecae1",
                "mlp_error": "#a1d99b", "logit": "#e6550d", "logit_diff": "#e6550d"}
#: The repository (app.py's folder): the example gallery and the shipped case studies are read from its data/.
ROOT = Path(__file__).parents[2]
GALLERY = ROOT / "data" / "graphs"
#: Case-study report folders: the shipped ones, and those `circuits study` writes under ./reports.
STUDY_DIRS = (ROOT / "data" / "studies", Path("reports"))
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
    from circuits.graph import fold_bos

    rm = replacement(settings["model"], settings["dicts"], tuple(settings["layers"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = fold_bos(attribute(rm, settings["prompt"], _target(settings), method="auto"))  # BOS: constants
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



def use_threads() -> str | None:
    """Apply the CLI's torch-threads rule (`circuits.cli.runtime`: CIRCUITS_THREADS, else OMP_NUM_THREADS, else 1)
    in the calling thread. Streamlit runs every page run in a new thread and OpenMP keeps the thread count per
    thread, so the page calls this first on every run. Returns the message for a bad value (nothing changed)."""
    from circuits.cli.runtime import apply_threads, resolve_threads

    try:
        n, _ = resolve_threads()
    except CircuitsError as e:
        return str(e)
    import torch  # noqa: F401  imported here so that apply_threads sets this thread's count now

    apply_threads(n)
    return None

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
    out.metadata = {**graph.metadata, "ui": {**state()["ui"], "saved_by": "explorer"}}
    return out
