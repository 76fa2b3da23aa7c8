"""The case studies' QK section (`circuits.studies.qk_section`): aggregated over prompts it names a planted QK
mechanism, its frozen removal check is exact, it is deterministic, and a head without a preference gets an interval
that contains 0."""

from __future__ import annotations

import random
import types

import pytest
import torch

from circuits.replacement import ReplacementModel
from circuits.studies.qk_section import QKHead, attending_heads, ioi_heads, qk_section, render_qk_section, role_node

N = 24


def _induction_prompts(n: int, seed: int, vocab: int = 16, span: int = 6, cut: int = 3) -> list:
    """Prompts for the hand-built induction model of tests/test_qk.py: BOS (token 0), a span of distinct tokens, a
    repeat of its first `cut` tokens. Roles: A (the current token's first copy), B (the token after it), END."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(range(1, vocab), span)
        tokens = torch.tensor([0] + words + words[:cut])
        roles = ["BOS"] + ["other"] * (len(tokens) - 2) + ["END"]
        roles[cut], roles[cut + 1] = "A", "B"
        out.append(types.SimpleNamespace(tokens=tokens, roles=roles))
    return out


@pytest.fixture(scope="module")
def induction():
    from test_qk import induction_model

    return ReplacementModel(induction_model(), [])


@pytest.fixture(scope="module")
def induction_section(induction):
    prompts = _induction_prompts(N, 0)
    heads = [QKHead(1, 0, "END", "B", "A", "planted induction head")]
    return qk_section(induction, prompts, heads, seed=0)


def test_the_aggregated_section_names_the_planted_pair(induction, induction_section):
    h = induction_section["heads"][0]
    assert h["n"] == N
    assert h["score"]["lo"] > 1.0 and h["pattern"]["lo"] > 0.5  # the planted head prefers B, on every resample
    assert h["max_abs_gap"] < 1e-9  # the decomposition is exact on every prompt (float64)
    # query side: the current token (its embedding at END); key side: the previous-token information at B, which
    # the layer-0 head wrote (layer 0 has no SAE: one attention error node per position)
    assert h["query"][0]["node"] == "emb@END" and h["query"][0]["lo"] > 0
    assert h["key"][0]["node"] == "errA0@B" and h["key"][0]["lo"] > 0
    assert h["key"][0]["value"] > 3 * max(abs(r["value"]) for r in h["key"][1:])
    # and the copying head is the one `attending_heads` picks
    picked = attending_heads(induction, _induction_prompts(N, 0), "END", "B", "A")
    assert [(x.layer, x.head) for x in picked] == [(1, 0)]


def test_frozen_removal_moves_the_preference_by_the_summed_contribution(induction_section):
    r = induction_section["heads"][0]["removal"]
    # ranked on half of the prompts (i % 4 < 2), removed on the other half only
    assert r["n_selection"] == r["n_test"] == N // 2
    assert r["nodes"][0] == "emb@END" and r["prompts_with_any"] == N // 2
    assert r["max_abs_frozen_error"] < 1e-9
    assert abs(r["frozen"]["value"] - r["predicted"]["value"]) < 1e-9
    assert r["predicted"]["hi"] < 0  # removing the supporting sources lowers the preference ...
    assert r["live_pattern"]["hi"] < 0 and r["share_in_direction"] == 1.0  # ... and the live pattern follows
    # the baselines remove the next-ranked nodes and as many random other nodes present at END; in this planted
    # model they do not carry the preference, so their live change is far smaller than the top nodes' (the check
    # can say "no"), and each is scored against its own prediction
    for base in (r["random"], r["next"]):
        assert {"live_pattern", "predicted", "prompts_with_any", "share_in_direction"} <= set(base)
        if base["prompts_with_any"]:
            assert abs(base["live_pattern"]["value"]) < abs(r["live_pattern"]["value"])


def test_removal_baselines_are_scored_against_their_own_prediction():
    """The review found the random removals' share "in the predicted direction" scored against the *top* nodes'
    predicted sign; each removal's share now reads its own prediction."""
    from circuits.studies.qk_section import _share

    checks = [{"removed": 1, "predicted": 0.5, "live_pattern": 0.1},   # follows its own (+) prediction
              {"removed": 2, "predicted": -0.5, "live_pattern": -0.2},  # follows its own (−) prediction
              {"removed": 1, "predicted": 0.3, "live_pattern": -0.1},   # does not
              {"removed": 0, "predicted": 0.0, "live_pattern": 0.0}]    # nothing removed: not counted
    assert _share(checks) == pytest.approx(2 / 3)
    assert _share([]) is None


