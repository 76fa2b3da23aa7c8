"""Automatic supernodes (issue 21 item 4): grouping is deterministic and never crosses positions, and the supernode
graph keeps the graph's sums exactly (quotient edges, the target's input, the exactness identity)."""

from __future__ import annotations

import random

import pytest
import torch

from circuits.attribution import Contrast, attribute
from circuits.errors import ConfigError
from circuits.graph import FEATURE_KINDS, Graph, Node, fold_bos
from circuits.pruning import prune
from circuits.supernodes import SupernodeConfig, attach_supernodes, auto_supernodes, contract

PROMPT = "When Mary and John went to the store, John gave a drink to"
T1, T2 = Node("token", -1, 1, 11), Node("token", -1, 2, 12)
A, B, C = (Node("mlp_feature", 0, 2, i) for i in (1, 2, 3))
D = Node("mlp_feature", 0, 1, 4)  # the same neighbours as A and B, but at another position
X = Node("attn_feature", 1, 2, 9)
L = Node("logit_diff", 2, 2, 7)


def planted(order=None) -> Graph:
    nodes = [T1, T2, A, B, C, D, X, L]
    if order is not None:
        nodes = [nodes[i] for i in order]
    edges = [(A, T1, 1.0), (A, T2, 2.0), (B, T1, 1.5), (B, T2, 2.5), (D, T1, 1.0), (D, T2, 2.0),
             (C, T2, 0.1), (C, T1, -3.0), (X, A, 1.0), (X, B, 1.0), (X, D, 1.0),
             (L, X, 2.0), (L, C, 0.5)]
    row = {n: i for i, n in enumerate(nodes)}
    index = torch.tensor([[row[t] for t, _, _ in edges], [row[s] for _, s, _ in edges]])
    tw = torch.tensor([1.0 if n == L else 0.0 for n in nodes], dtype=torch.float64)
    return Graph(tuple(nodes), torch.ones(len(nodes), dtype=torch.float64), index,
                 torch.tensor([w for _, _, w in edges], dtype=torch.float64), target_weights=tw,
                 metadata={"n_layers": 2, "token_strings": ["<bos>", " a", " b"]})


def by_kind(node):
    return None  # no label categories: group by kind (the labels engine is not asked)


def as_sets(found):
    return [frozenset(Node.from_json(v) for v in s["nodes"]) for s in found]


def test_planted_groups_share_inputs_outputs_and_position():
    found = auto_supernodes(planted(), SupernodeConfig(threshold=0.5, top=4, mass=1.0), by_kind)
    # A and B read T1, T2 and feed X: one group. C reads T1 and T2 too but feeds L, not X (Jaccard 2/4 = 0.5 —
    # grouped at 0.5, not above). D has A's neighbours but sits at position 1: never grouped with them.
    assert as_sets(found) == [frozenset({A, B, C})]
    strict = auto_supernodes(planted(), SupernodeConfig(threshold=0.6, top=4, mass=1.0), by_kind)
    assert as_sets(strict) == [frozenset({A, B})]
    assert strict[0]["name"] == "M0 @2 ' b' ×2" and strict[0]["auto"] and strict[0]["pos"] == 2


def test_grouping_does_not_depend_on_node_order():
    want = auto_supernodes(planted(), categorize=by_kind)
    assert want
    for seed in range(5):
        order = list(range(8))
        random.Random(seed).shuffle(order)
        assert auto_supernodes(planted(order), categorize=by_kind) == want


def test_label_categories_split_groups():
    found = auto_supernodes(planted(), SupernodeConfig(threshold=0.5, top=4, mass=1.0),
                            lambda node: "name" if node.index == 1 else "place")
    assert as_sets(found) == [frozenset({B, C})] and found[0]["category"] == "place"
    assert found[0]["name"] == "M0 place @2 ' b' ×2"


