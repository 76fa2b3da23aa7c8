"""load_model: the embedded organism offline, and one clear error for every bad input."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from circuits import ModelLoadError, load_model
from circuits.model import DATA_DIR, hub_reachable
from circuits.organism.train import OrganismModelConfig, OrganismTrainConfig, train_organism

TINY = OrganismModelConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=32)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_organism")
    train_organism(folder, TINY, OrganismTrainConfig(steps=2, batch_size=2, warmup_steps=1, phase2_steps=0, phase3_steps=0, phase4_steps=0, phase5_steps=0), resume=False,
                   progress=False)
    return folder


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint.pt", "log.jsonl"))
    return dst


def test_tiny_folder_loads_and_runs(tiny_folder, no_network):
    model, tok = load_model(str(tiny_folder))
    logits = model(model.to_tokens("When Mary and John went to the store"))
    assert logits.shape[-1] == len(tok) != model.cfg.d_model


def test_unknown_model_name():
    with pytest.raises(ModelLoadError, match="unknown model 'gpt5'.*organism"):
        load_model("gpt5")


@pytest.mark.skipif(hub_reachable(), reason="the hub is reachable here; this test is for offline machines")
def test_gpt2_offline_fails_fast_naming_the_default():
    start = time.time()
    with pytest.raises(ModelLoadError, match="offline.*organism"):
        load_model("gpt2")
    assert time.time() - start < 10


def test_gpt2_with_network_blocked_fails_fast(no_network):
    start = time.time()
    with pytest.raises(ModelLoadError, match="organism"):
        load_model("gpt2")
    assert time.time() - start < 10


def test_missing_weight_file(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"missing model file .*model\.safetensors.*organism train"):
        load_model(str(folder))


def test_corrupt_weight_file(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"corrupt weight file .*model\.safetensors"):
        load_model(str(folder))


def test_tokenizer_that_disagrees_with_the_model(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "m")
    tok_json = folder / "tokenizer" / "tokenizer.json"
    data = json.loads(tok_json.read_text())
    data["model"]["vocab"]["zzextra"] = max(data["model"]["vocab"].values()) + 50
    tok_json.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"tokenizer .* tokens but the model .* expects"):
        load_model(str(folder))


def test_weights_that_disagree_with_config(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["d_mlp"] = 128
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"does not match its config"):
        load_model(str(folder))


def test_committed_organism_loads_offline(no_network):
    # load time (target < 2 s) is measured by benchmarks/load_model.py, not here
    model, tok = load_model("organism")
    assert model.cfg.n_layers == 4 and model.cfg.d_model == 256 and model.cfg.n_heads == 8
    assert model.cfg.n_ctx >= 64 and model.cfg.d_vocab != model.cfg.d_model
    assert model.cfg.normalization_type == "LN" and model.cfg.act_fn == "gelu"


def test_committed_organism_reproduces_committed_eval(no_network):
    from circuits.organism.evaluate import CI_SIZES, evaluate_organism

    committed = json.loads((DATA_DIR / "organism" / "eval.json").read_text())
    sub = committed["ci_subsample"]
    assert sub["sizes"]["ioi"] == CI_SIZES.ioi
    model, _ = load_model("organism")
    fresh = evaluate_organism(model, sizes=CI_SIZES)
    for family, metrics in sub["results"].items():
        for name, value in metrics.items():
            assert fresh[family][name] == pytest.approx(value, abs=1e-3), (family, name)
    # and the subsample agrees with the full committed evaluation within sampling error
    for key in ("ioi_train_templates_ABBA", "ioi_train_templates_BABA"):
        assert fresh[key]["accuracy"] == pytest.approx(committed[key]["accuracy"], abs=0.1)
    assert fresh["one_hop"]["top1"] == pytest.approx(committed["one_hop"]["top1"], abs=1e-6)
