"""Case studies: the per-prompt maths on tiny random models, the checks on a planted-circuit model whose answer is
known, the positional verdict logic, and the IOI study end to end on the organism (in-process and in two worker
processes, byte-identical reports)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from circuits.attribution import Contrast, attribute
from circuits.errors import CircuitsError
from circuits.interventions import Ablation, run_edited
from circuits.pruning import total_effects
from circuits.replacement import ReplacementModel
from circuits.studies.ablate import Circuit, circuit_masks, circuit_metrics, convention_ablation
from circuits.studies.analysis import component_rollup, integrated_gradients
from circuits.studies.base import MIN_GROUP, Study, StudyPrompt, group_means, prepare, reference_means
from circuits.studies.checks import AblateRoleFeatures, PatchRoleFeatures
from circuits.studies.ioi import IOIStudy, PositionalCheck, positional_verdict
from tests.conftest import build_tiny, random_dictionaries


@pytest.fixture(scope="module")
def ioi_tiny(rm64):
    prepared = prepare(rm64, IOIStudy("train"), IOIStudy("train").prompts(rm64.model, 4, 0))
    return rm64, prepared


def test_total_effects_equal_gradient_times_activation(ioi_tiny):
    """Signed path sums over the graph = gradient × value in the frozen replacement model (features live, errors
    held): for every feature and error node."""
    rm, prepared = ioi_tiny
    pp = prepared[0]
    cache = rm.run(pp.tokens)
    graph = attribute(rm, pp.tokens, Contrast(pp.answer, pp.wrong), cache=cache)
    effects = total_effects(graph)
    store: dict = {}
    with torch.enable_grad():
        logits = run_edited(rm, cache, frozen=True, grad_codes=store)[0]
        names = list(store)
        grads = torch.autograd.grad(pp.metric(logits), [t for n in names for t in store[n]])
    by_name = {d.cfg.name: d for d in rm.dictionaries}
    checked = 0
    for j, name in enumerate(names):
        d = by_name[name]
        kind = "attn" if d.cfg.kind != "transcoder" else "mlp"
        g_code, g_err = grads[2 * j], grads[2 * j + 1]
        for row, node in enumerate(graph.nodes):
            if node.layer != d.cfg.layer:
                continue
            if node.kind == f"{kind}_feature":
                expect = g_code[node.pos, node.index] * cache.codes[name][node.pos, node.index]
            elif node.kind == f"{kind}_error":
                expect = (g_err[node.pos] * cache.errors[name][node.pos]).sum()
            else:
                continue
            assert abs(float(effects[row]) - float(expect)) <= 1e-9 * (1 + abs(float(expect)))
            checked += 1
    assert checked > 50


def test_component_rollup_splits_feature_effects_exactly(ioi_tiny):
    """Head shares of each attention layer's features (and the MLP layers') sum to the graph's total effects."""
    rm, prepared = ioi_tiny
    pp = prepared[1]
    cache = rm.run(pp.tokens)
    graph = attribute(rm, pp.tokens, Contrast(pp.answer, pp.wrong), cache=cache)
    effects = total_effects(graph)
    roll = component_rollup(rm, cache, pp)
    for layer in range(rm.n_layers):
        for site, kind in (("attn", "attn_feature"), ("mlp", "mlp_feature")):
            from_graph = sum(float(effects[i]) for i, n in enumerate(graph.nodes) if n.kind == kind and n.layer == layer)
            from_roll = sum(v[0] for k, v in roll.items() if k[0] == site and k[1] == layer)
            assert from_roll == pytest.approx(from_graph, rel=1e-9, abs=1e-9)
    heads = {k[2] for k in roll if k[0] == "attn"}
    assert heads == set(range(rm.cfg.n_heads))


def test_gates_interpolate_between_ablated_and_live(ioi_tiny):
    rm, prepared = ioi_tiny
    pp = prepared[0]
    cache = rm.run(pp.tokens)
    abl = group_means(rm, prepared)[pp.group]
    active = {n: cache.codes[n] != 0 for n in cache.codes}

    def gates(value: float):
        return {n: (torch.where(a, torch.full(a.shape, value), torch.ones(a.shape)), torch.full((cache.n_pos,), value))
                for n, a in active.items()}

    live = run_edited(rm, cache, gates=gates(1.0), ablation=abl)[0]
    torch.testing.assert_close(live, cache.logits, rtol=0, atol=1e-10)
    none = ({k: ~v for k, v in active.items()}, {k: torch.zeros(cache.n_pos, dtype=torch.bool) for k in active})
    # (inactive features live in both runs here: gates of 1 on them, and kept live by the masks)
    torch.testing.assert_close(run_edited(rm, cache, gates=gates(0.0), ablation=abl)[0],
                               run_edited(rm, cache, keep=none, ablation=abl)[0], rtol=0, atol=1e-10)


def test_integrated_gradients_are_complete(tiny64):
    """Σ IG scores → m(model) − m(every node ablated) as the number of steps grows (midpoint rule), for continuous
    activations (ReLU dictionaries; TopK's selection jumps are discontinuities IG cannot see, which the study report
    quantifies as its "IG check")."""
    model, _ = tiny64
    rm = ReplacementModel(model, random_dictionaries(model, activation="relu", seed=3))
    prepared = prepare(rm, IOIStudy("train"), IOIStudy("train").prompts(model, 3, 0))
    pp = prepared[2]
    cache = rm.run(pp.tokens)
    abl = Ablation("zero")
    gap = float(pp.metric(cache.logits))
    errs = []
    for steps in (1, 64):
        feats, empty, err_scores = integrated_gradients(rm, cache, pp, abl, steps)
        total = sum(float(t.sum()) for t in feats.values()) + sum(err_scores.values())
        errs.append(abs(total - (gap - empty)))
    # every feature is gated (inactive ones too: they switch on along the path), so ReLU kinks slow convergence
    assert errs[1] < 0.15 * abs(gap - empty) + 1e-6
    assert errs[1] < errs[0]


