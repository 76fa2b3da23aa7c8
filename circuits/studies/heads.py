"""Component-level causal analysis of IOI (Wang et al. 2022, adapted to the organism): which heads do what.

`ioi_head_analysis(model, evaluation, reference, seed)` measures, on the *evaluation* prompts only, with the
*reference* prompts used for nothing but the ablation means:

1. **Mean ablation** of every head: head (l, h)'s ``hook_z`` is replaced by its reference mean, **role-aligned**: at
   BOS, IO, S1, S2, "and" and END by the reference mean at the same role; at every other position by the reference
   mean of "other" positions at the same distance from END (the overall "other" mean where no reference prompt
   reaches that distance). Effect = drop of the mean metric ``logit(IO) − logit(S)``, with a paired bootstrap
   interval; baseline = the expected drop from ablating a head drawn at random (per prompt, the mean drop over all
   heads), and the verdict is `circuits.studies.stats.verdict` (interval above zero and above the baseline, and
   at least 10% of the clean metric).
2. **Direct effect** of every head: ``(z − z̄)·W_O`` at END, read through the final LayerNorm (its scale frozen at
   the clean run) onto ``W_U[:, IO] − W_U[:, S]`` — the change of the metric along the head → logits path alone
   when the head is mean-ablated. Baseline: the direct effect of a head drawn at random from the same layer (per
   prompt, the mean over that layer's heads); an MLP layer's (its output at END minus the reference mean) against
   an MLP layer drawn at random. Verdict as in 1 (a negative one on the negated effect and baseline).
3. **Attention statistics**: END→IO, END→S1, END→S2, S2→S1 (duplicate token), S2→S1+1 (induction) and
   position→previous position, each a mean over prompts with an interval.
4. **Path patching** (Wang et al. §3): source = the ABC prompt (S2 replaced by a third name) and the prompt with IO
   and S swapped. For a sender head s and receiver heads R: (i) run clean and source, cache every head's z;
   (ii) run clean with s's z taken from the source and every other head's z frozen at its clean value (MLPs and
   LayerNorms recomputed, as in Wang et al.), and record the receivers' query (or key, or value) inputs;
   (iii) run clean with only those receiver inputs replaced (at every position), everything else recomputed.
   Effect = drop of the metric; minimum for a verdict = 10% of the source's total effect ``m(clean) − m(source)``;
   baseline = the same path from a sender drawn at random (every sender is path-patched; per prompt, the mean).
   Receivers: first the name movers (→ S-inhibition heads: effect through the queries); then the S-inhibition
   heads (→ heads feeding them, labelled duplicate-token or induction by their attention).
5. **Backup and negative name movers**: mean-ablate the name movers together and recompute every other head's
   direct effect; a backup head's direct effect rises, by more than a head drawn at random among the rest. The
   joint ablation's drop is judged against as many heads drawn at random from the same layers (5 seeded draws).
   A negative name mover's direct effect is confirmed < 0.
6. **Features of each role head** (with attention SAEs): the head's slice of z at the position where it acts,
   decomposed as codes × decoder rows (+ the SAE error), ranked by the share of the head's effect each carries.

The result is a JSON-serialisable dict (the same inputs give the same dict); `render_head_section` writes it as
Markdown. Heads are named ``L{layer}H{head}``. The forward passes, ablations and path patching are in
`circuits.studies.head_patching`; the Markdown in `circuits.studies.head_report`.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import numpy as np
import torch

from circuits.errors import CircuitsError
from circuits.model import (
    hook_attn_z,
    hook_ln_final_scale,
)
from circuits.studies.head_patching import (
    ATTENTION_STATS,
    PATCH_MODES,
    PATHS,
    ROUTE_SOURCES,
    SOURCES,
    TOP_FEATURES,
    _ablate_heads,
    _attention_stats,
    _batches,
    _clean_pass,
    _direct_effects,
    _feature_parts,
    _has_mlp,
    _logit_directions,
    _parse_head,
    _patch_head,
    _path_patch,
    _reference_means,
    _z_stack,
    head_name,
)
from circuits.studies.head_report import _best, _fmt, render_head_section
from circuits.studies.stats import MIN_EFFECT_SHARE, Interval, mean_interval, verdict

__all__ = ["head_name", "ioi_head_analysis", "render_head_section", "replication"]


def replication(main: dict, other: dict, n_other: int,
                other_set: str = "the study's selection prompts (disjoint from the evaluation prompts)") -> dict:
    """For each role of `main`'s role table held by a head (or component), its verdict for the same role and head in
    `other` (the analysis on another, disjoint prompt set, described by `other_set`): ``replicated`` when confirmed
    there too."""
    there = {(r["role"], r["head"]): r for r in other["roles"] if r.get("head")}
    rows = []
    for r in main["roles"]:
        if not r.get("head") or r["verdict"] != "confirmed":
            continue
        o = there.get((r["role"], r["head"]))
        rows.append({"role": r["role"], "head": r["head"], "effect": r.get("effect"),
                     "other_effect": o.get("effect") if o else None,
                     "other_verdict": o["verdict"] if o else "not assigned",
                     "replicated": bool(o and o["verdict"] == "confirmed")})
    return {"n": n_other, "rows": rows,
            "how": f"the whole head analysis run again on {other_set}; a role is replicated when the same head gets "
                   "the same role, confirmed, there"}

# -- the analysis ---------------------------------------------------------------------------------------------------


def _iv(values, seed: int) -> dict:
    return mean_interval(np.asarray(values, dtype=np.float64).tolist(), seed=seed).as_dict()


def _interval(d: dict) -> Interval:
    return Interval(d["value"], d["lo"], d["hi"], d["n"])


def _negated(d: dict) -> dict:
    return {"value": -d["value"], "lo": -d["hi"], "hi": -d["lo"], "n": d["n"]}


JOINT_DRAWS = 5  # random head sets drawn for the joint-ablation baseline


def _others_mean(values: np.ndarray, i: int) -> np.ndarray:
    """[n] per prompt: the mean of `values` [k, n] over every row but row i (another one drawn at random)."""
    return (values.sum(0) - values[i]) / max(len(values) - 1, 1)


def _joint_draws(ablated: list[tuple[int, int]], L: int, H: int, seed: int) -> list[tuple[list, int]]:
    """`JOINT_DRAWS` seeded random head sets like `ablated`: as many heads per layer, none of them ablated; where a
    layer has too few heads left, the rest come from the other layers' heads that are not ablated. Each draw with
    the number of heads taken outside their layer."""
    rng = np.random.default_rng(seed)
    taken = set(ablated)
    out = []
    for _ in range(JOINT_DRAWS):
        pick: list[tuple[int, int]] = []
        short = 0
        for layer in range(L):
            k = sum(1 for lr, _ in ablated if lr == layer)
            free = [(layer, h) for h in range(H) if (layer, h) not in taken]
            chosen = [free[j] for j in rng.choice(len(free), size=min(k, len(free)), replace=False)]
            pick += chosen
            short += k - len(chosen)
        if short:
            pool = [(lr, h) for lr in range(L) for h in range(H) if (lr, h) not in taken and (lr, h) not in pick]
            pick += [pool[j] for j in rng.choice(len(pool), size=min(short, len(pool)), replace=False)]
        out.append((sorted(pick), short))
    return out


def _verdict(effect: dict, baseline: dict | None, scale: float) -> dict:
    return verdict(_interval(effect), _interval(baseline) if baseline else None, scale).as_dict()


_T0 = threading.local()  # each analysis' start time, per thread (the IOI replication runs beside the main one)


_LOGGER = logging.getLogger(__name__)


def _log(progress: bool, msg: str) -> None:
    """Progress of the analysis through `logging` (INFO when asked for, DEBUG otherwise); never in the result."""
    _LOGGER.log(logging.INFO if progress else logging.DEBUG, "[heads %6.1f s] %s",
                time.perf_counter() - getattr(_T0, "start", time.perf_counter()), msg)


@torch.no_grad()
def ioi_head_analysis(model, evaluation: list, reference: list, seed: int, progress: bool = False) -> dict:
    """The component-level analysis of the module docstring. `model` is a HookedTransformer or a
    `ReplacementModel` (then the role heads' attention-SAE features are reported too); `evaluation` and
    `reference` are `PreparedPrompt` lists of an IOI study (disjoint sets; the reference only sets the means)."""
    rm = model if hasattr(model, "attention_saes") else None
    hm = rm.model if rm is not None else model
    if not evaluation or not reference:
        raise CircuitsError("the head analysis needs evaluation and reference prompts")
    L, H = hm.cfg.n_layers, hm.cfg.n_heads
    heads = [(layer, h) for layer in range(L) for h in range(H)]
    names = [head_name(*x) for x in heads]
    _T0.start = time.perf_counter()
    ev, ref = _batches(hm, evaluation), _batches(hm, reference)
    _log(progress, f"reference means over {len(reference)} prompts")
    means = _reference_means(hm, ref)
    _log(progress, f"clean, ABC and swapped runs on {len(evaluation)} prompts")
    cleans = [_clean_pass(hm, b, means) for b in ev]

    def cat(fn) -> np.ndarray:
        return torch.cat([fn(b, c) for b, c in zip(ev, cleans, strict=True)], -1).double().cpu().numpy()

    m_clean = cat(lambda b, c: c.metric)
    clean_mean = float(m_clean.mean())
    out: dict = {
        "n_evaluation": len(evaluation), "n_reference": len(reference), "seed": seed,
        "convention": "mean ablation of hook_z: at BOS, IO, S1, S2, 'and', END the reference mean at the same role; "
                      "elsewhere the reference mean of non-role positions at the same distance from END",
        "metric": {"clean": _iv(m_clean, seed)},
    }
    for s in SOURCES:
        out["metric"][s] = _iv(cat(lambda b, c, s=s: c.source_metric[s]), seed)

    # 1. mean ablation of each head
    _log(progress, f"mean-ablating {len(heads)} heads")
    drops = np.stack([m_clean - cat(lambda b, c, x=x: _ablate_heads(hm, b, c, [x])[0]) for x in heads])  # [N_h, n]
    baseline = _iv(drops.mean(0), seed)
    # 2. direct effects, each judged against another head drawn at random from the same layer (direct effects
    # concentrate in late layers, so this is harder to beat than a head drawn from all layers); 3. attention
    de = cat(lambda b, c: _direct_effects(hm, b, c.z, c.zbar, c.lnf)).reshape(L * H, -1)
    att = {k: cat(lambda b, c, k=k: _attention_stats(b, c.patterns)[k]).reshape(L * H, -1) for k in ATTENTION_STATS}
    table = {}
    for i, name in enumerate(names):
        abl = _iv(drops[i], seed)
        d = _iv(de[i], seed)
        base = _iv(_others_mean(de.reshape(L, H, -1)[heads[i][0]], heads[i][1]), seed)
        table[name] = {
            "ablation": abl, "ablation_verdict": _verdict(abl, baseline, clean_mean),
            "direct": d, "direct_baseline": base, "direct_verdict": _verdict(d, base, clean_mean),
            "negative_verdict": _verdict(_negated(d), _negated(base), clean_mean),
            "attention": {k: _iv(att[k][i], seed) for k in ATTENTION_STATS},
        }
    out["baseline"] = {"how": "expected drop from mean-ablating one head drawn at random (per prompt: the mean drop "
                              "over all heads)", **baseline}
    out["direct_baselines"] = {"how": "a head's direct effect against another head drawn at random from its layer "
                                      "(per prompt: the mean over the layer's other heads; each head's own in the "
                                      "head table); negative verdicts against its negation. Listed here: each "
                                      "layer's mean over all its heads",
                               **{f"L{layer}": _iv(de[layer * H:(layer + 1) * H].mean(0), seed) for layer in range(L)}}
    out["heads"] = table

    # direct effects of the MLP layers (their output at END minus the reference mean at END)
    components: dict = {}
    if _has_mlp(hm):
        def mlp_de(b, c):
            dm = c.mlp[b.rows, b.end].double() - means["mlp_end"][None]  # [B, L, d_model]
            return torch.einsum("blm,bm->lb", dm, _logit_directions(hm, b, c.lnf))
        mde = cat(mlp_de)
        for layer in range(L):
            d, base = _iv(mde[layer], seed), _iv(_others_mean(mde, layer), seed)
            components[f"MLP{layer}"] = {"direct": d, "baseline": base,
                                         "direct_verdict": _verdict(d, base, clean_mean)}
    attn_layers = de.reshape(L, H, -1).sum(1)  # [L, n]
    for layer in range(L):
        d, base = _iv(attn_layers[layer], seed), _iv(_others_mean(attn_layers, layer), seed)
        components[f"attn{layer}"] = {"direct": d, "baseline": base, "direct_verdict": _verdict(d, base, clean_mean)}
    out["direct_baselines"]["how_components"] = ("a component's direct effect against another component of its "
                                                 "kind drawn at random (per prompt: the mean over the other MLP "
                                                 "layers, or the other attention layers)")
    out["components"] = components

    # activation patching of each head from each source, and the routes of every confirmed effect
    _log(progress, "patching each head from the ABC and swapped prompts")
    totals = {s: _iv(m_clean - cat(lambda b, c, s=s: c.source_metric[s]), seed) for s in SOURCES}
    totals["mean"] = {**_iv(m_clean, seed)}
    patch: dict = {}

    def patched(s, x, mode, live=None):
        eff = _iv(m_clean - cat(lambda b, c: _patch_head(hm, b, c, s, x, mode, live)), seed)
        return {**eff, **_verdict(eff, None, totals[s]["value"])}

    # a head's total patching effect is judged against patching one head drawn at random (per prompt: the mean
    # effect over all heads), as ablations are
    patch_baselines = {}
    for s in SOURCES:
        effects = np.stack([m_clean - cat(lambda b, c, x=x, s=s: _patch_head(hm, b, c, s, x, "total", None))
                            for x in heads])  # [N_h, n]
        patch_baselines[s] = _iv(effects.mean(0), seed)
        for i, x in enumerate(heads):
            eff = _iv(effects[i], seed)
            patch.setdefault(head_name(*x), {})[s] = {
                "total": {**eff, **_verdict(eff, patch_baselines[s], totals[s]["value"])}}
    for n in names:
        patch[n]["mean"] = {"total": {**table[n]["ablation"], **table[n]["ablation_verdict"]}}
    confirmed = {s: [n for n in names if patch[n][s]["total"]["verdict"] == "confirmed"] for s in ROUTE_SOURCES}
    for s, ns in confirmed.items():  # routes: every other head frozen; every MLP too; all MLPs but one
        for n in ns:
            x = _parse_head(n)
            _log(progress, f"routes of {n} ({s})")
            if x[0] < L - 1:
                patch[n][s]["no_heads"] = patched(s, x, "no_heads")
            patch[n][s]["direct"] = patched(s, x, "direct")
            if _has_mlp(hm):
                for layer in range(x[0], L):
                    patch[n][s][f"without_mlp{layer}"] = patched(s, x, "no_mlp", layer)
    out["patching"] = {"modes": PATCH_MODES, "totals": totals, "heads": patch, "confirmed": confirmed,
                       "baselines": {**patch_baselines, "how": "expected effect of patching one head drawn at random "
                                     "from the same source (per prompt: the mean effect over all heads)"}}

    # name movers: confirmed positive direct effect and attention END→IO above END→S1 + END→S2
    def attends_io(name):
        a = table[name]["attention"]
        return a["end_io"]["value"] > a["end_s1"]["value"] + a["end_s2"]["value"]

    direct_pos = [n for n in names if table[n]["direct_verdict"]["verdict"] == "confirmed"]
    movers = [n for n in direct_pos if attends_io(n)]
    negative = [n for n in names if table[n]["negative_verdict"]["verdict"] == "confirmed"]

    # 4. path patching into the name movers, then into the S-inhibition heads
    def patch_round(receivers: list[str], label: str) -> dict:
        recv = [_parse_head(n) for n in receivers]
        top = max((lr for lr, _ in recv), default=0)
        senders = [x for x in heads if x[0] < top and head_name(*x) not in receivers]
        res: dict = {"receivers": receivers, "senders": [head_name(*x) for x in senders], "sources": {},
                     "screen": "every sender is path-patched; the table keeps a sender when its activation-patching "
                               "interval from that source reaches 10% of the source's total effect, or when one of "
                               "its paths is confirmed",
                     "baseline": "a path's effect against the same path from a sender drawn at random (per prompt: "
                                 "the mean over every sender)"}
        for s in SOURCES:
            total_iv = totals[s]
            minimum = abs(total_iv["value"]) * MIN_EFFECT_SHARE
            kept = [x for x in senders if patch[head_name(*x)][s]["total"]["hi"] >= minimum
                    or patch[head_name(*x)][s]["total"]["lo"] <= -minimum]
            # every sender is path-patched: the mean over all of them (per prompt) is the effect of a sender drawn
            # at random, the baseline a path must beat; the rows kept are the screened senders and any confirmed
            _log(progress, f"path patching ({label}, {s}) from {len(senders)} senders")
            effects = {}
            for x in senders:
                parts = [_path_patch(hm, b, c, s, x, recv) for b, c in zip(ev, cleans, strict=True)]
                effects[x] = {p: m_clean - torch.cat([q[p] for q in parts]).double().cpu().numpy() for p in PATHS}
            base = {p: _iv(np.mean([effects[x][p] for x in senders], 0), seed) for p in PATHS} if senders else {}
            rows, below = {}, []
            for x in senders:
                row = {}
                for p in PATHS:
                    eff = _iv(effects[x][p], seed)
                    row[p] = {**eff, **_verdict(eff, base[p], total_iv["value"])}
                if x in kept or any(row[p]["verdict"] == "confirmed" for p in PATHS):
                    rows[head_name(*x)] = row
                else:
                    below.append(head_name(*x))
            res["sources"][s] = {"total": total_iv, "senders": rows, "screened_out": below, "baseline": base}
        return res

    out["path_patching"] = {}
    s_inhibition: list[str] = []
    # receivers: the name movers; without any, the heads that attend from END to the names (candidates)
    receivers = movers or [n for n in names if _parse_head(n)[0] > 0 and sum(
        table[n]["attention"][k]["value"] for k in ("end_io", "end_s1", "end_s2")) >= 0.5]
    out["receivers"] = {"heads": receivers, "kind": "name movers" if movers else
                        "candidates: END→(IO + S1 + S2) attention ≥ 0.5 (no name mover is confirmed)"}
    if receivers:
        pp1 = patch_round(receivers, "name movers" if movers else "name-attending heads")
        out["path_patching"]["name_movers"] = pp1
        for n, row in pp1["sources"]["abc"]["senders"].items():
            q = row["q"]
            if q["verdict"] == "confirmed" and q["value"] > max(row["k"]["value"], row["v"]["value"]):
                s_inhibition.append(n)
    feeders: list[str] = []
    if s_inhibition and min(_parse_head(n)[0] for n in s_inhibition) > 0:
        pp2 = patch_round(s_inhibition, "S-inhibition heads")
        out["path_patching"]["s_inhibition"] = pp2
        for n, row in pp2["sources"]["abc"]["senders"].items():
            if any(row[p]["verdict"] == "confirmed" for p in PATHS):
                feeders.append(n)

    # 5. backup: direct effects with the name movers (or, without any, the candidates) ablated together
    backup: list[str] = []
    if receivers:
        _log(progress, "ablating the name movers together")
        mv = [_parse_head(n) for n in receivers]
        ln = hm.cfg.normalization_type in ("LN", "LNPre")
        keep = tuple(hook_attn_z(layer) for layer in range(L)) + ((hook_ln_final_scale(),) if ln else ())
        m_nm, de_after = [], []
        for b, c in zip(ev, cleans, strict=True):
            m, st = _ablate_heads(hm, b, c, mv, keep)
            m_nm.append(m)
            de_after.append(_direct_effects(hm, b, _z_stack(st, L), c.zbar,
                                            st[hook_ln_final_scale()][..., 0] if ln else None))
        m_nm_a = torch.cat(m_nm).cpu().numpy()
        de_after_a = torch.cat(de_after, -1).double().cpu().numpy().reshape(L * H, -1)
        others = [i for i, name in enumerate(names) if name not in receivers]
        # the baseline: a non-ablated head after the first ablated layer (one in an earlier layer cannot respond to
        # the ablation except through the final LayerNorm's scale, so it would make the baseline ≈ 0)
        first = min(lr for lr, _ in mv)
        later = [i for i in others if heads[i][0] > first]
        rise_base = _iv((de_after_a[later] - de[later]).mean(0), seed) if later else None
        rises = {}
        for i in others:
            r = _iv(de_after_a[i] - de[i], seed)
            rises[names[i]] = {**r, **_verdict(r, rise_base, clean_mean)}
            if movers and rises[names[i]]["verdict"] == "confirmed":
                backup.append(names[i])
        # the joint ablation against as many other heads, drawn at random (seeded) from the same layers where enough
        # heads are left there, else from the other layers
        draws, outside = [], 0
        for pick, n_out in _joint_draws(mv, L, H, seed):
            outside = max(outside, n_out)
            draws.append(torch.cat([_ablate_heads(hm, b, c, pick)[0] for b, c in zip(ev, cleans, strict=True)])
                         .cpu().numpy())
        joint_base = _iv(m_clean - np.mean(draws, 0), seed)
        drop = _iv(m_clean - m_nm_a, seed)
        out["backup"] = {"ablated": receivers, "kind": out["receivers"]["kind"], "metric_drop": drop,
                         "metric_drop_verdict": _verdict(drop, joint_base, clean_mean),
                         "metric_drop_baseline": {"how": f"mean drop over {JOINT_DRAWS} seeded draws of as many other "
                                                         "heads (none of those ablated), from the same layers where "
                                                         f"enough are left ({outside} from other layers), ablated "
                                                         "together", "outside_layer": outside, **joint_base},
                         "direct_of_movers": _iv(de[[names.index(n) for n in receivers]].sum(0), seed),
                         "rise": rises,
                         "rise_baseline": ({"how": "expected rise of a head drawn at random among the heads not "
                                                   "ablated in the layers after the first ablated one (per prompt: "
                                                   "the mean rise over them)", **rise_base}
                                           if rise_base else None)}

    # the role table
    out["roles"] = _role_rows(table, names, movers, direct_pos, negative, s_inhibition, feeders, backup, out,
                              clean_mean)

    # 6. features of the role heads
    if rm is not None:
        out["features"] = _features(rm, hm, ev, cleans, out["roles"])
    return out


def _role_rows(table, names, movers, direct_pos, negative, s_inh, feeders, backup, out, clean_mean) -> list[dict]:  # noqa: C901
    rows = []
    minimum = abs(clean_mean) * MIN_EFFECT_SHARE

    def head_row(role: str, n: str, evidence: str, effect: dict, word: str, extra: str = "") -> dict:
        a = table[n]["attention"]
        att = (f"END→IO {a['end_io']['value']:.2f}, END→S1 {a['end_s1']['value']:.2f}, "
               f"END→S2 {a['end_s2']['value']:.2f}, S2→S1 {a['s2_s1']['value']:.2f}, "
               f"S2→S1+1 {a['s2_s1p1']['value']:.2f}")
        return {"role": role, "head": n, "evidence": evidence, "effect": effect, "verdict": word,
                "attention": att, "ablation": table[n]["ablation"],
                "ablation_verdict": table[n]["ablation_verdict"]["verdict"], "note": extra}

    for n in movers:
        rows.append(head_row("name mover", n, "direct effect on logit(IO) − logit(S); attends END→IO more than to S",
                             table[n]["direct"], table[n]["direct_verdict"]["verdict"]))
    for n in direct_pos:
        if n not in movers:
            rows.append(head_row("direct writer (not IO-attending)", n,
                                 "direct effect confirmed but END→IO attention below END→S1 + END→S2",
                                 table[n]["direct"], table[n]["direct_verdict"]["verdict"]))
    if not movers:
        best = _best({n: table[n]["direct"] for n in names}, lambda d: d["value"])
        rows.append({"role": "name mover", "head": None, "verdict": "none found",
                     "evidence": "no head has a confirmed positive direct effect and END→IO attention above S",
                     "effect": best[1] if best else None,
                     "note": f"largest direct effect: {best[0]} {_fmt(best[1])}" if best else ""})
    for n in negative:
        rows.append(head_row("negative name mover", n, "direct effect confirmed below zero (writes against IO)",
                             table[n]["direct"], table[n]["negative_verdict"]["verdict"],
                             "" if table[n]["attention"]["end_io"]["value"] > 0.2 else "does not attend to IO"))
    if not negative:
        best = _best({n: table[n]["direct"] for n in names}, lambda d: -d["value"])
        rows.append({"role": "negative name mover", "head": None, "verdict": "none found",
                     "evidence": f"no head's direct effect is confirmed below −{minimum:.3f}",
                     "effect": best[1] if best else None,
                     "note": f"most negative direct effect: {best[0]} {_fmt(best[1])}" if best else ""})
    # heads whose output from the ABC prompt changes the metric, and the route of that effect
    patching = out["patching"]
    explained = set(movers) | set(s_inh) | set(negative)
    conf = patching["confirmed"]
    source_words = {"mean": "mean ablation", "abc": "patching its z from the ABC prompt",
                    "swapped": "patching its z from the IO/S-swapped prompt"}
    for n in names:
        srcs = [s for s in ROUTE_SOURCES if n in conf[s]]
        if n in explained or not srcs:
            continue
        a = table[n]["attention"]
        if a["end_s2"]["value"] >= 0.5:
            what = "moves S2 to END"  # the name in S2's slot, not the latest name (benchmarks/ioi_s2_offset.py)
        elif a["end_io"]["value"] + a["end_s1"]["value"] >= 0.5:
            what = "moves the first-clause names (IO and S1) to END"
        else:
            what = "matters causally (no name-moving attention)"
        notes = []
        for s in srcs:
            r = patching["heads"][n][s]
            total = r["total"]["value"]
            parts = [f"{source_words[s]}: {_fmt(r['total'])}"]
            if "no_heads" in r:
                parts.append(f"other heads frozen {_fmt(r['no_heads'])}")
            parts.append(f"direct only {_fmt(r['direct'])}")
            parts += [f"MLP{k[11:]} frozen {_fmt(v)}" for k, v in r.items() if k.startswith("without_mlp")]
            if abs(r["direct"]["value"]) >= 0.5 * abs(total):
                route = "mostly direct"
            elif abs(r.get("no_heads", r["total"])["value"]) >= 0.5 * abs(total):
                route = "through MLPs, not other heads"
            else:
                route = "through later heads"
            notes.append(f"{'; '.join(parts)} → {route}")
        main = patching["heads"][n][srcs[0]]["total"]
        rows.append(head_row(what, n, "causal: " + ", ".join(source_words[s] for s in srcs) +
                             "; routes with other heads / MLPs frozen",
                             {k: main[k] for k in ("value", "lo", "hi", "n")}, main["verdict"], " | ".join(notes)))
        rows[-1]["sources"] = srcs
    if not any(conf.values()):
        rows.append({"role": "causally relevant head", "head": None, "verdict": "none found",
                     "evidence": "no head's mean ablation or patching from ABC / swapped is confirmed",
                     "effect": None, "note": ""})
    for comp, v in out["components"].items():
        if comp.startswith("MLP") and v["direct_verdict"]["verdict"] == "confirmed":
            rows.append({"role": "writes the answer (direct effect)", "head": comp,
                         "evidence": "MLP output at END minus its reference mean, through W_U[IO] − W_U[S]; "
                                     "above an MLP layer drawn at random",
                         "effect": v["direct"], "verdict": "confirmed", "note": ""})
    pp = out["path_patching"]
    movers_named = out["receivers"]["kind"] == "name movers"
    if "name_movers" in pp:
        senders = pp["name_movers"]["sources"]["abc"]["senders"]
        target = "name movers'" if movers_named else "name-attending heads' (candidates)"
        for n in s_inh:
            r = senders[n]
            sw = pp["name_movers"]["sources"]["swapped"]["senders"].get(n, {}).get("q")
            rows.append(head_row("S-inhibition" if movers_named else "S-inhibition (into candidates)", n,
                                 f"path patching ABC → {target} queries (k, v smaller)",
                                 {k: r["q"][k] for k in ("value", "lo", "hi", "n")}, r["q"]["verdict"],
                                 f"k {_fmt(r['k'])}, v {_fmt(r['v'])}"
                                 + (f"; from the swapped prompt q {_fmt(sw)}" if sw else "")))
        if not s_inh:
            best = _best(senders, lambda r: r["q"]["value"])
            rows.append({"role": "S-inhibition", "head": None, "verdict": "none found",
                         "evidence": f"no sender's path into the {target} queries is confirmed",
                         "effect": {k: best[1]["q"][k] for k in ("value", "lo", "hi", "n")} if best else None,
                         "note": f"largest query-path effect: {best[0]} {_fmt(best[1]['q'])}" if best else ""})
        other = [n for n, r in senders.items() if n not in s_inh
                 and any(r[p]["verdict"] == "confirmed" for p in ("k", "v"))]
        for n in other:
            r = senders[n]
            p = max(("k", "v"), key=lambda p: r[p]["value"])
            rows.append(head_row(f"feeds {target} {'keys' if p == 'k' else 'values'}", n,
                                 f"path patching ABC → {target} {p}", {k: r[p][k] for k in ("value", "lo", "hi", "n")},
                                 r[p]["verdict"], f"q {_fmt(r['q'])}, k {_fmt(r['k'])}, v {_fmt(r['v'])}"))
    if "s_inhibition" in pp:
        senders = pp["s_inhibition"]["sources"]["abc"]["senders"]
        for n in feeders:
            r = senders[n]
            p = max(PATHS, key=lambda p: r[p]["value"])
            a = table[n]["attention"]
            kind = ("duplicate token" if a["s2_s1"]["value"] >= max(a["s2_s1p1"]["value"], 0.2) else
                    "induction" if a["s2_s1p1"]["value"] >= 0.2 else "feeds S-inhibition (no duplicate/induction "
                    "attention)")
            rows.append(head_row(kind, n, f"path patching ABC → S-inhibition heads' {p}; attention S2→S1 / S1+1",
                                 {k: r[p][k] for k in ("value", "lo", "hi", "n")}, r[p]["verdict"],
                                 f"q {_fmt(r['q'])}, k {_fmt(r['k'])}, v {_fmt(r['v'])}"))
        if not feeders:
            rows.append({"role": "duplicate token / induction", "head": None, "verdict": "none found",
                         "evidence": "no head in an earlier layer changes the S-inhibition heads' inputs",
                         "effect": None, "note": ""})
    elif s_inh:
        rows.append({"role": "duplicate token / induction", "head": None, "verdict": "not testable",
                     "evidence": "an S-inhibition head is in layer 0: no earlier head can feed it", "effect": None,
                     "note": ""})
    if "backup" in out and not movers_named:
        bk = out["backup"]
        rows.append({"role": "name-attending heads (candidates), ablated together", "head": ", ".join(bk["ablated"]),
                     "evidence": "joint mean ablation; END attends IO and S1 about equally, no confirmed direct "
                                 "effect", "effect": bk["metric_drop"], "verdict": bk["metric_drop_verdict"]["verdict"],
                     "note": f"their summed direct effect {_fmt(bk['direct_of_movers'])}"})
    if "backup" in out and movers_named:
        rises = out["backup"]["rise"]
        for n in backup:
            rows.append(head_row("backup name mover", n, "direct effect rises when the name movers are mean-ablated",
                                 rises[n], rises[n]["verdict"]))
        if not backup:
            best = _best(rises, lambda d: d["value"])
            rows.append({"role": "backup name mover", "head": None, "verdict": "none found",
                         "evidence": f"ablating {', '.join(out['backup']['ablated'])} raises no other head's direct "
                                     f"effect by ≥ {minimum:.3f} with an interval above zero and above a random "
                                     "other head's rise",
                         "effect": {k: best[1][k] for k in ("value", "lo", "hi", "n")} if best else None,
                         "note": f"largest rise: {best[0]} {_fmt(best[1])}" if best else ""})
    return rows


def _features(rm, hm, ev, cleans, roles) -> dict:
    """For each role head: the attention-SAE features of its layer that carry its effect."""
    out = {}
    for row in roles:
        n = row.get("head")
        if n is None or n in out or not re.fullmatch(r"L\d+H\d+", n):
            continue
        layer, head = _parse_head(n)
        sae = rm.attention_saes.get(layer)
        if sae is None:
            continue
        direct = row["role"] in ("name mover", "negative name mover", "backup name mover",
                                 "direct writer (not IO-attending)")
        at = "S2" if row["role"] in ("duplicate token", "induction") else "END"
        source = row.get("sources", ["abc"])[0]
        fsum, esum, total = None, 0.0, 0.0
        for b, c in zip(ev, cleans, strict=True):
            pos = b.end if at == "END" else b.pos["S2"]
            z = c.z[b.rows, pos, layer]  # [B, H, d]
            if direct:
                zref = c.zbar[b.rows, pos, layer]
                direction = _logit_directions(hm, b, c.lnf)
            elif source == "mean":
                zref = c.zbar[b.rows, pos, layer]
                direction = None
            else:
                zref = z
                z = c.source_z[source][b.rows, pos, layer]
                direction = None
            f, e = _feature_parts(sae, layer, head, hm, z, zref, direction)
            fsum = f.sum(0) if fsum is None else fsum + f.sum(0)
            esum += float(e.sum())
            total += float(f.sum() + e.sum())
        n_prompts = sum(b.tokens.shape[0] for b in ev)
        order = torch.argsort(-fsum.abs(), stable=True)[:TOP_FEATURES].tolist()
        out[n] = {
            "role": row["role"], "position": at,
            "quantity": ("direct effect (z − z̄ at END, through W_O and W_U)" if direct else
                         f"output change {'clean → reference mean' if source == 'mean' else 'clean → ' + source} "
                         "(z·W_O), projected on itself (shares sum to 1)"),
            "total": total / n_prompts, "error_part": esum / n_prompts,
            "top": [{"feature": f"A{layer}#{i}", "part": float(fsum[i]) / n_prompts,
                     "share": float(fsum[i]) / total if total else float("nan")} for i in order],
        }
    return out
