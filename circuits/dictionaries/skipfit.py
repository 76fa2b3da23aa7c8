"""Least-squares fits onto a trained set's errors (organism): a skip term ``W_skip`` on transcoders (`fit_skip`),
or the decoders of any per-layer dictionary with its codes fixed (`fit_decoder`, at the end of this module).

A skip transcoder (Paulo et al. 2025, arXiv 2501.18823) writes ``codes @ W_dec + b_dec + x @ W_skip.T``: the linear
part of an MLP's map from its input x to its output passes straight through, and the features only carry what is
not linear. In an attribution graph the skip term is a pass-through channel, not a node (edges from upstream
sources to downstream targets include the path through W_skip), so whatever it reconstructs leaves the error node.

`fit_skip` adds such a term to transcoders that were trained without one. Encoders and decoders stay as they are;
for each chosen transcoder the residual ``r = y − reconstruction(x)`` (y: the true MLP output, the error node of a
graph) is regressed on ``[x, 1]``:

    minimise over W, c    Σ_t w_t ‖r_t − W x_t − c‖²  +  λ ‖W‖²,      λ = ridge · mean diagonal of Σ_t w_t x_t x_tᵀ

and the solution is added to the dictionary (W_skip += W, b_dec += c), so the new error on the fit data is the
least-squares residual: on the fit tokens the weighted squared error can only fall (it is ``r`` itself at W = 0).
The normal equations are accumulated in float64 over token batches.

Fit tokens (weights w_t):
* corpus rows of the fine-tune's stream (corpus seed 2, phases 3 and 5 block by block by default) from block
  ``first_block`` on (far past the rows any fine-tune or `dicts calibrate` reads; never the rows `dicts eval`
  scores), every position, w = 1;
* IOI prompts from the organism's *training* templates on held-out names (`ToyWorldCorpus(ioi_seed).ioi_prompts`),
  weight ``ioi_weight`` at each prompt's last position (``ioi_positions="answer"``: where the answer name is
  predicted) or at every position (``"all"``). ``ioi_seed`` 7 is none of the seeds the studies and benchmarks draw
  their prompts from (0, 11, 12 and ``1000·s + 1…5 + 100·attempt``), and no held-out template is read, so the
  replacement score on held-out-template prompts stays a test of prompts the fit never saw.

Why (docs/skip-and-clt.md, probe 10): at an IOI prompt's answer position the last transcoder's error carries much of
the logit difference, and the part of it that is linear in the MLP's input generalises across templates. The
defaults (2,560 rows ≈ 328k corpus tokens against 1,200 answers × 100) were measured not to cost ordinary text:
on three organism sets transcoder L3's held-out FVU fell and the all-spliced CE increase moved by −0.0013 to
+0.0003 nats; larger IOI weights buy more replacement score on IOI graphs at a measured cost in ordinary-text
fidelity (`benchmarks/skipfit_sweep.py`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor

from circuits.dictionaries.dictset import DictionarySet
from circuits.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SkipFitConfig:
    """`fit_skip`'s options (and, through `DecoderFitConfig`, `fit_decoder`'s): the sites, the fit tokens and their
    weights, and the ridge."""

    what: ClassVar[str] = "skip fit"  # names the fit in error messages
    sites: tuple[str, ...] = ("transcoder_L3",)  # dictionaries fitted (the skip fit: transcoders only)
    rows: int = 2560  # corpus rows (of the model's n_ctx tokens), weight 1 per token
    first_block: int = 20_000  # first block (of 16 rows) of the fine-tune's stream that is read
    corpus_phases: tuple[int, ...] = (3, 5)  # blocks alternate: natural text and the IOI mix
    ioi_prompts: int = 600  # per name order (ABBA and BABA), training templates, held-out names
    ioi_seed: int = 7
    ioi_weight: float = 100.0  # weight of each IOI token the fit reads, against 1 per corpus token (see below)
    ioi_positions: str = "answer"  # "answer": each prompt's last position; "all": every position
    ridge: float = 1e-4  # λ relative to the mean diagonal of the weighted input Gram matrix
    ioi_templates: tuple[int, ...] | None = None  # training-template indices the IOI prompts use (None: all)

    def check(self) -> None:
        """Raise `ConfigError` (one line) before any model or data is touched."""
        bad = [f"{n} {v}: must be at least {low}" for n, v, low in (
            ("rows", self.rows, 0), ("ioi_prompts", self.ioi_prompts, 0), ("ioi_seed", self.ioi_seed, 0),
            ("first_block", self.first_block, 0)) if not (isinstance(v, int) and v >= low)]
        for n, v in (("ioi_weight", self.ioi_weight), ("ridge", self.ridge)):
            if not (isinstance(v, (int, float)) and v == v and 0 <= v < float("inf")):
                bad.append(f"{n} {v}: must be a finite number ≥ 0")
        from circuits.organism.corpus import IOI_TRAIN_TEMPLATES

        if self.ioi_templates is not None and (not self.ioi_templates or any(
                not isinstance(t, int) or not 0 <= t < len(IOI_TRAIN_TEMPLATES) for t in self.ioi_templates)):
            bad.append(f"ioi_templates {self.ioi_templates}: training-template indices 0-{len(IOI_TRAIN_TEMPLATES) - 1}")
        if self.ioi_positions not in ("answer", "all"):
            bad.append(f"ioi_positions {self.ioi_positions!r}: use 'answer' or 'all'")
        if not self.sites:
            bad.append("sites: name at least one dictionary, e.g. transcoder_L3")
        if self.rows == 0 and (self.ioi_prompts == 0 or self.ioi_weight == 0):
            bad.append("no fit tokens: rows 0 and no weighted IOI prompts")
        if not self.corpus_phases or any(p not in (1, 2, 3, 4, 5) for p in self.corpus_phases):
            bad.append(f"corpus_phases {self.corpus_phases}: use organism training phases 1-5")
        if bad:
            raise ConfigError(f"{self.what}: " + "; ".join(bad))


def check_sites(dset: DictionarySet, sites: tuple[str, ...]) -> None:
    """`ConfigError` unless every site is a per-layer transcoder of the set (a CLT layer's output sums decoders of
    several layers, so it has no single skip term here)."""
    from circuits.dictionaries.clt import CLTLayer

    names = [d.cfg.name for d in dset]
    for s in sites:
        d = dset.dictionaries.get(s)
        if d is None or d.cfg.kind != "transcoder":
            have = [n for n in names if n.startswith("transcoder_")]
            raise ConfigError(f"skip fit: {s!r} is not a transcoder of the set; choose from {have}")
        if isinstance(d, CLTLayer):
            raise ConfigError(f"skip fit: {s} is a layer of a cross-layer transcoder; fit per-layer transcoders only")


class NormalEquations:
    """Running ``G = Σ w a aᵀ``, ``H = Σ w a rᵀ`` and ``E = Σ w ‖r‖²`` for a = [x, 1], in float64: enough to solve
    for the fit and to give the weighted squared error of any (W, c) without another pass over the tokens."""

    def __init__(self, d_in: int, d_out: int):
        self.G = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
        self.H = torch.zeros(d_in + 1, d_out, dtype=torch.float64)
        self.E = 0.0
        self.weight = 0.0

    def add(self, x: Tensor, r: Tensor, w: Tensor, sparse: bool = False) -> None:
        """x [n, d_in], r [n, d_out], w [n] (tokens of weight 0 add nothing). ``sparse``: x is mostly zeros (a
        dictionary's codes), so the products run over its nonzero entries only (same sums)."""
        a = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
        wa = a * w.double()[:, None]
        if sparse:
            wa_t = wa.T.to_sparse()  # [d_in + 1, n]: about L0 + 1 entries per token
            self.G += torch.sparse.mm(wa_t, a)
            self.H += torch.sparse.mm(wa_t, r.double())
        else:
            self.G += wa.T @ a
            self.H += wa.T @ r.double()
        self.E += float((w.double() * r.double().pow(2).sum(-1)).sum())
        self.weight += float(w.sum())

    def solve(self, ridge: float) -> tuple[Tensor, Tensor]:
        """(W [d_out, d_in], c [d_out]) minimising the weighted squared residual plus λ‖W‖² (c unpenalised)."""
        d_in = self.G.shape[0] - 1
        lam = ridge * float(self.G.diagonal()[:d_in].mean())
        reg = torch.diag(torch.cat([torch.full((d_in,), lam, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]))
        sol = torch.linalg.solve(self.G + reg, self.H)  # [d_in + 1, d_out]
        return sol[:d_in].T.contiguous(), sol[d_in]

    def weighted_error(self, W: Tensor, c: Tensor) -> float:
        """Σ w ‖r − W x − c‖² = E − 2 tr(βᵀH) + tr(βᵀGβ) with β = [Wᵀ; c]."""
        beta = torch.cat([W.T, c[None, :]]).double()
        return self.E - 2 * float((beta * self.H).sum()) + float((beta * (self.G @ beta)).sum())


def with_skip(d):
    """A copy of transcoder `d` with a skip term: its own W_skip if it has one, else ``cfg.skip`` and W_skip = 0
    (`d` itself is never changed)."""
    import copy

    from circuits.dictionaries.base import make_dictionary

    if d.W_skip is not None:
        return copy.deepcopy(d)
    new = make_dictionary(dataclasses.replace(d.cfg, skip=True), d.W_enc.dtype)
    state = dict(d.state_dict())
    state["W_skip"] = torch.zeros_like(new.W_skip)
    new.load_state_dict(state)
    return new.to(d.W_enc.device)


def ioi_fit_prompts(cfg: SkipFitConfig) -> list:
    """`cfg.ioi_prompts` IOI prompts per name order from `ToyWorldCorpus(cfg.ioi_seed)` (training templates,
    held-out names); with `cfg.ioi_templates`, the first ones of a longer draw whose template is among them."""
    from circuits.organism.corpus import IOI_TRAIN_TEMPLATES, ToyWorldCorpus

    corpus = ToyWorldCorpus(cfg.ioi_seed)
    out = []
    for order in ("ABBA", "BABA"):
        if cfg.ioi_templates is None:
            out += corpus.ioi_prompts(cfg.ioi_prompts, order)
            continue
        draw = cfg.ioi_prompts * (3 * len(IOI_TRAIN_TEMPLATES) // len(set(cfg.ioi_templates)) + 1)
        kept = [p for p in corpus.ioi_prompts(draw, order) if p.template in cfg.ioi_templates][:cfg.ioi_prompts]
        if len(kept) < cfg.ioi_prompts:  # 3x the expected draw: not reached in practice
            raise ConfigError(f"skip fit: drew only {len(kept)} IOI prompts of templates {cfg.ioi_templates}")
        out += kept
    return out


def fit_tokens(model, cfg: SkipFitConfig) -> list[tuple[Tensor, Tensor]]:
    """[(tokens [batch, pos], weight [batch, pos])]: the corpus blocks, then the IOI prompts (padding weight 0)."""
    from circuits.dictionaries.finetune import FinetuneConfig, RowStream
    from circuits.organism.evaluate import padded_tokens

    out = []
    stream = RowStream(model, FinetuneConfig(rows=16, corpus_phases=cfg.corpus_phases))
    for i in range(-(-cfg.rows // 16)):
        tokens = stream.block(cfg.first_block + i)[: cfg.rows - 16 * i]
        out.append((tokens, torch.ones(tokens.shape, dtype=torch.float64)))
    if cfg.ioi_prompts and cfg.ioi_weight:
        prompts = ioi_fit_prompts(cfg)
        for i in range(0, len(prompts), 64):
            tokens, lengths = padded_tokens(model, [p.text for p in prompts[i:i + 64]])
            pos = torch.arange(tokens.shape[1])[None, :]
            keep = (pos == lengths[:, None] - 1) if cfg.ioi_positions == "answer" else (pos < lengths[:, None])
            out.append((tokens, keep.double() * cfg.ioi_weight))
    return out


@torch.no_grad()
def error_normal_equations(model, sites: list, cfg: SkipFitConfig, on_codes: bool, progress: bool = True
                           ) -> dict[str, NormalEquations]:
    """{site: normal equations} of each site's error ``r = y − reconstruction(x)`` over the fit tokens
    (`fit_tokens`), regressed on ``[x, 1]`` (the skip fit) or, with `on_codes`, on ``[codes, 1]`` (the decoder fit:
    sparse, about L0 + 1 nonzeros per token). One forward pass per token batch serves every site."""
    from tqdm.auto import tqdm

    eqs = {d.cfg.name: NormalEquations(d.cfg.d_sae if on_codes else d.cfg.d_in, d.cfg.d_out) for d in sites}
    hooks = {h for d in sites for h in (d.hook_in, d.hook_out)}
    desc = "decoder fit" if on_codes else "skip fit"
    for tokens, w in tqdm(fit_tokens(model, cfg), desc=desc, disable=not progress):
        _, cache = model.run_with_cache(tokens.to(model.cfg.device or "cpu"), names_filter=lambda n: n in hooks)
        for d in sites:
            x = d.flatten_input(cache[d.hook_in]).reshape(-1, d.cfg.d_in)
            codes = d.encode(x)
            r = cache[d.hook_out].reshape(-1, d.cfg.d_out) - d.reconstruct(codes, x)
            eqs[d.cfg.name].add((codes if on_codes else x).cpu(), r.cpu(), w.reshape(-1), sparse=on_codes)
    return eqs


@torch.no_grad()
def fit_skip(model, dset: DictionarySet, cfg: SkipFitConfig = SkipFitConfig(), progress: bool = True) -> tuple[
        DictionarySet, dict[str, dict]]:
    """A new set in which each of `cfg.sites` has a least-squares skip term added (see the module docstring); the
    other members are `dset`'s own objects, and `dset` is not changed. Returns (set, {site:
    {"weighted_sq_error_before", "weighted_sq_error_after", "fit_weight", "w_skip_norm"}}) with the errors summed
    over the fit tokens (times their weights; "fit_weight" is the weights' sum), the one after the fit from the
    normal equations in float64 (`NormalEquations.weighted_error`: one pass over the tokens, not two)."""
    cfg.check()
    check_sites(dset, cfg.sites)

    def add_skip(d, W, c):
        new = with_skip(d)
        new.W_skip += W.to(new.W_skip)
        new.b_dec += c.to(new.b_dec)
        return new, {"w_skip_norm": float(new.W_skip.norm())}

    return _fit_sites(model, dset, cfg, on_codes=False, apply=add_skip, progress=progress)


def _fit_sites(model, dset: DictionarySet, cfg: SkipFitConfig, on_codes: bool, apply, progress: bool) -> tuple[
        DictionarySet, dict[str, dict]]:
    """The loop both fits share: the normal equations of every site's error in one pass over the fit tokens
    (`error_normal_equations`, on [x, 1] or on [codes, 1]), each solved with the ridge, and `apply(d, W, c)` →
    (the fitted copy of d, its own report fields). The report adds the weighted squared error before and after
    (the latter from the normal equations) and the weights' sum."""
    sites = [dset.dictionaries[s] for s in cfg.sites]
    eqs = error_normal_equations(model, sites, cfg, on_codes=on_codes, progress=progress)
    members, report = dict(dset.dictionaries), {}
    for d in sites:
        eq = eqs[d.cfg.name]
        W, c = eq.solve(cfg.ridge)
        members[d.cfg.name], fields = apply(d, W, c)
        report[d.cfg.name] = {"weighted_sq_error_before": eq.E, "weighted_sq_error_after": eq.weighted_error(W, c),
                              "fit_weight": eq.weight, **fields}
    return DictionarySet(dset.model_name, members), report


@dataclasses.dataclass(frozen=True)
class DecoderFitConfig(SkipFitConfig):
    """`fit_decoder`'s options: those of the skip fit, with defaults for decoders (every IOI position, a stronger
    ridge: a rarely firing feature's decoder row has little data and should stay near where training left it)."""

    what: ClassVar[str] = "decoder fit"
    sites: tuple[str, ...] = ("attn_sae_L0",)
    ioi_positions: str = "all"
    ridge: float = 1e-2

    def check(self) -> None:
        """As the skip fit's, and the ridge must be positive: a feature silent on the fit tokens has an all-zero
        row in the normal equations, which only the ridge makes solvable (it then keeps its decoder row)."""
        super().check()
        if not self.ridge > 0:
            raise ConfigError(f"decoder fit: ridge {self.ridge}: must be > 0 (features silent on the fit tokens "
                              "leave the normal equations singular without it)")


def check_decoder_sites(dset: DictionarySet, sites: tuple[str, ...]) -> None:
    """`ConfigError` unless every site is a per-layer dictionary of the set (a CLT layer's features write several
    layers, and its error at one layer is not a least-squares problem in that layer's decoders alone)."""
    from circuits.dictionaries.clt import CLTLayer

    for s in sites:
        d = dset.dictionaries.get(s)
        if d is None or isinstance(d, CLTLayer):
            have = [d.cfg.name for d in dset if not isinstance(d, CLTLayer)]
            raise ConfigError(f"decoder fit: {s!r} is not a per-layer dictionary of the set; choose from {have}")


@torch.no_grad()
def fit_decoder(model, dset: DictionarySet, cfg: DecoderFitConfig = DecoderFitConfig(), progress: bool = True
                ) -> tuple[DictionarySet, dict[str, dict]]:
    """A new set in which each of `cfg.sites` has its decoder refitted by weighted ridge least squares with its
    codes held fixed; the other members are `dset`'s own objects, and `dset` is not changed.

    For each site the residual ``r = y − reconstruction(x)`` (the error node) is regressed on ``[codes, 1]`` over
    the fit tokens of `fit_tokens` (weights w_t as for the skip fit):

        minimise over ΔW, c    Σ_t w_t ‖r_t − codes_t ΔW − c‖²  +  λ ‖ΔW‖²,   λ = ridge · mean_i Σ_t w_t codes_ti²

    and ``W_dec += ΔW``, ``b_dec += c``. The ridge pulls each decoder row toward where training left it, the more
    so the less its feature fires on the fit tokens (a feature that never fires there keeps its row exactly). The
    encoder side is unchanged, and so is every code: an attention SAE centres its input on b_dec (``b_in`` is
    ``b_dec``), so its move c is folded into the encoder bias, ``b_enc += c · W_enc``, which leaves
    ``(x − b_in) · W_enc + b_enc`` as it was. Returns (set, {site: {"weighted_sq_error_before",
    "weighted_sq_error_after", "fit_weight", "decoder_change_norm", "decoder_norm"}}), the error after the fit from
    the normal equations (`NormalEquations.weighted_error`)."""
    import copy

    cfg.check()
    check_decoder_sites(dset, cfg.sites)

    def move_decoder(d, dW, c):  # dW [d_out, d_sae]
        new = copy.deepcopy(d)
        new.W_dec += dW.T.to(new.W_dec)
        if new.b_in is new.b_dec:  # attention SAE: keep (x − b_dec) · W_enc + b_enc, hence every code
            new.b_enc += c.to(new.W_enc) @ new.W_enc
        new.b_dec += c.to(new.b_dec)
        return new, {"decoder_change_norm": float(dW.norm()), "decoder_norm": float(d.W_dec.norm())}

    return _fit_sites(model, dset, cfg, on_codes=True, apply=move_decoder, progress=progress)
