"""Downstream-aware fine-tuning of a whole dictionary set through the model (end-to-end, "e2e+ds"-style).

Why: each dictionary of a set is trained on *clean* inputs, but with every dictionary spliced in at once a
downstream dictionary reads inputs that the upstream replacements have already shifted, so errors compound (the
organism set keeps 76% of the IOI logit difference on training templates with all eight spliced, while every
single dictionary alone keeps 96-102%). Braun et al. (2024, arXiv 2405.12241) train dictionaries through the model
against the clean model's output distribution plus downstream reconstruction terms; this module fine-tunes an
already trained set that way.

One step on a batch of R corpus rows x n_ctx tokens (every dictionary of the set spliced at once, error terms off —
exactly the replacement model that `splice_hooks(dset, "off")` evaluates):

    p      = softmax(clean logits)                                  (the model alone, no gradient)
    q      = softmax(spliced logits)                                (every dictionary replaces its component)
    KL     = mean over positions of Σ_v p_v (log p_v − log q_v)    (next-token, every position)
    FVU_d  = Σ ‖t_d − ŷ_d‖² / Σ ‖t_d − mean(t_d)‖²                 (per dictionary d, over the batch)
    loss   = KL + β · Σ_d FVU_d

where ŷ_d is dictionary d's reconstruction from the input x_d it reads in the spliced run and t_d is what the true
component computes from that same spliced-run input (the activation at d's output hook before the splice replaces
it; detached). t_d − ŷ_d is exactly the error node that an attribution graph of this replacement model would hold at
d, so the FVU term keeps error nodes small while the KL term makes the features alone carry the model's computation.
Gradients reach W_enc, b_enc, b_in, W_dec, b_dec (and W_skip of a skip transcoder, every decoder W_dec_out of a
cross-layer transcoder, which is spliced whole). Each dictionary's inference activation stays as it was: the
JumpReLU threshold (BatchTopK's learned threshold at inference) is a fixed, non-trainable parameter, and a code's
gradient is the pre-activation's where the feature fires, zero elsewhere. ``encoder_lr_scale`` sets the encoder
side's (W_enc, b_enc, b_in) learning rate relative to the decoder side's; at 0 only decoders, output biases and
W_skip move, so a transcoder's codes on clean inputs (its L0 and dead features) are exactly the input set's (an
attention SAE's b_dec is also its input centring, so its codes can still move a little — unless ``keep_codes``:
after every step each such b_enc absorbs the move, b_enc += (b_dec_new − b_dec_old) · W_enc, so the
pre-activation (x − b_dec) · W_enc + b_enc, and with it every code on clean inputs, stays the input set's while the
output bias still moves). Why this option exists:
with the encoders trained, rare features stop firing (Adam's per-parameter steps move a rarely used encoder row
as far as a busy one), see docs/finetune.md.

Answer positions (``answer_weight`` γ > 0, organism only): the loss gains γ · Σ_d FVU_d(answer), each dictionary's
FVU on the *clean* run (its input is the model's own, as in an attribution graph) over the positions whose next
token is a name already present earlier in the same document (`answer_mask`; an IOI prompt's answer is one),
centred on those positions' own mean (`masked_fvu`). Those squared errors are the error nodes that an attribution
graph of such a prompt holds, which the replacement score counts and which the KL and the all-token FVU hardly weight.

Rows: corpus rows streamed block by block as the dictionary trainer does (`ActivationStream.corpus_row`: blocks
alternate between the training phases ``corpus_phases``), but from corpus seed ``corpus_seed`` = 2, which neither
the organism (seed 0), nor the dictionary trainers (seed 1), nor `dicts eval` (seed 0, stream "heldout-dicts") read.

After the last step each dictionary's mean L0 on clean inputs (``calibrate_rows`` further rows of the stream) is
compared with the input set's on the same rows; where it drifted by more than ``l0_tolerance`` (relative), every
threshold of that dictionary is shifted by one common δ so that the mean L0 is the input set's again
(`shift_thresholds`; for a BatchTopK-trained set, whose threshold is one scalar, this is `train.calibrate_threshold`
with L0 = the input set's instead of k).

Adam (betas 0.9, 0.999), constant learning rate with a linear decay over the last 20% of the steps, seeded, with a
progress bar, a checkpoint every ``checkpoint_every`` steps (dictionaries, optimizer, step; the stream position is a
function of the step, so a resumed run is the uninterrupted run) and a jsonl log (kl, fvu and l0 per dictionary).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from circuits.dictionaries.dictset import DictionarySet
from circuits.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning recipe. Units: steps and corpus rows (each of the model's n_ctx tokens)."""

    steps: int = 300
    rows: int = 16  # corpus rows per step
    lr: float = 1e-4
    beta: float = 1.0  # weight of Σ_d FVU_d against the KL
    answer_weight: float = 0.0  # weight γ of Σ_d FVU_d on clean inputs at name-copying positions (organism)
    answer_space: str = "activation"  # that FVU over the output ("activation") or its name logits ("name_logits")
    temperature: float = 1.0  # KL between softmax(logits / T) (times T²); 1 = the plain next-token KL
    encoder_lr_scale: float = 1.0  # lr of W_enc, b_enc, b_in relative to lr; 0 = decoder side only (see module doc)
    keep_codes: bool = False  # with encoder_lr_scale 0: compensate an attention SAE's b_dec move in b_enc
    seed: int = 0
    corpus_seed: int = 2  # organism: 0, dictionary trainers: 1, `dicts eval` held-out: seed 0 "heldout-dicts"
    corpus_phases: tuple[int, ...] = (3, 5)
    checkpoint_every: int = 25
    log_every: int = 5
    calibrate_rows: int = 64  # rows after the stream for the L0 check; 0 = keep thresholds
    l0_tolerance: float = 0.05  # relative L0 drift that triggers the re-calibration

    def check(self) -> None:
        """Raise `ConfigError` (one line) for numbers that cannot work, before any model or data is touched."""
        bad = [f"{name} {v}: must be at least {low}" for name, v, low in (
            ("steps", self.steps, 1), ("rows", self.rows, 1), ("checkpoint_every", self.checkpoint_every, 1),
            ("log_every", self.log_every, 1), ("calibrate_rows", self.calibrate_rows, 0), ("seed", self.seed, 0),
            ("corpus_seed", self.corpus_seed, 0)) if not (isinstance(v, int) and v >= low)]
        for name, v in (("lr", self.lr), ("beta", self.beta), ("answer_weight", self.answer_weight),
                        ("l0_tolerance", self.l0_tolerance),
                        ("encoder_lr_scale", self.encoder_lr_scale)):
            if not (isinstance(v, (int, float)) and v == v and 0 <= v < float("inf")):
                bad.append(f"{name} {v}: must be a finite number ≥ 0")
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < float("inf")):
            bad.append(f"temperature {self.temperature}: must be a finite number > 0")
        if self.keep_codes and self.encoder_lr_scale != 0:
            bad.append(f"keep_codes needs encoder_lr_scale 0 (it is {self.encoder_lr_scale}): it keeps frozen "
                       "encoders' codes, a trained encoder moves them anyway")
        if self.answer_space not in ("activation", "name_logits"):
            bad.append(f"answer_space {self.answer_space!r}: use 'activation' or 'name_logits'")
        if not self.corpus_phases or any(p not in (1, 2, 3, 4, 5) for p in self.corpus_phases):
            bad.append(f"corpus_phases {self.corpus_phases}: use organism training phases 1-5")
        if bad:
            raise ConfigError("fine-tuning: " + "; ".join(bad))


