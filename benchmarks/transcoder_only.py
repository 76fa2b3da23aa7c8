"""Benchmark: transcoder-only graphs (attention layers left as frozen linear channels), issue 20.

    python benchmarks/transcoder_only.py organism [--repeats 3] [--autograd | --autograd-sample 64]
                                                 [--no-circuit-tracer] [--threads 1,2]
    python benchmarks/transcoder_only.py scale [--d-sae 24576] [--k 30] [--pos 64] [--tolerance 1e-3] [--workers N]
    python benchmarks/transcoder_only.py ab --against REV [--d-sae 2048] [--repeats 1] [--workers N]   # engine A/B
    python benchmarks/transcoder_only.py profile [--every 6]   # where the sweeps' time goes

``organism``: the organism with its four transcoders and no attention SAEs, three IOI prompts of 34–49 tokens.
Times our reverse sweeps (median of the repeats) and, side by side in the same process, circuit-tracer 0.5.0 on the
same model, transcoders and prompts when it is importable (an optional dependency: ``pip install --no-deps
circuit-tracer==0.5.0``; never needed by the tests) and our autograd path with ``--autograd`` (minutes per
prompt); edges are compared with autograd's as max |Δ| / max |w| per edge class, or (default) over the edges into
64 random feature targets and the logit (``--autograd-sample``).

``scale``: a random GPT-2-small-shaped model (12 layers, d_model 768, 12 heads) with TopK(k) transcoders of d_sae
features at every layer and no attention SAEs; a 64-token prompt to its top logits; prints time and peak RSS, the
channel crossings' product work and this process's matrix-product rate before and after (how much of the cores it
had). Targets: organism ratio c-t ≥ 5; scale ≤ 60 s and ≤ 8 GB.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from gpt2_shaped import gpt2_shaped

PROMPTS = (  # (prompt, indirect object, subject): 35, 47 and 47 tokens with BOS
    ("When Mary and John went to the store, John gave a drink to Mary. Then Mary and John went home. After Anna "
     "and David went to the park, David gave a book to", "Anna", "David"),
    ("After Anna and David went to the park, David gave a book to Anna. When Lisa and Paul met at the cafe, Lisa "
     "handed a cup to Paul. When Mary and John went to the store, John gave a drink to", "Mary", "John"),
    ("When Lisa and Paul met at the cafe, Lisa handed a cup to Paul. When Mary and John went to the store, John "
     "gave a drink to Mary. After Anna and David went to the park, David gave a book to", "Anna", "David"),
)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load_avg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def edge_classes(g) -> dict[str, torch.Tensor]:
    """Boolean masks over g's edges by (source kind, target kind)."""
    t_kind = [g.nodes[i].kind for i in g.edge_index[0].tolist()]
    s_kind = [g.nodes[i].kind for i in g.edge_index[1].tolist()]
    names = [f"{s.split('_')[-1] if s != 'mlp_feature' else 'feature'}→"
             f"{'logit' if t.startswith('logit') else 'feature'}" for s, t in zip(s_kind, t_kind, strict=True)]
    return {n: torch.tensor([m == n for m in names]) for n in sorted(set(names))}


def compare_sample(rm, g, prompt, target, n: int) -> float:
    """max |Δ| / max |w| between g's edges and autograd's into n random feature targets and every logit target."""
    from circuits.attribution.autograd import autograd_edges
    from circuits.attribution.sources import collect_sources
    from circuits.attribution.targets import resolve_logit_targets

    cache = rm.run(prompt)
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], target, False, cache.n_pos - 1)
    feats = [i for i, node in enumerate(src.nodes) if node.kind.endswith("_feature")]
    pick = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:n]
    rows = [feats[int(j)] for j in pick] + list(range(len(src), len(src) + len(reads)))
    e = autograd_edges(rm, cache, src, reads, only=rows)
    dense = torch.zeros(g.n_nodes, g.n_nodes, dtype=e.weight.dtype)
    dense[e.target, e.source] = e.weight
    a = g.adjacency()
    return float((dense[rows] - a[rows]).abs().max() / a[rows].abs().max())


def compare(g, ref) -> tuple[float, dict[str, float]]:
    """(max |Δ| / max |w| over all edges, per class), both graphs on the same node table."""
    assert g.nodes == ref.nodes, "different node tables"
    a, b = g.adjacency(), ref.adjacency()
    w = b[ref.edge_index[0], ref.edge_index[1]]
    d = (a - b)[ref.edge_index[0], ref.edge_index[1]]
    per = {n: float(d[m].abs().max() / w[m].abs().max()) for n, m in edge_classes(ref).items()}
    return float((a - b).abs().max() / b.abs().max()), per


