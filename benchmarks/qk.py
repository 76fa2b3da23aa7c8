"""Benchmark: QK attribution (`circuits.attribution.qk`) — targets: on the organism, one head, one query, all keys
≤ 0.5 s and every head at the last position ≤ 5 s; on a GPT-2-small-shaped random model, one head, one query,
64 keys ≤ 10 s.

    python benchmarks/qk.py organism [--repeats 5]
    python benchmarks/qk.py scale [--d-sae 24576] [--k 30] [--pos 64]

"All keys" is the pattern quantity (``quantity="pattern"``: the softmax couples every key ≤ the query, so the key
side spans all of them); each timed call also forms the top-10 pairs and both marginals. Times start after the
replacement forward pass (the cache), as a user holding a graph's cache would see them; the forward is printed
separately. ``every head`` collects the sources once and passes them to each call.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from gpt2_shaped import gpt2_shaped

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _explain(rm, cache, layer, head, query, key, sources=None):
    from circuits.attribution.qk import explain_attention

    qk = explain_attention(rm, cache, layer, head, query, key, quantity="pattern", sources=sources)
    qk.top(10), qk.query_marginals(), qk.key_marginals()
    return qk


def _median(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def organism(repeats: int) -> None:
    from circuits import load_dictionaries, load_model
    from circuits.attribution.sources import collect_sources
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model))
    cache = rm.run(PROMPT)
    p = cache.n_pos - 1
    one_s, qk = _median(lambda: _explain(rm, cache, 3, 0, p, 2), repeats)

    def every_head():
        src = collect_sources(rm, cache)
        return [_explain(rm, cache, layer, head, p, int(cache.patterns[layer][head, p].argmax()), src)
                for layer in range(rm.n_layers) for head in range(rm.cfg.n_heads)]

    all_s, tables = _median(every_head, repeats)
    err = max(abs(t.total() - t.value) / max(abs(t.value), 1e-6) for t in tables)
    print(f"torch threads: {torch.get_num_threads()}; organism (4 layers x 8 heads, all 8 dictionaries), "
          f"{cache.n_pos} tokens")
    print(f"{'case':<58} {'seconds':>8} {'target':>7}")
    print(f"{'one head (L3.H0), one query, all ' + str(p + 1) + ' keys (' + str(len(qk.query_nodes)) + ' x ' + str(len(qk.key_nodes)) + ' pairs)':<58} {one_s:>8.3f} {0.5:>7.1f}")
    print(f"{'every head (' + str(len(tables)) + ') at the last position, all keys':<58} {all_s:>8.3f} {5.0:>7.1f}")
    print(f"(median of {repeats}; max |Σ terms − value| / |value| over the heads: {err:.1e})")


def scale(d_sae: int, k: int, n_pos: int) -> None:
    t0 = time.perf_counter()
    rm = gpt2_shaped(d_sae, k)
    build_s = time.perf_counter() - t0
    tokens = torch.randint(1, 50257, (n_pos,), generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    cache = rm.run(tokens)
    forward_s = time.perf_counter() - t
    p = n_pos - 1
    t = time.perf_counter()
    qk = _explain(rm, cache, 11, 0, p, 0)
    one_s = time.perf_counter() - t
    t = time.perf_counter()
    score = _explain(rm, cache, 11, 0, p, 0).value
    again_s = time.perf_counter() - t
    print(f"torch threads: {torch.get_num_threads()}; 12 layers, d_model 768, 12 heads, 24 dictionaries x "
          f"{d_sae} features, TopK k={k}, {n_pos} tokens")
    print(f"{'stage':<58} {'seconds':>8} {'target':>7}")
    print(f"{'build model + dictionaries (not counted)':<58} {build_s:>8.2f}")
    print(f"{'replacement forward + cache (not counted)':<58} {forward_s:>8.2f}")
    print(f"{'one head (L11.H0), one query, all ' + str(n_pos) + ' keys (first call)':<58} {one_s:>8.2f} {10.0:>7.1f}")
    print(f"{'the same again':<58} {again_s:>8.2f} {10.0:>7.1f}")
    print(f"table {len(qk.query_nodes)} query-side x {len(qk.key_nodes)} key-side sources; "
          f"|Σ terms − value| = {abs(qk.total() - score):.2e} (value {score:.4f})")
    print(f"peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="which", required=True)
    o = sub.add_parser("organism")
    o.add_argument("--repeats", type=int, default=5)
    s = sub.add_parser("scale")
    s.add_argument("--d-sae", type=int, default=24576)
    s.add_argument("--k", type=int, default=30)
    s.add_argument("--pos", type=int, default=64)
    args = parser.parse_args()
    if args.which == "organism":
        organism(args.repeats)
    else:
        scale(args.d_sae, args.k, args.pos)


if __name__ == "__main__":
    main()
