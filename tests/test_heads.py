"""Component-level IOI analysis (circuits.studies.heads) on a hand-planted 2-layer model.

The planted model (no LayerNorm, MLPs silenced, every head's W_O zero unless planted) implements IOI by hand:

* A = L0H0 attends uniformly and writes the sum of the names so far (S counts twice) into a "query" subspace;
* B = L1H0, the **name mover**: its query is −A's output plus a constant that makes it attend to name tokens, its
  key is the name's identity, so it attends to the name that occurs once (IO) and copies it to the logits;
* C = L0H1 attends uniformly and writes the names so far into a subspace that B reads **only through its values**;
* D = L0H2 is a random head writing into a subspace nothing reads; E = L1H1 is a random head whose output reaches
  the logits only through random, prompt-dependent directions (a head that does things but not the task).

So A is an S-inhibition head (it reaches B through B's queries only), C reaches B through its values only, B is a
name mover, and D, E must come out "not confirmed".
"""

from __future__ import annotations

import json
import types

import pytest
import torch

from tests.conftest import build_tiny

N_PROMPTS = 48


def _planted(tmp_path):
    from circuits.organism import world as W
    from circuits.studies.base import single_token_id

    model = build_tiny(tmp_path, n_layers=2, d_model=64, n_heads=4, d_mlp=16, n_ctx=40, normalization_type=None,
                       seed=3)
    g = torch.Generator().manual_seed(7)
    names = sorted({single_token_id(model, n) for n in W.IOI_HELDOUT_NAMES})
    r = torch.randn(len(names), 8, generator=g)
    r = r / r.norm(dim=-1, keepdim=True)
    eye = torch.eye(8)
    with torch.no_grad():
        for blk in model.blocks:
            blk.mlp.W_out.zero_()
            blk.mlp.b_out.zero_()
            blk.attn.W_O.zero_()
            blk.attn.b_O.zero_()
            blk.attn.b_V.zero_()
        model.W_E[:, :48] = 0
        model.W_pos[:, :48] = 0
        model.W_U[:48] = 0
        model.b_U.zero_()
        for j, t in enumerate(names):
            model.W_E[t, :8] = r[j]
            model.W_E[t, 8] = 1.0  # "is a name"
            model.W_U[16:24, t] = 5.0 * r[j]
            model.W_U[48:, t] = 0
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        for h in (0, 1):  # A and C: uniform attention, read the name identity
            a0.W_Q[h].zero_()
            a0.W_K[h].zero_()
            a0.b_Q[h].zero_()
            a0.b_K[h].zero_()
            a0.W_V[h].zero_()
            a0.W_V[h, :8, :8] = eye
        a0.W_O[0, :8, 32:40] = 400.0 * eye  # A → query subspace
        a0.W_O[1, :8, 24:32] = 3.0 * eye  # C → value subspace
        a0.W_O[2, :, 40:48] = torch.randn(16, 8, generator=g)  # D → a subspace nothing reads
        # B: query = −A's output + "attend to names", key = name identity + name flag, value = name (+ C's output)
        a1.W_Q[0].zero_()
        a1.W_K[0].zero_()
        a1.W_V[0].zero_()
        a1.b_Q[0].zero_()
        a1.b_K[0].zero_()
        a1.W_Q[0, 32:40, :8] = -eye
        a1.b_Q[0, 8] = 150.0
        a1.W_K[0, :8, :8] = eye
        a1.W_K[0, 8, 8] = 1.0
        a1.W_V[0, :8, :8] = eye
        a1.W_V[0, 24:32, :8] = eye
        a1.W_O[0, :8, 16:24] = eye
        a1.W_O[1] = 0.05 * torch.randn(16, 64, generator=g)  # E: small random writes, reads no layer-0 head
        a1.W_Q[1, 24:48] = 0
        a1.W_K[1, 24:48] = 0
        a1.W_V[1, 24:48] = 0
        a1.W_O[1, :, :16] = 0
        a1.W_O[1, :, 24:48] = 0
    return model.eval()


def _prompts(model, n, seed):
    from circuits.studies.base import prepare
    from circuits.studies.ioi import IOIStudy

    shim = types.SimpleNamespace(model=model, tokenize=lambda p: model.to_tokens(p, truncate=False)[0])
    study = IOIStudy()
    return prepare(shim, study, study.prompts(model, n, seed))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    torch.set_num_threads(1)
    model = _planted(tmp_path_factory.mktemp("planted"))
    return model, _prompts(model, N_PROMPTS, 11), _prompts(model, N_PROMPTS, 12)


