"""Training dictionaries on activations streamed from a model running over its corpus.

Algorithm (one pass, all dictionaries at once):

1. `ActivationStream` runs the model on corpus rows (never more than one buffer in RAM) and caches, per site, the
   dictionary input (``ln2.hook_normalized`` / ``attn.hook_z``) and target (``hook_mlp_out`` / ``hook_z``).
   The rows come from a corpus seed the organism never trained on, alternating block by block between the
   training phases in ``corpus_phases`` (by default 3, the natural mix that held-out text is drawn from, and 5,
   the organism's last phase with template and slot-noised IOI): the dictionaries see the distribution the
   model was finally trained on and the one they are evaluated on.
   Rows go into a per-site shuffle buffer; training batches are drawn from it at random and the buffer is
   refilled when half empty, so consecutive batches mix many sequences.
2. Every dictionary is initialised from the first buffer: decoder rows of unit norm, encoder = decoder
   transposed, input centering and output bias set to the data means. A skip transcoder's ``W_skip`` starts at
   zero (Paulo et al. 2025) and is trained with everything else by the same loss on ``reconstruct(codes, x)``.
3. Loss = MSE(output, target) / Var(target) (the fraction of variance unexplained, FVU) plus, for TopK-style
   activations, the AuxK loss of Gao et al. (2024): the residual error is reconstructed from the top
   ``aux_k`` *dead* features (no activation for ``dead_after_tokens`` tokens), weighted ``aux_coef``. This is
   the dead-feature handling; the dead fraction is logged.
4. Decoder rows are renormalised to unit norm after every step (Adam, constant LR with a linear decay over the
   last 20%). Checkpoints hold every dictionary, optimizer and counter, and the stream position, so a resumed
   run continues the same stream.
5. Optional resampling (``resample_every`` > 0, off by default): every ``resample_every`` steps, up to
   ``resample_until`` of the run, each feature silent for ``resample_dead_after_tokens`` is re-initialised
   toward a token of the current batch drawn with probability ∝ its squared reconstruction error: decoder row =
   that token's error direction, encoder column = its centred input direction with norm ``resample_scale`` ×
   the mean live encoder norm (raised, for BatchTopK, until the pre-activation on that token is 1.25 × the
   running threshold, else the feature could not fire at all), b_enc = 0, and its Adam moments are zeroed. Its
   silence counter is kept, so AuxK keeps training it until it fires. (AuxK alone barely revives features of a dictionary with a small error:
   dead features learn to reconstruct a residual far below the BatchTopK threshold; and under Adam a larger
   ``aux_coef`` does not speed them up, since only the AuxK term reaches their parameters.)
6. Optional threshold calibration (``calibrate_tokens`` > 0, off by default): after the last step a BatchTopK
   dictionary's inference threshold is set so that exactly k features per token fire on average over the next
   ``calibrate_tokens`` training activations (the running threshold lets inference L0 drift away from k).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from circuits.checkpoint import load_checkpoint
from circuits.dictionaries.base import Dictionary, DictionaryConfig, make_dictionary


@dataclass(frozen=True)
class DictTrainConfig:
    """Training recipe for a dictionary set. Units: activations (= tokens) unless stated."""

    total_tokens: int = 3_000_000
    batch_size: int = 4096
    lr: float = 1e-3
    rows_per_forward: int = 64  # corpus rows per model forward pass (64 * 128 = 8192 tokens)
    buffer_tokens: int = 65_536  # per site; refill when half empty
    aux_k: int = 256
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 200_000
    seed: int = 0
    corpus_seed: int = 1  # a stream distinct from the organism's own training stream
    corpus_phases: tuple[int, ...] = (3, 5)  # organism training phases whose rows are streamed, block by block
    checkpoint_every: int = 100  # steps
    log_every: int = 25
    resample_every: int = 0  # steps between resampling dead features; 0 = never (AuxK only)
    resample_until: float = 0.7  # fraction of the run after which nothing is resampled
    resample_dead_after_tokens: int = 100_000  # silent this long -> resampled
    resample_scale: float = 0.2  # resampled encoder norm / mean live encoder norm
    calibrate_tokens: int = 0  # BatchTopK: fit the inference threshold to L0 = k on this many tokens; 0 = off


#: The options that define a run's stream and schedule: a checkpoint resumes only with the same values (the others —
#: resampling, AuxK, calibration, logging — may change from the resumed step on, e.g. to branch an experiment).
RUN_IDENTITY = ("total_tokens", "batch_size", "lr", "rows_per_forward", "buffer_tokens", "seed", "corpus_seed",
                "corpus_phases")


class ActivationStream:
    """Per-site (input, target) activations from the model over the corpus, row block by row block."""

    def __init__(self, model, sites: list[DictionaryConfig], corpus_seed: int, rows_per_forward: int,
                 start_row: int = 0, phases: tuple[int, ...] = (1,)):
        from circuits.organism.corpus import ToyWorldCorpus
        from circuits.organism.tokenizer import build_tokenizer

        self.model = model
        self.sites = sites
        self.corpus = ToyWorldCorpus(corpus_seed)
        self.tokenizer = build_tokenizer()
        self.rows = rows_per_forward
        self.next_row = start_row  # stream position in rows (blocks consumed x rows), not a corpus row
        self.phase_rows = [self.corpus.phase_start_row(p) for p in phases]
        self.hooks = sorted({h for s in sites for h in (s.hook_in, s.hook_out)})

    def corpus_row(self, position: int) -> int:
        """The corpus row where the block at stream `position` starts: blocks cycle through the phases."""
        block, n = position // self.rows, len(self.phase_rows)
        return self.phase_rows[block % n] + (block // n) * self.rows

    @torch.no_grad()
    def next_block(self) -> dict[str, Tensor]:
        """{hook_name: [rows * n_ctx, d]} for the next block of corpus rows."""
        from circuits.organism.train import batch_tokens

        tokens = batch_tokens(self.corpus, self.tokenizer, self.corpus_row(self.next_row), self.rows,
                              self.model.cfg.n_ctx)
        self.next_row += self.rows
        _, cache = self.model.run_with_cache(tokens, names_filter=lambda n: n in self.hooks)
        return {h: cache[h].reshape(tokens.numel(), -1).float() for h in self.hooks}


class ShuffleBuffer:
    """Shuffled blocks of (input, target) rows per site, consumed in order and refilled when used up.

    Its state is (first corpus row of the current fill, generator state before the fill, read position), so a
    checkpoint can rebuild exactly the buffer an uninterrupted run would be reading."""

    def __init__(self, stream: ActivationStream, size: int, generator: torch.Generator):
        self.stream, self.size, self.gen = stream, size, generator
        self.data: dict[str, Tensor] = {}
        self.pos = 0
        self.fill()

    def fill(self) -> None:
        self.fill_row, self.fill_gen_state = self.stream.next_row, self.gen.get_state()
        blocks, have = [], 0
        while have < self.size:
            block = self.stream.next_block()
            blocks.append(block)
            have += next(iter(block.values())).shape[0]
        perm = torch.randperm(have, generator=self.gen)
        self.data = {h: torch.cat([b[h] for b in blocks])[perm] for h in self.stream.hooks}
        self.pos = 0

    def batch(self, n: int) -> dict[str, Tensor]:
        if self.pos + n > next(iter(self.data.values())).shape[0]:
            self.fill()
        out = {h: v[self.pos: self.pos + n] for h, v in self.data.items()}
        self.pos += n
        return out

    def state(self) -> dict:
        return {"fill_row": self.fill_row, "fill_gen_state": self.fill_gen_state, "pos": self.pos}

    def restore(self, state: dict) -> None:
        self.stream.next_row = int(state["fill_row"])
        self.gen.set_state(state["fill_gen_state"])
        self.fill()
        self.pos = int(state["pos"])


def site_tensors(d: Dictionary, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(input [n, d_in], target [n, d_out]) for dictionary `d` from a batch keyed by hook name."""
    return batch[d.hook_in], batch[d.hook_out]


