"""Attribution graphs: from a prompt and a target to a typed, weighted graph of features, tokens and errors.

``attribute(rm, prompt, target)`` runs the replacement model once (exact, with error terms), freezes LayerNorm
scales and attention patterns, collects every source node (tokens, active features, error nodes), and computes
the direct edge from every source to every target node (every active feature and the logit targets) — either
analytically (`circuits.attribution.analytic`, batched matrix products with per-head breakdowns) or by autograd
(`circuits.attribution.autograd`, the slow reference for any set of dictionaries), or by batched reverse sweeps
through the frozen linear model (`circuits.attribution.reverse`, the fast path when some attention layer has no
SAE: transcoder-only graphs). Every target node gets a constant term so that incoming edges + constant = its
pre-activation.

``explain_attention(rm, cache, layer, head, query_pos, key_pos)`` (`circuits.attribution.qk`) explains the QK side
that the graph's frozen patterns take as given: a head's attention score as a sum over (query source, key source)
pairs.
"""

from __future__ import annotations

import os
import time
from typing import Literal

import torch

from circuits.attribution.analytic import Edges, analytic_edges
from circuits.attribution.autograd import autograd_edges
from circuits.attribution.qk import Marginal, QKAttribution, QKTerm, explain_attention
from circuits.attribution.reverse import reverse_edges
from circuits.attribution.sources import Sources, collect_sources
from circuits.attribution.targets import (
    Contrast,
    FeatureTarget,
    Logit,
    LogitRead,
    Target,
    TopLogits,
    resolve_logit_targets,
    token_string,
)
from circuits.graph import Graph
from circuits.replacement import AttributionError, ReplacementCache, ReplacementModel, reads_residual

Method = Literal["analytic", "reverse", "autograd", "auto"]

__all__ = ["Contrast", "FeatureTarget", "Logit", "Marginal", "QKAttribution", "QKTerm", "TopLogits", "attribute",
           "explain_attention", "Target"]


