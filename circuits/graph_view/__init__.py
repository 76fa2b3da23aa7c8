"""The explorer's graph view: a Streamlit component that re-prunes the attribution graph in the browser.

Pruning (`circuits.pruning.prune`) has a threshold-independent first step — every node's influence on the targets in
the full graph and the candidates' order (`rank_nodes`) — and cheap steps after it that depend on the node and edge
thresholds and the feature cap. `pack` lays out the full graph (edges as raw little-endian arrays, node attributes,
the ranking) and `publish` writes it as a file the component's server serves, which the browser fetches once per
graph; `frontend/prune.js` repeats the later steps in the same float64 arithmetic and order, so moving a threshold
redraws the graph at once, without a round trip to the server, and shows the same nodes and edges the library's
`prune` keeps (tests/test_graph_view.py runs both and compares). The view then reports the thresholds (debounced)
and clicked nodes back to the app, which reruns its other tabs with them.

The view opens on the **supernode level**: `pack` groups the features of the graph pruned at the default thresholds
(`circuits.supernodes.auto_supernodes`, after any supernodes stored in the graph's UI state) and sends the groups as
lists of node indices; the browser draws each group whose members are shown as one diamond (edges summed), expands
it on a click and merges it back on an alt-click or "collapse all"; a coarser grouping (every layer × position
cell, `layer_cells`) and none are one menu choice away. `pack` also sends that pruned graph's top paths
(`circuits.paths.top_routes`), listed under the plot; a click on one highlights it.

The component is plain HTML and JavaScript (no build step). Its folder is served with plotly.js from the installed
``plotly`` package, assembled once in the temporary directory.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuits.graph import Graph, Node
from circuits.pruning import NodeRanking, rank_nodes

FRONTEND = Path(__file__).parent / "frontend"
#: Larger graphs are pruned and drawn by the server instead (8-16 bytes per edge, all held by the browser tab).
MAX_BROWSER_EDGES = 20_000_000
KINDS = ("token", "attn_feature", "mlp_feature", "attn_error", "mlp_error", "logit", "logit_diff")


@dataclass
class PackedGraph:
    """What the browser needs to prune and draw one graph: JSON `meta` and named little-endian byte arrays."""

    graph_id: str
    meta: dict
    arrays: dict[str, bytes]

    def blob(self) -> tuple[bytes, dict[str, list[int]]]:
        """All arrays in one buffer (each starting at a multiple of 8 bytes) and ``{name: [offset, length]}``."""
        parts, index, offset = [], {}, 0
        for name, data in self.arrays.items():
            pad = -offset % 8
            parts.append(b"\0" * pad)
            offset += pad
            index[name] = [offset, len(data)]
            parts.append(data)
            offset += len(data)
        return b"".join(parts), index


def _le(a: np.ndarray) -> bytes:
    """Raw bytes in little-endian order (what JavaScript typed arrays read on every platform we run on)."""
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False)).tobytes()


def groups_and_paths(graph: Graph, ranked: NodeRanking, n_paths: int = 5) -> tuple[list[dict], list[dict], list]:
    """The supernodes and top routes the view starts with, and the layer × position cells, as full-graph node
    indices: ``[{"name", "members"}]``, ``[{"text", "weight", "steps": [[node index, ...], ...]}]`` and
    `layer_cells`. Both come from the graph pruned at the default thresholds; stored UI
    supernodes come first, then automatic ones over the features they leave."""
    from circuits.paths import top_routes
    from circuits.pruning import prune
    from circuits.supernodes import auto_supernodes

    pruned = prune(graph, ranked=ranked).graph
    index = {n: i for i, n in enumerate(graph.nodes)}
    groups, taken = [], set()
    stored = [s for s in (graph.metadata.get("ui") or {}).get("supernodes", []) if not s.get("auto")]
    for k, s in enumerate(stored + auto_supernodes(pruned)):
        members = [index[m] for m in (Node.from_json(v) for v in s["nodes"]) if m in index and index[m] not in taken]
        if len(members) >= 2:
            taken.update(members)
            # stored (made on the page and saved): the page sends its current ones (`user_groups`), so these are
            # marked and left out of what is drawn, and a removed one stays removed
            groups.append({"name": str(s["name"]), "members": members, **({"stored": True} if k < len(stored) else {})})
    seen: dict[str, int] = {}
    for g in groups:  # names repeat (several groups of one kind, layer, category and position): number them
        seen[g["name"]] = seen.get(g["name"], 0) + 1
        if seen[g["name"]] > 1:
            g["name"] = f"{g['name']} ({seen[g['name']]})"
    paths = [{"text": r.text(), "weight": r.weight, "steps": [[index[n] for n in step] for step in r.steps]}
             for r in top_routes(pruned, n_paths)]
    return groups, paths, layer_cells(graph, pruned)


def layer_cells(graph: Graph, pruned: Graph) -> list[dict]:
    """The view's coarser grouping: the features of each (position, layer, kind) cell of `pruned` (the graph pruned
    at the default thresholds), as full-graph node indices (cells of two or more features)."""
    from circuits.paths import cells

    index = {n: i for i, n in enumerate(graph.nodes)}
    return [{"name": c["name"], "members": [index[Node.from_json(v)] for v in c["nodes"]]}
            for c in cells(pruned) if len(c["nodes"]) >= 2]


def pack(graph: Graph, labels: list[str], colours: dict[str, str], ranked: NodeRanking | None = None,
         supernodes: bool = True) -> PackedGraph:
    """The full `graph` with its node ranking (`rank_nodes(graph)`, computed if not given) as component arguments
    (`labels`: one display label per node), with the starting supernodes and top paths (`groups_and_paths`; not
    when `supernodes` is false). Edge endpoints are 16-bit when the graph has fewer than 65,536 nodes."""
    from circuits import export

    ranked = rank_nodes(graph) if ranked is None else ranked
    ranks = np.array([n.sublayer_rank for n in graph.nodes], dtype=np.int32)  # drawing rows, as pruning ranks them
    names = {n.sublayer_rank: n.sublayer_name for n in graph.nodes}
    w = graph.edge_weight.detach().cpu()
    w64 = w.dtype == torch.float64
    flags = ranked.always.numpy().astype(np.uint8) | (ranked.is_feature.numpy().astype(np.uint8) << 1)
    graph_id = uuid.uuid4().hex
    idx = np.uint16 if graph.n_nodes < 2**16 else np.int32
    meta = {"n": graph.n_nodes, "m": graph.n_edges, "total": ranked.ranking.total, "w64": bool(w64),
            "idx16": idx is np.uint16,
            "kinds": list(KINDS), "colours": colours, "labels": labels,
            "ids": [export.node_id(n) for n in graph.nodes],
            "tokens": list(graph.metadata.get("token_strings", [])),
            "rank_names": [[r, names[r]] for r in sorted(names)], "supernodes": [], "paths": [], "cells": []}
    if supernodes:
        meta["supernodes"], meta["paths"], meta["cells"] = groups_and_paths(graph, ranked)
    tgt, src = graph.edge_index.numpy()
    arrays = {
        "tgt": _le(tgt.astype(idx)), "src": _le(src.astype(idx)),
        "w": _le(w.numpy().astype(np.float64 if w64 else np.float32)),
        "rank": _le(ranks),
        "pos": _le(np.array([n.pos for n in graph.nodes], dtype=np.int32)),
        "kind": _le(np.array([KINDS.index(n.kind) for n in graph.nodes], dtype=np.uint8)),
        "node_flags": _le(flags),
        "target_weight": _le(graph.target_weights.double().numpy()),
        "influence": _le(ranked.influence.numpy()),
        "activation": _le(graph.activations.float().numpy()),
        "order": _le(ranked.candidates[ranked.ranking.order].numpy().astype(np.int32)),
        "before": _le(ranked.ranking.before.numpy()),
    }
    return PackedGraph(graph_id, meta, arrays)


@functools.lru_cache(maxsize=1)
def component_dir() -> Path:
    """The served folder: our frontend files plus plotly.min.js, in a temporary folder named by their contents."""
    import plotly

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    files = sorted(FRONTEND.iterdir())
    digest = hashlib.sha256(plotly.__version__.encode())
    for f in files:
        digest.update(f.name.encode() + f.read_bytes())
    out = Path(tempfile.gettempdir()) / f"circuits-graph-view-{digest.hexdigest()[:16]}"
    if not (out / "index.html").exists():
        tmp = Path(tempfile.mkdtemp(prefix="circuits-graph-view-"))
        for f in files:
            shutil.copy(f, tmp / f.name)
        shutil.copy(plotly_js, tmp / "plotly.min.js")
        try:
            os.replace(tmp, out)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@functools.lru_cache(maxsize=1)
def _component():
    import streamlit.components.v1 as components

    return components.declare_component("circuits_graph_view", path=str(component_dir()))


GRAPHS = "graphs"  # under the served folder: one file per published graph
STALE_SECONDS = 24 * 3600


def publish(packed: PackedGraph, retire: str | None = None) -> dict:
    """Write the graph's arrays where the component's server serves files (fetched by the browser over HTTP, which
    is much faster than a 10-70 MB websocket message) and return the component arguments that point to it.
    `retire`: the graph id this session showed before (its files are removed); files older than a day go too.

    Two files: ``<id>.bin`` (the raw arrays, `data_url`) and ``<id>.bin.gz`` (the same, gzip level 1, `gz_url`),
    which the view fetches. Streamlit's server compresses every component file on each request (gzip level 5,
    ~0.3 s of a busy server's CPU for a 14 MB graph, seconds under load) but sends a file it sees as gzip as it is;
    compressing once here makes a new tab's graph arrive sooner (the browser inflates it natively)."""
    folder = component_dir() / GRAPHS
    folder.mkdir(exist_ok=True)
    now = time.time()
    for old in [*folder.glob("*.bin"), *folder.glob("*.bin.gz")]:
        if old.name.split(".")[0] == retire or now - old.stat().st_mtime > STALE_SECONDS:
            old.unlink(missing_ok=True)
    data, index = packed.blob()
    for name, body in ((f"{packed.graph_id}.bin", data),
                       (f"{packed.graph_id}.bin.gz", gzip.compress(data, compresslevel=1, mtime=0))):
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(body)
        os.replace(tmp, folder / name)
    return {"graph_id": packed.graph_id, "meta": packed.meta, "data_url": f"{GRAPHS}/{packed.graph_id}.bin",
            "gz_url": f"{GRAPHS}/{packed.graph_id}.bin.gz", "index": index}


