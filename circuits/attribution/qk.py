"""QK attribution: why an attention head attended where it did, as an exact sum over pairs of graph sources.

Every edge into an attention feature is computed through the frozen pattern, so a graph shows what a head moved
(OV) but not why it looked there (QK). This module decomposes the pre-softmax score of head h of layer l, from
query position p to key position q, in the frozen local replacement model (LayerNorm scales σ held at the clean
values, as everywhere in attribution):

1. **The residual stream as a sum of sources.** The stream feeding layer l at position r is
   ``x_r = Σ_s v_s + c_r``: the writes ``v_s`` of the graph's sources at r from sites before attention l (token +
   position embedding, active transcoder and attention-SAE features, error nodes; `collect_sources`) and the
   node-independent writes ``c`` (decoder and attention output biases; `constant_writes`). An earlier attention
   layer without an SAE has no features: its whole output at r is one ``attn_error`` node (as an MLP without a
   transcoder is one ``mlp_error`` node). With skip transcoders or a cross-layer transcoder upstream, ``v_s`` is
   the source's *contribution* at layer l rather than its raw write — the write, plus its path through the frozen
   skip channel ``(P v / σ2) W_skipᵀ`` of every MLP before l, plus (CLT feature) its decoder writes into every later
   MLP before l — and ``c_r`` (then position-dependent) gains the skip channel of the constant writes; both come
   from the analytic engine's own bookkeeping (`analytic.stream_contributions`), so QK and the graph's edges see
   the same frozen model.
2. **Frozen LayerNorm is affine.** ``x̂_r = P x_r / σ_r ⊙ γ + β`` (P = I − 11ᵀ/d, the centring; γ, β of ln1).
   With σ_r fixed, each source's share is ``P v_s / σ_r ⊙ γ`` and the rest — ``P c_r / σ_r ⊙ γ + β`` — is the
   position's constant part.
3. **Query and key as sums.** ``q_p = Σ_s a_s + a_0`` with ``a_s = (P v_s / σ_p ⊙ γ) W_Q[h]`` and
   ``a_0 = (P c_p / σ_p ⊙ γ + β) W_Q[h] + b_Q[h]``; likewise ``k_q = Σ_t b_t + b_0`` with W_K, b_K at position q.
4. **The score as a sum of pairs.** ``s[p, q] = q_p · k_q / attn_scale`` (TransformerLens: attn_scale = √d_head)
   ``= Σ_{s,t} a_s·b_t / attn_scale``: (query source, key source) pairs, query-only terms (s, constant),
   key-only terms (constant, t) and the constant pair. Nothing is approximated: the terms sum to the score.
5. **Contrasts and the pattern.** Any linear function ``Σ_j w_j s[p, j]`` of the score row decomposes the same
   way, each key-side term weighted by ``w`` at its position: ``w = e_a − e_b`` gives the preference
   ``s[p, a] − s[p, b]`` (IOI: END→IO minus END→S2); ``w = ∂A[p, q]/∂s[p, ·] = A_q (e_q − A)`` (the softmax
   Jacobian over keys ≤ p, A the frozen pattern row) gives the first-order effect of each term on the pattern
   ``A[p, q]`` (or on ``A[p, a] − A[p, b]``): removing a term changes the pattern by minus its share, to first
   order. Those terms sum to ``Σ_j w_j s[p, j]``, the linearised pattern value, not to A itself.

6. **Other families** (Gemma-2, Llama-3, Qwen3). RMSNorm: P = I and β = 0. Grouped-query attention: query head h
   reads key head ``h // (n_heads / n_key_value_heads)`` (TransformerLens' ``W_K`` repeats the shared heads).
   QK-norm (Qwen3): q and k are RMS-normalised per head; with their scales held at the clean values (as every norm
   in attribution) each share is divided by ``σ_q[p, h]`` (``σ_k[q, h]``) and multiplied by the norm's weight.
   Rotary embeddings: q at position p and k at position q are rotated by their positions — a linear map per
   position, applied to each share after the projection (and QK-norm), so the terms still sum to the score and
   positions enter only here, never as a node. Soft-capped scores (Gemma-2: ``c·tanh(s/c)``): the decomposed score
   is the raw one before the cap (``scores``, ``value``); for the pattern quantity the softmax Jacobian row is
   multiplied by the cap's slope ``1 − tanh²(s/c)`` at the clean scores, so the terms are still the first-order
   effects on the pattern. A sliding window only masks keys: a key outside the head's window is refused.

`explain_attention` returns a `QKAttribution`: the query-side and key-side parts as factors (``a_s`` and
``w_j b_t / attn_scale``), so the full table (a matrix product) is formed only in chunks; ``top(k)`` gives the
largest pairs, ``query_marginals()`` / ``key_marginals()`` the sums per side (removing query-side source s in the
frozen model moves the quantity by exactly its query marginal), ``value`` the quantity computed independently from
the cached residual stream. Reference: Kamath et al. 2025, "Tracing attentional computation" (Anthropic circuits
updates); Elhage et al. 2021 (QK and OV circuits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from circuits.attribution.analytic import stream_contributions
from circuits.attribution.sources import Sources, attn_site, collect_sources
from circuits.graph import Node
from circuits.replacement import AttributionError, ReplacementCache, ReplacementModel

Quantity = Literal["score", "pattern"]
_CHUNK = 1 << 22  # table entries formed at once by top() and total()


class QKTerm(NamedTuple):
    """One entry of the table: a (query-side, key-side) pair; None is that side's constant part (biases, LN β and
    node-independent writes). ``key_pos`` says where the key side sits (needed when ``key`` is None)."""

    query: Node | None
    key: Node | None
    key_pos: int
    contribution: float


class Marginal(NamedTuple):
    """The sum of one side's row or column of the table: a source (None = constant part) at ``pos``."""

    node: Node | None
    pos: int
    contribution: float