# -- circuit-tracer, built on the same HookedTransformer weights and transcoders --------------------------------


def circuit_tracer_model(model, transcoders):
    """circuit-tracer's ReplacementModel over a copy of `model` with our transcoders (input centring b_in folded into
    b_enc, W_enc transposed to its [d_sae, d_model]). None with the reason when it cannot be imported."""
    try:
        import huggingface_hub.constants as hc

        if not hasattr(hc, "HF_HUB_ENABLE_HF_TRANSFER"):  # removed in huggingface_hub 1.x; circuit-tracer imports it
            hc.HF_HUB_ENABLE_HF_TRANSFER = False
        from circuit_tracer.replacement_model import ReplacementModel as CTModel
        from circuit_tracer.transcoder.activation_functions import JumpReLU, TopK
        from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet
    except Exception as e:  # noqa: BLE001 - optional dependency: report why
        return None, f"{type(e).__name__}: {e}"
    dtype = model.cfg.dtype
    width = max(tc.cfg.d_sae for tc in transcoders.values())  # its TranscoderSet needs one width: pad with features
    tcs = {}                                                   # that never fire (zero encoder, threshold 1)
    for layer, tc in sorted(transcoders.items()):
        c, n = tc.cfg, tc.cfg.d_sae
        if c.activation == "jumprelu":
            threshold = torch.ones(width, dtype=dtype)
            threshold[:n] = tc.activation.threshold.detach()
            act = JumpReLU(threshold, 0.1)
        else:
            act = TopK(c.k)
        t = SingleLayerTranscoder(c.d_in, width, act, layer, skip_connection=tc.W_skip is not None,
                                  device=torch.device("cpu"), dtype=dtype)
        with torch.no_grad():
            t.W_enc[:n].copy_(tc.W_enc.T)
            t.b_enc[:n].copy_(tc.b_enc - tc.b_in @ tc.W_enc)
            t.W_dec[:n].copy_(tc.W_dec)
            t.b_dec.copy_(tc.b_dec)
            if tc.W_skip is not None:  # both apply it as x @ W_skip.T to the raw input (the default set has one)
                t.W_skip.copy_(tc.W_skip)
        tcs[layer] = t
    tset = TranscoderSet(tcs, feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out")
    ct = CTModel.from_config(model.cfg, tset, backend="transformerlens") if _takes_backend(CTModel) else \
        CTModel.from_config(model.cfg, tset)
    own = set(ct.state_dict())
    state = {}
    for k, v in model.state_dict().items():  # its ReplacementMLP / ReplacementUnembed wrap the originals
        for name in (k, k.replace(".mlp.", ".mlp.old_mlp."), k.replace("unembed.", "unembed.old_unembed.")):
            if name in own:
                state[name] = v
                break
    result = ct.load_state_dict(state, strict=False)
    unset = [k for k in result.missing_keys if not k.startswith("transcoders.") and ".old_mlp." not in k]
    if result.unexpected_keys or unset:
        return None, f"weights do not map onto its model: unexpected {result.unexpected_keys}, unset {unset}"
    ct.set_tokenizer(model.tokenizer)
    return ct, "built from the organism's weights and our four transcoders"


def _takes_backend(cls) -> bool:
    import inspect

    return "backend" in inspect.signature(cls.from_config).parameters


def organism(repeats: int, autograd: bool, circuit_tracer: bool, sample: int, threads: list[int]) -> None:
    from circuits import load_dictionaries, load_model
    from circuits.attribution import Contrast, attribute
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism")
    dicts = load_dictionaries("organism", model)
    rm = ReplacementModel(model, [d for d in dicts if d.cfg.kind == "transcoder"])
    ct, why = circuit_tracer_model(model, rm.transcoders) if circuit_tracer else (None, "not asked")
    if ct is not None:
        from circuit_tracer import attribute as ct_attribute
    print(f"load average at start {load_avg()}; circuit-tracer: {why}")
    print(f"{'threads':>7} {'tokens':>6} {'nodes':>6} {'edges':>9} {'reverse s':>9} {'autograd s':>10} {'c-t s':>8} "
          f"{'ratio c-t':>9} {'ratio ag':>8} {'load':>5} {'max Δ/max|w| vs autograd':>24}")
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for prompt, io, s in PROMPTS:
            target = Contrast(io, s)
            attribute(rm, prompt, target)  # warm-up
            times, ct_times = [], []
            for _ in range(repeats):  # alternating, so that a change in load hits both
                t = time.perf_counter()
                g = attribute(rm, prompt, target)
                times.append(time.perf_counter() - t)
                if ct is not None:
                    t = time.perf_counter()
                    ct_attribute(rm.tokenize(prompt), ct, max_n_logits=10, desired_logit_prob=0.95, batch_size=256,
                                 verbose=False)
                    ct_times.append(time.perf_counter() - t)
            rev = statistics.median(times)
            ct_s = statistics.median(ct_times) if ct_times else float("nan")
            ag_s, diff = float("nan"), "-"
            if sample and not autograd and n_threads == threads[0]:
                diff = f"{compare_sample(rm, g, prompt, target, sample):.1e} ({sample} sampled feature targets + logit)"
            if autograd and n_threads == threads[0]:
                t = time.perf_counter()
                ga = attribute(rm, prompt, target, method="autograd")
                ag_s = time.perf_counter() - t
                total, per = compare(g, ga)
                diff = f"{total:.1e} (" + ", ".join(f"{k} {v:.0e}" for k, v in per.items()) + ")"
            print(f"{n_threads:>7} {g.metadata['tokens'].__len__():>6} {g.n_nodes:>6} {g.n_edges:>9} {rev:>9.2f} "
                  f"{ag_s:>10.1f} {ct_s:>8.1f} {ct_s / rev:>9.1f} {ag_s / rev:>8.0f} {load_avg().split()[0]:>5}  {diff}",
                  flush=True)
    print(f"load average at end {load_avg()}; peak RSS {peak_rss_gib():.2f} GiB; target: ratio c-t ≥ 5. reverse = "
          f"median of {repeats} after a warm-up, full uncapped graph (method auto = reverse); circuit-tracer = its "
          "attribute() on the same tokens (top logits, batch 256), median of as many repeats, alternating with ours")


def gemm_gflops(seconds: float = 2.0) -> float:
    """This process's float32 matrix-product rate now ([4096, 768] × [768, 768], the sweeps' main product shape):
    on a shared machine it says how much of the 2 cores the run had."""
    a, b = torch.randn(4096, 768), torch.randn(768, 768)
    out = torch.empty(4096, 768)
    torch.mm(a, b, out=out)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        torch.mm(a, b, out=out)
        n += 1
    return 2 * 4096 * 768 * 768 * n / (time.perf_counter() - t) / 1e9


def crossing_flops(g, d: int) -> float:
    """The channel crossings' matrix-product work for a transcoder-only graph (every attention layer a channel):
    a feature at MLP L, position p crosses attention L from one position (cheap), attention L−1 with g W_Oᵀ formed
    from H + 1 vectors (its Y W_V'ᵀ side in full, unless L − 1 = 1), layers L−2 … 2 in full (g W_Oᵀ and Y W_V'ᵀ
    at p + 1 positions, 2 · d_model · H·d_head flops each per position), attention 1 on its W_O side only (every
    write below it is read against [g, Y]) and none of attention 0 (the tokens are read carried forward through
    it): L − 2 full crossings for L ≥ 2. The second crossing's W_V' side is counted dense although from 26
    positions it is formed from the factored form (`channels._Layers._second_crossing`: 0.4–0.7 of its
    multiply-adds), so that the count, and the rate over the edges phase, stay comparable with earlier runs."""
    total = 0.0
    for n in g.nodes:
        if n.kind == "mlp_feature" and n.layer >= 3:
            total += (n.layer - 2) * (n.pos + 1) * 4 * d * d
    return total


def scale(d_sae: int, k: int, n_pos: int, tolerance: float, workers: int | None = None) -> None:
    from circuits.attribution import TopLogits, attribute
    from circuits.attribution.workers import default_workers

    t0 = time.perf_counter()
    rm = gpt2_shaped(d_sae, k, ("transcoder",))
    build_s = time.perf_counter() - t0
    tokens = torch.randint(1, 50257, (n_pos,), generator=torch.Generator().manual_seed(0))
    print(f"torch threads {torch.get_num_threads()}; load average at start {load_avg()}; 12 layers, d_model 768, "
          f"12 heads, 12 transcoders x {d_sae} features (TopK k={k}), no attention SAEs, {n_pos} tokens, "
          f"edge_tolerance {tolerance}; build {build_s:.1f} s (not counted); RSS after build {peak_rss_gib():.2f} GiB; "
          f"reverse-sweep workers {workers or default_workers()} ({'--workers' if workers else 'default'}: one per "
          "torch thread unless --workers; one = torch threads inside each operation, more = each single-threaded)")
    before = gemm_gflops()
    t = time.perf_counter()
    g = attribute(rm, tokens, TopLogits(), edge_tolerance=tolerance, memory_limit_bytes=6 * 2**30, progress=True,
                  workers=workers)
    graph_s = time.perf_counter() - t
    after = gemm_gflops()
    tm = g.metadata["timings_s"]
    n_feat = sum(n.kind.endswith("_feature") for n in g.nodes)
    mask = g.explained_mask()
    gap = (g.incoming_sum() + g.dropped + g.constants - g.pre_activations)[mask].abs().max().item()
    print(f"full graph (attribute, method {g.metadata['method']}): {graph_s:.1f} s (forward {tm['forward']:.1f}, "
          f"edges {tm['edges']:.1f}); nodes {g.n_nodes} ({n_feat} features), edges stored {g.n_edges:,}")
    print(f"exactness: max |edges + dropped + constant − pre-activation| = {gap:.2e} "
          f"(largest |pre-activation| {g.pre_activations[mask].abs().max().item():.2f})")
    work = crossing_flops(g, rm.cfg.d_model)
    print(f"work: {work / 1e12:.2f} TFLOP in the channel crossings' products = {work / tm['edges'] / 1e9:.0f} GFLOP/s "
          f"over the edges phase; this process's [4096,768]x[768,768] product rate before/after: {before:.0f}/"
          f"{after:.0f} GFLOP/s (at the mean of the two the crossings alone need {2 * work / 1e9 / (before + after):.0f} s)")
    rss = peak_rss_gib()
    print(f"peak resident memory of the process: {rss:.2f} GiB; load average at end {load_avg()}")
    print(f"targets (issue 20): full graph ≤ 60 s on 2 cores: {graph_s:.1f} s, {'met' if graph_s <= 60 else 'not met'}; "
          f"≤ 8 GB: {rss * 2**30 / 1e9:.2f} GB, {'met' if rss * 2**30 <= 8e9 else 'not met'} "
          f"(torch threads {torch.get_num_threads()})")


def engine_at(rev: str):
    """The reverse engine module as of git revision `rev` (imported from `git show rev:circuits/attribution/reverse.py`,
    with the engine's own sibling modules — channels.py, workers.py — taken from `rev` too where they exist there),
    for same-process A/B timings against the working tree's."""
    import importlib.util
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root, tmp = Path(__file__).resolve().parent.parent, Path(tempfile.mkdtemp())

    def load(name: str, text: str):
        path = tmp / f"{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    def show(path: str) -> str | None:
        out = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, cwd=root)
        return out.stdout if out.returncode == 0 else None

    text = show("circuits/attribution/reverse.py")
    if text is None:
        raise SystemExit(f"no circuits/attribution/reverse.py at {rev}")
    for sibling in ("channels", "workers"):
        sib = show(f"circuits/attribution/{sibling}.py")
        if sib is not None:
            load(f"{sibling}_at_rev", sib)
            text = text.replace(f"circuits.attribution.{sibling} import", f"{sibling}_at_rev import")
    return load("reverse_at_rev", text)


