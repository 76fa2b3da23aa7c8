"""Training a cross-layer transcoder (CLT): every layer's encoder and decoders jointly, as one module.

It runs on the streaming trainer's machinery (`circuits.dictionaries.train`): the same `ActivationStream` over
the same corpus blocks, the same `ShuffleBuffer` (one permutation for every hook, so a token's inputs and targets
at all layers stay together), the same recipe (`DictTrainConfig`: Adam, constant LR with a linear decay over the
last 20%, progress bar, log, checkpoints that rebuild the buffer exactly on resume, AuxK, optional resampling and
threshold calibration).

What differs from per-layer transcoders (Ameisen et al. 2025):

1. **Joint loss.** With ``out_l' = Σ_{l ≤ l'} codes_l @ W_dec_l[:, l' − l] + b_dec_l'`` (`CrossLayerTranscoder`),
   the loss is ``Σ_l' FVU_l'`` — each MLP output's squared error over its variance — so an encoder layer is
   trained by every output it writes, and one Adam step moves all layers.
2. **Activation per encoder layer.** Each layer keeps its own TopK / BatchTopK (k active features per token and
   layer; BatchTopK's running threshold per layer, used as JumpReLU at inference, as for per-layer dictionaries).
3. **Decoder norm over output layers.** After every step each feature's decoders, concatenated over the layers it
   writes (``W_dec_l[i]`` flattened, ``(n_layers − l) · d_model`` values), are scaled to unit norm — the norm the
   CLT's sparsity penalty of Ameisen et al. uses; the encoder carries the scale. Decoders to later layers start at
   zero and the own-layer decoder at a random unit vector (the encoder is its transpose), so an untrained CLT is a
   per-layer transcoder.
4. **Dead features per encoder layer.** Silence counters per layer; AuxK per layer: layer l's top ``aux_k`` dead
   features reconstruct the (detached) errors of every output layer l' ≥ l, concatenated, normalised by the sum
   of those layers' variances, weight ``aux_coef``. Resampling (optional) re-initialises a dead feature of layer
   l toward a token drawn ∝ its squared error summed over layers l' ≥ l: decoders = that token's concatenated
   error direction, encoder = its centred input direction (as `train.resample_dead`).

Decoding uses `train.sparse_decode` (only the ≈ k active features of each token), which makes the 10 decoder
blocks of a 4-layer CLT cost about what its encoders cost.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from circuits.checkpoint import load_checkpoint
from circuits.dictionaries.clt import CLTConfig, CrossLayerTranscoder
from circuits.dictionaries.train import (
    ActivationStream,
    DictTrainConfig,
    ShuffleBuffer,
    calibrate_threshold,
    check_resumable,
    sparse_decode,
)

CHECKPOINT = "clt_checkpoint.pt"


def layer_tensors(clt: CrossLayerTranscoder, batch: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs xs[l] [n, d_model], targets ys[l] [n, d_model]) of every layer from a batch keyed by hook name."""
    return [batch[layer.hook_in] for layer in clt.layers], [batch[layer.hook_out] for layer in clt.layers]


@torch.no_grad()
def initialise_clt(clt: CrossLayerTranscoder, xs: list[Tensor], ys: list[Tensor], generator: torch.Generator) -> None:
    """Own-layer decoder rows random unit vectors, later-layer decoders zero, encoder = own decoder transposed,
    input centring and output biases = the data means."""
    for layer, x, y in zip(clt.layers, xs, ys, strict=True):
        w = torch.randn(clt.cfg.d_sae, clt.cfg.d_model, generator=generator)
        w = w / w.norm(dim=-1, keepdim=True)
        layer.W_dec_out.zero_()
        layer.W_dec_out[:, 0] = w
        layer.W_enc.copy_(w.T)
        layer.b_dec.copy_(y.mean(0))
        layer.b_in_param.copy_(x.mean(0))


@torch.no_grad()
def set_decoder_norm_to_unit(clt: CrossLayerTranscoder) -> None:
    """Each feature's decoders, concatenated over its output layers, to unit norm."""
    for layer in clt.layers:
        w = layer.W_dec_out
        w.div_(w.flatten(1).norm(dim=-1).clamp_min(1e-8)[:, None, None])


def decode_all(clt: CrossLayerTranscoder, codes: list[Tensor]) -> list[Tensor]:
    """Every layer's reconstruction [n, d_model] (= `CrossLayerTranscoder.reconstruct`), decoding sparsely."""
    n, d = codes[0].shape[0], clt.cfg.d_model
    outs = [layer.b_dec.expand(n, d) for layer in clt.layers]
    for i, (layer, c) in enumerate(zip(clt.layers, codes, strict=True)):
        dec = sparse_decode(c, layer.W_dec_out.flatten(1)).reshape(n, -1, d)  # [n, n_layers − i, d_model]
        for j in range(dec.shape[1]):
            outs[i + j] = outs[i + j] + dec[:, j]
    return outs


