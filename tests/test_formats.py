"""Public dictionary formats: each reader on a synthetic file in the exact layout gives the original's maths."""

from __future__ import annotations

import sys

import pytest
import torch
from public_format_fixtures import (
    write_circuit_tracer,
    write_dunefsky,
    write_kissane,
    write_saelens_jumprelu_transcoder,
)
from safetensors.torch import load_file

from circuits.dictionaries.formats import (
    load_circuit_tracer_folder,
    load_dunefsky_transcoder,
    load_kissane_attention_sae,
)
from circuits.dictionaries.io import DictionaryLoadError, load_dictionary, save_dictionary


def _converted_round_trip(d, tmp_path):
    """Converted to our layout and back, the dictionary gives the same codes and outputs."""
    again = load_dictionary(save_dictionary(d, tmp_path / "ours"))
    x = torch.randn(40, d.cfg.d_in)
    torch.testing.assert_close(again(x).codes, d(x).codes, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again(x).output, d(x).output, rtol=1e-5, atol=1e-5)


def test_dunefsky_transcoder_without_their_package(tmp_path):
    path = write_dunefsky(tmp_path, layer=3, d_model=24, d_sae=48)
    assert "sae_training" not in sys.modules
    d = load_dunefsky_transcoder(path)
    assert "sae_training" not in sys.modules  # their code was never imported
    assert d.cfg.kind == "transcoder" and d.cfg.layer == 3 and d.hook_out == "blocks.3.hook_mlp_out"
    from circuits.dictionaries.formats import restricted_torch_load

    sd = restricted_torch_load(path)["state_dict"]
    x = torch.randn(30, 24)
    codes = torch.relu((x - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"])  # their maths, by hand
    out = codes @ sd["W_dec"] + sd["b_dec_out"]
    assert torch.equal(d.encode(x), codes) and torch.equal(d.decode(d.encode(x)), out)
    _converted_round_trip(d, tmp_path)


def test_kissane_attention_sae(tmp_path):
    path = write_kissane(tmp_path, layer=5, n_heads=4, d_head=6, d_sae=40)
    d = load_kissane_attention_sae(path, n_heads=4)
    sd = torch.load(path, weights_only=True)
    z = torch.randn(7, 4, 6)
    flat = z.reshape(7, 24)
    codes = torch.relu((flat - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"])
    assert torch.equal(d.encode(d.flatten_input(z)), codes)
    assert torch.equal(d.decode(codes), codes @ sd["W_dec"] + sd["b_dec"])
    assert d.hook_in == "blocks.5.attn.hook_z" and d.cfg.n_heads == 4
    assert load_kissane_attention_sae(write_kissane(tmp_path, 0, 12, 2, 8)).cfg.n_heads == 12  # gpt2-small known
    _converted_round_trip(d, tmp_path)


def test_saelens_jumprelu_transcoder(tmp_path):
    folder = write_saelens_jumprelu_transcoder(tmp_path / "tc", layer=2, d_model=16, d_sae=32)
    d = load_dictionary(folder)
    t = load_file(str(folder / "sae_weights.safetensors"))
    x = torch.randn(25, 16)
    pre = x @ t["W_enc"] + t["b_enc"]
    codes = pre * (pre > t["threshold"])
    assert torch.equal(d.encode(x), codes) and d.cfg.activation == "jumprelu"
    _converted_round_trip(d, tmp_path)


def test_saelens_jumprelu_without_threshold_is_refused(tmp_path):
    from safetensors.torch import save_file

    folder = write_saelens_jumprelu_transcoder(tmp_path / "tc", layer=2, d_model=16, d_sae=32)
    t = load_file(str(folder / "sae_weights.safetensors"))
    del t["threshold"]
    save_file(t, str(folder / "sae_weights.safetensors"))
    with pytest.raises(DictionaryLoadError, match="JumpReLU dictionary without its threshold"):
        load_dictionary(folder)


def test_circuit_tracer_folder_transposed_encoder(tmp_path):
    folder = write_circuit_tracer(tmp_path / "ct", n_layers=2, d_model=16, d_sae=32)
    dicts = load_circuit_tracer_folder(folder)
    assert [d.cfg.layer for d in dicts] == [0, 1]
    t = load_file(str(folder / "layer_1.safetensors"))
    x = torch.randn(9, 16)
    pre = x @ t["W_enc"].T + t["b_enc"]
    codes = pre * (pre > t["activation_function.threshold"])
    # equal up to float summation order (their encoder is stored transposed, so BLAS may sum differently)
    torch.testing.assert_close(dicts[1].encode(x), codes, rtol=0, atol=1e-6)
    assert torch.equal(dicts[1].decode(codes), codes @ t["W_dec"] + t["b_dec"])
    _converted_round_trip(dicts[1], tmp_path)


def test_foreign_and_truncated_files(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DictionaryLoadError, match="x.pt"):
        load_dunefsky_transcoder(bad)
    torch.save({"W_enc": torch.zeros(2, 2)}, tmp_path / "plain.pt")
    with pytest.raises(DictionaryLoadError, match="not a Dunefsky transcoder file"):
        load_dunefsky_transcoder(tmp_path / "plain.pt")
    with pytest.raises(DictionaryLoadError, match="config.yaml"):
        load_circuit_tracer_folder(tmp_path)
    path = write_kissane(tmp_path, layer=1, n_heads=4, d_head=6, d_sae=40)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DictionaryLoadError, match="truncated"):
        load_kissane_attention_sae(path, n_heads=4)


def test_convert_command_and_load_folder(tmp_path, capsys):
    from circuits.cli import main
    from circuits.dictionaries import load_folder

    src = tmp_path / "src"
    src.mkdir()
    write_dunefsky(src, 0, 16, 32)
    write_kissane(src, 1, 4, 4, 32)
    assert main(["dicts", "convert", str(src), "--out", str(tmp_path / "out"), "--n-heads", "4"]) == 0
    converted = load_folder(tmp_path / "out")
    original = load_folder(src, n_heads=4)
    assert [d.cfg.name for d in converted] == [d.cfg.name for d in original] == ["transcoder_L0", "attn_sae_L1"]
    x = torch.randn(10, 16)
    for a, b in zip(converted, original, strict=True):
        torch.testing.assert_close(a(x).codes, b(x).codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a(x).output, b(x).output, rtol=1e-5, atol=1e-5)
    # a second convert into the same folder refuses rather than overwrite
    assert main(["dicts", "convert", str(src), "--out", str(tmp_path / "out"), "--n-heads", "4"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_public_sets_offline_fail_at_once(no_network):
    import time

    from circuits.dictionaries import load_dictionaries

    for name in ("gpt2-transcoders", "gpt2-attn-kk"):
        start = time.time()
        with pytest.raises(DictionaryLoadError, match="unreachable.*organism"):
            load_dictionaries(name)
        assert time.time() - start < 10
    with pytest.raises(DictionaryLoadError, match="no dictionary set or folder 'nope'"):
        load_dictionaries("nope")