class NetSource(NamedTuple):
    """One key-side source summed over every key position: a feature, error or embedding named by kind, layer and
    index whatever its position (``kind`` None: the constant parts). In a contrast a source present at both keys
    counts + at one and − at the other, so its two parts cancel in the net (`QKAttribution.key_net`)."""

    kind: str | None
    layer: int
    index: int
    contribution: float
    parts: tuple[Marginal, ...]  # its key marginal at each key position, in position order

    @property
    def name(self) -> str:
        """The canonical id without a position (``A0#996``, ``errM1``, ``E#412``); ``const`` for the constant parts."""
        from circuits.ids import format_node

        if self.kind is None:
            return "const"
        return format_node(Node(self.kind, self.layer, self.parts[0].pos, self.index), with_pos=False)


@dataclass
class QKAttribution:
    """The decomposition of one attention quantity of head (layer, head) at query position ``query_pos``.

    ``keys`` are the key positions asked for: ``(q,)`` or ``(a, b)`` for a contrast. ``weights`` [pos ≤ p] is the
    linear function of the score row being explained (``e_q``, ``e_a − e_b`` or the softmax-Jacobian row), and the
    table entry of (query row i, key column j) is ``query_vectors[i] · key_vectors[j]``.
    """

    layer: int
    head: int
    query_pos: int
    keys: tuple[int, ...]
    quantity: Quantity  # "score": the pre-softmax score(s); "pattern": first-order effect on the pattern
    value: float  # Σ_j weights[j] · scores[j], computed from the cached residual stream, not from the terms
    scores: Tensor  # [pos ≤ p] pre-softmax scores of the query row
    pattern: Tensor  # [pos ≤ p] the clean attention pattern of the query row
    weights: Tensor  # [pos ≤ p]
    query_nodes: tuple[Node | None, ...]  # Q rows; None = the constant part
    query_vectors: Tensor  # [Q, d_head] each row's share of the query vector q_p
    key_nodes: tuple[Node | None, ...]  # K columns; None = the constant part at key_positions[j]
    key_positions: Tensor  # [K] long
    key_vectors: Tensor  # [K, d_head] each column's share of k at its position, × weights[pos] / attn_scale

    @property
    def score(self) -> float:
        """The quantity's pre-softmax score: s[p, q], or s[p, a] − s[p, b] for a contrast."""
        s = self.scores
        return float(s[self.keys[0]] - s[self.keys[1]]) if len(self.keys) == 2 else float(s[self.keys[0]])

    def matrix(self) -> Tensor:
        """[Q, K] the whole table (every pair's contribution); large for long prompts — prefer `top`."""
        return self.query_vectors @ self.key_vectors.T

    def _column_chunks(self):
        step = max(1, _CHUNK // max(1, len(self.query_nodes)))
        for start in range(0, len(self.key_nodes), step):
            yield start, self.query_vectors @ self.key_vectors[start:start + step].T

    def total(self) -> float:
        """Σ of every table entry (equals `value` up to float rounding: the exactness check)."""
        return float(sum(block.sum() for _, block in self._column_chunks()))

    def top(self, k: int = 10, constants: bool = True) -> list[QKTerm]:
        """The k pairs of largest |contribution|, largest first; ``constants=False``: pairs of two sources only
        (in a contrast the constant parts' pairs are often large and cancel between the two keys)."""
        best_v = torch.zeros(0, dtype=self.query_vectors.dtype, device=self.query_vectors.device)
        best_i = torch.zeros(0, dtype=torch.long, device=self.query_vectors.device)
        n_k = len(self.key_nodes)
        row_ok = torch.tensor([constants or n is not None for n in self.query_nodes], device=best_v.device)
        col_ok = torch.tensor([constants or n is not None for n in self.key_nodes], device=best_v.device)
        for start, block in self._column_chunks():
            flat = block.flatten()
            score = flat.abs()
            if not constants:  # a pair with a constant part is never chosen (not even as a zero, when few are left)
                ok = (row_ok[:, None] & col_ok[None, start:start + block.shape[1]]).flatten()
                score = torch.where(ok, score, torch.full_like(score, -1.0))
            s, i = score.topk(min(k, flat.numel()))
            i = i[s >= 0]
            rows, cols = i // block.shape[1], i % block.shape[1] + start
            best_v = torch.cat([best_v, flat[i]])
            best_i = torch.cat([best_i, rows * n_k + cols])
            keep = best_v.abs().topk(min(k, best_v.numel())).indices
            best_v, best_i = best_v[keep], best_i[keep]
        return [QKTerm(self.query_nodes[i // n_k], self.key_nodes[i % n_k], int(self.key_positions[i % n_k]),
                       float(v)) for v, i in zip(best_v.tolist(), best_i.tolist(), strict=True)]

    def query_marginals(self) -> list[Marginal]:
        """Each query-side row summed over every key-side column, largest |contribution| first."""
        m = self.query_vectors @ self.key_vectors.sum(0)
        return _sorted([Marginal(n, self.query_pos, float(v)) for n, v in zip(self.query_nodes, m.tolist(),
                                                                              strict=True)])

    def key_marginals(self) -> list[Marginal]:
        """Each key-side column summed over every query-side row, largest |contribution| first."""
        m = self.key_vectors @ self.query_vectors.sum(0)
        return _sorted([Marginal(n, int(p), float(v)) for n, p, v in zip(self.key_nodes, self.key_positions.tolist(),
                                                                          m.tolist(), strict=True)])

    def key_net(self) -> list[NetSource]:
        """The key marginals summed per source over the key positions (largest |net| first): for a contrast
        s[p, a] − s[p, b], what each feature adds to the preference wherever it sits (dense features active at both
        keys cancel here, while `key_marginals` lists their two large parts apart)."""
        groups: dict[tuple, list[Marginal]] = {}
        for m in self.key_marginals():
            ident = (None, -1, -1) if m.node is None else (m.node.kind, m.node.layer, m.node.index)
            groups.setdefault(ident, []).append(m)
        out = [NetSource(kind, layer, index, float(sum(m.contribution for m in parts)),
                         tuple(sorted(parts, key=lambda m: m.pos))) for (kind, layer, index), parts in groups.items()]
        return sorted(out, key=lambda n: -abs(n.contribution))

    def describe(self) -> str:
        """The quantity in words: ``score L3.H5 14→9 − 14→4`` and the like."""
        keys = " − ".join(f"{self.query_pos}→{q}" for q in self.keys)
        what = "score" if self.quantity == "score" else "pattern (first order)"
        return f"{what} L{self.layer}.H{self.head} {keys}"

    def to_json(self, top: int = 10) -> dict:
        """A JSON object (nodes as [kind, layer, pos, index], null for a constant part): the quantity, the pattern
        values at the keys, the `top` pairs (``source_pairs``: without the constant parts) and the `top`
        marginals of each side."""
        def node(n: Node | None):
            return None if n is None else n.to_json()

        def pair(t: QKTerm) -> dict:
            return {"query": node(t.query), "key": node(t.key), "key_pos": t.key_pos, "contribution": t.contribution}

        return {
            "layer": self.layer, "head": self.head, "query_pos": self.query_pos, "keys": list(self.keys),
            "quantity": self.quantity, "value": self.value, "score": self.score, "terms_total": self.total(),
            "pattern": [float(self.pattern[q]) for q in self.keys],
            "pairs": [pair(t) for t in self.top(top)],
            "source_pairs": [pair(t) for t in self.top(top, constants=False)],
            "query_marginals": [{"node": node(m.node), "pos": m.pos, "contribution": m.contribution}
                                for m in self.query_marginals()[:top]],
            "key_marginals": [{"node": node(m.node), "pos": m.pos, "contribution": m.contribution}
                              for m in self.key_marginals()[:top]],
        }


def _sorted(rows: list[Marginal]) -> list[Marginal]:
    return sorted(rows, key=lambda m: -abs(m.contribution))


# -- the computation ------------------------------------------------------------------------------------------------


def check_supported(rm: ReplacementModel) -> None:
    """Raise unless the (raw) score is q·k / attn_scale of normalised (or raw) residual streams, with learned
    position embeddings or rotary ones, per-head QK-norm or none — the cases in which the decomposition is exact."""
    cfg = rm.cfg
    problems = []
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        problems.append(f"positional embeddings {cfg.positional_embedding_type!r} (standard or rotary are supported)")
    if cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre", None):
        problems.append(f"normalization {cfg.normalization_type!r} (LN, LNPre, RMS, RMSPre or none are supported)")
    if str(getattr(cfg, "original_architecture", "")).startswith("Olmo"):
        problems.append("OLMo's QK-norm over all heads")
    if getattr(cfg, "use_attention_sinks", False):
        problems.append("attention sinks")
    if getattr(cfg, "use_logn_attn", False) or getattr(cfg, "clip_qkv", None) is not None:
        problems.append("log-n query scaling or clipped q/k/v")
    if getattr(cfg, "use_dynamic_ntk_rope", False):
        problems.append("dynamic NTK rotary scaling")
    if problems:
        raise AttributionError(f"QK attribution does not support this model: {'; '.join(problems)}")


@torch.no_grad()
def stream_sources(rm: ReplacementModel, cache: ReplacementCache, layer: int, src: Sources | None = None,
                   positions: Sequence[int] | None = None) -> tuple[list[Node], Tensor, Tensor, Tensor]:
    """The residual stream feeding attention layer `layer` as sources: (nodes, contributions [S, d_model],
    positions [S], constant [pos, d_model]) with ``x_r = Σ_{pos s = r} contributions[s] + constant[r]`` at every
    position r (step 1). A source's contribution is its write plus what it adds through every skip transcoder's
    channel before `layer` and, for a CLT feature, its decoder writes into the later MLPs before `layer`
    (`analytic.stream_contributions`, the analytic engine's own bookkeeping); without either it is the write.
    `positions`: keep only the sources at these positions (the constant still covers every position)."""
    src = src if src is not None else collect_sources(rm, cache)
    n = cache.n_pos
    where = torch.arange(n) if positions is None else torch.tensor(sorted({int(p) for p in positions}),
                                                                   dtype=torch.long)
    keep = src.site < attn_site(layer)
    if positions is not None:
        keep &= torch.isin(src.pos, where)
    rows = torch.nonzero(keep).flatten()
    dtype = src.vectors.dtype
    nodes = [src.nodes[i] for i in rows.tolist()]
    writes, pos, site, acts = [src.vectors[rows]], [src.pos[rows]], [src.site[rows]], [src.activations[rows]]
    for earlier in range(layer):
        if earlier not in rm.attention_saes:  # no features: the layer's whole output is one error node per position
            nodes += [Node("attn_error", earlier, p, -1) for p in where.tolist()]
            writes.append((cache.resid_mid[earlier] - cache.resid_pre[earlier])[where].to(dtype))
            pos.append(where)
            site.append(torch.full_like(where, attn_site(earlier)))
            acts.append(torch.ones(len(where), dtype=dtype))
    stream = Sources(nodes, torch.cat(writes), torch.cat(pos), torch.cat(site), torch.cat(acts))
    contributions, constant = stream_contributions(rm, cache, stream, layer)
    return nodes, contributions, stream.pos, constant


def _window(rm: ReplacementModel, layer: int) -> int | None:
    """The sliding window of `layer` (keys q with p − q < window are seen), or None for global attention."""
    attn = rm.model.blocks[layer].attn
    return rm.cfg.window_size if getattr(attn, "attn_type", "global") == "local" else None


def _check_args(rm: ReplacementModel, cache: ReplacementCache, layer: int, head: int, query_pos: int,
                keys: tuple[int, ...], quantity: str) -> None:
    if not 0 <= layer < rm.n_layers:
        raise AttributionError(f"layer {layer} does not exist (the model has layers 0-{rm.n_layers - 1})")
    if not 0 <= head < rm.cfg.n_heads:
        raise AttributionError(f"head {head} does not exist (layer {layer} has heads 0-{rm.cfg.n_heads - 1})")
    if not 0 <= query_pos < cache.n_pos:
        raise AttributionError(f"query position {query_pos} is outside the prompt (positions 0-{cache.n_pos - 1})")
    for q in keys:
        if not 0 <= q <= query_pos:
            raise AttributionError(f"key position {q}: a query at {query_pos} attends to positions 0-{query_pos} "
                                   "(causal attention)")
    window = _window(rm, layer)
    for q in keys:
        if window is not None and query_pos - q >= window:
            raise AttributionError(f"key position {q}: layer {layer} attends within a sliding window of {window} "
                                   f"keys, so a query at {query_pos} sees positions {query_pos - window + 1}-"
                                   f"{query_pos} only")
    if len(keys) == 2 and keys[0] == keys[1]:
        raise AttributionError(f"a contrast needs two different key positions (got {keys[0]} twice)")
    if quantity not in ("score", "pattern"):
        raise AttributionError(f"unknown quantity {quantity!r}; use 'score' or 'pattern'")


def _normalised(rm: ReplacementModel, layer: int, vectors: Tensor, sigma: Tensor) -> Tensor:
    """Each write's share of ln1's output without β: ``P v / σ ⊙ γ`` (step 2); σ [S] per row."""
    gamma, _ = rm.ln_weights("ln1", layer)
    centred = vectors - vectors.mean(-1, keepdim=True) if rm.has_ln else vectors
    return centred / sigma[:, None] * gamma.to(vectors.dtype)


def _projections(rm: ReplacementModel, cache: ReplacementCache, layer: int, head: int, upto: int,
                 dtype) -> tuple[Tensor, Tensor]:
    """(q, k) [pos ≤ upto, d_head] of head `head` before QK-norm and rotation, from the cached residual stream."""
    attn = rm.model.blocks[layer].attn
    x = cache.resid_pre[layer][:upto + 1].to(dtype)
    sigma = cache.ln1_scale[layer][:upto + 1].to(dtype)
    _, beta = rm.ln_weights("ln1", layer)
    xn = _normalised(rm, layer, x, sigma) + beta.to(dtype)
    return (xn @ attn.W_Q[head].to(dtype) + attn.b_Q[head].to(dtype),
            xn @ attn.W_K[head].to(dtype) + attn.b_K[head].to(dtype))


def _qk_norm_scale(attn, which: str, x: Tensor) -> Tensor | None:
    """[rows] the RMS scale of QK-norm `which` ("q_norm" / "k_norm") at the clean vectors x [rows, d_head]; None
    without QK-norm."""
    if not getattr(attn.cfg, "use_qk_norm", False):
        return None
    norm = getattr(attn, which)
    return (x.pow(2).mean(-1) + norm.eps).sqrt()


def _position_map(attn, which: str, x: Tensor, r: int, scale: Tensor | None) -> Tensor:
    """What happens to q (or k) shares x [S, d_head] at position r after the projection: the frozen QK-norm
    (``/ σ · w``) and the rotation by position r. Linear in x."""
    if scale is not None:
        x = x / scale * getattr(attn, which).w.to(x.dtype)
    if attn.cfg.positional_embedding_type == "rotary":
        rd = attn.cfg.rotary_dim
        x_rot, x_pass = x[..., :rd], x[..., rd:]
        cos, sin = attn.rotary_cos[r].to(x.dtype), attn.rotary_sin[r].to(x.dtype)
        x = torch.cat([x_rot * cos + attn.rotate_every_two(x_rot) * sin, x_pass], -1)
    return x


def _score_row(rm: ReplacementModel, cache: ReplacementCache, layer: int, head: int, query_pos: int,
               dtype) -> Tensor:
    """[pos ≤ p] the pre-softmax scores of the query row (before any soft-cap), from the cached residual stream
    (independent of the sources): QK-norm computed live, rotation applied, no mask."""
    attn = rm.model.blocks[layer].attn
    q, k = _projections(rm, cache, layer, head, query_pos, dtype)
    q_rot = _position_map(attn, "q_norm", q[query_pos][None], query_pos,
                          _qk_norm_scale(attn, "q_norm", q[query_pos][None]))[0]
    k_scale = _qk_norm_scale(attn, "k_norm", k)
    k_rot = torch.stack([_position_map(attn, "k_norm", k[r][None], r, None if k_scale is None else k_scale[r])[0]
                         for r in range(query_pos + 1)])
    return k_rot @ q_rot / attn.attn_scale


def _weights(quantity: str, keys: tuple[int, ...], pattern: Tensor) -> Tensor:
    """[pos ≤ p] the linear function of the score row (step 5)."""
    def basis(q: int) -> Tensor:
        e = torch.zeros_like(pattern)
        e[q] = 1.0
        return e if quantity == "score" else pattern[q] * (e - pattern)  # ∂A[q]/∂s = A_q (e_q − A)

    return basis(keys[0]) - basis(keys[1]) if len(keys) == 2 else basis(keys[0])


@torch.no_grad()
def explain_attention(rm: ReplacementModel, cache: ReplacementCache, layer: int, head: int, query_pos: int,
                      key_pos: int | tuple[int, int], *, quantity: Quantity = "score",
                      sources: Sources | None = None) -> QKAttribution:
    """Decompose head (layer, head)'s attention from `query_pos` to `key_pos` into (query source, key source) pairs.

    key_pos: one key position q (explain s[p, q]) or a pair (a, b) (explain s[p, a] − s[p, b]).
    quantity: "score" (pre-softmax) or "pattern" (first-order effect on A[p, q], resp. A[p, a] − A[p, b]; the key
    side then spans every position ≤ p, since the softmax couples them).
    sources: `collect_sources(rm, cache)` when already computed (saves time over many heads).
    """
    check_supported(rm)
    keys = (int(key_pos),) if isinstance(key_pos, int) else tuple(int(k) for k in key_pos)
    if len(keys) not in (1, 2):
        raise AttributionError(f"key_pos: give one key position or a pair (a, b), not {key_pos!r}")
    _check_args(rm, cache, layer, head, query_pos, keys, quantity)
    key_set = list(keys) if quantity == "score" else list(range(query_pos + 1))
    nodes, writes, pos, constant = stream_sources(rm, cache, layer, sources, positions=[*key_set, query_pos])
    dtype = writes.dtype
    attn = rm.model.blocks[layer].attn
    W_Q, W_K = attn.W_Q[head].to(dtype), attn.W_K[head].to(dtype)  # [d_model, d_head]
    _, beta = rm.ln_weights("ln1", layer)
    beta = beta.to(dtype)
    sigma = cache.ln1_scale[layer].to(dtype)  # [pos]
    pattern = cache.patterns[layer][head, query_pos, :query_pos + 1].to(dtype)
    scores = _score_row(rm, cache, layer, head, query_pos, dtype)
    weights = _weights(quantity, keys, pattern)
    cap = getattr(rm.cfg, "attn_scores_soft_cap", -1.0) or -1.0
    if cap > 0 and quantity == "pattern":  # chain rule through the soft-cap, at the clean raw scores
        weights = weights * (1 - torch.tanh(scores / cap) ** 2)
    q_pre, k_pre = _projections(rm, cache, layer, head, query_pos, dtype)  # clean q, k: the frozen QK-norm scales
    scales = {"q_norm": _qk_norm_scale(attn, "q_norm", q_pre), "k_norm": _qk_norm_scale(attn, "k_norm", k_pre)}

    def side(r: int, W: Tensor, b: Tensor, which: str) -> tuple[list[Node | None], Tensor]:
        """Position r's rows (constant part first) and their shares of q or k (step 3; QK-norm and rotation,
        step 6)."""
        rows = torch.nonzero(pos == r).flatten()
        parts = torch.cat([constant[r][None], writes[rows]])
        shares = _normalised(rm, layer, parts, sigma[r].expand(len(parts))) @ W
        shares[0] += beta @ W + b
        scale = scales[which]
        shares = _position_map(attn, which, shares, r, None if scale is None else scale[r])
        return [None] + [nodes[i] for i in rows.tolist()], shares

    query_nodes, query_vectors = side(query_pos, W_Q, attn.b_Q[head].to(dtype), "q_norm")
    key_nodes: list[Node | None] = []
    key_parts, key_positions = [], []
    for r in key_set:
        got, shares = side(r, W_K, attn.b_K[head].to(dtype), "k_norm")
        key_nodes += got
        key_parts.append(shares * (weights[r] / attn.attn_scale))
        key_positions += [r] * len(got)
    return QKAttribution(
        layer=layer, head=head, query_pos=query_pos, keys=keys, quantity=quantity,
        value=float(weights @ scores), scores=scores, pattern=pattern, weights=weights,
        query_nodes=tuple(query_nodes), query_vectors=query_vectors, key_nodes=tuple(key_nodes),
        key_positions=torch.tensor(key_positions, dtype=torch.long), key_vectors=torch.cat(key_parts))
