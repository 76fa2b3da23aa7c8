"""The attribution invariants on the real organism with its committed dictionaries (float32)."""

from __future__ import annotations

import pytest
import torch

from circuits.attribution import Contrast, attribute
from circuits.attribution.autograd import autograd_edges
from circuits.attribution.sources import collect_sources
from circuits.attribution.targets import resolve_logit_targets
from circuits.interventions import Edit, run_edited
from circuits.pruning import graph_scores, prune
from circuits.replacement import ReplacementModel

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def organism_rm():
    from circuits import load_dictionaries, load_model

    model, _ = load_model("organism")
    return ReplacementModel(model, load_dictionaries("organism", model))


@pytest.fixture(scope="module")
def ioi_graph(organism_rm):
    cache = organism_rm.run(PROMPT)
    return cache, attribute(organism_rm, PROMPT, Contrast(" Mary", " John"), cache=cache)


def test_spliced_organism_is_exact(organism_rm, ioi_graph):
    cache, _ = ioi_graph
    with torch.no_grad():
        clean = organism_rm.model(cache.tokens[None])[0]
        with organism_rm.frozen(cache):
            frozen = organism_rm.model(cache.tokens[None])[0]
    assert (cache.logits - clean).abs().max().item() <= 1e-4
    assert (frozen - clean).abs().max().item() <= 1e-4


def test_organism_edges_plus_constant_equal_pre_activation(ioi_graph):
    _, g = ioi_graph
    mask = g.explained_mask()
    gap = (g.incoming_sum() + g.constants - g.pre_activations)[mask].abs()
    assert mask.sum() > 1000 and g.n_edges > 100_000
    assert gap.max().item() <= 1e-4 * max(1.0, g.pre_activations[mask].abs().max().item())


def test_organism_analytic_equals_autograd_on_a_sample(organism_rm, ioi_graph):
    cache, g = ioi_graph
    src = collect_sources(organism_rm, cache)
    reads = resolve_logit_targets(organism_rm.model, cache.logits[-1], Contrast(" Mary", " John"), False,
                                  cache.n_pos - 1)
    gen = torch.Generator().manual_seed(0)
    feats = [i for i, n in enumerate(src.nodes) if n.kind.endswith("_feature")]
    rows = [feats[int(j)] for j in torch.randperm(len(feats), generator=gen)[:48]] + [len(src)]
    e = autograd_edges(organism_rm, cache, src, reads, only=rows)
    dense_g = torch.zeros(g.n_nodes, g.n_nodes)
    dense_g[e.target, e.source] = e.weight
    a = g.adjacency()
    scale = a[rows].abs().max().item()
    assert (dense_g[rows] - a[rows]).abs().max().item() <= 1e-4 * scale


def test_organism_doubling_a_feature_moves_targets_by_edge_weights(organism_rm, ioi_graph):
    cache, g = ioi_graph
    a = g.adjacency()
    target = len(g.nodes) - 1  # the logit difference
    strongest = a[target].abs().argsort(descending=True)[:3].tolist()
    mary, john = g.metadata["contrast"]
    for row in strongest:
        with torch.no_grad():
            logits, _, _ = run_edited(organism_rm, cache, [Edit(g.nodes[row], "scale", 2.0)], frozen=True,
                                      direct=True)
        moved = float(logits[-1, mary] - logits[-1, john]) - float(g.pre_activations[target])
        assert abs(moved - float(a[target, row])) <= 1e-3 * max(1.0, abs(float(a[target, row])))


def test_organism_pruned_graph_scores(ioi_graph):
    _, g = ioi_graph
    pruned = prune(g).graph
    full, scores = graph_scores(g), graph_scores(pruned)
    assert 0 < pruned.n_nodes < g.n_nodes and pruned.n_edges < g.n_edges
    assert 0.5 < scores.replacement <= 1 and 0.5 < scores.completeness <= 1
    # the pruned graph is scored on its own edges and nodes, not the full graph's
    assert (scores.replacement, scores.completeness) != (full.replacement, full.completeness)
    keep_all = prune(g, 1.0, 1.0).graph
    if keep_all.n_nodes == g.n_nodes and keep_all.n_edges == g.n_edges:  # nothing pruned: the same scores
        assert graph_scores(keep_all) == full


def test_the_ioi_graph_beats_its_random_baseline_and_a_random_circuit_does_not(organism_rm, ioi_graph):
    """On the organism's IOI prompt the pruned graph keeps more of the logit difference under standard mean
    ablation than every one of 5 random circuits of the same shape; a 'circuit' that is itself such a random draw
    is not above the baseline's range (negative control: the comparison can say no)."""
    import random

    from circuits.interventions import faithfulness, logit_diff_metric, random_baseline, standard_ablations
    from circuits.pruning import prune

    cache, g = ioi_graph
    metric = logit_diff_metric(organism_rm.model, " Mary", " John")
    (mean,) = [a for a in standard_ablations(organism_rm) if a.mode == "mean"]
    pruned = prune(g).graph
    base = random_baseline(organism_rm, cache, pruned, metric, mean, draws=5, seed=0)
    score = faithfulness(organism_rm, cache, pruned, metric, mean).score
    assert score > max(base.scores) + 0.02, (score, base.scores)
    feats = [n for n in pruned.nodes if n.kind.endswith("_feature")]
    others = [n for n in g.nodes if n.kind.endswith("_feature") and n not in set(feats)]
    fake = random.Random(7).sample(others, len(feats)) + [n for n in pruned.nodes if not n.kind.endswith("_feature")]
    fake_score = faithfulness(organism_rm, cache, fake, metric, mean).score
    assert fake_score < min(score, max(base.scores) + 0.02), (fake_score, score, base.scores)
