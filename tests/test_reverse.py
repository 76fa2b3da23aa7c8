"""The reverse-sweep engine (issue 20): attention layers without an SAE as frozen linear channels, exact.

On tiny random float64 3-layer models with some attention layers replaced and some not (transcoders only; plain,
skip and cross-layer transcoders; an MLP without a transcoder; a skip channel below the lowest unreplaced layer):
(b) incoming edges + constant = pre-activation for every feature and logit target;
(c) doubling a source in the frozen direct model moves every target by its edge weight;
(d) reverse edges = autograd edges (and constants), and = analytic edges when every attention layer has an SAE;
plus: auto picks it, the batch size does not change the edges, edge_tolerance keeps the identity.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny, random_dictionaries
from test_attribution import assert_close
from test_skip_clt import _doubling_matches_edges, random_clt, skip_transcoders

from circuits.attribution import Contrast, Logit, attribute
from circuits.attribution.reverse import reverse_edges
from circuits.attribution.sources import collect_sources
from circuits.attribution.targets import resolve_logit_targets
from circuits.errors import AttributionError
from circuits.replacement import ReplacementModel

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def model3(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("reverse"), n_layers=3, dtype=torch.float64)


def _dictionaries(model, case: str):
    from circuits.dictionaries.dictset import DictionarySet

    attn = {layer: random_dictionaries(model, kinds=("attention_sae",), layers=[layer], seed=3 + layer)
            for layer in range(3)}
    if case == "transcoders only":
        return random_dictionaries(model, kinds=("transcoder",))
    if case == "attention 1 replaced":
        return random_dictionaries(model, kinds=("transcoder",)) + attn[1]
    if case == "skip, attention 1 replaced":
        return skip_transcoders(model) + attn[1]
    if case == "skip, attention 0 replaced":  # a skip channel below the lowest unreplaced attention layer
        return skip_transcoders(model) + attn[0]
    if case == "clt, attention 2 replaced":
        return DictionarySet("custom", {"clt": random_clt(model), **{d.cfg.name: d for d in attn[2]}})
    if case == "mlp 1 unreplaced, attention 0 replaced":
        return random_dictionaries(model, kinds=("transcoder",), layers=[0, 2]) + attn[0]
    raise ValueError(case)


CASES = ["transcoders only", "attention 1 replaced", "skip, attention 1 replaced", "skip, attention 0 replaced",
         "clt, attention 2 replaced", "mlp 1 unreplaced, attention 0 replaced"]


@pytest.fixture(scope="module", params=CASES)
def rm(request, model3):
    return ReplacementModel(model3, _dictionaries(model3, request.param))


def test_b_identity_and_auto_picks_reverse(rm):
    for target in (Contrast(" Mary", " John"), Logit((" Mary", " the"))):
        g = attribute(rm, PROMPT, target)
        assert g.metadata["method"] == "reverse"
        mask = g.explained_mask()
        assert mask.sum() > 20
        assert_close((g.incoming_sum() + g.constants)[mask], g.pre_activations[mask], rtol=1e-9, atol=1e-11,
                     what="edges + constant")
        assert g.head_weights.abs().max() == 0  # no per-head parts on this path


def test_d_reverse_equals_autograd(rm):
    gr = attribute(rm, PROMPT, Contrast(" Mary", " John"), method="reverse")
    gg = attribute(rm, PROMPT, Contrast(" Mary", " John"), method="autograd")
    assert gr.nodes == gg.nodes
    assert gr.n_edges >= gg.n_edges  # autograd drops exact zeros; the reverse engine keeps every reachable pair
    assert_close(gr.adjacency(), gg.adjacency(), rtol=1e-9, atol=1e-12, what="reverse vs autograd edges")
    mask = gr.explained_mask()
    assert_close(gr.constants[mask], gg.constants[mask], rtol=1e-9, atol=1e-12, what="constants")


def test_c_doubling_a_source_moves_each_target_by_its_edge_weight(rm):
    cache = rm.run(PROMPT)
    g = attribute(rm, PROMPT, Contrast(" Mary", " John"), cache=cache)
    gen = torch.Generator().manual_seed(0)
    sources = [i for i, n in enumerate(g.nodes) if n.kind != "logit_diff"]
    picks = [sources[int(j)] for j in torch.randint(len(sources), (4,), generator=gen)]
    picks.append(next(i for i, n in enumerate(g.nodes) if n.kind == "token" and n.pos == 2))  # via the channels
    picks.append(next(i for i, n in enumerate(g.nodes) if n.kind == "mlp_error" and n.layer == 0))
    picks.append(next(i for i, n in enumerate(g.nodes) if n.kind == "mlp_feature" and n.layer == 0))
    picks += [i for i, n in enumerate(g.nodes) if n.kind == "attn_feature"][:1]
    for row in picks:
        _doubling_matches_edges(rm, g, cache, row)


def test_reverse_equals_analytic_when_every_attention_layer_has_an_sae(rm64):
    ga = attribute(rm64, PROMPT, Contrast(" Mary", " John"), method="analytic")
    gr = attribute(rm64, PROMPT, Contrast(" Mary", " John"), method="reverse")
    assert ga.nodes == gr.nodes and ga.n_edges == gr.n_edges  # the same reachable pairs
    assert_close(gr.adjacency(), ga.adjacency(), rtol=1e-9, atol=1e-12, what="reverse vs analytic edges")
    mask = ga.explained_mask()
    assert_close(gr.constants[mask], ga.constants[mask], rtol=1e-9, atol=1e-12, what="constants")


def test_batch_size_does_not_change_edges_and_tolerance_keeps_identity(model3):
    rm = ReplacementModel(model3, _dictionaries(model3, "attention 1 replaced"))
    cache = rm.run(PROMPT)
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], Contrast(" Mary", " John"), False, cache.n_pos - 1)
    one = reverse_edges(rm, cache, src, reads, batch_size=1)
    many = reverse_edges(rm, cache, src, reads, progress=True)
    assert torch.equal(one.target, many.target) and torch.equal(one.source, many.source)
    assert_close(one.weight, many.weight, rtol=1e-12, atol=1e-13, what="batch 1 vs default")
    g = attribute(rm, PROMPT, Contrast(" Mary", " John"), edge_tolerance=0.05, cache=cache)
    full = attribute(rm, PROMPT, Contrast(" Mary", " John"), cache=cache)
    assert g.n_edges < 0.9 * full.n_edges and g.dropped.abs().sum() > 0
    mask = g.explained_mask()
    assert_close((g.incoming_sum() + g.dropped + g.constants)[mask], g.pre_activations[mask], rtol=1e-9,
                 atol=1e-11, what="tolerance")


@pytest.mark.parametrize("case", ["transcoders only", "attention 1 replaced", "skip, attention 0 replaced"])
def test_workers_do_not_change_edges(model3, case):
    """Batches swept side by side in single-threaded workers (`workers=2`) give the same edges, in the same order,
    as one worker — with a tolerance (its dropped sums too) and with per-head parts — and the caller's torch thread
    count is restored."""
    rm = ReplacementModel(model3, _dictionaries(model3, case))
    cache = rm.run(PROMPT)
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], Contrast(" Mary", " John"), False, cache.n_pos - 1)
    threads = torch.get_num_threads()
    for kw in ({}, {"tolerance": 0.02}, {"head_parts": True}):
        one = reverse_edges(rm, cache, src, reads, batch_size=5, workers=1, **kw)
        many = reverse_edges(rm, cache, src, reads, batch_size=5, workers=2, **kw)
        assert len(one.weight) > 100 and one.weight.abs().max() > 0
        assert torch.equal(one.target, many.target) and torch.equal(one.source, many.source)
        for name in ("weight", "head_weight", "dropped"):
            assert_close(getattr(many, name), getattr(one, name), rtol=1e-12, atol=1e-14, what=f"{name}, {kw}")
    torch.set_num_threads(2)  # the workers run with one thread each; the caller's count is restored after
    try:
        reverse_edges(rm, cache, src, reads, batch_size=5, workers=2)
        assert torch.get_num_threads() == 2
        with pytest.raises(AttributionError, match="memory limit") as info:  # also after an error while
            reverse_edges(rm, cache, src, reads, batch_size=5, workers=2, byte_limit=2e4)  # collecting,
        assert torch.get_num_threads() == 2 and info.traceback  # while its traceback keeps the frames alive
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("case", ["transcoders only", "attention 1 replaced"])
def test_tolerance_keeps_exactly_the_large_reachable_edges(model3, case):
    """With edge_tolerance the stored edges are exactly those of the full graph with |w| ≥ tol · Σ|w| of their
    target (no unreachable source slips in: the reachability mask is skipped for rows that are not all zero), and
    ``dropped`` is the sum of the others."""
    rm = ReplacementModel(model3, _dictionaries(model3, case))
    cache = rm.run(PROMPT)
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], Contrast(" Mary", " John"), False, cache.n_pos - 1)
    n, tol = len(src) + len(reads), 0.02
    full, cut = reverse_edges(rm, cache, src, reads), reverse_edges(rm, cache, src, reads, tolerance=tol)
    dense = _dense(full, n)
    big = dense.abs() >= tol * dense.abs().sum(1, keepdim=True)
    keep = torch.zeros(n, n, dtype=torch.bool)
    keep[full.target, full.source] = big[full.target, full.source]
    got = torch.zeros(n, n, dtype=torch.bool)
    got[cut.target, cut.source] = True
    assert 0 < int(got.sum()) < 0.9 * len(full.weight)
    assert torch.equal(got, keep)
    assert_close(_dense(cut, n), dense * keep, rtol=1e-12, atol=1e-14, what="kept edges")
    assert_close(cut.dropped, (dense * ~keep).sum(1), rtol=1e-9, atol=1e-12, what="dropped")


@pytest.mark.parametrize("case", ["transcoders only", "clt, attention 2 replaced",
                                  "4 layers, attention 1 replaced", "mlp 1 unreplaced, attention 0 replaced"])
def test_reads_below_the_channels_give_the_same_edges_on_every_path(model3, tmp_path, monkeypatch, case):
    """The writes below the lowest channel are read carried forward through it (`_through_floor`: few sources,
    e.g. tokens only) or in its value space after its transpose (many sources, e.g. MLP 0 and attention 0 below
    attention 1); with the images, every write below the next channel up can be read against [g, Y] at that
    channel's output (`_upper_site`; with 4 layers and attention 1 replaced, its features lie between the two
    channels) or the sweep can cross it. The same edges on every path (and they equal autograd's, test_d)."""
    import circuits.attribution.reverse as reverse

    if case.startswith("4 layers"):
        model = build_tiny(tmp_path, n_layers=4, dtype=torch.float64)
        dicts = random_dictionaries(model, kinds=("transcoder",)) + random_dictionaries(
            model, kinds=("attention_sae",), layers=[1], seed=4)
    else:
        model, dicts = model3, _dictionaries(model3, case)
    rm = ReplacementModel(model, dicts)
    cache = rm.run(PROMPT)
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], Contrast(" Mary", " John"), False, cache.n_pos - 1)
    monkeypatch.setattr(reverse, "_upper_pays", lambda *a: True)  # tiny d_model: force it
    value_reads, real = [], reverse._Layers.attention_back
    monkeypatch.setattr(reverse._Layers, "attention_back", lambda self, layer, g, state, mix_only=False: (
        value_reads.append(layer) if mix_only else None) or real(self, layer, g, state, mix_only))
    out = {}
    for through, upper in ((True, True), (True, False), (False, False)):
        monkeypatch.setattr(reverse, "_through_pays", lambda *a, use=through: use)
        if not upper:
            monkeypatch.setattr(reverse, "_upper_site", lambda *a: 0)
        value_reads.clear()
        out[through, upper] = reverse_edges(rm, cache, src, reads, batch_size=7)
        channels = sorted(set(range(rm.n_layers)) - set(rm.attention_saes))
        if through and upper and case != "mlp 1 unreplaced, attention 0 replaced":  # the upper read was taken,
            assert set(value_reads) == {channels[1]}  # at the second channel from the bottom (in that case every
            # target reaching it crosses it first, from its own position: nothing to read in its value space)
    ref = out[True, True]
    assert ref.weight.abs().max() > 0
    for key, e in out.items():
        assert torch.equal(ref.target, e.target) and torch.equal(ref.source, e.source)
        assert_close(e.weight, ref.weight, rtol=1e-10, atol=1e-13, what=f"through, upper = {key}")


