"""The attribution engine's invariants, on tiny random float64 models (tests (a)–(e), (g), (h) of issue 4)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from conftest import build_tiny, random_dictionaries

from circuits.attribution import Contrast, FeatureTarget, Logit, TopLogits, attribute
from circuits.attribution.autograd import autograd_edges
from circuits.attribution.sources import collect_sources
from circuits.attribution.targets import resolve_logit_targets
from circuits.graph import Graph, Node
from circuits.interventions import Edit, run_edited
from circuits.replacement import AttributionError, ReplacementModel

PROMPT = "When Mary and John went to the store, John gave a drink to"


def assert_close(actual, expected, rtol=1e-6, atol=1e-10, what=""):
    diff = (actual - expected).abs()
    ok = diff <= atol + rtol * expected.abs()
    assert bool(ok.all()), (f"{what}: max abs diff {diff.max().item():.3e}, mean {diff.mean().item():.3e}, "
                            f"{int((~ok).sum())} of {ok.numel()} outside tolerance")


def test_a_spliced_logits_equal_clean_and_frozen_forward_equals_clean(rm64):
    cache = rm64.run(PROMPT)
    tokens = cache.tokens[None]
    with torch.no_grad():
        clean = rm64.model(tokens)[0]
        with rm64.frozen(cache):
            frozen = rm64.model(tokens)[0]
    assert (cache.logits - clean).abs().max() <= 1e-10
    assert (frozen - clean).abs().max() <= 1e-10
    assert cache.codes["attn_sae_L1"].shape == (cache.n_pos, 48)


def test_a_float32_organism_sized_splice_is_exact_to_1e4(tmp_path):
    model = build_tiny(tmp_path, n_layers=3, d_model=64, n_heads=4, d_mlp=128)
    rm = ReplacementModel(model, random_dictionaries(model, d_sae=96, k=8))
    cache = rm.run(PROMPT)
    with torch.no_grad():
        clean = model(cache.tokens[None])[0]
    assert (cache.logits - clean).abs().max().item() <= 1e-4


@pytest.mark.parametrize("target", [Contrast(" Mary", " John"), TopLogits(0.5, 3), Logit((" Mary", " the"))])
def test_b_incoming_edges_plus_constant_equal_pre_activation(rm64, target):
    g = attribute(rm64, PROMPT, target, method="analytic")
    mask = g.explained_mask()
    assert mask.sum() > 20 and g.n_edges > 1000
    assert_close((g.incoming_sum() + g.constants)[mask], g.pre_activations[mask], what="edges + constant")
    kinds = {n.kind for n in g.nodes}
    assert {"token", "attn_feature", "mlp_feature", "attn_error", "mlp_error"} <= kinds
    # the pre-activations are the real ones of the unfrozen forward pass
    cache = rm64.run(PROMPT)
    for row, node in enumerate(g.nodes):
        if node.kind == "mlp_feature":
            assert g.pre_activations[row] == cache.pre_activations[f"transcoder_L{node.layer}"][node.pos, node.index]


def test_b_demeaned_logits(rm64):
    g = attribute(rm64, PROMPT, Logit((" Mary",)), method="analytic", demean_logits=True)
    cache = rm64.run(PROMPT)
    row = len(g.nodes) - 1
    mary = rm64.model.to_single_token("Mary")
    assert abs(float(g.pre_activations[row]) - float(cache.logits[-1, mary] - cache.logits[-1].mean())) < 1e-10
    assert_close(g.incoming_sum()[row] + g.constants[row], g.pre_activations[row], what="demeaned logit")


def test_c_doubling_a_source_moves_each_target_by_its_edge_weight(rm64):
    cache = rm64.run(PROMPT)
    g = attribute(rm64, PROMPT, Contrast(" Mary", " John"), method="analytic", cache=cache)
    a = g.adjacency()
    gen = torch.Generator().manual_seed(0)
    sources = [i for i, n in enumerate(g.nodes) if n.kind != "logit_diff"]
    picks = [sources[int(j)] for j in torch.randint(len(sources), (6,), generator=gen)]
    picks.append(next(i for i, n in enumerate(g.nodes) if n.kind == "token" and n.pos == 3))
    picks.append(next(i for i, n in enumerate(g.nodes) if n.kind == "attn_error" and n.layer == 0))
    mary, john = g.metadata["contrast"]
    for row in picks:
        node = g.nodes[row]
        logits, pres, _ = run_edited(rm64, cache, [Edit(node, "scale", 2.0)], frozen=True, direct=True)
        moved = []
        for t, tnode in enumerate(g.nodes):
            if tnode.kind.endswith("_feature"):
                name = ("attn_sae_L" if tnode.kind == "attn_feature" else "transcoder_L") + str(tnode.layer)
                moved.append((t, pres[name][tnode.pos, tnode.index] - g.pre_activations[t]))
            elif tnode.kind == "logit_diff":
                moved.append((t, (logits[-1, mary] - logits[-1, john]) - g.pre_activations[t]))
        got = torch.stack([m for _, m in moved])
        want = a[[t for t, _ in moved], row]
        assert_close(got.detach(), want, rtol=1e-6, atol=1e-9, what=f"doubling {node.short()}")


def test_d_analytic_edges_equal_autograd_edges(rm64):
    ga = attribute(rm64, PROMPT, Contrast(" Mary", " John"), method="analytic")
    gg = attribute(rm64, PROMPT, Contrast(" Mary", " John"), method="autograd")
    assert ga.nodes == gg.nodes
    assert_close(gg.adjacency(), ga.adjacency(), rtol=1e-9, atol=1e-12, what="analytic vs autograd edges")
    mask = ga.explained_mask()
    assert_close(gg.constants[mask], ga.constants[mask], rtol=1e-9, atol=1e-12, what="constants")


def test_e_per_head_parts_equal_edges_through_that_head_alone(rm64):
    """The analytic per-head terms equal autograd edges in a frozen model whose other heads' patterns are zero."""
    cache = rm64.run(PROMPT)
    g = attribute(rm64, PROMPT, Contrast(" Mary", " John"), method="analytic", cache=cache)
    attn_rows = torch.tensor([g.nodes[t].kind == "attn_feature" for t in g.edge_index[0].tolist()])
    assert attn_rows.any() and g.head_weights[~attn_rows].abs().max() == 0
    assert_close(g.head_weights[attn_rows].sum(1), g.edge_weight[attn_rows], what="per-head sum")
    src = collect_sources(rm64, cache)
    reads = resolve_logit_targets(rm64.model, cache.logits[-1], Contrast(" Mary", " John"), False, cache.n_pos - 1)
    for head in range(rm64.cfg.n_heads):
        only = [p.clone() for p in cache.patterns]
        for p in only:
            p[torch.arange(p.shape[0]) != head] = 0
        edges = autograd_edges(rm64, dataclasses.replace(cache, patterns=only), src, reads)
        dense = torch.zeros(g.n_nodes, g.n_nodes, dtype=torch.float64)
        dense[edges.target, edges.source] = edges.weight
        per_head = torch.zeros_like(dense)
        per_head[g.edge_index[0][attn_rows], g.edge_index[1][attn_rows]] = g.head_weights[attn_rows, head]
        rows = torch.tensor([n.kind == "attn_feature" for n in g.nodes])
        assert_close(dense[rows], per_head[rows], rtol=1e-9, atol=1e-12, what=f"head {head}")