def ab(against: str, d_sae: int, k: int, n_pos: int, tolerance: float, repeats: int, workers: int | None = None) -> None:
    """The working tree's reverse engine against revision `against`'s on the GPT-2-shaped graph's edges (the same
    cache, sources and targets), alternating in one process; CPU time (process_time: with one thread it is the
    work, little moved by other processes) and wall time, and whether the edges agree. The edges phase depends on
    d_sae only through which features are active: the default 2,048 builds faster than 24,576 with the same counts
    (TopK k per position). B sweeps with its default workers (one per torch thread: `workers.ordered_map`) unless
    `workers` is given; A as its revision did. When the edge sets differ, the odd edges are printed with
    |w| / (tolerance · Σ|w| of their target): values at 1 are float32 rounding across the tolerance."""
    import circuits.attribution.reverse as new
    from circuits.attribution.sources import collect_sources
    from circuits.attribution.targets import TopLogits, resolve_logit_targets

    old = engine_at(against)
    rm = gpt2_shaped(d_sae, k, ("transcoder",))
    tokens = torch.randint(1, 50257, (n_pos,), generator=torch.Generator().manual_seed(0))
    cache = rm.run(tokens)
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], TopLogits(), False, n_pos - 1)
    print(f"torch threads {torch.get_num_threads()}; load average at start {load_avg()}; A = {against}, B = working "
          f"tree; d_sae {d_sae}, TopK {k}, {n_pos} tokens, edge_tolerance {tolerance}; {len(src)} sources; B's workers "
          f"{workers or 'default (one per torch thread)'}")
    import circuits.attribution.analytic as analytic

    n = len(src) + len(reads)
    totals = {"A": torch.zeros(n), "B": torch.zeros(n)}  # Σ|w| per target, as the tolerance saw it
    add, current = analytic._Collector.add, ["A"]

    def recording_add(self, t_rows, s_rows, w, heads=None, mask=None):
        totals[current[0]][t_rows] = w.abs().sum(1).float()
        return add(self, t_rows, s_rows, w, heads=heads, mask=mask)

    analytic._Collector.add = recording_add
    cpu, wall, out = {"A": [], "B": []}, {"A": [], "B": []}, {}
    for r in range(repeats):
        for name, engine in (("A", old), ("B", new)):
            current[0] = name
            kw = {"workers": workers} if name == "B" and workers else {}
            c, t = time.process_time(), time.perf_counter()
            out[name] = engine.reverse_edges(rm, cache, src, reads, tolerance=tolerance, byte_limit=6 * 2**30, **kw)
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - t)
            print(f"repeat {r} {name}: CPU {cpu[name][-1]:.1f} s, wall {wall[name][-1]:.1f} s, load {load_avg()}",
                  flush=True)
    a, b = out["A"], out["B"]
    same = torch.equal(a.target, b.target) and torch.equal(a.source, b.source)
    rel = float((a.weight - b.weight).abs().max() / a.weight.abs().max()) if same else float("nan")
    analytic._Collector.add = add
    if not same:  # float32 rounding can move an edge across the tolerance: how far from it are the odd ones?
        ka, kb = a.target * n + a.source, b.target * n + b.source
        common_a, common_b = torch.isin(ka, kb), torch.isin(kb, ka)
        wa = dict(zip(ka[common_a].tolist(), a.weight[common_a].tolist(), strict=True))
        wb = torch.tensor([wa[k] for k in kb[common_b].tolist()])
        rel = float((wb - b.weight[common_b]).abs().max() / a.weight.abs().max())
        for name, e, odd in (("A", a, ~common_a), ("B", b, ~common_b)):
            ratio = e.weight[odd].abs() / (tolerance * totals[name][e.target[odd]])
            print(f"edges only in {name}: {int(odd.sum())}, |w| / (tolerance x sum|w| of the target): "
                  f"{[round(x, 7) for x in ratio.tolist()[:10]]}")
    mc = {n: statistics.median(v) for n, v in cpu.items()}
    mw = {n: statistics.median(v) for n, v in wall.items()}
    print(f"same edge set: {same} ({len(b.weight):,} edges), max |Δw| / max |w| {rel:.1e}"
          f"{'' if same else ' on the common edges'}")
    print(f"B / A: CPU {mc['B']:.1f} / {mc['A']:.1f} s = {mc['B'] / mc['A']:.3f}; wall {mw['B']:.1f} / {mw['A']:.1f} s "
          f"= {mw['B'] / mw['A']:.3f} (medians of {repeats}); load average at end {load_avg()}")


