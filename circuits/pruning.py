"""Pruning attribution graphs by influence, and the graph-level scores (circuit-tracer conventions).

1. **Normalised adjacency** ``Â = |A| / rowsum|A|`` (rows are targets; a row with no edges stays zero).
2. **Influence** of every node on the targets: ``I = w (Â + Â² + …)``, where ``w`` are the target weights (logit
   probabilities, or 1 for a contrast or a feature target). Edges run from earlier to later sublayers, so one
   backward sweep over the edges, sublayer by sublayer, sums the whole series (never a dense matrix).
3. **Nodes**: features and error nodes are ranked by influence; the smallest set whose influence reaches
   ``node_threshold`` of the total is kept (then at most ``max_feature_nodes`` features). Tokens and targets always
   stay.
4. **Edges**: on the node-pruned graph, recompute ``Â'`` and ``I'``; score each edge ``Â'[i, j] · (I'_i + w_i)``
   and keep the smallest set reaching ``edge_threshold`` of the total score.
5. **Dangling nodes**: repeatedly drop features and errors with no kept outgoing edge, and features with no kept
   incoming edge.

Everything is computed in float64 with stable sorts (ties go to the lower index), and steps 3–5 are split from
step 2 (`rank_nodes`): the explorer sends the ranking to the browser, which re-runs steps 3–5 itself on every slider
move (`circuits/graph_view/prune.js`) and gets the same graph as `prune`.

Scores: replacement score ``Σ_tokens I / (Σ_tokens I + Σ_errors I)`` (how much of the influence reaching the
targets starts at tokens rather than errors) and completeness ``Σ_i (1 − Σ_{e ∈ errors} Â[i, e]) (I_i + w_i) /
Σ_i (I_i + w_i)`` (how much of each node's input is explained by non-error nodes, weighted by importance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.errors import CircuitsError
from circuits.graph import ERROR_KINDS, FEATURE_KINDS, Graph


@dataclass
class PruneResult:
    graph: Graph  # the pruned graph
    node_mask: Tensor  # [n_nodes of the input graph] bool
    edge_mask: Tensor  # [n_edges of the input graph] bool
    node_influence: Tensor  # [n_nodes of the input graph] influence on the targets before pruning


@dataclass
class GraphScores:
    replacement: float
    completeness: float


def _normalize(n_nodes: int, tgt: Tensor, w_abs: Tensor) -> Tensor:
    rowsum = torch.zeros(n_nodes, dtype=w_abs.dtype).index_add_(0, tgt, w_abs)
    denom = rowsum[tgt]
    return torch.where(denom > 0, w_abs / denom.clamp_min(torch.finfo(w_abs.dtype).tiny), torch.zeros_like(w_abs))


def normalized_weights(graph: Graph, edge_mask: Tensor | None = None) -> Tensor:
    """[n_edges] float64 ``|w| / Σ |w| over the target's incoming edges`` (masked-out edges get 0)."""
    w = graph.edge_weight.abs().double()
    if edge_mask is not None:
        w = w * edge_mask
    return _normalize(graph.n_nodes, graph.edge_index[0], w)


def _ranks(graph: Graph) -> Tensor:
    """[n_nodes] forward-order rank (token < attention L < MLP L < … < logits); edges go from lower to higher."""
    return torch.tensor([n.sublayer_rank for n in graph.nodes], dtype=torch.long)


def _sweep(tgt: Tensor, src: Tensor, a: Tensor, weights: Tensor, rank: Tensor) -> Tensor:
    """``I_s = Σ_t (I_t + w_t) Â[t, s]`` over the given edges, processing targets from the highest rank down."""
    edge_rank = rank[tgt]
    if bool((rank[src] >= edge_rank).any()):
        raise CircuitsError("influence needs edges from earlier to later sublayers (the graph has a cycle or an "
                            "edge within one sublayer)")
    total = torch.zeros(len(rank), dtype=a.dtype)
    for r in torch.unique(rank).flip(0).tolist():  # a handful of sublayers, last first
        e = torch.nonzero(edge_rank == r).flatten()
        if len(e):
            total.index_add_(0, src[e], (total[tgt[e]] + weights[tgt[e]]) * a[e])
    return total


def influence(graph: Graph, edge_mask: Tensor | None = None) -> Tensor:
    """[n_nodes] ``w (Â + Â² + …)``: total normalised influence of each node on the weighted targets.

    Computed in one sweep over the edges, from the last sublayer back to the first: a node's influence is final
    once every node it feeds (all of higher rank) has been processed, so ``I_s = Σ_t (I_t + w_t) Â[t, s]``.
    """
    tgt, src = graph.edge_index
    w = graph.edge_weight.abs().double()
    if edge_mask is not None:
        keep = torch.nonzero(edge_mask).flatten()
        tgt, src, w = tgt[keep], src[keep], w[keep]
    a = _normalize(graph.n_nodes, tgt, w)
    return _sweep(tgt, src, a, graph.target_weights.double(), _ranks(graph))