def sparse_decode(codes: Tensor, W_dec: Tensor) -> Tensor:
    """``codes @ W_dec`` [n, d_out] for sparse codes [n, d_sae] and W_dec [d_sae, d_out], reading only the nonzero
    codes: each row is a weighted bag of decoder rows (``embedding_bag``, sum mode, codes as the weights).

    With ≈ k of d_sae features active this costs n·k·d_out instead of n·d_sae·d_out, forward and backward (the
    gradient reaches only the decoder rows and codes that were used, exactly what the dense product gives them:
    a zero code's gradient is discarded by TopK / BatchTopK / ReLU anyway)."""
    import torch.nn.functional as F

    rows, feats = codes.nonzero(as_tuple=True)  # row-major: rows ascending
    offsets = torch.searchsorted(rows, torch.arange(codes.shape[0], device=codes.device))
    return F.embedding_bag(feats, W_dec, offsets, mode="sum", per_sample_weights=codes[rows, feats])


@torch.no_grad()
def initialise(d: Dictionary, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
    """Unit-norm random decoder, tied encoder, data-mean biases."""
    w = torch.randn(d.cfg.d_sae, d.cfg.d_out, generator=generator)
    d.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
    if d.cfg.d_in == d.cfg.d_out:
        d.W_enc.copy_(d.W_dec.T)
    else:
        w_enc = torch.randn(d.cfg.d_in, d.cfg.d_sae, generator=generator)
        d.W_enc.copy_(w_enc / w_enc.norm(dim=0, keepdim=True))
    d.b_dec.copy_(y.mean(0))
    if hasattr(d, "b_in_param"):
        d.b_in_param.copy_(x.mean(0))


def check_init_from(dicts: dict[str, Dictionary], init_from: dict[str, Dictionary]) -> None:
    """Raise `CircuitsError` unless every dictionary to train has a namesake of the same kind and shape to start
    from (a continuation must not silently start some dictionaries at random)."""
    from circuits.errors import CircuitsError

    for name, d in dicts.items():
        src = init_from.get(name)
        if src is None:
            raise CircuitsError(f"--init-from: the set has no {name} to continue from; it has "
                                f"{', '.join(sorted(init_from))}")
        if (src.cfg.kind, src.cfg.d_in, src.cfg.d_sae, src.cfg.d_out) != (d.cfg.kind, d.cfg.d_in, d.cfg.d_sae,
                                                                          d.cfg.d_out):
            raise CircuitsError(f"--init-from: {name} there has d_sae {src.cfg.d_sae} (d_in {src.cfg.d_in}), this run "
                                f"{d.cfg.d_sae} (d_in {d.cfg.d_in}); match it with --site-d-sae {name}={src.cfg.d_sae}")


@torch.no_grad()
def copy_trained(d: Dictionary, src: Dictionary) -> None:
    """Copy every tensor of `src`'s state into `d` where name and shape agree (the rest keeps `d`'s values)."""
    theirs = src.state_dict()
    for key, v in d.state_dict().items():
        if key in theirs and theirs[key].shape == v.shape:
            v.copy_(theirs[key].to(v.dtype))


def dictionary_loss(d: Dictionary, x: Tensor, y: Tensor, steps_since_fired: Tensor, cfg: DictTrainConfig,
                    batch_size: int) -> tuple[Tensor, dict]:
    """FVU + AuxK loss for one batch; updates `steps_since_fired` in place (in tokens)."""
    pre = d.pre_activation(x)
    codes = d.activation(pre)
    out = sparse_decode(codes, d.W_dec) + d.b_dec  # = d.decode(codes), touching only the active features
    skip = d.skip_write(x)  # a skip transcoder's x @ W_skip.T (W_skip starts at zero)
    if skip is not None:
        out = out + skip
    err = y - out
    var = (y - y.mean(0)).pow(2).sum(-1).mean()
    fvu = err.pow(2).sum(-1).mean() / var
    fired = (codes > 0).any(0)
    steps_since_fired.add_(batch_size)
    steps_since_fired[fired] = 0
    dead = steps_since_fired > cfg.dead_after_tokens
    aux = torch.zeros((), dtype=x.dtype)
    if dead.any() and cfg.aux_coef > 0:
        dead_idx = dead.nonzero().squeeze(-1)  # top-k over the dead columns only
        vals, j = pre[:, dead_idx].topk(min(cfg.aux_k, dead_idx.numel()), dim=-1)
        aux_codes = torch.zeros_like(pre).scatter(-1, dead_idx[j], torch.relu(vals))
        aux_out = sparse_decode(aux_codes, d.W_dec)
        aux = (err.detach() - aux_out).pow(2).sum(-1).mean() / var
        aux = torch.nan_to_num(aux, nan=0.0)
    l0 = (codes > 0).float().sum(-1).mean()
    return fvu + cfg.aux_coef * aux, {"fvu": fvu.item(), "aux": aux.item(), "l0": l0.item(),
                                       "dead": dead.float().mean().item()}


@torch.no_grad()
def resample_dead(d: Dictionary, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, dead: Tensor,
                  generator: torch.Generator, scale: float) -> int:
    """Re-initialise the `dead` features [d_sae] of `d` toward high-error tokens of (x, y); returns how many.

    Decoder row = the token's error direction, encoder column = its centred input direction scaled to `scale` ×
    the mean live encoder norm (for BatchTopK at least 1.25 × threshold / ‖input‖, so it fires on that token),
    b_enc = 0; Adam's moments for those rows/columns are zeroed."""
    idx = dead.nonzero().squeeze(-1)
    if idx.numel() == 0:
        return 0
    was_training = d.training
    d.eval()  # inference activation: does not touch BatchTopK's running threshold
    err = y - d(x).output
    d.train(was_training)
    weight = err.pow(2).sum(-1)
    if not torch.isfinite(weight).all() or weight.sum() <= 0:
        return 0
    pick = torch.multinomial(weight, idx.numel(), replacement=True, generator=generator)
    dec = err[pick]
    dec = dec / dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    enc = x[pick] - d.b_in
    x_norm = enc.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    enc = enc / x_norm
    alive = ~dead
    live_norm = d.W_enc[:, alive].norm(dim=0).mean() if alive.any() else d.W_enc.norm(dim=0).mean()
    norm = (scale * live_norm).expand(idx.numel(), 1)
    threshold = getattr(d.activation, "threshold", None)
    if threshold is not None and getattr(d.activation, "k", None):
        # BatchTopK: a feature whose pre-activation cannot reach the threshold on its own token would stay dead
        norm = torch.maximum(norm, 1.25 * threshold[idx, None].clamp_min(0) / x_norm)
    d.W_dec[idx] = dec
    d.W_enc[:, idx] = (enc * norm).T
    d.b_enc[idx] = 0.0
    for p, sl in ((d.W_dec, (idx,)), (d.W_enc, (slice(None), idx)), (d.b_enc, (idx,))):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key][sl] = 0.0
    return int(idx.numel())


