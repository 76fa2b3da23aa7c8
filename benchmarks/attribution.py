"""Benchmark: attribution graphs — the organism (targets: full graph ≤ 1 s, pruning ≤ 0.2 s on 2 cores) and a
GPT-2-small-shaped random model (target: full graph ≤ 60 s, peak memory ≤ 8 GB).

    python benchmarks/attribution.py organism [--repeats 5]
    python benchmarks/attribution.py scale [--d-sae 24576] [--k 30] [--pos 64] [--tolerance 1e-3]

Each scenario prints a table. ``scale`` builds a random 12-layer, d_model 768, 12-head model with TopK(k)
transcoders and attention SAEs of d_sae features at every layer (L0 = k exactly), attributes a 64-token prompt to
its top logits, and prints where the time goes and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from gpt2_shaped import gpt2_shaped

IOI_PROMPTS = (  # (prompt, indirect object, subject)
    ("When Mary and John went to the store, John gave a drink to", "Mary", "John"),
    ("After Anna and David went to the park, David gave a book to", "Anna", "David"),
    ("When Lisa and Paul met at the cafe, Lisa handed a cup to", "Paul", "Lisa"),
)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def organism(repeats: int) -> None:
    from circuits import load_dictionaries, load_model
    from circuits.attribution import Contrast, attribute
    from circuits.pruning import prune
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model))
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'prompt':<62} {'nodes':>6} {'edges':>9} {'graph s':>8} {'prune s':>8} {'kept':>11}")
    for prompt, io, s in IOI_PROMPTS:
        attribute(rm, prompt, Contrast(io, s))  # warm-up
        g_times, p_times = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            g = attribute(rm, prompt, Contrast(io, s))
            g_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            pruned = prune(g).graph
            p_times.append(time.perf_counter() - t)
        print(f"{prompt:<62} {g.n_nodes:>6} {g.n_edges:>9} {statistics.median(g_times):>8.3f} "
              f"{statistics.median(p_times):>8.3f} {pruned.n_nodes:>5}/{pruned.n_edges:<6}")
    print("(median of the repeats; full uncapped graph, all 8 dictionaries, analytic edges, after model load)")


def scale(d_sae: int, k: int, n_pos: int, tolerance: float) -> None:
    from circuits.attribution import TopLogits, attribute
    from circuits.pruning import prune

    t0 = time.perf_counter()
    rm = gpt2_shaped(d_sae, k)
    build_s = time.perf_counter() - t0
    tokens = torch.randint(1, 50257, (n_pos,), generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    cache = rm.run(tokens)
    forward_s = time.perf_counter() - t
    t = time.perf_counter()
    g = attribute(rm, tokens, TopLogits(), edge_tolerance=tolerance, cache=cache,
                  memory_limit_bytes=6 * 2**30)
    graph_s = time.perf_counter() - t
    t = time.perf_counter()
    pruned = prune(g).graph
    prune_s = time.perf_counter() - t
    n_feat = sum(n.kind.endswith("_feature") for n in g.nodes)
    l0 = n_feat / (24 * n_pos)
    tm = g.metadata["timings_s"]
    print(f"torch threads: {torch.get_num_threads()}; 12 layers, d_model 768, 12 heads, 24 dictionaries x "
          f"{d_sae} features, TopK k={k}, {n_pos} tokens, edge_tolerance {tolerance}")
    print(f"{'stage':<44} {'seconds':>8}")
    for name, value in (("build model + dictionaries (not counted)", build_s),
                        ("replacement forward + cache", forward_s),
                        ("sources + edges (analytic)", tm["edges"]),
                        ("full graph total (attribute)", graph_s),
                        ("prune", prune_s)):
        print(f"{name:<44} {value:>8.2f}")
    print(f"nodes {g.n_nodes} ({n_feat} features, average L0 {l0:.1f}), edges stored {g.n_edges:,}, "
          f"pruned {pruned.n_nodes} nodes / {pruned.n_edges} edges")
    mask = g.explained_mask()
    gap = (g.incoming_sum() + g.dropped + g.constants - g.pre_activations)[mask].abs().max().item()
    print(f"exactness: max |edges + dropped + constant − pre-activation| = {gap:.2e}")
    print(f"peak resident memory of the process: {peak_rss_gib():.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="which", required=True)
    o = sub.add_parser("organism")
    o.add_argument("--repeats", type=int, default=5)
    s = sub.add_parser("scale")
    s.add_argument("--d-sae", type=int, default=24576)
    s.add_argument("--k", type=int, default=30)
    s.add_argument("--pos", type=int, default=64)
    s.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args()
    if args.which == "organism":
        organism(args.repeats)
    else:
        scale(args.d_sae, args.k, args.pos, args.tolerance)


if __name__ == "__main__":
    main()