# -- a planted circuit --------------------------------------------------------------------------------------------

ON, ANSWER, WRONG = "apple", "ball", "book"


class PlantedStudy(Study):
    """Random five-word prompts ending on ON; the corrupted prompt ends on another word."""

    name = "planted"
    title = "planted"
    roles = ("BOS", "END")

    def prompts(self, model, n, seed):
        from circuits.organism.corpus import induction_word_pool

        pool = sorted(w for w in induction_word_pool() if w not in (ON, ANSWER, WRONG))
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            words = rng.sample(pool, 5)
            out.append(StudyPrompt(" ".join(words[:4] + [ON]), " ".join(words), ANSWER, WRONG, "all"))
        return out

    def assign_roles(self, model, prompt, tokens):
        return self.bos_end_roles(len(tokens))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A float64 2-layer model where residual dimension 0 is written only by MLP neuron 0 of layer 1 (which fires on
    the token ON) and read only by the contrast ANSWER − WRONG; transcoder L1 feature 0 *is* that neuron, so its
    error on dimension 0 is exactly zero. The answer is known: the metric is carried by that one feature at END."""
    from circuits.studies.base import single_token_id

    model = build_tiny(tmp_path_factory.mktemp("planted"), dtype=torch.float64, act_fn="relu")
    dicts = random_dictionaries(model, activation="relu", seed=1)
    on, a, b = (single_token_id(model, w) for w in (ON, ANSWER, WRONG))
    with torch.no_grad():
        model.W_E[:, 0] = 0
        model.W_pos[:, 0] = 0
        for blk in model.blocks:
            blk.attn.W_O[..., 0] = 0
            blk.attn.b_O[0] = 0
            blk.mlp.W_out[:, 0] = 0
            blk.mlp.b_out[0] = 0
        mlp = model.blocks[1].mlp
        # neuron 0 reads the direction that separates END = ON from other END words in its own input (a probe)
        study = PlantedStudy()
        prompts = study.prompts(model, 8, 0)
        hook = "blocks.1.ln2.hook_normalized"
        on_x = torch.stack([model.run_with_cache(p.clean, names_filter=hook)[1][hook][0, -1] for p in prompts])
        off_x = torch.stack([model.run_with_cache(p.corrupt, names_filter=hook)[1][hook][0, -1] for p in prompts])
        direction = on_x.mean(0) - off_x.mean(0)
        direction = direction / direction.norm()
        lo, hi = float((off_x @ direction).max()), float((on_x @ direction).min())
        assert hi > lo, "the probe must separate ON from the other words"
        ln2 = model.blocks[1].ln2  # the MLP reads hook_normalized · w + b
        mlp.W_in[:, 0] = 20 * direction / (hi - lo) / ln2.w
        mlp.b_in[0] = -20 * (lo + hi) / 2 / (hi - lo) - ln2.b @ mlp.W_in[:, 0]  # pre ≥ +10 on ON, ≤ −10 elsewhere
        mlp.W_out[0] = 0
        mlp.W_out[0, 0] = 8.0
        model.W_U[:, b] = model.W_U[:, a]
        model.W_U[0, a], model.W_U[0, b] = 1.0, 0.0
        tc = next(d for d in dicts if d.cfg.kind == "transcoder" and d.cfg.layer == 1)
        tc.b_in_param.zero_()
        tc.W_enc[:, 0] = ln2.w * mlp.W_in[:, 0]  # the transcoder reads hook_normalized itself
        tc.b_enc[0] = mlp.b_in[0] + ln2.b @ mlp.W_in[:, 0]
        tc.W_dec[:, 0] = 0
        tc.b_dec[0] = 0
        tc.W_dec[0] = mlp.W_out[0]
    rm = ReplacementModel(model, dicts, name="planted")
    prepared = prepare(rm, study, prompts)
    # put the decision threshold between ON and not-ON prompts
    with torch.no_grad():
        on_m = [float(pp.metric(model(pp.tokens[None])[0])) for pp in prepared]
        off_m = [float(pp.metric(model(pp.corrupt_tokens[None])[0])) for pp in prepared]
        assert min(on_m) > max(off_m) + 1.0, "the planted neuron must separate ON from other words"
        model.b_U[b] += (min(on_m) + max(off_m)) / 2  # metric' = metric − threshold
    key = ("mlp_feature", 1, "END", 0)
    return rm, study, prepared, key


def test_ablating_the_planted_feature_flips_the_answer(planted):
    rm, study, prepared, key = planted
    check = AblateRoleFeatures("END", k=1)
    context = {"ranking": [(key, 1.0)]}
    rows = []
    for pp in prepared:
        cache = rm.run(pp.tokens)
        rows.append(check.run(rm, cache, pp, Ablation("zero"), context))
    assert all(r["before"] > 0 and r["after"] < 0 for r in rows)  # the feature alone carries the answer
    summary = check.summarize(rows)
    assert summary["verdict_word"] == "confirmed" and summary["fraction_lowered"] == 1.0
    assert summary["effect"]["lo"] > summary["baseline"]["hi"]


def _other_feature(rm, prepared, key):
    """A transcoder L1 feature other than the planted one that is active at END on every prompt (a non-circuit)."""
    name = next(d.cfg.name for d in rm.dictionaries if d.cfg.kind == "transcoder" and d.cfg.layer == 1)
    on = torch.stack([rm.run(pp.tokens).codes[name][-1] != 0 for pp in prepared]).all(0)
    on[key[3]] = False
    return ("mlp_feature", 1, "END", int(torch.nonzero(on).flatten()[0]))


def test_negative_controls_are_not_confirmed(planted):
    """A planted non-circuit (another feature active at END) and a role that does not matter (BOS: the metric is
    decided at END) must come out "not confirmed" — the checks can say no."""
    rm, study, prepared, key = planted
    other = _other_feature(rm, prepared, key)
    for role, ranking in (("END", [(other, 1.0)]), ("BOS", [(("mlp_feature", 1, "BOS", key[3]), 1.0)])):
        check = AblateRoleFeatures(role, k=1)
        rows = [check.run(rm, rm.run(pp.tokens), pp, Ablation("zero"), {"ranking": ranking}) for pp in prepared]
        summary = check.summarize(rows)
        assert summary["verdict_word"] == "not confirmed", (role, summary["verdict"])
    patch = PatchRoleFeatures("END", "mlp_feature", k=1)
    rows = [patch.run(rm, rm.run(pp.tokens), pp, None, {"ranking": [(other, 1.0)]}) for pp in prepared]
    assert patch.summarize(rows)["verdict_word"] != "confirmed"


def test_group_means_equal_the_mean_of_one_prompt_runs(planted, monkeypatch):
    """Mean ablation values: the batched `group_means` (batches smaller than the group here) equal the float64 mean
    of `run`'s codes and errors over each group's prompts; a group whose prompts do not line up is refused."""
    import circuits.studies.base as base

    rm, study, prepared, key = planted
    monkeypatch.setattr(base, "MEANS_BATCH", 3)
    means = group_means(rm, prepared)
    for g in {pp.group for pp in prepared}:
        runs = [rm.run(pp.tokens) for pp in prepared if pp.group == g]
        for name in runs[0].codes:
            want_c = torch.stack([r.codes[name].double() for r in runs]).mean(0).float()
            want_e = torch.stack([r.errors[name].double() for r in runs]).mean(0).float()
            assert torch.allclose(means[g].code_means[name], want_c, rtol=0, atol=1e-6), (g, name)
            assert torch.allclose(means[g].error_means[name], want_e, rtol=0, atol=1e-6), (g, name)
    short = base.PreparedPrompt(99, prepared[0].prompt, prepared[0].tokens[:-1], prepared[0].corrupt_tokens[:-1],
                                prepared[0].roles[:-1], prepared[0].role_index[:-1], prepared[0].answer,
                                prepared[0].wrong)
    with pytest.raises(CircuitsError, match="prompts of a group must line up"):
        group_means(rm, [prepared[0], short], key=lambda pp: "one")


def test_planted_circuit_is_faithful_and_a_non_circuit_is_not(planted):
    """Zero ablation: keeping the planted feature (with the error nodes) keeps the answer on every prompt; keeping
    another active feature instead loses it. (Under mean ablation over these all-ON prompts the planted feature's
    mean still carries the answer, so the two are not separable there.)"""
    rm, study, prepared, key = planted
    other = _other_feature(rm, prepared, key)
    means = group_means(rm, prepared)
    circuits = [Circuit("planted", frozenset([key]), True, "zero"), Circuit("other", frozenset([other]), True, "zero")]
    for pp in prepared:
        cache = rm.run(pp.tokens)
        kept, wrong = circuit_metrics(rm, cache, pp, circuits, means[pp.group])
        assert kept > 0 > wrong


def test_patching_the_planted_feature_from_the_corrupted_prompt(planted):
    """Patching feature 0 at END from the corrupted prompt gives exactly the corrupted metric when the rest of
    END's computation feeds nothing else into dimension 0."""
    rm, study, prepared, key = planted
    check = PatchRoleFeatures("END", "mlp_feature", k=1)
    context = {"ranking": [(key, 1.0)]}
    rows = [check.run(rm, rm.run(pp.tokens), pp, None, context) for pp in prepared]
    for r in rows:
        assert r["source"] < 0 < r["before"]
        assert r["after_top"] < 0  # the answer flips with one feature patched
    summary = check.summarize(rows)
    assert summary["flipped_top"] == 1.0
    assert summary["verdict_word"] == "confirmed"