@torch.no_grad()
def calibrate_threshold(d: Dictionary, xs: list[Tensor]) -> float | None:
    """Set a BatchTopK dictionary's inference threshold so that mean L0 over inputs `xs` is k; returns it."""
    act = d.activation
    if not (hasattr(act, "threshold") and hasattr(act, "k")):
        return None
    n = sum(x.shape[0] for x in xs)
    n_keep = act.k * n
    cands = []
    for x in xs:
        flat = torch.relu(d.pre_activation(x)).reshape(-1)
        cands.append(flat.topk(min(flat.numel(), 4 * act.k * x.shape[0])).values)
    vals = torch.cat(cands)
    if n_keep > vals.numel():
        return None
    theta = vals.topk(n_keep).values[-1].item()
    act.threshold.fill_(theta)
    return theta


def check_resumable(state: dict, path: Path, dicts: dict[str, Dictionary], cfg: DictTrainConfig) -> None:
    """Raise `CheckpointError` naming every difference between the checkpoint at `path` and this run: the set of
    dictionaries, each one's parameter shapes (``--d-sae``, ``--site-d-sae``), and the training config
    (``--tokens``, ``--k`` ...). A resumed run must be the run that wrote the checkpoint."""
    from circuits.checkpoint import describe_differences
    from circuits.errors import CheckpointError

    fix = "resume with the same options, choose another --out, or pass --no-resume to start afresh"
    saved = state.get("dicts")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} has no dictionaries; {fix}")
    diffs = []
    if set(saved) != set(dicts):
        diffs.append(f"dictionaries {sorted(saved)} in the checkpoint, {sorted(dicts)} now")
    for name in sorted(set(saved) & set(dicts)):
        mine = {k: tuple(v.shape) for k, v in dicts[name].state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in saved[name].items()}
        if mine != theirs:  # W_enc [d_in, d_sae] (a CLT: layers.{l}.W_enc)
            d_old = next((v[-1] for k, v in theirs.items() if k.split(".")[-1] == "W_enc"), None)
            diffs.append(f"{name} has d_sae {d_old} in the checkpoint, {dicts[name].cfg.d_sae} now"
                         if d_old != dicts[name].cfg.d_sae else f"{name}'s parameter shapes differ")
    try:
        saved_cfg = json.loads(state.get("config", "{}"))
    except (TypeError, json.JSONDecodeError):
        saved_cfg = {}
    if saved_cfg:
        now = json.loads(json.dumps(asdict(cfg)))
        same = {k: v for k, v in now.items() if k in RUN_IDENTITY}
        diffs += describe_differences({k: v for k, v in saved_cfg.items() if k in RUN_IDENTITY}, same)
        soft = describe_differences({k: v for k, v in saved_cfg.items() if k not in RUN_IDENTITY},
                                    {k: v for k, v in now.items() if k not in RUN_IDENTITY})
        if soft and not diffs:
            import warnings

            warnings.warn(f"resuming {path} with other options from here on: {'; '.join(soft)}", stacklevel=3)
    if diffs:
        raise CheckpointError(f"checkpoint {path} was written by another run: {'; '.join(diffs)}; {fix}")


