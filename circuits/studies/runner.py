"""Running a case study end to end: metrics, splice fidelity, graphs aggregated by role, node rankings, the circuit,
its faithfulness under named ablation conventions against a stratified random baseline, the checks, and the test
set — returned as one `StudyResult` (see `report` for files).

The discipline (`circuits.studies.base`): node rankings and the circuit come from the *selection* prompts; every
number reported is measured on the *evaluation* prompts; ablation uses means over the *reference* prompts; the three
sets share no prompt. A study may add a *test* set of structurally new prompts, reported separately.

**Rankings** (`circuits.studies.analysis.SCORES`): role nodes (feature × role) ranked by their mean score over the
selection prompts: integrated gradients under standard mean ablation (the default: the circuit is its top `top`
*supporting* nodes, largest positive scores), graph influence (pruning's), attribution patching, activation ×
gradient. **Faithfulness** of a circuit C (Marks et al. 2024): ``(m̄(C) − m̄(∅)) / (m̄(M) − m̄(∅))`` with m̄ the
mean metric over evaluation prompts, everything outside C ablated under a convention (`circuits.studies.ablate`):
standard mean ablation (the headline), zero ablation, and the earlier held-inactive variant. Each is given with a
paired bootstrap 95% interval over prompts (`circuits.studies.stats`). Two curves per ranking: features with every
error node kept, and features alone. Keeping only supporting nodes can give faithfulness above 1 (the ablated rest
includes nodes that lowered the metric).

**Stratified random baseline**: for a circuit of k nodes, k random role nodes with the same (kind, layer, role)
counts, drawn from the role nodes active on at least 25% of the selection prompts (uniform draws over every role
node seen would pick mostly silent nodes and make any circuit look good).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import random
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from statistics import mean

import torch

from circuits.errors import CircuitsError
from circuits.replacement import splice_hooks
from circuits.studies import stats
from circuits.studies.ablate import CONVENTION_LABELS, CONVENTIONS, Circuit
from circuits.studies.aggregate import aggregated_graph, component_table, head_traffic, role_summary
from circuits.studies.base import RoleKey, role_key_str
from circuits.studies.batch import (
    StudySpec,
    WorkerPool,
    WorkerState,
    build_state,
    check_not_bootstrapping,
    connect_ray,
    map_prompts,
)

CURVE_SIZES = (10, 20, 50, 100, 200)
RANDOM_DRAWS = 3
PRESENCE_MIN = 0.25  # stratified random nodes are active on at least this fraction of selection prompts
EDGE_PROMPTS = 40  # evaluation prompts whose graphs give the aggregated circuit's edges
RANKINGS = {"ig": "integrated gradients (mean ablation)", "influence": "graph influence (pruning)",
            "atp": "attribution patching (AtP)", "act_grad": "activation × gradient"}
SIGNED = {"ig", "atp", "act_grad"}  # rank by the largest positive mean (supporting nodes); influence is unsigned


@dataclass
class StudyResult:
    spec: StudySpec
    title: str
    data: dict  # everything the report shows (deterministic for a spec)
    aggregated_graph: object  # circuits.graph.Graph over role nodes
    timings: dict = field(default_factory=dict)


def _batched_metric(model, prepared, tokens_of, hooks=None) -> list[float]:
    """The metric on each prompt (prompts of one length go through the model together)."""
    out = [0.0] * len(prepared)
    by_len: dict[int, list] = defaultdict(list)
    for pp in prepared:
        by_len[int(tokens_of(pp).shape[0])].append(pp)
    with torch.no_grad():
        for _, group in sorted(by_len.items()):
            toks = torch.stack([tokens_of(pp) for pp in group])
            logits = model.run_with_hooks(toks, fwd_hooks=hooks) if hooks else model(toks)
            for pp, lg in zip(group, logits, strict=True):
                out[pp.index] = float(pp.metric(lg))
    return out


def dataset_metrics(rm, prepared, seed: int = 0) -> dict:
    clean = _batched_metric(rm.model, prepared, lambda pp: pp.tokens)
    corrupt = _batched_metric(rm.model, prepared, lambda pp: pp.corrupt_tokens)
    by_group: dict[str, list[float]] = defaultdict(list)
    for pp, m in zip(prepared, clean, strict=True):
        by_group[pp.prompt.meta.get("subset", pp.prompt.group)].append(m)
    return {
        "per_prompt": {"clean": clean, "corrupt": corrupt},
        "clean_mean": mean(clean), "corrupt_mean": mean(corrupt),
        "clean_interval": stats.mean_interval(clean, seed).as_dict(),
        "accuracy": mean(float(m > 0) for m in clean),
        "accuracy_interval": stats.mean_interval([float(m > 0) for m in clean], seed).as_dict(),
        "subsets": {g: {"n": len(v), "metric_mean": mean(v), "accuracy": mean(float(m > 0) for m in v)}
                    for g, v in sorted(by_group.items())},
    }


def splice_fidelity(rm, prepared, clean_mean: float) -> list[dict]:
    """Metric with each dictionary spliced alone (error term off), and all at once; retained = ratio of means."""
    from circuits.dictionaries.evaluate import splice_units

    rows = []
    members = splice_units(list(rm.dictionaries)) + [list(rm.dictionaries)]  # a CLT's layers are spliced together
    for i, ds in enumerate(members):
        m = mean(_batched_metric(rm.model, prepared, lambda pp: pp.tokens, splice_hooks(ds, "off")))
        name = "all" if i == len(members) - 1 else ds[0].clt.name if len(ds) > 1 else ds[0].cfg.name
        rows.append({"spliced": name, "metric_mean": m,
                     "retained": m / clean_mean if clean_mean else float("nan")})
    return rows


def _mean_dicts(records: list[dict], field_name: str) -> dict:
    acc: dict = defaultdict(float)
    for r in records:
        for k, v in r[field_name].items():
            acc[k] += v
    return {k: v / len(records) for k, v in acc.items()}


def mean_role_scores(rm, roles, records: list[dict], field_name: str, method: str | None = None
                     ) -> dict[RoleKey, float]:
    """Mean over prompts of a per-prompt role-node table (`analysis._role_tables`) → {role key: value}."""
    out: dict[RoleKey, float] = {}
    for d in rm.dictionaries:
        name, acc = d.cfg.name, torch.zeros(len(roles) * d.d_sae, dtype=torch.float64)
        for r in records:
            idx, val = (r[field_name][method] if method else r[field_name])[name]
            acc.index_add_(0, idx, val.double())
        acc /= len(records)
        kind = f"{d.cfg.site}_feature"
        for i in torch.nonzero(acc).flatten().tolist():
            role, index = divmod(i, d.d_sae)
            out[(kind, d.cfg.layer, roles[role], index)] = float(acc[i])
    return out


def rank(scores: dict[RoleKey, float], signed: bool) -> list[RoleKey]:
    """Role nodes by decreasing score (signed scores: supporting nodes only, largest first)."""
    keys = [k for k, v in scores.items() if (v > 0 if signed else v != 0)]
    return sorted(keys, key=lambda k: (-scores[k], k))


def stratified_random(circuit: list[RoleKey], presence: dict[RoleKey, float], seed: str) -> tuple[list, int]:
    """Random role nodes with the circuit's (kind, layer, role) counts, drawn from nodes active on ≥ PRESENCE_MIN of
    the selection prompts and not in the circuit; a stratum too small is filled from the same kind and role, then
    from any eligible node. Returns (nodes, how many came from a wider pool)."""
    rng = random.Random(seed)
    taken = set(circuit)
    eligible = sorted(k for k, v in presence.items() if v >= PRESENCE_MIN and k not in taken)
    strata: dict[tuple, int] = defaultdict(int)
    for k in circuit:
        strata[k[:3]] += 1
    pick: list[RoleKey] = []
    wider = 0
    for stratum, count in sorted(strata.items()):
        for level, match in enumerate((lambda k, s=stratum: k[:3] == s,
                                       lambda k, s=stratum: (k[0], k[2]) == (s[0], s[2]), lambda k: True)):
            pool = [k for k in eligible if match(k) and k not in taken]
            got = rng.sample(pool, min(count, len(pool)))
            taken.update(got)
            pick += got
            wider += len(got) if level else 0
            count -= len(got)
            if count == 0:
                break
    return pick, wider


def curve_plan(rankings: dict[str, list[RoleKey]], presence: dict[RoleKey, float], seed: int, sizes,
               test: bool = False) -> tuple[list[Circuit], dict]:
    """The circuits of the faithfulness curves: empty and errors-only under each convention; each ranking's top k
    (standard mean ablation); IG's top k under zero and held-inactive ablation; stratified random draws for IG's
    top k. A test set gets only the largest k. Returns (circuits, random-draw details)."""
    plan = [Circuit(f"{conv}:{what}", frozenset(), errors, conv)
            for conv in CONVENTIONS for what, errors in (("empty", False), ("errors", True))]
    ig = rankings["ig"]
    ks = [k for k in sizes if k <= len(ig)] or ([len(ig)] if ig else [])
    if test:
        ks = ks[-1:]
    random_info = {}
    for k in ks:
        for method, order in rankings.items():
            if (test and method != "ig") or k > len(order):
                continue
            for errors in (False, True):
                plan.append(Circuit(f"mean:{method}:{k}:{int(errors)}", frozenset(order[:k]), errors, "mean"))
        for conv in ("zero", "held"):
            for errors in (False, True):
                plan.append(Circuit(f"{conv}:ig:{k}:{int(errors)}", frozenset(ig[:k]), errors, conv))
        short = []
        for draw in range(RANDOM_DRAWS):
            pick, s = stratified_random(ig[:k], presence, f"{seed}-{k}-{draw}")
            short.append(s)
            for errors in (False, True):
                plan.append(Circuit(f"mean:random#{draw}:{k}:{int(errors)}", frozenset(pick), errors, "mean"))
        random_info[k] = {"k": k, "outside_stratum": mean(short)}
    return plan, random_info


def faithfulness_table(records: list[dict], plan: list[Circuit], rankings: dict, seed: int) -> dict:
    """Every faithfulness value of the plan with its paired bootstrap interval over prompts, organised as curves."""
    full = [r["metric"] for r in records]
    col = {c.label: [r["curve"][c.label] for r in records] for c in plan}
    ks = sorted({int(c.label.split(":")[2]) for c in plan if c.label.count(":") == 3})

    def faith(label: str, conv: str) -> dict:
        return stats.faithfulness_interval(col[label], col[f"{conv}:empty"], full, seed).as_dict()

    def random_col(k: int, errors: int) -> list[float]:
        draws = [col[f"mean:random#{d}:{k}:{errors}"] for d in range(RANDOM_DRAWS)]
        return [mean(v) for v in zip(*draws, strict=True)]

    out: dict = {"conventions": {}, "rows": []}
    for conv in CONVENTIONS:
        out["conventions"][conv] = {
            "label": CONVENTION_LABELS[conv],
            "empty_metric": stats.mean_interval(col[f"{conv}:empty"], seed).as_dict(),
            "errors_only": faith(f"{conv}:errors", conv)}
    out["full_metric"] = stats.mean_interval(full, seed).as_dict()
    for k in ks:
        row: dict = {"k": k}
        for errors, tag in ((0, "features_only"), (1, "with_errors")):
            for method in rankings:
                if f"mean:{method}:{k}:{errors}" in col:
                    row[f"{method}_{tag}"] = faith(f"mean:{method}:{k}:{errors}", "mean")
            for conv in ("zero", "held"):
                if f"{conv}:ig:{k}:{errors}" in col:
                    row[f"ig_{conv}_{tag}"] = faith(f"{conv}:ig:{k}:{errors}", conv)
            rnd = random_col(k, errors)
            row[f"random_{tag}"] = stats.faithfulness_interval(rnd, col["mean:empty"], full, seed).as_dict()
            row[f"ig_minus_random_{tag}"] = _difference(col[f"mean:ig:{k}:{errors}"], rnd, col["mean:empty"], full,
                                                        seed)
            for method in rankings:  # is one ranking better than another? a paired interval, not two overlapping
                if method != "ig" and f"mean:{method}:{k}:{errors}" in col and f"mean:ig:{k}:{errors}" in col:
                    row[f"ig_minus_{method}_{tag}"] = _difference(col[f"mean:ig:{k}:{errors}"],
                                                                  col[f"mean:{method}:{k}:{errors}"],
                                                                  col["mean:empty"], full, seed)
        out["rows"].append(row)
    return out


def _difference(a: list[float], b: list[float], empty: list[float], full: list[float], seed: int) -> dict:
    """Faithfulness of circuit a minus that of circuit b, paired bootstrap interval (same prompts, same draws)."""
    return stats.bootstrap({"a": a, "b": b, "empty": empty, "full": full},
                           lambda c: stats.ratio_of_means(c["a"], c["b"], c["full"], c["empty"]), seed=seed,
                           batched=True).as_dict()


def by_subset(records: list[dict], prepared, plan: list[Circuit], rankings: dict, top: int, seed: int) -> list[dict]:
    """The headline faithfulness (IG's top k, standard mean ablation) on each subset of the evaluation prompts (e.g.
    name order, or seen/unseen two-hop questions), with intervals."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[prepared[r["index"]].prompt.meta.get("subset", prepared[r["index"]].prompt.group)].append(r)
    k = min(top, len(rankings["ig"]))
    labels = {c.label for c in plan}
    out = []
    for name, rs in sorted(groups.items()):
        row = {"subset": name, "n": len(rs), "clean": stats.mean_interval([r["metric"] for r in rs], seed).as_dict()}
        empty = [r["curve"]["mean:empty"] for r in rs]
        for errors, tag in ((0, "features_only"), (1, "with_errors")):
            if f"mean:ig:{k}:{errors}" in labels:
                row[tag] = stats.faithfulness_interval([r["curve"][f"mean:ig:{k}:{errors}"] for r in rs], empty,
                                                       [r["metric"] for r in rs], seed).as_dict()
        out.append(row)
    return out


