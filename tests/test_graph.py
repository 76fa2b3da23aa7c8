"""Graph: typed nodes, sparse edges, networkx view."""

from __future__ import annotations

import torch

from circuits.graph import Graph, Node


def _tiny():
    nodes = (Node("token", -1, 0, 5), Node("mlp_feature", 0, 0, 3), Node("logit", 1, 0, 7))
    return Graph(nodes, torch.tensor([1.0, 0.5, 2.0]), torch.tensor([[1, 2, 2], [0, 0, 1]]),
                 torch.tensor([0.25, -1.0, 3.0]))


def test_node_identity_and_order():
    a, b = Node("attn_feature", 2, 4, 11), Node("mlp_feature", 2, 4, 11)
    assert a != b and a.order < b.order < Node("attn_feature", 3, 0, 0).order
    assert Node.from_json(a.to_json()) == a


def test_adjacency_incoming_and_networkx():
    g = _tiny()
    a = g.adjacency()
    assert a[2, 1] == 3.0 and a[1, 0] == 0.25 and a[0].abs().sum() == 0
    assert g.incoming(Node("logit", 1, 0, 7)) == {Node("token", -1, 0, 5): -1.0, Node("mlp_feature", 0, 0, 3): 3.0}
    nx_graph = g.to_networkx()
    assert nx_graph.number_of_edges() == 3 and nx_graph.edges[1, 2]["weight"] == 3.0
    assert nx_graph.nodes[1]["kind"] == "mlp_feature"
