"""Splicing dictionaries into a model, with or without their error terms.

For each dictionary in the splice, the forward pass takes the dictionary input at ``hook_in`` and replaces the
activation at ``hook_out`` by

    output = decode(encode(input))            (error off: the dictionary alone)
    output + (original − output) = original   (error on: exact, the error node is ``original − output``)

Transcoders read ``ln2.hook_normalized`` and replace ``hook_mlp_out`` later in the same block (a skip transcoder's
output includes its skip term ``x @ W_skip.T``; a cross-layer transcoder's layer l' output sums the decoders of
every encoder layer l ≤ l', whose codes come from the same forward pass); attention SAEs read and replace
``attn.hook_z`` (flattened over heads), so their error ``z − ẑ`` flows through W_O like everything else.
With errors on, logits equal the original model's to float precision — the first invariant of the product.

Normalisation (`ReplacementModel.frozen`): LayerNorm (``P x / σ · γ + β``, P the centring) and RMSNorm (``x / σ · w``,
no centring, no bias: Gemma-2, Llama-3, Qwen3) are both linear once their per-position scale σ is held. Gemma-2's
norms after attention and after the MLP (``ln1_post``, ``ln2_post``) are held the same way, so what attention writes
at position p is ``(z W_O + b_O) · w1_post / σ1_post[p]`` — a linear, position-dependent scale on written vectors
(`ReplacementModel.attn_out_scale`). A transcoder replaces the whole MLP (``ln2_post`` included: it predicts
``hook_mlp_out``).

`ablation_hooks` gives the comparison points used by fidelity reports: a component zero-ablated or replaced by its
mean activation over a reference corpus.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from circuits.dictionaries.base import Dictionary
from circuits.errors import AttributionError, CircuitsError
from circuits.inputs import check_text, whitespace_problem
from circuits.model import (
    hook_attn_pattern,
    hook_attn_z,
    hook_k_norm_scale,
    hook_ln1_post_scale,
    hook_ln1_scale,
    hook_ln2_normalized,
    hook_ln2_post_scale,
    hook_ln2_scale,
    hook_ln_final_scale,
    hook_mlp_out,
    hook_q_norm_scale,
    hook_resid_mid,
    hook_resid_post,
    hook_resid_pre,
)

Hook = tuple[str, Callable]
ErrorMode = Literal["on", "off"]


def dictionary_hooks(dictionaries: Iterable[Dictionary],
                     replace: Callable[[Dictionary, Tensor, Tensor], Tensor]) -> list[Hook]:
    """TransformerLens (name, fn) hooks that hand each dictionary its input and let `replace` rewrite its output.

    ``replace(d, x, act)`` gets the flattened dictionary input x (read at ``d.hook_in`` earlier in the same forward
    pass, or at ``hook_out`` itself for an attention SAE) and the activation at ``d.hook_out``, and returns the new
    activation. The one place where a dictionary's input is captured and its output site rewritten (splicing here,
    fine-tuning in `dictionaries.finetune`)."""
    hooks: list[Hook] = []
    for d in dictionaries:
        captured: dict[str, Tensor] = {}

        def capture(act, hook, d=d, captured=captured):
            captured["x"] = d.flatten_input(act)
            return act

        def rewrite(act, hook, d=d, captured=captured):
            x = captured.pop("x") if "x" in captured else d.flatten_input(act)
            return replace(d, x, act)

        if d.hook_in != d.hook_out:
            hooks.append((d.hook_in, capture))
        hooks.append((d.hook_out, rewrite))
    return hooks


def splice_hooks(dictionaries: Iterable[Dictionary], error: ErrorMode = "off",
                 store: dict | None = None, outputs: dict | None = None) -> list[Hook]:
    """TransformerLens (name, fn) hooks that splice each dictionary in.

    If `store` is a dict, it receives ``store[name] = (codes [batch, pos, d_sae], error [batch, pos, d_out])``;
    if `outputs` is a dict, ``outputs[name]`` = the reconstruction [batch, pos, d_out] (skip term and a CLT's
    earlier layers included), so that ``outputs[name] + error`` is the original activation.
    """
    dictionaries = list(dictionaries)
    upstream = clt_upstream(dictionaries)

    def replace(d: Dictionary, x: Tensor, act: Tensor) -> Tensor:
        x = x.to(d.W_enc.dtype)
        codes = d.encode(x)
        out = reconstruct(d, codes, x, upstream).to(act.dtype)
        original = d.flatten_input(act)
        err = original - out
        if store is not None:
            store[d.cfg.name] = (codes, err)
        if outputs is not None:
            outputs[d.cfg.name] = out
        new = out + err if error == "on" else out
        return d.unflatten_output(new)

    return dictionary_hooks(dictionaries, replace)


def reads_residual(d: Dictionary) -> bool:
    """Whether transcoder `d` reads the raw residual stream before the MLP's norm (``hook_resid_mid``, as
    circuit-tracer's CLTs may) instead of ``ln2.hook_normalized``: its encoder then reads ``x`` itself, with no
    centring and no 1/σ — in the frozen model a read vector ``W_enc`` rather than ``P W_enc / σ2[p]``
    (`circuits.dictionaries.public_sets.read_residual`)."""
    return d.hook_in == hook_resid_mid(d.cfg.layer)


def clt_upstream(dictionaries: Iterable[Dictionary]) -> dict[int, dict[int, Tensor]]:
    """Per cross-layer transcoder among `dictionaries` (keyed by id), an empty layer -> codes table that the hooks of
    one forward pass fill in layer order. Raises unless every CLT enters with all its layers."""
    from circuits.dictionaries.clt import CLTLayer

    tables: dict[int, dict[int, Tensor]] = {}
    names = {d.cfg.name for d in dictionaries}
    for d in dictionaries:
        if isinstance(d, CLTLayer) and id(d.clt) not in tables:
            missing = [layer.cfg.name for layer in d.clt.layers if layer.cfg.name not in names]
            if missing:
                raise AttributionError(f"a cross-layer transcoder is spliced whole; missing its layers {missing}")
            tables[id(d.clt)] = {}
    return tables


def reconstruct(d: Dictionary, codes: Tensor, x: Tensor, upstream: dict[int, dict[int, Tensor]]) -> Tensor:
    """A dictionary's output from its codes and input in one forward pass; a CLT layer records its codes in
    `upstream` (from `clt_upstream`) and sums the decoders of its CLT's earlier layers."""
    from circuits.dictionaries.clt import CLTLayer

    if isinstance(d, CLTLayer):
        table = upstream[id(d.clt)]
        table[d.cfg.layer] = codes
        return d.reconstruct(codes, x, table)
    return d.reconstruct(codes, x)


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


