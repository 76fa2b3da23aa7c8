"""Running a case study end to end: metrics, splice fidelity, graphs aggregated by role, the circuit, its
faithfulness curve against random circuits, the checks — returned as one `StudyResult` (see `report` for files).

The circuit is the top-K *supporting* feature role nodes: the largest positive mean integrated-gradient scores
(their share of the metric under mean ablation, averaged over prompts). Ranking by |score| instead (which also
keeps nodes that work against the answer) is reported alongside; so are circuits with every error node kept.
Keeping only supporting nodes can give faithfulness above 1: the ablated remainder includes nodes that lowered the
metric. Faithfulness of a circuit C over the dataset
(Marks et al. 2024): ``(m̄(C) − m̄(∅)) / (m̄(M) − m̄(∅))`` with m̄ the mean metric over prompts, everything outside C
mean-ablated to its group mean (see `circuits.studies.base`), attention and LayerNorm live. Two curves are drawn:
features with every error node kept, and features alone (errors ablated too); each against random circuits of the
same size drawn uniformly from all feature role nodes seen in the dataset.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from statistics import mean

import torch

from circuits.graph import FEATURE_KINDS
from circuits.replacement import splice_hooks
from circuits.studies.base import OTHER, RoleKey, role_key_str
from circuits.studies.batch import StudySpec, build_state, check_not_bootstrapping, map_prompts

CURVE_SIZES = (0, 5, 10, 20, 50, 100, 200, 500)
RANDOM_SEEDS = 3


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


def dataset_metrics(rm, prepared) -> dict:
    clean = _batched_metric(rm.model, prepared, lambda pp: pp.tokens)
    corrupt = _batched_metric(rm.model, prepared, lambda pp: pp.corrupt_tokens)
    by_group: dict[str, list[float]] = defaultdict(list)
    for pp, m in zip(prepared, clean, strict=True):
        by_group[pp.prompt.meta.get("subset", pp.prompt.group)].append(m)
    return {
        "per_prompt": {"clean": clean, "corrupt": corrupt},
        "clean_mean": mean(clean), "corrupt_mean": mean(corrupt),
        "accuracy": mean(float(m > 0) for m in clean),
        "subsets": {g: {"n": len(v), "metric_mean": mean(v), "accuracy": mean(float(m > 0) for m in v)}
                    for g, v in sorted(by_group.items())},
    }


def splice_fidelity(rm, prepared, clean_mean: float) -> list[dict]:
    """Metric with each dictionary spliced alone (error term off), and all at once; retained = ratio of means."""
    rows = []
    members = [[d] for d in rm.dictionaries] + [list(rm.dictionaries)]
    for ds in members:
        m = mean(_batched_metric(rm.model, prepared, lambda pp: pp.tokens, splice_hooks(ds, "off")))
        rows.append({"spliced": ds[0].cfg.name if len(ds) == 1 else "all", "metric_mean": m,
                     "retained": m / clean_mean if clean_mean else float("nan")})
    return rows


def _mean_dicts(records: list[dict], field_name: str) -> dict:
    acc: dict = defaultdict(float)
    for r in records:
        for k, v in r[field_name].items():
            acc[k] += v
    return {k: v / len(records) for k, v in acc.items()}


def _presence(records: list[dict]) -> dict:
    acc: dict = defaultdict(int)
    for r in records:
        for k in r["ig"]:
            if k[0] in FEATURE_KINDS:
                acc[k] += 1
    return acc


def curve_plan(ranking: list[RoleKey], magnitude: list[RoleKey], pool: list[RoleKey], seed: int,
               sizes=CURVE_SIZES) -> list[tuple[str, frozenset, bool]]:
    plan = [("empty", frozenset(), False), ("errors only", frozenset(), True)]
    for k in sizes:
        if k == 0 or k > len(pool):
            continue
        plan += [(f"top {k} + errors", frozenset(ranking[:k]), True), (f"top {k}", frozenset(ranking[:k]), False),
                 (f"|top| {k} + errors", frozenset(magnitude[:k]), True),
                 (f"|top| {k}", frozenset(magnitude[:k]), False)]
        for s in range(RANDOM_SEEDS):
            pick = frozenset(random.Random(f"{seed}-{k}-{s}").sample(pool, k))
            plan += [(f"random {k} + errors #{s}", pick, True), (f"random {k} #{s}", pick, False)]
    return plan


def run_study(spec: StudySpec, *, rm=None, study=None, workers: int = 1, ray_address: str | None = None,
              top: int = 100, progress: bool = True) -> StudyResult:
    """Run the study of `spec` (or the given `study` object, in-process) and return its result (see `report`).

    With ``workers > 1`` per-prompt work runs in spawned processes (see `circuits.studies.batch`); called from the
    top level of a script without an ``if __name__ == "__main__":`` guard it runs in this process instead, with a
    warning."""
    check_not_bootstrapping()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    state = build_state(spec, rm, study)
    given_study = study  # a study object given by the caller forces in-process work (it cannot be rebuilt by name)
    rm, study, prepared = state.rm, state.study, state.prepared
    metrics = dataset_metrics(rm, prepared)
    sizes: dict[str, int] = defaultdict(int)
    for pp in prepared:
        sizes[pp.group] += 1
    metrics["groups"] = {"count": len(sizes), "smallest": min(sizes.values()), "largest": max(sizes.values())}
    fidelity = splice_fidelity(rm, prepared, metrics["clean_mean"])
    timings["setup_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    pass1 = map_prompts(spec, "analyse", {}, workers=workers, ray_address=ray_address, rm=rm, study=given_study,
                        progress=progress, desc=f"{spec.study}: graphs")
    timings["graphs_s"] = time.perf_counter() - t1

    ig = _mean_dicts(pass1, "ig")
    effects = _mean_dicts(pass1, "effects")
    presence = _presence(pass1)
    # supporting ranking (default circuit): largest positive mean IG first; magnitude ranking: largest |mean IG|
    features = sorted((k for k in ig if k[0] in FEATURE_KINDS), key=lambda k: (-ig[k], k))
    magnitude = sorted(features, key=lambda k: (-abs(ig[k]), k))
    circuit = features[:top]
    ranking = [(k, ig[k]) for k in features]
    plan = curve_plan(features, magnitude, sorted(features), spec.seed, sorted(set(CURVE_SIZES) | {top}))

    t2 = time.perf_counter()
    context = {"ranking": ranking}  # checks pick their role's top features from the whole ranking
    pass2 = map_prompts(spec, "evaluate", {"curve": plan, "circuit": circuit, "context": context}, workers=workers,
                        ray_address=ray_address, rm=rm, study=given_study, progress=progress,
                        desc=f"{spec.study}: circuits")
    timings["circuits_s"] = time.perf_counter() - t2

    curve = faithfulness_curve(pass2, plan)
    checks = {}
    for c in study.checks():
        checks[c.name] = c.summarize([r["checks"][c.name] for r in pass2])
    n = len(prepared)
    ig_gap = [sum(r["ig"].values()) - (r["metric"] - r["ig_empty"]) for r in pass1]
    data = {
        "study": spec.study, "title": study.title, "description": study.description,
        "spec": {"model": spec.model, "dicts": spec.dicts, "n": spec.n, "seed": spec.seed,
                 "options": dict(spec.options), "ig_steps": spec.ig_steps, "top": top},
        "roles": list(study.all_roles),
        "metric": f"logit({study.answer_label}) − logit({study.wrong_label}) at the last position",
        "metrics": metrics,
        "fidelity": fidelity,
        "graphs": {"mean_nodes": mean(r["graph_nodes"] for r in pass1),
                   "mean_edges": mean(r["graph_edges"] for r in pass1)},
        "ig_completeness": {"mean_abs_gap": mean(abs(g) for g in ig_gap),
                            "mean_metric_minus_empty": mean(r["metric"] - r["ig_empty"] for r in pass1)},
        "features": [{"node": role_key_str(k), "kind": k[0], "layer": k[1], "role": k[2], "index": k[3],
                      "ig_mean": ig[k], "effect_mean": effects.get(k, 0.0), "presence": presence[k] / n}
                     for k in features[: max(top, 200)]],
        "errors": sorted(({"node": role_key_str(k), "ig_mean": v, "effect_mean": effects.get(k, 0.0)}
                          for k, v in ig.items() if k[0] not in FEATURE_KINDS),
                         key=lambda r: (-abs(r["ig_mean"]), r["node"]))[:40],
        "roles_summary": _role_summary(ig, effects, study.all_roles),
        "components": _components(pass1),
        "traffic": _traffic(pass1),
        "curve": curve,
        "circuit": {"n_features": len(circuit), "n_candidates": len(features),
                    "faithfulness_with_errors": curve["points"].get(f"top {len(circuit)} + errors", {}).get("score"),
                    "faithfulness_features_only": curve["points"].get(f"top {len(circuit)}", {}).get("score"),
                    **_random_at(curve, len(circuit))},
        "checks": checks,
        "n_prompts": n,
    }
    extra = getattr(study, "extra_analysis", None)
    if extra is not None:
        data["extra"] = extra(rm, prepared, pass1, pass2, context)
    graph = aggregated_graph(study, spec, pass2, pass1, circuit, ig, rm)
    timings["total_s"] = time.perf_counter() - t0
    return StudyResult(spec, study.title, data, graph, timings)


def pstdev(values: list[float]) -> float:
    """Population standard deviation (nan-safe: statistics.pstdev fails on nan)."""
    m = mean(values)
    return (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5


def faithfulness_curve(pass2: list[dict], plan) -> dict:
    means = {label: mean(r["curve"][label] for r in pass2) for label, _, _ in plan}
    full = mean(r["metric"] for r in pass2)
    empty = means["empty"]
    denom = full - empty

    def score(label: str) -> float:
        return (means[label] - empty) / denom if denom else float("nan")

    points = {label: {"metric_mean": means[label], "score": score(label)} for label, _, _ in plan}
    sizes = sorted({int(label.split()[1]) for label, _, _ in plan if label.startswith("top ")})
    rows = []
    for k in sizes:
        row = {"k": k}
        for suffix, tag in ((" + errors", "with_errors"), ("", "features_only")):
            rnd = [score(f"random {k}{suffix} #{s}") for s in range(RANDOM_SEEDS)]
            row[f"top_{tag}"] = score(f"top {k}{suffix}")
            row[f"magnitude_{tag}"] = score(f"|top| {k}{suffix}")
            row[f"random_{tag}_mean"] = mean(rnd)
            row[f"random_{tag}_sd"] = pstdev(rnd)
        rows.append(row)
    return {"full_metric": full, "empty_metric": empty, "errors_only": score("errors only"), "rows": rows,
            "points": points,
            "ablation": "mean over the study's prompts of the same group at the same position"}


def _random_at(curve: dict, k: int) -> dict:
    row = next((r for r in curve["rows"] if r["k"] == k), None)
    return {"random_features_only": row["random_features_only_mean"] if row else float("nan"),
            "random_with_errors": row["random_with_errors_mean"] if row else float("nan")}


def _role_summary(ig: dict, effects: dict, roles) -> list[dict]:
    rows = []
    for role in roles:
        row = {"role": role}
        for kind in ("attn_feature", "mlp_feature", "attn_error", "mlp_error", "token"):
            row[f"{kind}_effect"] = sum(v for k, v in effects.items() if k[0] == kind and k[2] == role)
            row[f"{kind}_ig"] = sum(v for k, v in ig.items() if k[0] == kind and k[2] == role)
        rows.append(row)
    return rows


def _components(pass1: list[dict]) -> list[dict]:
    acc: dict = defaultdict(lambda: [0.0, 0.0])
    for r in pass1:
        for k, (f, e) in r["components"].items():
            acc[k][0] += f / len(pass1)
            acc[k][1] += e / len(pass1)
    rows = [{"site": k[0], "layer": k[1], "head": k[2], "role": k[3], "features": v[0], "error": v[1],
             "total": v[0] + v[1]} for k, v in acc.items()]
    rows.sort(key=lambda r: (r["site"], r["layer"], r["head"], r["role"]))
    return rows


def _traffic(pass1: list[dict], top: int = 40) -> list[dict]:
    acc: dict = defaultdict(float)
    for r in pass1:
        for k, v in r["traffic"].items():
            acc[k] += v / len(pass1)
    rows = [{"head": f"L{k[0]}H{k[1]}", "layer": k[0], "h": k[1], "from": k[2], "to": k[3], "effect": v}
            for k, v in acc.items()]
    rows.sort(key=lambda r: (-abs(r["effect"]), r["head"], r["from"], r["to"]))
    return rows[:top]


def aggregated_graph(study, spec: StudySpec, pass2: list[dict], pass1: list[dict], circuit: list[RoleKey],
                     ig: dict, rm):
    """A `Graph` over role nodes: position = role index (token_strings = role names), edges = mean over prompts of
    the summed edges between the role nodes, activations = fraction of prompts on which the node is active."""
    from circuits.graph import Graph, Node

    roles = list(study.all_roles)
    n_layers = rm.n_layers
    edges: dict = defaultdict(float)
    for r in pass2:
        for k, v in r["edges"].items():
            edges[k] += v / len(pass2)
    presence: dict = defaultdict(int)
    for r in pass1:
        for k in r["effects"]:
            presence[k] += 1
    keys = set(circuit)
    for s, t in edges:
        keys.add(s)
        keys.add(t)
    keys = [k for k in keys if k[0] not in FEATURE_KINDS or k in set(circuit)]

    def node_of(k: RoleKey) -> Node:
        kind, layer, role, index = k
        pos = roles.index(role) if role in roles else roles.index(OTHER)
        if kind in ("logit", "logit_diff"):
            return Node(kind, n_layers, pos, 0)
        return Node(kind, layer, pos, index)

    nodes = sorted({node_of(k): k for k in keys}.items(), key=lambda kv: (kv[0].order, kv[0].pos, kv[0].index))
    row = {k: i for i, (_, k) in enumerate(nodes)}
    pairs = sorted(((row[s], row[t], w) for (s, t), w in edges.items() if s in row and t in row and w != 0))
    edge_index = torch.tensor([[t for _, t, _ in pairs], [s for s, _, _ in pairs]], dtype=torch.long).reshape(2, -1)
    weight = torch.tensor([w for _, _, w in pairs], dtype=torch.float64)
    acts = torch.tensor([presence[k] / len(pass1) if k[0] not in ("logit", "logit_diff") else 1.0
                         for _, k in nodes], dtype=torch.float64)
    target = torch.tensor([1.0 if k[0] in ("logit", "logit_diff") else 0.0 for _, k in nodes], dtype=torch.float64)
    meta = {
        "model": spec.model, "aggregated": True, "study": spec.study, "n_prompts": len(pass2),
        "dictionaries": sorted(d.cfg.name for d in rm.dictionaries), "method": "aggregated",
        "n_heads": rm.cfg.n_heads,
        "token_strings": roles, "tokens": list(range(len(roles))), "bos_pos": None, "n_layers": n_layers,
        "prompt": f"{study.title}: {len(pass2)} prompts aggregated by role",
        "targets": [{"label": f"{study.answer_label} − {study.wrong_label}", "node": n.to_json(), "weight": 1.0,
                     "value": 0.0, "probability": None} for n, k in nodes if k[0] in ("logit", "logit_diff")],
        "note": "position = role (see token_strings); activation = fraction of prompts where the node is active; "
                "edge = mean over prompts of the summed edges between the role nodes; "
                "ig = mean integrated-gradient score under mean ablation",
        "ig": {role_key_str(k): ig.get(k, 0.0) for _, k in nodes if k[0] in FEATURE_KINDS},
    }
    return Graph(nodes=tuple(n for n, _ in nodes), activations=acts, edge_index=edge_index, edge_weight=weight,
                 metadata=meta, target_weights=target)
