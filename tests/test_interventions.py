"""Interventions, faithfulness, and attribution patching (test (h): exact on a model that is linear by construction)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny, random_dictionaries

from circuits.attribution import Contrast, attribute
from circuits.attribution.patching import attribution_patching, integrated_gradients
from circuits.errors import CircuitsError
from circuits.graph import Node
from circuits.interventions import (
    Ablation,
    Edit,
    circuit_masks,
    faithfulness,
    hold_inactive,
    intervene,
    logit_diff_metric,
    mean_ablation,
    run_edited,
)
from circuits.pruning import prune
from circuits.replacement import AttributionError, ReplacementModel

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Anna gave a drink to"


def test_empty_intervention_reproduces_clean_logits(rm64):
    cache = rm64.run(CLEAN)
    for frozen in (False, True):
        for direct in (False, True):
            logits, _, codes = run_edited(rm64, cache, [], frozen=frozen, direct=direct)
            assert (logits - cache.logits).abs().max() < 1e-10
            assert all(torch.equal(codes[k], cache.codes[k]) for k in codes)


def test_zeroing_a_feature_moves_logits_and_downstream_features(rm64):
    cache = rm64.run(CLEAN)
    metric = logit_diff_metric(rm64.model, " Mary", " John")
    p, i = (int(v[0]) for v in torch.nonzero(cache.codes["attn_sae_L0"][4:], as_tuple=True))
    node = Node("attn_feature", 0, p + 4, i)
    live = intervene(rm64, cache, [Edit.zero(node)], metric=metric)
    assert live.codes["attn_sae_L0"][node.pos, node.index] == 0
    assert live.logit_change.abs().max() > 1e-6 and live.metric != live.clean_metric
    changed = live.feature_changes(cache)
    assert changed and all(n.order > node.order or n == node for n, _, _ in changed)
    frozen = intervene(rm64, cache, [Edit.zero(node)], frozen=True, metric=metric)
    assert frozen.metric != live.metric  # patterns and LN scales respond only in the live run
    setv = intervene(rm64, cache, [Edit(node, "set", 3.0)])
    assert setv.codes["attn_sae_L0"][node.pos, node.index] == 3.0
    with pytest.raises(CircuitsError, match="outside"):
        intervene(rm64, cache, [Edit(Node("attn_feature", 0, 99, 0), "set", 1.0)])


def test_faithfulness_of_full_and_empty_circuits(rm64):
    cache = rm64.run(CLEAN)
    metric = logit_diff_metric(rm64.model, " Mary", " John")
    g = attribute(rm64, CLEAN, Contrast(" Mary", " John"), cache=cache)
    tokens = rm64.model.to_tokens([CLEAN, CORRUPT])
    for ablation in (Ablation("zero"), mean_ablation(rm64, [tokens])):
        full = faithfulness(rm64, cache, g, metric, ablation, convention="held-inactive")
        assert full.ablation == ablation.mode and abs(full.score - 1.0) < 1e-9
        empty = faithfulness(rm64, cache, [], metric, ablation, convention="held-inactive")
        assert empty.n_features == 0 and empty.circuit == empty.empty  # m(∅) is the empty circuit's own metric
        pruned = faithfulness(rm64, cache, prune(g, 0.5, 0.9).graph, metric, ablation, convention="held-inactive")
        assert pruned.n_features < full.n_features and pruned.empty == full.empty
        # the score is the stated ratio of three independently measured metrics (not a tautology of the code)
        masks = circuit_masks(rm64, cache, prune(g, 0.5, 0.9).graph.nodes)
        held = hold_inactive(ablation, cache)
        m_c = float(metric(run_edited(rm64, cache, keep=masks, ablation=held)[0]))
        assert pruned.circuit == pytest.approx(m_c, abs=1e-9)
        assert pruned.score == pytest.approx((m_c - empty.empty) / (float(metric(cache.logits)) - empty.empty))
        assert full.empty != float(metric(cache.logits))  # the ablation changes the metric: the ratio is defined


def _linear_model(tmp_path):
    """Attention-only, no LayerNorm, W_Q = W_K = 0 (uniform causal attention), ReLU attention SAEs whose features
    are always on: the metric is a linear function of every node, so patching effects are exactly linear."""
    model = build_tiny(tmp_path, dtype=torch.float64, attn_only=True, normalization_type=None)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.zero_()
            block.attn.W_K.zero_()
    dicts = random_dictionaries(model, kinds=("attention_sae",), activation="relu")
    with torch.no_grad():
        for d in dicts:
            d.b_enc.fill_(50.0)
    return ReplacementModel(model, dicts)


def test_h_attribution_patching_equals_exact_effect_on_a_linear_model(tmp_path):
    rm = _linear_model(tmp_path)
    clean, corrupt = rm.run(CLEAN), rm.run(CORRUPT)
    assert all(bool((clean.pre_activations[k] > 0).all()) for k in clean.codes)  # every feature on: linear
    metric = logit_diff_metric(rm.model, " Mary", " John")
    atp = attribution_patching(rm, clean, corrupt, metric)
    ig = integrated_gradients(rm, clean, corrupt, metric, steps=3)
    assert atp.nodes == ig.nodes and len(atp.nodes) > 50
    base = float(metric(clean.logits))
    gen = torch.Generator().manual_seed(0)
    picks = torch.randperm(len(atp.nodes), generator=gen)[:25].tolist()
    picks += [k for k, n in enumerate(atp.nodes) if n.kind == "attn_error"][:4]
    for k in picks:
        node = atp.nodes[k]
        name = f"attn_sae_L{node.layer}"
        codes, err = clean.codes[name].clone(), clean.errors[name].clone()
        if node.kind == "attn_feature":
            codes[node.pos, node.index] = corrupt.codes[name][node.pos, node.index]
        else:
            err[node.pos] = corrupt.errors[name][node.pos]
        with torch.no_grad():
            exact = float(metric(run_edited(rm, clean, site_values={name: (codes, err)})[0])) - base
        assert abs(float(atp.effects[k]) - exact) < 1e-8 * max(1.0, abs(exact)), node
        assert abs(float(ig.effects[k]) - exact) < 1e-8 * max(1.0, abs(exact)), node


def test_patching_needs_aligned_prompts(rm64):
    metric = logit_diff_metric(rm64.model, " Mary", " John")
    with pytest.raises(AttributionError, match="same number of tokens"):
        attribution_patching(rm64, CLEAN, "When Mary went to the store", metric)
    effects = attribution_patching(rm64, CLEAN, CORRUPT, metric)
    assert effects.metric_clean != effects.metric_corrupted and len(effects.top(5)) == 5


def test_graph_metric_follows_the_graph_target(rm64):
    from circuits.attribution import FeatureTarget, Logit
    from circuits.interventions import graph_metric

    cache = rm64.run(CLEAN)
    g = attribute(rm64, CLEAN, Contrast(" Mary", " John"), cache=cache)
    metric, name = graph_metric(g)
    mary, john = g.metadata["contrast"]
    assert float(metric(cache.logits)) == float(cache.logits[-1, mary] - cache.logits[-1, john]) and "Mary" in name
    logit = attribute(rm64, CLEAN, Logit((" the",)), cache=cache)
    assert float(graph_metric(logit)[0](cache.logits)) == float(logit.pre_activations[-1])
    feature = next(n for n in g.nodes if n.kind == "mlp_feature")
    assert graph_metric(attribute(rm64, CLEAN, FeatureTarget(feature), cache=cache)) is None


def test_standard_mean_ablation_moves_inactive_features_and_held_inactive_does_not(rm64):
    """Standard mean ablation (the field's convention, the default) sets every feature outside the circuit to its
    mean, inactive ones included, so even the full graph need not score 1; the held-inactive variant keeps features
    silent on the prompt at 0 (the full graph scores exactly 1). Each result names its convention."""
    cache = rm64.run(CLEAN)
    metric = logit_diff_metric(rm64.model, " Mary", " John")
    g = attribute(rm64, CLEAN, Contrast(" Mary", " John"), cache=cache)
    mean = mean_ablation(rm64, [rm64.model.to_tokens([CLEAN, CORRUPT])])
    std = faithfulness(rm64, cache, g, metric, mean)
    held = faithfulness(rm64, cache, g, metric, mean, convention="held-inactive")
    assert (std.convention, std.label) == ("standard", "standard mean ablation")
    assert held.label == "held-inactive mean ablation (variant)" and abs(held.score - 1.0) < 1e-9
    assert abs(std.score - 1.0) > 1e-6 and std.empty != held.empty  # the inactive features' means reach the metric
    # the stated definition, measured independently: ablate with the plain means (no hold_inactive)
    masks = circuit_masks(rm64, cache, g.nodes)
    m_c = float(metric(run_edited(rm64, cache, keep=masks, ablation=mean)[0]))
    assert std.circuit == pytest.approx(m_c, abs=1e-9)
    assert faithfulness(rm64, cache, g, metric, Ablation("zero")).label == "zero ablation"
    with pytest.raises(CircuitsError, match="convention 'plain' is not one of standard, held-inactive"):
        faithfulness(rm64, cache, g, metric, mean, convention="plain")


def test_random_baseline_draws_like_the_circuit(rm64, monkeypatch):
    """The random baseline keeps as many active features per dictionary and position as the circuit (none of the
    circuit's, where enough are left), keeps the circuit's error nodes, and is seeded."""
    from circuits.interventions import random_baseline

    cache = rm64.run(CLEAN)
    metric = logit_diff_metric(rm64.model, " Mary", " John")
    g = attribute(rm64, CLEAN, Contrast(" Mary", " John"), cache=cache)
    pruned = prune(g, 0.6, 0.9).graph
    mean = mean_ablation(rm64, [rm64.model.to_tokens([CLEAN, CORRUPT])])
    feats = [n for n in pruned.nodes if n.kind.endswith("_feature")]
    drawn = []
    import circuits.interventions as iv

    real = iv._score

    def spy(rm, cache_, masks, *args, **kw):
        drawn.append(masks)
        return real(rm, cache_, masks, *args, **kw)

    monkeypatch.setattr(iv, "_score", spy)
    base = random_baseline(rm64, cache, pruned, metric, mean, draws=3, seed=0)
    monkeypatch.undo()
    assert base.n_features == len(feats) and len(drawn) == 4 and len(set(base.scores)) > 1
    want_f, want_e = circuit_masks(rm64, cache, pruned.nodes)
    # the last score is "errors alone": the circuit's error nodes and no feature, equal to a circuit of just those
    fbare, ebare = drawn.pop()
    assert not any(bool(m.any()) for m in fbare.values())
    assert all(torch.equal(ebare[k], want_e[k]) for k in ebare)
    errors = [n for n in pruned.nodes if n.kind.endswith("_error")]
    assert base.errors_only == pytest.approx(faithfulness(rm64, cache, errors, metric, mean).score, abs=1e-6)
    for fmask, emask in drawn:
        assert all(torch.equal(emask[k], want_e[k]) for k in emask)  # the circuit's error nodes
        for k, m in fmask.items():
            assert int(m.sum()) == int(want_f[k].sum())  # as many per dictionary
            assert bool((cache.codes[k][m] != 0).all())  # active on the prompt
            assert not bool((m & want_f[k]).any())  # none of the circuit's
    assert base.n_elsewhere >= 0
    assert base.scores == random_baseline(rm64, cache, pruned, metric, mean, draws=3, seed=0).scores
    assert base.scores != random_baseline(rm64, cache, pruned, metric, mean, draws=3, seed=1).scores
    with pytest.raises(CircuitsError, match="draws must be at least 1"):
        random_baseline(rm64, cache, pruned, metric, mean, draws=0)