#: Options that define the run (a checkpoint resumes only with the same values).
RUN_IDENTITY = ("steps", "rows", "lr", "beta", "answer_weight", "answer_space", "temperature", "encoder_lr_scale",
                "keep_codes", "seed", "corpus_seed", "corpus_phases")


#: Encoder-side parameter names (what decides which features fire); everything else is decoder-side.
ENCODER_PARAMS = ("W_enc", "b_enc", "b_in_param")


def trainable_parameters(dset: DictionarySet) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(encoder-side, decoder-side) trainable tensors of the set's dictionaries, once each (a CLT's layers are
    members; thresholds are non-trainable parameters and stay out). An attention SAE's input centring is its b_dec:
    decoder-side."""
    seen: set[int] = set()
    enc, dec = [], []
    for d in dset:
        for name, p in d.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                (enc if name in ENCODER_PARAMS else dec).append(p)
    return enc, dec


def centring_snapshot(dset: DictionarySet) -> dict[str, Tensor]:
    """{name: b_dec copy} of every member whose decoder bias is also its input centring (attention SAEs)."""
    return {d.cfg.name: d.b_dec.detach().clone() for d in dset
            if d.cfg.kind == "attention_sae" and d.b_in is d.b_dec}


@torch.no_grad()
def keep_codes(dset: DictionarySet, before: dict[str, Tensor]) -> None:
    """Fold each listed member's b_dec move into b_enc so its encoder pre-activations are what they were."""
    for d in dset:
        if d.cfg.name in before:
            d.b_enc += (d.b_dec - before[d.cfg.name].to(d.b_dec.dtype)) @ d.W_enc