@pytest.mark.parametrize("upper", [True, False])
def test_factored_second_crossing_gives_the_same_edges(tmp_path, monkeypatch, upper):
    """The second channel crossing formed from the factored form's H + 1 vectors on both sides
    (`_Layers._second_crossing`) gives the dense crossing's edges, and autograd's (4 layers, transcoders only, so
    that features at MLP 3 cross attention 2 second; without the upper read logits cross attention 1 second too)."""
    import circuits.attribution.channels as channels
    import circuits.attribution.reverse as reverse
    from circuits.attribution.autograd import autograd_edges

    model = build_tiny(tmp_path, n_layers=4, dtype=torch.float64)
    rm = ReplacementModel(model, random_dictionaries(model, kinds=("transcoder",)))
    cache = rm.run(PROMPT)
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], Contrast(" Mary", " John"), False, cache.n_pos - 1)
    if not upper:
        monkeypatch.setattr(reverse, "_upper_site", lambda *a: 0)
    calls, real = [], channels._Layers._second_crossing
    monkeypatch.setattr(channels._Layers, "_second_crossing", lambda self, layer, g, state: (
        calls.append((layer, g.shape[1])), real(self, layer, g, state)))
    out = {}
    for factored in (True, False):
        monkeypatch.setattr(channels, "_factored_pays", lambda *a, use=factored: use)
        calls.clear()
        out[factored] = reverse_edges(rm, cache, src, reads, batch_size=6)
        assert bool(calls) == factored and (not calls or {layer for layer, _ in calls} == ({2} if upper else {1, 2}))
    a, b = out[True], out[False]
    assert torch.equal(a.target, b.target) and torch.equal(a.source, b.source) and b.weight.abs().max() > 0
    assert_close(a.weight, b.weight, rtol=1e-10, atol=1e-13, what="factored vs dense second crossing")
    ref = autograd_edges(rm, cache, src, reads)
    n = len(src) + len(reads)
    assert_close(_dense(a, n), _dense(ref, n), rtol=1e-9, atol=1e-12, what="factored vs autograd")