def test_attach_keeps_manual_supernodes_and_replaces_automatic_ones():
    g = planted()
    g.metadata["ui"] = {"supernodes": [{"name": "mine", "nodes": [C.to_json()]},
                                       {"name": "old", "nodes": [A.to_json()], "auto": True}]}
    found = attach_supernodes(g, SupernodeConfig(threshold=0.6, top=4, mass=1.0), by_kind)
    assert [s["name"] for s in g.metadata["ui"]["supernodes"]] == ["mine"] + [s["name"] for s in found]


def test_contracted_planted_graph_sums_edges():
    c = contract(planted(), [{"name": "ab", "nodes": [A.to_json(), B.to_json()]}])
    g = c.graph
    ab = g.row(A)
    assert c.names[ab] == "ab" and [c.member_nodes[i] for i in c.members[ab]] == [A, B]
    assert g.incoming(A) == {T1: 2.5, T2: 4.5} and g.incoming(X) == {A: 2.0, D: 1.0}
    assert float(g.activations[ab]) == 2.0 and g.n_nodes == 7


@pytest.fixture(scope="module")
def tiny(rm64):
    full = fold_bos(attribute(rm64, PROMPT, Contrast(" Mary", " John"), method="analytic"))
    return full, prune(full, 0.9, 0.99).graph