def attribute(rm: ReplacementModel, prompt: str | torch.Tensor, target: Target | None = None, *,
              method: Method = "auto", demean_logits: bool = False, edge_tolerance: float = 0.0,
              memory_limit_bytes: int | None = None, cache: ReplacementCache | None = None,
              progress: bool = False, head_parts: bool = False, workers: int | None = None) -> Graph:
    """The attribution graph of `prompt` for `target` (default: the salient top logits) in `rm`.

    method: "analytic" (needs an SAE on every attention layer; per-head parts of edges into attention features),
    "reverse" (any set of dictionaries: attention layers without an SAE are linear channels), "autograd" (the
    reference, slow), or "auto" (analytic when possible, else reverse).
    edge_tolerance: store only edges with |w| ≥ tolerance × (Σ |w| of all edges into the same target); the sum of
    what is dropped is kept per node in ``graph.dropped``, so the exactness identity still holds. 0 (default) stores
    every edge; large models need e.g. 1e-3 (each target keeps at most 1,000 edges).
    head_parts: with method "reverse", also the per-head parts of edges into attention-SAE features (one sweep per
    head for those targets); "analytic" always gives them, "autograd" never.
    workers: with method "reverse", sweep batches side by side in that many single-threaded workers
    (`attribution.workers`; default one per torch thread; 1: torch's threads inside each operation). The edges do
    not depend on it.
    """
    target = TopLogits() if target is None else target
    if method not in ("analytic", "reverse", "autograd", "auto"):
        raise AttributionError(f"unknown method {method!r}; use 'analytic', 'reverse', 'autograd' or 'auto'")
    if not 0 <= edge_tolerance < 1:
        raise AttributionError(f"edge_tolerance must be in [0, 1), got {edge_tolerance}")
    t0 = time.perf_counter()
    if cache is not None:
        import warnings

        with warnings.catch_warnings():  # the cache's own run warned about this prompt already
            warnings.simplefilter("ignore")
            if not torch.equal(rm.tokenize(prompt).to(cache.tokens.device), cache.tokens):
                raise AttributionError("the cache is of another prompt than `prompt` (its tokens differ); pass the "
                                       "prompt the cache was run on, or leave out cache=")
    cache = cache if cache is not None else rm.run(prompt)
    timings = {"forward": time.perf_counter() - t0}
    src = collect_sources(rm, cache)
    last = cache.n_pos - 1
    if isinstance(target, FeatureTarget):
        if target.node not in set(src.nodes) or not target.node.kind.endswith("_feature"):
            raise AttributionError(f"feature target {target.node.short()} is not active on this prompt; "
                                   "pick a feature from the graph's node table")
        reads: list[LogitRead] = []
    elif isinstance(target, TopLogits | Logit | Contrast):
        reads = resolve_logit_targets(rm.model, cache.logits[last], target, demean_logits, last)
    else:
        raise AttributionError(f"unknown target {target!r}; use TopLogits, Logit, Contrast or FeatureTarget")
    # the reverse sweeps do not apply raw-residual transcoder reads (Gemma-2's post-norm on channels they do)
    unswept = any(reads_residual(tc) for tc in rm.transcoders.values())
    if method == "auto":
        method = "analytic" if len(rm.attention_saes) == rm.n_layers else ("autograd" if unswept else "reverse")
    if method == "reverse" and unswept:
        raise AttributionError("method 'reverse' does not yet apply transcoders reading hook_resid_mid (the raw "
                               "residual stream); use method='autograd' (or 'auto')")
    limit = memory_limit_bytes if memory_limit_bytes is not None else _available_memory() // 2
    if edge_tolerance == 0:
        _check_memory(rm, src, limit)
    t1 = time.perf_counter()
    if method == "analytic":
        edges = analytic_edges(rm, cache, src, reads, tolerance=edge_tolerance, byte_limit=limit, progress=progress)
    elif method == "reverse":
        edges = reverse_edges(rm, cache, src, reads, tolerance=edge_tolerance, byte_limit=limit, progress=progress,
                              head_parts=head_parts, workers=workers)
    else:
        edges = autograd_edges(rm, cache, src, reads)
    timings["edges"] = time.perf_counter() - t1
    graph = _build_graph(rm, cache, src, reads, edges, target, method, demean_logits, edge_tolerance, prompt)
    if isinstance(target, FeatureTarget):
        graph = _upstream_of(graph, graph.row(target.node))
    timings["total"] = time.perf_counter() - t0
    graph.metadata["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    return graph


def _check_memory(rm: ReplacementModel, src: Sources, limit: int) -> None:
    """Refuse an uncapped graph whose edges would not fit (estimated before computing anything large)."""
    n_targets = sum(n.kind.endswith("_feature") for n in src.nodes)
    est_edges = n_targets * len(src) / 2  # causal: on average about half the sources precede a target
    needed = est_edges * (8 + 8 + 8 * (rm.cfg.n_heads + 1))
    if needed > limit:
        raise AttributionError(
            f"this graph would need about {needed / 2**30:.1f} GiB for {est_edges:.2e} edges "
            f"({n_targets} active features, {len(src)} sources), more than the {limit / 2**30:.1f} GiB allowed; "
            "pass edge_tolerance=1e-3 (store only edges above that fraction of each target's total) or a shorter "
            "prompt")


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _build_graph(rm, cache, src: Sources, reads: list[LogitRead], edges: Edges, target, method: str,
                 demean: bool, tolerance: float, prompt=None) -> Graph:
    nodes = tuple(src.nodes) + tuple(r.node for r in reads)
    dtype = src.vectors.dtype
    activations = torch.cat([src.activations, torch.tensor([r.value for r in reads], dtype=dtype)])
    weights = torch.zeros(len(nodes), dtype=dtype)
    for k, r in enumerate(reads):
        weights[len(src) + k] = r.weight
    row = None
    if isinstance(target, FeatureTarget):
        row = src.nodes.index(target.node)
        weights[row] = 1.0
    model = rm.model
    meta = {
        "method": method,
        "dtype": str(dtype).removeprefix("torch."),
        "target": _describe(target),
        "model": rm.name,
        "prompt": prompt if isinstance(prompt, str) else None,
        "targets": [{"label": r.label, "node": r.node.to_json(), "weight": r.weight, "value": r.value,
                     "probability": r.probability} for r in reads],
        "tokens": cache.tokens.tolist(),
        "token_strings": [token_string(model, t) for t in cache.tokens.tolist()],
        "bos_pos": 0 if int(cache.tokens[0]) == _bos_id(model) else None,
        "n_layers": rm.n_layers,
        "n_heads": rm.cfg.n_heads,
        "dictionaries": sorted(d.cfg.name for d in rm.dictionaries),
        "dictionary_ids": {d.cfg.name: dictionary_id(d) for d in rm.dictionaries},
        "demean_logits": demean,
        "edge_tolerance": tolerance,
        "position_embeddings": "rotary (QK side only)" if rm.cfg.positional_embedding_type == "rotary"
        else "folded into token nodes",
    }
    if row is not None:
        meta["targets"] = [{"label": f"feature {target.node.short()}", "node": target.node.to_json(), "weight": 1.0,
                            "value": float(edges.pre_activations[row]), "probability": None}]
    if isinstance(target, Contrast):
        from circuits.attribution.targets import single_token

        meta["contrast"] = [single_token(model, target.token), single_token(model, target.baseline)]
    return Graph(nodes=nodes, activations=activations, edge_index=torch.stack([edges.target, edges.source]),
                 edge_weight=edges.weight, head_weights=edges.head_weight, metadata=meta,
                 constants=edges.constants, pre_activations=edges.pre_activations, dropped=edges.dropped,
                 target_weights=weights)


def dictionary_id(d) -> str:
    """A short hash of a dictionary's shapes, encoder bias and first decoder rows: two graphs whose dictionaries have
    different ids number their features differently (`circuits graph diff` refuses to compare them). Cheap on
    GPT-2-sized sets, unlike the dashboards' `fingerprint` of every tensor."""
    import hashlib

    h = hashlib.sha256(f"{d.cfg.name}:{d.d_in}:{d.d_sae}".encode())
    for t in (d.b_enc, d.W_dec[:8]):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _bos_id(model) -> int | None:
    tok = getattr(model, "tokenizer", None)
    return getattr(tok, "bos_token_id", None) if tok is not None else None


def _describe(target) -> dict:
    if isinstance(target, FeatureTarget):
        return {"kind": "feature", "node": target.node.to_json()}
    if isinstance(target, TopLogits):
        return {"kind": "top_logits", "cum_prob": target.cum_prob, "max_logits": target.max_logits}
    def plain(t):  # a token as JSON has it: text, or an int (not a NumPy or torch integer)
        return t if isinstance(t, str) else int(t)

    if isinstance(target, Logit):
        return {"kind": "logit", "tokens": [plain(t) for t in target.tokens]}
    return {"kind": "contrast", "token": plain(target.token), "baseline": plain(target.baseline)}


def _upstream_of(graph: Graph, row: int) -> Graph:
    """The graph restricted to `row` and every node with a path of edges into it."""
    keep = torch.zeros(graph.n_nodes, dtype=torch.bool)
    keep[row] = True
    frontier = keep.clone()
    src, tgt = graph.edge_index[1], graph.edge_index[0]
    while frontier.any():
        reached = torch.zeros_like(keep)
        reached[src[frontier[tgt]]] = True
        frontier = reached & ~keep
        keep |= reached
    return graph.subgraph(keep)
