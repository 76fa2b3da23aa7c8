"""Skip transcoders and cross-layer transcoders on disk: our layout (round trips), circuit-tracer 0.5.0's layouts
(synthetic files in the exact layout, always run) and files written by circuit-tracer's own save code (optional:
skipped when the package is not installed)."""

from __future__ import annotations

import json

import pytest
import torch
from public_format_fixtures import write_circuit_tracer, write_circuit_tracer_clt
from safetensors.torch import load_file

from circuits.dictionaries import load_folder
from circuits.dictionaries.base import DictionaryConfig, make_dictionary
from circuits.dictionaries.clt import CLTConfig, CLTLayer, CrossLayerTranscoder
from circuits.dictionaries.dictset import DictionarySet
from circuits.dictionaries.formats import load_circuit_tracer_folder
from circuits.dictionaries.io import DictionaryLoadError, load_dictionary, save_dictionary


def _random_clt(n_layers=3, d_model=16, d_sae=24, activation="jumprelu", seed=0):
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(CLTConfig(n_layers, d_model, d_sae, activation=activation,
                                         k=4 if activation == "topk" else None))
    with torch.no_grad():
        for p in clt.parameters():
            p.normal_(0, 0.3)
        for layer in clt.layers:
            if hasattr(layer.activation, "threshold"):
                layer.activation.threshold.uniform_(0, 0.3)
    return clt.eval()


def _clt_outputs(layers, xs):
    """Codes and reconstructions of CLT views `layers` on inputs xs[l], through the public methods."""
    codes = [d.encode(x) for d, x in zip(layers, xs, strict=True)]
    upstream = dict(enumerate(codes))
    return codes, [d.reconstruct(c, x, upstream) for d, c, x in zip(layers, codes, xs, strict=True)]


def _clt_by_hand(folder, n_layers, xs, jumprelu=True):
    """circuit-tracer's CLT maths, from its files: codes_l = JumpReLU(x_l @ W_enc_l.T + b_enc_l);
    out_l' = Σ_{l ≤ l'} codes_l @ W_dec_l[:, l' − l] + b_dec_l'."""
    enc = [load_file(str(folder / f"W_enc_{i}.safetensors")) for i in range(n_layers)]
    dec = [load_file(str(folder / f"W_dec_{i}.safetensors"))[f"W_dec_{i}"] for i in range(n_layers)]
    codes = []
    for i, x in enumerate(xs):
        pre = x @ enc[i][f"W_enc_{i}"].T + enc[i][f"b_enc_{i}"]
        codes.append(pre * (pre > enc[i][f"threshold_{i}"]) if jumprelu else torch.relu(pre))
    outs = [sum(codes[lo] @ dec[lo][:, lp - lo] for lo in range(lp + 1)) + enc[lp][f"b_dec_{lp}"]
            for lp in range(n_layers)]
    return codes, outs


def test_skip_transcoder_round_trip_in_our_layout(tmp_path):
    c = DictionaryConfig("transcoder", 2, 16, 32, 16, activation="topk", k=4, skip=True)
    d = make_dictionary(c)
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.3)
    folder = save_dictionary(d, tmp_path / "skip")
    t = load_file(str(folder / "sae_weights.safetensors"))
    assert t["W_skip"].shape == (16, 16) and torch.equal(t["W_skip"], d.W_skip.detach())
    raw = json.loads((folder / "cfg.json").read_text())
    assert raw["architecture"] == "topk_skip_transcoder" and raw["circuits"]["skip"] is True
    again = load_dictionary(folder)
    x = torch.randn(20, 16)
    assert again.cfg.skip and torch.equal(again.W_skip, d.W_skip)
    torch.testing.assert_close(again(x).output, d(x).output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d(x).output, d.decode(d.encode(x)) + x @ d.W_skip.T, rtol=0, atol=0)
    # a foreign SAELens skip transcoder (no circuits block): W_skip read, skip inferred
    del raw["circuits"]
    (folder / "cfg.json").write_text(json.dumps(raw))
    foreign = load_dictionary(folder)
    assert foreign.cfg.skip and torch.equal(foreign.W_skip, d.W_skip)
    # W_skip of the wrong shape, or W_skip with a config that says no skip: refused
    t["W_skip"] = torch.zeros(16, 8)
    from safetensors.torch import save_file

    save_file(t, str(folder / "sae_weights.safetensors"))
    with pytest.raises(DictionaryLoadError, match="W_skip has shape"):
        load_dictionary(folder)


