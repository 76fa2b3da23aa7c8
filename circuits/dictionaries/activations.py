"""Activation functions of sparse dictionaries, applied to encoder pre-activations [..., d_sae].

* ``relu``:      f = max(pre, 0) (sparsity comes from an L1 penalty during training).
* ``topk``:      keep the k largest positive pre-activations of each row, zero the rest (exactly ≤ k active).
* ``batchtopk``: training keeps the k·B largest positive values over a whole batch of B rows (adaptive per-row
                 sparsity, mean L0 = k); it tracks a running threshold θ (mean over batches of the smallest kept
                 value) and at inference acts as JumpReLU(θ), so a row's codes do not depend on its batch.
* ``jumprelu``:  f = pre · 1[pre > θ_i] with a per-feature threshold θ (loaded, e.g. Gemma Scope / SAELens).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

ActivationName = Literal["relu", "topk", "batchtopk", "jumprelu"]


class ReLU(nn.Module):
    def forward(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)


class TopK(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, pre: Tensor) -> Tensor:
        k = min(self.k, pre.shape[-1])
        values, indices = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


class JumpReLU(nn.Module):
    def __init__(self, d_sae: int, threshold: Tensor | None = None):
        super().__init__()
        self.threshold = nn.Parameter(torch.zeros(d_sae) if threshold is None else threshold.clone(),
                                      requires_grad=False)

    def forward(self, pre: Tensor) -> Tensor:
        return pre * (pre > self.threshold)


class BatchTopK(nn.Module):
    def __init__(self, k: int, d_sae: int, momentum: float = 0.01):
        super().__init__()
        self.k = k
        self.momentum = momentum
        # a scalar threshold broadcast to every feature (stored per feature, as JumpReLU files are)
        self.threshold = nn.Parameter(torch.zeros(d_sae), requires_grad=False)
        self.register_buffer("updates", torch.tensor(0))

    def forward(self, pre: Tensor) -> Tensor:
        if not self.training:
            return pre * (pre > self.threshold)
        flat = torch.relu(pre).reshape(-1)
        n_keep = min(self.k * pre.reshape(-1, pre.shape[-1]).shape[0], flat.numel())
        # keep every value at or above the n_keep-th largest θ: the same set as a topk(n_keep) up to exact ties,
        # which only zeros have in practice (kept as zeros). θ is found by selection among the values above half
        # the running threshold when there are at least n_keep of them (then θ is among them: exact), else among all
        fd = flat.detach()
        cutoff = 0.5 * float(self.threshold.min()) if int(self.updates) > 0 else 0.0
        cand = fd[fd >= cutoff] if cutoff > 0 else fd
        if cand.numel() < n_keep:
            cand = fd
        theta = cand.kthvalue(cand.numel() - n_keep + 1).values
        out = torch.where(flat >= theta, flat, torch.zeros_like(flat)).reshape(pre.shape)
        positive = fd[fd >= theta]
        positive = positive[positive > 0]
        kept_min = positive.min() if positive.numel() else flat.new_tensor(0.0)
        with torch.no_grad():
            # a plain running mean over the first 1/momentum batches, an exponential average after that
            rate = max(self.momentum, 1.0 / (int(self.updates) + 1))
            self.threshold.mul_(1 - rate).add_(rate * kept_min)
            self.updates += 1
        return out


def make_activation(name: ActivationName, d_sae: int, k: int | None = None,
                    threshold: Tensor | None = None) -> nn.Module:
    """Build an activation module by name; `k` is required for topk/batchtopk."""
    if name == "relu":
        return ReLU()
    if name in ("topk", "batchtopk"):
        if not k or k <= 0:
            raise ValueError(f"activation {name!r} needs a positive k")
        return TopK(k) if name == "topk" else BatchTopK(k, d_sae)
    if name == "jumprelu":
        return JumpReLU(d_sae, threshold)
    raise ValueError(f"unknown activation {name!r}; use relu, topk, batchtopk or jumprelu")