def test_g_tied_vocab_and_model_width_and_bos_zero(tmp_path):
    """d_vocab == d_model must not confuse orientation; BOS is token id 0 in the organism's tokenizer."""
    model = build_tiny(tmp_path, d_model=32, dtype=torch.float64, tokenizer=False, d_vocab=32, d_vocab_out=32)
    rm = ReplacementModel(model, random_dictionaries(model))
    tokens = torch.tensor([0, 5, 9, 5, 17, 0, 3])
    g = attribute(rm, tokens, Logit((9, 4)), method="analytic")
    mask = g.explained_mask()
    assert_close((g.incoming_sum() + g.constants)[mask], g.pre_activations[mask], what="d_vocab == d_model")
    gg = attribute(rm, tokens, Logit((9, 4)), method="autograd")
    assert_close(gg.adjacency(), g.adjacency(), rtol=1e-9, atol=1e-12, what="tied shapes autograd")
    assert [n.index for n in g.nodes if n.kind == "token"] == tokens.tolist()


def test_autograd_handles_layers_without_dictionaries(tiny64):
    model, dicts = tiny64
    partial = [d for d in dicts if d.cfg.name in ("transcoder_L1", "attn_sae_L1")]
    rm = ReplacementModel(model, partial)
    with pytest.raises(AttributionError, match="attention SAE on every layer"):
        attribute(rm, PROMPT, Contrast(" Mary", " John"), method="analytic")
    g = attribute(rm, PROMPT, Contrast(" Mary", " John"), method="autograd")  # auto picks "reverse" (test_reverse)
    assert g.metadata["method"] == "autograd"
    mask = g.explained_mask()
    assert_close((g.incoming_sum() + g.constants)[mask], g.pre_activations[mask], what="partial set")
    assert any(n.kind == "mlp_error" and n.layer == 0 for n in g.nodes)  # MLP 0 has no transcoder: an error node
    assert not any(n.kind == "attn_error" and n.layer == 0 for n in g.nodes)  # attention 0 is a channel
    # tokens reach layer-1 attention features at other positions through attention 0's channel and directly
    cache = rm.run(PROMPT)
    node = next(n for n in g.nodes if n.kind == "attn_feature")
    logits, pres, _ = run_edited(rm, cache, [Edit(g.nodes[2], "scale", 2.0)], frozen=True, direct=True)
    moved = pres["attn_sae_L1"][node.pos, node.index] - g.pre_activations[g.row(node)]
    assert abs(float(moved) - float(g.adjacency()[g.row(node), 2])) < 1e-9