@pytest.fixture(scope="module")
def analysis(planted):
    from circuits.studies.heads import ioi_head_analysis

    model, ev, ref = planted
    return ioi_head_analysis(model, ev, ref, seed=0)


def test_planted_model_solves_ioi(planted, analysis):
    # the construction works: B attends to IO and the metric is large and positive
    assert analysis["metric"]["clean"]["lo"] > 1.0
    att = analysis["heads"]["L1H0"]["attention"]
    assert att["end_io"]["value"] > 0.8 > att["end_s1"]["value"] + att["end_s2"]["value"]


def test_ablation_finds_planted_heads_and_rejects_controls(analysis):
    heads = analysis["heads"]
    for n in ("L0H0", "L1H0"):  # A and B matter
        assert heads[n]["ablation_verdict"]["verdict"] == "confirmed", heads[n]["ablation_verdict"]
    for n in ("L0H2", "L1H1", "L0H3"):  # D, E and a silent head do not
        assert heads[n]["ablation_verdict"]["verdict"] == "not confirmed", (n, heads[n]["ablation_verdict"])
    # E really does change the logits (a non-trivial negative control), just not the metric consistently
    assert heads["L1H1"]["ablation"]["hi"] - heads["L1H1"]["ablation"]["lo"] > 0


def test_roles_on_planted_model(analysis):
    roles = {(r["role"], r["head"]) for r in analysis["roles"]}
    assert ("name mover", "L1H0") in roles
    assert ("S-inhibition", "L0H0") in roles
    assert analysis["receivers"]["heads"] == ["L1H0"]
    named = {r["head"] for r in analysis["roles"] if r["head"]}
    assert not named & {"L0H2", "L0H3", "L1H1", "L1H2", "L1H3"}
    # no backup in a model whose name mover is in the last layer; the table says so
    backup = [r for r in analysis["roles"] if r["role"] == "backup name mover"]
    assert backup and backup[0]["head"] is None and backup[0]["verdict"] == "none found"


def test_path_patching_separates_query_and_value_paths(planted):
    """A reaches B only through B's queries, C only through B's values (exactly: no LayerNorm couples them)."""
    from circuits.studies.heads import _batches, _clean_pass, _path_patch, _reference_means

    model, ev, ref = planted
    means = _reference_means(model, _batches(model, ref))
    b = _batches(model, ev)[0]
    c = _clean_pass(model, b, means)
    for source in ("abc", "swapped"):
        a = {p: (c.metric - m).mean().item() for p, m in _path_patch(model, b, c, source, (0, 0), [(1, 0)]).items()}
        assert abs(a["q"]) > 0.5 and abs(a["k"]) < 1e-6 and abs(a["v"]) < 1e-6, (source, a)
    cv = {p: (c.metric - m).mean().item() for p, m in _path_patch(model, b, c, "swapped", (0, 1), [(1, 0)]).items()}
    assert abs(cv["v"]) > 0.1 and abs(cv["q"]) < 1e-6 and abs(cv["k"]) < 1e-6, cv
    # a sender in the receiver's layer (or later) cannot reach it: the metric stays clean
    same = _path_patch(model, b, c, "abc", (1, 1), [(1, 0)])
    assert all(torch.equal(v, c.metric) for v in same.values())


def test_path_patching_equals_activation_patching_with_one_receiver_path(planted):
    """In a 2-layer model whose only reader of A is B's query, the q path carries A's whole effect."""
    from circuits.studies.heads import _batches, _clean_pass, _patch_head, _path_patch, _reference_means

    model, ev, ref = planted
    means = _reference_means(model, _batches(model, ref))
    b = _batches(model, ev)[0]
    c = _clean_pass(model, b, means)
    q = _path_patch(model, b, c, "abc", (0, 0), [(1, 0)])["q"]
    total = _patch_head(model, b, c, "abc", (0, 0), "total")
    torch.testing.assert_close(q, total, rtol=1e-4, atol=1e-4)


def test_analysis_is_deterministic_and_renders(planted, analysis):
    from circuits.studies.heads import ioi_head_analysis, render_head_section

    model, ev, ref = planted
    again = ioi_head_analysis(model, ev, ref, seed=0)
    assert json.dumps(again, sort_keys=True) == json.dumps(analysis, sort_keys=True)
    md = render_head_section(analysis)
    assert "| name mover | L1H0 |" in md and "### Role table" in md