def clt_loss(clt: CrossLayerTranscoder, xs: list[Tensor], ys: list[Tensor], since: list[Tensor],
             cfg: DictTrainConfig, batch_size: int) -> tuple[Tensor, dict]:
    """Σ_l' FVU_l' + aux_coef · Σ_l AuxK_l for one batch; updates the silence counters `since` in place (tokens).

    Stats per layer l: ``fvu`` of output layer l, ``l0`` and ``dead`` of encoder layer l, ``aux`` of encoder l."""
    pres = [layer.pre_activation(x) for layer, x in zip(clt.layers, xs, strict=True)]
    codes = [layer.activation(p) for layer, p in zip(clt.layers, pres, strict=True)]
    outs = decode_all(clt, codes)
    errs = [y - o for y, o in zip(ys, outs, strict=True)]
    var = [(y - y.mean(0)).pow(2).sum(-1).mean() for y in ys]
    fvus = [e.pow(2).sum(-1).mean() / v for e, v in zip(errs, var, strict=True)]
    loss = sum(fvus)
    stats = {}
    for i, layer in enumerate(clt.layers):
        fired = (codes[i] > 0).any(0)
        since[i].add_(batch_size)
        since[i][fired] = 0
        dead = since[i] > cfg.dead_after_tokens
        aux = torch.zeros((), dtype=xs[i].dtype)
        if dead.any() and cfg.aux_coef > 0:
            dead_idx = dead.nonzero().squeeze(-1)  # top-k over the dead columns only
            vals, j = pres[i][:, dead_idx].topk(min(cfg.aux_k, dead_idx.numel()), dim=-1)
            aux_codes = torch.zeros_like(pres[i]).scatter(-1, dead_idx[j], torch.relu(vals))
            aux_out = sparse_decode(aux_codes, layer.W_dec_out.flatten(1))
            target = torch.cat([e.detach() for e in errs[i:]], dim=-1)
            aux = (target - aux_out).pow(2).sum(-1).mean() / sum(var[i:])
            aux = torch.nan_to_num(aux, nan=0.0)
            loss = loss + cfg.aux_coef * aux
        stats[f"L{i}"] = {"fvu": fvus[i].item(), "aux": aux.item(), "l0": (codes[i] > 0).float().sum(-1).mean().item(),
                          "dead": dead.float().mean().item()}
    return loss, stats


@torch.no_grad()
def resample_dead_clt(clt: CrossLayerTranscoder, opt: torch.optim.Optimizer, xs: list[Tensor], ys: list[Tensor],
                      dead: list[Tensor], generator: torch.Generator, scale: float) -> list[int]:
    """Re-initialise each layer's `dead` features toward high-error tokens of the batch; returns counts per layer.

    Errors are those of the inference-mode CLT (BatchTopK as JumpReLU: the running thresholds are not touched)."""
    was_training = clt.training
    clt.eval()
    codes = [layer.encode(x) for layer, x in zip(clt.layers, xs, strict=True)]
    errs = [y - o for y, o in zip(ys, clt.reconstruct(codes), strict=True)]
    clt.train(was_training)
    counts = []
    for i, layer in enumerate(clt.layers):
        idx = dead[i].nonzero().squeeze(-1)
        err = torch.cat(errs[i:], dim=-1)  # [n, (n_layers − i) · d_model]
        weight = err.pow(2).sum(-1)
        if idx.numel() == 0 or not torch.isfinite(weight).all() or weight.sum() <= 0:
            counts.append(0)
            continue
        pick = torch.multinomial(weight, idx.numel(), replacement=True, generator=generator)
        dec = err[pick] / err[pick].norm(dim=-1, keepdim=True).clamp_min(1e-8)
        enc = xs[i][pick] - layer.b_in
        x_norm = enc.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        enc = enc / x_norm
        alive = ~dead[i]
        live_norm = (layer.W_enc[:, alive] if alive.any() else layer.W_enc).norm(dim=0).mean()
        norm = (scale * live_norm).expand(idx.numel(), 1)
        threshold = getattr(layer.activation, "threshold", None)
        if threshold is not None and getattr(layer.activation, "k", None):
            norm = torch.maximum(norm, 1.25 * threshold[idx, None].clamp_min(0) / x_norm)
        layer.W_dec_out[idx] = dec.reshape(idx.numel(), -1, clt.cfg.d_model)
        layer.W_enc[:, idx] = (enc * norm).T
        layer.b_enc[idx] = 0.0
        for p, sl in ((layer.W_dec_out, (idx,)), (layer.W_enc, (slice(None), idx)), (layer.b_enc, (idx,))):
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    st[key][sl] = 0.0
        counts.append(int(idx.numel()))
    return counts