@pytest.mark.parametrize("band", [1, 2])
def test_supernode_graph_is_exact_on_a_tiny_model(tiny, band):
    full, pruned = tiny
    found = auto_supernodes(full, SupernodeConfig(threshold=0.3, band_layers=band), by_kind)
    assert found, "the tiny graph should have some groups at this threshold"
    for s in found:  # never across positions, kinds or bands
        members = [Node.from_json(v) for v in s["nodes"]]
        assert len({m.pos for m in members}) == 1 and len({m.kind for m in members}) == 1
        assert len({m.layer // band for m in members}) == 1 and all(m.kind in FEATURE_KINDS for m in members)
    c = contract(full, found)
    g = c.graph
    mask = g.explained_mask()
    gap = (g.incoming_sum() + g.constants + g.dropped - g.pre_activations)[mask].abs()
    assert gap.max() <= 1e-10 * max(1.0, float(full.pre_activations.abs().max()))
    # quotient edges: the summed weight between any two groups is the members' total
    a_full = full.adjacency()
    member = torch.zeros(g.n_nodes, full.n_nodes, dtype=torch.float64)
    member[c.group_of, torch.arange(full.n_nodes)] = 1.0
    quotient = member @ a_full @ member.T
    quotient.fill_diagonal_(0)
    assert torch.allclose(g.adjacency(), quotient, atol=1e-12, rtol=0)
    # the target's input is unchanged: each group's edge into it is its members' sum
    (t,) = g.targets
    assert float(g.incoming_sum()[g.row(t)]) == pytest.approx(float(full.incoming_sum()[full.row(t)]), abs=1e-12)
    # on the pruned graph too, and the result is the same every time
    assert auto_supernodes(pruned, categorize=by_kind) == auto_supernodes(pruned, categorize=by_kind)
    contract(pruned, auto_supernodes(pruned, SupernodeConfig(band_layers=band), by_kind))


def test_bad_config_and_backward_group():
    for bad in ({"threshold": 0}, {"mass": 1.5}, {"top": 0}, {"band_layers": 0}):
        with pytest.raises(ConfigError):
            SupernodeConfig(**bad)
    with pytest.raises(ConfigError, match="backwards"):  # A feeds X and X feeds L; grouping A with X cannot be drawn
        contract(planted(), [{"name": "bad", "nodes": [A.to_json(), X.to_json()]}])


def test_pack_sends_supernodes_and_routes_as_full_graph_rows(rm64):
    """The view's starting supernodes and routes (issue 21): full-graph node indices of features at one position,
    each node in at most one supernode; routes start at a token and end at the target."""
    graph = fold_bos(attribute(rm64, PROMPT, Contrast(" Mary", " John"), method="analytic"))
    from circuits.graph_view import pack

    meta = pack(graph, [""] * graph.n_nodes, {}).meta
    groups, paths = meta["supernodes"], meta["paths"]
    assert groups and paths
    seen = set()
    for g in groups:
        nodes = [graph.nodes[i] for i in g["members"]]
        assert len(nodes) >= 2 and len({n.pos for n in nodes}) == 1 and all(n.kind.endswith("_feature") for n in nodes)
        assert not seen & set(g["members"])
        seen |= set(g["members"])
    for p in paths:
        first, last = p["steps"][0], p["steps"][-1]
        assert graph.nodes[first[0]].kind == "token" and float(graph.target_weights[last[0]]) > 0
        assert p["text"].startswith(f"{p['weight']:.4f}")
    for c in meta["cells"]:  # the coarser grouping: one layer, kind and position each
        assert len(c["members"]) >= 2 and len({(graph.nodes[i].pos, graph.nodes[i].layer, graph.nodes[i].kind)
                                                for i in c["members"]}) == 1
    assert sum(len(c["members"]) for c in meta["cells"]) >= sum(len(g["members"]) for g in groups)
    assert pack(graph, [""] * graph.n_nodes, {}, supernodes=False).meta["supernodes"] == []


def test_trace_with_other_dictionaries_does_not_borrow_the_default_databases_categories(tmp_path, capsys):
    """`organism-skip` has the default set's dictionary names, so the shipped dashboards database would pass the
    name check of `labels.store_for`; its fingerprint check fails in `circuits trace`, which must then group the
    supernodes by kind only (no label category borrowed from another set's features)."""
    import json

    from circuits import labels
    from circuits.cli import main

    out = tmp_path / "g.json"
    try:
        code = main(["trace", "When Mary and John went to the store, John gave a drink to", "--dicts", "organism-skip",
                     "--target", "Mary", "--contrast", "John", "--json", str(out)])
        assert code in (0, None)
        said = capsys.readouterr()
        assert "no feature labels" in said.out + said.err
        supers = [s for s in json.loads(out.read_text())["ui"]["supernodes"] if s.get("auto")]
        assert supers and {s["category"] for s in supers} <= {"attention", "transcoder"}
    finally:
        labels._VERIFIED.pop("organism", None)


def test_pinned_subgraph_keeps_only_tokens_and_targets_joined_to_a_pin():
    """The explorer's subgraph tab: the pins, plus the tokens and targets with an edge to or from a pin (it drew
    every token, connected or not)."""
    from circuits.explorer.graph_tab import pinned_subgraph

    g = planted()
    assert set(pinned_subgraph(g, [A]).nodes) == {T1, T2, A}
    assert set(pinned_subgraph(g, [X]).nodes) == {X, L}  # X reads features only: no token comes along
    assert set(pinned_subgraph(g, [C, X]).nodes) == {T1, T2, C, X, L}
    absent = Node("mlp_feature", 1, 0, 99)
    assert set(pinned_subgraph(g, [absent]).nodes) == set()
    sub = pinned_subgraph(g, [A])
    assert sorted(sub.edge_weight.tolist()) == [1.0, 2.0]  # only the edges among the kept nodes


def test_the_views_supernode_names_are_unique():
    """Several groups of one kind, layer, category and position had the same name ('M1 preposition @14 ×2' four
    times in the view); repeats are numbered."""
    from circuits.graph_view import groups_and_paths
    from circuits.pruning import rank_nodes

    g = planted()
    stored = [{"name": "same", "nodes": [A.to_json(), B.to_json()]}, {"name": "same", "nodes": [C.to_json(),
                                                                                                 D.to_json()]}]
    g.metadata["ui"] = {"supernodes": stored}
    groups, _, _ = groups_and_paths(g, rank_nodes(g))
    names = [x["name"] for x in groups]
    assert len(names) == len(set(names)) and names[:2] == ["same", "same (2)"]
