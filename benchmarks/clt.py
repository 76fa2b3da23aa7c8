"""Issue 19: per-layer transcoders vs skip transcoders vs a cross-layer transcoder on the organism (``compare``).

``python benchmarks/clt.py compare --sets organism organism-skip organism-clt --prompts 8 --out FILE.json``
``python benchmarks/clt.py errors --sets organism --prompts 4`` (where the error nodes' influence sits)
``python benchmarks/clt.py scores --sets organism --prompts 8 --split train`` (the replacement score under the
target's convention and two labelled variants: BOS folded, transcoders only); ``--task induction`` or ``two_hop``
scores those case studies' contrast graphs instead (does a fit aimed at IOI cost the other circuits?)
``python benchmarks/clt.py gpt2 [--d-sae 24576] [--k 30] [--layers 12] [--pos 64] [--tolerance 1e-3] [--quick]
[--profile] [--out FILE.json] [--micro]``: a GPT-2-small-shaped random model (`gpt2_shaped`) with random TopK attention SAEs
and one random TopK CLT of d_sae features per layer; prints where the time goes, the peak resident memory and issue
19's targets (full graph ≤ 120 s, ≤ 12 GB on 2 cores). ``--quick``: 1,024 features, 16 tokens (a smoke run).
Measured numbers: docs/clt-benchmark.md.

For each dictionary set (all with the same attention SAEs), with every dictionary spliced (error terms off):

* the IOI logit difference kept, mean spliced / mean clean, on the IOI case study's held-out-template prompts
  (`IOIStudy("heldout").prompts(model, n, seed 0)`: held-out names, held-out templates, ABBA and BABA);
* per IOI contrast graph (logit(IO) − logit(S), the study's target) on the first ``--prompts`` of those prompts:
  replacement and completeness scores (`pruning.graph_scores`), nodes, edges and attribution seconds (analytic
  engine, every edge kept), as means over prompts.

FVU, ΔCE, KL and dead fractions come from ``circuits dicts eval --dicts SET`` and faithfulness from
``circuits study ioi --dicts SET`` (docs/skip-and-clt.md lists the commands).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


@torch.no_grad()
def ld_kept(rm, prompts) -> dict:
    """Mean IOI logit difference clean and with every dictionary spliced (errors off), and their ratio."""
    from circuits.replacement import splice_hooks
    from circuits.studies.base import single_token_id

    model = rm.model
    clean, spliced = [], []
    hooks = splice_hooks(list(rm.dictionaries), "off")
    for p in prompts:
        toks = rm.tokenize(p.clean)[None]
        a, w = single_token_id(model, p.answer), single_token_id(model, p.wrong)
        lc = model(toks)[0, -1]
        ls = model.run_with_hooks(toks, fwd_hooks=hooks)[0, -1]
        clean.append((lc[a] - lc[w]).item())
        spliced.append((ls[a] - ls[w]).item())
    c, s = sum(clean) / len(clean), sum(spliced) / len(spliced)
    return {"n": len(prompts), "ld_clean": c, "ld_spliced": s, "kept": s / c}


def graph_stats(rm, prompts) -> dict:
    from circuits.attribution import Contrast, attribute
    from circuits.pruning import graph_scores
    from circuits.studies.base import single_token_id

    rows = []
    for p in prompts:
        t0 = time.perf_counter()
        g = attribute(rm, p.clean, Contrast(single_token_id(rm.model, p.answer), single_token_id(rm.model, p.wrong)))
        seconds = time.perf_counter() - t0
        s = graph_scores(g)
        rows.append({"replacement": s.replacement, "completeness": s.completeness, "nodes": g.n_nodes,
                     "edges": g.n_edges, "seconds": seconds})
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} | {"n": len(rows), "per_prompt": rows}


def error_shares(rm, prompts) -> dict:
    """Where the replacement score's missing part sits: each error node's share of the influence that reaches the
    IOI contrast target from tokens and errors (`pruning.influence`; replacement = tokens / (tokens + errors)),
    summed per (kind, layer, "last" position or "earlier"), mean over prompts."""
    from collections import Counter

    from circuits.attribution import Contrast, attribute
    from circuits.graph import ERROR_KINDS
    from circuits.pruning import influence
    from circuits.studies.base import single_token_id

    shares: Counter = Counter()
    for p in prompts:
        g = attribute(rm, p.clean, Contrast(single_token_id(rm.model, p.answer), single_token_id(rm.model, p.wrong)))
        inf = influence(g)
        last = max(n.pos for n in g.nodes)
        total = sum(float(inf[i]) for i, n in enumerate(g.nodes) if n.kind == "token" or n.kind in ERROR_KINDS)
        for i, n in enumerate(g.nodes):
            if n.kind in ERROR_KINDS:
                key = f"{n.kind} L{n.layer} {'last' if n.pos == last else 'earlier'}"
                shares[key] += float(inf[i]) / total / len(prompts)
    return dict(shares.most_common())


#: Graph conventions of `score_variants`: the first is issue 19's target convention; the others are labelled variants.
VARIANTS = {
    "all dictionaries, every node (target)": "every dictionary of the set spliced, every node of the graph",
    "BOS folded": "the same graph with BOS features and errors folded into constants (`graph.fold_bos`; "
                  "circuit-tracer zeroes position 0's features and errors the same way)",
    "transcoders only": "only the set's MLP replacements; attention frozen and exact, so no attention features or "
                        "attention error nodes (circuit-tracer's setting)",
}


def variant_graphs(full, only, prompt) -> dict:
    """{variant: IOI contrast graph of `prompt`} for `VARIANTS`; `full` splices the whole set, `only` its MLP
    replacements (both `ReplacementModel`s)."""
    from circuits.attribution import Contrast, attribute
    from circuits.graph import fold_bos
    from circuits.studies.base import single_token_id

    target = Contrast(single_token_id(full.model, prompt.answer), single_token_id(full.model, prompt.wrong))
    g = attribute(full, prompt.clean, target)
    return dict(zip(VARIANTS, (g, fold_bos(g), attribute(only, prompt.clean, target)), strict=True))


def score_variants(model, dset, prompts) -> dict:
    """Mean replacement / completeness scores of the contrast graphs (answer vs wrong token) of `prompts` under each
    of `VARIANTS`."""
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.pruning import graph_scores
    from circuits.replacement import ReplacementModel

    mlps = DictionarySet(dset.model_name, {d.cfg.name: d for d in dset if d.cfg.kind == "transcoder"})
    full, only = ReplacementModel(model, dset, name="organism"), ReplacementModel(model, mlps, name="organism")
    rows: dict = {n: [] for n in VARIANTS}
    for p in prompts:
        for name, graph in variant_graphs(full, only, p).items():
            s = graph_scores(graph)
            rows[name].append((s.replacement, s.completeness, graph.n_nodes))
    from circuits.studies.stats import mean_interval

    return {n: {"replacement": sum(r[0] for r in v) / len(v), "completeness": sum(r[1] for r in v) / len(v),
                "min_replacement": min(r[0] for r in v), "nodes": sum(r[2] for r in v) / len(v), "n": len(v),
                "replacement_ci": mean_interval([r[0] for r in v]).as_dict(), "per_prompt": [r[0] for r in v]}
            for n, v in rows.items()}


def paired_difference(first: list[float], other: list[float]):
    """Mean of `other` − `first` over the same prompts, with its 95% paired bootstrap interval (resampling prompts,
    so the prompt-to-prompt spread that both sets share cancels): the honest way to call one set better."""
    from circuits.studies.stats import mean_interval

    return mean_interval([b - a for a, b in zip(first, other, strict=True)])


def task_prompts(model, task: str, n: int, split: str, seed: int = 0) -> tuple[list, str]:
    """(prompts, description): the IOI case study's prompts of `split`, or (to check that a fit aimed at IOI costs
    the other circuits nothing) the induction or two-hop case study's. Seed 0 gives the target's prompts; another
    seed draws other names, places and objects (held-out templates stay held-out templates)."""
    seeded = f", seed {seed}" if seed else ""
    if task == "ioi":
        from circuits.studies.ioi import IOIStudy

        return (IOIStudy(split).prompts(model, n, seed=seed),
                f"IOI contrast graphs of {n} {split}-template prompts{seeded}")
    from circuits.studies.induction import InductionStudy
    from circuits.studies.two_hop import TwoHopStudy

    study = InductionStudy() if task == "induction" else TwoHopStudy()
    return (study.prompts(model, n, seed=seed),
            f"{task} contrast graphs (answer vs the study's wrong token) of {n} prompts{seeded}")


def scores(sets: list[str], n_graphs: int, split: str, task: str = "ioi", seed: int = 0) -> None:
    """Print each set's replacement and completeness scores (every variant) on the same prompts, each later set
    with its paired difference to the first."""
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model

    model, _ = load_model("organism")
    prompts, what = task_prompts(model, task, n_graphs, split, seed)
    first: dict = {}
    for name in sets:
        print(f"{name}: {what} (mean [95% bootstrap interval over prompts]; min replacement)")
        for variant, r in score_variants(model, load_dictionaries(name, model), prompts).items():
            ci = r["replacement_ci"]
            line = (f"  {variant:<40} replacement {r['replacement']:.4f} [{ci['lo']:.4f}, {ci['hi']:.4f}] "
                    f"(min {r['min_replacement']:.4f})  completeness {r['completeness']:.4f}  nodes {r['nodes']:.0f}")
            if variant in first:  # the same prompts as the first set: a paired interval of the difference
                diff = paired_difference(first[variant], r["per_prompt"])
                line += f"  minus {sets[0]}: {diff.value:+.4f} [{diff.lo:+.4f}, {diff.hi:+.4f}]"
            else:
                first[variant] = r["per_prompt"]
            print(line, flush=True)


#: Fidelity sizes of the comparison (smaller than `FidelitySizes()` so that three sets fit a session on a loaded
#: 2-core machine; the same for every set): 8,192 scored tokens, 131,072 tokens for the dead fraction, 50 IOI
#: prompts per order (training templates; the held-out-template number is `ld_kept` on the study's prompts).
SIZES = dict(rows=64, mean_rows=32, ioi_prompts=50, batch=32, dead_rows=1024)


def fidelity(model, dset) -> dict:
    """MLP replacements alone (each per-layer transcoder alone, a CLT whole: FVU, L0, dead, ΔCE, KL per layer) and
    every dictionary spliced at once (ΔCE, KL, IOI logit difference kept on training and held-out templates)."""
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.dictionaries.evaluate import FidelitySizes, evaluate_fidelity

    sizes = FidelitySizes(**SIZES)
    mlps = DictionarySet(dset.model_name, {d.cfg.name: d for d in dset if d.cfg.kind == "transcoder"})
    per_layer = evaluate_fidelity(model, mlps, sizes)
    everything = evaluate_fidelity(model, dset, sizes, per_dictionary=False)["all"]
    keys = ("fvu", "l0", "dead", "dead_scored", "ce_increase", "kl", "ioi_ld_retained")
    return {"per_layer": {n: {k: m[k] for k in keys} for n, m in per_layer["dictionaries"].items()},
            "mlps_all": per_layer["all"], "all": everything}


def compare(sets: list[str], n_ld: int, n_graphs: int) -> dict:
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel
    from circuits.studies.ioi import IOIStudy

    model, _ = load_model("organism")
    prompts = IOIStudy("heldout").prompts(model, n_ld, seed=0)
    out = {"load_average": os.getloadavg(), "prompts": {"ld": n_ld, "graphs": n_graphs}, "sizes": SIZES, "sets": {}}
    for name in sets:
        t0 = time.perf_counter()
        dset = load_dictionaries(name, model)
        rm = ReplacementModel(model, dset, name="organism")
        res = {"ld": ld_kept(rm, prompts), "graphs": graph_stats(rm, prompts[:n_graphs]),
               "fidelity": fidelity(model, dset), "features": {d.cfg.name: d.cfg.d_sae for d in dset}}
        res["seconds"] = time.perf_counter() - t0
        out["sets"][name] = res
        g, f = res["graphs"], res["fidelity"]["all"]
        print(f"{name:<14} LD kept (held-out templates, study prompts) {res['ld']['kept']:.3f}  all spliced: ΔCE "
              f"{f['ce_increase']:.4f} KL {f['kl']:.4f}  graphs: replacement {g['replacement']:.3f} completeness "
              f"{g['completeness']:.3f} nodes {g['nodes']:.0f} edges {g['edges']:.0f} {g['seconds']:.2f} s", flush=True)
        for n, m in res["fidelity"]["per_layer"].items():
            print(f"    {n:<14} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()), flush=True)
    return out


def errors(sets: list[str], n_graphs: int, split: str = "heldout") -> None:
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel
    from circuits.studies.ioi import IOIStudy

    model, _ = load_model("organism")
    prompts = IOIStudy(split).prompts(model, n_graphs, seed=0)
    for name in sets:
        shares = error_shares(ReplacementModel(model, load_dictionaries(name, model), name="organism"), prompts)
        print(f"{name}: error nodes' share of token + error influence {sum(shares.values()):.3f} "
              f"(replacement = 1 - that); largest:")
        for key, v in list(shares.items())[:10]:
            print(f"  {key:<24} {v:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--sets", nargs="+", default=["organism", "organism-skip", "organism-clt"])
    c.add_argument("--ld-prompts", type=int, default=100)
    c.add_argument("--prompts", type=int, default=4, help="IOI contrast graphs per set")
    c.add_argument("--out", default=None)
    e = sub.add_parser("errors", help="each error node's share of the IOI contrast graphs' influence (what keeps the "
                       "replacement score below 1), per kind, layer and position")
    e.add_argument("--sets", nargs="+", default=["organism"])
    e.add_argument("--prompts", type=int, default=4)
    e.add_argument("--split", choices=["train", "heldout"], default="heldout",
                   help="IOI case study prompts: held-out templates (the target's, default) or training templates")
    s = sub.add_parser("scores", help="replacement / completeness of IOI contrast graphs under the target's "
                       "convention and two labelled variants (BOS folded; transcoders only, circuit-tracer's setting)")
    s.add_argument("--sets", nargs="+", default=["organism"])
    s.add_argument("--prompts", type=int, default=8)
    s.add_argument("--split", choices=["train", "heldout"], default="train",
                   help="IOI case study prompts: training templates (for development) or held-out templates")
    s.add_argument("--task", choices=["ioi", "induction", "two_hop"], default="ioi", help="whose case study's "
                   "prompts (induction and two-hop have no template split: --split is ignored)")
    s.add_argument("--seed", type=int, default=0, help="prompt draw (0: the target's prompts; another seed: "
                   "other names, places and objects in the same IOI templates, e.g. a larger sample for a set "
                   "already chosen; two-hop's prompts cycle one list, so its seeds overlap)")
    b = sub.add_parser("gpt2")
    b.add_argument("--d-sae", type=int, default=24576, help="CLT and attention-SAE features per layer")
    b.add_argument("--k", type=int, default=30, help="TopK: active features per dictionary, layer and position")
    b.add_argument("--layers", type=int, default=12, help="the first N blocks of the model (1-12)")
    b.add_argument("--pos", type=int, default=64, help="prompt length in tokens")
    b.add_argument("--tolerance", type=float, default=1e-3, help="edge_tolerance of attribute()")
    b.add_argument("--quick", action="store_true", help="smoke run: 1,024 features, 16 tokens")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, OMP_NUM_THREADS)")
    b.add_argument("--profile", action="store_true", help="print a cProfile of the forward and attribute()")
    b.add_argument("--out", default=None, help="write the numbers as JSON")
    b.add_argument("--micro", action="store_true", help="only time two engine changes on the target's shapes")
    b.add_argument("--per-layer", action="store_true",
                   help="per-layer transcoders instead of the CLT (12 layers): the same measurement, for comparison")
    args = ap.parse_args()
    if args.mode == "gpt2":
        if min(args.d_sae, args.k, args.pos) <= 0 or args.k > args.d_sae:
            ap.error("--d-sae, --k and --pos must be positive, and --k at most --d-sae")
        if args.per_layer and args.layers != 12:
            ap.error("--per-layer builds gpt2_shaped's 12 layers; leave --layers at 12")
        if not 1 <= args.layers <= 12:
            ap.error(f"--layers must be between 1 and 12 (the GPT-2-small-shaped model's blocks), got {args.layers}")
        if args.threads:
            torch.set_num_threads(args.threads)
        from clt_scale import gpt2, micro  # benchmarks/ is the script's folder, hence on sys.path

        if args.micro:
            micro()
        else:
            d_sae, n_pos = (1024, 16) if args.quick else (args.d_sae, args.pos)
            res = gpt2(d_sae, args.k, args.layers, n_pos, args.tolerance, args.profile, args.per_layer)
            if args.out:
                Path(args.out).write_text(json.dumps(res, indent=2))
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.mode == "errors":
        errors(args.sets, args.prompts, args.split)
        return
    if args.mode == "scores":
        scores(args.sets, args.prompts, args.split, args.task, args.seed)
        return
    res = compare(args.sets, args.ld_prompts, args.prompts)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
