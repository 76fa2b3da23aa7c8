"""The strongest paths from the prompt's tokens to the target: which few routes carry the answer.

Two levels. `top_paths` finds the best paths between single nodes of any graph. `top_routes` (what `circuits trace`
prints and stores) first merges the features of each **cell** — one position, one layer, one kind (attention /
transcoder) — into one node with summed edges (`circuits.supernodes.contract`), and finds the best paths of that
graph: a route such as ``'Mary'@2 → A0@2 ×25 (name 13) [head 2] → M0@2 ×15 → A3@14 ×46 [head 0] → logit ' Mary' −
' John'`` says which positions, layers and heads carry the answer (and the most common label category in each
cell), where single-feature paths each carry a sliver of it (hundreds of features share the target's input).
Cells are not split by label category: that splits the target's input further and buries the routes.

**Path weight.** Pruning's normalised adjacency ``Â[t, s] = |A[t, s]| / Σ_s' |A[t, s']|`` gives every node's
incoming edges shares that sum to 1. The weight of a path ``s₀ → s₁ → … → t`` is

    w_t · Â[s₁, s₀] · Â[s₂, s₁] · … · Â[t, s_{k−1}]

(``w_t``: the target's weight, 1 for a contrast): the probability that a walk backwards from the target, taking
each incoming edge with probability ``Â``, follows exactly this path. Summed over every path that starts at a
source (a token or an error node) these weights give ``w_t``, and summed over the paths from one node they give that
node's influence (`circuits.pruning.influence` is the same sum, ``w (Â + Â² + …)``), so a path's weight is the share
of the target's attribution that flows along it. Computed on the graph given (usually the pruned one, whose
``Â`` is renormalised over the edges kept). The **sign** of a path is the product of its edges' signs: whether it
pushes the target up (+) or down (−) in the linear local replacement model (active features are positive).

**Search.** The k best paths in a DAG by a product of weights in [0, 1]: one sweep from the targets down through
the sublayers (every edge goes from a lower to a higher sublayer rank), keeping at each node its k best partial
paths to a target. Vectorised over the edges of one source rank at a time, so it runs on full graphs too.
Ties are broken by the order of the edges in the graph (stable sorts), so a graph file always gives the same paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.errors import CircuitsError
from circuits.graph import Graph, Node
from circuits.pruning import normalized_weights


@dataclass(frozen=True)
class Path:
    """One path from a token to a target: its nodes (token first, target last) and the raw edge weights between
    them (``edge_weights[i]`` is the edge ``nodes[i] → nodes[i+1]``)."""

    nodes: tuple[Node, ...]
    weight: float  # w_t Π Â along the path (see the module docstring)
    edge_weights: tuple[float, ...]
    edge_rows: tuple[int, ...]  # the edges' indices in the graph (for per-head parts)

    @property
    def sign(self) -> int:
        """+1 when the path pushes the target up, −1 when down (product of the edges' signs)."""
        negative = sum(w < 0 for w in self.edge_weights)
        return -1 if negative % 2 else 1

    def to_json(self) -> dict:
        from circuits.ids import format_node

        return {"nodes": [format_node(n) for n in self.nodes], "weight": self.weight, "sign": self.sign,
                "edge_weights": list(self.edge_weights)}


def top_paths(graph: Graph, k: int = 5, start_kinds: tuple[str, ...] = ("token",)) -> list[Path]:
    """The `k` highest-weight paths from nodes of `start_kinds` (tokens by default) to the graph's targets, best first.

    Runs in O(n_edges · k log) with tensors (see the module docstring for the definition and the search)."""
    if k < 1:
        raise CircuitsError(f"k must be at least 1, got {k}")
    n = graph.n_nodes
    tgt, src = graph.edge_index
    a = normalized_weights(graph)  # [E] float64
    rank = torch.tensor([node.sublayer_rank for node in graph.nodes], dtype=torch.long)
    if bool((rank[src] >= rank[tgt]).any()):
        raise CircuitsError("paths need edges from earlier to later sublayers (the graph has a cycle or an edge "
                            "within one sublayer)")
    # best[i, j]: weight of node i's j-th best partial path to a target; via[i, j] = (edge, slot at its target)
    best = torch.zeros(n, k, dtype=torch.float64)
    via_edge = torch.full((n, k), -1, dtype=torch.long)
    via_slot = torch.full((n, k), -1, dtype=torch.long)
    best[:, 0] = graph.target_weights.double().clamp_min(0)  # a target is a path of length 0 to itself
    src_rank = rank[src]
    is_target = graph.target_weights > 0
    for r in torch.unique(src_rank).flip(0).tolist():  # sources of the highest rank first: their targets are final
        e = torch.nonzero(src_rank == r).flatten()
        own = torch.nonzero(is_target & (rank == r)).flatten()  # a target that also feeds others keeps its own path
        cand = torch.cat([best[own, 0], (a[e, None] * best[tgt[e]]).reshape(-1)])
        cand_edge = torch.cat([torch.full_like(own, -1), e[:, None].expand(-1, k).reshape(-1)])
        cand_slot = torch.cat([torch.full_like(own, -1), torch.arange(k).expand(len(e), -1).reshape(-1)])
        owner = torch.cat([own, src[e][:, None].expand(-1, k).reshape(-1)])
        keep = cand > 0
        cand, cand_edge, cand_slot, owner = cand[keep], cand_edge[keep], cand_slot[keep], owner[keep]
        if not len(cand):
            continue
        # per owner, its candidates by weight (descending; ties in edge order): sort by weight, then by owner
        order = torch.sort(cand, descending=True, stable=True).indices
        order = order[torch.sort(owner[order], stable=True).indices]
        owner, cand, cand_edge, cand_slot = owner[order], cand[order], cand_edge[order], cand_slot[order]
        start = torch.ones_like(owner, dtype=torch.bool)
        start[1:] = owner[1:] != owner[:-1]
        first = torch.cummax(torch.where(start, torch.arange(len(owner)), torch.zeros_like(owner)), 0).values
        place = torch.arange(len(owner)) - first
        fits = place < k
        best[owner[fits], place[fits]] = cand[fits]
        via_edge[owner[fits], place[fits]] = cand_edge[fits]
        via_slot[owner[fits], place[fits]] = cand_slot[fits]
    starts = torch.tensor([node.kind in start_kinds for node in graph.nodes], dtype=torch.bool)
    rows = torch.nonzero(starts).flatten()
    flat = best[rows].reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    paths = []
    for f in order.tolist():
        weight = float(flat[f])
        if weight <= 0:
            break
        node, slot = int(rows[f // k]), f % k
        nodes, edges = [graph.nodes[node]], []
        while int(via_edge[node, slot]) >= 0:
            e, slot = int(via_edge[node, slot]), int(via_slot[node, slot])
            edges.append(e)
            node = int(tgt[e])
            nodes.append(graph.nodes[node])
        paths.append(Path(tuple(nodes), weight, tuple(float(graph.edge_weight[e]) for e in edges), tuple(edges)))
    return paths


def heads_of(graph: Graph, edge: int, share: float = 0.25, most: int = 3) -> list[int]:
    """The heads carrying an edge into an attention feature: those whose |part| is at least `share` of the
    per-head parts' Σ |part| (at most `most`, largest first); empty when the edge has no per-head parts."""
    if graph.head_weights is None or not graph.head_weights.shape[1]:
        return []
    parts = graph.head_weights[edge].abs().double()
    total = float(parts.sum())
    if total <= 0:
        return []
    order = torch.argsort(parts, descending=True, stable=True)[:most]
    return [int(h) for h in order.tolist() if float(parts[h]) >= share * total]


def describe_node(graph: Graph, node: Node, labels: dict[str, str] | None = None) -> str:
    """A node as a path step: ``'Mary'@2``, ``A0#12@2 (name)``, ``logit ' Mary' − ' John'``."""
    from circuits import export

    if node.kind == "token" or node.kind.startswith("logit"):
        return export.node_label(graph, node)
    nid = export.node_id(node)
    label = (labels or {}).get(nid) or graph.metadata.get("ui", {}).get("labels", {}).get(nid)
    return f"{nid} ({_short(label)})" if label else nid


def _short(text: str, most: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= most else text[: most - 1] + "…"


def format_path(graph: Graph, path: Path, labels: dict[str, str] | None = None) -> str:
    """One printed line: the steps joined by arrows, with the heads carrying each edge into an attention feature,
    then the weight and sign: ``'Mary'@2 → A0#12@2 (name) → A3#5@14 [heads 0, 6] → logit ' Mary' − ' John'``."""
    steps = [describe_node(graph, path.nodes[0], labels)]
    for node, edge in zip(path.nodes[1:], path.edge_rows, strict=True):
        text = describe_node(graph, node, labels)
        if node.kind == "attn_feature":
            heads = heads_of(graph, edge)
            if heads:
                text += f" [head{'s' if len(heads) > 1 else ''} {', '.join(map(str, heads))}]"
        steps.append(text)
    return f"{path.weight:.4f} {'+' if path.sign > 0 else '−'}  " + " → ".join(steps)


@dataclass(frozen=True)
class Route:
    """A path of the cell graph: each step is a set of member nodes (one token, a cell of features, an error node,
    the target) with its printed label and, for a step into attention features, the heads carrying that edge."""

    steps: tuple[tuple[Node, ...], ...]
    labels: tuple[str, ...]
    heads: tuple[tuple[int, ...], ...]  # heads[i]: heads of the edge into step i (empty for i = 0 and non-attention)
    weight: float
    sign: int

    def text(self) -> str:
        steps = [label + (f" [head{'s' if len(h) > 1 else ''} {', '.join(map(str, h))}]" if h else "")
                 for label, h in zip(self.labels, self.heads, strict=True)]
        return f"{self.weight:.4f} {'+' if self.sign > 0 else '−'}  " + " → ".join(steps)

    def to_json(self) -> dict:
        from circuits.ids import format_node

        return {"weight": self.weight, "sign": self.sign, "text": self.text(),
                "steps": [{"label": label, "nodes": [format_node(n) for n in nodes], "heads": list(h)}
                          for label, nodes, h in zip(self.labels, self.steps, self.heads, strict=True)]}


def cells(graph: Graph, categorize=None) -> list[dict]:
    """The graph's features grouped by (position, layer, kind), in the ``ui.supernodes`` format (every cell, also of
    one feature), named ``A0@2 ×25`` plus the most common label category of its members when one is known
    (``A0@2 ×25 (name 13)``). `categorize(node) -> str | None` defaults to the labels engine. Feature targets stay
    single."""
    from circuits.supernodes import category

    found: dict[tuple, list[Node]] = {}
    for node, weight in zip(graph.nodes, graph.target_weights.tolist(), strict=True):
        if node.kind in ("attn_feature", "mlp_feature") and not weight > 0:  # a feature target stays itself
            found.setdefault((node.pos, node.layer, node.kind), []).append(node)
    out = []
    for (pos, layer, kind), nodes in sorted(found.items()):
        counts: dict[str, int] = {}
        for node in nodes:
            cat = category(graph, node) if categorize is None else categorize(node)
            if cat and cat not in ("attention", "transcoder"):
                counts[cat] = counts.get(cat, 0) + 1
        tag = "A" if kind == "attn_feature" else "M"
        name = f"{tag}{layer}@{pos} ×{len(nodes)}"
        if counts:
            top = min(counts, key=lambda c: (-counts[c], c))
            name += f" ({top} {counts[top]})" if len(nodes) > 1 else f" ({top})"
        out.append({"name": name, "nodes": [n.to_json() for n in nodes]})
    return out


def top_routes(graph: Graph, k: int = 5, categorize=None) -> list[Route]:
    """The `k` best paths of the cell graph of `graph` (see the module docstring), best first."""
    from circuits.supernodes import contract

    c = contract(graph, cells(graph, categorize))
    g = c.graph
    routes = []
    for path in top_paths(g, k):
        rows = [g.row(n) for n in path.nodes]
        steps = tuple(tuple(c.member_nodes[i] for i in c.members[r]) for r in rows)
        labels = tuple(c.names[r] if c.names[r] and len(c.members[r]) > 1 else describe_node(graph, path.nodes[j])
                       for j, r in enumerate(rows))
        heads = ((),) + tuple(tuple(heads_of(g, e)) if n.kind == "attn_feature" else ()
                              for n, e in zip(path.nodes[1:], path.edge_rows, strict=True))
        routes.append(Route(steps, labels, heads, path.weight, path.sign))
    return routes


def attach_routes(graph: Graph, k: int = 5, categorize=None) -> list[Route]:
    """Compute `top_routes` of `graph` and store them in ``metadata["paths"]`` (written to the JSON's ``paths``)."""
    routes = top_routes(graph, k, categorize)
    graph.metadata["paths"] = [r.to_json() for r in routes]
    return routes