def test_every_removal_in_the_section_is_exact_and_each_baseline_reads_its_own_prediction(induction, monkeypatch):
    """End to end through `qk_section`: every removal it runs — top nodes, next-ranked, random — changes the frozen
    preference by exactly its own prediction (minus the removed nodes' summed query contributions), and the
    baselines reported are the means over their own removals, not the top nodes' prediction."""
    import numpy as np

    from circuits.studies import qk_section as qs

    calls = []
    real = qs._removal

    def recording(rm, cache, src, spec, p, a, b, remove, qmarg):
        out = real(rm, cache, src, spec, p, a, b, remove, qmarg)
        calls.append((list(remove), out))
        return out

    monkeypatch.setattr(qs, "_removal", recording)
    heads = [QKHead(1, 0, "END", "B", "A", "planted induction head")]
    r = qs.qk_section(induction, _induction_prompts(N, 1), heads, seed=0)["heads"][0]["removal"]
    assert len(calls) == 3 * r["n_test"]  # per test prompt: top, next-ranked, random
    for _, out in calls:
        assert abs(out["frozen"] - out["predicted"]) < 1e-9
    top, nxt, rnd = calls[0::3], calls[1::3], calls[2::3]
    assert all(nodes == r["nodes"] for nodes, _ in top) and all(nodes == r["next"]["nodes"] for nodes, _ in nxt)
    assert any(nodes != r["nodes"] for nodes, _ in rnd)  # random draws are other nodes
    for base, done in ((r["random"], rnd), (r["next"], nxt)):
        assert base["predicted"]["value"] == pytest.approx(np.mean([o["predicted"] for _, o in done]))
        assert base["live_pattern"]["value"] == pytest.approx(np.mean([o["live_pattern"] for _, o in done]))
        moved = [o for _, o in done if o["removed"] and o["predicted"] != 0]
        own = sum(np.sign(o["live_pattern"]) == np.sign(o["predicted"]) for o in moved) / len(moved) if moved else None
        assert base["share_in_direction"] == own
    assert r["random"]["predicted"]["value"] != pytest.approx(r["predicted"]["value"])


def test_the_section_is_the_same_with_two_workers(induction, induction_section):
    """Prompts side by side (each worker with its own copy of the model, random baseline draws made in prompt order
    beforehand) give the section of one worker, value for value."""
    heads = [QKHead(1, 0, "END", "B", "A", "planted induction head")]
    assert qk_section(induction, _induction_prompts(N, 0), heads, seed=0, workers=2) == induction_section


def test_the_section_is_deterministic_and_renders(induction, induction_section):
    again = qk_section(induction, _induction_prompts(N, 0), [QKHead(1, 0, "END", "B", "A", "planted induction head")],
                       seed=0)
    assert again == induction_section
    text = render_qk_section(induction_section)
    assert "### L1H0: END→B − END→A" in text and "`errA0@B`" in text and "`emb@END`" in text
    assert "Random baseline" in text and "nan%" not in text


def test_a_head_without_preference_gets_an_interval_containing_zero(rm64):
    """Negative control: a head of a random model contrasting two positions whose order is drawn at random per prompt
    has no systematic preference — its interval must contain 0, although the per-prompt preferences are far from 0
    (the control is not vacuous) and the decomposition and removal stay exact."""
    rng = random.Random(5)
    unk = rm64.model.tokenizer.unk_token_id
    vocab = [t for t in range(1, rm64.cfg.d_vocab) if t != unk]
    prompts = []
    for _ in range(N):
        n = 10
        tokens = torch.tensor([0] + rng.choices(vocab, k=n - 1))
        x, y = rng.sample(range(1, n - 1), 2)
        roles = ["BOS"] + ["other"] * (n - 2) + ["END"]
        roles[x], roles[y] = "X", "Y"
        prompts.append(types.SimpleNamespace(tokens=tokens, roles=roles))
    null = qk_section(rm64, prompts, [QKHead(0, 2, "END", "X", "Y")], seed=0)["heads"][0]
    assert null["score"]["lo"] <= 0 <= null["score"]["hi"], null["score"]
    assert null["score"]["hi"] - null["score"]["lo"] > 0.2, null["score"]  # real per-prompt preferences, both ways
    assert null["max_abs_gap"] < 1e-9 and null["removal"]["max_abs_frozen_error"] < 1e-9


def test_ioi_heads_come_from_the_role_table():
    def att(io, s1, s2):
        return {"attention": {"end_io": {"value": io}, "end_s1": {"value": s1}, "end_s2": {"value": s2}}}

    data = {"roles": [{"role": "moves S2", "head": "L0H4"}, {"role": "moves names", "head": "L3H0"},
                      {"role": "weak", "head": "L2H1"}, {"role": "joint", "head": "L2H7, L3H0"},
                      {"role": "none", "head": None}, {"role": "writes", "head": "MLP3"}],
            "heads": {"L0H4": att(0.0, 0.0, 0.98), "L3H0": att(0.48, 0.38, 0.01), "L2H1": att(0.1, 0.1, 0.1)}}
    got = ioi_heads(data)
    assert [(h.name, h.key_a, h.key_b) for h in got] == [("L0H4", "S2", "IO"), ("L3H0", "IO", "S2"),
                                                         ("L3H0", "IO", "S1")]
    assert ioi_heads(None) == []


