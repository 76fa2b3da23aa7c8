"""Dictionary training on a tiny model: the loss falls, L0 stays at k, checkpoints resume; fidelity report runs."""

from __future__ import annotations

import dataclasses
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


def test_dead_fraction_counts_features_silent_over_the_long_window(tiny_model, trained):
    import torch

    from circuits.dictionaries.base import make_dictionary
    from circuits.dictionaries.evaluate import fired_features, heldout_tokens

    _, dicts = trained
    d = dicts["transcoder_L0"]
    dead_dict = make_dictionary(d.cfg)
    dead_dict.load_state_dict(d.state_dict())
    with torch.no_grad():
        dead_dict.W_enc[:, :10] = 0.0
        dead_dict.b_enc[:10] = -100.0  # these ten can never fire
    dset = DictionarySet("tiny", {"transcoder_L0": dead_dict})
    fired = fired_features(tiny_model, dset, rows=24, batch=8)["transcoder_L0"]
    assert not fired[:10].any()
    # the count is exactly the features whose codes are never positive on those rows, computed independently
    tokens = heldout_tokens(tiny_model.cfg.n_ctx, 24, 0)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens)
        codes = dead_dict.encode(cache[dead_dict.hook_in].reshape(-1, dead_dict.cfg.d_in))
    assert torch.equal(fired, (codes > 0).any(0))
    short = evaluate_fidelity(tiny_model, dset, FidelitySizes(rows=4, mean_rows=4, ioi_prompts=4, batch=4,
                                                             dead_rows=4))["dictionaries"]["transcoder_L0"]
    long = evaluate_fidelity(tiny_model, dset, FidelitySizes(rows=4, mean_rows=4, ioi_prompts=4, batch=4,
                                                            dead_rows=24))["dictionaries"]["transcoder_L0"]
    assert long["dead"] == pytest.approx(1 - fired.float().mean().item())
    assert 10 / d.cfg.d_sae <= long["dead"] <= short["dead"] == short["dead_scored"]
    assert long["dead_tokens"] == 24 * tiny_model.cfg.n_ctx


def _kill_features(folder, name: str, n: int) -> None:
    """Make the first `n` features of dictionary `name` in a checkpoint unable to fire (encoder off, bias -100)."""
    import torch

    ckpt = folder / "dict_checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    sd = state["dicts"][name]
    sd["W_enc"][:, :n] = 0.0
    sd["b_enc"][:n] = -100.0
    torch.save(state, ckpt)


def _dead_after_training(model, folder, name: str, cfg: DictTrainConfig) -> tuple[int, list[dict]]:
    """Resume the run in `folder`; (features that never fire on 4,096 fresh activations, the loss log)."""
    import torch

    from circuits.dictionaries.train import ActivationStream

    dicts = train_dictionaries(model, _configs(model), folder, cfg, progress=False)
    d = dicts[name]
    stream = ActivationStream(model, _configs(model), corpus_seed=7, rows_per_forward=128)
    x = stream.next_block()[d.hook_in]
    with torch.no_grad():
        fired = (d.encode(x) > 0).any(0)
    log = [json.loads(line) for line in (folder / "dict_log.jsonl").read_text().splitlines()]
    return int((~fired).sum()), log


def test_resampling_revives_killed_features(tiny_model, tmp_path):
    """Kill half the transcoder's features mid-run: resampling leaves far fewer dead than AuxK alone, and the
    loss still falls after the kill."""
    import shutil

    name = "transcoder_L0"
    base = tmp_path / "base"
    train_dictionaries(tiny_model, _configs(tiny_model), base, CFG, progress=False, stop_after=40)
    _kill_features(base, name, 32)
    plain = tmp_path / "plain"
    shutil.copytree(base, plain)
    resampled = tmp_path / "resampled"
    shutil.copytree(base, resampled)
    dead_plain, _ = _dead_after_training(tiny_model, plain, name, CFG)
    cfg = dataclasses.replace(CFG, resample_every=10, resample_until=0.8, resample_dead_after_tokens=1024)
    dead_res, log = _dead_after_training(tiny_model, resampled, name, cfg)
    events = [json.loads(line) for line in (resampled / "dict_events.jsonl").read_text().splitlines()]
    assert events and events[0]["resampled"][name] >= 32
    assert dead_plain >= 24, dead_plain  # AuxK alone does not bring them back in this short run
    assert dead_res <= dead_plain // 2, (dead_res, dead_plain)
    after_kill = [r[name]["fvu"] for r in log if r["step"] > 40]
    assert after_kill[-1] < after_kill[0]
    assert log[-1][name]["l0"] <= 4 + 1e-6


def test_calibrated_threshold_gives_l0_k(tiny_model, tmp_path):
    import torch

    from circuits.dictionaries.train import ActivationStream

    cfg = dataclasses.replace(CFG, total_tokens=256 * 20, calibrate_tokens=2048)
    dicts = train_dictionaries(tiny_model, _configs(tiny_model), tmp_path, cfg, progress=False)
    d = dicts["transcoder_L0"]  # batchtopk
    x = ActivationStream(tiny_model, _configs(tiny_model), corpus_seed=7, rows_per_forward=128).next_block()[d.hook_in]
    with torch.no_grad():
        l0 = (d.encode(x) > 0).float().sum(-1).mean().item()
    assert abs(l0 - 4) < 0.6, l0
    assert (tmp_path / "dict_events.jsonl").read_text().count("calibrated_threshold") == 1