def test_feature_target_graph_is_its_upstream(rm64):
    full = attribute(rm64, PROMPT, Contrast(" Mary", " John"))
    feature = next(n for n in full.nodes if n.kind == "mlp_feature" and n.layer == 1)
    g = attribute(rm64, PROMPT, FeatureTarget(feature))
    assert g.targets == [feature]
    assert all(n.order <= feature.order and n.pos <= feature.pos for n in g.nodes)
    row = g.row(feature)
    assert_close(g.incoming_sum()[row] + g.constants[row], g.pre_activations[row], what="feature target")


def test_edge_tolerance_keeps_identity_through_dropped(rm64):
    g = attribute(rm64, PROMPT, Contrast(" Mary", " John"), edge_tolerance=0.05)
    full = attribute(rm64, PROMPT, Contrast(" Mary", " John"))
    assert g.n_edges < 0.9 * full.n_edges and g.dropped.abs().sum() > 0
    mask = g.explained_mask()
    assert_close((g.incoming_sum() + g.dropped + g.constants)[mask], g.pre_activations[mask], what="tolerance")


def test_graph_json_round_trip(rm64):
    import json

    g = attribute(rm64, PROMPT, Contrast(" Mary", " John"))
    back = Graph.from_json(json.loads(json.dumps(g.to_json())))
    assert back.nodes == g.nodes and torch.equal(back.edge_weight, g.edge_weight)
    assert torch.equal(back.edge_index, g.edge_index) and torch.equal(back.head_weights, g.head_weights)
    assert torch.equal(back.constants, g.constants) and back.metadata == json.loads(json.dumps(g.metadata))
    assert back.to_networkx().number_of_edges() == g.n_edges


def test_bad_input_gives_clear_errors(rm64, tiny64):
    with pytest.raises(AttributionError, match="empty"):
        attribute(rm64, "   ")
    with pytest.raises(AttributionError, match="context"):
        attribute(rm64, " ".join(["Mary"] * 40))
    with pytest.raises(AttributionError, match=r"not a single token \(it splits into"):
        attribute(rm64, PROMPT, Logit(("Mary John",)))  # two known words: the split is the problem
    with pytest.raises(AttributionError, match="not in the model's vocabulary"):
        attribute(rm64, PROMPT, Logit(("Zorblaxian",)))  # an unknown word: the vocabulary is
    with pytest.raises(AttributionError, match="target token is empty"):
        attribute(rm64, PROMPT, Logit(("  ",)))
    with pytest.raises(AttributionError, match="same token"):
        attribute(rm64, PROMPT, Contrast(" Mary", "Mary"))
    cache = rm64.run(PROMPT)
    pos, index = (int(v[0]) for v in torch.nonzero(cache.codes["transcoder_L1"] == 0, as_tuple=True))
    with pytest.raises(AttributionError, match="not active"):
        attribute(rm64, PROMPT, FeatureTarget(Node("mlp_feature", 1, pos, index)))
    with pytest.raises(AttributionError, match="GiB"):
        attribute(rm64, PROMPT, memory_limit_bytes=1000)
    with pytest.raises(AttributionError, match="edge_tolerance"):  # checked while edges are stored
        attribute(rm64, PROMPT, edge_tolerance=0.01, memory_limit_bytes=20_000)
    with pytest.raises(AttributionError, match="edge_tolerance"):
        attribute(rm64, PROMPT, edge_tolerance=1.5)
    model, dicts = tiny64
    short = dataclasses.replace(dicts[0].cfg, context_size=8)
    from circuits.dictionaries.base import make_dictionary

    d = make_dictionary(short, dtype=torch.float64)
    d.load_state_dict(dicts[0].state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ReplacementModel(model, [d] + dicts[1:]).run(PROMPT)
    assert any("trained on contexts of 8" in str(w.message) for w in caught)
