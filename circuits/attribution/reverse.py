"""Reverse edges: batched reverse sweeps through the frozen linear model, for any set of dictionaries.

In the frozen local replacement model (LayerNorm scales σ and attention patterns A held, codes and errors fixed)
every target's pre-activation is linear in the source writes, and the edge s → t is ``g_t(site_s, pos_s) · v_s``,
where ``g_t(k, q)`` is the gradient of target t with respect to the residual stream at position q right after
write site k. This module computes those gradients by hand, many targets at once, without running the model:

1. **Seed.** Targets are grouped by where they read (the residual before MLP l for a transcoder feature, before
   attention l for an attention-SAE feature, the final residual for logits) and batched, sorted by position. A
   transcoder feature j at (l, p) seeds ``g[p] = P W_enc[:, j] / σ2[p]``; a logit ``P(γf ⊙ W_U[:, t]) / σf[p]``;
   an attention-SAE feature i at (l, p) reads every q ≤ p through its layer's frozen pattern:
   ``g[q] = P(γ1 ⊙ Σ_h A_h[p, q] W_V[h] W_enc[h-slice, i]) / σ1[q]``.
2. **Sweep.** Going back site by site, the sources written at site k take ``g · v`` at their position (a CLT
   feature also at each later MLP it writes into). Then g crosses site k: an **attention layer without an SAE**
   is the linear channel ``out[p] = Σ_h Σ_q A_h[p, q] (γ1 ⊙ P x_q / σ1[q]) W_V[h] W_O[h]`` (+ constants), whose
   transpose is ``g[q] += P(γ1 ⊙ Σ_h W_V[h] Σ_p A_h[p, q] W_O[h] g[p]) / σ1[q]``; a **skip transcoder** adds
   ``P(g W_skip) / σ2``; every other sublayer's output is fixed (features and errors are sources), so g passes
   unchanged. While g is non-zero at the target's own position only (before its first unreplaced attention
   layer), the attention transpose is formed once per head instead of once per position, and the result
   ``e_p r + Σ_h A_h[p, :] ⊗ z_h`` is kept in that form (`_Once`) so that the second crossing forms ``g W_Oᵀ``
   from H + 1 vectors instead of one per position. At the lowest unreplaced attention layer (when no skip
   channel lies below it, `_floor_site`) the sweep stops: the writes below it are read directly and carried
   forward through it — source s at q as ``Σ_h A_h[p, q]/σ1[q] (v_s W_V'[h]) W_O[h]`` at every p ≥ q, formed once
   per graph (`_through_floor`; only the tokens in a transcoder-only model) — or, when there are many of them, in
   its value space, ``g · v + Y · (v W_V')``. With those images the sweep stops one channel higher
   (`_upper_site`): every write below that channel (between the two, below the floor, and the images) is read
   against [g, Y] at its output with value-space projections formed once per graph, so that channel's
   ``Y W_V'ᵀ`` is never formed per target. The channel's transpose is formed as ``Uᵀ = W_O gᵀ`` so that each
   head's position mix is one batched product (no permuted copies), and the reads accumulate into transposed
   weights [source, target]. (The channel maps, and the second crossing formed from `_Once` on both sides, are
   in `channels.py`.) Batches are swept side by side by single-threaded workers (`workers.py`), one per torch
   thread by default, and collected in order: a sweep's small operations parallelise across batches.
3. **Constant term**, independently: one frozen TransformerLens forward pass in which every source's write is
   subtracted (`autograd._frozen_targets`), read at each target. So ``Σ edges + constant = pre-activation`` checks
   the sweep against the model itself.

The cost is, per target, two d_model × (n_heads·d_head) products per unreplaced attention layer below it and per
position at or before it, less the first crossing (one position), half the second, half the next-to-last and
all of the last (L − 2 full crossings for a transcoder feature at MLP L ≥ 2 in a transcoder-only model) — the
work circuit-tracer's batched backward passes do, without the MLPs, the attention scores or the autograd graph.
Batches are sized from the memory limit and end at position boundaries (each target is padded to its batch's
last position); edges below ``tolerance × Σ|w|`` of their target are dropped into
``dropped`` as in the analytic engine. Per-head parts of edges into attention-SAE features (through the heads of
the feature's own layer, as the analytic engine gives them) are computed with ``head_parts=True``, one sweep per
head for those targets; otherwise they are zeros.
"""

