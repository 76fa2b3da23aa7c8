"""Pruning and graph scores on a hand-built graph with hand-computed influences (test (f) of issue 4)."""

from __future__ import annotations

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.graph import Graph, Node
from circuits.pruning import graph_scores, influence, prune

T0, T1 = Node("token", -1, 0, 10), Node("token", -1, 1, 11)
F1, F2 = Node("mlp_feature", 0, 1, 3), Node("attn_feature", 1, 1, 4)
E = Node("mlp_error", 0, 1, -1)
L = Node("logit", 2, 1, 7)


def hand_graph() -> Graph:
    nodes = (T0, T1, F1, E, F2, L)
    row = {n: i for i, n in enumerate(nodes)}
    edges = [(L, F2, 2.0), (L, E, -1.0), (L, T1, 1.0), (F2, F1, 3.0), (F2, T0, -1.0), (F1, T0, 1.0)]
    index = torch.tensor([[row[t] for t, _, _ in edges], [row[s] for _, s, _ in edges]])
    weights = torch.tensor([w for _, _, w in edges], dtype=torch.float64)
    tw = torch.zeros(len(nodes), dtype=torch.float64)
    tw[row[L]] = 1.0
    return Graph(nodes, torch.ones(len(nodes), dtype=torch.float64), index, weights, target_weights=tw)


def test_influence_by_hand():
    g = hand_graph()
    # Â rows: L: F2 .5, E .25, T1 .25;  F2: F1 .75, T0 .25;  F1: T0 1.
    # I = w(Â + Â² + Â³): F2 .5, E .25, T1 .25, F1 .5*.75 = .375, T0 .5*.25 + .375*1 = .5
    want = {T0: 0.5, T1: 0.25, F1: 0.375, E: 0.25, F2: 0.5, L: 0.0}
    got = influence(g)
    for node, value in want.items():
        assert abs(float(got[g.row(node)]) - value) < 1e-12, node


def test_scores_by_hand():
    s = graph_scores(hand_graph())
    assert abs(s.replacement - 0.75 / (0.75 + 0.25)) < 1e-12
    # completeness: Σ (1 − error share of inputs)(I + w) / Σ (I + w) = (0.75·1 + .5 + .375 + .5 + .25 + .25) / 2.875
    assert abs(s.completeness - 2.625 / 2.875) < 1e-12


def test_node_threshold_keeps_the_smallest_set_reaching_it():
    g = hand_graph()
    # candidates F2 .5, F1 .375, E .25 (total 1.125): F2+F1 = 0.778 of it
    kept = prune(g, node_threshold=0.7, edge_threshold=1.0).graph.nodes
    assert set(kept) == {T0, T1, F1, F2, L}
    assert set(prune(g, node_threshold=0.8, edge_threshold=1.0).graph.nodes) == {T0, T1, F1, E, F2, L}


def test_edge_threshold_by_hand():
    # after dropping E: Â' L: F2 2/3, T1 1/3; F2: F1 .75, T0 .25; F1: T0 1; I' F2 2/3, F1 .5
    # scores: L←F2 2/3, F2←F1 .5, F1←T0 .5, L←T1 1/3, F2←T0 1/6 (total 13/6): the first four reach 0.923
    result = prune(hand_graph(), node_threshold=0.7, edge_threshold=0.9)
    g = result.graph
    kept = {(g.nodes[t], g.nodes[s]) for t, s in g.edge_index.T.tolist()}
    assert kept == {(L, F2), (F2, F1), (F1, T0), (L, T1)}
    assert result.edge_mask.sum() == 4 and result.node_mask.sum() == 5


def test_dangling_nodes_are_removed_but_tokens_and_targets_stay():
    g = hand_graph()
    # keep only the strongest edge (L ← F2): F2 then has no incoming edge and is dropped; F1 has no outgoing edge
    result = prune(g, node_threshold=1.0, edge_threshold=0.2)
    names = set(result.graph.nodes)
    assert {T0, T1, L} <= names and F1 not in names and F2 not in names and E not in names


def test_feature_cap_and_bad_thresholds():
    g = hand_graph()
    capped = prune(g, node_threshold=1.0, edge_threshold=1.0, max_feature_nodes=1).graph
    assert [n for n in capped.nodes if n.kind.endswith("feature")] == [F2]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(CircuitsError, match="threshold"):
            prune(g, node_threshold=bad)
        with pytest.raises(CircuitsError, match="threshold"):
            prune(g, edge_threshold=bad)