def test_positional_verdict_logic():
    """Rows where the order is written at S2 on clean and filler prompts but not without 'and' → relative."""
    rows = []
    for i in range(16):
        order = "ABBA" if i % 2 == 0 else "BABA"
        sig = {0: 1.0} if order == "ABBA" else {1: 1.0}
        row = {"order": order, "index": i}
        for v, s2 in (("clean", sig), ("filler", sig), ("no_and", {2: 1.0})):
            row[v] = {"metric": 1.0, "S2": s2, "END": sig}
        rows.append(row)
    res = PositionalCheck().summarize(rows)
    assert res["probe_S2_clean"] == 1.0 and res["probe_S2_filler"] == 1.0 and res["probe_S2_no_and"] == 0.5
    assert res["probe_S2_clean_auc"] == 1.0 and res["probe_S2_no_and_auc"] == 0.5
    assert res["verdict"].startswith("relative")


def _scores(auc_target: float, n: int = 100, shift: float = 0.0) -> list[float]:
    """Probe scores of n test prompts (ABBA, BABA alternating: `_LABELS`) whose AUC is `auc_target`: the first
    round(2·(1 − auc)·n/2) ABBA prompts score like BABA ones (ties: half), the rest above every BABA prompt."""
    k = round(2 * (1 - auc_target) * n / 2)  # ABBA prompts that do not separate
    out, seen = [], 0
    for i in range(n):
        if i % 2 == 0:
            out.append((0.0 if seen < k else 1.0) + shift)
            seen += 1
        else:
            out.append(0.0 + shift)
    return out


