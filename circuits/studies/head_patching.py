"""The machinery of the component-level IOI analysis (`circuits.studies.heads`): prompt batches with their role
positions, hooked forward passes, role-aligned reference means for mean ablation, direct effects through the frozen
final LayerNorm, path patching (Wang et al. 2022 §3) and the decomposition of a head's effect into attention-SAE
features. Every function works on one `_Batch` of prompts and returns tensors; the analysis and its verdicts live in
`heads.py`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.errors import CircuitsError
from circuits.model import (
    hook_attn_k,
    hook_attn_pattern,
    hook_attn_q,
    hook_attn_v,
    hook_attn_z,
    hook_ln_final_scale,
    hook_mlp_out,
    hook_resid_pre,
)

ROLE_POSITIONS = ("BOS", "IO", "S1", "S2", "and", "END")
ATTENTION_STATS = {
    "end_io": "END→IO", "end_s1": "END→S1", "end_s2": "END→S2",
    "s2_s1": "S2→S1 (duplicate token)", "s2_s1p1": "S2→S1+1 (induction)", "prev": "pos→pos−1 (previous token)",
}
PATHS = ("q", "k", "v")
SOURCES = {"abc": "ABC (S2 replaced by a third name)", "swapped": "IO and S swapped"}
BATCH = 100
TOP_FEATURES = 5


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _parse_head(name: str) -> tuple[int, int]:
    layer, head = name[1:].split("H")
    return int(layer), int(head)


# -- batches of prompts ---------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """Right-padded prompts (causal attention: the padding after END changes nothing at or before END)."""

    tokens: Tensor  # [B, T]
    sources: dict[str, Tensor]  # "abc", "swapped" → [B, T]
    end: Tensor  # [B] last real position
    pos: dict[str, Tensor]  # "IO", "S1", "S2" → [B]
    answer: Tensor  # [B]
    wrong: Tensor  # [B]
    roles: list[list[str]]

    @property
    def rows(self) -> Tensor:
        return torch.arange(self.tokens.shape[0])

    def metric(self, logits: Tensor) -> Tensor:
        last = logits[self.rows, self.end]
        return (last[self.rows, self.answer] - last[self.rows, self.wrong]).double()


def _tokens(model, text: str) -> Tensor:
    return model.to_tokens(text, truncate=False)[0]


def _batches(model, prompts, size: int = BATCH) -> list[_Batch]:
    out = []
    device = model.cfg.device
    for start in range(0, len(prompts), size):
        chunk = prompts[start:start + size]
        T = max(pp.tokens.shape[0] for pp in chunk)

        def pad(t: Tensor, T=T) -> Tensor:
            return torch.cat([t.to(device), torch.zeros(T - t.shape[0], dtype=t.dtype, device=device)])

        swapped = []
        for pp in chunk:
            text = pp.prompt.meta.get("swapped")
            if text is None:
                raise CircuitsError(f"prompt {pp.index}: meta['swapped'] (IO and S swapped) is missing")
            t = _tokens(model, text)
            if t.shape != pp.tokens.shape:
                raise CircuitsError(f"prompt {pp.index}: the swapped prompt has {t.shape[0]} tokens, the clean one "
                                    f"{pp.tokens.shape[0]}")
            swapped.append(t)
        pos = {}
        for role in ("IO", "S1", "S2"):
            try:
                pos[role] = torch.tensor([pp.roles.index(role) for pp in chunk])
            except ValueError:
                raise CircuitsError(f"every IOI prompt needs an {role} position") from None
        out.append(_Batch(
            tokens=torch.stack([pad(pp.tokens) for pp in chunk]),
            sources={"abc": torch.stack([pad(pp.corrupt_tokens) for pp in chunk]),
                     "swapped": torch.stack([pad(t) for t in swapped])},
            end=torch.tensor([pp.tokens.shape[0] - 1 for pp in chunk]), pos=pos,
            answer=torch.tensor([pp.answer for pp in chunk]), wrong=torch.tensor([pp.wrong for pp in chunk]),
            roles=[list(pp.roles) for pp in chunk]))
    return out


# -- forward passes -------------------------------------------------------------------------------------------------


def _run(model, tokens: Tensor, hooks=(), keep: tuple[str, ...] = (), start: int = 0, resid: Tensor | None = None,
         stop: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits (or the residual stream before block `stop`) and the activations named in `keep` (detached) of one
    hooked forward pass; with `start` > 0 it begins at block `start` from `resid` ([B, T, L, d_model], the clean
    run's resid_pre of every layer) — the same numbers as a full pass whose hooks all sit in blocks ≥ `start`."""
    store: dict[str, Tensor] = {}

    def grab(act, hook):
        store[hook.name] = act.detach().clone()

    with model.hooks(fwd_hooks=list(hooks) + [(n, grab) for n in keep]):
        if start > 0:
            out = model(resid[:, :, start], start_at_layer=start, stop_at_layer=stop)
        else:
            out = model(tokens, stop_at_layer=stop)
    return out, store