def total_effects(graph: Graph) -> Tensor:
    """[n_nodes] signed total effect of each node on the weighted targets in the linear local replacement model.

    Unlike `influence` (normalised |weights|), this is the exact path sum ``w (A D + (A D)² + …)`` with signs, where
    ``D`` rescales each feature's edges per unit of its pre-activation (an active feature's code equals its
    pre-activation): ``T_s = Σ_t A[t, s] (T_t / a_t + w_t)``. It equals gradient × activation of the target in the
    frozen replacement model (attention patterns and LayerNorm scales held, error nodes held, features live) — the
    effect of removing the node (setting it to zero) to first order, which is exact in the frozen linear model.
    """
    tgt, src = graph.edge_index
    kinds = [n.kind for n in graph.nodes]
    is_feature = torch.tensor([k in FEATURE_KINDS for k in kinds], dtype=torch.bool)
    act = graph.activations.to(graph.edge_weight.dtype)
    per_unit = torch.where(is_feature & (act != 0), 1.0 / torch.where(act != 0, act, torch.ones_like(act)),
                           torch.zeros_like(act))
    rank = _ranks(graph)
    edge_rank = rank[tgt]
    if bool((rank[src] >= edge_rank).any()):
        raise CircuitsError("total effects need edges from earlier to later sublayers")
    weights = graph.target_weights.to(act.dtype)
    total = torch.zeros(graph.n_nodes, dtype=act.dtype)
    for r in torch.unique(rank).flip(0).tolist():
        e = torch.nonzero(edge_rank == r).flatten()
        if len(e):
            t = tgt[e]
            total.index_add_(0, src[e], graph.edge_weight[e] * (total[t] * per_unit[t] + weights[t]))
    return total


@dataclass
class Ranking:
    """Scores sorted for a "smallest set reaching a fraction" cut: ``order`` lists the positive scores' indices,
    highest first (ties by index: a stable sort, so a browser can reproduce it), ``before[k]`` is the sum of the
    scores ranked above ``order[k]`` (as ``cumsum − score``), ``total`` the sum of the positive scores in that
    order. Index ``order[k]`` is kept at threshold ``t`` iff ``before[k] < t · total``."""

    order: Tensor  # [n_positive] long
    before: Tensor  # [n_positive] float64
    total: float


def rank_scores(scores: Tensor) -> Ranking:
    nz = torch.nonzero(scores > 0).flatten()  # only positive scores can be needed (all scores here are >= 0)
    if not len(nz):
        return Ranking(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64), 0.0)
    sorted_scores, perm = torch.sort(scores[nz].double(), descending=True, stable=True)
    cumsum = torch.cumsum(sorted_scores, 0)  # summed in this order, so the total is reproducible elsewhere
    return Ranking(nz[perm], cumsum - sorted_scores, float(cumsum[-1]))