_LABELS = [i % 2 == 0 for i in range(100)]


def _verdict(clean, filler, no_and, **more):
    return positional_verdict({"clean": _scores(clean), "filler": _scores(filler), "no_and": _scores(no_and),
                               **{k: _scores(v) for k, v in more.items()}}, _LABELS)


@pytest.mark.parametrize("clean, filler, no_and, expect", [
    (1.0, 1.0, 0.5, "relative to 'and'"),
    (1.0, 0.5, 1.0, "absolute position"),
    (1.0, 1.0, 1.0, "neither edit breaks it"),
    (1.0, 0.5, 0.5, "mixed"),
    (0.6, 0.6, 0.3, "inconclusive: the order is not reliably readable"),
    (1.0, 0.94, 0.5, "inconclusive: the filler has an unclear effect"),
])
def test_positional_verdict_every_branch(clean, filler, no_and, expect):
    res = _verdict(clean, filler, no_and)
    assert res["verdict"].startswith(expect), res["verdict"]


def test_auc_is_the_mann_whitney_statistic():
    from circuits.studies.ioi import auc

    assert auc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert auc([0, 1, 2, 3], [True, True, False, False]) == 0.0
    assert auc([1, 1, 1, 1], [True, False, True, False]) == 0.5  # ties count half
    assert auc([2, 0, 1, 1], [True, True, False, False]) == 0.5
    assert np.isnan(auc([1, 2], [True, True]))


def test_a_shift_of_every_score_is_not_a_loss_of_the_order_signal():
    """The review's case: removing 'and' moved every probe score past the clean midpoint (accuracy at that threshold
    0.86 → 0.56) while the two orders stayed as separable as under the filler. The verdict reads the AUC, which a
    shift cannot change: an edit that only shifts the scores "keeps" the signal."""
    shifted = _scores(1.0, shift=5.0)
    res = positional_verdict({"clean": _scores(1.0), "filler": _scores(1.0), "no_and": shifted}, _LABELS)
    assert res["probe_auc_drop_no_and"]["value"] == 0.0
    assert res["verdict"].startswith("neither edit breaks it"), res["verdict"]
    rows = []  # and through the check's own probe: a no-'and' variant whose codes all move keeps its AUC
    for i in range(16):
        order = "ABBA" if i % 2 == 0 else "BABA"
        sig = {0: 1.0} if order == "ABBA" else {1: 1.0}
        moved = {0: 4.0, 1: 1.0} if order == "ABBA" else {0: 3.0, 1: 2.0}  # both past the midpoint, same ranking
        row = {"order": order, "index": i}
        for v, s2 in (("clean", sig), ("filler", sig), ("no_and", moved)):
            row[v] = {"metric": 1.0, "S2": s2, "END": sig}
        rows.append(row)
    res = PositionalCheck().summarize(rows)
    assert res["probe_S2_no_and"] == 0.5 and res["probe_S2_no_and_auc"] == 1.0  # midpoint says lost; AUC kept


# -- prompt sets, reference means, conventions, baselines -----------------------------------------------------------


@pytest.mark.parametrize("name", ["ioi", "induction", "two_hop"])
def test_prompt_sets_are_disjoint(name):
    from circuits.studies import get_study

    study = get_study(name)
    sets = study.prompt_sets(None, 40, 3)
    texts = [[p.clean for p in v] for v in sets.values()]
    assert all(len(t) == len(set(t)) for t in texts)
    assert sum(len(t) for t in texts) == len(set().union(*map(set, texts)))
    assert sets["evaluation"] and sets["selection"] and sets["reference"]
    if name != "two_hop":
        assert len(sets["evaluation"]) == 40 and len(sets["reference"]) >= MIN_GROUP
    else:  # seen and unseen questions in every set; at least MIN_GROUP reference cities (one group)
        for v in sets.values():
            assert {p.meta["subset"].split()[0] for p in v} == {"seen", "unseen"}
        assert len(sets["reference"]) >= MIN_GROUP
    assert study.prompt_sets(None, 40, 3) == sets  # same seed, same sets


def test_ioi_test_set_is_new_disjoint_and_tokenizes():
    from circuits import load_model
    from circuits.organism.corpus import IOI_HELDOUT_TEMPLATES, IOI_TRAIN_TEMPLATES
    from circuits.studies.ioi import TEST_TEMPLATES

    model, _ = load_model("organism")
    study = IOIStudy()
    assert not set(TEST_TEMPLATES) & set(IOI_TRAIN_TEMPLATES + IOI_HELDOUT_TEMPLATES)
    main, test = study.prompt_sets(model, 40, 0), study.test_sets(model, 40, 0)
    main_texts = {p.clean for v in main.values() for p in v}
    assert not main_texts & {p.clean for v in test.values() for p in v}
    assert not {p.clean for p in test["test"]} & {p.clean for p in test["test_reference"]}
    unk = model.tokenizer.unk_token_id if hasattr(model.tokenizer, "unk_token_id") else None
    for p in test["test"][: 2 * len(TEST_TEMPLATES)]:
        assert unk is None or unk not in model.to_tokens(p.clean)[0].tolist(), p.clean
        assert model.to_tokens(p.clean).shape == model.to_tokens(p.corrupt).shape