def _set_head(value: Tensor, head: int, mask: Tensor | None = None):
    """A hook that replaces head `head` of a [B, T, H, ·] activation by `value` ([B, T, ·]), where `mask` [B, T]."""

    def fn(act, hook):
        act = act.clone()
        if mask is None:
            act[:, :, head] = value.to(act.dtype)
        else:
            act[:, :, head] = torch.where(mask[..., None], value.to(act.dtype), act[:, :, head])
        return act
    return fn


def _set_all(value: Tensor):
    def fn(act, hook):
        return value.to(act.dtype).clone()
    return fn


# -- reference means ------------------------------------------------------------------------------------------------


@torch.no_grad()
def _reference_means(model, batches: list[_Batch]) -> dict:
    """Per layer: z means [H, d_head] at each role, and of "other" positions by distance from END."""
    L = model.cfg.n_layers
    role_sum: dict[str, Tensor] = {}
    role_n: dict[str, int] = {}
    off_sum: dict[int, Tensor] = {}
    off_n: dict[int, int] = {}
    other_sum, other_n = None, 0
    mlp_end, n_end = 0, 0
    mlps = _has_mlp(model)
    for b in batches:
        keep = tuple(hook_attn_z(layer) for layer in range(L)) + (
            tuple(hook_mlp_out(layer) for layer in range(L)) if mlps else ())
        _, store = _run(model, b.tokens, keep=keep)
        z = torch.stack([store[hook_attn_z(layer)] for layer in range(L)], 2).double()  # [B, T, L, H, d]
        if mlps:
            mlp = torch.stack([store[hook_mlp_out(layer)] for layer in range(L)], 2).double()  # [B, T, L, d_model]
            mlp_end = mlp_end + mlp[b.rows, b.end].sum(0)
            n_end += b.tokens.shape[0]
        for i, roles in enumerate(b.roles):
            end = int(b.end[i])
            for p, r in enumerate(roles):
                if r in ROLE_POSITIONS:
                    role_sum[r] = role_sum.get(r, 0) + z[i, p]
                    role_n[r] = role_n.get(r, 0) + 1
                else:
                    off_sum[end - p] = off_sum.get(end - p, 0) + z[i, p]
                    off_n[end - p] = off_n.get(end - p, 0) + 1
                    other_sum = z[i, p] if other_sum is None else other_sum + z[i, p]
                    other_n += 1
    return {"role": {r: role_sum[r] / role_n[r] for r in role_sum}, "mlp_end": mlp_end / n_end if mlps else None,
            "offset": {k: off_sum[k] / off_n[k] for k in off_sum},
            "other": other_sum / other_n if other_n else None, "role_n": role_n, "other_n": other_n}


