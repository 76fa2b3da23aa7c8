"""Training recipe for the organism: a GPT-2-style HookedTransformer trained from scratch on the toy world.

The recipe is fully determined by `OrganismTrainConfig`: the model is initialised from ``seed``, row *i* of the
corpus depends only on ``(corpus_seed, i)`` and step *k* consumes rows ``k*batch .. (k+1)*batch-1``, so a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would have seen.

Checkpoints (``checkpoint.pt``: model, optimizer and scheduler state, step; plain tensors and numbers, loaded with
``weights_only=True``) are written every ``checkpoint_every`` steps; ``log.jsonl`` gets one line per logged step.
At the end the weights are exported as ``model.safetensors`` + ``config.json`` + ``tokenizer/``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from circuits.errors import ConfigError
from circuits.organism.corpus import ToyWorldCorpus


@dataclass(frozen=True)
class OrganismModelConfig:
    """Architecture of the organism (GPT-2 style: pre-LN, GELU MLP, learned absolute positions)."""

    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 8
    d_head: int = 32
    d_mlp: int = 1024
    n_ctx: int = 128  # tokens; IOI prompts are ~20 tokens, induction rows need room for two copies of a span
    d_vocab: int = 0  # filled from the tokenizer

    def __post_init__(self):
        if self.d_model != self.n_heads * self.d_head:
            raise ValueError("d_model must equal n_heads * d_head")


@dataclass(frozen=True)
class OrganismTrainConfig:
    """How the organism is trained. Units: tokens per step = batch_size * n_ctx."""

    seed: int = 0  # model initialisation
    corpus_seed: int = 0  # corpus stream
    steps: int = 4500  # phase 1: 4500 * 32 * 128 = 18.4M tokens
    phase2_steps: int = 1500  # phase 2 (compositional IOI + name callbacks): 6.1M tokens
    phase2_lr: float = 5e-4
    phase2_warmup: int = 50
    phase3_steps: int = 1500  # phase 3 (IOI intros from a grammar): 6.1M tokens, same lr shape as phase 2
    phase4_steps: int = 1500  # phase 4 (slot-noised IOI): 6.1M tokens, same lr shape as phase 2, fresh Adam
    phase5_steps: int = 1500  # phase 5 (phase 4 with every name in IOI, no held-out pair): 6.1M tokens, ditto
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 200
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    eval_every: int = 250
    log_every: int = 25
    mix: str = "phased"  # "phased": phases 1-3 as above; "final": one corpus (ToyWorldCorpus mix="final") throughout

    def __post_init__(self):
        if self.mix not in ("phased", "final"):
            raise ConfigError(f"unknown mix {self.mix!r}; use 'phased' or 'final'")
        if self.mix == "final" and (self.phase2_steps or self.phase3_steps or self.phase4_steps
                                    or self.phase5_steps):
            raise ConfigError("the final mix has no phases: set phase2_steps .. phase5_steps to 0")
        if self.steps <= 0 or self.batch_size <= 0 or min(self.phase2_steps, self.phase3_steps,
                                                          self.phase4_steps, self.phase5_steps) < 0:
            raise ConfigError(f"steps (phase 1) and batch_size must be at least 1 and phase steps non-negative; got "
                              f"steps {self.steps}, batch_size {self.batch_size}, phase steps {self.phase2_steps}, "
                              f"{self.phase3_steps}, {self.phase4_steps}, {self.phase5_steps}")

    @property
    def total_steps(self) -> int:
        return self.steps + self.phase2_steps + self.phase3_steps + self.phase4_steps + self.phase5_steps

    @property
    def phases(self) -> list[tuple[int, int]]:
        """(first step, length) of phases 2-5, in order (a phase of length 0 is skipped in training)."""
        out, start = [], self.steps
        for length in (self.phase2_steps, self.phase3_steps, self.phase4_steps, self.phase5_steps):
            out.append((start, length))
            start += length
        return out


def hooked_config(model_cfg: OrganismModelConfig):
    """The TransformerLens config for an organism architecture."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=model_cfg.n_layers, d_model=model_cfg.d_model, n_heads=model_cfg.n_heads,
        d_head=model_cfg.d_head, d_mlp=model_cfg.d_mlp, n_ctx=model_cfg.n_ctx, d_vocab=model_cfg.d_vocab,
        act_fn="gelu", normalization_type="LN", positional_embedding_type="standard",
        default_prepend_bos=True, tokenizer_prepends_bos=False,
    )