def test_tokens_reach_other_positions_only_through_unreplaced_attention(model3):
    """With attention 0 replaced, MLP-0 features read the tokens at their own position only; with it left as a
    channel, every earlier token reaches them."""
    for replaced, other_positions in ((True, False), (False, True)):
        dicts = random_dictionaries(model3, kinds=("transcoder",), layers=[0])
        if replaced:
            dicts += random_dictionaries(model3, kinds=("attention_sae",), layers=[0])
        g = attribute(ReplacementModel(model3, dicts), PROMPT, Contrast(" Mary", " John"), method="reverse")
        t, s = g.edge_index
        into_mlp0 = [(g.nodes[int(a)], g.nodes[int(b)]) for a, b in zip(t, s, strict=True)
                     if g.nodes[int(a)].kind == "mlp_feature" and g.nodes[int(b)].kind == "token"]
        assert into_mlp0
        assert any(src.pos != tgt.pos for tgt, src in into_mlp0) == other_positions


def _dense(edges, n: int, heads: bool = False) -> torch.Tensor:
    """Edges as a dense [n, n] matrix (or [n, n, H] of per-head parts)."""
    values = edges.head_weight if heads else edges.weight
    out = torch.zeros((n, n) + tuple(values.shape[1:]), dtype=values.dtype)
    out[edges.target, edges.source] = values
    return out