def _reconstruct(d, flat_x: Tensor, upstream: dict) -> tuple[Tensor, Tensor]:
    """(codes [tokens, d_sae], reconstruction [tokens, d_out]) of dictionary `d` from its flat input."""
    from circuits.dictionaries.train import sparse_decode
    from circuits.replacement import reconstruct

    codes = d.encode(flat_x)
    if d.plain_decoder:  # only the active features' decoder rows (same value as d.reconstruct)
        out = sparse_decode(codes, d.W_dec) + d.b_dec
        skip = d.skip_write(flat_x)
        return codes, (out if skip is None else out + skip)
    return codes, reconstruct(d, codes, flat_x, upstream)


def spliced_hooks(dset: DictionarySet, stats: dict) -> list:
    """TransformerLens hooks splicing every dictionary (errors off) that record, per dictionary,
    ``stats[name] = (squared error sum, target total sum of squares, L0 sum, tokens)`` with the error against the
    detached true component output of this run; a CLT layer sums its earlier layers' decoders (`reconstruct`)."""
    from circuits.replacement import clt_upstream, dictionary_hooks

    members = list(dset)
    upstream = clt_upstream(members)

    def replace(d, x: Tensor, act: Tensor) -> Tensor:
        flat_x = x.reshape(-1, d.cfg.d_in)
        codes, out = _reconstruct(d, flat_x, upstream)
        target = d.flatten_input(act).reshape(-1, d.cfg.d_out).detach()
        sq_err = (target - out).pow(2).sum()
        sq_tot = (target - target.mean(0)).pow(2).sum()
        stats[d.cfg.name] = (sq_err, sq_tot, (codes > 0).sum().detach(), flat_x.shape[0])
        return out.reshape(act.shape)  # an attention SAE's [.., n_heads·d_head] back to [.., n_heads, d_head]

    return dictionary_hooks(members, replace)


def clean_error_hooks(dset: DictionarySet, errors: dict, readout: dict[str, Tensor] | None = None) -> list:
    """TransformerLens hooks that leave the model clean and record, per dictionary, ``errors[name] = (squared
    error per token [tokens], target [tokens, d_out])``: the error node an attribution graph holds at that
    dictionary (true output − reconstruction of the clean input), with gradient to the dictionary's parameters.
    With ``readout[name]`` [d_out, r], error and target are first mapped through it (``v @ readout``): the error's
    part that a readout sees, e.g. its direct effect on name logits (`name_logit_readout`)."""
    from circuits.replacement import clt_upstream, dictionary_hooks

    members = list(dset)
    upstream = clt_upstream(members)

    def measure(d, x: Tensor, act: Tensor) -> Tensor:
        _, out = _reconstruct(d, x.reshape(-1, d.cfg.d_in), upstream)
        target = d.flatten_input(act).reshape(-1, d.cfg.d_out).detach()
        err = target - out
        if readout is not None:
            err, target = err @ readout[d.cfg.name], target @ readout[d.cfg.name]
        errors[d.cfg.name] = (err.pow(2).sum(-1), target)
        return act

    return dictionary_hooks(members, measure)


@torch.no_grad()
def name_logit_readout(model, dset: DictionarySet, answer_ids: Tensor) -> dict[str, Tensor]:
    """{name: [d_out, n_names]}: each dictionary's output → its direct effect on the names' logits, centred over
    the names (a shift common to every name changes no logit difference): ``W_U[:, names] − their mean`` for a
    dictionary writing the residual stream, ``W_O[layer]`` (per head, flattened) times that for an attention SAE on
    ``hook_z``. The final LayerNorm's scale is left out (it is common to every dictionary at a position)."""
    w_u = model.W_U[:, answer_ids.to(model.W_U.device)]
    w_u = w_u - w_u.mean(1, keepdim=True)  # [d_model, n_names]
    out = {}
    for d in dset:
        if d.cfg.kind == "attention_sae":
            w_o = model.W_O[d.cfg.layer]  # [n_heads, d_head, d_model]
            out[d.cfg.name] = w_o.reshape(-1, w_o.shape[-1]) @ w_u
        else:
            out[d.cfg.name] = w_u
    return {n: r.detach() for n, r in out.items()}


