"""Which heads a graph's attention edges went through: the routes (head, query, key) that carry the most per-head
edge weight, a feature's per-head shares, and the QK tables of the strongest routes (`circuits.attribution.qk`
explains one route; these pick which). Every edge into an attention feature is carried by the heads' OV from its
source position, and the graph keeps each edge's per-head parts (`Graph.head_weights`; graphs from the autograd
method have none, and these helpers then return nothing)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from circuits.attribution.qk import explain_attention
from circuits.attribution.sources import collect_sources
from circuits.graph import Node
from circuits.replacement import ReplacementCache, ReplacementModel


class HeadRoute(NamedTuple):
    """A head moving information from key position ``key_pos`` to query position ``query_pos``, with the summed
    |per-head edge weight| of the graph's edges into attention features that go that way."""

    layer: int
    head: int
    query_pos: int
    key_pos: int
    strength: float


def strongest_routes(graph, n: int = 3) -> list[HeadRoute]:
    """The `n` (head, query, key) routes carrying the most |edge weight| into attention features (per-head edge
    parts, `Graph.head_weights`; graphs from the autograd method have none, and give an empty list)."""
    if graph.head_weights is None or not graph.n_edges or not bool(graph.head_weights.abs().sum() > 0):
        return []
    tgt, src = graph.edge_index[0], graph.edge_index[1]
    layer = torch.tensor([n.layer for n in graph.nodes])
    pos = torch.tensor([n.pos for n in graph.nodes])
    is_attn = torch.tensor([n.kind == "attn_feature" for n in graph.nodes], dtype=torch.bool)
    idx = torch.nonzero(is_attn[tgt]).flatten()
    n_heads, n_pos = graph.head_weights.shape[1], int(pos.max()) + 1
    # one key per (layer, head, query, key) route; summed |per-head part| of every edge that takes it
    route = ((layer[tgt[idx]] * n_heads)[:, None] + torch.arange(n_heads)) * n_pos + pos[tgt[idx]][:, None]
    route = route * n_pos + pos[src[idx]][:, None]  # [E, H]
    totals = torch.zeros(int(layer.max()) + 1, n_heads, n_pos, n_pos, dtype=graph.head_weights.dtype).flatten()
    totals.index_add_(0, route.flatten(), graph.head_weights[idx].abs().flatten())
    best = totals.topk(min(n, int((totals > 0).sum()))) if n > 0 else None
    if best is None:
        return []
    out = []
    for v, i in zip(best.values.tolist(), best.indices.tolist(), strict=True):
        rest, key = divmod(i, n_pos)
        rest, query = divmod(rest, n_pos)
        lay, head = divmod(rest, n_heads)
        out.append(HeadRoute(lay, head, query, key, v))
    return out


def qk_tables(rm: ReplacementModel, cache: ReplacementCache, graph, n_routes: int = 3, top: int = 10) -> list[dict]:
    """The QK tables (`QKAttribution.to_json`) of the graph's `n_routes` strongest head routes, each with its
    route strength: what ``circuits trace --qk`` stores in ``metadata["qk"]``."""
    src = collect_sources(rm, cache)
    out = []
    for route in strongest_routes(graph, n_routes):
        qk = explain_attention(rm, cache, route.layer, route.head, route.query_pos, route.key_pos, sources=src)
        out.append({**qk.to_json(top), "route_strength": route.strength})
    return out


def head_shares(graph, node: Node) -> Tensor | None:
    """[n_heads, n_pos] the summed |per-head part| of the edges into attention feature `node`, by head and by the
    edge source's position (a key position of that head: every edge into an attention feature is carried by the
    heads' OV from its source position). None when the graph keeps no per-head parts (autograd graphs) or the node
    has no incoming edge with one."""
    if graph.head_weights is None or node.kind != "attn_feature" or node not in set(graph.nodes):
        return None
    mask = graph.edge_index[0] == graph.row(node)
    parts = graph.head_weights[mask].abs()
    if not parts.numel() or not bool(parts.sum() > 0):
        return None
    n_pos = max(len(graph.metadata.get("token_strings") or []), max(n.pos for n in graph.nodes) + 1)
    src_pos = torch.tensor([graph.nodes[int(s)].pos for s in graph.edge_index[1][mask]], dtype=torch.long)
    out = torch.zeros(parts.shape[1], n_pos, dtype=parts.dtype)
    out.index_add_(1, src_pos, parts.T)
    return out


def default_route(graph, node: Node) -> tuple[int, int] | None:
    """(head, key position) to explain first for attention feature `node`: the head with the largest share of the
    per-head parts of the node's incoming edges (`head_shares`), and that head's source position with the largest
    share. None where `head_shares` is None."""
    shares = head_shares(graph, node)
    if shares is None:
        return None
    head = int(shares.sum(1).argmax())
    return head, int(shares[head].argmax())


class EdgeRoute(NamedTuple):
    """An edge into an attention feature and the head carrying most of it: from ``source`` (at key position
    ``source.pos``) with total ``weight``, of which head ``head`` carries ``head_part``."""

    source: Node
    weight: float
    head: int
    head_part: float


def edge_routes(graph, node: Node, n: int = 20) -> list[EdgeRoute]:
    """The `n` incoming edges of attention feature `node` of largest |weight|, each with the head of largest
    |per-head part| (`Graph.head_weights`); empty when the graph keeps no per-head parts."""
    if graph.head_weights is None or node.kind != "attn_feature" or node not in set(graph.nodes):
        return []
    idx = torch.nonzero(graph.edge_index[0] == graph.row(node)).flatten()
    if not idx.numel() or not bool(graph.head_weights[idx].abs().sum() > 0):
        return []
    idx = idx[graph.edge_weight[idx].abs().argsort(descending=True, stable=True)[:n]]
    out = []
    for e in idx.tolist():
        parts = graph.head_weights[e]
        head = int(parts.abs().argmax())
        out.append(EdgeRoute(graph.nodes[int(graph.edge_index[1, e])], float(graph.edge_weight[e]), head,
                             float(parts[head])))
    return out