def test_reference_means_fall_back_to_a_coarser_grouping(ioi_tiny):
    """Groups smaller than MIN_GROUP use the layout grouping (with a warning); means never use the served prompts."""
    rm, _ = ioi_tiny
    study = IOIStudy("train")
    every = prepare(rm, study, study.prompts(rm.model, 16, 5))
    ref = every[:10]
    served = [pp for pp in every[10:] if pp.layout in {r.layout for r in ref} or pp.group in {r.group for r in ref}]
    assert served
    means = reference_means(rm, ref, served)
    assert means.warnings and all(means.counts[means.key(pp)] < MIN_GROUP for pp in served)
    assert any(means.key(pp) == pp.layout for pp in served if pp.layout in means.means)
    big = reference_means(rm, ref, served, min_size=1)
    assert all(big.key(pp) == pp.group for pp in served if pp.group in big.means)


def test_batched_circuits_equal_run_edited_under_every_convention(ioi_tiny):
    """`circuit_metrics` (one batch row per circuit) = `run_edited` with the same masks and ablated values; standard
    mean ablation moves inactive features (unlike the held-inactive variant)."""
    rm, prepared = ioi_tiny
    pp = prepared[0]
    cache = rm.run(pp.tokens)
    abl = group_means(rm, prepared)[pp.group]
    rng = random.Random(0)
    keys = [(f"{d.cfg.site}_feature", d.cfg.layer, role, i) for d in rm.dictionaries for role in ("IO", "S2", "END")
            for i in rng.sample(range(d.d_sae), 3)]
    circuits = [Circuit(f"c{i}", frozenset(rng.sample(keys, 6)), i % 2 == 0, conv)
                for i, conv in enumerate(["mean", "zero", "held"] * 3)] + [Circuit("e", frozenset(), False, "mean")]
    got = circuit_metrics(rm, cache, pp, circuits, abl, batch=4)
    for c, v in zip(circuits, got, strict=True):
        want = run_edited(rm, cache, keep=circuit_masks(rm, pp, c.keys, c.errors),
                          ablation=convention_ablation(abl, cache, c.convention))[0]
        assert v == pytest.approx(float(pp.metric(want.detach())), abs=1e-9)
    shifted = Ablation("mean", {n: v + 0.1 for n, v in abl.code_means.items()}, abl.error_means)
    empty = {conv: circuit_metrics(rm, cache, pp, [Circuit("e", frozenset(), False, conv)], shifted)[0]
             for conv in ("mean", "held")}
    assert empty["mean"] != empty["held"]


def test_stratified_random_matches_strata():
    from circuits.studies.runner import stratified_random

    circuit = [("attn_feature", 1, "S2", i) for i in range(3)] + [("mlp_feature", 2, "END", 0)]
    presence = {("attn_feature", 1, "S2", i): 0.5 for i in range(10)}
    presence.update({("attn_feature", 1, "S2", 99): 0.1, ("mlp_feature", 2, "END", 5): 0.9,
                     ("mlp_feature", 0, "END", 7): 0.9})
    pick, wider = stratified_random(circuit, presence, "s")
    assert len(pick) == 4 and wider == 0 and not set(pick) & set(circuit)
    assert sorted(k[:3] for k in pick) == sorted(k[:3] for k in circuit)
    assert ("attn_feature", 1, "S2", 99) not in pick  # active on < 25% of prompts
    pick, wider = stratified_random(circuit + [("mlp_feature", 2, "END", 1)], presence, "s")
    assert wider == 1 and ("mlp_feature", 0, "END", 7) in pick  # same kind and role, another layer


def test_faithfulness_table_known_value():
    """Per-prompt metrics built so that the circuit keeps exactly a quarter of the metric (a large shared offset per
    prompt): the table's value is 0.25 and its paired interval is tight around it; random keeps 0.1."""
    from circuits.studies.runner import RANDOM_DRAWS, faithfulness_table

    rng = random.Random(0)
    records = []
    for i in range(40):
        o = rng.gauss(0, 5)
        curve = {f"{c}:{w}": o for c in ("mean", "zero", "held") for w in ("empty", "errors")}
        curve.update({"mean:ig:10:0": o + 1 + rng.gauss(0, 0.01), "mean:ig:10:1": o + 2})
        curve.update({f"{c}:ig:10:{e}": o + 2 for c in ("zero", "held") for e in (0, 1)})
        curve.update({f"mean:random#{d}:10:{e}": o + 0.4 for d in range(RANDOM_DRAWS) for e in (0, 1)})
        records.append({"index": i, "metric": o + 4, "curve": curve})
    plan = [Circuit(label, frozenset(), False, label.split(":")[0]) for label in records[0]["curve"]]
    table = faithfulness_table(records, plan, {"ig": []}, seed=0)
    row = table["rows"][0]
    assert row["k"] == 10 and row["ig_features_only"]["value"] == pytest.approx(0.25, abs=1e-3)
    assert row["ig_features_only"]["lo"] <= 0.25 <= row["ig_features_only"]["hi"]
    assert row["ig_features_only"]["hi"] - row["ig_features_only"]["lo"] < 0.01
    assert row["ig_with_errors"]["value"] == pytest.approx(0.5)
    assert row["random_features_only"]["value"] == pytest.approx(0.1)
    assert row["ig_minus_random_features_only"]["value"] == pytest.approx(0.15, abs=1e-3)
    # a second ranking: paired differences to IG; one that keeps as much as IG is not told apart from it (interval
    # across 0), one that keeps less is
    for r in records:
        o = r["curve"]["mean:empty"]
        r["curve"].update({"mean:atp:10:0": r["curve"]["mean:ig:10:0"] + rng.gauss(0, 0.05),
                           "mean:atp:10:1": o + 2, "mean:influence:10:0": o + 0.6, "mean:influence:10:1": o + 2})
    plan = [Circuit(label, frozenset(), False, label.split(":")[0]) for label in records[0]["curve"]]
    row = faithfulness_table(records, plan, {"ig": [], "atp": [], "influence": []}, seed=0)["rows"][0]
    same, worse = row["ig_minus_atp_features_only"], row["ig_minus_influence_features_only"]
    assert same["lo"] < 0 < same["hi"]
    assert worse["value"] == pytest.approx(0.1, abs=1e-3) and worse["lo"] > 0


