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

5. **Skip transcoders and CLTs** (`_Stream`): targets read each source's *contribution* at their site, not its raw
   write. A skip transcoder at MLP l is linear in its input in the frozen model, so every contribution that reaches
   MLP l's input (and the constant) gains ``(P v / σ2[p]) @ W_skip.T`` at MLP l — a pass-through channel, not a
   node; a CLT feature of layer l gains its decoder ``a · W_dec_l[i, l' − l]`` at every later MLP l'. Edges from a
   source to later targets thus include every path through skip channels and every decoder write of a CLT feature;
   the constant term becomes position-dependent (σ2 differs by position).
6. **Transcoders on the raw residual** (``hook_resid_mid``, `replacement.reads_residual`): no norm between the stream
   and the encoder, so the read vector is ``W_enc`` itself (no P, no 1/σ2), and a skip channel is ``v W_skipᵀ``.

P is the LayerNorm centering ``I − 11ᵀ/d``; ``v · P u = P v · u``; with RMSNorm (Gemma-2, Llama-3, Qwen3) P = I and
β = 0 (`ReplacementModel.center`), and σ is the frozen RMS scale. Grouped-query attention: ``W_V[h]`` is the value
head that query head h shares (TransformerLens repeats the shared heads), so each per-head part reads the right one.
Gemma-2's post-norms enter through the source writes and constants (`sources`), soft-capping and sliding windows
through the frozen pattern. Needs an SAE on every attention layer (an
attention layer without one is a linear channel: use the reverse engine); an MLP without a transcoder is an error
node. Reference: Kissane et al. 2024 (attention-output SAEs, recursive DFA), Dunefsky et al. 2024 (transcoders),
Ameisen et al. 2025 (attribution graphs).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.attribution.sources import Sources, attn_site, constant_writes, later_writes, mlp_site
from circuits.attribution.targets import LogitRead
from circuits.dictionaries.clt import CLTLayer
from circuits.replacement import AttributionError, ReplacementCache, ReplacementModel, reads_residual


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


class _Collector:
    def __init__(self, n_rows: int, n_heads: int, dtype, tolerance: float, byte_limit: float = float("inf")):
        self.parts: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
        self.constants = torch.zeros(n_rows, dtype=dtype)
        self.pre = torch.zeros(n_rows, dtype=dtype)
        self.dropped = torch.zeros(n_rows, dtype=dtype)
        self.n_heads = n_heads
        self.tolerance = tolerance
        self.byte_limit = byte_limit
        self.bytes = 0
        self.bytes_per_edge = 8 + 8 + (n_heads + 1) * torch.finfo(dtype).bits // 8

    def _count(self, n_edges: int) -> None:
        self.bytes += n_edges * self.bytes_per_edge
        if self.bytes > self.byte_limit:
            raise AttributionError(
                f"the graph's edges passed the memory limit of {self.byte_limit / 2**30:.1f} GiB while being "
                f"computed; pass a larger edge_tolerance (e.g. 1e-3: store only edges above that fraction of each "
                f"target's total), a shorter prompt, or fewer dictionaries")

    def add(self, t_rows: Tensor, s_rows: Tensor, w: Tensor, heads: Tensor | None = None,
            mask: Tensor | None = None) -> None:
        """A complete block of edges: every source that can reach each target. w [n_t, n_s]; heads [H, n_t, n_s];
        mask [n_t, n_s] (optional): the sources that can reach each target, when they differ by target (w is
        zero elsewhere)."""
        if self.tolerance > 0:
            w_abs = w.abs()
            keep = w_abs >= self.tolerance * w_abs.sum(1, keepdim=True)
            if mask is not None:
                keep &= mask
            self.dropped.index_add_(0, t_rows, w.sum(1) - (w * keep).sum(1))
            ti, si = torch.nonzero(keep, as_tuple=True)
        elif mask is not None:
            ti, si = torch.nonzero(mask, as_tuple=True)
        else:
            ti = torch.arange(w.shape[0]).repeat_interleave(w.shape[1])
            si = torch.arange(w.shape[1]).repeat(w.shape[0])
        self._count(len(si))
        hw = heads[:, ti, si].T if heads is not None else None
        self.parts.append((t_rows[ti], s_rows[si], w[ti, si], hw))

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
                   tolerance: float = 0.0, byte_limit: float = float("inf"), progress: bool = False) -> Edges:
    """All edges into every active feature and every logit target of the cached prompt."""
    missing = [layer for layer in range(rm.n_layers) if layer not in rm.attention_saes]
    if missing:
        raise AttributionError(f"analytic attribution needs an attention SAE on every layer (missing: {missing}); "
                               "use method='reverse' (or 'auto')")
    dtype = src.vectors.dtype
    n_src = len(src)
    col = _Collector(n_src + len(reads), rm.cfg.n_heads, dtype, tolerance, byte_limit)
    kind = torch.tensor([{"attn_feature": 1, "mlp_feature": 2}.get(n.kind, 0) for n in src.nodes])
    index = torch.tensor([n.index for n in src.nodes])
    stream = _Stream(rm, cache, src)
    from tqdm.auto import tqdm

    # a terminal clears the finished bar; a log keeps it, ended by a newline (cleared, the next line ran into it)
    for layer in tqdm(range(rm.n_layers), desc="edges by layer", disable=not progress, leave=not sys.stderr.isatty()):
        rows = torch.nonzero((kind == 1) & (src.site == attn_site(layer))).flatten()
        if len(rows):
            _attention_layer(rm, cache, src, stream.V, layer, rows, index[rows], stream.C, col)
        stream.after_attention(layer)
        rows = torch.nonzero((kind == 2) & (src.site == mlp_site(layer))).flatten()
        if len(rows):
            _mlp_layer(rm, cache, src, stream.V, layer, rows, index[rows], stream.C, col)
        stream.after_mlp(layer)
    _logits(rm, cache, src, stream.V, reads, stream.C[cache.n_pos - 1], col)
    return col.finish()