def _ablation_values(b: _Batch, means: dict, z_clean: Tensor) -> Tensor:
    """[B, T, L, H, d] mean-ablation values for a batch (the clean z at the padding)."""
    out = z_clean.clone().double()
    for i, roles in enumerate(b.roles):
        end = int(b.end[i])
        for p, r in enumerate(roles):
            if r in ROLE_POSITIONS and r in means["role"]:
                out[i, p] = means["role"][r]
            elif end - p in means["offset"]:
                out[i, p] = means["offset"][end - p]
            elif means["other"] is not None:
                out[i, p] = means["other"]
    return out.to(z_clean.dtype)


# -- the measurements -----------------------------------------------------------------------------------------------


def _logit_directions(model, b: _Batch, lnf_scale: Tensor | None) -> Tensor:
    """[B, d_model]: d such that Δresid[END] · d = Δ(logit(IO) − logit(S)) with the final LayerNorm's scale frozen."""
    W_U = model.W_U
    u = (W_U[:, b.answer] - W_U[:, b.wrong]).T.double()  # [B, d_model]
    norm = model.cfg.normalization_type
    if norm in ("LN", "LNPre"):
        w = getattr(model.ln_final, "w", None)
        if w is not None:
            u = u * w.double()
        u = u - u.mean(-1, keepdim=True)
        u = u / lnf_scale[b.rows, b.end].double().reshape(-1, 1)
    elif norm is not None:
        raise CircuitsError(f"direct effects need LayerNorm or no normalization, not {norm!r}")
    return u


def _direct_effects(model, b: _Batch, z: Tensor, zbar: Tensor, lnf_scale: Tensor | None) -> Tensor:
    """[L, H, B]: each head's direct effect at END of replacing z̄ by z."""
    rows = b.rows
    dz = (z[rows, b.end] - zbar[rows, b.end]).double()  # [B, L, H, d]
    W_O = model.W_O.double()  # [L, H, d, d_model]
    write = torch.einsum("blhd,lhdm->blhm", dz, W_O)
    return torch.einsum("blhm,bm->lhb", write, _logit_directions(model, b, lnf_scale))


def _has_mlp(model) -> bool:
    return not getattr(model.cfg, "attn_only", False)


def _z_stack(store: dict, L: int) -> Tensor:
    return torch.stack([store[hook_attn_z(layer)] for layer in range(L)], 2)


@dataclass
class _Clean:
    metric: Tensor  # [B]
    z: Tensor  # [B, T, L, H, d]
    zbar: Tensor
    lnf: Tensor | None
    patterns: list[Tensor]
    source_z: dict[str, Tensor]
    source_metric: dict[str, Tensor]
    mlp: Tensor | None  # [B, T, L, d_model] clean MLP outputs
    resid: Tensor  # [B, T, L, d_model] clean resid_pre of every layer


@torch.no_grad()
def _clean_pass(model, b: _Batch, means: dict) -> _Clean:
    L = model.cfg.n_layers
    ln = model.cfg.normalization_type in ("LN", "LNPre")
    keep = tuple(hook_attn_z(layer) for layer in range(L)) + tuple(hook_attn_pattern(layer) for layer in range(L))
    mlps = tuple(hook_mlp_out(layer) for layer in range(L)) if _has_mlp(model) else ()
    resids = tuple(hook_resid_pre(layer) for layer in range(L))
    logits, store = _run(model, b.tokens, keep=keep + mlps + resids + ((hook_ln_final_scale(),) if ln else ()))
    z = _z_stack(store, L)
    src_z, src_m = {}, {}
    for name, toks in b.sources.items():
        lg, st = _run(model, toks, keep=tuple(hook_attn_z(layer) for layer in range(L)))
        src_z[name], src_m[name] = _z_stack(st, L), b.metric(lg)
    return _Clean(b.metric(logits), z, _ablation_values(b, means, z),
                  store[hook_ln_final_scale()][..., 0] if ln else None,
                  [store[hook_attn_pattern(layer)] for layer in range(L)], src_z, src_m,
                  torch.stack([store[n] for n in mlps], 2) if mlps else None,
                  torch.stack([store[n] for n in resids], 2))