def is_published(published: dict) -> bool:
    """Whether a published graph's files are still there (another tab removes files older than a day)."""
    folder = component_dir()
    return all((folder / published[k]).exists() for k in ("data_url", "gz_url") if k in published)


def retire(graph_id: str) -> None:
    """Remove a published graph's files (a tab that moved on to another graph)."""
    for suffix in (".bin", ".bin.gz"):
        (component_dir() / GRAPHS / f"{graph_id}{suffix}").unlink(missing_ok=True)


def graph_view(published: dict, *, node_threshold: float, edge_threshold: float, cap: int | None,
               epoch: int, selected: int | None, user_labels: dict[str, str], key: str,
               user_groups: list[dict] | None = None):
    """Draw the view of a `publish`ed graph; returns its last report (``{"instance", "seq", "graph_id",
    "node_threshold", "edge_threshold", "cap", "selected"}``) or None. The view adopts the given thresholds when
    `epoch` changes (a new graph, or a change made elsewhere on the page). `user_groups` (``[{"name", "members":
    [node index, ...]}]``): supernodes made on the page, drawn before the automatic ones, which keep only the
    members no earlier group took."""
    return _component()(**published, thresholds={"node": node_threshold, "edge": edge_threshold, "cap": cap},
                        epoch=epoch, selected=selected, user_labels=user_labels, key=key, default=None,
                        user_groups=user_groups or [])


def merged_groups(user: list[dict], packed: list[dict]) -> list[dict]:
    """What the view draws as supernodes (`user_groups` first, then the packed automatic ones — stored ones are the
    page's to send —, each keeping only members no earlier group took; groups left with fewer than 2 members
    dropped): the same rule as the browser's."""
    taken: set[int] = set()
    out = []
    for g in [*user, *(g for g in packed if not g.get("stored"))]:
        members = [i for i in g["members"] if i not in taken]
        if len(members) < 2:
            continue
        taken.update(members)
        out.append({"name": g["name"], "members": members})
    return out