# ---------------------------------------------------------------------------------------------------------------
# The replacement model: a model plus any subset of its dictionaries, exact through error terms
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ReplacementCache:
    """Everything one exact forward pass of the replacement model leaves behind (one prompt, batch 1).

    Dimension names: pos (prompt positions, BOS at 0), d_model, n_heads, d_head, d_sae, vocab.
    """

    tokens: Tensor  # [pos] long
    logits: Tensor  # [pos, vocab]
    codes: dict[str, Tensor]  # dictionary name -> [pos, d_sae] sparse codes (dense storage)
    errors: dict[str, Tensor]  # dictionary name -> [pos, d_out] error term in the dictionary's own space
    error_writes: dict[str, Tensor]  # site name ("attn_L", "mlp_L") -> [pos, d_model] error written to the residual
    pre_activations: dict[str, Tensor]  # dictionary name -> [pos, d_sae] encoder pre-activations
    patterns: list[Tensor]  # per layer [n_heads, pos(query), pos(key)]
    ln1_scale: list[Tensor]  # per layer [pos] (LayerNorm or RMSNorm σ; ones without a norm)
    ln2_scale: list[Tensor]  # per layer [pos]
    lnf_scale: Tensor  # [pos]
    resid_pre: list[Tensor]  # per layer [pos, d_model]
    resid_mid: list[Tensor]  # per layer [pos, d_model]
    resid_final: Tensor  # [pos, d_model] (input of ln_final)
    hook_values: dict[str, Tensor] = field(default_factory=dict)  # raw cached hook activations (batch 1 removed)
    attn_post_scale: list[Tensor] = field(default_factory=list)  # Gemma-2: per layer [pos] σ of ln1_post
    mlp_post_scale: list[Tensor] = field(default_factory=list)  # Gemma-2: per layer [pos] σ of ln2_post
    q_norm_scale: list[Tensor] = field(default_factory=list)  # Qwen3: per layer [pos, n_heads] σ of the QK-norm of q
    k_norm_scale: list[Tensor] = field(default_factory=list)  # Qwen3: per layer [pos, n_kv_heads] σ of k's QK-norm

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])


