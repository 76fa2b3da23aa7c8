"""Dictionary training on a tiny model: the loss falls, L0 stays at k, checkpoints resume; fidelity report runs."""

from __future__ import annotations

import json
import math

import pytest

from circuits.dictionaries.base import DictionaryConfig
from circuits.dictionaries.dictset import DictionarySet
from circuits.dictionaries.evaluate import FidelitySizes, evaluate_fidelity
from circuits.dictionaries.train import DictTrainConfig, train_dictionaries


def _configs(model):
    c = model.cfg
    return [DictionaryConfig("transcoder", 0, c.d_model, 64, c.d_model, activation="batchtopk", k=4),
            DictionaryConfig("attention_sae", 1, c.n_heads * c.d_head, 64, c.n_heads * c.d_head,
                             activation="topk", k=4, n_heads=c.n_heads)]


CFG = DictTrainConfig(total_tokens=256 * 80, batch_size=256, lr=3e-3, rows_per_forward=16, buffer_tokens=2048,
                      dead_after_tokens=2048, checkpoint_every=40, log_every=10)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("dicts")
    dicts = train_dictionaries(tiny_model, _configs(tiny_model), out, CFG, progress=False)
    return out, dicts


def test_training_lowers_fvu_and_keeps_l0(trained):
    out, dicts = trained
    log = [json.loads(line) for line in (out / "dict_log.jsonl").read_text().splitlines()]
    for name in dicts:
        first, last = log[0][name], log[-1][name]
        assert last["fvu"] < 0.7 * first["fvu"], (name, first, last)
        assert last["l0"] <= 4 + 1e-6


def test_resume_reproduces_an_uninterrupted_run(tiny_model, trained, tmp_path):
    import torch

    _, full = trained
    train_dictionaries(tiny_model, _configs(tiny_model), tmp_path, CFG, progress=False, stop_after=40)
    resumed = train_dictionaries(tiny_model, _configs(tiny_model), tmp_path, CFG, progress=False)
    for name, d in full.items():
        for p, q in zip(d.parameters(), resumed[name].parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_fidelity_report_on_tiny_set(tiny_model, trained):
    import torch

    from circuits.dictionaries.evaluate import heldout_tokens

    _, dicts = trained
    sizes = FidelitySizes(rows=8, mean_rows=8, ioi_prompts=4, batch=8)
    report = evaluate_fidelity(tiny_model, DictionarySet("tiny", dicts), sizes)
    assert set(report["dictionaries"]) == {"transcoder_L0", "attn_sae_L1"}
    for m in report["dictionaries"].values():
        assert 0 <= m["fvu"] and 0 < m["l0"] <= 4.5 and 0 <= m["dead"] <= 1
        assert m["kl"] >= 0 and math.isfinite(m["ce_spliced"])
        assert m["ce_increase"] == pytest.approx(m["ce_spliced"] - m["ce_clean"])
    # the zero-ablation baseline is the model with the component's activation set to zero, computed independently
    tokens = heldout_tokens(tiny_model.cfg.n_ctx, 8, 0)
    with torch.no_grad():
        logits = tiny_model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, hook: torch.zeros_like(a))])
    nll = -logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None]).mean().item()
    assert report["dictionaries"]["transcoder_L0"]["ce_zero"] == pytest.approx(nll, abs=1e-5)
    assert report["all"]["ce_clean"] == report["dictionaries"]["transcoder_L0"]["ce_clean"]