def _attention_stats(b: _Batch, patterns: list[Tensor]) -> dict[str, Tensor]:
    """stat → [L, H, B]."""
    rows = b.rows
    P = torch.stack(patterns, 0).double()  # [L, B, H, Q, K]
    s1p1 = b.pos["S1"] + 1
    PH = P.permute(0, 2, 1, 3, 4)  # [L, H, B, Q, K]

    def at(q: Tensor, k: Tensor) -> Tensor:
        return PH[:, :, rows, q, k]  # [L, H, B]

    T = P.shape[-1]
    idx = torch.arange(1, T)
    prev = P[..., idx, idx - 1]  # [L, B, H, T-1]
    valid = (idx[None, :] <= b.end[:, None]).double()  # [B, T-1]
    prev = (prev * valid[None, :, None]).sum(-1) / valid.sum(-1)[None, :, None]
    return {"end_io": at(b.end, b.pos["IO"]), "end_s1": at(b.end, b.pos["S1"]), "end_s2": at(b.end, b.pos["S2"]),
            "s2_s1": at(b.pos["S2"], b.pos["S1"]), "s2_s1p1": at(b.pos["S2"], s1p1), "prev": prev.permute(0, 2, 1)}


@torch.no_grad()
def _ablate_heads(model, b: _Batch, c: _Clean, heads: list[tuple[int, int]], keep=()) -> tuple[Tensor, dict]:
    """Metric [B] (and kept activations) with every head in `heads` mean-ablated together."""
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)

    def hook(layer, hs):
        def fn(act, hook):
            act = act.clone()
            for h in hs:
                act[:, :, h] = c.zbar[:, :, layer, h].to(act.dtype)
            return act
        return fn

    first = min(by_layer)
    logits, store = _run(model, b.tokens, [(hook_attn_z(layer), hook(layer, hs)) for layer, hs in by_layer.items()],
                         keep, start=0 if keep else first, resid=c.resid)
    return b.metric(logits), store


def _qkv(model, layer: int, head: int, resid: Tensor, which: str) -> Tensor:
    """Head `head`'s query / key / value [B, T, d_head] computed from a residual stream [B, T, d_model] (what the
    attention layer does with its input: ln1, then W and b)."""
    blk = model.blocks[layer]
    x = blk.ln1(resid) if model.cfg.normalization_type is not None else resid
    attn = blk.attn
    W, bias = {"q": (attn.W_Q, attn.b_Q), "k": (attn.W_K, attn.b_K), "v": (attn.W_V, attn.b_V)}[which]
    return x @ W[head] + bias[head]


QKV_HOOKS = {"q": hook_attn_q, "k": hook_attn_k, "v": hook_attn_v}


@torch.no_grad()
def _path_patch(model, b: _Batch, c: _Clean, source: str, sender: tuple[int, int],
                receivers: list[tuple[int, int]], paths=PATHS) -> dict[str, Tensor]:
    """Path-patched metric [B] for each path (q, k, v) from `sender` into `receivers` (see the module docstring).

    Step (ii) records the receivers' residual input (every head but the sender frozen at clean, MLPs live); step
    (iii) replaces each receiver's query / key / value by what its ln1 and W_Q / W_K / W_V make of that input. This
    equals patching TransformerLens' ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` with split inputs
    (tests/test_heads.py checks it) at a quarter of the cost."""
    if model.cfg.positional_embedding_type not in ("standard", "learned"):
        raise CircuitsError("path patching of queries and keys assumes absolute position embeddings")
    ls, hs = sender
    recv = [(lr, hr) for lr, hr in receivers if lr > ls]
    if not recv:
        return {p: c.metric.clone() for p in paths}
    top = max(lr for lr, _ in recv)
    hooks = []
    for layer in range(ls, top):
        frozen = c.z[:, :, layer].clone()
        if layer == ls:
            frozen[:, :, hs] = c.source_z[source][:, :, ls, hs]
        hooks.append((hook_attn_z(layer), _set_all(frozen)))
    layers = sorted({lr for lr, _ in recv})
    store: dict[str, Tensor] = {}

    def grab(act, hook):
        store[hook.name] = act.detach().clone()

    _, store = _run(model, b.tokens, hooks, tuple(hook_resid_pre(lr) for lr in layers), start=ls, resid=c.resid,
                    stop=top + 1)
    out = {}
    for p in paths:
        patch = [(QKV_HOOKS[p](lr), _set_head(_qkv(model, lr, hr, store[hook_resid_pre(lr)], p), hr))
                 for lr, hr in recv]
        logits, _ = _run(model, b.tokens, patch, start=layers[0], resid=c.resid)
        out[p] = b.metric(logits)
    return out


