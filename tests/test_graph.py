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


def test_fold_bos_moves_bos_edges_into_constants_by_hand():
    from circuits.graph import fold_bos

    tok0, tok1 = Node("token", -1, 0, 1), Node("token", -1, 1, 2)
    f0, e0 = Node("attn_feature", 0, 0, 3), Node("mlp_error", 0, 0, -1)  # at BOS: folded
    f1, out = Node("mlp_feature", 0, 1, 4), Node("logit", 1, 1, 9)
    nodes = (tok0, tok1, f0, e0, f1, out)
    edges = [(f0, tok0, 0.5), (f1, f0, 2.0), (f1, e0, -0.25), (f1, tok1, 1.0), (out, f1, 3.0), (out, f0, 0.125)]
    row = {n: i for i, n in enumerate(nodes)}
    g = Graph(nodes, torch.ones(6, dtype=torch.float64),
              torch.tensor([[row[t] for t, _, _ in edges], [row[s] for _, s, _ in edges]]),
              torch.tensor([w for _, _, w in edges], dtype=torch.float64), metadata={"bos_pos": 0},
              constants=torch.tensor([0, 0, 0.1, 0, 0.5, 1.0], dtype=torch.float64),
              pre_activations=torch.tensor([0, 0, 0.6, 0, 3.25, 4.125], dtype=torch.float64),
              target_weights=torch.tensor([0, 0, 0, 0, 0, 1.0], dtype=torch.float64))
    f = fold_bos(g)
    assert f.nodes == (tok0, tok1, f1, out)
    assert f.incoming(f1) == {tok1: 1.0} and f.incoming(out) == {f1: 3.0}
    assert f.constants.tolist() == [0, 0, 0.5 + 2.0 - 0.25, 1.0 + 0.125]
    assert f.bos_constants.tolist() == [0, 0, 1.75, 0.125]
    mask = f.explained_mask()
    assert torch.equal((f.incoming_sum() + f.constants)[mask], f.pre_activations[mask])  # exact, by hand
    assert f.metadata["bos_folded"] == {"pos": 0, "nodes": 2, "edges": 4}