def _headline(table: dict, top: int) -> dict:
    row = next((r for r in table["rows"] if r["k"] == top), table["rows"][-1] if table["rows"] else {})
    get = row.get
    return {"k": row.get("k", 0),
            "features_only": get("ig_features_only"), "with_errors": get("ig_with_errors"),
            "random_features_only": get("random_features_only"), "random_with_errors": get("random_with_errors"),
            "minus_random_features_only": get("ig_minus_random_features_only"),
            "minus_random_with_errors": get("ig_minus_random_with_errors"),
            "zero_features_only": get("ig_zero_features_only"), "zero_with_errors": get("ig_zero_with_errors"),
            "held_features_only": get("ig_held_features_only"), "held_with_errors": get("ig_held_with_errors"),
            "errors_only": table["conventions"]["mean"]["errors_only"]}


def _sets_summary(state) -> dict:
    out = {name: {"n": len(pps)} for name, pps in state.sets.items()}
    out["main_groups"] = state.means["main"].summary(state.sets["evaluation"])
    if "test" in state.means:
        out["test_groups"] = state.means["test"].summary(state.sets["test"])
    texts = [{pp.prompt.clean for pp in pps} for pps in state.sets.values()]
    out["disjoint"] = sum(len(t) for t in texts) == len(set().union(*texts))
    return out


