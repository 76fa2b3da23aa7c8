"""Logit lens over the replacement model's residual stream: what each layer would predict at each position.

The residual stream before layer 0 (embeddings) and after each layer is passed through the final LayerNorm (with
its own scale, recomputed — not frozen) and the unembedding. Returns the top token and its probability per
(layer, position), and the probability of any tokens asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.replacement import ReplacementCache, ReplacementModel


@dataclass
class LogitLens:
    layers: list[str]  # "embed", "L0", "L1", ...
    top_tokens: list[list[int]]  # [n_layers + 1][pos]
    top_probs: Tensor  # [n_layers + 1, pos]
    token_probs: dict[int, Tensor]  # token id -> [n_layers + 1, pos]


@torch.no_grad()
def logit_lens(rm: ReplacementModel, cache: ReplacementCache, tokens: list[int] = ()) -> LogitLens:
    streams = [cache.resid_pre[0]] + [cache.resid_pre[layer + 1] for layer in range(rm.n_layers - 1)]
    streams.append(cache.resid_final)
    x = torch.stack(streams)  # [n_layers + 1, pos, d_model]
    logits = rm.model.unembed(rm.model.ln_final(x))
    cap = getattr(rm.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:  # Gemma-2: the model's own output soft-cap
        logits = cap * torch.tanh(logits / cap)
    probs = logits.softmax(-1)
    top = probs.max(-1)
    return LogitLens(["embed"] + [f"L{layer}" for layer in range(rm.n_layers)], top.indices.tolist(), top.values,
                     {t: probs[..., t] for t in tokens})