def _smallest_set_reaching(scores: Tensor, threshold: float) -> Tensor:
    """Bool mask of the highest scores whose sum first reaches `threshold` of the total."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    r = rank_scores(scores)
    keep[r.order[r.before < threshold * r.total]] = True
    return keep


@dataclass
class NodeRanking:
    """The threshold-independent first step of `prune`: influence on the full graph and the candidates' order.

    ``candidates`` are the features and error nodes (tokens and targets always stay); ``ranking`` ranks
    ``influence[candidates]``. The browser explorer receives this and re-prunes without a server round trip."""

    influence: Tensor  # [n_nodes] float64
    always: Tensor  # [n_nodes] bool: tokens and targets
    is_feature: Tensor  # [n_nodes] bool
    candidates: Tensor  # [n_candidates] long node indices
    ranking: Ranking  # over influence[candidates]


def rank_nodes(graph: Graph) -> NodeRanking:
    kinds = [n.kind for n in graph.nodes]
    is_feature = torch.tensor([k in FEATURE_KINDS for k in kinds], dtype=torch.bool)
    is_error = torch.tensor([k in ERROR_KINDS for k in kinds], dtype=torch.bool)
    is_target = graph.target_weights > 0
    always = ~(is_feature | is_error) | is_target
    tgt, src = graph.edge_index
    node_inf = _sweep(tgt, src, normalized_weights(graph), graph.target_weights.double(), _ranks(graph))
    candidates = torch.nonzero(~always).flatten()
    return NodeRanking(node_inf, always, is_feature, candidates, rank_scores(node_inf[candidates]))


def _check_graph(graph, what: str) -> None:
    if isinstance(graph, PruneResult):
        raise CircuitsError(f"{what} takes a Graph; this is prune's result: pass result.graph")
    if not isinstance(graph, Graph):
        raise CircuitsError(f"{what} takes a Graph, not a {type(graph).__name__}")


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
          max_feature_nodes: int | None = None, ranked: NodeRanking | None = None) -> PruneResult:
    """Prune `graph` by influence (see the module docstring); returns the pruned graph and the masks.

    `ranked` is `rank_nodes(graph)` when the caller has it already (it does not depend on the thresholds)."""
    from circuits.inputs import as_integer, as_real

    _check_graph(graph, "prune")
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if as_real(value) is None:  # any real number (a NumPy float, a 0-d tensor); not text or a bool
            raise CircuitsError(f"{name} must be a number in (0, 1], got {value!r}")
        if not 0 < as_real(value) <= 1:
            raise CircuitsError(f"{name} must be in (0, 1], got {value}")
    node_threshold, edge_threshold = as_real(node_threshold), as_real(edge_threshold)
    if max_feature_nodes is not None:
        if as_integer(max_feature_nodes) is None or as_integer(max_feature_nodes) < 0:
            raise CircuitsError(f"max_feature_nodes must be a non-negative integer, got {max_feature_nodes!r}")
        max_feature_nodes = as_integer(max_feature_nodes)
    if ranked is None:
        ranked = rank_nodes(graph)
    elif len(ranked.influence) != graph.n_nodes:
        raise CircuitsError(f"ranked is of a graph of {len(ranked.influence)} nodes, not this one ({graph.n_nodes}); "
                            "pass rank_nodes(graph) of the same graph, or leave it out")
    always, is_feature, node_inf = ranked.always, ranked.is_feature, ranked.influence
    rank = _ranks(graph)
    node_mask = always.clone()
    r = ranked.ranking
    order = ranked.candidates[r.order]  # node indices, most influential first
    node_mask[order[r.before < node_threshold * r.total]] = True
    if max_feature_nodes is not None:  # the first `max_feature_nodes` kept features in that order
        kept_features = order[node_mask[order] & is_feature[order]]
        node_mask[kept_features[max_feature_nodes:]] = False
    tgt, src = graph.edge_index
    edge_mask = node_mask[tgt] & node_mask[src]
    kept_e = torch.nonzero(edge_mask).flatten()  # work on the node-pruned graph's edges only
    t2, s2 = tgt[kept_e], src[kept_e]
    a2 = _normalize(graph.n_nodes, t2, graph.edge_weight[kept_e].abs().double())
    weights = graph.target_weights.double()
    inf2 = _sweep(t2, s2, a2, weights, rank)
    edge_mask = torch.zeros_like(edge_mask)
    edge_mask[kept_e[_smallest_set_reaching(a2 * (inf2 + weights)[t2], edge_threshold)]] = True
    while True:  # dangling nodes
        has_out = torch.zeros(graph.n_nodes, dtype=torch.bool)
        has_out[src[edge_mask]] = True
        has_in = torch.zeros(graph.n_nodes, dtype=torch.bool)
        has_in[tgt[edge_mask]] = True
        dangling = node_mask & ~always & (~has_out | (is_feature & ~has_in))
        if not dangling.any():
            break
        node_mask &= ~dangling
        edge_mask &= node_mask[tgt] & node_mask[src]
    pruned = graph.subgraph(node_mask, edge_mask)
    pruned.metadata["pruning"] = {"node_threshold": node_threshold, "edge_threshold": edge_threshold,
                                  "max_feature_nodes": max_feature_nodes,
                                  "nodes_before": graph.n_nodes, "edges_before": graph.n_edges}
    return PruneResult(pruned, node_mask, edge_mask, node_inf)


def graph_scores(graph: Graph) -> GraphScores:
    """Replacement and completeness scores of `graph` (see the module docstring). They are the scores of the graph
    given: the numbers reported for a prompt (`circuits trace`, the explorer, issue targets) are those of the full
    graph; a pruned graph scores differently (its dropped nodes' influence is gone)."""
    _check_graph(graph, "graph_scores")
    inf = influence(graph)
    kinds = [n.kind for n in graph.nodes]
    is_token = torch.tensor([k == "token" for k in kinds])
    is_error = torch.tensor([k in ERROR_KINDS for k in kinds])
    tok, err = float(inf[is_token].sum()), float(inf[is_error].sum())
    replacement = tok / (tok + err) if tok + err > 0 else float("nan")
    a = normalized_weights(graph)
    tgt, src = graph.edge_index
    err_frac = torch.zeros(graph.n_nodes, dtype=a.dtype).index_add_(0, tgt, a * is_error[src])
    weight = inf + graph.target_weights
    completeness = float(((1 - err_frac) * weight).sum() / weight.sum()) if weight.sum() > 0 else float("nan")
    return GraphScores(replacement, completeness)
