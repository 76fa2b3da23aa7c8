"""Attribution patching: node effects on a metric for a clean/corrupted prompt pair (Marks et al. 2024 style).

The replacement model runs *unfrozen* (attention patterns and LayerNorm scales respond), every feature downstream
of a node is recomputed from its input, and error terms are exogenous nodes held at their values (as in the graph).
For each node — a feature (dictionary, position, index) or an error node (dictionary, position) — with clean value
``a`` and corrupted value ``a'``:

* **AtP**: ``effect ≈ ∇_a m(clean) · (a' − a)`` — one forward and one backward pass on the clean prompt;
* **integrated gradients** (N steps): for one dictionary site at a time, its codes and errors are moved along
  ``a + α (a' − a)`` (α at the midpoints of N equal steps) with everything upstream clean and everything downstream
  recomputed, and ``effect = (a' − a) · mean_α ∇ m``. Exact when m is linear along the path; better than AtP where
  the model is curved (attention patterns, top-k selection).

Both estimate the effect of patching one node from the corrupted run into the clean run. They are reported beside
the linear graph, never mixed into its edges (they include QK and non-linear effects the graph does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.graph import Node
from circuits.interventions import Metric, run_edited
from circuits.replacement import AttributionError, ReplacementCache, ReplacementModel


@dataclass
class NodeEffects:
    """Effects of nodes on a metric (clean → corrupted patch of that node alone)."""

    method: str  # "atp" or "ig-N"
    nodes: list[Node]
    effects: Tensor  # [n_nodes]
    metric_clean: float
    metric_corrupted: float

    def top(self, k: int = 20) -> list[tuple[Node, float]]:
        order = self.effects.abs().argsort(descending=True)[:k]
        return [(self.nodes[i], float(self.effects[i])) for i in order.tolist()]


def _node_list(rm: ReplacementModel, name: str, delta_codes: Tensor, pos_count: int) -> list[Node]:
    d = rm.dictionaries.dictionaries[name]
    kind = d.cfg.site
    p_idx, f_idx = torch.nonzero(delta_codes, as_tuple=True)
    feats = [Node(f"{kind}_feature", d.cfg.layer, p, i) for p, i in zip(p_idx.tolist(), f_idx.tolist(), strict=True)]
    return feats + [Node(f"{kind}_error", d.cfg.layer, p, -1) for p in range(pos_count)]


def _pair(rm: ReplacementModel, clean, corrupted) -> tuple[ReplacementCache, ReplacementCache]:
    c = clean if isinstance(clean, ReplacementCache) else rm.run(clean)
    k = corrupted if isinstance(corrupted, ReplacementCache) else rm.run(corrupted)
    if c.n_pos != k.n_pos:
        raise AttributionError(f"clean and corrupted prompts must have the same number of tokens "
                               f"({c.n_pos} vs {k.n_pos}); align them (e.g. replace one name by another)")
    return c, k


def attribution_patching(rm: ReplacementModel, clean, corrupted, metric: Metric) -> NodeEffects:
    """AtP node effects: gradient at the clean run × (corrupted − clean) value, for every feature and error."""
    c, k = _pair(rm, clean, corrupted)
    vars_: dict = {}
    logits, _, _ = run_edited(rm, c, grad_codes=vars_)
    m = metric(logits)
    tensors = [t for pair in vars_.values() for t in pair]
    grads = torch.autograd.grad(m, tensors, allow_unused=True)
    nodes, effects = [], []
    for j, name in enumerate(vars_):
        g_codes, g_err = grads[2 * j], grads[2 * j + 1]
        g_codes = g_codes if g_codes is not None else torch.zeros_like(c.codes[name])
        g_err = g_err if g_err is not None else torch.zeros_like(c.errors[name])
        dc = k.codes[name] - c.codes[name]
        nodes += _node_list(rm, name, dc, c.n_pos)
        effects += [(g_codes * dc)[dc != 0], (g_err * (k.errors[name] - c.errors[name])).sum(-1)]
    return NodeEffects("atp", nodes, torch.cat(effects).detach(), float(m.detach()), float(metric(k.logits)))


def integrated_gradients(rm: ReplacementModel, clean, corrupted, metric: Metric, steps: int = 10) -> NodeEffects:
    """Integrated-gradients node effects, one dictionary site at a time (see the module docstring)."""
    if steps < 1:
        raise AttributionError("integrated gradients needs at least 1 step")
    c, k = _pair(rm, clean, corrupted)
    nodes, effects = [], []
    for d in rm.dictionaries:
        name = d.cfg.name
        dc, de = k.codes[name] - c.codes[name], k.errors[name] - c.errors[name]
        g_codes, g_err = torch.zeros_like(dc), torch.zeros_like(de)
        for s in range(steps):
            alpha = (s + 0.5) / steps
            codes = (c.codes[name] + alpha * dc).detach().requires_grad_(True)
            err = (c.errors[name] + alpha * de).detach().requires_grad_(True)
            logits, _, _ = run_edited(rm, c, site_values={name: (codes, err)})
            gc, ge = torch.autograd.grad(metric(logits), [codes, err], allow_unused=True)
            g_codes += gc if gc is not None else 0
            g_err += ge if ge is not None else 0
        nodes += _node_list(rm, name, dc, c.n_pos)
        effects += [(g_codes * dc / steps)[dc != 0], (g_err * de / steps).sum(-1)]
    return NodeEffects(f"ig-{steps}", nodes, torch.cat(effects).detach(), float(metric(c.logits)),
                       float(metric(k.logits)))
