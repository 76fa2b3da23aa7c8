"""Autograd edges: gradient × write in the frozen model, computed by TransformerLens itself.

The model runs inside `ReplacementModel.frozen` (LayerNorm scales and attention patterns held), with every
sublayer that has a dictionary replaced by its cached output — so codes and errors are detached and only *direct*
paths remain — and a zero perturbation ``δ_k [batch, pos, d_model]`` added at every residual write site k
(embeddings, each attention output, each MLP output). Each batch element computes one target (a feature
pre-activation read from its hook, or a logit direction read after the final LayerNorm); one backward pass gives
``∂ target_b / ∂ δ_k[b, q]`` for a whole batch of targets, and the edge from a source writing ``v`` at (k, q) is
``grad · v``. An attention layer without an SAE is left live, so it acts as a linear channel through its frozen
pattern; an MLP without a transcoder is replaced by its cached output (an error node). A skip transcoder's MLP
output is its cached output minus the clean skip term plus the skip term of the live input (a linear channel); a
CLT feature's edge sums ``grad · write`` over its write sites (its own MLP and every later one).

The constant term is computed independently: one more forward pass in which every source's write is subtracted
(the residual stream then carries only biases), whose target values are the constants.

Nothing here depends on the architecture beyond the hooks: RMSNorm, Gemma-2's post-norms (held by `frozen`, so the
perturbations at ``hook_attn_out`` sit after them, where the source writes are measured), rotary embeddings,
grouped-query attention, soft-capping and sliding windows all live inside TransformerLens' forward pass. A logit
target of a soft-capped model is read before the cap (``ln_final`` output · direction), as `targets` defines it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.attribution.analytic import Edges
from circuits.attribution.sources import Sources, attn_site, later_writes, mlp_site
from circuits.attribution.targets import LogitRead
from circuits.model import (
    hook_attn_out,
    hook_attn_z,
    hook_ln_final_normalized,
    hook_mlp_out,
    hook_resid_post,
    hook_resid_pre,
)
from circuits.replacement import ReplacementCache, ReplacementModel


def _site_hook(rm: ReplacementModel, site: int) -> str:
    if site == 0:
        return hook_resid_pre(0)
    layer = (site - 1) // 2
    return hook_attn_out(layer) if site % 2 == 1 else hook_mlp_out(layer)


def _site_writes(rm: ReplacementModel, src: Sources, n_sites: int, n_pos: int) -> Tensor:
    """[n_sites, pos, d_model]: the sum of all source writes at each site and position (CLT features' later
    decoder writes included)."""
    out = torch.zeros(n_sites, n_pos, src.vectors.shape[1], dtype=src.vectors.dtype)
    out.index_put_((src.site, src.pos), src.vectors, accumulate=True)
    for layer in range(rm.n_layers):
        rows, writes = later_writes(rm, src, layer)
        if len(rows):
            out[mlp_site(layer)].index_add_(0, src.pos[rows], writes.to(out.dtype))
    return out


def autograd_edges(rm: ReplacementModel, cache: ReplacementCache, src: Sources, reads: list[LogitRead],
                   batch_size: int = 64, only: list[int] | None = None) -> Edges:
    """Edges into every active feature and every logit target (no per-head breakdown).

    `only`: compute the edges into these target rows alone (rows: sources first, then the logit reads)."""
    dtype = src.vectors.dtype
    n, n_src = cache.n_pos, len(src)
    n_sites = 2 * rm.n_layers + 1
    targets = [i for i, node in enumerate(src.nodes) if node.kind.endswith("_feature")]
    targets += list(range(n_src, n_src + len(reads)))
    if only is not None:
        allowed = set(targets)
        targets = [t for t in only if t in allowed]
    target_site = torch.cat([src.site, torch.full((len(reads),), n_sites, dtype=torch.long)])
    target_pos = torch.cat([src.pos, torch.full((len(reads),), n - 1, dtype=torch.long)])
    fixed = _fixed_outputs(rm, cache)
    writes = _site_writes(rm, src, n_sites, n)
    later = [(mlp_site(layer), *later_writes(rm, src, layer)) for layer in range(rm.n_layers)]
    later = [(site, rows, w) for site, rows, w in later if len(rows)]
    parts_t, parts_s, parts_w = [], [], []
    constants = torch.zeros(n_src + len(reads), dtype=dtype)
    pre = torch.zeros(n_src + len(reads), dtype=dtype)
    for start in range(0, len(targets), batch_size):
        rows = targets[start:start + batch_size]
        deltas = {k: torch.zeros(len(rows), n, rm.cfg.d_model, dtype=dtype, requires_grad=True)
                  for k in range(n_sites) if rm.has_mlp or k % 2 == 1 or k == 0}
        values = _frozen_targets(rm, cache, src, reads, rows, fixed, deltas)
        pre[rows] = values.detach()
        grads = dict(zip(deltas, torch.autograd.grad(values.sum(), list(deltas.values()), allow_unused=True),
                         strict=True))
        with torch.no_grad():
            no_sources = {k: -writes[k].expand(len(rows), n, -1) for k in deltas}
            constants[rows] = _frozen_targets(rm, cache, src, reads, rows, fixed, no_sources)
            grads = torch.stack([grads[k] if grads.get(k) is not None else torch.zeros_like(deltas[0])
                                 for k in range(n_sites)])  # [sites, B, pos, d_model]
            w = torch.einsum("sbd,sd->bs", grads[src.site, :, src.pos], src.vectors)  # [B, S]
            for site, l_rows, l_writes in later:  # a CLT feature's writes into later MLPs
                w.index_add_(1, l_rows, torch.einsum("bsd,sd->bs", grads[site][:, src.pos[l_rows]],
                                                     l_writes.to(w.dtype)))
            rows_t = torch.tensor(rows)
            upstream = (src.site[None, :] < target_site[rows_t][:, None]) & \
                       (src.pos[None, :] <= target_pos[rows_t][:, None]) & (w != 0)
            bi, si = torch.nonzero(upstream, as_tuple=True)
            parts_t.append(rows_t[bi])
            parts_s.append(si)
            parts_w.append(w[bi, si])
    def cat(xs, d):
        return torch.cat(xs) if xs else torch.zeros(0, dtype=d)

    weight = cat(parts_w, dtype)
    return Edges(cat(parts_t, torch.long), cat(parts_s, torch.long), weight,
                 torch.zeros(len(weight), rm.cfg.n_heads, dtype=dtype), constants, pre,
                 torch.zeros(n_src + len(reads), dtype=dtype))


def _fixed_outputs(rm: ReplacementModel, cache: ReplacementCache) -> dict[str, Tensor]:
    """Cached sublayer outputs that the frozen direct-effect model holds constant (a skip transcoder's MLP output
    without its skip term, which stays live: `_frozen_targets` adds it from the live input)."""
    out = {hook_resid_pre(0): cache.resid_pre[0]}
    for layer in range(rm.n_layers):
        if layer in rm.attention_saes:
            out[hook_attn_out(layer)] = cache.resid_mid[layer] - cache.resid_pre[layer]
        if rm.has_mlp:
            nxt = cache.resid_pre[layer + 1] if layer + 1 < rm.n_layers else cache.resid_final
            out[hook_mlp_out(layer)] = nxt - cache.resid_mid[layer]
            tc = rm.transcoders.get(layer)
            if tc is not None and tc.W_skip is not None:
                x = cache.hook_values[tc.hook_in]  # ln2.hook_normalized, or hook_resid_mid
                out[hook_mlp_out(layer)] = out[hook_mlp_out(layer)] - tc.skip_write(x.to(tc.W_skip.dtype)).to(x.dtype)
    return out


def _frozen_targets(rm: ReplacementModel, cache: ReplacementCache, src: Sources, reads: list[LogitRead],
                    rows: list[int], fixed: dict[str, Tensor], deltas: dict[int, Tensor],
                    shared: bool = False) -> Tensor:
    """[B] value of target rows[b] in batch element b, with `deltas[site]` added at each write site (`shared`: one
    batch element, deltas [1, pos, d_model], read for every row)."""
    n_src = len(src)
    B, n = (1 if shared else len(rows)), cache.n_pos
    captured: dict[str, Tensor] = {}
    hooks = []
    skip_inputs: dict[str, Tensor] = {}
    for site in deltas:
        name = _site_hook(rm, site)
        base = fixed.get(name)
        tc = rm.transcoders.get((site - 2) // 2) if site > 0 and site % 2 == 0 else None
        skip = tc if tc is not None and tc.W_skip is not None else None

        def add(act, hook, base=base, site=site, skip=skip):
            start = base.to(act.dtype).expand_as(act) if base is not None else act
            if skip is not None:  # the skip channel, live in the frozen model
                start = start + skip.skip_write(skip_inputs[skip.cfg.name].to(skip.W_skip.dtype)).to(act.dtype)
            return start + deltas[site]
        hooks.append((name, add))
    for layer, sae in rm.attention_saes.items():
        hooks.append((hook_attn_z(layer), lambda act, hook, d=sae: captured.__setitem__(
            d.cfg.name, d.pre_activation(d.flatten_input(act).to(d.W_enc.dtype)))))
    for tc in rm.transcoders.values():
        def read(act, hook, d=tc):
            captured[d.cfg.name] = d.pre_activation(act.to(d.W_enc.dtype))
            skip_inputs[d.cfg.name] = act
        hooks.append((tc.hook_in, read))
    final_hook = hook_ln_final_normalized() if rm.has_norm else hook_resid_post(rm.n_layers - 1)
    hooks.append((final_hook, lambda act, hook: captured.__setitem__("final", act)))
    tokens = cache.tokens[None].expand(B, n)
    with rm.frozen(cache), rm.model.hooks(fwd_hooks=hooks):
        rm.model(tokens, stop_at_layer=None)
    gamma, beta = rm.ln_weights("ln_final")
    values = []
    for i, row in enumerate(rows):
        b = 0 if shared else i
        if row < n_src:
            node = src.nodes[row]
            d = rm.attention_saes[node.layer] if node.kind == "attn_feature" else rm.transcoders[node.layer]
            values.append(captured[d.cfg.name][b, node.pos, node.index])
        else:
            r = reads[row - n_src]
            x = captured["final"][b, n - 1]
            values.append((x * gamma + beta) @ r.direction + r.bias if rm.has_norm else x @ r.direction + r.bias)
    return torch.stack(values).to(src.vectors.dtype)


__all__ = ["autograd_edges", "attn_site", "mlp_site"]