def run_study(spec: StudySpec, *, rm=None, study=None, workers: int = 1, ray_address: str | None = None,
              top: int = 100, progress: bool = True, chunk_size: int = 8,
              keep_per_prompt: bool = False) -> StudyResult:
    """Run the study of `spec` (or the given `study` object, in-process) and return its result (see `report`).

    With ``workers > 1`` per-prompt work runs in spawned processes (see `circuits.studies.batch`); called from the
    top level of a script without an ``if __name__ == "__main__":`` guard it runs in this process instead, with a
    warning. With `ray_address` it runs as Ray tasks of `chunk_size` prompts each (docs/ray.md); the result does not
    depend on where or in what chunks the work ran. `keep_per_prompt` adds ``data["per_prompt_headline"]``: the
    headline circuit's per-prompt metrics (features alone, with errors, empty, model), so that two sets or seeds can
    be compared prompt by prompt (`benchmarks/headline_fresh.py`); the report does not show it.

    The study runs with one torch thread per process whatever the caller set (restored afterwards): float sums
    depend on the thread count, and the report must be the same in-process, over worker processes or Ray tasks
    (each single-threaded). Its parallelism is the workers (and the head analysis' replication beside it)."""
    check_not_bootstrapping()
    from circuits.studies import get_study

    limit = getattr(study if study is not None else get_study(spec.study, **dict(spec.options)), "max_evaluation",
                    None)
    if limit is not None and spec.n > limit:  # said, and the spec (the report's Reproduce line) says what ran
        warnings.warn(f"the {spec.study} study has at most {limit} evaluation prompts; n={spec.n} runs {limit}",
                      stacklevel=2)
        spec = dataclasses.replace(spec, n=limit)
    if ray_address:
        if rm is not None or study is not None:
            raise CircuitsError("ray_address with a given rm or study: Ray workers rebuild the model, dictionaries "
                                "and study from the spec's names, so pass names only (StudySpec) with Ray")
        connect_ray(ray_address)  # before any model loads: a missing package or a wrong address fails at once
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in every worker (`run_chunk`): the numbers do not depend on the caller's threads
    try:
        return _run_study(spec, rm, study, workers, ray_address, top, progress, chunk_size, keep_per_prompt)
    finally:
        torch.set_num_threads(threads)


