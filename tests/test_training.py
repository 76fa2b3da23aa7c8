"""The organism's training recipe on a tiny config: loss goes down, and resuming reproduces the same weights."""

from __future__ import annotations

import json

import torch

from circuits.organism.train import OrganismModelConfig, OrganismTrainConfig, train_organism

TINY = OrganismModelConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=32)


def _cfg(steps: int, phase2_steps: int = 0) -> OrganismTrainConfig:
    return OrganismTrainConfig(steps=steps, batch_size=8, lr=3e-3, warmup_steps=20, checkpoint_every=10,
                               eval_every=1000, log_every=10, phase2_steps=phase2_steps, phase2_warmup=2,
                               phase3_steps=phase2_steps, phase4_steps=phase2_steps,
                               phase5_steps=phase2_steps)


def test_a_few_hundred_steps_lower_the_loss(tmp_path):
    train_organism(tmp_path, TINY, _cfg(300), resume=False, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    first, last = log[0]["loss"], log[-1]["loss"]
    assert last < first - 1.5, (first, last)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer" / "tokenizer.json").exists()


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    # 10 phase-1 steps + 10 steps of each of phases 2-4, uninterrupted vs. stopped after phase 1 and resumed
    train_organism(tmp_path / "a", TINY, _cfg(10, 10), resume=False, progress=False)
    train_organism(tmp_path / "b", TINY, _cfg(10, 0), resume=False, progress=False)
    train_organism(tmp_path / "b", TINY, _cfg(10, 10), resume=True, progress=False)  # picks up at step 10
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