class _Stream:
    """What each source, and the node-independent constant, contributes to the residual stream at the current point
    of the forward order: ``V [S, d_model]`` (a source's contribution at its own position) and ``C [pos, d_model]``.

    Without skip transcoders or CLTs, V is each source's write and C the sum of earlier constant writes. A skip
    transcoder at MLP l adds ``(P v / σ2[p]) @ W_skip.T`` to every contribution that reaches its input (the frozen
    skip channel, same position); a CLT adds each earlier-layer feature's decoder into MLP l to that feature's V."""

    def __init__(self, rm: ReplacementModel, cache: ReplacementCache, src: Sources):
        self.rm, self.cache, self.src = rm, cache, src
        self.cw = constant_writes(rm, cache)
        dtype = src.vectors.dtype
        self.C = torch.zeros(cache.n_pos, rm.cfg.d_model, dtype=dtype)
        self.changes = any(tc.cfg.skip or isinstance(tc, CLTLayer) for tc in rm.transcoders.values())
        self.V = src.vectors.clone() if self.changes else src.vectors

    def after_attention(self, layer: int) -> None:
        self.C = self.C + self.cw[attn_site(layer)].to(self.C.dtype)

    def after_mlp(self, layer: int) -> None:
        tc = self.rm.transcoders.get(layer)
        dtype = self.C.dtype
        if tc is not None and tc.W_skip is not None:
            W_skip_T = tc.W_skip.to(dtype).T  # [d_model(in), d_model(out)]
            rows = torch.nonzero(self.src.site < mlp_site(layer)).flatten()
            if reads_residual(tc):  # the skip term of the raw residual stream
                self.V[rows] += self.V[rows] @ W_skip_T
                self.C = self.C + self.C @ W_skip_T
            else:
                sigma = self.cache.ln2_scale[layer].to(dtype)  # [pos]
                center = self.rm.center
                self.V[rows] += (center(self.V[rows], 1) / sigma[self.src.pos[rows], None]) @ W_skip_T
                self.C = self.C + (center(self.C, 1) / sigma[:, None]) @ W_skip_T
        rows, writes = later_writes(self.rm, self.src, layer)
        if len(rows):
            self.V.index_add_(0, rows, writes.to(dtype))
        self.C = self.C + self.cw[mlp_site(layer)].to(dtype)


@torch.no_grad()
def stream_contributions(rm: ReplacementModel, cache: ReplacementCache, src: Sources,
                         layer: int) -> tuple[Tensor, Tensor]:
    """(V [S, d_model], C [pos, d_model]): each source's contribution to the residual stream entering attention
    layer `layer` (at its own position, skip channels and later CLT decoder writes included) and the
    node-independent constant's at every position — `_Stream` advanced past every sublayer before attention
    `layer`, so ``resid_pre[layer][r] = Σ_{pos s = r} V[s] + C[r]`` over the sources written before it. Rows of
    sources written at or after that point hold their raw writes (no meaning here). V is ``src.vectors`` itself
    (not a copy) when the model has no skip transcoder or CLT."""
    stream = _Stream(rm, cache, src)
    for earlier in range(layer):
        stream.after_attention(earlier)
        stream.after_mlp(earlier)
    return stream.V, stream.C


