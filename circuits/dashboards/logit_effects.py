"""Logit effects of features: a feature's direct effect on every token's logit per unit activation."""

from __future__ import annotations

import torch
from torch import Tensor

N_LOGITS = 8  # top and bottom tokens stored per feature


def write_directions(rm, d) -> Tensor:
    """[d_sae, d_model]: each feature's direct write into the residual stream per unit activation, frozen norm scales
    σ = 1: ``W_dec[i]`` (a transcoder; a CLT layer's decoders summed), ``W_dec[i] W_O_cat`` (an attention SAE) times
    ``w`` of Gemma-2's ``ln1_post`` (the engine's own factor ``w / σ[p]``, `ReplacementModel.attn_out_scale`)."""
    if d.cfg.kind != "attention_sae":
        return d.W_dec
    W_O = rm.W_O_cat(d.cfg.layer)
    v = d.W_dec.to(W_O.dtype) @ W_O  # as the graph's attention-feature sources (`attribution.sources.feature_writes`)
    if rm.has_post_norm:
        v = v * rm._post_factor("ln1_post", d.cfg.layer, torch.ones(1, dtype=v.dtype, device=v.device))
    return v


def logit_directions(rm, d) -> Tensor:
    """[d_sae, d_model]: each feature's write as the unembedding reads it through the frozen final norm (σ = 1):
    ``P v ⊙ γ`` for LayerNorm (P the centring), ``v ⊙ w`` for RMSNorm (`ReplacementModel.center`)."""
    gamma, _ = rm.ln_weights("ln_final")
    v = write_directions(rm, d).to(rm.model.W_U.dtype)
    return rm.center(v) * gamma.to(v.dtype)


@torch.no_grad()
def logit_effect_matrix(rm, d) -> Tensor:
    """[d_sae, d_vocab]: each feature's direct logit effect per unit activation (frozen scales σ = 1; for the tokens
    of one prompt, the graph's feature → logit edge is this × activation / (σ_final[p] · σ_post[p]))."""
    return logit_directions(rm, d) @ rm.model.W_U


@torch.no_grad()
def logit_effects(rm, d, n: int = N_LOGITS) -> tuple[list[list], list[list]]:
    """Top and bottom ``n`` (token id, effect) per feature of `logit_effect_matrix`."""
    eff = logit_effect_matrix(rm, d)  # [d_sae, vocab]
    top = eff.topk(n, dim=-1)
    bottom = (-eff).topk(n, dim=-1)
    return ([list(zip(i.tolist(), v_.tolist(), strict=True)) for i, v_ in zip(top.indices, top.values, strict=True)],
            [list(zip(i.tolist(), (-v_).tolist(), strict=True)) for i, v_ in zip(bottom.indices, bottom.values,
                                                                                  strict=True)])