def batch_tokens(corpus: ToyWorldCorpus, tokenizer, start_row: int, n_rows: int, n_ctx: int,
                 stream: str = "train") -> torch.Tensor:
    """Rows ``start_row .. start_row+n_rows-1`` as a [n_rows, n_ctx] LongTensor, each starting with BOS."""
    texts = [corpus.row_text(start_row + i, n_ctx, stream) for i in range(n_rows)]
    bos = tokenizer.token_to_id("<|endoftext|>")
    rows = [[bos] + enc.ids[: n_ctx - 1] for enc in tokenizer.encode_batch(texts)]
    return torch.tensor(rows, dtype=torch.long)


def _lr_at(cfg: OrganismTrainConfig, step: int) -> float:
    """Phase 1: linear warm-up then cosine to lr*min_lr_ratio; phases 2-5: each the same shape from phase2_lr."""
    for start, length in reversed(cfg.phases):
        if step >= start and length > 0:
            k = step - start
            if k < cfg.phase2_warmup:
                return cfg.phase2_lr * (k + 1) / cfg.phase2_warmup
            progress = (k - cfg.phase2_warmup) / max(1, length - cfg.phase2_warmup)
            return cfg.phase2_lr * (cfg.min_lr_ratio
                                    + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_model(model_cfg: OrganismModelConfig, seed: int, tokenizer_folder: Path):
    from transformer_lens import HookedTransformer

    from circuits.organism.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    return HookedTransformer(hooked_config(model_cfg), tokenizer=load_tokenizer(tokenizer_folder))


def export_model(model, model_cfg: OrganismModelConfig, train_cfg: OrganismTrainConfig, out: Path,
                 extra: dict | None = None) -> None:
    """Write model.safetensors + config.json (the tokenizer folder is already there)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    meta = {"format": "circuits-organism/1", "model": asdict(model_cfg), "training": asdict(train_cfg)}
    meta.update(extra or {})
    _atomic_write_text(out / "config.json", json.dumps(meta, indent=2))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def train_organism(out: Path, model_cfg: OrganismModelConfig = OrganismModelConfig(),
                   cfg: OrganismTrainConfig = OrganismTrainConfig(), resume: bool = True,
                   progress: bool = True, quick_eval=None) -> dict:
    """Train (or resume) an organism in folder `out`; returns the final log record.

    `quick_eval(model) -> dict` is called every ``eval_every`` steps and its numbers are logged.
    """
    from tqdm.auto import tqdm

    from circuits.organism.tokenizer import build_tokenizer, save_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(out / "tokenizer")
    fast_tok = build_tokenizer()
    model_cfg = OrganismModelConfig(**{**asdict(model_cfg), "d_vocab": fast_tok.get_vocab_size()})
    model = build_model(model_cfg, cfg.seed, out / "tokenizer")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "W_pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "W_pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    corpus = ToyWorldCorpus(cfg.corpus_seed, phase2_start_row=cfg.steps * cfg.batch_size,
                            phase3_start_row=cfg.phases[1][0] * cfg.batch_size, mix=cfg.mix,
                            phase4_start_row=cfg.phases[2][0] * cfg.batch_size,
                            phase5_start_row=cfg.phases[3][0] * cfg.batch_size)
    ckpt_path = out / "checkpoint.pt"
    start = 0
    if resume and ckpt_path.exists():
        from circuits.checkpoint import load_checkpoint
        from circuits.errors import CheckpointError

        ckpt = load_checkpoint(ckpt_path)
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            start = int(ckpt["step"])
        except (KeyError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit this model or run ({first}); choose another "
                                  "--out, delete it, or pass --no-resume") from None
    torch.manual_seed(cfg.seed + start)
    log_path = out / "log.jsonl"
    heldout = batch_tokens(corpus, fast_tok, 0, 64, model_cfg.n_ctx, stream="heldout")
    record: dict = {}
    t0 = time.time()
    total = cfg.total_steps
    bar = tqdm(range(start, total), initial=start, total=total, desc="organism", disable=not progress)
    for step in bar:
        if any(step == start and length > 0 for start, length in cfg.phases[1:]):
            opt.state.clear()  # phases 3-5 start from fresh Adam moments (a new corpus: old moments mislead)
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        tokens = batch_tokens(corpus, fast_tok, step * cfg.batch_size, cfg.batch_size, model_cfg.n_ctx)
        loss = model(tokens, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            record = {"step": done, "tokens": done * cfg.batch_size * model_cfg.n_ctx, "loss": loss.item(),
                      "lr": _lr_at(cfg, step), "seconds": round(time.time() - t0, 1)}
            if done % cfg.eval_every == 0 or done == total:
                with torch.no_grad():
                    record["heldout_loss"] = model(heldout, return_type="loss").item()
                    if quick_eval is not None:
                        record.update(quick_eval(model))
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if done % cfg.checkpoint_every == 0 or done == total:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done}, tmp)
            tmp.replace(ckpt_path)
    export_model(model, model_cfg, cfg, out, {"final": record})
    return record