def _run_study(spec, rm, study, workers, ray_address, top, progress, chunk_size, keep_per_prompt) -> StudyResult:
    """`run_study` after its checks, in one torch thread."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    state = build_state(spec, rm, study)
    given_study = study  # a study object given by the caller forces in-process work (it cannot be rebuilt by name)
    rm = state.rm
    evaluation = state.sets["evaluation"]
    metrics = dataset_metrics(rm, evaluation, spec.seed)
    sets = _sets_summary(state)
    fidelity = splice_fidelity(rm, evaluation, metrics["clean_mean"])
    timings["setup_s"] = time.perf_counter() - t0
    # one pool of worker processes for every pass below (each worker builds the study's state once)
    pool = WorkerPool(min(workers, os.cpu_count() or 1)) if workers > 1 and not ray_address else None
    run = dict(workers=workers, ray_address=ray_address, rm=rm, study=given_study, progress=progress,
               chunk_size=chunk_size, pool=pool)
    try:
        return _run_passes(_Passes(spec, state, run, top, t0, timings, metrics, sets, fidelity, keep_per_prompt))
    finally:
        if pool is not None:
            pool.close()


@dataclass
class _Passes:
    """What `run_study` sets up for its passes: the spec, the built state (model, study, prompt sets, reference
    means), the keyword arguments of every `map_prompts` call (`run`: workers, Ray address, pool, ...), the
    circuit size, the start time and timings so far, and the evaluation set's metrics, set summary and fidelity."""
    spec: StudySpec
    state: WorkerState
    run: dict
    top: int
    t0: float
    timings: dict
    metrics: dict
    sets: dict
    fidelity: list
    keep_per_prompt: bool = False