def site_name(kind: str, layer: int) -> str:
    """Residual-stream write site of a sublayer: ``attn_L`` or ``mlp_L``."""
    return f"{kind}_{layer}"


class ReplacementModel:
    """A HookedTransformer with transcoders and attention SAEs spliced in, exact through their error terms.

    ``run(prompt)`` does one exact forward pass and returns a `ReplacementCache`; ``frozen(cache)`` is a scoped
    context in which the model's LayerNorm scales and attention patterns are held at the cached values, which
    makes the model (with dictionary codes held fixed) the linear *local replacement model* of attribution.
    """

    def __init__(self, model, dictionaries, name: str | None = None):
        from circuits.dictionaries.dictset import DictionarySet
        from circuits.model import LoadedModel

        if isinstance(model, LoadedModel):  # load_model's pair, as returned: its model
            model = model.model
        if not hasattr(model, "cfg") or not hasattr(model, "run_with_hooks"):
            raise CircuitsError(f"model is a {type(model).__name__}, not a TransformerLens HookedTransformer; give "
                                "the model from `model, _ = load_model(...)`")
        if dictionaries is None or isinstance(dictionaries, str | Path):
            raise CircuitsError(f"dictionaries is {dictionaries!r}; give a loaded set: load_dictionaries(name, model)")
        dset = dictionaries if isinstance(dictionaries, DictionarySet) else DictionarySet(
            "custom", {d.cfg.name: d for d in dictionaries})
        dset.check_against(model)
        self.model = model
        self.dictionaries = dset
        self.name = name or (dset.model_name if dset.model_name != "custom" else model.cfg.model_name)
        self.cfg = model.cfg
        self.n_layers = model.cfg.n_layers
        self.transcoders: dict[int, Dictionary] = {}
        self.attention_saes: dict[int, Dictionary] = {}
        for d in dset:
            (self.transcoders if d.cfg.kind == "transcoder" else self.attention_saes)[d.cfg.layer] = d

    # -- input checks -------------------------------------------------------------------------------------------

    def tokenize(self, prompt: str | Tensor) -> Tensor:
        """Prompt text (BOS prepended) or a 1-D token tensor → [pos] tokens, with clear errors for bad input."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise AttributionError("the prompt is empty; give at least one word")
            check_text(prompt, "the prompt")
            specials = [t for t in getattr(getattr(self.model, "tokenizer", None), "all_special_tokens", []) or []
                        if t and t in prompt]
            if specials:
                warnings.warn(f"the prompt contains the literal text {', '.join(map(repr, specials))}, which the "
                              "tokenizer reads as the special token itself (the BOS is added already); remove it if "
                              "you meant ordinary text", stacklevel=2)
            tokens = self.model.to_tokens(prompt, truncate=False)[0]
        else:
            if prompt is None or isinstance(prompt, bytes | dict | set):
                raise AttributionError(f"the prompt is a {type(prompt).__name__}; give text or a 1-D tensor of token "
                                       "ids")
            try:
                raw = torch.as_tensor(prompt if not isinstance(prompt, range) else list(prompt))
            except (TypeError, ValueError, RuntimeError):
                raise AttributionError("the prompt is not a sequence of token ids; give text or a 1-D tensor of "
                                       "token ids") from None
            if raw.numel() == 0:
                raise AttributionError("the prompt is empty; give at least one token")
            if raw.is_floating_point() or raw.is_complex() or raw.dtype == torch.bool:
                raise AttributionError(f"the prompt's token ids are {raw.dtype}; give integer ids (a LongTensor)")
            if raw.dim() == 0:  # one token id
                raw = raw.reshape(1)
            if raw.dim() == 2 and raw.shape[0] == 1:
                raw = raw[0]  # model.to_tokens(prompt): a batch of one
            if raw.dim() != 1:
                raise AttributionError(f"the prompt's token tensor has shape {tuple(raw.shape)}; give one prompt as a "
                                       "1-D tensor (or [1, pos]); attribute prompts one at a time")
            tokens = raw.long()
            bad = tokens[(tokens < 0) | (tokens >= self.cfg.d_vocab)]
            if bad.numel():
                raise AttributionError(f"token id {int(bad[0])} is outside the vocabulary (0 to "
                                       f"{self.cfg.d_vocab - 1})")
        unk = getattr(getattr(self.model, "tokenizer", None), "unk_token_id", None)
        if isinstance(prompt, str) and unk is not None and bool((tokens == unk).any()):
            problem = whitespace_problem(prompt, lambda t: self.model.to_tokens(t, prepend_bos=False)[0].tolist()
                                         if t else [], unk)
            if problem:
                raise AttributionError(problem)
        if unk is not None and bool((tokens == unk).any()):
            warnings.warn(f"the prompt has unknown words (mapped to the unknown token): {_unknown_words(self.model, prompt, tokens, unk)}; "
                          "the model has no embedding for them: replace them with words it knows", stacklevel=2)
        n_ctx = self.cfg.n_ctx
        if tokens.shape[0] > n_ctx:
            raise AttributionError(f"the prompt has {tokens.shape[0]} tokens (BOS included) but the model's context "
                                   f"is {n_ctx}; shorten the prompt")
        longest = min((d.context_size for d in self.dictionaries), default=n_ctx)
        if tokens.shape[0] > longest:
            warnings.warn(f"the prompt has {tokens.shape[0]} tokens but a dictionary was trained on contexts of "
                          f"{longest}; features beyond that are less reliable", stacklevel=2)
        return tokens.to(self.cfg.device)

    # -- the exact forward pass ---------------------------------------------------------------------------------

    @torch.no_grad()
    def run(self, prompt: str | Tensor) -> ReplacementCache:
        """One exact forward pass (dictionaries spliced with error terms); caches what attribution needs."""
        tokens = self.tokenize(prompt)
        store: dict = {}
        names = set()
        for layer in range(self.n_layers):
            names |= {hook_attn_pattern(layer), hook_resid_pre(layer), hook_attn_z(layer)}
            if self.has_mlp:
                names |= {hook_resid_mid(layer), hook_mlp_out(layer), hook_ln2_normalized(layer)}
            if self.has_norm:
                names |= {hook_ln1_scale(layer)} | ({hook_ln2_scale(layer)} if self.has_mlp else set())
            if self.has_post_norm:
                names |= {hook_ln1_post_scale(layer)} | ({hook_ln2_post_scale(layer)} if self.has_mlp else set())
            if self.has_qk_norm:
                names |= {hook_q_norm_scale(layer), hook_k_norm_scale(layer)}
        names.add(hook_resid_post(self.n_layers - 1))
        if self.has_norm:
            names.add(hook_ln_final_scale())
        values: dict[str, Tensor] = {}

        def keep(act, hook):  # batch 1 removed; QK-norm scales have rows [pos * heads] for batch 1 already
            values[hook.name] = (act if hook.name.endswith("_norm.hook_scale") else act[0]).detach()

        hooks = splice_hooks(self.dictionaries, "on", store) + [(n, keep) for n in sorted(names)]
        logits = self.model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0]
        n = tokens.shape[0]
        ones = torch.ones(n, dtype=logits.dtype, device=logits.device)
        scale = (lambda name: values[name].reshape(n)) if self.has_norm else (lambda name: ones)
        codes, errors, error_writes, pre = {}, {}, {}, {}
        for d in self.dictionaries:
            c, e = store[d.cfg.name]
            codes[d.cfg.name], errors[d.cfg.name] = c[0], e[0]
            x = d.flatten_input(values[d.hook_in])
            pre[d.cfg.name] = d.pre_activation(x.to(d.W_enc.dtype))
        for layer in range(self.n_layers):
            sae = self.attention_saes.get(layer)
            if sae is not None:
                write = errors[sae.cfg.name].to(self.W_O_cat(layer).dtype) @ self.W_O_cat(layer)
                if self.has_post_norm:
                    write = write * self._post_factor("ln1_post", layer, values[hook_ln1_post_scale(layer)].reshape(n))
                error_writes[site_name("attn", layer)] = write
            if self.has_mlp:
                tc = self.transcoders.get(layer)
                mlp_out = values[hook_mlp_out(layer)]
                error_writes[site_name("mlp", layer)] = errors[tc.cfg.name] if tc is not None else mlp_out
        after = [values[hook_resid_pre(layer + 1)] for layer in range(self.n_layers - 1)]
        after.append(values[hook_resid_post(self.n_layers - 1)])
        return ReplacementCache(
            tokens=tokens, logits=logits, codes=codes, errors=errors, error_writes=error_writes,
            pre_activations=pre,
            patterns=[values[hook_attn_pattern(layer)] for layer in range(self.n_layers)],
            ln1_scale=[scale(hook_ln1_scale(layer)) for layer in range(self.n_layers)],
            ln2_scale=[scale(hook_ln2_scale(layer)) if self.has_mlp else ones for layer in range(self.n_layers)],
            lnf_scale=scale(hook_ln_final_scale()),
            resid_pre=[values[hook_resid_pre(layer)] for layer in range(self.n_layers)],
            resid_mid=[values[hook_resid_mid(layer)] if self.has_mlp else after[layer] for layer in range(self.n_layers)],
            resid_final=values[hook_resid_post(self.n_layers - 1)],
            hook_values=values,
            attn_post_scale=[values[hook_ln1_post_scale(layer)].reshape(n) for layer in range(self.n_layers)]
            if self.has_post_norm else [],
            mlp_post_scale=[values[hook_ln2_post_scale(layer)].reshape(n) for layer in range(self.n_layers)]
            if self.has_post_norm and self.has_mlp else [],
            q_norm_scale=[values[hook_q_norm_scale(layer)].reshape(n, -1) for layer in range(self.n_layers)]
            if self.has_qk_norm else [],
            k_norm_scale=[values[hook_k_norm_scale(layer)].reshape(n, -1) for layer in range(self.n_layers)]
            if self.has_qk_norm else [],
        )

    @torch.no_grad()
    def codes_and_errors(self, tokens: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Codes [batch, pos, d_sae] and errors [batch, pos, d_out] of every dictionary for a batch of prompts of
        one length, tokens [batch, pos]: row i equals `run`'s ``codes`` / ``errors`` for ``tokens[i]`` (the same
        exact splice, one forward pass for the batch; what mean ablation over many prompts needs)."""
        if tokens.ndim != 2:
            raise AttributionError(f"codes_and_errors takes tokens [batch, pos], not shape {tuple(tokens.shape)}")
        store: dict = {}
        self.model.run_with_hooks(tokens.to(self.cfg.device), fwd_hooks=splice_hooks(self.dictionaries, "on", store))
        return ({d.cfg.name: store[d.cfg.name][0] for d in self.dictionaries},
                {d.cfg.name: store[d.cfg.name][1] for d in self.dictionaries})

    # -- the frozen (linear) model ------------------------------------------------------------------------------

    @contextmanager
    def frozen(self, cache: ReplacementCache):
        """Hold normalisation scales (LayerNorm / RMSNorm, Gemma-2's post-norms and Qwen3's QK-norms too) and attention
        patterns at `cache`'s values inside the block.

        Batches of any size are accepted (the cached values broadcast over the batch). The prompt must have the
        cache's length. With nothing else changed, a forward pass inside equals the clean forward pass.
        """
        n = cache.n_pos
        hooks: list[Hook] = []

        def hold(value: Tensor):
            def fn(act, hook):
                if act.shape[-2 if act.ndim == 3 else -1] != n:
                    raise AttributionError(f"frozen model: prompt length {act.shape} does not match the cache ({n})")
                return value.to(act.dtype).expand_as(act)
            return fn

        for layer in range(self.n_layers):
            hooks.append((hook_attn_pattern(layer), hold(cache.patterns[layer][None])))
            if self.has_norm:
                hooks.append((hook_ln1_scale(layer), hold(cache.ln1_scale[layer].reshape(1, n, 1))))
                if self.has_mlp:
                    hooks.append((hook_ln2_scale(layer), hold(cache.ln2_scale[layer].reshape(1, n, 1))))
            if self.has_post_norm:
                hooks.append((hook_ln1_post_scale(layer), hold(cache.attn_post_scale[layer].reshape(1, n, 1))))
                if self.has_mlp:
                    hooks.append((hook_ln2_post_scale(layer), hold(cache.mlp_post_scale[layer].reshape(1, n, 1))))
            if self.has_qk_norm:  # rows of [batch * pos * heads, 1]: the cached [pos, heads] repeated per batch row
                for name, value in ((hook_q_norm_scale(layer), cache.q_norm_scale[layer]),
                                    (hook_k_norm_scale(layer), cache.k_norm_scale[layer])):
                    hooks.append((name, lambda act, hook, v=value: v.reshape(1, -1).to(act.dtype).expand(
                        act.shape[0] // v.numel(), -1).reshape(act.shape)))
        if self.has_norm:
            hooks.append((hook_ln_final_scale(), hold(cache.lnf_scale.reshape(1, n, 1))))
        with self.model.hooks(fwd_hooks=hooks):
            yield self

    # -- weights in the residual basis --------------------------------------------------------------------------

    @property
    def has_mlp(self) -> bool:
        return not getattr(self.cfg, "attn_only", False)

    @property
    def has_norm(self) -> bool:
        """Whether the blocks normalise their inputs (LayerNorm or RMSNorm, with scale hooks)."""
        return self.cfg.normalization_type in ("LN", "LNPre", "RMS", "RMSPre")

    @property
    def has_ln(self) -> bool:
        """Whether the normalisation centres (LayerNorm: ``P = I − 11ᵀ/d`` before the scale); RMSNorm does not."""
        return self.cfg.normalization_type in ("LN", "LNPre")

    @property
    def has_qk_norm(self) -> bool:
        """Qwen3: RMS-normalised queries and keys per head (frozen like the other norms; QK side only)."""
        return bool(getattr(self.cfg, "use_qk_norm", False))

    @property
    def has_post_norm(self) -> bool:
        """Gemma-2: norms after attention and the MLP (``ln1_post``, ``ln2_post``), frozen like the others."""
        return bool(getattr(self.cfg, "use_normalization_before_and_after", False))

    def center(self, x: Tensor, dim: int = -1) -> Tensor:
        """``P x`` along `dim` for a centring LayerNorm; x itself for RMSNorm or no norm."""
        return x - x.mean(dim, keepdim=True) if self.has_ln else x

    def _post_factor(self, which: str, layer: int, sigma: Tensor) -> Tensor:
        """[pos, d_model]: ``w / σ[p]`` of post-norm `which` of `layer` (frozen: a linear scale on what the sublayer
        writes); σ [pos]."""
        w = getattr(self.model.blocks[layer], which).w
        return w.to(sigma.dtype)[None, :] / sigma[:, None]

    def attn_out_scale(self, cache: ReplacementCache, layer: int) -> Tensor | None:
        """[pos, d_model]: the frozen ``ln1_post`` factor ``w / σ[p]`` on what attention `layer` writes at p (Gemma-2),
        or None when attention writes ``z W_O + b_O`` directly."""
        if not self.has_post_norm:
            return None
        return self._post_factor("ln1_post", layer, cache.attn_post_scale[layer])

    def W_O_cat(self, layer: int) -> Tensor:
        """[n_heads * d_head, d_model]: attention output weights with heads concatenated (hook_z order)."""
        W_O = self.model.blocks[layer].attn.W_O
        return W_O.reshape(-1, W_O.shape[-1])

    def ln_weights(self, which: str, layer: int | None = None) -> tuple[Tensor, Tensor]:
        """(γ, β) of a LayerNorm ('ln1', 'ln2', 'ln_final'); ones and zeros for LNPre or no LayerNorm."""
        module = self.model.ln_final if which == "ln_final" else getattr(self.model.blocks[layer], which)
        d = self.cfg.d_model
        dtype = self.model.W_E.dtype
        w = getattr(module, "w", None)
        b = getattr(module, "b", None)
        return (w if w is not None else torch.ones(d, dtype=dtype, device=self.model.W_E.device),
                b if b is not None else torch.zeros(d, dtype=dtype, device=self.model.W_E.device))


def _unknown_words(model, prompt, tokens: torch.Tensor, unk: int, shown: int = 8) -> str:
    """``'cat' at 2, 'sat' at 3`` for the first `shown` unknown tokens of a prompt (then ``and N more``): the words
    from the tokenizer's offsets when the prompt is text and the tokenizer gives them, else positions only."""
    where = torch.nonzero(tokens == unk).flatten().tolist()
    words: list[str | None] = [None] * len(where)
    if isinstance(prompt, str):
        try:
            enc = model.tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=False)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            shift = len(tokens) - len(ids)  # the BOS the model prepends
            if shift >= 0 and ids == tokens[shift:].tolist():
                words = [prompt[slice(*offsets[p - shift])].strip() if p >= shift else None for p in where]
        except (TypeError, KeyError, NotImplementedError, ValueError):
            pass  # a tokenizer without offsets: positions only
    parts = [f"{w!r} at {p}" if w else f"position {p}" for w, p in zip(words, where, strict=True)][:shown]
    more = f" and {len(where) - shown} more" if len(where) > shown else ""
    return ", ".join(parts) + more

