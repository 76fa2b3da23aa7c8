"""Top paths (issue 21 item 6): on planted graphs whose best paths are known by hand, on graphs with ties, and
against brute-force enumeration of every path of random DAGs."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.graph import Graph, Node
from circuits.paths import format_path, heads_of, top_paths
from circuits.pruning import influence

T0, T1 = Node("token", -1, 0, 10), Node("token", -1, 1, 11)
F = Node("mlp_feature", 0, 1, 3)
G = Node("attn_feature", 1, 1, 4)
L = Node("logit_diff", 2, 1, 7)


def build(nodes, edges, heads=None, n_heads=2) -> Graph:
    row = {n: i for i, n in enumerate(nodes)}
    index = torch.tensor([[row[t] for t, _, _ in edges], [row[s] for _, s, _ in edges]], dtype=torch.long)
    tw = torch.tensor([1.0 if n.kind.startswith("logit") else 0.0 for n in nodes], dtype=torch.float64)
    hw = torch.zeros(len(edges), n_heads, dtype=torch.float64)
    for k, h in (heads or {}).items():
        hw[k] = torch.tensor(h, dtype=torch.float64)
    return Graph(tuple(nodes), torch.ones(len(nodes), dtype=torch.float64), index,
                 torch.tensor([w for _, _, w in edges], dtype=torch.float64), hw,
                 metadata={"token_strings": ["<bos>", " Mary"],
                           "targets": [{"label": "' Mary' − ' John'", "node": L.to_json(), "weight": 1.0,
                                        "value": 2.0}]}, target_weights=tw)


def planted() -> Graph:
    # Â: L ← G .75, F .25;  G ← F .5, T1 .5;  F ← T0 .25, T1 .75
    return build((T0, T1, F, G, L), [(L, G, 3.0), (L, F, 1.0), (G, F, -2.0), (G, T1, 2.0), (F, T0, 1.0),
                                     (F, T1, 3.0)], heads={2: [-1.5, -0.5], 3: [0.2, 1.8]})


def test_planted_graph_paths_by_hand():
    got = top_paths(planted(), k=5)
    want = [((T1, G, L), 0.375, 1), ((T1, F, G, L), 0.28125, -1), ((T1, F, L), 0.1875, 1),
            ((T0, F, G, L), 0.09375, -1), ((T0, F, L), 0.0625, 1)]
    assert [(p.nodes, p.weight, p.sign) for p in got] == [(n, pytest.approx(w, abs=1e-15), s) for n, w, s in want]
    # every path starts at a token here, so the weights of all paths sum to the target's weight
    assert sum(p.weight for p in got) == pytest.approx(1.0, abs=1e-15)
    assert got[1].edge_weights == (3.0, -2.0, 3.0)
    assert len(top_paths(planted(), k=2)) == 2 and top_paths(planted(), k=2) == got[:2]


def test_ties_are_kept_and_broken_by_edge_order():
    f1, f2 = Node("mlp_feature", 0, 1, 1), Node("mlp_feature", 0, 1, 2)
    edges = [(L, f1, 1.0), (L, f2, -1.0), (f1, T1, 1.0), (f2, T1, 1.0)]
    g = build((T1, f1, f2, L), edges)
    both = top_paths(g, k=2)
    assert {p.nodes for p in both} == {(T1, f1, L), (T1, f2, L)}
    assert both[0].weight == both[1].weight == 0.5
    assert top_paths(g, k=1)[0].nodes == (T1, f1, L) == top_paths(g, k=1)[0].nodes  # reproducible
    flipped = build((T1, f1, f2, L), [edges[1], edges[0], edges[3], edges[2]])
    assert top_paths(flipped, k=1)[0].nodes == (T1, f2, L)  # the tie goes to the first edge in the graph


def all_paths(g: Graph):
    """Every path from a token to a target, with its weight, by explicit recursion (the definition)."""
    from circuits.pruning import normalized_weights

    a = normalized_weights(g).tolist()
    out_edges: dict[int, list[tuple[int, int]]] = {}
    for k, (t, s) in enumerate(g.edge_index.T.tolist()):
        out_edges.setdefault(s, []).append((t, k))

    def walk(i):
        if float(g.target_weights[i]) > 0:
            yield (i,), float(g.target_weights[i])
        for t, k in out_edges.get(i, []):
            for rest, w in walk(t):
                yield (i, *rest), a[k] * w

    for i, n in enumerate(g.nodes):
        if n.kind == "token":
            yield from walk(i)


@pytest.mark.parametrize("seed", range(6))
def test_random_dags_match_brute_force(seed):
    rng = random.Random(seed)
    nodes = [Node("token", -1, p, p) for p in range(3)]
    for layer in range(3):
        nodes += [Node(rng.choice(["attn_feature", "mlp_feature"]), layer, rng.randrange(3), i) for i in range(3)]
    nodes = list(dict.fromkeys(nodes)) + [Node("logit", 3, 2, 1), Node("logit", 3, 2, 2)]
    edges = [(t, s, rng.uniform(-2, 2)) for s, t in itertools.product(nodes, nodes)
             if s.sublayer_rank < t.sublayer_rank and rng.random() < 0.5]
    g = build(nodes, edges)
    g.target_weights[-2:] = torch.tensor([0.7, 0.2], dtype=torch.float64)
    brute = sorted(all_paths(g), key=lambda p: -p[1])
    got = top_paths(g, k=5)
    assert [p.weight for p in got] == pytest.approx([w for _, w in brute[:5]], abs=1e-12)
    weights = {tuple(g.nodes[i] for i in p): w for p, w in brute}
    for p in got:
        assert weights[p.nodes] == pytest.approx(p.weight, abs=1e-12)
    # summed over all paths from one token, the weights give that token's influence
    inf = influence(g)
    for i, n in enumerate(g.nodes):
        if n.kind == "token":
            assert sum(w for p, w in brute if p[0] == i) == pytest.approx(float(inf[i]), abs=1e-12)


def test_printed_path_names_tokens_heads_and_target():
    g = planted()
    line = format_path(g, top_paths(g, k=1)[0], labels={"A1#4@1": "name mover"})
    assert line == "0.3750 +  ' Mary'@1 → A1#4@1 (name mover) [head 1] → logit ' Mary' − ' John'"
    assert heads_of(g, 2) == [0, 1] and heads_of(g, 0) == []


def test_bad_k_and_backward_edges():
    with pytest.raises(CircuitsError, match="at least 1"):
        top_paths(planted(), k=0)
    bad = build((T1, F, G, L), [(F, G, 1.0), (L, F, 1.0)])
    with pytest.raises(CircuitsError, match="earlier to later"):
        top_paths(bad)


def test_routes_merge_each_cell_and_sum_its_edges():
    from circuits.paths import cells, top_routes

    # two features in one cell (mlp L0 @1) split the token's input; merged they carry the whole route
    f1, f2 = Node("mlp_feature", 0, 1, 1), Node("mlp_feature", 0, 1, 2)
    g = build((T0, T1, f1, f2, G, L), [(L, G, 4.0), (L, f1, 1.0), (G, f1, 1.0), (G, f2, 1.0), (G, T1, 2.0),
                                       (f1, T1, 1.0), (f2, T1, 1.0), (f2, T0, 0.5)], heads={3: [0.0, 1.0]})
    assert [c["name"] for c in cells(g, lambda n: None)] == ["M0@1 ×2", "A1@1 ×1"]
    routes = top_routes(g, k=3, categorize=lambda n: None)
    # cell graph Â: L ← A1 .8, M0 .2;  A1 ← M0 .5, T1 .5;  M0 ← T1 .8, T0 .2
    assert [r.labels for r in routes] == [("' Mary'@1", "A1#4@1", "logit ' Mary' − ' John'"),
                                         ("' Mary'@1", "M0@1 ×2", "A1#4@1", "logit ' Mary' − ' John'"),
                                         ("' Mary'@1", "M0@1 ×2", "logit ' Mary' − ' John'")]
    assert [r.weight for r in routes] == pytest.approx([0.4, 0.32, 0.16], abs=1e-15)
    assert routes[1].steps[1] == (f1, f2) and routes[1].heads == ((), (), (1,), ())
    assert routes[1].text() == ("0.3200 +  ' Mary'@1 → M0@1 ×2 → A1#4@1 [head 1] → logit ' Mary' − ' John'")
    stored = routes[1].to_json()
    assert stored["steps"][1] == {"label": "M0@1 ×2", "nodes": ["M0#1@1", "M0#2@1"], "heads": []}
    # the most common label category names a cell (it does not split it)
    named = cells(g, lambda n: "name" if n.index in (1, 4) else None)
    assert [c["name"] for c in named] == ["M0@1 ×2 (name 1)", "A1@1 ×1 (name)"]
