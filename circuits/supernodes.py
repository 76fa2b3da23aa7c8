"""Automatic supernodes: features of a pruned graph that do the same job, grouped, and the graph contracted to them.

A pruned graph of a 15-token prompt still has hundreds of features, many of them near-duplicates: several features
at one position and depth that read the same inputs and feed the same nodes. Following the attribution-graph papers'
manual "supernodes", `auto_supernodes` groups them automatically:

1. **Candidates**: features (never tokens, errors or targets) are split into cells by ``(position, layer band,
   category)``, and by kind (attention / transcoder): a supernode sits in one kind of sublayer, so the supernode
   graph still runs from earlier to later sublayers. A layer band is ``band_layers`` consecutive layers (default
   1); the category is the feature's label category (`circuits.labels.label_category`) when the labels engine
   knows one, else its kind. Nothing is ever grouped across positions.
2. **Neighbours**: each feature's *top inputs* are the fewest incoming edges (largest |weight| first, ties by
   edge order) carrying ``mass`` of its Σ |incoming weight|, at most ``top`` of them; its *top outputs* likewise
   over its outgoing edges.
3. **Similarity**: the Jaccard index of the two features' neighbour sets, inputs and outputs tagged apart
   (``{("in", s)} ∪ {("out", t)}``). Two features of one cell *share most of their inputs and outputs* when it is
   at least ``threshold``.
4. **Groups**: the connected components of that relation within a cell (single linkage: a union-find over the
   pairs, so the result does not depend on the order nodes are listed in). Groups of two or more become
   supernodes, named ``A0 name @2 ' Mary' ×10`` (kind and layers, category, position and token, size) and stored in ``metadata["ui"]["supernodes"]`` in the
   explorer's format (``{"name", "nodes"}``, plus ``"auto": true`` and the cell). With bands wider than one
   layer, a group whose higher-layer members read from a node at or above its lowest layer (so that one node for
   the group could not sit in one sublayer) is split back into one group per layer.

`contract` builds the **supernode graph**: each supernode becomes one node (represented by its first member),
edges between groups are summed (``A'[G, H] = Σ_{t∈G, s∈H} A[t, s]``), activations, constants and pre-activations
are summed over members, and the edges *inside* a group go into the contracted node's ``dropped`` term. So the
identity ``Σ incoming + constant + dropped = pre-activation`` holds exactly for every node of the supernode graph
whenever it held for the members, and every target keeps exactly its incoming sum. (Influence, a normalised
quantity, is not additive over members in general; the docs report how much it moves on the IOI graph.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuits.errors import ConfigError
from circuits.graph import FEATURE_KINDS, Graph, Node


@dataclass(frozen=True)
class SupernodeConfig:
    """How features are grouped (see the module docstring)."""

    threshold: float = 0.5  # Jaccard similarity of tagged top-neighbour sets needed to group two features
    mass: float = 0.8  # the top neighbours carry this share of a feature's Σ |edge weight| (per direction)
    top: int = 6  # at most this many neighbours per direction
    band_layers: int = 1  # consecutive layers per band

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0 < self.mass <= 1:
            raise ConfigError(f"mass must be in (0, 1], got {self.mass}")
        if self.top < 1:
            raise ConfigError(f"top must be at least 1, got {self.top}")
        if self.band_layers < 1:
            raise ConfigError(f"band_layers must be at least 1, got {self.band_layers}")


def category(graph: Graph, node: Node) -> str:
    """The node's label category: `circuits.labels.label_category` when that module exists and knows one, else the
    kind in words ("attention" / "transcoder")."""
    try:
        from circuits.labels import label_category
    except ImportError:  # the labels engine is optional
        label_category = None
    if label_category is not None:
        try:
            got = label_category(node, graph)
        except TypeError:
            got = label_category(node)
        except Exception:  # a label store that cannot be read: group by kind, never fail the graph
            got = None
        if got:
            return str(got)
    return _kind_word(node)


def _kind_word(node: Node) -> str:
    return "attention" if node.kind == "attn_feature" else "transcoder"


def _top_neighbours(rows: torch.Tensor, other: torch.Tensor, w: torch.Tensor, n: int, mass: float,
                    top: int) -> list[set[int]]:
    """Per node: the fewest `other` ends of its edges (those with row = node) carrying `mass` of Σ |w|."""
    out: list[set[int]] = [set() for _ in range(n)]
    order = torch.sort(w.abs().double(), descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]  # grouped by node, strongest first
    rows, other, mags = rows[order].tolist(), other[order].tolist(), w[order].abs().double().tolist()
    totals: dict[int, float] = {}
    for r, m in zip(rows, mags, strict=True):
        totals[r] = totals.get(r, 0.0) + m
    acc: dict[int, float] = {}
    for r, o, m in zip(rows, other, mags, strict=True):
        have = acc.get(r, 0.0)
        if len(out[r]) >= top or (out[r] and have >= mass * totals[r]) or m <= 0:
            continue
        out[r].add(o)
        acc[r] = have + m
    return out


def auto_supernodes(graph: Graph, config: SupernodeConfig | None = None,
                    categorize: Callable[[Node], str | None] | None = None) -> list[dict]:
    """Supernodes of `graph` (usually the pruned one) in the ``ui.supernodes`` format, in a deterministic order
    (by position, band, kind, category, then first member). `categorize` maps a feature node to its label category
    (None: unknown); by default `category` asks the labels engine."""
    config = config or SupernodeConfig()
    n = graph.n_nodes
    tgt, src = graph.edge_index
    ins = _top_neighbours(tgt, src, graph.edge_weight, n, config.mass, config.top)
    outs = _top_neighbours(src, tgt, graph.edge_weight, n, config.mass, config.top)
    band = config.band_layers
    rank = [node.sublayer_rank for node in graph.nodes]
    sources: list[set[int]] = [set() for _ in range(n)]
    if band > 1:  # every input, to keep groups that span layers drawable (see _split_inconsistent)
        for t, s in zip(tgt.tolist(), src.tolist(), strict=True):
            sources[t].add(s)
    cells: dict[tuple, list[int]] = {}
    for i, node in enumerate(graph.nodes):
        if node.kind in FEATURE_KINDS and not float(graph.target_weights[i]) > 0:
            cat = category(graph, node) if categorize is None else (categorize(node) or _kind_word(node))
            cells.setdefault((node.pos, node.layer // band, node.kind, cat), []).append(i)
    toks = graph.metadata.get("token_strings", [])
    found = []
    for (pos, b, _, cat), members in sorted(cells.items()):
        if len(members) < 2:
            continue
        tagged = {i: {("in", s) for s in ins[i]} | {("out", t) for t in outs[i]} for i in members}
        groups = _components(members, tagged, config.threshold)
        if band > 1:
            groups = _split_inconsistent(groups, sources, rank, tagged, config.threshold)
        lo, hi = b * band, b * band + band - 1
        tok = repr(toks[pos]) if 0 <= pos < len(toks) else "?"
        for rows in sorted(groups.values(), key=lambda r: graph.nodes[min(r)]):
            if len(rows) < 2:
                continue
            nodes = sorted(graph.nodes[i] for i in rows)
            layer_set = sorted({m.layer for m in nodes})
            tag = ("A" if nodes[0].kind == "attn_feature" else "M") + (
                str(layer_set[0]) if len(layer_set) == 1 else f"{layer_set[0]}–{layer_set[-1]}")
            named = "" if cat in ("attention", "transcoder") else f" {cat}"
            found.append({"name": f"{tag}{named} @{pos} {tok} ×{len(nodes)}",
                          "nodes": [m.to_json() for m in nodes], "auto": True, "pos": pos,
                          "layers": [lo, min(hi, int(graph.metadata.get("n_layers", hi + 1)) - 1)],
                          "category": cat})
    return found


def _components(members: list[int], tagged: dict[int, set], threshold: float) -> dict[int, list[int]]:
    """Connected components of "Jaccard(tagged[i], tagged[j]) ≥ threshold" (union-find; keyed by the smallest)."""
    parent = {i: i for i in members}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for x, i in enumerate(members):
        for j in members[x + 1:]:
            a, c = tagged[i], tagged[j]
            union = len(a | c)
            if union and len(a & c) / union >= threshold:
                ri, rj = root(i), root(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in members:
        groups.setdefault(root(i), []).append(i)
    return groups


def _split_inconsistent(groups: dict[int, list[int]], sources: list[set[int]], rank: list[int],
                        tagged: dict[int, set], threshold: float) -> dict:
    """Groups spanning layers with a member that reads from a node (outside the group) at or above the group's
    lowest sublayer, split into one group per layer (each regrouped by similarity), so that the contracted node can
    take its lowest member's sublayer."""
    out: dict = {}
    for key, rows in groups.items():
        low = min(rank[i] for i in rows)
        inside = set(rows)
        if any(rank[s] >= low for i in rows for s in sources[i] if s not in inside):
            by_rank: dict[int, list[int]] = {}
            for i in rows:
                by_rank.setdefault(rank[i], []).append(i)
            for r, part in by_rank.items():
                for sub_key, sub in _components(part, tagged, threshold).items():
                    out[(key, r, sub_key)] = sub
        else:
            out[key] = rows
    return out