def test_head_parts_equal_analytic_when_every_attention_layer_has_an_sae(rm64):
    from circuits.attribution.analytic import analytic_edges

    cache = rm64.run(PROMPT)
    src = collect_sources(rm64, cache)
    reads = resolve_logit_targets(rm64.model, cache.logits[-1], Contrast(" Mary", " John"), False, cache.n_pos - 1)
    a = analytic_edges(rm64, cache, src, reads)
    r = reverse_edges(rm64, cache, src, reads, head_parts=True, batch_size=5)  # attention batches: 1 target
    n = len(src) + len(reads)
    assert a.head_weight.abs().max() > 0
    assert_close(_dense(r, n, heads=True), _dense(a, n, heads=True), rtol=1e-9, atol=1e-12, what="head parts")
    assert_close(_dense(r, n), _dense(a, n), rtol=1e-9, atol=1e-12, what="edges")


def test_attribute_passes_head_parts_to_the_reverse_sweeps(model3):
    rm = ReplacementModel(model3, _dictionaries(model3, "attention 1 replaced"))
    cache = rm.run(PROMPT)
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], Contrast(" Mary", " John"), False, cache.n_pos - 1)
    g = attribute(rm, PROMPT, Contrast(" Mary", " John"), cache=cache, head_parts=True)
    assert g.metadata["method"] == "reverse" and g.head_weights.abs().max() > 0
    e = reverse_edges(rm, cache, src, reads, head_parts=True)
    n = len(src) + len(reads)
    dense = torch.zeros(n, n, rm.cfg.n_heads, dtype=g.head_weights.dtype)
    dense[g.edge_index[0], g.edge_index[1]] = g.head_weights
    assert_close(dense, _dense(e, n, heads=True), rtol=1e-12, atol=1e-14, what="attribute's head parts")


