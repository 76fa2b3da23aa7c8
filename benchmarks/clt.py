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


#: Issue 19's targets for the GPT-2-small-shaped CLT graph on 2 cores (12 GB = 11.18 GiB).
SCALE_TARGET_S, SCALE_TARGET_BYTES = 120.0, 12e9
#: The target size: 12 layers, 24,576 features per layer, 64 tokens (anything else is a smoke or scaling run).
SCALE_FULL = dict(layers=12, d_sae=24576, pos=64)


def gpt2_clt(d_sae: int, k: int, n_layers: int = 12):
    """(rm, clt): the GPT-2-small-shaped random model of `gpt2_shaped` (cut to its first `n_layers` blocks for smoke
    and scaling runs) with its random TopK(k) attention SAEs of d_sae features at every layer, and one random TopK(k)
    CLT of d_sae features per layer: encoder l reads ln2.hook_normalized of layer l, ``W_dec_l [d_sae, n_layers − l,
    768]`` writes every MLP output l' ≥ l (n_layers·(n_layers+1)/2 decoder blocks: 78 at 12 layers). TopK gives
    L0 = k per layer and position exactly, the approach of the per-layer `attribution.py scale` benchmark (same k,
    so the two graphs have the same number of feature nodes). Weights as `gpt2_shaped`'s: W_enc ~ N(0, 1/768);
    each decoder block ~ N(0, 1/(d_sae·(n_layers − l))). Only shapes matter for time and memory."""
    from gpt2_shaped import gpt2_shaped

    from circuits.dictionaries.clt import CLTConfig, CrossLayerTranscoder
    from circuits.replacement import ReplacementModel

    if not 1 <= n_layers <= 12:
        raise ValueError(f"n_layers must be between 1 and 12, got {n_layers}")
    base = gpt2_shaped(d_sae, k, kinds=("attention_sae",))
    model = base.model
    if n_layers < 12:  # the first n_layers blocks of the same model (TransformerLens loops over model.blocks)
        model.blocks = model.blocks[:n_layers]
        model.cfg.n_layers = n_layers
        model.setup()
    attn = [d for d in base.dictionaries if d.cfg.layer < n_layers]
    del base
    clt = CrossLayerTranscoder(CLTConfig(n_layers, 768, d_sae, activation="topk", k=k, context_size=1024,
                                         model_name="gpt2-shaped-random"))
    with torch.no_grad():
        for layer in clt.layers:
            layer.W_enc.normal_(0, 768 ** -0.5)
            layer.W_dec_out.normal_(0, (d_sae * layer.W_dec_out.shape[1]) ** -0.5)
    clt.requires_grad_(False)
    return ReplacementModel(model, attn + list(clt.eval().layers)), clt