def name_token_ids(model) -> Tensor:
    """Ids of the organism's person names: the "name" token set of `circuits.token_sets` (the one dashboards and
    labels use) over the model's vocabulary; another vocabulary raises `TokenSetError`."""
    from circuits.token_sets import organism_sets, vocabulary_strings

    names = next(s for s in organism_sets(vocabulary_strings(model)) if s.name == "name")
    return torch.tensor(sorted(names.ids))


def answer_mask(tokens: Tensor, answer_ids: Tensor, bos: int | None = None) -> Tensor:
    """[batch, pos] bool: positions whose next token is one of `answer_ids` *and* already occurs earlier in the
    same document (since the last `bos`, this position included) — where a name is copied from the context, as
    at an IOI prompt's answer (and its second subject). The last position: never."""
    nxt = tokens[:, 1:]  # [batch, pos-1]
    doc = torch.cumsum(tokens == bos, dim=1) if bos is not None else torch.zeros_like(tokens)
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    # earlier[b, t, s]: token s (s ≤ t, same document as t) equals the token after t
    earlier = ((tokens[:, None, :] == nxt[:, :, None]) & (pos[None, None, :] <= pos[:-1, None])
               & (doc[:, None, :] == doc[:, :-1, None]))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, :-1] = torch.isin(nxt, answer_ids.to(tokens.device)) & earlier.any(-1)
    return mask


