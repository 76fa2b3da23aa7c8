"""Decoders refitted by least squares with the codes held fixed (`circuits.dictionaries.skipfit.fit_decoder`): the
sparse accumulation gives the dense sums, the fit lowers the weighted error it was fitted on, every code and every
encoder-side tensor stays as it was (an attention SAE's input centring move is folded into b_enc), a feature that
never fires on the fit tokens keeps its decoder row, the set reloads as fitted, and bad input fails in one line
before any work."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuits.dictionaries.dictset import DictionarySet
from circuits.dictionaries.skipfit import DecoderFitConfig, NormalEquations, fit_decoder, fit_tokens
from circuits.errors import ConfigError

CFG = DecoderFitConfig(sites=("attn_sae_L0", "transcoder_L1"), rows=16, ioi_prompts=16, ioi_weight=20.0,
                       ridge=1e-3)


@pytest.fixture(scope="module")
def fitted(tiny_model, tiny_trained_set):
    return fit_decoder(tiny_model, DictionarySet.load(tiny_trained_set), CFG, progress=False)


def _fit_inputs(model, d):
    """(codes, residual, weight) of dictionary `d` over the fit tokens, concatenated."""
    codes, res, ws = [], [], []
    with torch.no_grad():
        for tokens, w in fit_tokens(model, CFG):
            _, cache = model.run_with_cache(tokens, names_filter=lambda h: h in (d.hook_in, d.hook_out))
            x = d.flatten_input(cache[d.hook_in]).reshape(-1, d.cfg.d_in)
            c = d.encode(x)
            codes.append(c)
            res.append(cache[d.hook_out].reshape(-1, d.cfg.d_out) - d.reconstruct(c, x))
            ws.append(w.reshape(-1))
    return torch.cat(codes), torch.cat(res), torch.cat(ws)


def test_sparse_accumulation_equals_the_dense_sums():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 30, generator=g).clamp_min(1.2)  # mostly zeros, like codes
    x[x == 1.2] = 0
    r, w = torch.randn(200, 5, generator=g), torch.rand(200, generator=g)
    dense, sparse = NormalEquations(30, 5), NormalEquations(30, 5)
    dense.add(x, r, w)
    sparse.add(x[:120], r[:120], w[:120], sparse=True)
    sparse.add(x[120:], r[120:], w[120:], sparse=True)
    torch.testing.assert_close(sparse.G, dense.G, rtol=0, atol=1e-10)
    torch.testing.assert_close(sparse.H, dense.H, rtol=0, atol=1e-10)
    assert sparse.E == pytest.approx(dense.E, rel=1e-12) and sparse.weight == pytest.approx(dense.weight)


def test_fit_lowers_the_weighted_error_and_keeps_every_code(tiny_model, tiny_trained_set, fitted):
    dset, report = fitted
    base = DictionarySet.load(tiny_trained_set)
    x = {"attn_sae_L0": torch.randn(64, base.dictionaries["attn_sae_L0"].cfg.d_in),
         "transcoder_L1": torch.randn(64, base.dictionaries["transcoder_L1"].cfg.d_in)}
    for name in CFG.sites:
        rep = report[name]
        assert rep["weighted_sq_error_after"] < 0.95 * rep["weighted_sq_error_before"], (name, rep)
        old, new = base.dictionaries[name], dset.dictionaries[name]
        # recomputed directly on the fit tokens, the fitted decoder's weighted error is the one reported
        _, res_new, w = _fit_inputs(tiny_model, new)
        direct = float((w.double() * res_new.double().pow(2).sum(-1)).sum())
        assert direct == pytest.approx(rep["weighted_sq_error_after"], rel=1e-4)
        assert not torch.equal(new.W_dec, old.W_dec) and not torch.equal(new.b_dec, old.b_dec)
        with torch.no_grad():  # the features fire exactly as before, on any input
            torch.testing.assert_close(new.encode(x[name]), old.encode(x[name]), rtol=0, atol=1e-5)
        assert torch.equal(new.W_enc, old.W_enc) and torch.equal(new.activation.threshold, old.activation.threshold)
    # an attention SAE's b_dec is its input centring: b_enc absorbed the move; a transcoder's b_enc is untouched
    a_old, a_new = base.dictionaries["attn_sae_L0"], dset.dictionaries["attn_sae_L0"]
    assert not torch.equal(a_new.b_enc, a_old.b_enc)
    assert torch.equal(dset.dictionaries["transcoder_L1"].b_enc, base.dictionaries["transcoder_L1"].b_enc)
    for d in base:
        if d.cfg.name not in CFG.sites:
            for n, t in d.weights().items():
                assert torch.equal(dset.dictionaries[d.cfg.name].weights()[n], t), (d.cfg.name, n)


def test_a_feature_silent_on_the_fit_tokens_keeps_its_decoder_row(tiny_model, tiny_trained_set, fitted):
    dset, _ = fitted
    old = DictionarySet.load(tiny_trained_set).dictionaries["transcoder_L1"]
    codes, _, w = _fit_inputs(tiny_model, old)
    silent = ((codes > 0) & (w[:, None] > 0)).sum(0) == 0
    fired = ~silent
    new = dset.dictionaries["transcoder_L1"]
    assert silent.any() and fired.any()
    torch.testing.assert_close(new.W_dec[silent], old.W_dec[silent], rtol=0, atol=1e-6)
    assert (new.W_dec[fired] - old.W_dec[fired]).abs().max() > 1e-3  # negative control: fired rows did move


def test_fitted_set_reloads_as_fitted(fitted, tmp_path):
    """Saved and reloaded, the fitted set encodes and reconstructs as it did in memory (the moved b_enc and b_dec
    included)."""
    dset, _ = fitted
    dset.save(tmp_path / "set")
    again = DictionarySet.load(tmp_path / "set")
    for name in CFG.sites:
        a, b = dset.dictionaries[name], again.dictionaries[name]
        x = torch.randn(16, a.cfg.d_in, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(b.reconstruct(b.encode(x), x), a.reconstruct(a.encode(x), x), rtol=0,
                                       atol=1e-5)


def test_a_site_that_is_not_in_the_set_is_refused_before_any_work(tiny_model, tiny_trained_set):
    with pytest.raises(ConfigError, match="attn_sae_L9.*not a per-layer dictionary.*attn_sae_L0") as e:
        fit_decoder(tiny_model, DictionarySet.load(tiny_trained_set), dataclasses.replace(CFG, sites=("attn_sae_L9",)),
                    progress=False)
    assert "\n" not in str(e.value)


def test_cli_fit_decoder_writes_a_set_with_its_record_and_refuses_bad_options(tiny_trained_set, tmp_path, capsys):
    import json

    from circuits.cli.main import main

    for bad in ("-1", "0"):  # ridge 0 would leave silent features' rows singular
        assert main(["dicts", "fit-decoder", "--dicts", str(tiny_trained_set), "--out", str(tmp_path / "o"),
                     "--ridge", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "decoder fit: ridge" in err[0], err
        assert not (tmp_path / "o").exists()
    out = tmp_path / "fitted"
    assert main(["dicts", "fit-decoder", "--dicts", "organism", "--out", str(out), "--rows", "16",
                 "--ioi-prompts", "8", "--float16", "--quiet"]) == 0
    assert "attn_sae_L0" in capsys.readouterr().out
    record = json.loads((out / "decoder_fit.json").read_text())
    assert record["config"]["ioi_positions"] == "all" and record["config"]["ridge"] == 1e-2
    rep = record["dictionaries"]["attn_sae_L0"]
    assert rep["weighted_sq_error_after"] < rep["weighted_sq_error_before"]
    from safetensors import safe_open

    with safe_open(str(out / "attn_sae_L0" / "sae_weights.safetensors"), "pt") as f:  # stored as the shipped sets
        assert f.get_tensor("W_dec").dtype == torch.float16