def _path_patch_split_inputs(model, b, c, source, sender, receivers):
    """Reference: Wang et al.'s path patching with TransformerLens' split q/k/v inputs (hook_q_input & co.)."""
    from circuits.model import hook_attn_z, hook_k_input, hook_q_input, hook_v_input

    ls, hs = sender
    top = max(lr for lr, _ in receivers)
    inputs = {"q": hook_q_input, "k": hook_k_input, "v": hook_v_input}
    store = {}

    def freeze(layer):
        def fn(act, hook):
            z = c.z[:, :, layer].clone()
            if layer == ls:
                z[:, :, hs] = c.source_z[source][:, :, ls, hs]
            return z
        return fn

    def grab(act, hook):
        store[hook.name] = act.clone()

    def put(name, hr):
        def fn(act, hook):
            act = act.clone()
            act[:, :, hr] = store[name][:, :, hr]
            return act
        return fn

    model.set_use_split_qkv_input(True)
    try:
        out = {}
        with torch.no_grad():
            model.run_with_hooks(b.tokens, fwd_hooks=[(hook_attn_z(layer), freeze(layer)) for layer in range(ls, top)]
                                 + [(f(lr), grab) for f in inputs.values() for lr, _ in receivers])
            for p, f in inputs.items():
                logits = model.run_with_hooks(b.tokens, fwd_hooks=[(f(lr), put(f(lr), hr)) for lr, hr in receivers])
                out[p] = b.metric(logits)
    finally:
        model.set_use_split_qkv_input(False)
    return out


@pytest.mark.parametrize("which", ["planted", "layernorm"])
def test_path_patching_matches_split_qkv_inputs(planted, tmp_path, which):
    """The fast path patching (recompute q/k/v from the recorded residual) equals TransformerLens' split-input
    hooks, on the planted model and on a random 3-layer model with LayerNorm and MLPs."""
    from circuits.studies.heads import _batches, _clean_pass, _path_patch, _reference_means

    if which == "planted":
        model, ev, ref = planted
    else:
        model = build_tiny(tmp_path, n_layers=3, d_model=32, n_heads=4, n_ctx=40, dtype=torch.float64, seed=5)
        ev, ref = _prompts(model, 6, 11), _prompts(model, 6, 12)
    means = _reference_means(model, _batches(model, ref))
    b = _batches(model, ev)[0]
    c = _clean_pass(model, b, means)
    for sender, receivers in (((0, 1), [(1, 0)]), ((0, 0), [(1, 0), (2 if which == "layernorm" else 1, 2)])):
        fast = _path_patch(model, b, c, "abc", sender, receivers)
        ref_out = _path_patch_split_inputs(model, b, c, "abc", sender, receivers)
        for p in ("q", "k", "v"):
            torch.testing.assert_close(fast[p], ref_out[p], rtol=1e-5, atol=1e-5)
        if which == "layernorm":  # and the patch does something in a random model with LayerNorm
            assert max((fast[p] - c.metric).abs().max().item() for p in "qkv") > 1e-6


def test_feature_parts_add_up_to_the_heads_direct_effect(planted):
    """Item 5: a head's direct effect = Σ features' parts + the SAE error's part, prompt by prompt (checks that the
    head's slice of the decoder and of W_O line up with `_direct_effects`)."""
    from circuits.studies.heads import (
        _batches,
        _clean_pass,
        _direct_effects,
        _feature_parts,
        _logit_directions,
        _reference_means,
    )
    from tests.conftest import random_dictionaries

    model, ev, ref = planted
    sae = random_dictionaries(model, d_sae=40, k=5, kinds=("attention_sae",), layers=[1])[0]
    means = _reference_means(model, _batches(model, ref))
    b = _batches(model, ev)[0]
    c = _clean_pass(model, b, means)
    de = _direct_effects(model, b, c.z, c.zbar, c.lnf)  # [L, H, B]
    for head in (0, 1):
        z, zref = c.z[b.rows, b.end, 1], c.zbar[b.rows, b.end, 1]
        f, e = _feature_parts(sae, 1, head, model, z, zref, _logit_directions(model, b, c.lnf))
        torch.testing.assert_close(f.sum(-1) + e, de[1, head], rtol=1e-5, atol=1e-4)
        assert f.abs().sum() > 0