def masked_fvu(sq_err: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """FVU over the masked tokens alone: Σ_masked squared error / Σ_masked ‖target − their mean‖² (0 with fewer
    than two masked tokens); sq_err [tokens], target [tokens, d_out], mask [tokens]. Centred on the masked tokens'
    own mean, so it measures the error against what varies *between* such positions (which name comes next), not
    against their offset from every other token."""
    if int(mask.sum()) < 2:
        return sq_err.sum() * 0
    t = target[mask]
    return sq_err[mask].sum() / (t - t.mean(0)).pow(2).sum().clamp_min(1e-12)


def kl_divergence(logits_clean: Tensor, logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over positions of ``T² · KL(softmax(clean / T) ‖ softmax(spliced / T))`` for logits [..., vocab]."""
    p = (logits_clean / temperature).log_softmax(-1)
    q = (logits / temperature).log_softmax(-1)
    return temperature ** 2 * (p.exp() * (p - q)).sum(-1).mean()


def finetune_loss(model, dset: DictionarySet, tokens: Tensor, beta: float, temperature: float = 1.0,
                  answer_weight: float = 0.0, answer_ids: Tensor | None = None, bos: int | None = None,
                  readout: dict[str, Tensor] | None = None) -> tuple[Tensor, dict]:
    """``T² KL_T(clean ‖ spliced) + β Σ_d FVU_d + γ Σ_d FVU_d(answer)`` on tokens [batch, pos] and its parts
    (floats; ``kl`` is always the plain next-token KL at T = 1). The last term (γ = `answer_weight` > 0 with
    `answer_ids`) is each dictionary's FVU on *clean* inputs over `answer_mask`'s positions (the next token is in
    `answer_ids` and occurs earlier in its document; `bos` separates documents), through `readout` if given —
    exactly the error nodes an attribution graph of such a prompt holds there."""
    answer: dict = {}
    if answer_weight > 0 and answer_ids is not None:
        clean = model.run_with_hooks(tokens, fwd_hooks=clean_error_hooks(dset, answer, readout)).detach()
    else:
        with torch.no_grad():
            clean = model(tokens)
    stats: dict = {}
    logits = model.run_with_hooks(tokens, fwd_hooks=spliced_hooks(dset, stats))
    kl_t = kl_divergence(clean, logits, temperature)
    fvus = {n: s[0] / s[1].clamp_min(1e-12) for n, s in stats.items()}
    loss = kl_t + beta * sum(fvus.values())
    parts = {"kl": kl_t.item() if temperature == 1 else kl_divergence(clean, logits.detach()).item(),
             "kl_t": kl_t.item(), "fvu": {n: v.item() for n, v in fvus.items()},
             "l0": {n: s[2].item() / s[3] for n, s in stats.items()}}
    if answer:
        mask = answer_mask(tokens, answer_ids, bos).reshape(-1)
        afvu = {n: masked_fvu(e, t, mask) for n, (e, t) in answer.items()}
        loss = loss + answer_weight * sum(afvu.values())
        parts["answer_fvu"] = {n: v.item() for n, v in afvu.items()}
        parts["answer_positions"] = int(mask.sum())
    return loss, parts


class RowStream:
    """Token blocks [rows, n_ctx] in the dictionary trainer's order (`ActivationStream.corpus_row`)."""

    def __init__(self, model, cfg: FinetuneConfig):
        from circuits.dictionaries.train import ActivationStream

        self.model = model
        self.cfg = cfg
        self.index = ActivationStream(model, [], cfg.corpus_seed, cfg.rows, phases=cfg.corpus_phases)

    def block(self, step: int) -> Tensor:
        """The rows of step `step` (0-based); steps ≥ cfg.steps continue the same stream (calibration rows)."""
        from circuits.organism.train import batch_tokens

        s = self.index
        tokens = batch_tokens(s.corpus, s.tokenizer, s.corpus_row(step * self.cfg.rows), self.cfg.rows,
                              self.model.cfg.n_ctx)
        return tokens.to(self.model.cfg.device or "cpu")


@torch.no_grad()
def clean_inputs(model, dset: DictionarySet, tokens: Tensor) -> dict[str, Tensor]:
    """{name: [tokens, d_in]}: each dictionary's input in the clean model."""
    hooks = {d.hook_in for d in dset}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
    return {d.cfg.name: d.flatten_input(cache[d.hook_in]).reshape(-1, d.cfg.d_in) for d in dset}


@torch.no_grad()
def mean_l0(dset: DictionarySet, inputs: list[dict[str, Tensor]]) -> dict[str, float]:
    out = {}
    for d in dset:
        xs = [b[d.cfg.name] for b in inputs]
        out[d.cfg.name] = sum((d.encode(x) > 0).sum().item() for x in xs) / sum(x.shape[0] for x in xs)
    return out


@torch.no_grad()
def shift_thresholds(d, xs: list[Tensor], target_l0: float) -> float | None:
    """Shift every threshold θ_i of a JumpReLU / BatchTopK dictionary by one δ so that the mean L0 over inputs
    `xs` [n, d_in] is `target_l0`; returns δ (None: no threshold, or too few positive candidates)."""
    act = d.activation
    if not hasattr(act, "threshold"):
        return None
    n = sum(x.shape[0] for x in xs)
    n_keep = int(round(target_l0 * n))
    if n_keep < 1:
        return None
    margins = torch.cat([(d.pre_activation(x) - act.threshold).reshape(-1) for x in xs])
    if n_keep > margins.numel():
        return None
    delta = margins.topk(n_keep).values[-1].item()
    # pre > θ + δ keeps the n_keep largest margins (up to ties); θ + δ must stay ≥ 0 so codes stay positive
    act.threshold.copy_((act.threshold + delta).clamp_min(0.0))
    return delta


def _check_resumable(state: dict, path: Path, cfg: FinetuneConfig, names: list[str]) -> None:
    from circuits.checkpoint import describe_differences

    fix = "resume with the same options, choose another --out, or pass --no-resume to start afresh"
    try:
        saved = json.loads(state.get("config", "{}"))
    except (TypeError, json.JSONDecodeError):
        saved = {}
    now = json.loads(json.dumps(asdict(cfg)))
    if saved:  # options added after a checkpoint was written read as their (then only) value
        saved = {"answer_weight": 0.0, "answer_space": "activation", **saved}
    diffs = describe_differences({k: saved.get(k) for k in RUN_IDENTITY}, {k: now[k] for k in RUN_IDENTITY})
    if sorted(state.get("dicts", {})) != sorted(names):
        diffs.append(f"dictionaries {sorted(state.get('dicts', {}))} in the checkpoint, {sorted(names)} now")
    if diffs:
        raise CheckpointError(f"checkpoint {path} was written by another run: {'; '.join(diffs)}; {fix}")


def finetune_set(model, dset: DictionarySet, cfg: FinetuneConfig, out: Path, progress: bool = True,
                 resume: bool = True, stop_after: int | None = None, save: bool = True) -> DictionarySet:
    """Fine-tune every dictionary of `dset` in place (see the module docstring) and save the set to ``out/set``.

    `out` also receives ``finetune_log.jsonl``, ``finetune_events.jsonl`` (L0 check) and ``finetune_checkpoint.pt``.
    `stop_after`: leave after this many steps of this call (at a checkpoint step), for time-boxed runs."""
    from tqdm.auto import tqdm

    from circuits.checkpoint import load_checkpoint

    cfg.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    members = list(dset)
    names = [d.cfg.name for d in members]
    model.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    enc_params, dec_params = trainable_parameters(dset)
    for d in members:
        d.eval()  # inference activation: JumpReLU / BatchTopK's fixed threshold
        if hasattr(d.activation, "threshold"):
            d.activation.threshold.requires_grad_(False)
    groups = [{"params": dec_params, "scale": 1.0}]
    if cfg.encoder_lr_scale > 0:
        groups.append({"params": enc_params, "scale": cfg.encoder_lr_scale})
    opt = torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999))
    stream = RowStream(model, cfg)
    answer_ids = name_token_ids(model) if cfg.answer_weight > 0 else None
    bos = stream.index.tokenizer.token_to_id("<|endoftext|>")
    readout = (name_logit_readout(model, dset, answer_ids) if answer_ids is not None
               and cfg.answer_space == "name_logits" else None)
    cal_inputs = [clean_inputs(model, dset, stream.block(cfg.steps + i))
                  for i in range(-(-cfg.calibrate_rows // cfg.rows))] if cfg.calibrate_rows else []
    ckpt = out / "finetune_checkpoint.pt"
    step = 0
    state = load_checkpoint(ckpt) if resume and ckpt.exists() else None
    if state is not None:
        _check_resumable(state, ckpt, cfg, names)
        step = int(state["step"])
        for d in members:
            d.load_state_dict(state["dicts"][d.cfg.name])
        opt.load_state_dict(state["opt"])
        l0_start = state["l0_start"]
    else:
        l0_start = mean_l0(dset, cal_inputs) if cal_inputs else {}
    start = step
    decay_start = int(0.8 * cfg.steps)
    log_path = out / "finetune_log.jsonl"
    t0 = time.time()
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, desc="fine-tuning", disable=not progress)
    for step in bar:
        lr = cfg.lr * min(1.0, (cfg.steps - step) / max(1, cfg.steps - decay_start))
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        loss, parts = finetune_loss(model, dset, stream.block(step), cfg.beta, cfg.temperature,
                                    cfg.answer_weight, answer_ids, bos, readout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before = centring_snapshot(dset) if cfg.keep_codes else {}
        opt.step()
        if before:
            keep_codes(dset, before)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps or step == start:
            rec = {"step": done, "lr": lr, "seconds": round(time.time() - t0, 1), "loss": round(loss.item(), 6),
                   "kl": round(parts["kl"], 6), "kl_t": round(parts["kl_t"], 6), "fvu": {n: round(v, 5) for n, v in parts["fvu"].items()},
                   "l0": {n: round(v, 2) for n, v in parts["l0"].items()}}
            if "answer_fvu" in parts:
                rec["answer_fvu"] = {n: round(v, 5) for n, v in parts["answer_fvu"].items()}
                rec["answer_positions"] = parts["answer_positions"]
            with log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(kl=f"{parts['kl']:.4f}", fvu_sum=f"{sum(parts['fvu'].values()):.3f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"step": done, "dicts": {d.cfg.name: d.state_dict() for d in members},
                        "opt": opt.state_dict(), "l0_start": l0_start, "config": json.dumps(asdict(cfg))}, tmp)
            tmp.replace(ckpt)
        if stop_after is not None and done - start >= stop_after:
            if done % cfg.checkpoint_every and done != cfg.steps:
                raise ConfigError("stop_after must end on a checkpoint step")
            if done < cfg.steps:
                return dset
    if cal_inputs:
        recalibrate(dset, cal_inputs, l0_start, cfg.l0_tolerance, out / "finetune_events.jsonl")
    if save:
        dset.save(out / "set")
    return dset


def recalibrate(dset: DictionarySet, cal_inputs: list[dict[str, Tensor]], l0_start: dict[str, float],
                tolerance: float, events: Path) -> dict:
    """Shift the thresholds of every dictionary whose L0 drifted by more than `tolerance` (relative) back to its
    starting L0; appends one record to `events` and returns it."""
    l0_end = mean_l0(dset, cal_inputs)
    shifted = {}
    for d in dset:
        n = d.cfg.name
        if l0_start.get(n) and abs(l0_end[n] - l0_start[n]) > tolerance * l0_start[n]:
            shifted[n] = shift_thresholds(d, [b[n] for b in cal_inputs], l0_start[n])
    rec = {"l0_start": l0_start, "l0_end": l0_end, "threshold_shift": shifted,
           "l0_after": mean_l0(dset, cal_inputs) if shifted else l0_end}
    with events.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec
