"""Dashboards' logit effects follow the model family (issue 23): RMSNorm does not centre, Gemma-2's norm after
attention scales what an attention feature writes. On tiny random float64 models of each family (the builders of
tests/test_families.py) a feature's listed logit effect equals its direct effect measured two independent ways:

* in the frozen model (every norm scale and pattern held), adding one unit of the feature's decoder at its own hook
  with every later sublayer's output held at its clean value (so only the direct path through the residual stream
  to the unembedding is left), times the frozen scales σ_final (and Gemma-2's σ_post of ``ln1_post``) — the real
  TransformerLens modules do the reading, not our formula;
* the graph's feature → logit edge (analytic engine) divided by the activation and the same frozen scales.

Negative controls: the old formula (centred write direction, no ``ln1_post`` weight) differs from the measurement on
every family and changes some features' listed top tokens, so these tests can fail. The organism (GPT-2-style
LayerNorm, which does centre) keeps every stored logit effect of the shipped database."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import random_dictionaries

from circuits import dashboards
from circuits.attribution import Logit, attribute
from circuits.attribution.targets import uncapped_logits
from circuits.families import FAMILIES, tiny_model
from circuits.model import hook_attn_out, hook_attn_z, hook_mlp_out
from circuits.replacement import ReplacementModel

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


_CACHE: dict = {}


@pytest.fixture(scope="module")
def rm(family, tmp_path_factory):
    """A tiny float64 model of the family with random transcoders and attention SAEs on every layer (as in
    tests/test_families.py)."""
    if family not in _CACHE:
        model = tiny_model(family, seed=0, tokenizer_folder=tmp_path_factory.mktemp(family) / "tokenizer")
        _CACHE[family] = ReplacementModel(model, random_dictionaries(model, seed=1))
    return _CACHE[family]


@torch.no_grad()
def old_centred_effects(rm, d) -> torch.Tensor:
    """The formula before this change: the write direction centred (LayerNorm's P), no ``ln1_post`` weight."""
    v = d.W_dec @ rm.W_O_cat(d.cfg.layer) if d.cfg.kind == "attention_sae" else d.W_dec
    return ((v - v.mean(-1, keepdim=True)) * rm.model.ln_final.w) @ rm.model.W_U


@torch.no_grad()
def measured_direct_effects(rm, cache, d) -> torch.Tensor:
    """[d_sae, d_vocab]: each feature's direct logit effect per unit activation at the last position, measured in
    the frozen model (batch row j adds feature j's decoder) and multiplied back by the frozen scales (σ = 1)."""
    n, last, layer = cache.n_pos, cache.n_pos - 1, d.cfg.layer
    cfg = rm.cfg
    B = d.d_sae
    tokens = cache.tokens[None].expand(B, n)
    clean = dict(cache.hook_values)

    def hold(name):
        return name, lambda act, hook: clean[name][None].expand_as(act).clone()

    def add_to(name, decoders, shape):
        def fn(act, hook):
            act = (clean[name][None].expand_as(act) if name == hook_mlp_out(layer) else act).clone()
            act[:, last] += decoders.reshape(B, *shape).to(act.dtype)
            return act
        return name, fn

    hooks = []
    for later in range(layer + 1, cfg.n_layers):
        hooks += [hold(hook_attn_out(later)), hold(hook_mlp_out(later))]
    if d.cfg.kind == "attention_sae":
        hooks += [add_to(hook_attn_z(layer), d.W_dec, (cfg.n_heads, cfg.d_head)), hold(hook_mlp_out(layer))]
    else:
        hooks.append(add_to(hook_mlp_out(layer), d.W_dec, (cfg.d_model,)))
    for name in {h for h, _ in hooks}:
        if name not in clean:  # hook_attn_out is not in the replacement cache: take it from a clean run
            _, extra = rm.model.run_with_cache(cache.tokens[None], names_filter=name)
            clean[name] = extra[name][0]
    with rm.frozen(cache):
        edited = rm.model.run_with_hooks(tokens, fwd_hooks=hooks)[:, last]
        base = rm.model(cache.tokens[None])[0, last]
    delta = uncapped_logits(rm.model, edited) - uncapped_logits(rm.model, base)[None]
    scale = cache.lnf_scale[last]
    if d.cfg.kind == "attention_sae" and rm.has_post_norm:
        scale = scale * cache.attn_post_scale[layer][last]
    return delta * scale


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def test_logit_effects_equal_the_direct_effect_in_the_frozen_model(family, rm):
    cache = rm.run(PROMPT)
    changed_lists = 0
    for d in rm.dictionaries:
        measured = measured_direct_effects(rm, cache, d)
        ours = dashboards.logit_effect_matrix(rm, d)
        assert relative_gap(ours, measured) < 1e-9, f"{family} {d.cfg.name}: {relative_gap(ours, measured):.2e}"
        # negative control: the centred direction (and, on Gemma-2, no ln1_post weight) is measurably wrong
        old = old_centred_effects(rm, d)
        assert relative_gap(old, measured) > 1e-2, f"{family} {d.cfg.name}: the old formula is not distinguished"
        top_new = ours.topk(dashboards.N_LOGITS, -1).indices
        top_old = old.topk(dashboards.N_LOGITS, -1).indices
        changed_lists += int((top_new != top_old).any(-1).sum())
        # the stored lists are the top and bottom of this matrix
        top, bottom = dashboards.logit_effects(rm, d)
        assert [[t for t, _ in row] for row in top] == top_new.tolist()
        assert [[t for t, _ in row] for row in bottom] == (-ours).topk(dashboards.N_LOGITS, -1).indices.tolist()
    assert changed_lists > 0  # the old formula lists different top tokens for some features of every family


def test_gemma2_attention_features_carry_the_ln1_post_weight(rm):
    """The ``ln1_post`` weight alone (RMSNorm read without centring, but the post-norm weight left out) is wrong."""
    if not rm.has_post_norm:
        pytest.skip("only Gemma-2 has a norm after attention")
    cache = rm.run(PROMPT)
    for layer, d in rm.attention_saes.items():
        measured = measured_direct_effects(rm, cache, d)
        without_post = ((d.W_dec @ rm.W_O_cat(layer)) * rm.model.ln_final.w) @ rm.model.W_U
        assert relative_gap(without_post, measured) > 1e-2
        assert relative_gap(dashboards.logit_effect_matrix(rm, d), measured) < 1e-9


def test_logit_effects_equal_the_graphs_feature_to_logit_edges(family, rm):
    """Edge (feature at the last position → logit t) = activation · effect[t] / (σ_final · σ_post), for every
    active feature and every listed top token of those features."""
    cache = rm.run(PROMPT)
    last = cache.n_pos - 1
    effects = {d.cfg.name: dashboards.logit_effect_matrix(rm, d) for d in rm.dictionaries}
    live = [(d, int(i)) for d in rm.dictionaries for i in torch.nonzero(cache.codes[d.cfg.name][last]).flatten()]
    tokens = sorted({t for d, i in live for t in effects[d.cfg.name][i].topk(2).indices.tolist()})[:12]
    g = attribute(rm, PROMPT, Logit(tuple(tokens)), method="analytic", cache=cache)
    a = g.adjacency()
    logit_rows = {n.index: r for r, n in enumerate(g.nodes) if n.kind == "logit"}
    assert sorted(logit_rows) == tokens
    checked = 0
    for r, node in enumerate(g.nodes):
        if not node.kind.endswith("_feature") or node.pos != last:
            continue
        d = rm.attention_saes[node.layer] if node.kind == "attn_feature" else rm.transcoders[node.layer]
        scale = cache.lnf_scale[last] * (cache.attn_post_scale[node.layer][last]
                                         if node.kind == "attn_feature" and rm.has_post_norm else 1.0)
        act = cache.codes[d.cfg.name][last, node.index]
        edges = torch.stack([a[logit_rows[t], r] for t in tokens]) * scale / act
        expected = effects[d.cfg.name][node.index, tokens]
        assert relative_gap(edges, expected) < 1e-9, f"{family} {node.short()}"
        checked += 1
    assert checked == len(live) and checked >= 8


def test_a_built_database_stores_the_family_exact_effects(family, rm, tmp_path):
    """`dashboards.build` on a tiny model of the family stores, for every feature, the top and bottom tokens of the
    family-exact matrix (values to the stored 4 significant digits)."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(1, rm.cfg.d_vocab, (6, 12), generator=gen)
    path = dashboards.build(rm, rows, tmp_path / "dash.sqlite", batch_size=6, progress=False)
    db = dashboards.Dashboards(path, rm)
    for d in rm.dictionaries:
        eff = dashboards.logit_effect_matrix(rm, d)
        top = eff.topk(dashboards.N_LOGITS, -1)
        for f in range(0, d.d_sae, 7):
            dash = db.get(d.cfg.name, f)
            assert [t for t, _ in dash.logits_top] == db._decode(top.indices[f].tolist())
            assert [v for _, v in dash.logits_top] == pytest.approx(top.values[f].tolist(), rel=1e-3)
    db.close()


def test_head_and_source_terms_read_the_shared_value_head(rm):
    """Grouped-query attention: ``hook_v`` has one slot per key/value head; the dashboard's per-(source, head) terms
    of an attention feature's encoder input, summed over sources, equal ``z[p, h] · W_enc[h, :, f]`` for each
    query head h (the build used to fail on these models: the einsum met 2 value heads for 4 query heads)."""
    from circuits.model import hook_attn_pattern

    cache = rm.run(PROMPT)
    H, dh = rm.cfg.n_heads, rm.cfg.d_head
    assert rm.cfg.n_key_value_heads < H
    for layer, d in rm.attention_saes.items():
        names = [f"blocks.{layer}.attn.hook_v", hook_attn_pattern(layer), hook_attn_z(layer)]
        _, run = rm.model.run_with_cache(cache.tokens[None], names_filter=lambda n, names=names: n in names)
        v, A, z = (run[n][0] for n in names)
        assert v.shape[1] == rm.cfg.n_key_value_heads
        for pos in (3, cache.n_pos - 1):
            for f in (0, 5, 17):
                terms = dashboards.head_source_terms(rm, d, v[: pos + 1], A[:, pos, : pos + 1], f)
                expected = (z[pos] * d.W_enc[:, f].reshape(H, dh)).sum(-1)
                assert relative_gap(terms.sum(0), expected) < 1e-12


def test_the_organism_keeps_every_stored_logit_effect():
    """GPT-2-style LayerNorm centres: the shipped organism database (built with the old formula) lists exactly what
    the new code computes, for every feature of every dictionary (tokens and 4-significant-digit values)."""
    from circuits import load_dictionaries, load_model
    from circuits.model import DATA_DIR

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    assert rm.has_ln and not rm.has_post_norm
    db = dashboards.Dashboards(DATA_DIR / "dashboards" / "organism.sqlite", rm)  # refuses a stale database
    stored = {(name, f): (json.loads(top), json.loads(bottom)) for name, f, top, bottom in
              db.con.execute("SELECT dictionary, feature, logits_top, logits_bottom FROM features")}
    checked = 0
    for d in rm.dictionaries:
        top, bottom = dashboards.logit_effects(rm, d)
        for f in range(d.d_sae):
            for ours, theirs in zip((top[f], bottom[f]), stored[(d.cfg.name, f)], strict=True):
                # every stored token with its value to the 4 stored significant digits (one unit of the last digit
                # allowed: another thread count's summation order can round a boundary value the other way); a stored
                # token missing from ours must be a tie with our cut-off value (near-equal effects can swap places)
                mine = dict(zip(db._decode([t for t, _ in ours]), (float(f"{v:.4g}") for _, v in ours), strict=True))
                assert len(mine) == len(theirs)
                for t, w in theirs:
                    tol = 1.01 * 10 ** (math.floor(math.log10(abs(w))) - 3)
                    assert abs(mine.get(t, float(f"{ours[-1][1]:.4g}")) - w) <= tol, (d.cfg.name, f, t, w, mine)
            checked += 1
    assert checked == len(stored) == sum(d.d_sae for d in rm.dictionaries)
    db.close()