def train_dictionaries(model, configs: list[DictionaryConfig], out: Path, cfg: DictTrainConfig = DictTrainConfig(),
                       resume: bool = True, progress: bool = True, stop_after: int | None = None,
                       init_from: dict[str, Dictionary] | None = None) -> dict[str, Dictionary]:
    """Train one dictionary per config on the same activation stream; returns them keyed by name.

    `stop_after`: leave after this many steps of this call (a checkpoint is written), for time-boxed sessions.
    `init_from`: a continuation — each dictionary starts from the trained one of the same name there (every
    parameter and buffer of the same shape is copied; a BatchTopK step counter is not stored in a saved set, so the
    running threshold restarts from the first batch) instead of the random initialisation of step 2, with a fresh
    optimizer; checked before the stream starts."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dicts = {c.name: make_dictionary(c) for c in configs}
    opts = {n: torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.9, 0.999)) for n, d in dicts.items()}
    since = {n: torch.zeros(c.d_sae) for n, c in zip(dicts, configs, strict=True)}
    ckpt_path = out / "dict_checkpoint.pt"
    step = 0
    state = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if state is not None:  # before the activation stream starts: a mismatch is reported at once
        check_resumable(state, ckpt_path, dicts, cfg)
    elif init_from is not None:
        check_init_from(dicts, init_from)
    stream = ActivationStream(model, configs, cfg.corpus_seed, cfg.rows_per_forward, phases=cfg.corpus_phases)
    buffer = ShuffleBuffer(stream, cfg.buffer_tokens, gen)
    if state is None:
        init_gen = torch.Generator().manual_seed(cfg.seed + 1)  # separate: the buffer's stream stays reproducible
        first = {h: v[: cfg.batch_size] for h, v in buffer.data.items()}
        for d in dicts.values():
            if init_from is not None:
                copy_trained(d, init_from[d.cfg.name])
            else:
                initialise(d, *site_tensors(d, first), init_gen)
    else:
        step = int(state["step"])
        buffer.restore(state["buffer"])
        for n, d in dicts.items():
            d.load_state_dict(state["dicts"][n])
            opts[n].load_state_dict(state["opts"][n])
            since[n] = state["since"][n]
    start_step = step
    total_steps = cfg.total_tokens // cfg.batch_size
    decay_start = int(0.8 * total_steps)
    log_path = out / "dict_log.jsonl"
    events_path = out / "dict_events.jsonl"  # resampling and calibration, one record per event
    done = step
    t0 = time.time()
    bar = tqdm(range(step, total_steps), initial=step, total=total_steps, desc="dictionaries", disable=not progress)
    for step in bar:
        lr = cfg.lr * min(1.0, (total_steps - step) / max(1, total_steps - decay_start))
        batch = buffer.batch(cfg.batch_size)
        stats = {}
        for n, d in dicts.items():
            for g in opts[n].param_groups:
                g["lr"] = lr
            loss, s = dictionary_loss(d, *site_tensors(d, batch), since[n], cfg, cfg.batch_size)
            opts[n].zero_grad(set_to_none=True)
            loss.backward()
            opts[n].step()
            d.set_decoder_norm_to_unit()
            stats[n] = s
        done = step + 1
        if cfg.resample_every and done % cfg.resample_every == 0 and done <= cfg.resample_until * total_steps:
            rgen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + done)  # a function of the step: resumable
            n_res = {}
            for n, d in dicts.items():
                dead = since[n] > cfg.resample_dead_after_tokens
                n_res[n] = resample_dead(d, opts[n], *site_tensors(d, batch), dead, rgen, cfg.resample_scale)
            with events_path.open("a") as f:
                f.write(json.dumps({"step": done, "resampled": n_res}) + "\n")
        if done % cfg.log_every == 0 or done == total_steps:
            rec = {"step": done, "tokens": done * cfg.batch_size, "seconds": round(time.time() - t0, 1),
                   **{n: {k: round(v, 5) for k, v in s.items()} for n, s in stats.items()}}
            with log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            worst = max(s["fvu"] for s in stats.values())
            bar.set_postfix(worst_fvu=f"{worst:.3f}")
        if done % cfg.checkpoint_every == 0 or done == total_steps:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"step": done, "buffer": buffer.state(),
                        "dicts": {n: d.state_dict() for n, d in dicts.items()},
                        "opts": {n: o.state_dict() for n, o in opts.items()},
                        "since": since, "config": json.dumps(asdict(cfg))}, tmp)
            tmp.replace(ckpt_path)
        if stop_after is not None and done - start_step >= stop_after:
            if done % cfg.checkpoint_every:
                raise ValueError("stop_after must end on a checkpoint step")
            break
    for d in dicts.values():
        d.eval()
    if cfg.calibrate_tokens > 0 and (stop_after is None or done >= total_steps):
        # the buffer is at the final checkpoint's state here, so a resumed run calibrates on the same tokens
        batches = [buffer.batch(cfg.batch_size) for _ in range(max(1, cfg.calibrate_tokens // cfg.batch_size))]
        thetas = {n: calibrate_threshold(d, [site_tensors(d, b)[0] for b in batches]) for n, d in dicts.items()}
        with events_path.open("a") as f:
            f.write(json.dumps({"step": total_steps, "calibrated_threshold": thetas}) + "\n")
    return dicts