def _by_position(src: Sources, before_site: int, n_pos: int) -> tuple[Tensor, Tensor]:
    """Rows of sources written before `before_site`, sorted by position, and offsets[p] where position p starts."""
    rows = torch.nonzero(src.site < before_site).flatten()
    rows = rows[torch.argsort(src.pos[rows], stable=True)]
    counts = torch.bincount(src.pos[rows], minlength=n_pos)
    return rows, torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])


def _mlp_layer(rm, cache, src: Sources, vectors: Tensor, layer: int, rows: Tensor, feats: Tensor,
               c_before: Tensor, col: _Collector) -> None:
    tc = rm.transcoders[layer]
    dtype = src.vectors.dtype
    W = tc.W_enc.to(dtype)[:, feats]  # [d_model, T]
    pos = src.pos[rows]
    if reads_residual(tc):  # hook_resid_mid: the raw stream, read as it is
        R = W
    else:  # ln2.hook_normalized is P x / σ2 (x / σ2 for RMSNorm), before γ2 and β2
        R = rm.center(W, 0) / cache.ln2_scale[layer].to(dtype)[pos]  # [d_model, T] read vectors
    col.constants[rows] = (c_before[pos] * R.T).sum(1) - tc.b_in.to(dtype) @ W + tc.b_enc.to(dtype)[feats]
    col.pre[rows] = cache.pre_activations[tc.cfg.name].to(dtype)[pos, feats]
    s_rows, start = _by_position(src, mlp_site(layer), cache.n_pos)
    V = vectors[s_rows]
    for p in pos.unique().tolist():
        t_cols = torch.nonzero(pos == p).flatten()
        block = slice(int(start[p]), int(start[p + 1]))  # sources at position p only
        col.add(rows[t_cols], s_rows[block], R[:, t_cols].T @ V[block].T)


def _attention_layer(rm, cache, src: Sources, vectors: Tensor, layer: int, rows: Tensor, feats: Tensor,
                     c_before: Tensor, col: _Collector) -> None:
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
    k = torch.einsum("qd,hde->hqe", rm.center(c_before, 1), value_w) / sigma[None, :, None] \
        + (torch.einsum("d,hde->he", beta, W_V) + b_V)[:, None, :]  # [H, pos, d_head]
    z_const = torch.einsum("hpq,hqd->phd", A, k).reshape(A.shape[1], H * dh)  # [pos, H*d_head]
    W_flat = sae.W_enc.to(dtype)[:, feats]  # [H*d_head, T]
    col.constants[rows] = ((z_const[pos] - sae.b_dec.to(dtype)) * W_flat.T).sum(-1) + sae.b_enc.to(dtype)[feats]
    col.pre[rows] = cache.pre_activations[sae.cfg.name].to(dtype)[pos, feats]
    # edges: earlier sources, sorted by position, projected into each head's value space and divided by σ1 at the
    # source position; the targets at query position p read the prefix of sources at positions ≤ p
    s_rows, start = _by_position(src, attn_site(layer), cache.n_pos)
    q = src.pos[s_rows]
    G = torch.einsum("sd,hde->hes", rm.center(vectors[s_rows], 1), value_w) / sigma[q]  # [H, d_head, S]
    for p in pos.unique().tolist():
        t_cols = torch.nonzero(pos == p).flatten()
        n = int(start[p + 1])
        heads = torch.bmm(W_enc[:, :, feats[t_cols]].transpose(1, 2), G[:, :, :n])  # [H, T_p, S_p]
        heads *= A[:, p, q[:n]][:, None, :]  # A[h, p, q_s]
        col.add(rows[t_cols], s_rows[:n], heads.sum(0), heads)


def _logits(rm, cache, src: Sources, vectors: Tensor, reads: list[LogitRead], c_all: Tensor,
            col: _Collector) -> None:
    if not reads:
        return
    dtype = src.vectors.dtype
    gamma, beta = (w.to(dtype) for w in rm.ln_weights("ln_final"))
    last = cache.n_pos - 1
    D = torch.stack([r.direction.to(dtype) for r in reads], 1)  # [d_model, n_targets]
    R = rm.center(gamma[:, None] * D, 0) / cache.lnf_scale.to(dtype)[last]
    rows = torch.arange(len(src), len(src) + len(reads))
    col.constants[rows] = c_all @ R + beta @ D + torch.tensor([r.bias for r in reads], dtype=dtype)
    col.pre[rows] = torch.tensor([r.value for r in reads], dtype=dtype)
    s_rows = torch.nonzero(src.pos == last).flatten()
    col.add(rows, s_rows, R.T @ vectors[s_rows].T)