def _run_passes(p: _Passes) -> StudyResult:
    """The passes of `run_study` over the prompt sets, then the analyses and the aggregated graph."""
    spec, state, run, top, timings = p.spec, p.state, p.run, p.top, p.timings
    rm, study = state.rm, state.study
    roles = list(study.all_roles)
    evaluation, selection = state.sets["evaluation"], state.sets["selection"]

    t1 = time.perf_counter()
    pass1 = map_prompts(spec, "analyse", {"set": "selection"}, n=len(selection), desc=f"{spec.study}: graphs", **run)
    timings["graphs_s"] = time.perf_counter() - t1

    scores = {m: mean_role_scores(rm, roles, pass1, "scores", m) for m in RANKINGS}
    presence = mean_role_scores(rm, roles, pass1, "presence")
    rankings = {m: rank(scores[m], m in SIGNED) for m in RANKINGS}
    ig_errors = _mean_dicts(pass1, "ig_errors")
    ig = {**scores["ig"], **ig_errors}
    effects = _mean_dicts(pass1, "effects")
    features = rankings["ig"]
    circuit = features[:top]
    sizes = sorted(set(CURVE_SIZES) | {top})
    plan, random_info = curve_plan(rankings, presence, spec.seed, sizes)
    context = {"ranking": [(k, scores["ig"][k]) for k in sorted(scores["ig"], key=lambda k: (-scores["ig"][k], k))],
               "presence": presence}

    t2 = time.perf_counter()
    payload = {"set": "evaluation", "curve": plan, "circuit": circuit, "context": context,
               "edge_prompts": EDGE_PROMPTS}
    pass2 = map_prompts(spec, "evaluate", payload, n=len(evaluation), desc=f"{spec.study}: circuits", **run)
    timings["circuits_s"] = time.perf_counter() - t2

    table = faithfulness_table(pass2, plan, rankings, spec.seed)
    clean_mean = p.metrics["clean_mean"]
    checks = {c.name: c.summarize([r["checks"][c.name] for r in pass2], clean_mean, spec.seed)
              for c in study.checks()}
    ig_gap = [sum(float(v[1].sum()) for v in r["scores"]["ig"].values()) + sum(r["ig_errors"].values())
              - (r["metric"] - r["ig_empty"]) for r in pass1]
    n_sel = len(pass1)
    data = {
        "study": spec.study, "title": study.title, "description": study.description,
        "spec": {"model": spec.model, "dicts": spec.dicts, "n": spec.n, "seed": spec.seed,
                 "options": dict(spec.options), "ig_steps": spec.ig_steps, "top": top},
        "roles": roles,
        "metric": f"logit({study.answer_label}) − logit({study.wrong_label}) at the last position",
        "sets": p.sets,
        "metrics": p.metrics,
        "fidelity": p.fidelity,
        "graphs": {"mean_nodes": mean(r["graph_nodes"] for r in pass1),
                   "mean_edges": mean(r["graph_edges"] for r in pass1)},
        "ig_completeness": {"mean_abs_gap": mean(abs(g) for g in ig_gap),
                            "mean_metric_minus_empty": mean(r["metric"] - r["ig_empty"] for r in pass1)},
        "rankings": {m: {"label": RANKINGS[m], "candidates": len(rankings[m]),
                         "overlap_with_ig_at_top": len(set(rankings[m][:top]) & set(circuit))} for m in RANKINGS},
        "features": [{"node": role_key_str(k), "kind": k[0], "layer": k[1], "role": k[2], "index": k[3],
                      "ig_mean": scores["ig"].get(k, 0.0), "atp_mean": scores["atp"].get(k, 0.0),
                      "act_grad_mean": scores["act_grad"].get(k, 0.0), "influence_mean": scores["influence"].get(k, 0.0),
                      "effect_mean": effects.get(k, 0.0), "presence": presence.get(k, 0.0)}
                     for k in features[: max(top, 200)]],
        "errors": sorted(({"node": role_key_str(k), "ig_mean": v, "effect_mean": effects.get(k, 0.0)}
                          for k, v in ig_errors.items()), key=lambda r: (-abs(r["ig_mean"]), r["node"]))[:40],
        "roles_summary": role_summary(ig, effects, study.all_roles),
        "components": component_table(pass1),
        "traffic": head_traffic(pass1),
        "curve": {**table, "random": [random_info[k] for k in sorted(random_info)],
                  "ablation": "reference-set mean of the same group at the same position"},
        "circuit": {"n_features": len(circuit), "n_candidates": len(features), "n_selection": n_sel,
                    **_headline(table, len(circuit))},
        "by_subset": by_subset(pass2, evaluation, plan, rankings, top, spec.seed),
        "checks": checks,
        "n_prompts": len(evaluation),
    }
    if p.keep_per_prompt:
        k = data["circuit"]["k"]
        data["per_prompt_headline"] = {
            "k": k, "prompts": [pp.prompt.clean for pp in evaluation],
            "features_only": [r["curve"][f"mean:ig:{k}:0"] for r in pass2],
            "with_errors": [r["curve"][f"mean:ig:{k}:1"] for r in pass2],
            "empty": [r["curve"]["mean:empty"] for r in pass2], "full": [r["metric"] for r in pass2]}
    if "test" in state.sets:
        t3 = time.perf_counter()
        data["test"] = _test_set(p, rankings, presence)
        timings["test_s"] = time.perf_counter() - t3
    if run["pool"] is not None:
        run["pool"].close()  # the passes are done: the workers' memory is not needed for what follows
    extra = getattr(study, "extra_analysis", None)
    if extra is not None:
        data["extra"] = extra(rm, evaluation, pass1, pass2, context)
    heads = getattr(study, "head_analysis", None)
    if heads is not None:
        t4 = time.perf_counter()
        params = inspect.signature(heads).parameters
        given = {"selection": state.sets["selection"], "workers": run["workers"]}
        found = heads(rm, evaluation, state.sets["reference"], spec.seed, **{k: v for k, v in given.items()
                                                                            if k in params})
        if found is not None:
            data["heads"] = found
            timings["heads_s"] = time.perf_counter() - t4
    qk = getattr(study, "qk_analysis", None)
    if qk is not None:
        t5 = time.perf_counter()
        found = qk(rm, evaluation, data.get("heads"), spec.seed,
                   **({"workers": run["workers"]} if "workers" in inspect.signature(qk).parameters else {}))
        if found is not None:
            data["qk"] = found
            timings["qk_s"] = time.perf_counter() - t5
    graph = aggregated_graph(study, spec, [r for r in pass2 if r["edges"]], pass1, circuit, ig, rm)
    timings["total_s"] = time.perf_counter() - p.t0
    return StudyResult(spec, study.title, data, graph, timings)


def _test_set(p: _Passes, rankings: dict, presence: dict) -> dict:
    """The circuit chosen on the selection prompts, scored on the test prompts (their own reference means)."""
    spec, state, top, study = p.spec, p.state, p.top, p.state.study
    test = state.sets["test"]
    plan, _ = curve_plan(rankings, presence, spec.seed, [min(top, len(rankings["ig"]))], test=True)
    payload = {"set": "test", "curve": plan, "circuit": [], "context": {}, "checks": False}
    records = map_prompts(spec, "evaluate", payload, n=len(test), desc=f"{spec.study}: test set", **p.run)
    table = faithfulness_table(records, plan, {"ig": rankings["ig"]}, spec.seed)
    metrics = dataset_metrics(state.rm, test, spec.seed)
    return {"n": len(test), "n_reference": len(state.sets["test_reference"]), "metrics": metrics,
            "groups": state.means["test"].summary(test), "circuit": _headline(table, min(top, len(rankings["ig"]))),
            "conventions": table["conventions"], "full_metric": table["full_metric"],
            "description": getattr(study, "test_description", "")}
