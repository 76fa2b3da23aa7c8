"""QK attribution with skip transcoders and cross-layer transcoders upstream (tiny random 3-layer float64 models of
`test_skip_clt`): a source's share of the query and key includes its path through every skip channel and, for a
CLT feature, its decoder writes into every later MLP, so the terms still sum to TransformerLens' own
``hook_attn_scores`` and each query-side marginal is what removing that source does in the frozen model.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny, random_dictionaries
from test_qk import tl_scores
from test_skip_clt import PROMPT, random_clt, skip_transcoders

from circuits.attribution.qk import explain_attention, stream_sources
from circuits.interventions import Edit, run_edited
from circuits.replacement import ReplacementModel


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """skip: skip transcoders on layers 0 and 2, a plain transcoder on 1; clt: a 3-layer CLT (both with attention
    SAEs everywhere); skip_channels: skip transcoders on every layer and an attention SAE on layer 1 only (layers 0
    and 2 are one ``attn_error`` node per position, whose contribution also runs through the skip channels)."""
    from circuits.dictionaries.dictset import DictionarySet

    model = build_tiny(tmp_path_factory.mktemp("qkskipclt"), n_layers=3, dtype=torch.float64)
    attn = random_dictionaries(model, kinds=("attention_sae",))
    plain = random_dictionaries(model, kinds=("transcoder",), layers=[1], seed=5)
    return {
        "skip": ReplacementModel(model, attn + plain + skip_transcoders(model, layers=[0, 2])),
        "clt": ReplacementModel(model, DictionarySet("custom", {"a": random_clt(model),
                                                                **{d.cfg.name: d for d in attn}})),
        "skip_channels": ReplacementModel(model, random_dictionaries(model, kinds=("attention_sae",), layers=[1])
                                          + skip_transcoders(model)),
    }


NAMES = ["skip", "clt", "skip_channels"]


@pytest.mark.parametrize("name", NAMES)
def test_contributions_sum_to_the_stream_and_differ_from_raw_writes(models, name):
    rm = models[name]
    cache = rm.run(PROMPT)
    for layer in range(rm.n_layers):
        nodes, contributions, pos, constant = stream_sources(rm, cache, layer)
        assert constant.shape == cache.resid_pre[layer].shape  # position-dependent (σ2 differs by position)
        total = torch.zeros_like(cache.resid_pre[layer]).index_add_(0, pos, contributions) + constant
        torch.testing.assert_close(total, cache.resid_pre[layer], rtol=0, atol=1e-12)
    # after the first MLP, contributions are not the raw writes: the skip channel / CLT decoders carry weight
    src_nodes, contributions, _, _ = stream_sources(rm, cache, 2)
    from circuits.attribution.sources import collect_sources

    src = collect_sources(rm, cache)
    raw = {n: v for n, v in zip(src.nodes, src.vectors, strict=True)}
    moved = max(float((c - raw[n]).abs().max()) for n, c in zip(src_nodes, contributions, strict=True) if n in raw)
    assert moved > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_terms_sum_to_the_score_at_every_layer(models, name):
    rm = models[name]
    cache = rm.run(PROMPT)
    p = cache.n_pos - 1
    worst = 0.0
    for layer in range(rm.n_layers):
        ref = tl_scores(rm, cache.tokens, layer)
        for head in range(rm.cfg.n_heads):
            for keys in ((0,), (3,), (p,), (2, 9), (p, 4)):
                a = explain_attention(rm, cache, layer, head, p, keys if len(keys) == 2 else keys[0])
                want = float(ref[head, p, keys[0]] - (ref[head, p, keys[1]] if len(keys) == 2 else 0))
                size = max(abs(want), 1.0)
                worst = max(worst, abs(float(a.matrix().sum()) - want) / size, abs(a.total() - want) / size,
                            abs(a.value - want) / size)
        # the first-order pattern view sums to the linearised pattern value too (every key ≤ p on the key side)
        A = torch.softmax(ref[1, p, :p + 1], -1)
        w = A[5] * (torch.eye(p + 1, dtype=A.dtype)[5] - A)
        a = explain_attention(rm, cache, layer, 1, p, 5, quantity="pattern")
        worst = max(worst, abs(a.total() - float(w @ ref[1, p, :p + 1])))
    print(f"{name}: worst relative error {worst:.2e}")
    assert worst < 1e-10, worst


def _frozen_scores(rm, cache, layer, edits=()):
    """[n_heads, pos, pos] scores of `layer` in the frozen direct model with `edits` (codes and errors held, skip
    channels live, a CLT feature's edit rebuilding all its decoder writes) — the engine's own intervention path."""
    got = {}
    hook = (rm.model.blocks[layer].attn.hook_attn_scores.name, lambda act, hook: got.__setitem__("s", act[0].clone()))
    with torch.no_grad(), rm.model.hooks(fwd_hooks=[hook]):
        run_edited(rm, cache, list(edits), frozen=True, direct=True)
    return got["s"]


@pytest.mark.parametrize("name", ["skip", "clt"])
def test_removing_a_source_moves_the_score_by_its_marginal(models, name):
    """Zero each query-side source at p (every one) and a few key-side ones at key a in the frozen model: the score
    and the contrast move by exactly minus the marginal. Layer-0 MLP features reach layer 2 through the skip
    channel of MLP 1/2 (skip) or the CLT decoders into MLP 1 (clt), which the raw write alone would miss."""
    rm = models[name]
    cache = rm.run(PROMPT)
    p, a_pos, b_pos, head = cache.n_pos - 1, 2, 9, 1
    worst, n_checked = 0.0, 0
    for layer in (1, 2):
        clean = _frozen_scores(rm, cache, layer)[head, p]
        torch.testing.assert_close(clean, tl_scores(rm, cache.tokens, layer)[head, p], rtol=0, atol=1e-12)
        single = explain_attention(rm, cache, layer, head, p, a_pos)
        contrast = explain_attention(rm, cache, layer, head, p, (a_pos, b_pos))
        q_single = {m.node: m.contribution for m in single.query_marginals() if m.node is not None}
        q_contrast = {m.node: m.contribution for m in contrast.query_marginals() if m.node is not None}
        k_single = [m for m in single.key_marginals() if m.node is not None]
        assert {n.kind for n in q_single} >= {"token", "attn_feature", "mlp_feature", "mlp_error", "attn_error"}
        cases = [(n, q_single[n], q_contrast[n]) for n in q_single] + [(m.node, m.contribution, None)
                                                                        for m in k_single[:6]]
        for node, m_single, m_contrast in cases:
            s = _frozen_scores(rm, cache, layer, [Edit(node, "scale", 0.0)])[head, p]
            moved = float(s[a_pos] - clean[a_pos])
            err = abs(moved + m_single)
            if m_contrast is not None:
                err = max(err, abs(moved - float(s[b_pos] - clean[b_pos]) + m_contrast))
            worst = max(worst, err / max(1.0, abs(m_single)))
            n_checked += 1
    print(f"{name}: {n_checked} removals, worst error {worst:.2e}")
    assert worst < 1e-10, worst