ROUTE_SOURCES = ("mean", "abc", "swapped")  # "mean": the head's reference mean (mean ablation)
PATCH_MODES = {
    "total": "everything downstream live",
    "no_heads": "every other head frozen at clean (direct + through MLPs)",
    "direct": "every other head and every MLP frozen (direct path only)",
}


@torch.no_grad()
def _patch_head(model, b: _Batch, c: _Clean, source: str, head: tuple[int, int], mode: str,
                live_mlp: int | None = None) -> Tensor:
    """Metric [B] with `head`'s z taken from `source`; what else may respond is set by `mode` (`PATCH_MODES`);
    ``mode="mlp"`` freezes every other head and every MLP except layer `live_mlp`; ``mode="no_mlp"`` freezes every
    other head and MLP `live_mlp` only."""
    ls, hs = head
    L = model.cfg.n_layers
    hooks = []
    for layer in range(ls, L):
        if mode == "total" and layer > ls:
            break
        frozen = c.z[:, :, layer].clone()
        if layer == ls:
            frozen[:, :, hs] = c.zbar[:, :, ls, hs] if source == "mean" else c.source_z[source][:, :, ls, hs]
        if mode == "total":
            hooks.append((hook_attn_z(layer), _set_head(frozen[:, :, hs], hs)))
        else:
            hooks.append((hook_attn_z(layer), _set_all(frozen)))
        if c.mlp is not None and (mode == "direct" or (mode == "mlp" and layer != live_mlp)
                                  or (mode == "no_mlp" and layer == live_mlp)):
            hooks.append((hook_mlp_out(layer), _set_all(c.mlp[:, :, layer])))
    logits, _ = _run(model, b.tokens, hooks, start=ls, resid=c.resid)
    return b.metric(logits)


# -- features of a head ---------------------------------------------------------------------------------------------


def _feature_parts(sae, layer: int, head: int, model, z: Tensor, zref: Tensor, direction: Tensor | None
                   ) -> tuple[Tensor, Tensor]:
    """Per prompt: each feature's part [B, d_sae] and the SAE error's part [B] of head `head`'s output change
    ``(z − zref)·W_O`` — projected on `direction` [B, d_model] when given, else on the change itself."""
    d = model.cfg.d_head
    sl = slice(head * d, (head + 1) * d)
    W_dec = sae.W_dec.double()[:, sl]  # [F, d]
    W_O = model.W_O[layer, head].double()  # [d, d_model]
    zf, rf = z.reshape(z.shape[0], -1).double(), zref.reshape(zref.shape[0], -1).double()
    dc = sae.encode(zf.to(sae.W_enc.dtype)).double() - sae.encode(rf.to(sae.W_enc.dtype)).double()  # [B, F]
    recon = dc @ W_dec  # [B, d]
    err = (zf[:, sl] - rf[:, sl]) - recon
    out = (zf[:, sl] - rf[:, sl]) @ W_O  # [B, d_model]
    proj = direction if direction is not None else out
    feat_dir = (W_dec @ W_O) @ proj.T  # [F, B]
    return dc * feat_dir.T, (err @ W_O * proj).sum(-1)