def profile(d_sae: int, k: int, n_pos: int, tolerance: float, every: int) -> None:
    """Where a sweep's time goes: torch's profiler over every `every`-th batch of the GPT-2-shaped graph's edges
    (the working tree's engine, this process's threads and default workers), self CPU time by kind of operation —
    the crossings' large products (W_O side: [768, 768] × [768, batch·pos]; W_V' side: addmm_ into g), the reads
    of writes against g (batched, one product per position), the per-head position mixes, and the rest."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import circuits.attribution.reverse as rev
    from circuits.attribution.sources import collect_sources
    from circuits.attribution.targets import TopLogits, resolve_logit_targets

    rm = gpt2_shaped(d_sae, k, ("transcoder",))
    tokens = torch.randint(1, 50257, (n_pos,), generator=torch.Generator().manual_seed(0))
    cache = rm.run(tokens)
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], TopLogits(), False, n_pos - 1)
    batches = rev._batches
    rev._batches = lambda *a, **kw: batches(*a, **kw)[::every]
    print(f"torch threads {torch.get_num_threads()}; load average at start {load_avg()}; every {every}th batch")
    c, t = time.process_time(), time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        rev.reverse_edges(rm, cache, src, reads, tolerance=tolerance, byte_limit=6 * 2**30)
    print(f"CPU {time.process_time() - c:.1f} s, wall {time.perf_counter() - t:.1f} s (with the profiler)")
    d = rm.cfg.d_model
    total: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        s, name = e.input_shapes, e.key
        kind = name
        if name == "aten::mm" and s[0] == [d, d] and s[1][0] == d and s[1][1] > 4 * 64:
            kind = "crossing products, W_O side"
        elif name == "aten::addmm_" and len(s) > 2 and s[2] == [d, d] and s[0][0] > 4 * 64:
            kind = "crossing products, W_V' side"
        elif name == "aten::bmm" and len(s[1]) == 3 and s[1][1] == s[1][2]:
            kind = "position mixes (bmm)"
        elif name == "aten::bmm" and len(s[1]) == 3 and s[1][1] == d:
            kind = "reads (bmm)"
        total[kind] = total.get(kind, 0.0) + e.self_cpu_time_total / 1e6
    whole = sum(total.values())
    for kind, sec in sorted(total.items(), key=lambda x: -x[1])[:14]:
        print(f"{kind:40s} {sec:7.2f} s  {100 * sec / whole:5.1f}%")
    print(f"{'all operations':40s} {whole:7.2f} s; load average at end {load_avg()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="which", required=True)
    o = sub.add_parser("organism")
    o.add_argument("--repeats", type=int, default=3)
    o.add_argument("--autograd", action="store_true", help="also run (and compare with) the autograd path")
    o.add_argument("--no-circuit-tracer", action="store_true")
    o.add_argument("--threads", default=str(torch.get_num_threads()),
                   help="comma-separated torch thread counts, each a full table (e.g. 1,2)")
    o.add_argument("--autograd-sample", type=int, default=64,
                   help="without --autograd: compare with autograd edges into this many random feature targets")
    s = sub.add_parser("scale")
    s.add_argument("--d-sae", type=int, default=24576)
    s.add_argument("--k", type=int, default=30)
    s.add_argument("--pos", type=int, default=64)
    s.add_argument("--tolerance", type=float, default=1e-3)
    s.add_argument("--workers", type=int, default=None,
                   help="reverse-sweep workers (default: one per torch thread); 1 = OpenMP threads per operation")
    a = sub.add_parser("ab", help="the working tree's reverse engine against a git revision's, GPT-2-shaped")
    a.add_argument("--against", required=True, help="git revision of the engine to compare with (A)")
    a.add_argument("--d-sae", type=int, default=2048)
    a.add_argument("--k", type=int, default=30)
    a.add_argument("--pos", type=int, default=64)
    a.add_argument("--tolerance", type=float, default=1e-3)
    a.add_argument("--repeats", type=int, default=1)
    a.add_argument("--workers", type=int, default=None,
                   help="B's workers (default: one per torch thread); e.g. 1 to time B with intra-op threads")
    f = sub.add_parser("profile", help="where the sweeps' time goes (torch profiler), GPT-2-shaped")
    f.add_argument("--d-sae", type=int, default=2048)
    f.add_argument("--k", type=int, default=30)
    f.add_argument("--pos", type=int, default=64)
    f.add_argument("--tolerance", type=float, default=1e-3)
    f.add_argument("--every", type=int, default=6, help="profile every n-th batch")
    args = parser.parse_args()
    if args.which == "ab":
        ab(args.against, args.d_sae, args.k, args.pos, args.tolerance, args.repeats, args.workers)
    elif args.which == "profile":
        profile(args.d_sae, args.k, args.pos, args.tolerance, args.every)
    elif args.which == "organism":
        organism(args.repeats, args.autograd, not args.no_circuit_tracer, args.autograd_sample,
                 [int(x) for x in args.threads.split(",")])
    else:
        scale(args.d_sae, args.k, args.pos, args.tolerance, args.workers)


if __name__ == "__main__":
    main()
