"""The frozen linear channels the reverse sweeps cross: attention layers without an SAE, and skip transcoders.

In the frozen local replacement model an attention layer without an SAE is the linear map
``out[p] = Σ_h Σ_q A_h[p, q] (γ1 ⊙ P x_q / σ1[q]) W_V[h] W_O[h]``; a gradient g at its output crosses it backwards as
``g[q] += Σ_h (Σ_p A_h[p, q] / σ1[q] · g[p] W_O[h]ᵀ) (P(γ1 ⊙ W_V[h]))ᵀ`` — per position, two d_model × H·d_head
products (the W_O side and the W_V' side) around a per-head position mix. `_Layers.attention_back` forms it for a
batch of targets, with fewer products when g has a known form (`_Once`): before the first crossing g sits at one
position per target, and after it it is ``e_p r + Σ_h a_h ⊗ z_h`` — H + 1 vectors per target. A skip transcoder adds
``P(g W_skip) / σ2``. (`circuits/attribution/reverse.py` runs the sweeps.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.replacement import ReplacementCache, ReplacementModel


def _factored_pays(n_pos: int, n_heads: int) -> bool:
    """Whether the second crossing's W_V' side is formed from the factored form (`_Layers._second_crossing`) rather
    than densely: its multiply-adds, (H + 1)·H·d_head·d + P·H(H + 1)·d per target against P·H·d_head·d, break even at
    P ≈ 16 for GPT-2's H = 12, d_head = 64; in time (smaller, less efficient products) at P ≈ 22 — one thread,
    batches of 60, the whole crossing from the `_Once` form: 31 ms factored vs 24 ms dense at 16 positions, 32 vs
    33 ms at 24, 40 vs 69 ms at 64. So from 2(H + 1) positions."""
    return n_pos >= 2 * (n_heads + 1)


@dataclass
class _Once:
    """A gradient after exactly one channel crossed from one position per target:
    ``g[b] = e_{pos_b} ⊗ r_b + Σ_h a[h, b, :] ⊗ Z[b, h]`` (r [B, d], a [H, B, P], Z [B, H, d])."""

    pos: Tensor
    r: Tensor
    a: Tensor
    Z: Tensor



class _Layers:
    """The frozen linear maps the sweep crosses, in the sources' dtype."""

    def __init__(self, rm: ReplacementModel, cache: ReplacementCache, dtype):
        self.rm, self.center = rm, rm.has_ln
        H, dh, d = rm.cfg.n_heads, rm.cfg.d_head, rm.cfg.d_model
        self.attn: dict[int, tuple[Tensor, Tensor, Tensor, Tensor | None]] = {}
        self.factored = not rm.has_post_norm  # a post-norm scales g per position: no factored second crossing
        for layer in range(rm.n_layers):
            if layer in rm.attention_saes:
                continue
            attn = rm.model.blocks[layer].attn
            gamma, _ = rm.ln_weights("ln1", layer)
            W_O = attn.W_O.detach().to(dtype).reshape(H * dh, d)  # [H*dh, d]
            W_V = (attn.W_V.detach().to(dtype) * gamma.detach().to(dtype)[None, :, None])  # [H, d, dh]
            W_V = W_V.permute(1, 0, 2).reshape(d, H * dh)  # [d, H*dh], γ1 folded in
            if self.center:
                W_V = W_V - W_V.mean(0, keepdim=True)  # the centring P of the output folded in too
            sigma = cache.ln1_scale[layer].to(dtype)
            A = cache.patterns[layer].to(dtype) / sigma  # A[h, p, q] / σ1[q]: the scale folded in as well
            post = rm.attn_out_scale(cache, layer)  # Gemma-2: the frozen ln1_post factor w / σ[p] on the output
            self.attn[layer] = (W_O, W_V, A, post.to(dtype) if post is not None else None)
        self.skip: dict[int, tuple[Tensor, Tensor]] = {}
        for layer, tc in rm.transcoders.items():
            if tc.W_skip is not None:
                W_skip = tc.W_skip.detach().to(dtype)  # [d_out, d_in]; g @ W_skip is read over d_in, centred
                if self.center:
                    W_skip = W_skip - W_skip.mean(1, keepdim=True)
                self.skip[layer] = (W_skip, cache.ln2_scale[layer].to(dtype))

    def _norm(self, x: Tensor, sigma: Tensor) -> Tensor:
        """P x / σ over the last dim, σ per position (dim −2)."""
        if self.center:
            x = x - x.mean(-1, keepdim=True)
        return x / sigma[: x.shape[-2], None]

    def attention_back(self, layer: int, g: Tensor, state: Tensor | _Once | None,
                       mix_only: bool = False) -> tuple[Tensor | None, _Once | None]:
        """Cross attention `layer` (a channel) backwards: g [B, P, d] at its output → g plus the channel's transpose
        (at its input), in place. P, γ1 and 1/σ1 are folded into W_V and A (`__init__`).

        `state` says what is known about g's form, so that the products against W_O are formed on fewer vectors:
        positions [B] when g is non-zero only at each target's own position (before its first channel: W_O and
        W_V are applied to one vector per head, and the result, ``e_p r + Σ_h A_h[p, :] ⊗ z_h``, is returned as
        the next state), that `_Once` form (the second crossing: ``g W_Oᵀ`` from the H + 1 vectors r, z_h instead
        of one per position, and from 2(H + 1) positions the W_V' side too: `_second_crossing`), or None (dense). `mix_only`: return Y [B, P, H·dh] (g W_Oᵀ mixed over positions in
        each head's value space, before W_V'ᵀ) and leave g as it is. Returns (Y or None, the next state)."""
        W_O, W_V, A, post = self.attn[layer]
        H, dh = self.rm.cfg.n_heads, self.rm.cfg.d_head
        B, P, d = g.shape
        rows = torch.arange(B)
        if isinstance(state, Tensor):  # single position per target
            r = g[rows, state]  # [B, d] (a copy)
            U = (r if post is None else r * post[state]) @ W_O.T  # [B, H*dh]
            Z = torch.einsum("bhe,dhe->bhd", U.view(B, H, dh), W_V.view(d, H, dh))  # [B, H, d]
            a = A[:, state, :P]  # [H, B, P]: A[h, p_b, q]
            g.add_(torch.einsum("hbq,bhd->bqd", a, Z))
            return None, _Once(state, r, a, Z) if self.factored else None
        if isinstance(state, _Once) and not mix_only and _factored_pays(P, H):  # both sides from H + 1 vectors
            self._second_crossing(layer, g, state)
            return None, None
        # U = g W_Oᵀ is formed transposed, Uᵀ [H·dh, B·P], so that each head's position mix is one batched product
        # over the last dim (Yᵀ = Uᵀ A per head, no permuted copies) and Y W_V'ᵀ reads Yᵀ as a transposed operand
        if isinstance(state, _Once) and P > H:  # g = e_p r + Σ_h a_h ⊗ z_h: g W_Oᵀ from H + 1 vectors
            ZW = (state.Z.reshape(B * H, d) @ W_O.T).view(B, H, H * dh)
            Ut = torch.bmm(ZW.transpose(1, 2), state.a.transpose(0, 1))  # [B, H*dh, P]
            Ut = Ut.transpose(0, 1).contiguous()  # [H*dh, B, P]
            Ut[:, rows, state.pos] += (state.r @ W_O.T).T
        else:
            Ut = torch.mm(W_O, (g if post is None else g * post[:P]).view(B * P, d).T)  # [H*dh, B*P]
        Yt = torch.bmm(Ut.view(H, dh * B, P), A[:, :P, :P])  # [H, dh*B, P]: Y[b, q, h] = Σ_p A_h[p, q] U[b, p, h]
        if mix_only:
            return Yt.view(H * dh, B, P).permute(1, 2, 0), None  # Y [B, P, H*dh], a view
        g.view(B * P, d).addmm_(Yt.view(H * dh, B * P).T, W_V.T)
        return None, None

    def _second_crossing(self, layer: int, g: Tensor, state: _Once) -> None:
        """The crossing of a g in the `_Once` form, both sides from its H + 1 vectors per target (g [B, P, d], in
        place). With u_0 = r W_Oᵀ and u_j = z_j W_Oᵀ, head k's value-space gradient is
        ``Y_k[q] = A_k[p_b, q] u_0,k + Σ_j (Σ_p a_j[p] A_k[p, q]) u_j,k``, so
        ``Y W_V'ᵀ = Σ_{j,k} C[q, j, k] · (u_j,k W_V'[k]ᵀ)``: (H + 1)·H vectors of d_model per target, each
        ``u_j,k W_V'[k]ᵀ`` one [d_head] × [d_head, d_model] product, combined with position coefficients C by one
        batched [P, (H + 1)·H] × [(H + 1)·H, d_model] product. Per target (H + 1)·H·d_head·d_model + P·H(H + 1)·
        d_model multiply-adds instead of P·H·d_head·d_model for the dense W_V' side (0.4 of it at GPT-2 shape and
        64 positions), and no position mix over H·d_head."""
        W_O, W_V, A, _ = self.attn[layer]
        H, dh = self.rm.cfg.n_heads, self.rm.cfg.d_head
        B, P, d = g.shape
        J = H + 1
        U = torch.cat([state.r[:, None], state.Z], 1).view(B * J, d) @ W_O.T  # [B·J, H·dh]: u_j
        W = g.new_empty(B, J, H, d)  # W[b, j, k] = u_j,k W_V'[k]ᵀ
        Wk = W.view(B * J, H, d)
        for k in range(H):
            torch.mm(U[:, k * dh:(k + 1) * dh], W_V[:, k * dh:(k + 1) * dh].T, out=Wk[:, k])
        C = g.new_empty(B, P, J, H)
        C[:, :, 0] = A[:, state.pos, :P].permute(1, 2, 0)  # A_k[p_b, q]
        mix = torch.bmm(state.a.reshape(1, H * B, P).expand(H, H * B, P), A[:, :P, :P])  # [k, (j, b), q]
        C[:, :, 1:] = mix.view(H, H, B, P).permute(2, 3, 1, 0)
        g.baddbmm_(C.view(B, P, J * H), W.view(B, J * H, d))

    def skip_back(self, layer: int, g: Tensor) -> None:
        W_skip, sigma = self.skip[layer]
        g.add_((g @ W_skip) / sigma[: g.shape[1], None])
