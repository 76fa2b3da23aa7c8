"""What a graph explains: attribution targets and the residual-stream direction each one reads.

A target is one of

* `TopLogits` — the salient next-token logits: the smallest set of top tokens whose probabilities sum to at least
  ``cum_prob``, at most ``max_logits`` of them, each weighted by its probability in pruning;
* `Logit` — named tokens' logits (weight 1 each unless given);
* `Contrast` — "token A minus token B", the IOI-style logit difference (weight 1);
* `FeatureTarget` — one active feature (a local circuit: what drives this feature).

Logit targets read the final residual stream at the last position through the frozen final LayerNorm:
``logit_t = (γf ⊙ P x / σf + βf) · W_U[:, t] + b_U[t]``; a contrast uses ``W_U[:, a] − W_U[:, b]``. With
``demean=True`` each unembedding column has its mean over the vocabulary removed (as circuit-tracer does), which
explains ``logit_t − mean(logits)`` instead of the raw logit.

Soft-capped logits (Gemma-2: ``30·tanh(l / 30)``): the cap is a monotone function applied after the unembedding, so a
logit target is the logit *before* the cap, ``l = c·atanh(capped / c)`` — the quantity that is linear in the frozen
residual stream. Probabilities (the TopLogits choice and weights) come from the model's real, capped logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.errors import ConfigError
from circuits.graph import Node


@dataclass(frozen=True)
class TopLogits:
    cum_prob: float = 0.95
    max_logits: int = 10

    def __post_init__(self):
        if not 0 < self.cum_prob <= 1:
            raise ConfigError(f"cum_prob must be in (0, 1], got {self.cum_prob}")
        if self.max_logits < 1:
            raise ConfigError(f"max_logits must be at least 1, got {self.max_logits}")


@dataclass(frozen=True)
class Logit:
    tokens: tuple[str | int, ...]
    weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Contrast:
    token: str | int
    baseline: str | int


@dataclass(frozen=True)
class FeatureTarget:
    node: Node

    def __post_init__(self):
        from circuits.errors import AttributionError

        if not isinstance(self.node, Node):
            raise AttributionError(f"FeatureTarget: {self.node!r} is a {type(self.node).__name__}, not a Node; turn "
                                   "an id into one with circuits.ids.parse_node('M3#1184@14')")
        if not self.node.kind.endswith("_feature"):
            raise AttributionError(f"FeatureTarget: {self.node.short()} is a {self.node.kind} node; a feature target "
                                   "must be a feature (an attn_feature or mlp_feature node)")


Target = TopLogits | Logit | Contrast | FeatureTarget


def token_string(model, token: int) -> str:
    """Display text of one token id (the id itself when the model has no tokenizer)."""
    if getattr(model, "tokenizer", None) is None:
        return f"<{token}>"
    return model.to_string(torch.tensor([token]))


@dataclass(frozen=True)
class LogitRead:
    """A resolved logit-type target: its node, unembedding direction [d_model], bias, and weight."""

    node: Node
    direction: Tensor  # [d_model]
    bias: float
    weight: float
    label: str
    value: float  # the (demeaned) logit or logit difference in the clean forward pass
    probability: float | None = None  # the token's next-token probability (None for a contrast)


def single_token(model, token: str | int) -> int:
    """A vocabulary id for `token`: an id, or text that is one token (with or without its leading space)."""
    from circuits.errors import AttributionError
    from circuits.inputs import as_integer

    if not isinstance(token, str):
        if as_integer(token) is None:
            raise AttributionError(f"target token {token!r} is a {type(token).__name__}; give text (' Mary') or a "
                                   "token id (an int)")
        token = as_integer(token)
    if isinstance(token, int):
        if not 0 <= token < model.cfg.d_vocab:
            raise AttributionError(f"token id {token} is outside the vocabulary (0..{model.cfg.d_vocab - 1})")
        return token
    if getattr(model, "tokenizer", None) is None:
        raise AttributionError(f"the model has no tokenizer: give target {token!r} as a token id")
    return resolve_token(token, lambda t: model.to_tokens(t, prepend_bos=False)[0].tolist(),
                         lambda t: model.to_str_tokens(t, prepend_bos=False),
                         getattr(model.tokenizer, "unk_token_id", None))


def resolve_token(token: str, encode, pieces, unk: int | None, what: str = "target") -> int:
    """The id of text that is one known token, tried as given, without and with a leading space (tokenizers
    differ on spaces); else `AttributionError` naming the problem: empty text, a word outside the vocabulary
    (`unk`), or text of several tokens. `encode` / `pieces`: text → token ids / strings, no BOS. Shared by
    `single_token` and the CLI's checks before a model loads (which pass the tokenizer alone)."""
    from circuits.errors import AttributionError

    if not token.strip():  # before the spellings: " " is a token of GPT-2's vocabulary
        raise AttributionError(f"the {what} token is empty; give a word the model knows (e.g. ' Mary')")
    spellings = [t for t in dict.fromkeys([token, token.lstrip(), " " + token.lstrip()]) if t]
    for text in spellings:
        ids = encode(text)
        if len(ids) == 1 and ids[0] != unk:
            return int(ids[0])
    # explain with the spelling the tokenizer reads best (fewest unknown pieces): ' Mary John' with its leading
    # space read as ['<|unk|>', '<|unk|>', ' John'] in the organism, though the words are known
    best = min(spellings, key=lambda t: (sum(i == unk for i in encode(t)), len(encode(t))))
    ids, shown = encode(best), pieces(best)
    if unk is not None and unk in ids:
        raise AttributionError(f"{what} {token!r} is not in the model's vocabulary, so it is not a single token the "
                               f"model can predict (it reads as {shown}); give a word the model knows")
    raise AttributionError(f"{what} {token!r} is not a single token (it splits into {shown}); give one vocabulary "
                           "token")