@pytest.mark.parametrize("activation", ["jumprelu", "topk"])
def test_clt_set_round_trip_in_our_layout(tmp_path, activation):
    clt = _random_clt(activation=activation)
    dset = DictionarySet("custom", {"clt": clt})
    assert [d.cfg.name for d in dset] == ["transcoder_L0", "transcoder_L1", "transcoder_L2"]
    assert dset.clts == [clt] and all(isinstance(d, CLTLayer) for d in dset)
    dset.save(tmp_path / "set")
    assert json.loads((tmp_path / "set" / "set.json").read_text())["dictionaries"] == ["clt"]
    folder = tmp_path / "set" / "clt"
    assert (folder / "config.yaml").exists() == (activation == "jumprelu")  # circuit-tracer can read it exactly
    w = load_file(str(folder / "W_dec_1.safetensors"))["W_dec_1"]
    assert w.shape == (24, 2, 16)
    back = DictionarySet.load(tmp_path / "set")
    xs = [torch.randn(7, 16) for _ in range(3)]
    with torch.no_grad():
        want = _clt_outputs(list(dset), xs)
        got = _clt_outputs(list(back), xs)
    for a, b in zip(want[0] + want[1], got[0] + got[1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert len(back.clts) == 1 and back.clts[0].cfg.activation == activation
    assert len(load_folder(folder)) == 3  # the CLT folder alone loads too (cfg.json before config.yaml)


def test_circuit_tracer_skip_transcoder_folder(tmp_path):
    folder = write_circuit_tracer(tmp_path / "ct", n_layers=2, d_model=16, d_sae=32, skip=True)
    dicts = load_circuit_tracer_folder(folder)
    assert all(d.cfg.skip for d in dicts)
    t = load_file(str(folder / "layer_1.safetensors"))
    x = torch.randn(9, 16)
    pre = x @ t["W_enc"].T + t["b_enc"]
    codes = pre * (pre > t["activation_function.threshold"])
    out = codes @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T  # circuit-tracer: compute_skip = x @ W_skip.T
    torch.testing.assert_close(dicts[1].encode(x), codes, rtol=0, atol=1e-6)
    torch.testing.assert_close(dicts[1](x).output, out, rtol=0, atol=1e-5)
    converted = load_folder(folder)
    converted.save(tmp_path / "ours")
    again = DictionarySet.load(tmp_path / "ours")
    torch.testing.assert_close(again.transcoder(1)(x).output, out, rtol=0, atol=1e-5)


def test_circuit_tracer_clt_folder_and_convert(tmp_path):
    folder = write_circuit_tracer_clt(tmp_path / "clt", n_layers=3, d_model=16, d_sae=24)
    dset = load_folder(folder)
    assert [d.cfg.name for d in dset] == ["transcoder_L0", "transcoder_L1", "transcoder_L2"]
    assert dset.clts[0].cfg.activation == "jumprelu" and dset.model_name == "gpt2"
    xs = [torch.randn(11, 16) for _ in range(3)]
    want_codes, want_outs = _clt_by_hand(folder, 3, xs)
    with torch.no_grad():
        codes, outs = _clt_outputs(list(dset), xs)
    for got, want in zip(codes + outs, want_codes + want_outs, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert any((c > 0).any() for c in codes)
    from circuits.cli import main

    assert main(["dicts", "convert", str(folder), "--out", str(tmp_path / "converted")]) == 0
    again = DictionarySet.load(tmp_path / "converted")
    with torch.no_grad():
        _, outs2 = _clt_outputs(list(again), xs)
    for got, want in zip(outs2, want_outs, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_circuit_tracer_clt_errors(tmp_path):
    folder = write_circuit_tracer_clt(tmp_path / "a", n_layers=2, d_model=8, d_sae=12, jumprelu=False)
    assert load_folder(folder).clts[0].cfg.activation == "relu"
    (folder / "W_dec_1.safetensors").unlink()
    with pytest.raises(DictionaryLoadError, match="W_dec_1.safetensors"):
        load_folder(folder)
    folder = write_circuit_tracer_clt(tmp_path / "b", n_layers=2, d_model=8, d_sae=12)
    from safetensors.torch import save_file

    save_file({"W_dec_0": torch.zeros(12, 1, 8)}, str(folder / "W_dec_0.safetensors"))  # must be [12, 2, 8]
    with pytest.raises(DictionaryLoadError, match=r"W_dec_0 has shape \(12, 1, 8\), expected \(12, 2, 8\)"):
        load_folder(folder)
    folder = write_circuit_tracer_clt(tmp_path / "c", n_layers=2, d_model=8, d_sae=12)
    (folder / "W_enc_1.safetensors").rename(folder / "W_enc_5.safetensors")
    with pytest.raises(DictionaryLoadError, match="numbered 0..1"):
        load_folder(folder)
    folder = write_circuit_tracer_clt(tmp_path / "d", n_layers=2, d_model=8, d_sae=12)
    (folder / "config.yaml").write_text((folder / "config.yaml").read_text().replace(
        "ln2.hook_normalized", "hook_resid_mid"))
    with pytest.raises(DictionaryLoadError, match="feature_input_hook 'hook_resid_mid'"):
        load_folder(folder)


# ---- files written by circuit-tracer's own save code (optional dependency) ------------------------------------


def _circuit_tracer():
    return pytest.importorskip("circuit_tracer", reason="circuit-tracer is not installed (optional: pip install "
                                                         "--no-deps circuit-tracer==0.5.0)")


def test_files_written_by_circuit_tracer_skip_transcoder_set(tmp_path):
    _circuit_tracer()
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet

    torch.manual_seed(0)
    theirs = {}
    for i in range(2):
        tc = SingleLayerTranscoder(16, 32, JumpReLU(torch.rand(32) * 0.2, 0.1), i, skip_connection=True,
                                   device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            for p in tc.parameters():
                if p is not tc.activation_function.threshold:
                    p.normal_(0, 0.3)
        theirs[i] = tc
    TranscoderSet(theirs, "ln2.hook_normalized", "hook_mlp_out").to_safetensors(str(tmp_path / "ct"))
    (tmp_path / "ct" / "config.yaml").write_text(
        "model_kind: transcoder_set\nmodel_name: tiny\nfeature_input_hook: ln2.hook_normalized\n"
        "feature_output_hook: hook_mlp_out\n")
    ours = load_folder(tmp_path / "ct")
    x = torch.randn(10, 16)
    with torch.no_grad():
        for i in range(2):
            d = ours.transcoder(i)
            assert d.cfg.skip and d.cfg.activation == "jumprelu"
            torch.testing.assert_close(d.encode(x), theirs[i].encode(x), rtol=0, atol=1e-5)
            torch.testing.assert_close(d(x).output, theirs[i](x), rtol=0, atol=1e-5)


def test_files_written_by_circuit_tracer_clt_and_ours_read_by_it(tmp_path):
    _circuit_tracer()
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder as TheirCLT
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    torch.manual_seed(0)
    theirs = TheirCLT(3, 24, 16, activation_function="jump_relu", lazy_decoder=False,
                      device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.rand_like(p) * 0.2 if "threshold" in name else torch.randn_like(p) * 0.3)
    theirs.to_safetensors(str(tmp_path / "ct"))
    (tmp_path / "ct" / "config.yaml").write_text(
        "model_kind: cross_layer_transcoder\nmodel_name: tiny\nfeature_input_hook: ln2.hook_normalized\n"
        "feature_output_hook: hook_mlp_out\n")
    ours = load_folder(tmp_path / "ct")
    x = torch.randn(3, 9, 16)  # [n_layers, pos, d_model]: each layer's input
    with torch.no_grad():
        codes, outs = _clt_outputs(list(ours), list(x))
        their_codes = theirs.encode(x)
        their_outs = theirs(x)
    torch.testing.assert_close(torch.stack(codes), their_codes, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(outs), their_outs, rtol=0, atol=1e-5)
    # our saved CLT folder is read by circuit-tracer's own loader with the same maths
    DictionarySet("tiny", {"clt": ours.clts[0]}).save(tmp_path / "ours")
    back = load_clt(str(tmp_path / "ours" / "clt"), feature_input_hook="ln2.hook_normalized",
                    device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    with torch.no_grad():
        torch.testing.assert_close(back(x), their_outs, rtol=0, atol=1e-5)
