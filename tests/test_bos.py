"""BOS folding (issue 21 item 3): the features and error nodes at the BOS position leave the graph, their edges
move into the constants, and the exactness identity Σ incoming + constant (+ dropped) = pre-activation still holds
exactly — on a tiny float64 model with every kind of node, and on the organism."""

from __future__ import annotations

import json

import pytest
import torch

from circuits import export
from circuits.attribution import Contrast, TopLogits, attribute
from circuits.graph import ERROR_KINDS, FEATURE_KINDS, bos_mask, fold_bos
from circuits.pruning import prune

PROMPT = "When Mary and John went to the store, John gave a drink to"


def identity_gap(g) -> torch.Tensor:
    mask = g.explained_mask()
    return ((g.incoming_sum() + g.constants + g.dropped) - g.pre_activations)[mask].abs()


def at_bos(g) -> list:
    return [n for n in g.nodes if n.pos == 0 and (n.kind in FEATURE_KINDS or n.kind in ERROR_KINDS)]


@pytest.fixture(scope="module")
def tiny_graph(rm64):
    return attribute(rm64, PROMPT, Contrast(" Mary", " John"), method="analytic")


def test_folding_keeps_the_identity_exactly_and_removes_every_bos_feature(tiny_graph):
    g = tiny_graph
    assert g.metadata["bos_pos"] == 0 and len(at_bos(g)) > 2  # the tiny model does have BOS features
    assert identity_gap(g).max() <= 1e-10
    f = fold_bos(g)
    assert at_bos(f) == [] and f.n_nodes == g.n_nodes - len(at_bos(g))
    assert identity_gap(f).max() <= 1e-10 * max(1.0, float(g.pre_activations.abs().max()))
    # the BOS token stays (an input), and so does every other node with its pre-activation
    assert f.nodes[0].kind == "token" and f.nodes[0].pos == 0
    for node in f.nodes:
        assert f.pre_activations[f.row(node)] == g.pre_activations[g.row(node)]
    # the BOS part of each constant is exactly the sum of the folded edges into it
    folded = set(at_bos(g))
    for node in f.nodes[::7]:
        want = sum(w for s, w in g.incoming(node).items() if s in folded) if node not in folded else 0.0
        assert abs(float(f.bos_constants[f.row(node)]) - want) <= 1e-12
    assert f.metadata["bos_folded"] == {"pos": 0, "nodes": len(folded),
                                        "edges": sum(1 for t, s in g.edge_index.T.tolist()
                                                     if g.nodes[s] in folded or g.nodes[t] in folded)}


def test_remaining_edges_are_untouched(tiny_graph):
    g, f = tiny_graph, fold_bos(tiny_graph)
    before = {(g.nodes[s], g.nodes[t]): (w, h) for (t, s), w, h in
              zip(g.edge_index.T.tolist(), g.edge_weight.tolist(), g.head_weights, strict=True)}
    assert f.n_edges == g.n_edges - f.metadata["bos_folded"]["edges"]
    for (t, s), w, h in zip(f.edge_index.T.tolist(), f.edge_weight.tolist(), f.head_weights, strict=True):
        w0, h0 = before[(f.nodes[s], f.nodes[t])]
        assert w == w0 and torch.equal(h, h0)


def test_fold_is_idempotent_and_a_no_op_without_bos(tiny_graph):
    f = fold_bos(tiny_graph)
    assert fold_bos(f) is f
    g = prune(tiny_graph, 0.8, 0.98).graph
    g.metadata = {**g.metadata, "bos_pos": None}
    same = fold_bos(g)
    assert same.nodes == g.nodes and torch.equal(same.constants, g.constants)
    assert not bos_mask(g).any()


def test_pruning_after_folding_shows_no_bos_feature(tiny_graph):
    kept = prune(fold_bos(tiny_graph), 0.9, 0.99).graph
    assert at_bos(kept) == [] and any(n.kind in FEATURE_KINDS for n in kept.nodes)
    assert at_bos(prune(tiny_graph, 0.9, 0.99).graph)  # without folding they are among the kept nodes


def test_topk_logit_targets_and_json_round_trip(rm64, tmp_path):
    g = fold_bos(attribute(rm64, PROMPT, TopLogits(0.8, 3), method="analytic"))
    assert identity_gap(g).max() <= 1e-10 * max(1.0, float(g.pre_activations.abs().max()))
    back = export.read_json(export.write_json(g, tmp_path / "g.json"))
    assert torch.equal(back.bos_constants, g.bos_constants) and back.metadata["bos_folded"]["nodes"] > 0
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["schema_version"] == export.SCHEMA_VERSION == 4 and "bos_constant" in data["nodes"]
    # a version-3 file (no bos_constant) still reads, with zero BOS constants
    for key in ("bos_constant",):
        data["nodes"].pop(key)
    data["metadata"].pop("bos_folded")
    data["schema_version"] = 3
    old = export.loads(json.dumps(data))
    assert not old.bos_constants.any() and old.n_nodes == g.n_nodes


def test_organism_ioi_graph_folds_exactly():
    """The organism: BOS features are among the strongest nodes before folding, absent after, identity kept."""
    from circuits import load_dictionaries, load_model
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model))
    g = attribute(rm, PROMPT, Contrast(" Mary", " John"))
    scale = max(1.0, float(g.pre_activations.abs().max()))
    assert len(at_bos(g)) > 20
    f = fold_bos(g)
    assert at_bos(f) == []
    assert identity_gap(f).max() <= 1e-4 * scale  # float32, as the organism's own identity test
    assert (identity_gap(f) - identity_gap(g)[~bos_mask(g)[g.explained_mask()]]).abs().max() <= 1e-5 * scale


def test_faithfulness_of_a_folded_graph_keeps_the_bos_nodes(rm64, tiny_graph):
    """The folded BOS nodes are constants of the graph: faithfulness keeps them with the circuit (as if listed)."""
    from circuits.interventions import faithfulness, logit_diff_metric

    folded = prune(fold_bos(tiny_graph), 0.8, 0.98).graph
    metric = logit_diff_metric(rm64.model, *tiny_graph.metadata["contrast"])
    bos = [n for n, m in zip(tiny_graph.nodes, bos_mask(tiny_graph).tolist(), strict=True) if m]
    got = faithfulness(rm64, PROMPT, folded, metric)
    listed = faithfulness(rm64, PROMPT, [*folded.nodes, *bos], metric)
    assert got.circuit == listed.circuit and got.empty == listed.empty
    assert got.n_features == listed.n_features and got.n_errors == listed.n_errors
    without = faithfulness(rm64, PROMPT, list(folded.nodes), metric)  # a node list: nothing is added
    assert without.n_features < got.n_features
    # n_bos counts what the fold added (BOS features and the BOS error of each dictionary), and only then
    assert got.n_bos == len(bos) and without.n_bos == listed.n_bos == 0
    assert got.n_features + got.n_errors - got.n_bos == without.n_features + without.n_errors