def test_activation_stream_alternates_the_configured_corpus_phases():
    from circuits.dictionaries.train import ActivationStream
    from circuits.organism.corpus import PHASE3_START_ROW, PHASE5_START_ROW

    stream = ActivationStream(None, [], corpus_seed=1, rows_per_forward=64, phases=(3, 5))
    assert [stream.corpus_row(p * 64) for p in range(4)] == [
        PHASE3_START_ROW, PHASE5_START_ROW, PHASE3_START_ROW + 64, PHASE5_START_ROW + 64]
    assert stream.corpus.phase(stream.corpus_row(0), "train") == 3
    assert stream.corpus.phase(stream.corpus_row(64), "train") == 5
    assert ActivationStream(None, [], 1, 64).corpus_row(128) == 128  # default: phase-1 rows in order
    with pytest.raises(ValueError, match="training phase"):
        ActivationStream(None, [], 1, 64, phases=(6,))


def test_per_site_options_parse_and_bad_values_are_one_line_errors(capsys):
    from circuits.cli import _site_values, main

    names = {"transcoder_L3", "attn_sae_L0"}
    acts = _site_values(["transcoder_L3=topk"], "--site-activation", "topk or batchtopk", names,
                        lambda v: v if v in ("topk", "batchtopk") else None)
    assert acts == {"transcoder_L3": "topk"}
    for flag, spec in (("--site-activation", "transcoder_L3=gelu"), ("--site-activation", "mlp_L3=topk"),
                       ("--site-d-sae", "transcoder_L3=-5")):
        assert main(["dicts", "train", "--model", "organism", flag, spec, "--tokens", "4096"]) == 2
        err = capsys.readouterr().err.strip()
        assert spec in err and "NAME one of" in err and len(err.splitlines()) == 1, err


def test_skip_transcoder_trains_its_skip_term(tiny_model, tmp_path):
    """A skip transcoder trains on the streaming trainer: W_skip leaves zero and the FVU falls below the same run
    without a skip; it saves in our layout with W_skip and reloads with the same outputs."""
    import torch

    from circuits.dictionaries.io import load_dictionary, save_dictionary

    c = tiny_model.cfg
    base = DictionaryConfig("transcoder", 0, c.d_model, 64, c.d_model, activation="batchtopk", k=4)
    cfg = dataclasses.replace(CFG, total_tokens=256 * 40)
    fvus = {}
    for skip in (False, True):
        out = tmp_path / f"skip{skip}"
        d = train_dictionaries(tiny_model, [dataclasses.replace(base, skip=skip)], out, cfg,
                               progress=False)["transcoder_L0"]
        fvus[skip] = json.loads((out / "dict_log.jsonl").read_text().splitlines()[-1])["transcoder_L0"]["fvu"]
    assert d.cfg.skip and d.W_skip.abs().max() > 0
    assert fvus[True] < fvus[False], fvus
    again = load_dictionary(save_dictionary(d, tmp_path / "saved"))
    x = torch.randn(16, c.d_model)
    torch.testing.assert_close(again.eval()(x).output, d.eval()(x).output, rtol=1e-5, atol=1e-5)


def test_continuation_starts_from_the_trained_set_and_refuses_a_mismatch(tiny_model, trained, tmp_path):
    """`init_from` (`dicts train --init-from SET`): a continuation on new corpus rows starts where the trained set
    ended — its first logged FVU is close to the set's last, far below a fresh run's — and a set without the
    dictionary or with another width is refused before any training."""
    from circuits.errors import CircuitsError

    out, dicts = trained
    last = json.loads((out / "dict_log.jsonl").read_text().splitlines()[-1])
    cfg = dataclasses.replace(CFG, total_tokens=256 * 20, corpus_seed=5, lr=1e-3)
    train_dictionaries(tiny_model, _configs(tiny_model), tmp_path / "cont", cfg, progress=False, init_from=dicts)
    train_dictionaries(tiny_model, _configs(tiny_model), tmp_path / "fresh", cfg, progress=False)
    first_cont = json.loads((tmp_path / "cont" / "dict_log.jsonl").read_text().splitlines()[0])
    first_fresh = json.loads((tmp_path / "fresh" / "dict_log.jsonl").read_text().splitlines()[0])
    for name in dicts:
        assert first_cont[name]["fvu"] < 1.5 * last[name]["fvu"], (name, first_cont[name], last[name])
        assert first_cont[name]["fvu"] < 0.7 * first_fresh[name]["fvu"], (name, first_cont[name], first_fresh[name])
    wider = [dataclasses.replace(c, d_sae=96) for c in _configs(tiny_model)]
    with pytest.raises(CircuitsError, match="--site-d-sae transcoder_L0=64"):
        train_dictionaries(tiny_model, wider, tmp_path / "bad", cfg, progress=False, init_from=dicts)
    with pytest.raises(CircuitsError, match="has no attn_sae_L1"):
        train_dictionaries(tiny_model, _configs(tiny_model), tmp_path / "bad2", cfg, progress=False,
                           init_from={"transcoder_L0": dicts["transcoder_L0"]})
    assert not (tmp_path / "bad" / "dict_log.jsonl").exists()


def test_continuation_options_are_checked_before_the_model_loads(capsys):
    """`dicts train` refuses a repeated or unknown corpus phase, a non-positive --lr and --init-from with --clt in
    one line (exit 2), before loading anything."""
    from circuits.cli import main

    for extra, words in ((["--phases", "5", "5"], "distinct training phases"),
                         (["--phases", "7"], "distinct training phases"),
                         (["--lr", "0"], "must be positive"),
                         (["--init-from", "organism-base", "--clt"], "cannot be combined with --clt")):
        assert main(["dicts", "train", "--model", "organism", "--tokens", "4096", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