def test_replication_marks_each_confirmed_role_by_the_other_sets_verdict():
    """Roles are chosen and judged on one prompt set; a role counts as replicated only when the same head gets the
    same role, confirmed, on the disjoint selection set (a chance pass among 32 heads rarely repeats)."""
    from circuits.studies.heads import replication

    eff = {"value": 2.0, "lo": 1.5, "hi": 2.5, "n": 100}
    main = {"roles": [{"role": "moves S2", "head": "L0H4", "verdict": "confirmed", "effect": eff},
                      {"role": "moves S2", "head": "L0H2", "verdict": "confirmed", "effect": eff},
                      {"role": "name mover", "head": None, "verdict": "none found"}]}
    other = {"roles": [{"role": "moves S2", "head": "L0H4", "verdict": "confirmed", "effect": eff},
                       {"role": "moves S2", "head": "L0H2", "verdict": "inconclusive", "effect": eff}]}
    rep = replication(main, other, 100)
    assert [(r["head"], r["replicated"], r["other_verdict"]) for r in rep["rows"]] == [
        ("L0H4", True, "confirmed"), ("L0H2", False, "inconclusive")]
    assert replication(main, {"roles": []}, 100)["rows"][0]["other_verdict"] == "not assigned"


def test_direct_effect_baseline_is_another_head_of_the_layer_and_can_say_no(planted, monkeypatch):
    """A direct effect is judged against another head drawn at random from the same layer (per prompt, the mean over
    the layer's other heads). A role names a head that stands out: when every head of a layer writes the answer by
    the same amount, none stands out (each clears zero and the 10% minimum, so the old rule confirmed all four); a
    head that writes twice as much does."""
    import numpy as np

    from circuits.studies import heads

    model, ev, ref = planted
    real = heads.ioi_head_analysis(model, ev, ref, seed=0)
    for layer in (0, 1):
        values = [real["heads"][f"L{layer}H{h}"]["direct"]["value"] for h in range(4)]
        assert abs(real["direct_baselines"][f"L{layer}"]["value"] - np.mean(values)) < 1e-9
        for h in range(4):
            others = np.mean([v for j, v in enumerate(values) if j != h])
            assert abs(real["heads"][f"L{layer}H{h}"]["direct_baseline"]["value"] - others) < 1e-9
    assert real["heads"]["L1H0"]["direct_verdict"]["verdict"] == "confirmed"  # the planted name mover

    gen = torch.Generator().manual_seed(0)

    def fake(model_, b, z, zbar, lnf):  # [L, H, B]: layer 1 writes 5 ± 0.5 per head, L1H3 writes 10 ± 0.5
        B = b.tokens.shape[0]
        out = torch.zeros(2, 4, B, dtype=torch.float64)
        out[1] = 5.0 + 0.5 * torch.randn(4, B, generator=gen, dtype=torch.float64)
        out[1, 3] += 5.0
        return out

    monkeypatch.setattr(heads, "_direct_effects", fake)
    data = heads.ioi_head_analysis(model, ev, ref, seed=0)
    minimum = 0.1 * abs(data["metric"]["clean"]["value"])
    for h in range(3):
        d = data["heads"][f"L1H{h}"]
        assert d["direct"]["lo"] > max(0.0, minimum)  # clears zero and the minimum ...
        assert d["direct_verdict"]["verdict"] != "confirmed", d["direct_verdict"]  # ... but stands out from nothing
    assert data["heads"]["L1H3"]["direct_verdict"]["verdict"] == "confirmed"


def test_joint_ablation_draws_never_meet_the_ablated_heads():
    """The review's bug: the random sets were drawn from every head of the ablated heads' layers, so on the organism
    (6 of layer 3's 8 heads ablated) each "random" set shared 4-5 of the 7 heads it was compared with."""
    from circuits.studies.heads import JOINT_DRAWS, _joint_draws

    ablated = [(2, 7), (3, 0), (3, 2), (3, 4), (3, 5), (3, 6), (3, 7)]
    draws = _joint_draws(ablated, 4, 8, seed=0)
    assert len(draws) == JOINT_DRAWS and len({tuple(p) for p, _ in draws}) > 1
    for pick, outside in draws:
        assert len(pick) == len(set(pick)) == 7 and not set(pick) & set(ablated)
        assert sum(1 for lr, _ in pick if lr == 3) == 2 and outside == 4  # layer 3's two free heads, 4 from others
        assert sum(1 for lr, _ in pick if lr == 2) >= 1
    assert _joint_draws(ablated, 4, 8, seed=0) == draws  # seeded
    small = _joint_draws([(1, 0)], 2, 4, seed=0)
    assert all(p[0][0] == 1 and p[0] != (1, 0) and n == 0 for p, n in small)


