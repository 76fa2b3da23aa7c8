"""Ablation conventions for circuit faithfulness, and a batched forward pass that scores many circuits at once.

A circuit is a set of role nodes (`circuits.studies.base.RoleKey`); on one prompt it keeps those nodes at their live
values and sets every other node to an ablated value. Three **conventions** say what "ablated" means:

* ``"mean"`` — **standard mean ablation** (the headline; Wang et al. 2022, Marks et al. 2024): every feature outside
  the circuit, *inactive ones included*, and every error node outside it take their reference mean (the mean over
  the reference prompts of the same group at the same position, see `circuits.studies.base.ReferenceMeans`). A
  feature that is silent on this prompt but active on others is pushed to its mean, as any other node.
* ``"zero"`` — zero ablation: every feature and error node outside the circuit is set to 0.
* ``"held"`` — the earlier variant of this project (reported only as a labelled variant): like ``"mean"``, but
  features *inactive on the prompt* stay at 0 (only the nodes of the prompt's attribution graph are ablated). It
  changes fewer things than standard mean ablation, so the empty circuit keeps more of the metric's structure and
  faithfulness numbers are not comparable with the literature's.

Attention patterns and LayerNorm scales are live in every case (features downstream of an ablated node respond).
Faithfulness of a circuit C (Marks et al. 2024): ``(m̄(C) − m̄(∅)) / (m̄(M) − m̄(∅))``, with m̄ a mean over
prompts, ∅ the empty circuit under the same convention and M the unablated model.

`circuit_metrics` evaluates many circuits on one prompt in batched forward passes (one batch row per circuit); it
equals `circuits.interventions.run_edited` with the same masks and ablation (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from circuits.interventions import Ablation, hold_inactive
from circuits.studies.base import PreparedPrompt

Convention = Literal["mean", "zero", "held"]
CONVENTIONS: tuple[Convention, ...] = ("mean", "zero", "held")
CONVENTION_LABELS = {
    "mean": "standard mean ablation (every node outside the circuit at its reference mean, inactive features "
            "included)",
    "zero": "zero ablation (every node outside the circuit at 0)",
    "held": "held-inactive mean ablation (earlier variant: features inactive on the prompt stay at 0)",
}


@dataclass(frozen=True)
class Circuit:
    """One point of a faithfulness curve: the role nodes kept, whether every error node is kept, the convention."""

    label: str
    keys: frozenset
    errors: bool
    convention: Convention = "mean"


def convention_ablation(ablation: Ablation, cache, convention: Convention) -> Ablation:
    """The ablation values one prompt uses under `convention` (`ablation` holds the reference means)."""
    if convention == "zero":
        return Ablation("zero")
    if convention == "held":
        return hold_inactive(ablation, cache)
    return ablation


def circuit_masks(rm, pp: PreparedPrompt, keys, errors: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Feature masks ([pos, d_sae]) and error masks ([pos]) of the nodes a circuit keeps live on this prompt: each role
    node at every position of its role (whether active there or not), and every error node when `errors`."""
    n_roles = int(pp.role_index.max()) + 1
    by_site: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for kind, layer, role, index in keys:
        by_site.setdefault((kind, layer), []).append((role, index))
    role_of = {r: int(i) for r, i in zip(pp.roles, pp.role_index.tolist(), strict=True)}
    fmask, emask = {}, {}
    n_pos = len(pp.roles)
    for d in rm.dictionaries:
        table = torch.zeros(n_roles, d.d_sae, dtype=torch.bool)  # [role, d_sae]
        for role, index in by_site.get((f"{d.cfg.site}_feature", d.cfg.layer), []):
            if role in role_of:
                table[role_of[role], index] = True
        fmask[d.cfg.name] = table[pp.role_index]  # [pos, d_sae]
        emask[d.cfg.name] = torch.full((n_pos,), errors, dtype=torch.bool)
    return fmask, emask


@torch.no_grad()
def circuit_metrics(rm, cache, pp: PreparedPrompt, circuits: list[Circuit], ablation: Ablation,
                    batch: int = 24) -> list[float]:
    """The metric on this prompt with each circuit kept and the rest ablated under its convention (`ablation` holds
    the prompt's reference means), in batched forward passes of up to `batch` circuits."""
    values = {c: convention_ablation(ablation, cache, c) for c in {c.convention for c in circuits}}
    out: list[float] = []
    for start in range(0, len(circuits), batch):
        part = circuits[start:start + batch]
        masks = [circuit_masks(rm, pp, c.keys, c.errors) for c in part]
        logits = _batched_forward(rm, cache, masks, [values[c.convention] for c in part])
        out += [float(pp.metric(lg)) for lg in logits]
    return out


def _batched_forward(rm, cache, masks, ablations: list[Ablation]) -> Tensor:
    """[B, pos, vocab] logits: row b keeps the nodes of masks[b] and sets the rest to ablations[b]'s values."""
    from circuits.replacement import clt_upstream, reconstruct

    B = len(masks)
    hooks = []
    upstream = clt_upstream(rm.dictionaries)  # a CLT layer's output needs its earlier layers' (kept) codes
    for d in rm.dictionaries:
        name = d.cfg.name
        codes0, err0 = cache.codes[name], cache.errors[name]
        fmask = torch.stack([m[0][name] for m in masks])  # [B, pos, d_sae]
        emask = torch.stack([m[1][name] for m in masks])  # [B, pos]
        a_code = torch.stack([a.code(name, codes0) for a in ablations])  # [B, pos, d_sae]
        a_err = torch.stack([a.error(name, err0) for a in ablations])  # [B, pos, d_out]
        err = torch.where(emask[..., None], err0.expand(B, *err0.shape), a_err)
        captured: dict[str, Tensor] = {}

        def replace(act, hook, d=d, fmask=fmask, a_code=a_code, err=err, captured=captured):
            x = captured.pop("x") if "x" in captured else d.flatten_input(act)
            x = x.to(d.W_enc.dtype)
            codes = d.activation(d.pre_activation(x))
            codes = torch.where(fmask, codes, a_code.to(codes.dtype))
            out = reconstruct(d, codes, x, upstream)  # skip term of the live input; a CLT's earlier layers
            return d.unflatten_output((out + err.to(codes.dtype)).to(act.dtype))

        if d.hook_in != d.hook_out:
            hooks.append((d.hook_in, lambda act, hook, d=d, captured=captured: captured.__setitem__(
                "x", d.flatten_input(act)) or act))
        hooks.append((d.hook_out, replace))
    tokens = cache.tokens[None].expand(B, -1)
    with rm.model.hooks(fwd_hooks=hooks):
        return rm.model(tokens)
