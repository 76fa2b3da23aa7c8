"""Issue 19: per-layer transcoders vs skip transcoders vs a cross-layer transcoder on the organism (``compare``).

``python benchmarks/clt.py compare --sets organism organism-skip organism-clt --prompts 8 --out FILE.json``
``python benchmarks/clt.py gpt2 [--d-sae 24576] [--k 30] [--pos 64] [--tolerance 1e-3]``: a GPT-2-small-shaped random
model (`gpt2_shaped`) with random TopK attention SAEs and one random TopK CLT of d_sae features per layer; prints
the graph time and the peak resident memory (issue 19 target: ≤ 120 s, ≤ 12 GB on 2 cores).

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


#: Fidelity sizes of the comparison (smaller than `FidelitySizes()` so that three sets fit a session; the same for
#: every set): 16,384 scored tokens, 262,144 tokens for the dead fraction, 100 IOI prompts per order.
SIZES = dict(rows=128, mean_rows=64, ioi_prompts=100, batch=32, dead_rows=2048)


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


def gpt2(d_sae: int, k: int, n_pos: int, tolerance: float) -> None:
    import resource

    from gpt2_shaped import gpt2_shaped

    from circuits.attribution import TopLogits, attribute
    from circuits.dictionaries.clt import CLTConfig, CrossLayerTranscoder
    from circuits.replacement import ReplacementModel

    t0 = time.perf_counter()
    attn = gpt2_shaped(d_sae, k, kinds=("attention_sae",))
    clt = CrossLayerTranscoder(CLTConfig(12, 768, d_sae, activation="topk", k=k, context_size=1024,
                                         model_name="gpt2-shaped-random"))
    with torch.no_grad():
        for layer in clt.layers:
            layer.W_enc.normal_(0, 768 ** -0.5)
            layer.W_dec_out.normal_(0, (d_sae * layer.W_dec_out.shape[1]) ** -0.5)
    clt.requires_grad_(False)
    rm = ReplacementModel(attn.model, list(attn.dictionaries) + list(clt.eval().layers))
    build_s = time.perf_counter() - t0
    tokens = torch.randint(1, 50257, (n_pos,), generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    g = attribute(rm, tokens, TopLogits(), edge_tolerance=tolerance, memory_limit_bytes=6 * 2**30)
    graph_s = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()}; CLT 12 x {d_sae} features "
          f"(TopK {k}) + 12 attention SAEs; {n_pos} tokens; tolerance {tolerance}")
    print(f"build {build_s:.1f} s; graph {graph_s:.1f} s ({g.metadata['timings_s']}); {g.n_nodes} nodes, "
          f"{g.n_edges} edges; peak RSS {peak:.2f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--sets", nargs="+", default=["organism", "organism-skip", "organism-clt"])
    c.add_argument("--ld-prompts", type=int, default=200)
    c.add_argument("--prompts", type=int, default=8, help="IOI contrast graphs per set")
    c.add_argument("--out", default=None)
    b = sub.add_parser("gpt2")
    b.add_argument("--d-sae", type=int, default=24576)
    b.add_argument("--k", type=int, default=30)
    b.add_argument("--pos", type=int, default=64)
    b.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()
    if args.mode == "gpt2":
        gpt2(args.d_sae, args.k, args.pos, args.tolerance)
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    res = compare(args.sets, args.ld_prompts, args.prompts)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
