"""Component-level causal analysis of IOI (Wang et al. 2022, adapted to the organism): which heads do what.

`ioi_head_analysis(model, evaluation, reference, seed)` measures, on the *evaluation* prompts only, with the
*reference* prompts used for nothing but the ablation means:

1. **Mean ablation** of every head: head (l, h)'s ``hook_z`` is replaced by its reference mean, **role-aligned**: at
   BOS, IO, S1, S2, "and" and END by the reference mean at the same role; at every other position by the reference
   mean of "other" positions at the same distance from END (the overall "other" mean where no reference prompt
   reaches that distance). Effect = drop of the mean metric ``logit(IO) − logit(S)``, with a paired bootstrap
   interval; baseline = the expected drop from ablating a head drawn at random (per prompt, the mean drop over all
   heads), and the verdict is `circuits.studies.stats.verdict` (interval above zero and above the baseline, and
   at least 10% of the clean metric).
2. **Direct effect** of every head: ``(z − z̄)·W_O`` at END, read through the final LayerNorm (its scale frozen at
   the clean run) onto ``W_U[:, IO] − W_U[:, S]`` — the change of the metric along the head → logits path alone
   when the head is mean-ablated. Verdict: interval excludes zero and |effect| ≥ 10% of the clean metric.
3. **Attention statistics**: END→IO, END→S1, END→S2, S2→S1 (duplicate token), S2→S1+1 (induction) and
   position→previous position, each a mean over prompts with an interval.
4. **Path patching** (Wang et al. §3): source = the ABC prompt (S2 replaced by a third name) and the prompt with IO
   and S swapped. For a sender head s and receiver heads R: (i) run clean and source, cache every head's z;
   (ii) run clean with s's z taken from the source and every other head's z frozen at its clean value (MLPs and
   LayerNorms recomputed, as in Wang et al.), and record the receivers' query (or key, or value) inputs;
   (iii) run clean with only those receiver inputs replaced (at every position), everything else recomputed.
   Effect = drop of the metric; minimum for a verdict = 10% of the source's total effect ``m(clean) − m(source)``.
   Receivers: first the name movers (→ S-inhibition heads: effect through the queries); then the S-inhibition
   heads (→ heads feeding them, labelled duplicate-token or induction by their attention).
5. **Backup and negative name movers**: mean-ablate the name movers together and recompute every other head's
   direct effect; a backup head's direct effect rises. A negative name mover's direct effect is confirmed < 0.
6. **Features of each role head** (with attention SAEs): the head's slice of z at the position where it acts,
   decomposed as codes × decoder rows (+ the SAE error), ranked by the share of the head's effect each carries.

The result is a JSON-serialisable dict (the same inputs give the same dict); `render_head_section` writes it as
Markdown. Heads are named ``L{layer}H{head}``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import numpy as np
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
from circuits.studies.stats import MIN_EFFECT_SHARE, Interval, mean_interval, verdict

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


# -- the analysis ---------------------------------------------------------------------------------------------------


def _iv(values, seed: int) -> dict:
    return mean_interval(np.asarray(values, dtype=np.float64).tolist(), seed=seed).as_dict()


def _interval(d: dict) -> Interval:
    return Interval(d["value"], d["lo"], d["hi"], d["n"])


def _verdict(effect: dict, baseline: dict | None, scale: float) -> dict:
    return verdict(_interval(effect), _interval(baseline) if baseline else None, scale).as_dict()


_T0 = [time.perf_counter()]


_LOGGER = logging.getLogger(__name__)


def _log(progress: bool, msg: str) -> None:
    """Progress of the analysis through `logging` (INFO when asked for, DEBUG otherwise); never in the result."""
    _LOGGER.log(logging.INFO if progress else logging.DEBUG, "[heads %6.1f s] %s", time.perf_counter() - _T0[0], msg)


@torch.no_grad()
def ioi_head_analysis(model, evaluation: list, reference: list, seed: int, progress: bool = False) -> dict:
    """The component-level analysis of the module docstring. `model` is a HookedTransformer or a
    `ReplacementModel` (then the role heads' attention-SAE features are reported too); `evaluation` and
    `reference` are `PreparedPrompt` lists of an IOI study (disjoint sets; the reference only sets the means)."""
    rm = model if hasattr(model, "attention_saes") else None
    hm = rm.model if rm is not None else model
    if not evaluation or not reference:
        raise CircuitsError("the head analysis needs evaluation and reference prompts")
    L, H = hm.cfg.n_layers, hm.cfg.n_heads
    heads = [(layer, h) for layer in range(L) for h in range(H)]
    names = [head_name(*x) for x in heads]
    _T0[0] = time.perf_counter()
    ev, ref = _batches(hm, evaluation), _batches(hm, reference)
    _log(progress, f"reference means over {len(reference)} prompts")
    means = _reference_means(hm, ref)
    _log(progress, f"clean, ABC and swapped runs on {len(evaluation)} prompts")
    cleans = [_clean_pass(hm, b, means) for b in ev]

    def cat(fn) -> np.ndarray:
        return torch.cat([fn(b, c) for b, c in zip(ev, cleans, strict=True)], -1).double().cpu().numpy()

    m_clean = cat(lambda b, c: c.metric)
    clean_mean = float(m_clean.mean())
    out: dict = {
        "n_evaluation": len(evaluation), "n_reference": len(reference), "seed": seed,
        "convention": "mean ablation of hook_z: at BOS, IO, S1, S2, 'and', END the reference mean at the same role; "
                      "elsewhere the reference mean of non-role positions at the same distance from END",
        "metric": {"clean": _iv(m_clean, seed)},
    }
    for s in SOURCES:
        out["metric"][s] = _iv(cat(lambda b, c, s=s: c.source_metric[s]), seed)

    # 1. mean ablation of each head
    _log(progress, f"mean-ablating {len(heads)} heads")
    drops = np.stack([m_clean - cat(lambda b, c, x=x: _ablate_heads(hm, b, c, [x])[0]) for x in heads])  # [N_h, n]
    baseline = _iv(drops.mean(0), seed)
    # 2. direct effects, 3. attention
    de = cat(lambda b, c: _direct_effects(hm, b, c.z, c.zbar, c.lnf)).reshape(L * H, -1)
    att = {k: cat(lambda b, c, k=k: _attention_stats(b, c.patterns)[k]).reshape(L * H, -1) for k in ATTENTION_STATS}
    table = {}
    for i, name in enumerate(names):
        abl = _iv(drops[i], seed)
        d = _iv(de[i], seed)
        neg = {"value": -d["value"], "lo": -d["hi"], "hi": -d["lo"], "n": d["n"]}
        table[name] = {
            "ablation": abl, "ablation_verdict": _verdict(abl, baseline, clean_mean),
            "direct": d, "direct_verdict": _verdict(d, None, clean_mean),
            "negative_verdict": _verdict(neg, None, clean_mean),
            "attention": {k: _iv(att[k][i], seed) for k in ATTENTION_STATS},
        }
    out["baseline"] = {"how": "expected drop from mean-ablating one head drawn at random (per prompt: the mean drop "
                              "over all heads)", **baseline}
    out["heads"] = table

    # direct effects of the MLP layers (their output at END minus the reference mean at END)
    components: dict = {}
    if _has_mlp(hm):
        def mlp_de(b, c):
            dm = c.mlp[b.rows, b.end].double() - means["mlp_end"][None]  # [B, L, d_model]
            return torch.einsum("blm,bm->lb", dm, _logit_directions(hm, b, c.lnf))
        mde = cat(mlp_de)
        for layer in range(L):
            d = _iv(mde[layer], seed)
            components[f"MLP{layer}"] = {"direct": d, "direct_verdict": _verdict(d, None, clean_mean)}
    for layer in range(L):
        d = _iv(de[layer * H:(layer + 1) * H].sum(0), seed)
        components[f"attn{layer}"] = {"direct": d, "direct_verdict": _verdict(d, None, clean_mean)}
    out["components"] = components

    # activation patching of each head from each source, and the routes of every confirmed effect
    _log(progress, "patching each head from the ABC and swapped prompts")
    totals = {s: _iv(m_clean - cat(lambda b, c, s=s: c.source_metric[s]), seed) for s in SOURCES}
    totals["mean"] = {**_iv(m_clean, seed)}
    patch: dict = {}

    def patched(s, x, mode, live=None):
        eff = _iv(m_clean - cat(lambda b, c: _patch_head(hm, b, c, s, x, mode, live)), seed)
        return {**eff, **_verdict(eff, None, totals[s]["value"])}

    for s in SOURCES:
        for x in heads:
            patch.setdefault(head_name(*x), {})[s] = {"total": patched(s, x, "total")}
    for n in names:
        patch[n]["mean"] = {"total": {**table[n]["ablation"], **table[n]["ablation_verdict"]}}
    confirmed = {s: [n for n in names if patch[n][s]["total"]["verdict"] == "confirmed"] for s in ROUTE_SOURCES}
    for s, ns in confirmed.items():  # routes: every other head frozen; every MLP too; all MLPs but one
        for n in ns:
            x = _parse_head(n)
            _log(progress, f"routes of {n} ({s})")
            if x[0] < L - 1:
                patch[n][s]["no_heads"] = patched(s, x, "no_heads")
            patch[n][s]["direct"] = patched(s, x, "direct")
            if _has_mlp(hm):
                for layer in range(x[0], L):
                    patch[n][s][f"without_mlp{layer}"] = patched(s, x, "no_mlp", layer)
    out["patching"] = {"modes": PATCH_MODES, "totals": totals, "heads": patch, "confirmed": confirmed}

    # name movers: confirmed positive direct effect and attention END→IO above END→S1 + END→S2
    def attends_io(name):
        a = table[name]["attention"]
        return a["end_io"]["value"] > a["end_s1"]["value"] + a["end_s2"]["value"]

    direct_pos = [n for n in names if table[n]["direct_verdict"]["verdict"] == "confirmed"]
    movers = [n for n in direct_pos if attends_io(n)]
    negative = [n for n in names if table[n]["negative_verdict"]["verdict"] == "confirmed"]

    # 4. path patching into the name movers, then into the S-inhibition heads
    def patch_round(receivers: list[str], label: str) -> dict:
        recv = [_parse_head(n) for n in receivers]
        top = max((lr for lr, _ in recv), default=0)
        senders = [x for x in heads if x[0] < top and head_name(*x) not in receivers]
        res: dict = {"receivers": receivers, "senders": [head_name(*x) for x in senders], "sources": {},
                     "screen": "a sender is path-patched from a source when its activation-patching interval from "
                               "that source reaches 10% of the source's total effect (no smaller path can be "
                               "confirmed unless paths cancel)"}
        for s in SOURCES:
            total_iv = totals[s]
            minimum = abs(total_iv["value"]) * MIN_EFFECT_SHARE
            kept = [x for x in senders if patch[head_name(*x)][s]["total"]["hi"] >= minimum
                    or patch[head_name(*x)][s]["total"]["lo"] <= -minimum]
            rows = {}
            for x in kept:
                _log(progress, f"path patching ({label}, {s}) from {head_name(*x)}")
                parts = [_path_patch(hm, b, c, s, x, recv) for b, c in zip(ev, cleans, strict=True)]
                row = {}
                for p in PATHS:
                    eff = _iv(m_clean - torch.cat([q[p] for q in parts]).cpu().numpy(), seed)
                    row[p] = {**eff, **_verdict(eff, None, total_iv["value"])}
                rows[head_name(*x)] = row
            res["sources"][s] = {"total": total_iv, "senders": rows,
                                 "screened_out": [head_name(*x) for x in senders if x not in kept]}
        return res

    out["path_patching"] = {}
    s_inhibition: list[str] = []
    # receivers: the name movers; without any, the heads that attend from END to the names (candidates)
    receivers = movers or [n for n in names if _parse_head(n)[0] > 0 and sum(
        table[n]["attention"][k]["value"] for k in ("end_io", "end_s1", "end_s2")) >= 0.5]
    out["receivers"] = {"heads": receivers, "kind": "name movers" if movers else
                        "candidates: END→(IO + S1 + S2) attention ≥ 0.5 (no name mover is confirmed)"}
    if receivers:
        pp1 = patch_round(receivers, "name movers" if movers else "name-attending heads")
        out["path_patching"]["name_movers"] = pp1
        for n, row in pp1["sources"]["abc"]["senders"].items():
            q = row["q"]
            if q["verdict"] == "confirmed" and q["value"] > max(row["k"]["value"], row["v"]["value"]):
                s_inhibition.append(n)
    feeders: list[str] = []
    if s_inhibition and min(_parse_head(n)[0] for n in s_inhibition) > 0:
        pp2 = patch_round(s_inhibition, "S-inhibition heads")
        out["path_patching"]["s_inhibition"] = pp2
        for n, row in pp2["sources"]["abc"]["senders"].items():
            if any(row[p]["verdict"] == "confirmed" for p in PATHS):
                feeders.append(n)

    # 5. backup: direct effects with the name movers (or, without any, the candidates) ablated together
    backup: list[str] = []
    if receivers:
        _log(progress, "ablating the name movers together")
        mv = [_parse_head(n) for n in receivers]
        ln = hm.cfg.normalization_type in ("LN", "LNPre")
        keep = tuple(hook_attn_z(layer) for layer in range(L)) + ((hook_ln_final_scale(),) if ln else ())
        m_nm, de_after = [], []
        for b, c in zip(ev, cleans, strict=True):
            m, st = _ablate_heads(hm, b, c, mv, keep)
            m_nm.append(m)
            de_after.append(_direct_effects(hm, b, _z_stack(st, L), c.zbar,
                                            st[hook_ln_final_scale()][..., 0] if ln else None))
        m_nm_a = torch.cat(m_nm).cpu().numpy()
        de_after_a = torch.cat(de_after, -1).double().cpu().numpy().reshape(L * H, -1)
        rises = {}
        for i, name in enumerate(names):
            if name in receivers:
                continue
            r = _iv(de_after_a[i] - de[i], seed)
            rises[name] = {**r, **_verdict(r, None, clean_mean)}
            if movers and rises[name]["verdict"] == "confirmed":
                backup.append(name)
        drop = _iv(m_clean - m_nm_a, seed)
        out["backup"] = {"ablated": receivers, "kind": out["receivers"]["kind"], "metric_drop": drop,
                         "metric_drop_verdict": _verdict(drop, None, clean_mean),
                         "direct_of_movers": _iv(de[[names.index(n) for n in receivers]].sum(0), seed),
                         "rise": rises}

    # the role table
    out["roles"] = _role_rows(table, names, movers, direct_pos, negative, s_inhibition, feeders, backup, out,
                              clean_mean)

    # 6. features of the role heads
    if rm is not None:
        out["features"] = _features(rm, hm, ev, cleans, out["roles"])
    return out


def _best(items: dict, key) -> tuple[str, dict] | None:
    if not items:
        return None
    name = max(sorted(items), key=lambda n: key(items[n]))
    return name, items[name]


def _fmt(d: dict) -> str:
    return f"{d['value']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"


def _role_rows(table, names, movers, direct_pos, negative, s_inh, feeders, backup, out, clean_mean) -> list[dict]:  # noqa: C901
    rows = []
    minimum = abs(clean_mean) * MIN_EFFECT_SHARE

    def head_row(role: str, n: str, evidence: str, effect: dict, word: str, extra: str = "") -> dict:
        a = table[n]["attention"]
        att = (f"END→IO {a['end_io']['value']:.2f}, END→S1 {a['end_s1']['value']:.2f}, "
               f"END→S2 {a['end_s2']['value']:.2f}, S2→S1 {a['s2_s1']['value']:.2f}, "
               f"S2→S1+1 {a['s2_s1p1']['value']:.2f}")
        return {"role": role, "head": n, "evidence": evidence, "effect": effect, "verdict": word,
                "attention": att, "ablation": table[n]["ablation"],
                "ablation_verdict": table[n]["ablation_verdict"]["verdict"], "note": extra}

    for n in movers:
        rows.append(head_row("name mover", n, "direct effect on logit(IO) − logit(S); attends END→IO more than to S",
                             table[n]["direct"], table[n]["direct_verdict"]["verdict"]))
    for n in direct_pos:
        if n not in movers:
            rows.append(head_row("direct writer (not IO-attending)", n,
                                 "direct effect confirmed but END→IO attention below END→S1 + END→S2",
                                 table[n]["direct"], table[n]["direct_verdict"]["verdict"]))
    if not movers:
        best = _best({n: table[n]["direct"] for n in names}, lambda d: d["value"])
        rows.append({"role": "name mover", "head": None, "verdict": "none found",
                     "evidence": "no head has a confirmed positive direct effect and END→IO attention above S",
                     "effect": best[1] if best else None,
                     "note": f"largest direct effect: {best[0]} {_fmt(best[1])}" if best else ""})
    for n in negative:
        rows.append(head_row("negative name mover", n, "direct effect confirmed below zero (writes against IO)",
                             table[n]["direct"], table[n]["negative_verdict"]["verdict"],
                             "" if table[n]["attention"]["end_io"]["value"] > 0.2 else "does not attend to IO"))
    if not negative:
        best = _best({n: table[n]["direct"] for n in names}, lambda d: -d["value"])
        rows.append({"role": "negative name mover", "head": None, "verdict": "none found",
                     "evidence": f"no head's direct effect is confirmed below −{minimum:.3f}",
                     "effect": best[1] if best else None,
                     "note": f"most negative direct effect: {best[0]} {_fmt(best[1])}" if best else ""})
    # heads whose output from the ABC prompt changes the metric, and the route of that effect
    patching = out["patching"]
    explained = set(movers) | set(s_inh) | set(negative)
    conf = patching["confirmed"]
    source_words = {"mean": "mean ablation", "abc": "patching its z from the ABC prompt",
                    "swapped": "patching its z from the IO/S-swapped prompt"}
    for n in names:
        srcs = [s for s in ROUTE_SOURCES if n in conf[s]]
        if n in explained or not srcs:
            continue
        a = table[n]["attention"]
        if a["end_s2"]["value"] >= 0.5:
            what = "moves S2 (the latest name) to END"
        elif a["end_io"]["value"] + a["end_s1"]["value"] >= 0.5:
            what = "moves the first-clause names (IO and S1) to END"
        else:
            what = "matters causally (no name-moving attention)"
        notes = []
        for s in srcs:
            r = patching["heads"][n][s]
            total = r["total"]["value"]
            parts = [f"{source_words[s]}: {_fmt(r['total'])}"]
            if "no_heads" in r:
                parts.append(f"other heads frozen {_fmt(r['no_heads'])}")
            parts.append(f"direct only {_fmt(r['direct'])}")
            parts += [f"MLP{k[11:]} frozen {_fmt(v)}" for k, v in r.items() if k.startswith("without_mlp")]
            if abs(r["direct"]["value"]) >= 0.5 * abs(total):
                route = "mostly direct"
            elif abs(r.get("no_heads", r["total"])["value"]) >= 0.5 * abs(total):
                route = "through MLPs, not other heads"
            else:
                route = "through later heads"
            notes.append(f"{'; '.join(parts)} → {route}")
        main = patching["heads"][n][srcs[0]]["total"]
        rows.append(head_row(what, n, "causal: " + ", ".join(source_words[s] for s in srcs) +
                             "; routes with other heads / MLPs frozen",
                             {k: main[k] for k in ("value", "lo", "hi", "n")}, main["verdict"], " | ".join(notes)))
        rows[-1]["sources"] = srcs
    if not any(conf.values()):
        rows.append({"role": "causally relevant head", "head": None, "verdict": "none found",
                     "evidence": "no head's mean ablation or patching from ABC / swapped is confirmed",
                     "effect": None, "note": ""})
    for comp, v in out["components"].items():
        if comp.startswith("MLP") and v["direct_verdict"]["verdict"] == "confirmed":
            rows.append({"role": "writes the answer (direct effect)", "head": comp,
                         "evidence": "MLP output at END minus its reference mean, through W_U[IO] − W_U[S]",
                         "effect": v["direct"], "verdict": "confirmed", "note": ""})
    pp = out["path_patching"]
    movers_named = out["receivers"]["kind"] == "name movers"
    if "name_movers" in pp:
        senders = pp["name_movers"]["sources"]["abc"]["senders"]
        target = "name movers'" if movers_named else "name-attending heads' (candidates)"
        for n in s_inh:
            r = senders[n]
            sw = pp["name_movers"]["sources"]["swapped"]["senders"].get(n, {}).get("q")
            rows.append(head_row("S-inhibition" if movers_named else "S-inhibition (into candidates)", n,
                                 f"path patching ABC → {target} queries (k, v smaller)",
                                 {k: r["q"][k] for k in ("value", "lo", "hi", "n")}, r["q"]["verdict"],
                                 f"k {_fmt(r['k'])}, v {_fmt(r['v'])}"
                                 + (f"; from the swapped prompt q {_fmt(sw)}" if sw else "")))
        if not s_inh:
            best = _best(senders, lambda r: r["q"]["value"])
            rows.append({"role": "S-inhibition", "head": None, "verdict": "none found",
                         "evidence": f"no sender's path into the {target} queries is confirmed",
                         "effect": {k: best[1]["q"][k] for k in ("value", "lo", "hi", "n")} if best else None,
                         "note": f"largest query-path effect: {best[0]} {_fmt(best[1]['q'])}" if best else ""})
        other = [n for n, r in senders.items() if n not in s_inh
                 and any(r[p]["verdict"] == "confirmed" for p in ("k", "v"))]
        for n in other:
            r = senders[n]
            p = max(("k", "v"), key=lambda p: r[p]["value"])
            rows.append(head_row(f"feeds {target} {'keys' if p == 'k' else 'values'}", n,
                                 f"path patching ABC → {target} {p}", {k: r[p][k] for k in ("value", "lo", "hi", "n")},
                                 r[p]["verdict"], f"q {_fmt(r['q'])}, k {_fmt(r['k'])}, v {_fmt(r['v'])}"))
    if "s_inhibition" in pp:
        senders = pp["s_inhibition"]["sources"]["abc"]["senders"]
        for n in feeders:
            r = senders[n]
            p = max(PATHS, key=lambda p: r[p]["value"])
            a = table[n]["attention"]
            kind = ("duplicate token" if a["s2_s1"]["value"] >= max(a["s2_s1p1"]["value"], 0.2) else
                    "induction" if a["s2_s1p1"]["value"] >= 0.2 else "feeds S-inhibition (no duplicate/induction "
                    "attention)")
            rows.append(head_row(kind, n, f"path patching ABC → S-inhibition heads' {p}; attention S2→S1 / S1+1",
                                 {k: r[p][k] for k in ("value", "lo", "hi", "n")}, r[p]["verdict"],
                                 f"q {_fmt(r['q'])}, k {_fmt(r['k'])}, v {_fmt(r['v'])}"))
        if not feeders:
            rows.append({"role": "duplicate token / induction", "head": None, "verdict": "none found",
                         "evidence": "no head in an earlier layer changes the S-inhibition heads' inputs",
                         "effect": None, "note": ""})
    elif s_inh:
        rows.append({"role": "duplicate token / induction", "head": None, "verdict": "not testable",
                     "evidence": "an S-inhibition head is in layer 0: no earlier head can feed it", "effect": None,
                     "note": ""})
    if "backup" in out and not movers_named:
        bk = out["backup"]
        rows.append({"role": "name-attending heads (candidates), ablated together", "head": ", ".join(bk["ablated"]),
                     "evidence": "joint mean ablation; END attends IO and S1 about equally, no confirmed direct "
                                 "effect", "effect": bk["metric_drop"], "verdict": bk["metric_drop_verdict"]["verdict"],
                     "note": f"their summed direct effect {_fmt(bk['direct_of_movers'])}"})
    if "backup" in out and movers_named:
        rises = out["backup"]["rise"]
        for n in backup:
            rows.append(head_row("backup name mover", n, "direct effect rises when the name movers are mean-ablated",
                                 rises[n], rises[n]["verdict"]))
        if not backup:
            best = _best(rises, lambda d: d["value"])
            rows.append({"role": "backup name mover", "head": None, "verdict": "none found",
                         "evidence": f"ablating {', '.join(out['backup']['ablated'])} raises no other head's direct "
                                     f"effect by ≥ {minimum:.3f} with an interval above zero",
                         "effect": {k: best[1][k] for k in ("value", "lo", "hi", "n")} if best else None,
                         "note": f"largest rise: {best[0]} {_fmt(best[1])}" if best else ""})
    return rows


def _features(rm, hm, ev, cleans, roles) -> dict:
    """For each role head: the attention-SAE features of its layer that carry its effect."""
    out = {}
    for row in roles:
        n = row.get("head")
        if n is None or n in out or not re.fullmatch(r"L\d+H\d+", n):
            continue
        layer, head = _parse_head(n)
        sae = rm.attention_saes.get(layer)
        if sae is None:
            continue
        direct = row["role"] in ("name mover", "negative name mover", "backup name mover",
                                 "direct writer (not IO-attending)")
        at = "S2" if row["role"] in ("duplicate token", "induction") else "END"
        source = row.get("sources", ["abc"])[0]
        fsum, esum, total = None, 0.0, 0.0
        for b, c in zip(ev, cleans, strict=True):
            pos = b.end if at == "END" else b.pos["S2"]
            z = c.z[b.rows, pos, layer]  # [B, H, d]
            if direct:
                zref = c.zbar[b.rows, pos, layer]
                direction = _logit_directions(hm, b, c.lnf)
            elif source == "mean":
                zref = c.zbar[b.rows, pos, layer]
                direction = None
            else:
                zref = z
                z = c.source_z[source][b.rows, pos, layer]
                direction = None
            f, e = _feature_parts(sae, layer, head, hm, z, zref, direction)
            fsum = f.sum(0) if fsum is None else fsum + f.sum(0)
            esum += float(e.sum())
            total += float(f.sum() + e.sum())
        n_prompts = sum(b.tokens.shape[0] for b in ev)
        order = torch.argsort(-fsum.abs(), stable=True)[:TOP_FEATURES].tolist()
        out[n] = {
            "role": row["role"], "position": at,
            "quantity": ("direct effect (z − z̄ at END, through W_O and W_U)" if direct else
                         f"output change {'clean → reference mean' if source == 'mean' else 'clean → ' + source} "
                         "(z·W_O), projected on itself (shares sum to 1)"),
            "total": total / n_prompts, "error_part": esum / n_prompts,
            "top": [{"feature": f"A{layer}#{i}", "part": float(fsum[i]) / n_prompts,
                     "share": float(fsum[i]) / total if total else float("nan")} for i in order],
        }
    return out


# -- Markdown -------------------------------------------------------------------------------------------------------


def render_head_section(data: dict) -> str:
    """The head analysis as a Markdown section of a study report."""
    m = data["metric"]
    lines = [
        "## Heads: component-level causal analysis (Wang et al. 2022, adapted)",
        "",
        f"Evaluation prompts: {data['n_evaluation']}; reference prompts (ablation means only): "
        f"{data['n_reference']}. Intervals: 95% paired bootstrap over prompts.",
        "",
        f"- **Mean ablation** of each head's `hook_z`: {data['convention']}. Effect = drop of the mean of "
        "logit(IO) − logit(S); baseline = " + data["baseline"]["how"] + f" ({_fmt(data['baseline'])}).",
        "- **Direct effect**: the head's (z − z̄) at END through W_O, the final LayerNorm (scale frozen) and "
        "W_U[IO] − W_U[S].",
        "- **Path patching**: a sender's z from the ABC prompt (S2 replaced) or the IO/S-swapped prompt, every other "
        "head frozen at clean (MLPs recomputed), reaching only the receivers' query / key / value inputs.",
        "- **Verdict**: confirmed = interval above zero (and above the baseline for ablations) and effect ≥ 10% of "
        "the clean metric (of the source's total effect for path patching).",
        "",
        f"Metric: clean {_fmt(m['clean'])}; ABC {_fmt(m['abc'])}; swapped {_fmt(m['swapped'])}.",
        "",
        "### Role table",
        "",
        "| role | head | evidence | effect [95% CI] | verdict | mean-ablation drop | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["roles"]:
        eff = _fmt(r["effect"]) if r.get("effect") else "–"
        abl = f"{_fmt(r['ablation'])} ({r['ablation_verdict']})" if r.get("ablation") else "–"
        note = "; ".join(x for x in (r.get("note", ""), r.get("attention", "")) if x)
        lines.append(f"| {r['role']} | {r['head'] or '—'} | {r['evidence']} | {eff} | {r['verdict']} | {abl} | "
                     f"{note} |")
    lines += ["", "### Every head", "",
              "| head | ablation drop | verdict | direct effect | END→IO | END→S1 | END→S2 | S2→S1 | S2→S1+1 | prev |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for n, t in data["heads"].items():
        a = t["attention"]
        lines.append(f"| {n} | {_fmt(t['ablation'])} | {t['ablation_verdict']['verdict']} | {_fmt(t['direct'])} | "
                     + " | ".join(f"{a[k]['value']:.2f}" for k in ATTENTION_STATS) + " |")
    movers_title = ("into the name movers" if data.get("receivers", {}).get("kind") == "name movers"
                    else "into the name-attending heads (candidates; no name mover is confirmed)")
    for key, title in (("name_movers", movers_title), ("s_inhibition", "into the S-inhibition heads")):
        pp = data["path_patching"].get(key)
        if not pp:
            continue
        lines += ["", f"### Path patching {title} ({', '.join(pp['receivers'])})", ""]
        for s, res in pp["sources"].items():
            lines += [f"Source: {SOURCES[s]}; total effect m(clean) − m(source) = {_fmt(res['total'])}.", "",
                      "| sender | → queries | → keys | → values |", "|---|---|---|---|"]
            ranked = sorted(res["senders"].items(), key=lambda kv: -max(abs(kv[1][p]["value"]) for p in PATHS))
            for n, row in ranked:
                cells = [f"{_fmt(row[p])}{' ✓' if row[p]['verdict'] == 'confirmed' else ''}" for p in PATHS]
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            if res.get("screened_out"):
                lines += [f"Not path-patched (activation patching below the screen): {', '.join(res['screened_out'])}.",
                          ""]
            lines.append("")
    if "backup" in data:
        b = data["backup"]
        who = "name movers" if b.get("kind") == "name movers" else "name-attending heads (candidates)"
        lines += ["### Backup", "",
                  f"Mean-ablating the {who} ({', '.join(b['ablated'])}) together drops the metric by "
                  f"{_fmt(b['metric_drop'])}; their summed direct effect is {_fmt(b['direct_of_movers'])}. "
                  "Largest rises of another head's direct effect:", "",
                  "| head | rise | verdict |", "|---|---|---|"]
        for n, r in sorted(b["rise"].items(), key=lambda kv: -kv[1]["value"])[:5]:
            lines.append(f"| {n} | {_fmt(r)} | {r['verdict']} |")
        lines.append("")
    if data.get("features"):
        lines += ["### Attention-SAE features of the role heads", "",
                  "Each role head's slice of z decomposed as (codes × decoder rows) + SAE error; part = a feature's "
                  "share of the quantity named (mean over prompts).", "",
                  "| head | role | at | quantity | total | error part | top features (part, share) |",
                  "|---|---|---|---|---|---|---|"]
        for n, f in data["features"].items():
            top = ", ".join(f"{t['feature']} ({t['part']:.3f}, {t['share']:.0%})" for t in f["top"])
            lines.append(f"| {n} | {f['role']} | {f['position']} | {f['quantity']} | {f['total']:.3f} | "
                         f"{f['error_part']:.3f} | {top} |")
        lines.append("")
    return "\n".join(lines) + "\n"