# -- end to end on the organism -------------------------------------------------------------------------------------


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "timings.json"}


def _intervals(x, path=""):
    """Every interval dict (value, lo, hi, n) nested in `x`, with its path."""
    if isinstance(x, dict):
        if {"value", "lo", "hi", "n"} <= set(x):
            yield path, x
        else:
            for k, v in x.items():
                yield from _intervals(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _intervals(v, f"{path}[{i}]")


def test_ioi_study_end_to_end_reproducible_and_parallel(tmp_path):
    """A small IOI study runs end to end; the report is byte-identical between an in-process run and a run split
    over two worker processes (same seed), apart from timings, whatever torch threads the caller set (the study
    runs single-threaded in every process and restores the caller's count); its numbers are sane."""
    import torch

    from circuits.studies import StudySpec, run_study, write_report
    from circuits.studies.report import FILES

    spec = StudySpec("ioi", n=12, seed=0, ig_steps=2)
    caller = torch.get_num_threads()
    torch.set_num_threads(2)  # the in-process run's caller asks for two threads; the workers have one each
    try:
        one = run_study(spec, workers=1, top=20, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(caller)
    write_report(one, tmp_path / "report")
    a = _files(tmp_path / "report")
    two = run_study(spec, workers=2, top=20, progress=False)
    write_report(two, tmp_path / "report")  # the same folder: the report names its own path
    b = _files(tmp_path / "report")
    assert set(FILES) <= set(a)
    assert a == b
    d = one.data
    sets = d["sets"]
    assert d["n_prompts"] == 12 and d["circuit"]["n_features"] == 20 and sets["disjoint"]
    assert sets["evaluation"]["n"] == 12 and sets["selection"]["n"] == 6 and sets["reference"]["n"] >= 20
    assert sets["test"]["n"] >= 8 and d["test"]["n"] == sets["test"]["n"]
    assert sets["main_groups"]["warnings"]  # 20 reference prompts over 6 templates × orders: groups are small
    assert set(d["checks"]) == {"ablate_S2_features", "ablate_END_features", "patch_END_attn_from_swapped",
                                "positional"}
    for ck in d["checks"].values():
        assert ck["verdict"].split(":")[0].split(" (")[0] in ("confirmed", "not confirmed", "inconclusive",
                                                              "relative to 'and'", "absolute position",
                                                              "neither edit breaks it", "mixed")
    found = list(_intervals(d))
    assert len(found) > 50
    for path, iv in found:  # every value lies in its own bootstrap interval, over the prompts it claims
        if iv["lo"] is not None and iv["lo"] == iv["lo"]:
            assert iv["lo"] - 1e-9 <= iv["value"] <= iv["hi"] + 1e-9, path
            assert iv["n"] in (12, 6, sets["test"]["n"]) or ".by_subset" in path, path
    c = d["circuit"]
    # the full circuit with errors cannot be worse than nothing kept by much, and the model's metric is positive
    assert d["curve"]["full_metric"]["lo"] > 0 and d["metrics"]["accuracy"] > 0.9
    assert -0.5 < c["features_only"]["value"] < 1.5 and -0.5 < c["with_errors"]["value"] < 1.5
    assert {r["k"] for r in d["curve"]["rows"]} == {10, 20, 50, 100, 200}  # up to the 200 candidates of 6 prompts
    assert {"ig_features_only", "influence_features_only", "atp_features_only", "act_grad_features_only",
            "random_features_only", "ig_zero_features_only", "ig_held_features_only"} <= set(d["curve"]["rows"][0])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Standard mean ablation, features alone" in report and "circuits study ioi --n 12" in report
    assert report.index("## Headline") < report.index("held-inactive") and "## Test set" in report
    from circuits.export import read_json

    g = read_json(tmp_path / "report" / "circuit.json")
    assert g.metadata["aggregated"] and g.metadata["token_strings"][0] == "BOS"
    assert sum(n.kind.endswith("_feature") for n in g.nodes) <= 20


def test_study_cli_lists_and_rejects_bad_input(capsys):
    from circuits.cli import main

    assert main(["study", "list"]) == 0
    out = capsys.readouterr().out
    assert "ioi" in out and "induction" in out and "two_hop" in out
    assert main(["study", "nosuch"]) == 2
    assert "unknown study 'nosuch'" in capsys.readouterr().err
    assert main(["study", "ioi", "--n", "2"]) == 2
    assert "--n must be at least 4" in capsys.readouterr().err
    assert main(["study", "induction", "--templates", "train"]) == 2
    assert "--templates applies to the ioi study only" in capsys.readouterr().err


def test_study_on_gpt2_offline_fails_fast_and_clearly(capsys, no_network):
    import time

    from circuits.cli import main

    t0 = time.perf_counter()
    assert main(["study", "ioi", "--model", "gpt2", "--dicts", "gpt2-transcoders", "--n", "8", "--workers", "1",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and "organism" in err
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("name", ["induction", "two_hop"])
def test_other_studies_prepare_on_the_organism(name):
    """The induction and two-hop datasets tokenize on the organism, line up with their corrupted prompts, and
    assign every role."""
    from circuits import load_dictionaries, load_model
    from circuits.studies import get_study

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    study = get_study(name)
    prepared = prepare(rm, study, study.prompts(model, 12, 0))
    for pp in prepared:
        assert set(study.roles) <= set(pp.roles)
        assert pp.answer != pp.wrong
    assert len({pp.group for pp in prepared}) == 1


def test_study_runs_with_transcoders_only(tiny64, tmp_path):
    """The GPT-2 configuration (transcoders, no attention SAEs: attention is a linear channel, autograd edges) runs
    end to end on a tiny model: no head traffic (it needs attention features), everything else present."""
    from circuits.studies import StudySpec, run_study, write_report

    model, dicts = tiny64
    rm = ReplacementModel(model, [d for d in dicts if d.cfg.kind == "transcoder"], name="tiny")
    spec = StudySpec("planted", model="tiny", dicts="tiny", n=8, seed=0, ig_steps=2)
    result = run_study(spec, rm=rm, study=PlantedStudy(), workers=1, top=5, progress=False)
    d = result.data
    assert d["traffic"] == [] and d["circuit"]["n_features"] == 5
    assert {c["site"] for c in d["components"]} == {"mlp"}
    assert d["sets"]["disjoint"] and d["sets"]["evaluation"]["n"] == 8
    write_report(result, tmp_path / "r")
    assert (tmp_path / "r" / "report.md").exists()
    assert "per_prompt_headline" not in d  # only on request: the report's data stay as they were
    kept = run_study(spec, rm=rm, study=PlantedStudy(), workers=1, top=5, progress=False,
                     keep_per_prompt=True).data["per_prompt_headline"]
    # the per-prompt values give back the report's headline ratio (faithfulness of the means)
    from circuits.studies import stats

    again = stats.faithfulness_interval(kept["features_only"], kept["empty"], kept["full"], seed=0)
    assert len(kept["prompts"]) == 8 and kept["k"] == d["circuit"]["k"]
    assert again.value == pytest.approx(d["circuit"]["features_only"]["value"], abs=1e-12)


# -- worker processes: unguarded scripts, failing workers (issue 16, item 11) ---------------------------------------

UNGUARDED_SCRIPT = """
from circuits.studies import StudySpec, run_study

result = run_study(StudySpec("ioi", n=4, ig_steps=2), workers=2, top=5, progress=False)
print("DONE", result.data["circuit"]["n_features"])
"""


def test_unguarded_script_runs_in_process_with_one_warning(tmp_path):
    """The README's study example saved as a script without `if __name__ == "__main__":` used to crash (each spawned
    worker re-ran the script; with n=200 after 11 minutes): now the work runs in the calling process, with one
    warning naming the guard, and finishes."""
    import subprocess
    import sys
    import time

    script = tmp_path / "study_script.py"
    script.write_text(UNGUARDED_SCRIPT)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DONE 5" in proc.stdout
    assert proc.stderr.count('`if __name__ == "__main__":` guard') == 1
    assert "BrokenProcessPool" not in proc.stderr and "bootstrapping" not in proc.stderr
    assert time.perf_counter() - t0 < 240


def test_main_guard_detection(tmp_path):
    """`main_module_guarded` is false for a call made by an unguarded top-level statement of the main script (also
    through a function), true under the guard (either operand order) and without a main script (`python -c`)."""
    import subprocess
    import sys

    probe = "from circuits.studies.batch import main_module_guarded as g\n"
    cases = {
        "print(g()[0])\n": "False",
        "def f():\n    return g()[0]\nprint(f())\n": "False",
        "def f():\n    return g()[0]\nif __name__ == '__main__':\n    print(f())\n": "True",
        "if '__main__' == __name__ and True:\n    print(g()[0])\n": "True",
    }
    for i, (body, want) in enumerate(cases.items()):
        script = tmp_path / f"s{i}.py"
        script.write_text(probe + body)
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == want, (body, out.stderr[-2000:])
    out = subprocess.run([sys.executable, "-c", probe + "print(g()[0])"], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_worker_pool_fails_at_the_first_error():
    """A failing call ends the pool at once (the running and pending calls before it are not waited for) and its
    exception is raised in the caller; a worker that dies is one clear CircuitsError."""
    import time

    from circuits.errors import CircuitsError
    from circuits.studies.batch import run_pool

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="invalid literal"):
        run_pool(eval, [("__import__('time').sleep(120)",), ("int('x')",), ("__import__('time').sleep(120)",)], 2)
    assert time.perf_counter() - t0 < 60
    with pytest.raises(CircuitsError, match="worker process died"):
        run_pool(eval, [("__import__('os')._exit(3)",)], 1)
    assert time.perf_counter() - t0 < 90
    assert run_pool(eval, [("1 + 1",), ("2 * 3",)], 2) == [2, 6]


def test_the_passes_of_a_study_share_one_worker_pool():
    """`WorkerPool` keeps its processes between runs (a study's passes reuse the workers and the state each built),
    starts them on demand, and after a failing call starts fresh ones; a new pool never reuses an old one's."""
    from circuits.studies.batch import WorkerPool

    pid = ("__import__('os').getpid()",)
    with WorkerPool(2) as pool:
        first = set(pool.run(eval, [pid]))
        assert len(first) == 1  # one call: one process started
        again = set(pool.run(eval, [pid, pid, pid, pid]))
        assert first <= again and len(again) <= 2
        with pytest.raises(ZeroDivisionError):
            pool.run(eval, [("1 / 0",)])
        after = set(pool.run(eval, [pid]))
        assert not after & again
    with WorkerPool(1) as other:
        assert not set(other.run(eval, [pid])) & (again | after)


def test_positional_control_edit_that_moves_the_probe_makes_the_verdict_inconclusive():
    """Negative control: when swapping a place or object word (positions, names and 'and' kept) also drops the
    probe, the filler / no-'and' drops say nothing about position, so no positional verdict is given."""
    assert _verdict(1.0, 1.0, 0.5, control=1.0)["verdict"].startswith("relative to 'and'")
    res = _verdict(1.0, 1.0, 0.5, control=0.6)
    assert res["verdict"].startswith("inconclusive: the control edit") and "probe_auc_drop_control" in res
    assert _verdict(1.0, 1.0, 0.5)["verdict"].startswith("relative to 'and'")  # reports made before the control


def test_the_control_edit_swaps_one_word_and_keeps_every_position():
    from circuits import load_model
    from circuits.studies.ioi import _control_edit

    model, _ = load_model("organism")
    prompts = IOIStudy().test_prompts(model, 8, 0)
    for p in prompts:
        ctrl = p.meta["control"]
        assert ctrl != p.clean and ctrl == _control_edit(p.clean)
        a, b = model.to_tokens(p.clean)[0], model.to_tokens(ctrl)[0]
        assert a.shape == b.shape and int((a != b).sum()) == 1


def test_study_spec_and_options_are_checked_like_the_cli():
    """The API ran n=2 (the CLI refuses n < 4), said 'only 0 distinct new prompts' for n=-3, and leaked a TypeError
    for a misspelt option."""
    from circuits.errors import CircuitsError
    from circuits.studies import StudySpec, get_study

    for bad, needle in ((dict(n=2), "at least 4"), (dict(n=-3), "at least 4"), (dict(n=4.5), "not a whole number"),
                        (dict(seed=-1), "0 or more")):
        with pytest.raises(CircuitsError, match=needle):
            StudySpec("ioi", **bad)
    with pytest.raises(CircuitsError, match="unknown option 'tempaltes'; its options: templates, template_texts"):
        get_study("ioi", tempaltes="heldout")
    with pytest.raises(CircuitsError, match="it takes no options"):
        get_study("induction", templates="heldout")
    assert get_study("two_hop").max_evaluation == 48 and get_study("ioi").max_evaluation is None


def test_two_hop_n_above_its_limit_is_cut_with_a_warning(monkeypatch, capsys, tmp_path):
    """`study two_hop --n 500` silently used 48 prompts and its report's Reproduce line said --n 500."""
    import circuits.studies
    from circuits.cli import main

    seen = {}

    def run_study(spec, **kw):
        seen["n"] = spec.n
        raise KeyboardInterrupt  # stop before any work (the CLI reports an interruption)

    monkeypatch.setattr(circuits.studies, "run_study", run_study)
    assert main(["study", "two_hop", "--n", "500", "--out", str(tmp_path / "r")]) != 0
    assert seen["n"] == 48 and "--n 500: the two_hop study has at most 48 evaluation prompts" in capsys.readouterr().err


def test_the_api_cuts_n_to_the_studys_limit_with_a_warning(monkeypatch):
    """StudySpec(n=500) for two_hop through the API used 48 prompts silently and wrote --n 500 in the report."""
    import circuits.studies.runner as runner
    from circuits.studies import StudySpec

    seen = {}

    def build_state(spec, rm, study):
        seen["n"] = spec.n
        raise RuntimeError("stop")

    monkeypatch.setattr(runner, "build_state", build_state)
    with pytest.warns(UserWarning, match="at most 48 evaluation prompts; n=500 runs 48"):
        with pytest.raises(RuntimeError, match="stop"):
            runner.run_study(StudySpec("two_hop", n=500))
    assert seen["n"] == 48


def test_study_says_it_does_not_use_more_threads(capsys, monkeypatch):
    """`circuits --threads 2 study ...` says once that a study runs one torch thread per process (run_study forces it
    for reproducible numbers) and that --workers sets its parallelism; with one thread it says nothing."""
    from circuits.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # restored after the test
    caller = torch.get_num_threads()
    try:
        assert main(["--threads", "2", "study", "ioi", "--model", "no-such-model"]) == 2
        err = capsys.readouterr().err
        assert "a study runs one torch thread per process" in err and "--workers" in err
        assert main(["--threads", "1", "study", "ioi", "--model", "no-such-model"]) == 2
        assert "torch thread" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(caller)