def test_head_parts_through_channels_equal_autograd_with_one_head_left(model3):
    """Attention 1 has an SAE, 0 and 2 are channels. The part of an edge into an attention-1 feature that passes
    through head h equals the autograd edge in the frozen model whose layer-1 pattern keeps only head h (that
    layer's pattern feeds nothing but its own features' z); the parts sum to the edge."""
    import dataclasses

    from circuits.attribution.autograd import autograd_edges

    rm = ReplacementModel(model3, _dictionaries(model3, "attention 1 replaced"))
    cache = rm.run(PROMPT)
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], Contrast(" Mary", " John"), False, cache.n_pos - 1)
    r = reverse_edges(rm, cache, src, reads, head_parts=True)
    plain = reverse_edges(rm, cache, src, reads)
    n = len(src) + len(reads)
    assert_close(_dense(r, n), _dense(plain, n), rtol=1e-12, atol=1e-13, what="edges with and without head parts")
    attn = [i for i, node in enumerate(src.nodes) if node.kind == "attn_feature"]
    assert attn
    parts = _dense(r, n, heads=True)[attn]  # [T, n, H]
    assert parts.abs().max() > 0
    assert_close(parts.sum(-1), _dense(r, n)[attn], rtol=1e-12, atol=1e-13, what="parts sum to the edge")
    for h in range(rm.cfg.n_heads):
        patterns = list(cache.patterns)
        keep = torch.zeros_like(patterns[1])
        keep[h] = patterns[1][h]
        patterns[1] = keep
        one = autograd_edges(rm, dataclasses.replace(cache, patterns=patterns), src, reads, only=attn)
        assert_close(parts[..., h], _dense(one, n)[attn], rtol=1e-9, atol=1e-12, what=f"head {h} part")


@pytest.mark.parametrize("path", ["upper read", "images through the floor", "value-space floor"])
def test_gemma2_post_norm_channels_equal_autograd(tmp_path, monkeypatch, path):
    """Gemma-2's attention writes through a post-norm (frozen: ``w / σ[p]`` per position): the sweeps scale g by it
    before W_Oᵀ (so no factored second crossing) and the images through the floor after W_O. Reverse = autograd on
    a 4-layer tiny Gemma-2 model (sliding window, soft-caps, GQA), transcoders only and with an attention SAE on
    layer 1, on each path below the bottom two channels; edges + constant = pre-activation."""
    import circuits.attribution.reverse as reverse
    from circuits.attribution.autograd import autograd_edges
    from circuits.families import tiny_model

    model = tiny_model("gemma2", seed=2, tokenizer_folder=tmp_path / "tokenizer", n_layers=4)
    if path == "upper read":
        monkeypatch.setattr(reverse, "_upper_pays", lambda *a: True)
    elif path == "images through the floor":
        monkeypatch.setattr(reverse, "_upper_site", lambda *a: 0)
    else:
        monkeypatch.setattr(reverse, "_through_pays", lambda *a: False)
    for dicts in (random_dictionaries(model, seed=3, kinds=("transcoder",)),
                  random_dictionaries(model, seed=3, kinds=("transcoder",))
                  + random_dictionaries(model, seed=4, layers=[1], kinds=("attention_sae",))):
        rm = ReplacementModel(model, dicts)
        assert rm.has_post_norm
        cache = rm.run(PROMPT)
        src = collect_sources(rm, cache)
        reads = resolve_logit_targets(rm.model, cache.logits[-1], Contrast(" Mary", " John"), False,
                                      cache.n_pos - 1)
        r, a = reverse_edges(rm, cache, src, reads, batch_size=5), autograd_edges(rm, cache, src, reads)
        n = len(src) + len(reads)
        assert a.weight.abs().max() > 0
        assert_close(_dense(r, n), _dense(a, n), rtol=1e-9, atol=1e-12, what="gemma-2 reverse vs autograd")
        rows = torch.unique(r.target)
        assert_close((_dense(r, n).sum(1) + r.constants)[rows], r.pre_activations[rows], rtol=1e-9, atol=1e-11,
                     what="gemma-2 edges + constant")
