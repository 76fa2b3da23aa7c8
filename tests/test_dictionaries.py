"""Dictionaries: activation sparsity, the SAELens layout round trip, validation, and a short training run."""

from __future__ import annotations

import json

import pytest
import torch

from circuits.dictionaries.activations import BatchTopK, JumpReLU, TopK, make_activation
from circuits.dictionaries.base import AttentionSAE, DictionaryConfig, Transcoder, make_dictionary
from circuits.dictionaries.dictset import DictionarySet
from circuits.dictionaries.io import DictionaryLoadError, load_dictionary, save_dictionary


def _random(cfg: DictionaryConfig, seed: int = 0):
    torch.manual_seed(seed)
    d = make_dictionary(cfg)
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.3)
        if hasattr(d.activation, "threshold"):
            d.activation.threshold.uniform_(0.0, 0.5)
    d.eval()
    return d


TC = DictionaryConfig("transcoder", layer=1, d_in=32, d_sae=96, d_out=32, activation="batchtopk", k=8)
SAE = DictionaryConfig("attention_sae", layer=0, d_in=32, d_sae=96, d_out=32, activation="topk", k=8, n_heads=4)
ALL_CONFIGS = [
    TC, SAE,
    DictionaryConfig("transcoder", layer=0, d_in=32, d_sae=64, d_out=32, activation="relu", k=None),
    DictionaryConfig("attention_sae", layer=1, d_in=32, d_sae=64, d_out=32, activation="jumprelu", k=None,
                     n_heads=4),
]


def test_topk_keeps_exactly_k_per_row():
    pre = torch.randn(50, 40)
    out = TopK(5)(pre)
    assert ((out != 0).sum(-1) <= 5).all() and ((out != 0).sum(-1) == torch.clamp((pre > 0).sum(-1), max=5)).all()
    kept = out != 0
    assert torch.equal(out[kept], pre[kept])  # kept values are not shrunk


def test_batchtopk_keeps_k_per_row_on_average_and_thresholds_at_inference():
    act = BatchTopK(4, 40)
    pre = torch.randn(64, 40) + 1.0
    out = act(pre)
    assert int((out != 0).sum()) == 4 * 64
    act.eval()
    inf = act(pre)
    assert torch.equal(inf, pre * (pre > act.threshold)) and act.threshold.min() > 0


def test_jumprelu_and_relu():
    th = torch.full((10,), 0.5)
    pre = torch.linspace(-1, 1, 10).repeat(3, 1)
    assert torch.equal(JumpReLU(10, th)(pre), pre * (pre > 0.5))
    assert torch.equal(make_activation("relu", 10)(pre), pre.clamp_min(0))
    with pytest.raises(ValueError, match="needs a positive k"):
        make_activation("topk", 10)


def test_hook_names_and_shapes():
    tc, sae = Transcoder(TC), AttentionSAE(SAE)
    assert tc.hook_in == "blocks.1.ln2.hook_normalized" and tc.hook_out == "blocks.1.hook_mlp_out"
    assert sae.hook_in == sae.hook_out == "blocks.0.attn.hook_z"
    z = torch.randn(2, 5, 4, 8)
    flat = sae.flatten_input(z)
    assert flat.shape == (2, 5, 32) and torch.equal(sae.unflatten_output(flat), z)


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c.kind}-{c.activation}")
def test_reconstruction_plus_error_is_exact(cfg):
    d = _random(cfg)
    x, y = torch.randn(20, cfg.d_in, dtype=torch.float64), torch.randn(20, cfg.d_out, dtype=torch.float64)
    d = d.double()
    codes, out = d(x)
    error = y - out
    torch.testing.assert_close(d.decode(codes) + error, y, rtol=0, atol=1e-12)
    assert (codes >= 0).all()


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c.kind}-{c.activation}")
def test_saelens_layout_round_trip(cfg, tmp_path):
    d = _random(cfg)
    x = torch.randn(30, cfg.d_in)
    first = load_dictionary(save_dictionary(d, tmp_path / "a"))
    # codes and outputs agree with the original (a transcoder's centering is folded into b_enc: float rounding)
    torch.testing.assert_close(first(x).output, d(x).output, rtol=1e-5, atol=1e-5)
    second = load_dictionary(save_dictionary(first, tmp_path / "b"))
    for name, t in first.weights().items():
        assert torch.equal(t, second.weights()[name]), name  # ours -> SAELens layout -> ours is bit-exact
    assert torch.equal(first(x).codes, second(x).codes)
    raw = json.loads((tmp_path / "a" / "cfg.json").read_text())
    assert raw["d_in"] == cfg.d_in and raw["d_sae"] == cfg.d_sae and "metadata" in raw
    assert raw["metadata"]["hook_name"] == cfg.hook_in
    assert raw["apply_b_dec_to_input"] == (cfg.kind == "attention_sae")
    if cfg.kind == "transcoder":
        assert raw["d_out"] == cfg.d_out and raw["metadata"]["hook_name_out"] == cfg.hook_out


def test_bad_files_raise_one_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_dictionary(_random(TC), tmp_path / "tc")
    w = load_file(str(folder / "sae_weights.safetensors"))
    bad = dict(w, W_enc=w["W_enc"].clone())
    bad["W_enc"][0, 0] = float("nan")
    save_file(bad, str(folder / "sae_weights.safetensors"))
    with pytest.raises(DictionaryLoadError, match="W_enc contains NaN"):
        load_dictionary(folder)
    save_file({k: v for k, v in w.items() if k != "threshold"}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(DictionaryLoadError, match="JumpReLU dictionary without its threshold"):
        load_dictionary(folder)
    save_file(dict(w, W_dec=w["W_dec"][:, :16].contiguous()), str(folder / "sae_weights.safetensors"))
    with pytest.raises(DictionaryLoadError, match=r"W_dec has shape \(96, 16\), expected \(96, 32\)"):
        load_dictionary(folder)
    (folder / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
    with pytest.raises(DictionaryLoadError, match="truncated or not a safetensors file"):
        load_dictionary(folder)
    (folder / "cfg.json").write_text("<html>")
    with pytest.raises(DictionaryLoadError, match="not valid JSON"):
        load_dictionary(folder)


def test_set_checked_against_the_model(tiny_model, tmp_path):
    ok = DictionarySet("tiny", {"a": _random(TC), "b": _random(SAE)})
    ok.check_against(tiny_model)
    loaded = DictionarySet.load(ok.save(tmp_path / "set"))
    assert [d.cfg.name for d in loaded] == ["attn_sae_L0", "transcoder_L1"]
    wide = DictionaryConfig("attention_sae", layer=0, d_in=64, d_sae=96, d_out=64, k=8, n_heads=4)
    with pytest.raises(DictionaryLoadError, match=r"d_in 64 does not match the model's n_heads\*d_head"):
        DictionarySet("tiny", {"x": _random(wide)}).check_against(tiny_model)
    deep = DictionaryConfig("transcoder", layer=5, d_in=32, d_sae=16, d_out=32, k=4)
    with pytest.raises(DictionaryLoadError, match="layer 5 but the model has 2 layers"):
        DictionarySet("tiny", {"x": _random(deep)}).check_against(tiny_model)