def uncapped_logits(model, logits: Tensor) -> Tensor:
    """The logits before the model's output soft-cap (``c·atanh(l / c)``); `logits` itself without a cap."""
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap <= 0:
        return logits
    return cap * torch.atanh(logits / cap)


def resolve_logit_targets(model, logits_last: Tensor, target, demean: bool, pos: int) -> list[LogitRead]:
    """Resolve a logit-type target; `logits_last` [vocab] are the clean logits at position `pos` (the last)."""
    from circuits.errors import AttributionError

    n_layers = model.cfg.n_layers
    W_U, b_U = model.W_U.detach(), model.b_U.detach()
    logits_last = logits_last.detach()
    probs = torch.softmax(logits_last.double(), -1)
    logits_last = uncapped_logits(model, logits_last)
    if demean:
        W_U = W_U - W_U.mean(1, keepdim=True)
        b_U = b_U - b_U.mean()
        logits_last = logits_last - logits_last.mean()

    def read(tok: int, weight: float) -> LogitRead:
        node = Node("logit", n_layers, pos, tok)
        return LogitRead(node, W_U[:, tok], float(b_U[tok]), weight, token_string(model, tok),
                         float(logits_last[tok]), float(probs[tok]))

    if isinstance(target, TopLogits):
        order = probs.argsort(descending=True)
        chosen, total = [], 0.0
        for tok in order[: target.max_logits].tolist():
            chosen.append(tok)
            total += float(probs[tok])
            if total >= target.cum_prob:
                break
        return [read(t, float(probs[t])) for t in chosen]
    if isinstance(target, Logit):
        if isinstance(target.tokens, str) or not hasattr(target.tokens, "__iter__"):
            raise AttributionError(f"Logit target: tokens is {target.tokens!r}; give a tuple of tokens, e.g. "
                                   f"Logit(({target.tokens!r},))")
        toks = [single_token(model, t) for t in target.tokens]
        if not toks:
            raise AttributionError("Logit target needs at least one token")
        weights = target.weights or (1.0,) * len(toks)
        if len(weights) != len(toks):
            raise AttributionError("Logit target: give one weight per token")
        import math

        from circuits.inputs import as_real

        bad = [w for w in weights if as_real(w) is None or not math.isfinite(as_real(w)) or as_real(w) < 0]
        if bad:  # the scores normalise by absolute weights: a negative one makes them meaningless
            raise AttributionError(f"Logit target: weight {bad[0]!r} is not a finite number ≥ 0; for a difference "
                                   "of two logits use Contrast(token, baseline)")
        return [read(t, float(w)) for t, w in zip(toks, weights, strict=True)]
    if isinstance(target, Contrast):
        a, b = single_token(model, target.token), single_token(model, target.baseline)
        if a == b:
            raise AttributionError(f"contrast target: {target.token!r} and {target.baseline!r} are the same token; "
                                   "a contrast needs two different tokens")
        label = f"{token_string(model, a)!r} − {token_string(model, b)!r}"
        return [LogitRead(Node("logit_diff", n_layers, pos, a), W_U[:, a] - W_U[:, b], float(b_U[a] - b_U[b]), 1.0,
                          label, float(logits_last[a] - logits_last[b]))]
    raise TypeError(f"not a logit target: {target!r}")
