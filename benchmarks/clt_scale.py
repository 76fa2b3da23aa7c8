"""The GPT-2-small-shaped CLT scale benchmark behind ``python benchmarks/clt.py gpt2`` (issue 19's third target:
one random CLT of 24,576 features per layer with random attention SAEs, the full graph at edge tolerance 1e-3 in
≤ 120 s and ≤ 12 GB on 2 cores). `gpt2_clt` builds the model and dictionaries, `gpt2` times and measures one graph
and prints where the time goes, `micro` times two engine changes on the target's shapes. Measured numbers:
docs/clt-benchmark.md. Kept apart from clt.py (the organism comparisons) so each file reads in one sitting."""

from __future__ import annotations

import os
import time

import torch

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
