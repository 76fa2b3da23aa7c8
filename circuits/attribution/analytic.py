"""Analytic edges: recursive direct feature attribution in the frozen local replacement model.

With LayerNorm scales σ and attention patterns A held at their clean values and every dictionary's output computed
from its (fixed) codes, each target's pre-activation is an affine function of the source writes ``v_s``:

1. **Transcoder feature** j at (layer l, position p) reads the residual stream at p before MLP l through
   ``ln2.hook_normalized`` (``P x / σ2``, before the LayerNorm's own γ2, β2, as the public transcoders do):
   ``pre = v · r + const`` for every source at position p with ``r = P W_enc[:, j] / σ2[p]``.
2. **Attention-SAE feature** i at (l, p) reads every position q ≤ p through the frozen pattern, head by head:
   ``edge_h(s@q → i@p) = A[h, p, q] / σ1[q] · (P v_s) · (γ1 ⊙ W_V[h]) W_enc[h-slice, i]``; the per-head terms are
   kept (they sum to the edge). Sources are first projected into each head's value space (``[S, d_head]``), then
   read by all targets of the layer in one product per head (``[S, d_head] @ [d_head, T]``).
3. **Logit** t (or a contrast a − b) at the last position: ``r = P(γf ⊙ W_U[:, t]) / σf[p]``.
4. **Constant term**: the same expressions applied to the node-independent writes (decoder and attention biases)
   plus the reading side's own biases (β, b_V, −b_in·W_enc, b_enc, b_U). Computed independently of the edges, so
   ``Σ edges + constant = pre-activation`` is a real check of the whole computation, not a definition.

P is the LayerNorm centering ``I − 11ᵀ/d``; ``v · P u = P v · u``. Needs an SAE on every attention layer (an
attention layer without one is a linear channel: use the autograd path); an MLP without a transcoder is an error
node. Reference: Kissane et al. 2024 (attention-output SAEs, recursive DFA), Dunefsky et al. 2024 (transcoders),
Ameisen et al. 2025 (attribution graphs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.attribution.sources import Sources, attn_site, constant_writes, mlp_site
from circuits.attribution.targets import LogitRead
from circuits.replacement import AttributionError, ReplacementCache, ReplacementModel

#: Entries of one [heads, sources, targets] block of attention edges computed at once (memory bound).
ATTN_BLOCK_ELEMENTS = 24_000_000


@dataclass
class Edges:
    """Edges into target rows (rows index the graph's node table: sources first, then logit targets)."""

    target: Tensor  # [E] long
    source: Tensor  # [E] long
    weight: Tensor  # [E]
    head_weight: Tensor  # [E, n_heads] per-head parts of edges into attention features (0 for other edges)
    constants: Tensor  # [n_rows]
    pre_activations: Tensor  # [n_rows]
    dropped: Tensor  # [n_rows] sum of edges below the storage tolerance


def _center(x: Tensor, dim: int) -> Tensor:
    return x - x.mean(dim, keepdim=True)


class _Collector:
    def __init__(self, n_rows: int, n_heads: int, dtype, tolerance: float):
        self.parts: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
        self.constants = torch.zeros(n_rows, dtype=dtype)
        self.pre = torch.zeros(n_rows, dtype=dtype)
        self.dropped = torch.zeros(n_rows, dtype=dtype)
        self.n_heads = n_heads
        self.tolerance = tolerance

    def add(self, s_rows: Tensor, t_rows: Tensor, w: Tensor, valid: Tensor, heads: Tensor | None = None) -> None:
        """Block of edges w [n_s, n_t] (valid marks causally possible entries); heads [H, n_s, n_t]."""
        keep = valid
        if self.tolerance > 0:
            scale = (w.abs() * valid).amax(0, keepdim=True)
            keep = valid & (w.abs() >= self.tolerance * scale)
            self.dropped.index_add_(0, t_rows, (w * (valid & ~keep)).sum(0))
        si, ti = torch.nonzero(keep, as_tuple=True)
        hw = heads[:, si, ti].T if heads is not None else None
        self.parts.append((t_rows[ti], s_rows[si], w[si, ti], hw))

    def add_ts(self, s_rows: Tensor, t_rows: Tensor, w: Tensor, valid: Tensor, heads: Tensor) -> None:
        """Like `add`, for blocks laid out [n_t, n_s] (heads [H, n_t, n_s])."""
        keep = valid
        if self.tolerance > 0:
            scale = (w.abs() * valid).amax(1, keepdim=True)
            keep = valid & (w.abs() >= self.tolerance * scale)
            self.dropped.index_add_(0, t_rows, (w * (valid & ~keep)).sum(1))
        ti, si = torch.nonzero(keep, as_tuple=True)
        self.parts.append((t_rows[ti], s_rows[si], w[ti, si], heads[:, ti, si].T))

    def finish(self) -> Edges:
        dtype = self.constants.dtype
        if not self.parts:
            empty = torch.zeros(0, dtype=torch.long)
            return Edges(empty, empty, torch.zeros(0, dtype=dtype), torch.zeros(0, self.n_heads, dtype=dtype),
                         self.constants, self.pre, self.dropped)
        heads = [hw if hw is not None else torch.zeros(len(w), self.n_heads, dtype=dtype)
                 for _, _, w, hw in self.parts]
        return Edges(torch.cat([p[0] for p in self.parts]), torch.cat([p[1] for p in self.parts]),
                     torch.cat([p[2] for p in self.parts]), torch.cat(heads), self.constants, self.pre,
                     self.dropped)


@torch.no_grad()
def analytic_edges(rm: ReplacementModel, cache: ReplacementCache, src: Sources, reads: list[LogitRead],
                   tolerance: float = 0.0) -> Edges:
    """All edges into every active feature and every logit target of the cached prompt."""
    missing = [layer for layer in range(rm.n_layers) if layer not in rm.attention_saes]
    if missing:
        raise AttributionError(f"analytic attribution needs an attention SAE on every layer (missing: {missing}); "
                               "use method='autograd'")
    dtype = src.vectors.dtype
    n_src = len(src)
    col = _Collector(n_src + len(reads), rm.cfg.n_heads, dtype, tolerance)
    kind = torch.tensor([{"attn_feature": 1, "mlp_feature": 2}.get(n.kind, 0) for n in src.nodes])
    index = torch.tensor([n.index for n in src.nodes])
    cw = constant_writes(rm)
    before = torch.stack(cw).cumsum(0) - torch.stack(cw)  # before[k]: constant writes of sites < k
    for layer in range(rm.n_layers):
        rows = torch.nonzero((kind == 1) & (src.site == attn_site(layer))).flatten()
        if len(rows):
            _attention_layer(rm, cache, src, layer, rows, index[rows], before[attn_site(layer)], col)
        rows = torch.nonzero((kind == 2) & (src.site == mlp_site(layer))).flatten()
        if len(rows):
            _mlp_layer(rm, cache, src, layer, rows, index[rows], before[mlp_site(layer)], col)
    _logits(rm, cache, src, reads, torch.stack(cw).sum(0), col)
    return col.finish()


def _mlp_layer(rm, cache, src: Sources, layer: int, rows: Tensor, feats: Tensor, c_before: Tensor,
               col: _Collector) -> None:
    tc = rm.transcoders[layer]
    dtype = src.vectors.dtype
    W = tc.W_enc.to(dtype)[:, feats]  # [d_model, T]
    pos = src.pos[rows]
    sigma = cache.ln2_scale[layer].to(dtype)[pos]
    R = _center(W, 0) / sigma  # [d_model, T] read vectors (ln2.hook_normalized is P x / σ2, before γ2 and β2)
    col.constants[rows] = c_before @ R - tc.b_in.to(dtype) @ W + tc.b_enc.to(dtype)[feats]
    col.pre[rows] = cache.pre_activations[tc.cfg.name].to(dtype)[pos, feats]
    earlier = src.site < mlp_site(layer)
    for p in pos.unique().tolist():
        s_rows = torch.nonzero(earlier & (src.pos == p)).flatten()
        t_cols = torch.nonzero(pos == p).flatten()
        w = src.vectors[s_rows] @ R[:, t_cols]
        col.add(s_rows, rows[t_cols], w, torch.ones_like(w, dtype=torch.bool))


def _attention_layer(rm, cache, src: Sources, layer: int, rows: Tensor, feats: Tensor, c_before: Tensor,
                     col: _Collector) -> None:
    sae = rm.attention_saes[layer]
    attn = rm.model.blocks[layer].attn
    dtype = src.vectors.dtype
    H, dh = rm.cfg.n_heads, rm.cfg.d_head
    gamma, beta = (w.to(dtype) for w in rm.ln_weights("ln1", layer))
    W_V, b_V = attn.W_V.to(dtype), attn.b_V.to(dtype)  # [H, d_model, d_head], [H, d_head]
    W_enc = sae.W_enc.to(dtype).reshape(H, dh, -1)  # [H, d_head, d_sae]
    A = cache.patterns[layer].to(dtype)  # [H, pos(query), pos(key)]
    sigma = cache.ln1_scale[layer].to(dtype)  # [pos]
    pos = src.pos[rows]
    # constant term: node-independent writes and biases, through the frozen pattern
    value_w = gamma[None, :, None] * W_V  # [H, d_model, d_head]
    k = (_center(c_before, 0) @ value_w)[:, None, :] / sigma[None, :, None] \
        + (torch.einsum("d,hde->he", beta, W_V) + b_V)[:, None, :]  # [H, pos, d_head]
    z_const = torch.einsum("hpq,hqd->phd", A, k).reshape(A.shape[1], H * dh)  # [pos, H*d_head]
    W_flat = sae.W_enc.to(dtype)[:, feats]  # [H*d_head, T]
    col.constants[rows] = ((z_const[pos] - sae.b_dec.to(dtype)) * W_flat.T).sum(-1) + sae.b_enc.to(dtype)[feats]
    col.pre[rows] = cache.pre_activations[sae.cfg.name].to(dtype)[pos, feats]
    # edges: project earlier sources into each head's value space, divided by σ1 at the source position
    s_rows = torch.nonzero(src.site < attn_site(layer)).flatten()
    q = src.pos[s_rows]
    G = torch.einsum("sd,hde->hse", _center(src.vectors[s_rows], 1), value_w) / sigma[q][None, :, None]
    chunk = max(1, ATTN_BLOCK_ELEMENTS // max(1, H * len(s_rows)))
    Gt = G.transpose(1, 2)  # [H, d_head, S]
    A_q = A[:, :, q]  # [H, pos(query), S]: the pattern weight from each source's position
    for start in range(0, len(rows), chunk):
        t = slice(start, start + chunk)
        p_t = pos[t]
        heads = torch.bmm(W_enc[:, :, feats[t]].transpose(1, 2), Gt)  # [H, Tc, S]
        heads *= A_q[:, p_t]  # A[h, p_t, q_s]
        col.add_ts(s_rows, rows[t], heads.sum(0), p_t[:, None] >= q[None, :], heads)


def _logits(rm, cache, src: Sources, reads: list[LogitRead], c_all: Tensor, col: _Collector) -> None:
    if not reads:
        return
    dtype = src.vectors.dtype
    gamma, beta = (w.to(dtype) for w in rm.ln_weights("ln_final"))
    last = cache.n_pos - 1
    D = torch.stack([r.direction.to(dtype) for r in reads], 1)  # [d_model, n_targets]
    R = _center(gamma[:, None] * D, 0) / cache.lnf_scale.to(dtype)[last]
    rows = torch.arange(len(src), len(src) + len(reads))
    col.constants[rows] = c_all @ R + beta @ D + torch.tensor([r.bias for r in reads], dtype=dtype)
    col.pre[rows] = torch.tensor([r.value for r in reads], dtype=dtype)
    s_rows = torch.nonzero(src.pos == last).flatten()
    w = src.vectors[s_rows] @ R
    col.add(s_rows, rows, w, torch.ones_like(w, dtype=torch.bool))
