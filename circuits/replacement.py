"""Splicing dictionaries into a model, with or without their error terms.

For each dictionary in the splice, the forward pass takes the dictionary input at ``hook_in`` and replaces the
activation at ``hook_out`` by

    output = decode(encode(input))            (error off: the dictionary alone)
    output + (original − output) = original   (error on: exact, the error node is ``original − output``)

Transcoders read ``ln2.hook_normalized`` and replace ``hook_mlp_out`` later in the same block; attention SAEs read
and replace ``attn.hook_z`` (flattened over heads), so their error ``z − ẑ`` flows through W_O like everything else.
With errors on, logits equal the original model's to float precision — the first invariant of the product.

`ablation_hooks` gives the comparison points used by fidelity reports: a component zero-ablated or replaced by its
mean activation over a reference corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor

from circuits.dictionaries.base import Dictionary

Hook = tuple[str, Callable]
ErrorMode = Literal["on", "off"]


def splice_hooks(dictionaries: Iterable[Dictionary], error: ErrorMode = "off",
                 store: dict | None = None) -> list[Hook]:
    """TransformerLens (name, fn) hooks that splice each dictionary in.

    If `store` is a dict, it receives ``store[name] = (codes [batch, pos, d_sae], error [batch, pos, d_out])``.
    """
    hooks: list[Hook] = []
    for d in dictionaries:
        captured: dict[str, Tensor] = {}

        def capture(act, hook, d=d, captured=captured):
            captured["x"] = d.flatten_input(act)
            return act

        def replace(act, hook, d=d, captured=captured):
            x = captured.pop("x") if "x" in captured else d.flatten_input(act)
            codes = d.encode(x.to(d.W_enc.dtype))
            out = d.decode(codes).to(act.dtype)
            original = d.flatten_input(act)
            err = original - out
            if store is not None:
                store[d.cfg.name] = (codes, err)
            new = out + err if error == "on" else out
            return d.unflatten_output(new)

        if d.hook_in == d.hook_out:
            hooks.append((d.hook_out, replace))
        else:
            hooks.append((d.hook_in, capture))
            hooks.append((d.hook_out, replace))
    return hooks


def ablation_hooks(hook_names: Iterable[str], mode: Literal["zero", "mean"],
                   means: dict[str, Tensor] | None = None) -> list[Hook]:
    """Replace each named activation by zero or by its mean (`means[name]`, broadcast over batch and positions)."""
    hooks: list[Hook] = []
    for name in hook_names:
        if mode == "zero":
            hooks.append((name, lambda act, hook: torch.zeros_like(act)))
        else:
            if means is None or name not in means:
                raise ValueError(f"no mean activation for {name}")
            mean = means[name]
            hooks.append((name, lambda act, hook, mean=mean: mean.to(act.dtype).expand_as(act).clone()))
    return hooks


@torch.no_grad()
def mean_activations(model, token_batches: Iterable[Tensor], hook_names: list[str]) -> dict[str, Tensor]:
    """Mean of each hook's activation over all tokens of the batches (shape of one position)."""
    sums: dict[str, Tensor] = {}
    count = 0
    for tokens in token_batches:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hook_names)
        for n in hook_names:
            s = cache[n].double().sum((0, 1))
            sums[n] = sums[n] + s if n in sums else s
        count += tokens.numel()
    return {n: (s / count).float() for n, s in sums.items()}