def test_path_patching_baseline_is_the_mean_over_every_sender(planted, analysis):
    """Every sender is path-patched; the baseline of a path is its mean over all senders, recomputed here sender by
    sender with `_path_patch`. The table keeps the screened senders; the rest are listed."""
    import numpy as np

    from circuits.studies.heads import _batches, _clean_pass, _parse_head, _path_patch, _reference_means

    model, ev, ref = planted
    means = _reference_means(model, _batches(model, ref))
    batches = _batches(model, ev)
    cleans = [_clean_pass(model, b, means) for b in batches]
    pp = analysis["path_patching"]["name_movers"]
    for s, res in pp["sources"].items():
        assert set(res["senders"]) | set(res["screened_out"]) == set(pp["senders"])
        assert "L0H2" in res["screened_out"] and "L0H3" in res["screened_out"]
        for p in ("q", "k", "v"):
            per_sender = [np.mean(np.concatenate([
                (c.metric - _path_patch(model, b, c, s, _parse_head(n), [(1, 0)])[p]).double().numpy()
                for b, c in zip(batches, cleans, strict=True)])) for n in pp["senders"]]
            assert abs(res["baseline"][p]["value"] - np.mean(per_sender)) < 1e-6, (s, p)
    # A's query path beats the random sender; no other sender's query path does
    abc = pp["sources"]["abc"]["senders"]
    assert abc["L0H0"]["q"]["verdict"] == "confirmed"
    assert all(row["q"]["verdict"] != "confirmed" for n, row in abc.items() if n != "L0H0")


def test_backup_and_joint_ablation_baselines(analysis):
    """A backup head's rise is judged against the rise of a random non-ablated head after the first ablated layer;
    the joint ablation against as many other heads drawn at random from the same layers, so its baseline is a mix
    of the other heads' single-head drops."""
    b = analysis["backup"]
    # the name mover is in the last layer: no head after it could take over, so there is no rise baseline (heads in
    # earlier layers respond only through the final LayerNorm's scale and would make it ≈ 0)
    assert b["ablated"] == ["L1H0"] and b["rise_baseline"] is None
    others = [analysis["heads"][f"L1H{h}"]["ablation"]["value"] for h in (1, 2, 3)]  # never L1H0 itself
    assert min(others) - 1e-6 <= b["metric_drop_baseline"]["value"] <= max(others) + 1e-6
    assert b["metric_drop_baseline"]["outside_layer"] == 0
    assert b["metric_drop"]["lo"] > b["metric_drop_baseline"]["hi"]  # ablating the name mover beats a random head


def test_s2_offset_verdict_can_say_offset_and_inconclusive():
    """benchmarks/ioi_s2_offset.py's rule: a head that follows the name when S2 moves "follows the name"; one that
    keeps attending END − 4 (the inserted word) keys on the offset (negative control); an ablation drop no larger
    than the other heads' is not enough for "the name"; neither attention is inconclusive."""
    import importlib.util
    from pathlib import Path

    from circuits.studies.stats import Interval

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ioi_s2_offset.py"
    spec = importlib.util.spec_from_file_location("ioi_s2_offset", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    big, small = Interval(8.8, 8.4, 9.3, 200), Interval(0.1, 0.07, 0.12, 200)
    assert mod.offset_verdict(0.95, 0.0, big, small, 1.06) == "follows the name"
    assert mod.offset_verdict(0.95, 0.0) == "follows the name"  # attention alone (ABC prompts)
    assert mod.offset_verdict(0.95, 0.0, big, small, 9.0) == "inconclusive"  # above the others, below the minimum
    assert mod.offset_verdict(0.02, 0.93, big, small, 1.06) == "keys on the offset"
    assert mod.offset_verdict(0.95, 0.0, small, big, 1.06) == "inconclusive"  # the drop is not above the others'
    assert mod.offset_verdict(0.3, 0.3) == "inconclusive"
    assert mod.insert_after_s2("When Mary and John went out, John gave a drink to", "John", "then") == \
        "When Mary and John went out, John then gave a drink to"