def attach_supernodes(graph: Graph, config: SupernodeConfig | None = None,
                      categorize: Callable[[Node], str | None] | None = None) -> list[dict]:
    """Compute `auto_supernodes` and store them in ``metadata["ui"]["supernodes"]`` after the user's own (manual
    supernodes, without ``"auto"``, are kept; earlier automatic ones are replaced)."""
    found = auto_supernodes(graph, config, categorize)
    ui = graph.metadata.setdefault("ui", {})
    manual = [s for s in ui.get("supernodes", []) if not s.get("auto")]
    ui["supernodes"] = manual + found
    return found


@dataclass
class Contracted:
    """The supernode graph and how it maps to the member graph."""

    graph: Graph  # one node per group (a member's Node stands for it) and per ungrouped node
    members: list[list[int]]  # members[k]: rows of the member graph in contracted node k
    names: list[str | None]  # the supernode's name, None for a node that stands for itself
    group_of: torch.Tensor  # [n_nodes of the member graph] long: its contracted node
    member_nodes: tuple[Node, ...]  # the member graph's node table (members[k] index it)


def contract(graph: Graph, supernodes: list[dict] | None = None) -> Contracted:
    """The supernode graph of `graph` (see the module docstring); `supernodes` defaults to the graph's
    ``ui.supernodes``. A node listed in two supernodes goes to the first; members missing from the graph are
    skipped; a supernode with no member present is left out."""
    if supernodes is None:
        supernodes = graph.metadata.get("ui", {}).get("supernodes", [])
    n = graph.n_nodes
    group_of = torch.full((n,), -1, dtype=torch.long)
    members: list[list[int]] = []
    names: list[str | None] = []
    rows_by_node = {node: i for i, node in enumerate(graph.nodes)}
    for s in supernodes:
        rows = [rows_by_node[m] for m in (Node.from_json(v) for v in s["nodes"]) if m in rows_by_node]
        rows = sorted(r for r in dict.fromkeys(rows) if group_of[r] < 0)
        if not rows:
            continue
        group_of[rows] = len(members)
        members.append(rows)
        names.append(str(s["name"]))
    for i in range(n):  # every other node stands for itself, in graph order after the groups
        if group_of[i] < 0:
            group_of[i] = len(members)
            members.append([i])
            names.append(None)
    members = [sorted(rows, key=lambda r: (graph.nodes[r].sublayer_rank, r)) for rows in members]  # lowest first
    order = sorted(range(len(members)), key=lambda k: graph.nodes[members[k][0]].sublayer_rank)
    remap = torch.empty(len(members), dtype=torch.long)
    remap[torch.tensor(order, dtype=torch.long)] = torch.arange(len(members))
    group_of = remap[group_of]
    members = [members[k] for k in order]
    names = [names[k] for k in order]
    m = len(members)
    dtype = graph.edge_weight.dtype

    def summed(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(m, dtype=values.dtype).index_add_(0, group_of, values)

    tgt, src = group_of[graph.edge_index[0]], group_of[graph.edge_index[1]]
    inside = tgt == src
    dropped = summed(graph.dropped) + torch.zeros(m, dtype=dtype).index_add_(
        0, tgt[inside], graph.edge_weight[inside]).to(graph.dropped.dtype)
    key = tgt[~inside] * m + src[~inside]
    uniq, inverse = torch.unique(key, return_inverse=True)
    weight = torch.zeros(len(uniq), dtype=dtype).index_add_(0, inverse, graph.edge_weight[~inside])
    heads = None
    if graph.head_weights is not None:
        heads = torch.zeros(len(uniq), graph.head_weights.shape[1], dtype=graph.head_weights.dtype).index_add_(
            0, inverse, graph.head_weights[~inside])
    out = Graph(
        nodes=tuple(graph.nodes[rows[0]] for rows in members), activations=summed(graph.activations),
        edge_index=torch.stack([uniq // m, uniq % m]), edge_weight=weight, head_weights=heads,
        metadata=dict(graph.metadata), constants=summed(graph.constants), pre_activations=summed(graph.pre_activations),
        dropped=dropped, target_weights=summed(graph.target_weights), bos_constants=summed(graph.bos_constants),
    )
    rank = torch.tensor([node.sublayer_rank for node in out.nodes], dtype=torch.long)
    if out.n_edges and bool((rank[out.edge_index[1]] >= rank[out.edge_index[0]]).any()):
        raise ConfigError("these supernodes put nodes that feed each other across sublayers into one group (an edge "
                          "would run backwards in the supernode graph); group features of one layer and kind")
    return Contracted(out, members, names, group_of, graph.nodes)