from __future__ import annotations

import bisect
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.attribution.analytic import Edges, _Collector
from circuits.attribution.autograd import _fixed_outputs, _frozen_targets, _site_writes
from circuits.attribution.channels import _Layers, _Once
from circuits.attribution.sources import Sources, attn_site, later_writes, mlp_site
from circuits.attribution.targets import LogitRead
from circuits.attribution.workers import default_workers, ordered_map
from circuits.replacement import ReplacementCache, ReplacementModel


@dataclass
class _Targets:
    """Target rows (graph rows) with where they read: ``start`` = the site after which the residual is read (the
    sweep begins there), ``pos``, ``kind`` (0 logit, 1 attention feature, 2 transcoder feature), ``index``."""

    rows: Tensor
    start: Tensor
    pos: Tensor
    kind: Tensor
    index: Tensor
    layer: Tensor


@dataclass
class _Chunks:
    """Writes in padded chunks of at most m sources of one position (m = the mean number per position, so padding
    stays below the writes' own size even when one position, e.g. BOS, has far more active features than the
    rest). Each position's first chunk is in ``vectors [n_pos, m, width]`` / ``rows [n_pos, m]``, read against g
    without copying it (one batched product over positions); the rest (``extra_*``, sorted by position) are
    gathered. Padding reads into the dummy column n_src."""

    vectors: Tensor
    rows: Tensor
    extra_vectors: Tensor
    extra_rows: Tensor
    extra_pos: Tensor

    @staticmethod
    def build(rows: Tensor, pos: Tensor, vecs: Tensor, n_pos: int, n_src: int, widest: bool = False) -> _Chunks:
        """`widest`: m = the largest number per position (no overflow chunks, more padding)."""
        order = torch.argsort(pos, stable=True)
        rows, pos, vecs = rows[order], pos[order], vecs[order]
        counts = torch.bincount(pos, minlength=n_pos)
        m = max(1, int(counts.max()) if widest else -(-len(pos) // n_pos))
        rank = torch.arange(len(pos)) - torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])[pos]
        extra_per_pos = (-(-counts // m) - 1).clamp(min=0)  # chunks beyond each position's first
        first_extra = torch.cat([torch.zeros(1, dtype=torch.long), extra_per_pos.cumsum(0)])
        n_extra = int(first_extra[-1])
        V = vecs.new_zeros(n_pos + n_extra, m, vecs.shape[1])
        R = torch.full((n_pos + n_extra, m), n_src, dtype=torch.long)
        chunk = torch.where(rank < m, pos, n_pos + first_extra[pos] + rank // m - 1)
        V[chunk, rank % m] = vecs
        R[chunk, rank % m] = rows
        extra_pos = torch.repeat_interleave(torch.arange(n_pos), extra_per_pos)
        return _Chunks(V[:n_pos], R[:n_pos], V[n_pos:], R[n_pos:], extra_pos)

    def read(self, g: Tensor, wt: Tensor) -> None:
        """wt[row] += g[:, pos] · vector for every write at a position < P (g [B, P, width]; wt [n_src + 1, B], the
        weights transposed, so that each position's [m, B] block of products is added without a copy)."""
        B, P = g.shape[:2]
        gp = g.permute(1, 2, 0)  # [P, width, B]: a view, each position's [width, B] block a column-major matrix
        part = torch.bmm(self.vectors[:P], gp)  # [P, m, B]
        wt.index_add_(0, self.rows[:P].reshape(-1), part.view(-1, B))
        c = int(torch.searchsorted(self.extra_pos, P))
        if c:
            part = torch.bmm(self.extra_vectors[:c], gp[self.extra_pos[:c]])  # [chunks, m, B]
            wt.index_add_(0, self.extra_rows[:c].reshape(-1), part.view(-1, B))


def _site_entries(rm: ReplacementModel, src: Sources) -> dict[int, tuple[Tensor, Tensor]]:
    """Per site k, (rows, writes [R, d]) read at the residual right after k, CLT features' later writes included."""
    entries: dict[int, list[tuple[Tensor, Tensor]]] = {}
    for k in src.site.unique().tolist():
        rows = torch.nonzero(src.site == k).flatten()
        entries.setdefault(k, []).append((rows, src.vectors[rows]))
    for layer in range(rm.n_layers):
        rows, writes = later_writes(rm, src, layer)
        if len(rows):
            entries.setdefault(mlp_site(layer), []).append((rows, writes.to(src.vectors.dtype)))
    return {k: (torch.cat([r for r, _ in v]), torch.cat([x for _, x in v])) for k, v in entries.items()}


def _first_channel(rm: ReplacementModel) -> Tensor:
    """[n_sites]: per write site k, the first attention site after k without an SAE (a large number if none) — a
    source at an earlier position reaches a target only when that channel lies before the target reads."""
    n_sites = 2 * rm.n_layers + 1
    out = torch.full((n_sites,), 4 * n_sites, dtype=torch.long)
    nxt = 4 * n_sites
    for k in range(n_sites - 1, -1, -1):
        out[k] = nxt
        if k % 2 == 1 and (k - 1) // 2 not in rm.attention_saes:
            nxt = k
    return out


def _floor_site(rm: ReplacementModel) -> int:
    """The lowest attention site without an SAE when below it g passes unchanged (no skip transcoder there), else
    0. The sweep reads every write below it at once: ``(g + Y W_V'ᵀ) · v = [g, Y] · [v, v W_V']`` with the sources'
    value-space projections formed once per graph instead of W_V'ᵀ once per target."""
    channels = [layer for layer in range(rm.n_layers) if layer not in rm.attention_saes]
    if not channels:
        return 0
    lowest = channels[0]
    skip_below = any(layer < lowest and tc.W_skip is not None for layer, tc in rm.transcoders.items())
    return 0 if skip_below else attn_site(lowest)


def _upper_site(rm: ReplacementModel, floor: int) -> int:
    """The attention site without an SAE next above the floor when no skip transcoder lies below it, else 0. Between
    the two g passes unchanged, so every write below it — between the two, below the floor, and carried through
    the floor — is read against [g, Y] at its output, ``(g + Y W_V'ᵀ) · v = g · v + Y · (v W_V')``, with the
    writes' value-space projections formed once per graph: its Y W_V'ᵀ side is never formed per target."""
    above = [layer for layer in range((floor - 1) // 2 + 1, rm.n_layers) if layer not in rm.attention_saes]
    if not floor or not above:
        return 0
    skip = any(layer < above[0] and tc.W_skip is not None for layer, tc in rm.transcoders.items())
    return 0 if skip else attn_site(above[0])


def _upper_pays(rm: ReplacementModel, n_writes: int, n_pos: int, itemsize: int, max_bytes: float) -> bool:
    """Whether reading `n_writes` writes against [g, Y] (two reads of about n_writes / n_pos writes per position)
    costs less than half of the Y W_V'ᵀ product it replaces (n_pos × H·d_head per position), and the writes and
    their value-space projections (padded to chunks: counted twice) fit in `max_bytes`."""
    width = rm.cfg.d_model + rm.cfg.n_heads * rm.cfg.d_head
    return n_writes * 2 <= n_pos * rm.cfg.n_heads * rm.cfg.d_head and 2 * n_writes * width * itemsize <= max_bytes


def _through_pays(rm: ReplacementModel, pos: Tensor, n_pos: int, itemsize: int, max_bytes: float) -> bool:
    """Whether to carry the writes below the lowest channel (at positions `pos`) forward through it: when their
    (source, later position) pairs are fewer than positions × H·d_head (the read then costs less than the channel's
    W_O side alone) and their [S, pos, d_model] images fit in `max_bytes` four times over (the dense images, their
    padded chunks, and the upper read's copy with its projections). Tokens only (a transcoder-only model):
    n(n + 1)/2 pairs, a small fraction (up to about 300 tokens at GPT-2 width within the default 1 GiB)."""
    n_pairs = int((n_pos - pos).sum())
    H, dh, d = rm.cfg.n_heads, rm.cfg.d_head, rm.cfg.d_model
    return n_pairs <= n_pos * H * dh and 4 * len(pos) * n_pos * d * itemsize <= max_bytes


def _through_floor(layers: _Layers, layer: int, rows: Tensor, pos: Tensor, v: Tensor,
                   n_pos: int) -> tuple[Tensor, Tensor, Tensor]:
    """The writes below the lowest channel (`layer`) carried forward through it, as writes at every later position:
    source s at q writes ``Σ_h A_h[p, q]/σ1[q] · (v_s W_V'[h]) W_O[h]`` at each p ≥ q. Reading these against g at
    the channel's output costs (pairs) × d_model per target instead of the channel's transpose (two d_model ×
    H·d_head products per position, or one when read in the value space) — far less when few sources lie below
    (tokens only, in a transcoder-only model). Returns the images as (rows, positions, vectors)."""
    W_O, W_V, A, post = layers.attn[layer]
    H, dh, d = layers.rm.cfg.n_heads, layers.rm.cfg.d_head, v.shape[1]
    S = len(rows)
    n_pairs = int((n_pos - pos).sum())
    OV = torch.einsum("she,hed->shd", (v @ W_V).view(S, H, dh), W_O.view(H, dh, d))  # [S, H, d]
    images = torch.einsum("hps,shd->spd", A[:, :, pos], OV)  # [S, n_pos, d]; zero at p < q (causal pattern)
    if post is not None:  # Gemma-2's frozen ln1_post scales what the channel writes at p
        images = images * post[None]
    s_idx = torch.repeat_interleave(torch.arange(S), n_pos - pos)
    start = torch.cat([torch.zeros(1, dtype=torch.long), (n_pos - pos).cumsum(0)[:-1]])
    p_idx = pos[s_idx] + torch.arange(n_pairs) - start[s_idx]
    return rows[s_idx], p_idx, images[s_idx, p_idx]  # (rows, positions, vectors) of the images


def _targets(rm: ReplacementModel, src: Sources, reads: list[LogitRead], n_pos: int) -> _Targets:
    rows, start, pos, kind, index, layer = [], [], [], [], [], []
    for i, node in enumerate(src.nodes):
        if node.kind == "mlp_feature":
            rows.append(i), start.append(attn_site(node.layer)), kind.append(2)
        elif node.kind == "attn_feature":
            rows.append(i), start.append(attn_site(node.layer) - 1), kind.append(1)
        else:
            continue
        pos.append(node.pos), index.append(node.index), layer.append(node.layer)
    for k in range(len(reads)):
        rows.append(len(src) + k), start.append(2 * rm.n_layers), kind.append(0)
        pos.append(n_pos - 1), index.append(k), layer.append(rm.n_layers)
    t = _Targets(*(torch.tensor(x, dtype=torch.long) for x in (rows, start, pos, kind, index, layer)))
    order = torch.argsort(t.pos, stable=True)
    order = order[torch.argsort(t.start[order], stable=True)]  # by read site, then position
    return _Targets(*(x[order] for x in (t.rows, t.start, t.pos, t.kind, t.index, t.layer)))


def _seed(rm: ReplacementModel, cache: ReplacementCache, reads: list[LogitRead], layers: _Layers, t: _Targets,
          sel: Tensor, P: int, dtype, heads: bool = False) -> tuple[Tensor, bool]:
    """g [B, P, d] for the targets `sel` (all reading after the same site), and whether it sits at one position.
    `heads` (attention-SAE features only): one seed per head of the feature's layer, [B·H, P, d]."""
    B, d = len(sel), rm.cfg.d_model
    kind, layer = int(t.kind[sel[0]]), int(t.layer[sel[0]])
    pos, index = t.pos[sel], t.index[sel]
    g = torch.zeros(B, P, d, dtype=dtype)
    if kind == 1:  # attention-SAE feature: its own layer's frozen pattern and value map
        sae, attn = rm.attention_saes[layer], rm.model.blocks[layer].attn
        H, dh = rm.cfg.n_heads, rm.cfg.d_head
        gamma, _ = rm.ln_weights("ln1", layer)
        W_enc = sae.W_enc.detach().to(dtype)[:, index].T.reshape(B, H, dh)
        u = torch.einsum("bhe,hde->bhd", W_enc, attn.W_V.detach().to(dtype)) * gamma.detach().to(dtype)
        A = cache.patterns[layer].to(dtype)[:, pos, :P]  # [H, B, P]
        if heads:
            g = torch.einsum("hbq,bhd->bhqd", A, u).reshape(B * H, P, d)
        else:
            g = torch.einsum("hbq,bhd->bqd", A, u)
        return layers._norm(g, cache.ln1_scale[layer].to(dtype)), False
    if kind == 2:
        R = rm.transcoders[layer].W_enc.detach().to(dtype)[:, index].T  # [B, d]
        sigma = cache.ln2_scale[layer].to(dtype)[pos]
    else:
        gamma, _ = rm.ln_weights("ln_final")
        R = torch.stack([reads[int(i)].direction.to(dtype) for i in index]) * gamma.detach().to(dtype)
        sigma = cache.lnf_scale.to(dtype)[pos]
    if layers.center:
        R = R - R.mean(1, keepdim=True)
    g[torch.arange(B), pos] = R / sigma[:, None]
    return g, True


def _batches(t: _Targets, size: int, attn_size: int) -> list[Tensor]:
    """Targets of one read site and kind per batch (sorted by position): at most `size` per batch, `attn_size` for
    attention-SAE features. Every target is padded to its batch's last position, so a batch that would end inside
    a position ends before it instead (unless that leaves it under half full): with 30 active features per position
    and 64 per batch, batches of 60 over two positions pad half as much as batches of 64 over three."""
    out = []
    for s in t.start.unique().tolist():
        idx = torch.nonzero(t.start == s).flatten()
        kinds = t.kind[idx]
        for k in kinds.unique().tolist():
            sub = idx[kinds == k]
            cap, pos = attn_size if k == 1 else size, t.pos[sub].tolist()
            i = 0
            while i < len(pos):
                j = min(i + cap, len(pos))
                if j < len(pos) and pos[j] == pos[j - 1]:  # would split a position: end before it
                    first = bisect.bisect_left(pos, pos[j - 1], i, j)
                    j = first if first - i >= max(1, cap // 2) else j
                out.append(sub[i:j])
                i = j
    return out


def batch_size_for(rm: ReplacementModel, n_pos: int, n_src: int, itemsize: int, byte_limit: float) -> int:
    """Targets per sweep: about six [pos, d_model] gradients and three rows of source weights per target within a
    quarter of the memory limit, and at most 64 · (768 / d_model)²: about the same arithmetic per tensor op at every
    width (64 at GPT-2 width, where the products dominate and a batch that spans fewer positions pads less —
    targets are sorted by position and padded to the batch's last one; narrow models take many more per sweep, so
    that per-op overheads, large on a shared machine, are paid fewer times)."""
    per_target = 6 * n_pos * rm.cfg.d_model * itemsize + 3 * (n_src + 1) * max(itemsize, 8)
    cap = max(64, 64 * (768 // rm.cfg.d_model) ** 2)
    return int(max(1, min(cap, (byte_limit / 4) // per_target)))


@torch.no_grad()
def reverse_edges(rm: ReplacementModel, cache: ReplacementCache, src: Sources, reads: list[LogitRead],
                  tolerance: float = 0.0, byte_limit: float = float("inf"), progress: bool = False,
                  batch_size: int | None = None, head_parts: bool = False, workers: int | None = None) -> Edges:
    """All edges into every active feature and every logit target of the cached prompt.

    `head_parts`: also the per-head parts of edges into attention-SAE features (``Edges.head_weight``: the part
    that reaches the feature through each head of its own layer, as the analytic engine gives them), at H sweeps
    per such target instead of one; without it (default) they are zeros. Other targets have none.

    `workers`: batches swept side by side, each worker with one torch thread (`workers.ordered_map`); default one
    per torch thread of the caller; 1: torch's threads inside each operation. The edges do not depend on it (the
    same operations per batch, collected in order)."""
    dtype = src.vectors.dtype
    n, n_src = cache.n_pos, len(src)
    col = _Collector(n_src + len(reads), rm.cfg.n_heads, dtype, tolerance, byte_limit)
    t = _targets(rm, src, reads, n)
    _constants_and_pre(rm, cache, src, reads, t, col)
    layers = _Layers(rm, cache, dtype)
    entries = _site_entries(rm, src)
    floor = _floor_site(rm)
    writes = {k: _Chunks.build(r, src.pos[r], v, n, n_src) for k, (r, v) in entries.items()}
    through = low_v = None
    upper = 0
    if floor:  # every write below the lowest channel, read directly and through the channel
        below = [(r, v) for k, (r, v) in entries.items() if k < floor]
        r, v = torch.cat([r for r, _ in below]), torch.cat([v for _, v in below])
        low = _Chunks.build(r, src.pos[r], v, n, n_src)
        if _through_pays(rm, src.pos[r], n, v.element_size(), min(byte_limit, 2**33) / 8):
            tr, tp, tv = _through_floor(layers, (floor - 1) // 2, r, src.pos[r], v, n)
            through = _Chunks.build(tr, tp, tv, n, n_src, widest=True)
            upper = _upper_site(rm, floor)
            mid = [(r2, v2) for k, (r2, v2) in entries.items() if floor < k < upper]
            rows = torch.cat([r, tr] + [r2 for r2, _ in mid])
            if upper and _upper_pays(rm, len(rows), n, v.element_size(), min(byte_limit, 2**33) / 8):
                vecs = torch.cat([v, tv] + [v2 for _, v2 in mid])
                pos_all = torch.cat([src.pos[r], tp] + [src.pos[r2] for r2, _ in mid])
                up = _Chunks.build(rows, pos_all, vecs, n, n_src)
                up_v = _Chunks.build(rows, pos_all, vecs @ layers.attn[(upper - 1) // 2][1], n, n_src)
            else:
                upper = 0
        else:  # too many writes below: read them in the channel's value space, [v W_V'] against Y
            low_v = _Chunks.build(r, src.pos[r], v @ layers.attn[(floor - 1) // 2][1], n, n_src)
    n_workers = workers or default_workers()  # each sweeps its own batches: the batch memory is shared out
    size = batch_size or batch_size_for(rm, n, n_src, torch.finfo(dtype).bits // 8, min(byte_limit, 2**33) / n_workers)
    s_rows = torch.arange(n_src)
    channel = _first_channel(rm)
    from tqdm.auto import tqdm

    H = rm.cfg.n_heads
    batches = _batches(t, size, max(1, size // H) if head_parts else size)

    @torch.no_grad()  # grad mode is per thread: the workers' too
    def sweep(sel: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One batch's sweep: (weights [B, n_src], per-head parts [B, H, n_src] or None, reachability or None)."""
        P = int(t.pos[sel].max()) + 1
        split = head_parts and int(t.kind[sel[0]]) == 1
        g, single = _seed(rm, cache, reads, layers, t, sel, P, dtype, heads=split)
        pos = t.pos[sel]
        wt = torch.zeros(n_src + 1, len(g), dtype=dtype)  # weights transposed: [source (+ padding), target]
        state: Tensor | _Once | None = pos if single else None
        for k in range(int(t.start[sel[0]]), -1, -1):
            if k in writes:  # sources written at k read the residual right after k
                writes[k].read(g, wt)
            layer = (k - 1) // 2
            if upper and k == upper and not isinstance(state, Tensor):  # every write below, against [g, Y]
                Y, _ = layers.attention_back(layer, g, state, mix_only=True)
                up.read(g, wt)
                up_v.read(Y, wt)
                break
            if floor and k == floor and (through is not None or not isinstance(state, Tensor)):
                low.read(g, wt)  # the last crossing: every write below, directly and through the channel
                if through is not None:
                    through.read(g, wt)
                else:
                    Y, _ = layers.attention_back(layer, g, state, mix_only=True)  # in the channel's value space
                    low_v.read(Y, wt)
                break
            if k % 2 == 1 and layer in layers.attn:
                _, state = layers.attention_back(layer, g, state)
            elif k % 2 == 0 and k > 0 and layer in layers.skip:
                layers.skip_back(layer, g)
                if isinstance(state, _Once):  # g W_skip moved g off the factored form
                    state = None
        w = wt[:n_src].T.contiguous()
        parts = w.view(len(sel), H, n_src) if split else None  # w [B·H, ·]: one row per (target, head)
        w = parts.sum(1) if split else w
        # A source that cannot reach a target has weight exactly 0 here (it is never read, or read where g is 0), so
        # with a tolerance the mask of reachable sources changes only rows that are all 0 (their reachable sources
        # are kept, as zero edges): it is formed only for those, or without a tolerance.
        mask = None
        if tolerance == 0 or not bool(w.any(1).all()):
            start, kind = int(t.start[sel[0]]), int(t.kind[sel[0]])
            near = src.site <= start
            far = near & ((channel[src.site] <= start) | (kind == 1))  # attention features read every q ≤ p
            mask = (near & (src.pos[None, :] == pos[:, None])) | (far & (src.pos[None, :] < pos[:, None]))
        return w, parts, mask

    bar = tqdm(total=len(batches), desc="edges (reverse sweeps)", disable=not progress,
               leave=not sys.stderr.isatty())  # a log keeps the finished bar and its newline (analytic.py says why)
    results = ordered_map(sweep, batches, n_workers)
    try:
        for sel, (w, parts, mask) in zip(batches, results, strict=True):
            col.add(t.rows[sel], s_rows, w, heads=parts.transpose(0, 1) if parts is not None else None, mask=mask)
            bar.update()
    finally:  # on an error too (e.g. the memory limit): the workers stop and the thread count is restored now
        results.close()
        bar.close()
    return col.finish()


def _constants_and_pre(rm: ReplacementModel, cache: ReplacementCache, src: Sources, reads: list[LogitRead],
                       t: _Targets, col: _Collector) -> None:
    """Constants from one frozen forward pass with every source write removed; pre-activations from the cache."""
    dtype = src.vectors.dtype
    n_sites = 2 * rm.n_layers + 1
    writes = _site_writes(rm, src, n_sites, cache.n_pos)
    no_sources = {k: -writes[k][None] for k in range(n_sites) if rm.has_mlp or k % 2 == 1 or k == 0}
    rows = t.rows.tolist()
    col.constants[t.rows] = _frozen_targets(rm, cache, src, reads, rows, _fixed_outputs(rm, cache), no_sources,
                                            shared=True)
    by_dict: dict[str, tuple[list[int], list[int], list[int]]] = {}  # one gather per dictionary
    for r in rows:
        if r < len(src):
            node = src.nodes[r]
            d = rm.attention_saes[node.layer] if node.kind == "attn_feature" else rm.transcoders[node.layer]
            for lst, x in zip(by_dict.setdefault(d.cfg.name, ([], [], [])), (r, node.pos, node.index), strict=True):
                lst.append(x)
        else:
            col.pre[r] = reads[r - len(src)].value
    for name, (r, p, i) in by_dict.items():
        col.pre[torch.tensor(r)] = cache.pre_activations[name][torch.tensor(p), torch.tensor(i)].to(dtype)