def _memory_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now) or VmHWM (peak resident since start or reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_s() -> float:
    """User + system CPU seconds of this process so far (all threads): what the graph costs regardless of how many
    other processes share the cores (wall time on a loaded machine is mostly waiting)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _weight_bytes(rm) -> int:
    params = {id(p): p for m in (rm.model, *rm.dictionaries) for p in m.parameters()}
    return sum(p.numel() * p.element_size() for p in params.values())


def gpt2(d_sae: int, k: int, n_layers: int, n_pos: int, tolerance: float, profile: bool = False,
         per_layer: bool = False) -> dict:
    """Build the model and CLT, then time one full graph (forward + `attribute`, TopLogits, `tolerance`) and
    measure the process's peak resident memory; print a table with issue 19's targets and return the numbers.
    per_layer: per-layer TopK transcoders of d_sae features instead of the CLT (`gpt2_shaped(d_sae, k)`, the
    `attribution.py scale` model, 12 layers only), measured the same way, for a same-machine comparison."""
    from circuits.attribution import TopLogits, attribute
    from circuits.pruning import prune

    gib = 2**30
    t0 = time.perf_counter()
    if per_layer:
        from gpt2_shaped import gpt2_shaped

        if n_layers != 12:
            raise ValueError("per_layer: gpt2_shaped builds 12 layers")
        rm = gpt2_shaped(d_sae, k)
    else:
        rm, _ = gpt2_clt(d_sae, k, n_layers)
    build_s = time.perf_counter() - t0
    weights = _weight_bytes(rm)
    rss_built, peak_build = _memory_kib("VmRSS") * 1024, _memory_kib("VmHWM") * 1024
    reset = _reset_peak()
    tokens = torch.randint(1, 50257, (n_pos,), generator=torch.Generator().manual_seed(0))
    load_before = os.getloadavg()
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    cpu0 = _cpu_s()
    t = time.perf_counter()
    cache = rm.run(tokens)
    forward_s = time.perf_counter() - t
    forward_cpu_s = _cpu_s() - cpu0
    t = time.perf_counter()
    g = attribute(rm, tokens, TopLogits(), edge_tolerance=tolerance, cache=cache, memory_limit_bytes=6 * gib)
    attribute_s = time.perf_counter() - t
    if prof is not None:
        prof.disable()
    cpu_s = _cpu_s() - cpu0
    peak_graph = _memory_kib("VmHWM") * 1024
    load_after = os.getloadavg()
    t = time.perf_counter()
    pruned = prune(g).graph
    prune_s = time.perf_counter() - t
    peak = max(peak_build, peak_graph) if reset else peak_graph
    mask = g.explained_mask()
    gap = (g.incoming_sum() + g.dropped + g.constants - g.pre_activations)[mask].abs().max().item()
    kinds = [n.kind for n in g.nodes]
    n_clt, n_attn = kinds.count("mlp_feature"), kinds.count("attn_feature")
    total_s = forward_s + attribute_s
    full = dict(layers=n_layers, d_sae=d_sae, pos=n_pos) == SCALE_FULL and tolerance == 1e-3 and not per_layer
    res = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "torch_threads": torch.get_num_threads(),
           "load_average_before": load_before, "load_average_after": load_after, "layers": n_layers, "d_sae": d_sae,
           "k": k, "pos": n_pos, "mlp": "per-layer transcoders" if per_layer else "CLT", "tolerance": tolerance, "build_s": build_s, "forward_s": forward_s,
           "attribute_s": attribute_s, "timings_s": g.metadata["timings_s"], "graph_s": total_s, "graph_cpu_s": cpu_s, "forward_cpu_s": forward_cpu_s,
           "prune_s": prune_s, "nodes": g.n_nodes, "clt_features": n_clt, "attn_features": n_attn,
           "edges": g.n_edges, "pruned": [pruned.n_nodes, pruned.n_edges], "exactness_gap": gap,
           "weight_bytes": weights, "rss_after_build_bytes": rss_built, "peak_build_bytes": peak_build,
           "peak_graph_bytes": peak_graph, "peak_bytes": peak, "full_size": full}
    verdict = (lambda ok: "met" if ok else "MISSED") if full else (lambda ok: "n/a (not the target size)")
    print(f"torch threads {res['torch_threads']}; load average {load_before[0]:.2f} / {load_before[1]:.2f} before, "
          f"{load_after[0]:.2f} / {load_after[1]:.2f} after (1 / 5 min, {os.cpu_count()} CPUs)")
    mlp = (f"{n_layers} per-layer TopK transcoders of {d_sae:,} (k={k}; the CLT's comparison, not its target)"
           if per_layer else f"one TopK CLT of {d_sae:,} features per layer (k={k}, "
           f"{n_layers * (n_layers + 1) // 2} decoder blocks)")
    print(f"{n_layers} layers, d_model 768, 12 heads; {mlp} + {n_layers} TopK attention SAEs of {d_sae:,}; "
          f"{n_pos} tokens; TopLogits; edge_tolerance {tolerance}")
    print(f"{'stage':<48} {'seconds':>8}")
    for name, value in (("build model + dictionaries (not counted)", build_s),
                        ("replacement forward + cache", forward_s),
                        ("  attribute: sources + edges (analytic)", g.metadata["timings_s"]["edges"]),
                        ("  attribute: total", attribute_s),
                        ("full graph: forward + attribute", total_s),
                        ("  its CPU time (user + system, all threads)", cpu_s),
                        ("    of which the forward", forward_cpu_s),
                        ("prune (not counted)", prune_s)):
        print(f"{name:<48} {value:>8.2f}")
    print(f"nodes {g.n_nodes:,} ({n_clt:,} {'transcoder' if per_layer else 'CLT'} features, {n_attn:,} attention features, average L0 per "
          f"dictionary and position {(n_clt + n_attn) / (2 * n_layers * n_pos):.1f}), edges stored {g.n_edges:,}, "
          f"pruned {pruned.n_nodes} nodes / {pruned.n_edges} edges")
    print(f"exactness: max |edges + dropped + constant − pre-activation| = {gap:.2e}")
    print(f"memory: weights {weights / gib:.2f} GiB (model and dictionaries); resident after build {rss_built / gib:.2f} "
          f"GiB; peak during build {peak_build / gib:.2f} GiB; peak during the graph "
          f"{peak_graph / gib:.2f} GiB{'' if reset else ' (peak could not be reset: whole process)'}")
    print(f"{'target (issue 19)':<48} {'measured':>18}  verdict")
    print(f"{'full graph ≤ 120 s (forward + attribute)':<48} {total_s:>16.1f} s  {verdict(total_s <= SCALE_TARGET_S)}")
    print(f"{'peak resident memory ≤ 12 GB (= 11.18 GiB)':<48} {peak / 1e9:>10.2f} GB "
          f"({peak / gib:.2f} GiB)  {verdict(peak <= SCALE_TARGET_BYTES)}")
    if prof is not None:
        import pstats

        print("\nprofile of the forward and attribute() (cProfile, top 25 by internal time):")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return res


def micro() -> None:
    """Two engine changes tried on the shapes of the target-size graph, without the model (CPU seconds per call, one
    thread, and the largest difference from the engine's current product): (1) a CLT decoder block applied to
    TopK-30 codes of 64 tokens densely (as `CLTLayer.reconstruct` does, on the strided ``W_dec_out[:, j]``) vs
    reading only the active rows (`train.sparse_decode`'s embedding_bag, and a gather + index_add); (2) one query
    position's attention-feature edges as `analytic._attention_layer` computes them (12 per-head products, the
    pattern, the sum over heads) vs one product with the pattern folded into the sources plus per-head parts for
    1,000 kept edges per target only."""
    from circuits.dictionaries.train import sparse_decode

    torch.manual_seed(0)
    cpu = time.process_time

    def per_call(f, n=3):
        f()
        t = cpu()
        for _ in range(n):
            out = f()
        return (cpu() - t) / n, out

    d_sae = 24576
    W = (torch.randn(d_sae, 4, 768) / d_sae ** 0.5)[:, 1]  # a strided decoder block, as W_dec_out[:, j]
    v, i = torch.randn(64, d_sae).topk(30, dim=1)
    codes = torch.zeros(64, d_sae).scatter_(1, i, v.relu() + 0.1)

    def gather():
        rows, feats = codes.nonzero(as_tuple=True)
        return torch.zeros(64, 768).index_add_(0, rows, codes[rows, feats][:, None] * W[feats])

    t_dense, dense = per_call(lambda: codes @ W)
    t_bag, bag = per_call(lambda: sparse_decode(codes, W))
    t_gather, gathered = per_call(gather)
    print(f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")
    print(f"(1) one CLT decoder block, 64 tokens x TopK 30 of {d_sae:,}: dense {t_dense * 1e3:.1f} ms CPU "
          f"(x78 blocks: {78 * t_dense:.2f} s); sparse_decode on the strided block {t_bag * 1e3:.1f} ms (max diff "
          f"{(bag - dense).abs().max():.1e}); gather + index_add {t_gather * 1e3:.1f} ms (x78: {78 * t_gather:.2f} s, "
          f"max diff {(gathered - dense).abs().max():.1e})")
    H, dh, T, S = 12, 64, 30, 46000
    W_enc, G, A = torch.randn(H, dh, T), torch.randn(H, dh, S), torch.rand(H, S)

    def current():
        heads = torch.bmm(W_enc.transpose(1, 2), G)
        heads *= A[:, None, :]
        return heads.sum(0), heads

    def folded():
        GA = (G * A[:, None, :]).reshape(H * dh, S)
        return W_enc.reshape(H * dh, T).T @ GA, GA

    t_cur, (w_cur, heads) = per_call(current)
    t_fold, (w_fold, GA) = per_call(folded)
    si = w_fold.abs().topk(1000, dim=1).indices.flatten()
    ti = torch.arange(T).repeat_interleave(1000)
    t_heads, hw = per_call(lambda: torch.einsum("hde,hde->eh", W_enc[:, :, ti], GA.reshape(H, dh, S)[:, :, si]))
    print(f"(2) attention edges at one query position ({H} heads, {T} targets, {S:,} sources): current "
          f"{t_cur * 1e3:.0f} ms CPU; pattern folded, one product {t_fold * 1e3:.0f} ms + per-head parts of "
          f"{len(ti):,} kept edges {t_heads * 1e3:.0f} ms (max diff {(w_cur - w_fold).abs().max():.1e} of max "
          f"{w_cur.abs().max():.0f}; heads {(hw - heads[:, ti, si].T).abs().max():.1e})")


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