def train_clt(model, clt_cfg: CLTConfig, out: Path, cfg: DictTrainConfig | None = None,
              resume: bool = True, progress: bool = True, stop_after: int | None = None) -> CrossLayerTranscoder:
    """Train one CLT over all of `model`'s layers on the streamed activations; returns it in eval mode.

    Writes ``clt_log.jsonl`` (per layer: fvu, l0, dead, aux), ``clt_events.jsonl`` (resampling, calibration) and
    ``clt_checkpoint.pt`` (every ``checkpoint_every`` steps) under `out`. `stop_after`: leave after this many steps
    of this call (on a checkpoint step), for time-boxed sessions; a later call resumes."""
    from tqdm.auto import tqdm

    cfg = cfg or DictTrainConfig()
    if clt_cfg.n_layers != model.cfg.n_layers or clt_cfg.d_model != model.cfg.d_model:
        raise ValueError(f"a CLT over {clt_cfg.n_layers} layers of width {clt_cfg.d_model} does not fit a model with "
                         f"{model.cfg.n_layers} layers of width {model.cfg.d_model}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    clt = CrossLayerTranscoder(clt_cfg)
    opt = torch.optim.Adam(clt.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    since = [torch.zeros(clt_cfg.d_sae) for _ in range(clt_cfg.n_layers)]
    ckpt_path = out / CHECKPOINT
    step = 0
    state = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if state is not None:  # before the stream starts: a mismatch is reported at once
        check_resumable(state, ckpt_path, {"clt": clt}, cfg)
    sites = [clt_cfg.layer_config(layer) for layer in range(clt_cfg.n_layers)]
    stream = ActivationStream(model, sites, cfg.corpus_seed, cfg.rows_per_forward, phases=cfg.corpus_phases)
    buffer = ShuffleBuffer(stream, cfg.buffer_tokens, gen)
    if state is None:
        init_gen = torch.Generator().manual_seed(cfg.seed + 1)
        first = {h: v[: cfg.batch_size] for h, v in buffer.data.items()}
        initialise_clt(clt, *layer_tensors(clt, first), init_gen)
    else:
        step = int(state["step"])
        buffer.restore(state["buffer"])
        clt.load_state_dict(state["dicts"]["clt"])
        opt.load_state_dict(state["opts"]["clt"])
        since = list(state["since"])
    clt.train()
    start_step = step
    total_steps = cfg.total_tokens // cfg.batch_size
    decay_start = int(0.8 * total_steps)
    log_path, events_path = out / "clt_log.jsonl", out / "clt_events.jsonl"
    done = step
    t0 = time.time()
    bar = tqdm(range(step, total_steps), initial=step, total=total_steps, desc="cross-layer transcoder",
               disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (total_steps - step) / max(1, total_steps - decay_start))
        xs, ys = layer_tensors(clt, buffer.batch(cfg.batch_size))
        loss, stats = clt_loss(clt, xs, ys, since, cfg, cfg.batch_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        set_decoder_norm_to_unit(clt)
        done = step + 1
        if cfg.resample_every and done % cfg.resample_every == 0 and done <= cfg.resample_until * total_steps:
            rgen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + done)  # a function of the step: resumable
            dead = [s > cfg.resample_dead_after_tokens for s in since]
            counts = resample_dead_clt(clt, opt, xs, ys, dead, rgen, cfg.resample_scale)
            with events_path.open("a") as f:
                f.write(json.dumps({"step": done, "resampled": {f"L{i}": c for i, c in enumerate(counts)}}) + "\n")
        if done % cfg.log_every == 0 or done == total_steps:
            rec = {"step": done, "tokens": done * cfg.batch_size, "seconds": round(time.time() - t0, 1),
                   **{n: {k: round(v, 5) for k, v in s.items()} for n, s in stats.items()}}
            with log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(worst_fvu=f"{max(s['fvu'] for s in stats.values()):.3f}")
        if done % cfg.checkpoint_every == 0 or done == total_steps:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"step": done, "buffer": buffer.state(), "dicts": {"clt": clt.state_dict()},
                        "opts": {"clt": opt.state_dict()}, "since": since, "config": json.dumps(asdict(cfg)),
                        "clt_config": json.dumps(clt_cfg.to_dict())}, tmp)
            tmp.replace(ckpt_path)
        if stop_after is not None and done - start_step >= stop_after:
            if done % cfg.checkpoint_every:
                raise ValueError("stop_after must end on a checkpoint step")
            break
    clt.eval()
    if cfg.calibrate_tokens > 0 and (stop_after is None or done >= total_steps):
        batches = [buffer.batch(cfg.batch_size) for _ in range(max(1, cfg.calibrate_tokens // cfg.batch_size))]
        thetas = {f"L{i}": calibrate_threshold(layer, [b[layer.hook_in] for b in batches])
                  for i, layer in enumerate(clt.layers)}
        with events_path.open("a") as f:
            f.write(json.dumps({"step": total_steps, "calibrated_threshold": thetas}) + "\n")
    return clt
