"""Skip transcoders and cross-layer transcoders: the engine's invariants (a)–(d) on tiny random float64 models.

(a) the exact splice: spliced logits = clean logits; reconstruction + error = MLP output (skip term / all earlier
    CLT layers' decoders included); the frozen forward equals the clean one;
(b) incoming edges + constant = pre-activation for every feature and logit target;
(c) doubling a source in the frozen direct model moves every target by its edge weight (tokens, attention and
    MLP features, CLT features written into several later layers, error nodes);
(d) analytic edges = autograd edges (and constants).
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny, random_dictionaries
from test_attribution import assert_close

from circuits.attribution import Contrast, Logit, attribute
from circuits.dictionaries.base import DictionaryConfig, make_dictionary
from circuits.dictionaries.clt import CLTConfig, CLTLayer, CrossLayerTranscoder
from circuits.graph import Node
from circuits.interventions import Edit, intervene, run_edited
from circuits.replacement import AttributionError, ReplacementModel, splice_hooks

PROMPT = "When Mary and John went to the store, John gave a drink to"


def skip_transcoders(model, d_sae=48, k=6, seed=1, layers=None):
    torch.manual_seed(seed)
    cfg = model.cfg
    out = []
    for layer in range(cfg.n_layers) if layers is None else layers:
        c = DictionaryConfig("transcoder", layer, cfg.d_model, d_sae, cfg.d_model, activation="topk", k=k,
                             context_size=cfg.n_ctx, skip=True)
        d = make_dictionary(c, dtype=cfg.dtype)
        with torch.no_grad():
            for p in d.parameters():
                p.normal_(0, 0.3)
        out.append(d.eval())
    return out


def random_clt(model, d_sae=48, k=6, seed=2, activation="topk"):
    torch.manual_seed(seed)
    cfg = model.cfg
    clt = CrossLayerTranscoder(CLTConfig(cfg.n_layers, cfg.d_model, d_sae, activation=activation,
                                         k=k if activation == "topk" else None, context_size=cfg.n_ctx),
                               dtype=cfg.dtype)
    with torch.no_grad():
        for p in clt.parameters():
            p.normal_(0, 0.3)
        if activation == "jumprelu":
            for layer in clt.layers:
                layer.activation.threshold.uniform_(0.0, 0.5)
    return clt.eval()


@pytest.fixture(scope="module")
def model3(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("skipclt"), n_layers=3, dtype=torch.float64)


@pytest.fixture(scope="module")
def rm_skip(model3):
    """Skip transcoders on layers 0 and 2, a plain transcoder on layer 1, attention SAEs everywhere."""
    attn = random_dictionaries(model3, kinds=("attention_sae",))
    plain = random_dictionaries(model3, kinds=("transcoder",), layers=[1], seed=5)
    return ReplacementModel(model3, attn + plain + skip_transcoders(model3, layers=[0, 2]))


@pytest.fixture(scope="module")
def rm_clt(model3):
    attn = random_dictionaries(model3, kinds=("attention_sae",))
    from circuits.dictionaries.dictset import DictionarySet

    return ReplacementModel(model3, DictionarySet("custom", {"a": random_clt(model3), **{
        d.cfg.name: d for d in attn}}))


@pytest.fixture(params=["skip", "clt"])
def rm(request, rm_skip, rm_clt):
    return rm_skip if request.param == "skip" else rm_clt


def test_a_exact_splice_and_reconstruction_plus_error(rm):
    cache = rm.run(PROMPT)
    tokens = cache.tokens[None]
    with torch.no_grad():
        clean_logits, clean = rm.model.run_with_cache(tokens)
        with rm.frozen(cache):
            frozen = rm.model(tokens)[0]
    assert (cache.logits - clean_logits[0]).abs().max() <= 1e-10
    assert (frozen - clean_logits[0]).abs().max() <= 1e-10
    # reconstruction + error = MLP out, with the reconstruction computed here from the definitions
    codes = {}
    for layer in range(rm.n_layers):
        tc = rm.transcoders[layer]
        x = clean[f"blocks.{layer}.ln2.hook_normalized"][0]
        with torch.no_grad():
            codes[layer] = tc.encode(x)
        assert_close(codes[layer], cache.codes[tc.cfg.name], rtol=0, atol=1e-12, what=f"codes {layer}")
        if isinstance(tc, CLTLayer):
            recon = sum(codes[lo] @ rm.transcoders[lo].W_dec_out[:, layer - lo] for lo in range(layer + 1)) \
                + tc.b_dec
        else:
            recon = codes[layer] @ tc.W_dec + tc.b_dec + (x @ tc.W_skip.T if tc.cfg.skip else 0)
        assert_close(recon + cache.errors[tc.cfg.name], clean[f"blocks.{layer}.hook_mlp_out"][0], rtol=0,
                     atol=1e-12, what=f"reconstruction + error, layer {layer}")
        assert cache.error_writes[f"mlp_{layer}"] is cache.errors[tc.cfg.name]


def test_batched_codes_and_errors_equal_one_prompt_runs(rm):
    """`codes_and_errors` on a batch (what a study's mean ablation runs) gives each row exactly what `run` gives
    that prompt alone: skip terms and a CLT's upstream codes stay per row."""
    g = torch.Generator().manual_seed(3)
    n = rm.run(PROMPT).tokens.shape[0]
    tokens = torch.randint(1, rm.model.cfg.d_vocab, (3, n), generator=g)
    codes, errors = rm.codes_and_errors(tokens)
    assert set(codes) == {d.cfg.name for d in rm.dictionaries}
    for i in range(3):
        one = rm.run(tokens[i])
        for name in codes:
            assert_close(codes[name][i], one.codes[name], rtol=0, atol=1e-12, what=f"codes {name} row {i}")
            assert_close(errors[name][i], one.errors[name], rtol=0, atol=1e-12, what=f"errors {name} row {i}")
    with pytest.raises(AttributionError, match="tokens \\[batch, pos\\]"):
        rm.codes_and_errors(tokens[0])


def test_b_incoming_edges_plus_constant_equal_pre_activation(rm):
    for target in (Contrast(" Mary", " John"), Logit((" Mary", " the"))):
        g = attribute(rm, PROMPT, target, method="analytic")
        mask = g.explained_mask()
        assert mask.sum() > 20
        assert_close((g.incoming_sum() + g.constants)[mask], g.pre_activations[mask], rtol=1e-9, atol=1e-11,
                     what="edges + constant")
        assert {"token", "attn_feature", "mlp_feature", "attn_error", "mlp_error"} <= {n.kind for n in g.nodes}


def test_d_analytic_edges_equal_autograd_edges(rm):
    ga = attribute(rm, PROMPT, Contrast(" Mary", " John"), method="analytic")
    gg = attribute(rm, PROMPT, Contrast(" Mary", " John"), method="autograd")
    assert ga.nodes == gg.nodes
    assert_close(gg.adjacency(), ga.adjacency(), rtol=1e-9, atol=1e-12, what="analytic vs autograd edges")
    mask = ga.explained_mask()
    assert_close(gg.constants[mask], ga.constants[mask], rtol=1e-9, atol=1e-12, what="constants")
    assert_close((gg.incoming_sum() + gg.constants)[mask], gg.pre_activations[mask], rtol=1e-9, atol=1e-11,
                 what="autograd edges + constant")


def _doubling_matches_edges(rm, g, cache, row):
    a = g.adjacency()
    node = g.nodes[row]
    logits, pres, _ = run_edited(rm, cache, [Edit(node, "scale", 2.0)], frozen=True, direct=True)
    mary, john = g.metadata["contrast"]
    got, want = [], []
    for t, tnode in enumerate(g.nodes):
        if tnode.kind.endswith("_feature"):
            name = ("attn_sae_L" if tnode.kind == "attn_feature" else "transcoder_L") + str(tnode.layer)
            got.append(pres[name][tnode.pos, tnode.index] - g.pre_activations[t])
        elif tnode.kind == "logit_diff":
            got.append((logits[-1, mary] - logits[-1, john]) - g.pre_activations[t])
        else:
            continue
        want.append(a[t, row])
    assert_close(torch.stack(got).detach(), torch.stack(want), rtol=1e-6, atol=1e-9, what=f"doubling {node.short()}")


def test_c_doubling_a_source_moves_each_target_by_its_edge_weight(rm):
    cache = rm.run(PROMPT)
    g = attribute(rm, PROMPT, Contrast(" Mary", " John"), method="analytic", cache=cache)
    gen = torch.Generator().manual_seed(0)
    sources = [i for i, n in enumerate(g.nodes) if n.kind != "logit_diff"]
    picks = [sources[int(j)] for j in torch.randint(len(sources), (5,), generator=gen)]
    picks.append(next(i for i, n in enumerate(g.nodes) if n.kind == "token" and n.pos == 3))
    picks += [next(i for i, n in enumerate(g.nodes) if n.kind == "mlp_error" and n.layer == 0)]
    picks += [next(i for i, n in enumerate(g.nodes) if n.kind == "mlp_feature" and n.layer == 0 and n.pos == p)
              for p in (2, cache.n_pos - 1)]  # layer-0 features: through skip L2 / CLT decoders into L1 and L2
    picks.append(next(i for i, n in enumerate(g.nodes) if n.kind == "attn_feature" and n.layer == 0))
    for row in picks:
        _doubling_matches_edges(rm, g, cache, row)


def test_skip_path_and_clt_decoders_carry_edges(rm_skip, rm_clt):
    """The pass-through channel and the later decoders are really used: removing them changes edges."""
    cache = rm_clt.run(PROMPT)
    g = attribute(rm_clt, PROMPT, Contrast(" Mary", " John"), cache=cache)
    f0 = next(i for i, n in enumerate(g.nodes) if n.kind == "mlp_feature" and n.layer == 0 and n.pos == cache.n_pos - 1)
    logit = g.n_nodes - 1
    clt = rm_clt.transcoders[0].clt
    saved = [layer.W_dec_out.detach().clone() for layer in clt.layers]
    try:
        with torch.no_grad():
            for layer in clt.layers:
                layer.W_dec_out[:, 1:] = 0  # a CLT reduced to its own-layer decoders
        g0 = attribute(rm_clt, cache.tokens, Contrast(" Mary", " John"))
    finally:
        with torch.no_grad():
            for layer, w in zip(clt.layers, saved, strict=True):
                layer.W_dec_out.copy_(w)
    assert abs(float(g.adjacency()[logit, f0] - g0.adjacency()[logit, f0])) > 1e-6

    cache = rm_skip.run(PROMPT)
    g = attribute(rm_skip, PROMPT, Contrast(" Mary", " John"), cache=cache)
    tok = next(i for i, n in enumerate(g.nodes) if n.kind == "token" and n.pos == cache.n_pos - 1)
    direct = g.adjacency()[logit, tok]
    tc = rm_skip.transcoders[2]
    w = tc.W_skip.detach().clone()
    with torch.no_grad():
        tc.W_skip.zero_()
    try:
        cache0 = rm_skip.run(PROMPT)
        g0 = attribute(rm_skip, PROMPT, Contrast(" Mary", " John"), cache=cache0)
    finally:
        with torch.no_grad():
            tc.W_skip.copy_(w)
    assert abs(float(direct - g0.adjacency()[logit, tok])) > 1e-6


def test_setting_a_clt_feature_changes_all_its_decoder_writes(rm_clt):
    cache = rm_clt.run(PROMPT)
    p, i = (int(v[0]) for v in torch.nonzero(cache.codes["transcoder_L0"], as_tuple=True))
    node = Node("mlp_feature", 0, p, i)
    res = intervene(rm_clt, cache, [Edit(node, "set", 0.0)], frozen=True, direct=True)
    _, clean = rm_clt.model.run_with_cache(cache.tokens[None])
    outputs: dict = {}
    with torch.no_grad():
        run_edited(rm_clt, cache, [Edit(node, "set", 0.0)], frozen=True, direct=True, outputs=outputs)
    a = float(cache.codes["transcoder_L0"][p, i])
    clt = rm_clt.transcoders[0].clt
    for layer in range(3):  # every MLP output of the CLT moved by exactly −a · W_dec_0[i, layer], at position p only
        moved = outputs[f"transcoder_L{layer}"] - clean[f"blocks.{layer}.hook_mlp_out"][0]
        want = torch.zeros_like(moved)
        want[p] = -a * clt[0].W_dec_out[i, layer].detach()
        assert_close(moved, want, rtol=1e-9, atol=1e-12, what=f"layer {layer}")
    assert res.codes["transcoder_L0"][p, i] == 0


def test_a_clt_is_spliced_whole(rm_clt):
    with pytest.raises(AttributionError, match="spliced whole"):
        splice_hooks([rm_clt.transcoders[1]])
    with pytest.raises(NotImplementedError, match="earlier layers"):
        rm_clt.transcoders[1].decode(torch.zeros(1, 48, dtype=torch.float64))
    from circuits.dictionaries.dictset import DictionarySet

    with pytest.raises(ValueError, match="whole"):
        DictionarySet("custom", {"t": rm_clt.transcoders[1]})


def test_clt_graph_downstream_pruning_scores_exports_faithfulness_dashboards(rm_clt, tmp_path):
    """A CLT graph goes through pruning, scores, exports, faithfulness and the dashboards' logit effect."""
    import json

    from circuits import export
    from circuits.dashboards import logit_effects, write_directions
    from circuits.interventions import Ablation, faithfulness, logit_diff_metric, mean_ablation
    from circuits.pruning import influence, prune

    cache = rm_clt.run(PROMPT)
    g = attribute(rm_clt, PROMPT, Contrast(" Mary", " John"), cache=cache)
    # CLT features of layer 0 have edges into targets at every later layer (their decoders reach MLP 1 and 2)
    rows0 = [i for i, n in enumerate(g.nodes) if n.kind == "mlp_feature" and n.layer == 0]
    tgt, src = g.edge_index
    reached = {g.nodes[int(t)].layer for t, s in zip(tgt, src, strict=True) if int(s) in set(rows0)}
    assert {1, 2, 3} <= reached  # attention 1/2, MLP 1/2 features and the logit (layer 3)
    assert torch.isfinite(influence(g)).all()
    pruned = prune(g, 0.6, 0.9).graph
    assert 0 < pruned.n_nodes < g.n_nodes
    back = export.from_dict(json.loads(json.dumps(export.to_dict(pruned))))
    assert back.nodes == pruned.nodes
    ct = export.to_circuit_tracer(pruned)
    assert any(n["feature_type"] == "cross layer transcoder" for n in ct["nodes"])
    metric = logit_diff_metric(rm_clt.model, " Mary", " John")
    tokens = rm_clt.model.to_tokens([PROMPT])
    for ablation in (Ablation("zero"), mean_ablation(rm_clt, [tokens])):
        assert abs(faithfulness(rm_clt, cache, g, metric, ablation, convention="held-inactive").score - 1.0) < 1e-9
    tc = rm_clt.transcoders[0]
    assert_close(write_directions(rm_clt, tc), tc.W_dec_out.sum(1), rtol=0, atol=0, what="summed decoders")
    top, _ = logit_effects(rm_clt, tc, n=3)
    assert len(top) == tc.d_sae


def test_autograd_with_attention_channels_and_skip(model3):
    """Attention layers without an SAE (linear channels) together with skip transcoders: autograd edges still sum
    to the pre-activations and doubling a source moves targets by its edge weights."""
    attn = random_dictionaries(model3, kinds=("attention_sae",), layers=[1])
    rm = ReplacementModel(model3, attn + skip_transcoders(model3))
    cache = rm.run(PROMPT)
    g = attribute(rm, PROMPT, Contrast(" Mary", " John"), cache=cache, method="autograd")
    assert g.metadata["method"] == "autograd"
    mask = g.explained_mask()
    assert_close((g.incoming_sum() + g.constants)[mask], g.pre_activations[mask], rtol=1e-9, atol=1e-11,
                 what="edges + constant")
    rows = [next(i for i, n in enumerate(g.nodes) if n.kind == "token" and n.pos == 2),
            next(i for i, n in enumerate(g.nodes) if n.kind == "mlp_feature" and n.layer == 0)]
    for row in rows:
        _doubling_matches_edges(rm, g, cache, row)