def test_role_node_labels():
    from circuits.graph import Node

    assert role_node(None, "END") == "const@END"
    assert role_node(Node("token", -1, 3, 17), "IO") == "emb@IO"
    assert role_node(Node("attn_feature", 0, 3, 12), "S2") == "A0#12@S2"
    assert role_node(Node("mlp_error", 1, 3, -1), "END") == "errM1@END"


def test_ioi_study_passes_the_replacement_model_to_the_head_analysis(monkeypatch):
    """Issue 17 item 5: the head analysis gets the ReplacementModel (so it reports the role heads' features)."""
    from circuits.studies import heads
    from circuits.studies.ioi import IOIStudy

    seen = {}
    monkeypatch.setattr(heads, "ioi_head_analysis", lambda model, *a, **k: seen.setdefault("model", model))
    rm = types.SimpleNamespace(model=object(), attention_saes={})
    IOIStudy().head_analysis(rm, [], [], 0)
    assert seen["model"] is rm


def test_head_analysis_with_the_replacement_model_reports_the_role_heads_features(tmp_path):
    """Issue 17 item 5 end to end on the planted IOI model of tests/test_heads.py: given a ReplacementModel with an
    attention SAE at the name mover's layer, the analysis lists that head's features (their parts adding up is
    tested in tests/test_heads.py) and the rendered section shows them; `ioi_heads` picks the name mover for the QK section."""
    from circuits.studies.heads import ioi_head_analysis, render_head_section
    from tests.conftest import random_dictionaries
    from tests.test_heads import _planted, _prompts

    torch.manual_seed(0)
    model = _planted(tmp_path)
    ev, ref = _prompts(model, 16, 11), _prompts(model, 16, 12)
    rm = ReplacementModel(model, random_dictionaries(model, d_sae=40, k=5, kinds=("attention_sae",), layers=[1]))
    data = ioi_head_analysis(rm, ev, ref, seed=0)
    assert "L1H0" in data["features"], data.get("features")
    f = data["features"]["L1H0"]
    assert f["role"] == "name mover" and len(f["top"]) == 5
    assert all(abs(t["share"] * f["total"] - t["part"]) < 1e-9 for t in f["top"]) and f["top"][0]["part"] != 0
    text = render_head_section(data)
    assert "### Attention-SAE features of the role heads" in text and "| L1H0 | name mover |" in text
    assert "A1#" in text
    # the replication on a disjoint prompt set: the planted name mover is found there too
    from circuits.studies.heads import replication

    data["replication"] = replication(data, ioi_head_analysis(rm, _prompts(model, 16, 13), ref, seed=0), 16)
    row = next(r for r in data["replication"]["rows"] if r["head"] == "L1H0")
    assert row["replicated"] and row["role"] == "name mover"
    assert "**Replication**" in render_head_section(data) and "| name mover | L1H0 |" in render_head_section(data)
    role_row = next(x for x in render_head_section(data).splitlines() if x.startswith("| name mover | L1H0 |"))
    assert "confirmed, replicated" in role_row  # the role table says it in the role's own row
    data["replication"]["rows"] = [{**r, "replicated": False} for r in data["replication"]["rows"]]
    role_row = next(x for x in render_head_section(data).splitlines() if x.startswith("| name mover | L1H0 |"))
    assert "confirmed, **not replicated**" in role_row
    heads = ioi_heads(data, min_attention=0.5)
    assert [(h.name, h.key_a, h.key_b) for h in heads][:1] == [("L1H0", "IO", "S2")]


def test_organism_ioi_section_is_exact_in_float32():
    """On the organism (float32) and a few IOI prompts: the aggregated decomposition sums to each score, removing
    the top query-side role nodes at END moves the frozen preference by minus their summed contribution, and the
    IOI study's head choice feeds it."""
    from circuits import load_dictionaries, load_model
    from circuits.studies.base import prepare
    from circuits.studies.ioi import IOIStudy

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model))
    study = IOIStudy()
    prompts = prepare(rm, study, study.prompts(model, 4, 7))
    heads = [QKHead(3, 0, "END", "IO", "S2"), QKHead(0, 4, "END", "S2", "IO")]
    out = qk_section(rm, prompts, heads, seed=0)
    for h in out["heads"]:
        scale = max(1.0, abs(h["score"]["value"]))
        assert h["n"] == 4 and h["max_abs_gap"] < 1e-4 * scale
        r = h["removal"]
        assert 1 <= len(r["nodes"]) <= 5 and r["prompts_with_any"] == r["n_test"] == 2  # layer 0: only the
        # embedding at END; ranked on prompts 0-1, removed on 2-3
        assert r["max_abs_frozen_error"] < 1e-4 * scale, r
    assert out["heads"][1]["score"]["lo"] > 0  # L0H4 prefers S2 on every prompt
