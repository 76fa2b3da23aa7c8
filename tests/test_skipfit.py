"""A least-squares skip term fitted onto trained transcoders (`circuits.dictionaries.skipfit`): the solve is weighted
ridge regression exactly, the fitted set lowers the weighted error it was fitted on and splices exactly, it saves
and reloads as a skip transcoder, the other members are untouched, and bad options fail in one line before any
work."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuits.dictionaries.dictset import DictionarySet
from circuits.dictionaries.skipfit import NormalEquations, SkipFitConfig, fit_skip, fit_tokens, ioi_fit_prompts
from circuits.errors import ConfigError
from circuits.replacement import splice_hooks

CFG = SkipFitConfig(sites=("transcoder_L1",), rows=16, ioi_prompts=16, ioi_weight=20.0)


@pytest.fixture(scope="module")
def fitted(tiny_model, tiny_trained_set):
    return fit_skip(tiny_model, DictionarySet.load(tiny_trained_set), CFG, progress=False)


def test_normal_equations_solve_weighted_least_squares():
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(300, 6, generator=g), torch.randn(300, 4, generator=g)
    w = torch.rand(300, generator=g) * 5
    w[:40] = 0  # weight-0 tokens add nothing
    eqs = NormalEquations(6, 4)
    eqs.add(x[:100], r[:100], w[:100])
    eqs.add(x[100:], r[100:], w[100:])  # accumulated over batches
    W, c = eqs.solve(ridge=0.0)
    a = torch.cat([x, torch.ones(300, 1)], 1).double() * w.double().sqrt()[:, None]
    ref = torch.linalg.lstsq(a, r.double() * w.double().sqrt()[:, None]).solution
    torch.testing.assert_close(W, ref[:6].T, rtol=0, atol=1e-9)
    torch.testing.assert_close(c, ref[6], rtol=0, atol=1e-9)
    # the weighted squared error of any (W, c), from the accumulated sums alone
    g2 = torch.Generator().manual_seed(1)
    for W_, c_ in ((W, c), (torch.randn(4, 6, generator=g2).double(), torch.randn(4, generator=g2).double())):
        direct = float((w.double() * (r.double() - x.double() @ W_.T - c_).pow(2).sum(-1)).sum())
        assert eqs.weighted_error(W_, c_) == pytest.approx(direct, rel=1e-9)
    # ridge shrinks W (not c) toward 0: the weighted loss plus λ‖W‖² is smaller at the ridge solution
    Wr, cr = eqs.solve(ridge=10.0)
    lam = 10.0 * float(eqs.G.diagonal()[:6].mean())

    def objective(W_, c_):
        return float((w.double() * (r.double() - x.double() @ W_.T - c_).pow(2).sum(-1)).sum() + lam * W_.pow(2).sum())

    assert Wr.norm() < W.norm()
    assert objective(Wr, cr) < objective(W, c)


def test_fit_lowers_the_weighted_error_and_touches_only_its_site(tiny_model, tiny_trained_set, fitted):
    dset, report = fitted
    rep = report["transcoder_L1"]
    assert rep["weighted_sq_error_after"] < 0.9 * rep["weighted_sq_error_before"], rep
    base = DictionarySet.load(tiny_trained_set)
    new = dset.dictionaries["transcoder_L1"]
    assert new.cfg.skip and new.W_skip is not None and new.W_skip.abs().sum() > 0
    old = base.dictionaries["transcoder_L1"]
    for name in ("W_enc", "b_enc", "W_dec"):  # the features are the input set's
        assert torch.equal(getattr(new, name), getattr(old, name)), name
    for d in base:
        if d.cfg.name != "transcoder_L1":
            assert dset.dictionaries[d.cfg.name].cfg.skip is False
            for name, t in d.weights().items():
                assert torch.equal(dset.dictionaries[d.cfg.name].weights()[name], t), (d.cfg.name, name)


def _weighted_mean_error(model, d) -> torch.Tensor:
    total, n = torch.zeros(d.cfg.d_out, dtype=torch.float64), 0.0
    with torch.no_grad():
        for tokens, w in fit_tokens(model, CFG):
            _, cache = model.run_with_cache(tokens, names_filter=lambda h: h in (d.hook_in, d.hook_out))
            x = cache[d.hook_in].reshape(-1, d.cfg.d_in)
            err = cache[d.hook_out].reshape(-1, d.cfg.d_out) - d.reconstruct(d.encode(x), x)
            total += (err.double() * w.reshape(-1, 1)).sum(0)
            n += float(w.sum())
    return total / n


def test_fitted_residual_has_weighted_mean_zero_on_the_fit_tokens(tiny_model, tiny_trained_set, fitted):
    """First-order optimality in the unpenalised bias c: Σ_t w_t (r_t − W x_t − c) = 0 on the fit tokens (the
    input set, a negative control, is far from it)."""
    dset, _ = fitted
    after = _weighted_mean_error(tiny_model, dset.dictionaries["transcoder_L1"]).abs().max()
    before = _weighted_mean_error(tiny_model, DictionarySet.load(tiny_trained_set).dictionaries["transcoder_L1"]).abs().max()
    assert after < 1e-5 and before > 100 * after, (before, after)


def test_fitted_set_splices_exactly_and_reloads_as_a_skip_transcoder(tiny_model, fitted, tmp_path):
    dset, _ = fitted
    tokens = fit_tokens(tiny_model, dataclasses.replace(CFG, ioi_prompts=0))[0][0][:2]
    with torch.no_grad():
        clean = tiny_model(tokens)
        exact = tiny_model.run_with_hooks(tokens, fwd_hooks=splice_hooks(list(dset), "on"))
        torch.testing.assert_close(exact, clean, rtol=0, atol=1e-5)
    dset.save(tmp_path / "set")
    again = DictionarySet.load(tmp_path / "set")
    a, b = dset.dictionaries["transcoder_L1"], again.dictionaries["transcoder_L1"]
    assert b.cfg.skip
    x = torch.randn(16, a.cfg.d_in, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(b.reconstruct(b.encode(x), x), a.reconstruct(a.encode(x), x), rtol=0, atol=1e-5)


def test_refitting_a_fitted_set_leaves_it_alone_and_changes_almost_nothing(tiny_model, fitted):
    """A site that already has W_skip is refitted on a copy: the input set is not changed, and on the same tokens the
    least-squares optimum is already reached (only the tiny ridge leaves room)."""
    dset, _ = fitted
    first = {n: t.clone() for n, t in dset.dictionaries["transcoder_L1"].weights().items()}
    again, report = fit_skip(tiny_model, dset, CFG, progress=False)
    for n, t in dset.dictionaries["transcoder_L1"].weights().items():
        assert torch.equal(t, first[n]), n
    rep = report["transcoder_L1"]
    assert rep["weighted_sq_error_after"] <= rep["weighted_sq_error_before"] * (1 + 1e-9)
    assert rep["weighted_sq_error_after"] >= rep["weighted_sq_error_before"] * (1 - 1e-3)
    assert again.dictionaries["transcoder_L1"] is not dset.dictionaries["transcoder_L1"]


def test_only_ioi_tokens_carry_weight_at_their_answer_position(tiny_model):
    batches = fit_tokens(tiny_model, dataclasses.replace(CFG, rows=0))
    for _, w in batches:
        assert ((w > 0).sum(1) == 1).all()  # one position per prompt: its last real token
        assert set(w.unique().tolist()) <= {0.0, CFG.ioi_weight}
    every = fit_tokens(tiny_model, dataclasses.replace(CFG, rows=0, ioi_positions="all"))
    assert sum(int((w > 0).sum()) for _, w in every) > sum(int((w > 0).sum()) for _, w in batches)


def test_ioi_prompts_can_be_restricted_to_some_training_templates():
    every = ioi_fit_prompts(CFG)
    assert len({p.template for p in every}) > 8 and not any(p.heldout_template for p in every)
    even = ioi_fit_prompts(dataclasses.replace(CFG, ioi_templates=(0, 2, 4)))
    assert len(even) == len(every) and {p.template for p in even} == {0, 2, 4}
    assert [p.order for p in even].count("ABBA") == CFG.ioi_prompts


@pytest.mark.parametrize("change, match", [
    ({"ioi_weight": -1.0}, "ioi_weight"), ({"ioi_positions": "middle"}, "ioi_positions"), ({"sites": ()}, "sites"),
    ({"rows": 0, "ioi_prompts": 0}, "no fit tokens"), ({"corpus_phases": (9,)}, "corpus_phases"),
    ({"ioi_templates": (99,)}, "ioi_templates"), ({"ioi_templates": ()}, "ioi_templates"),
])
def test_bad_options_fail_in_one_line(change, match):
    with pytest.raises(ConfigError, match=match) as e:
        dataclasses.replace(CFG, **change).check()
    assert "\n" not in str(e.value)


def test_a_site_that_is_not_a_transcoder_is_refused_before_any_work(tiny_model, tiny_trained_set):
    with pytest.raises(ConfigError, match="attn_sae_L0.*is not a transcoder.*transcoder_L0"):
        fit_skip(tiny_model, DictionarySet.load(tiny_trained_set), dataclasses.replace(CFG, sites=("attn_sae_L0",)),
                 progress=False)


def test_cli_fit_skip_writes_a_set_and_refuses_bad_options(tiny_model, tiny_trained_set, tmp_path, capsys):
    from circuits.cli.main import main

    assert main(["dicts", "fit-skip", "--dicts", str(tiny_trained_set), "--out", str(tmp_path / "o"),
                 "--ioi-weight", "-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ioi_weight" in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_fit_skip_on_a_shipped_set_writes_a_loadable_set_with_its_record(tmp_path, capsys):
    import json

    from circuits.cli.main import main
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model

    out = tmp_path / "fitted"
    # organism-finetuned: a shipped set without skip terms (the default has one on every transcoder since 2026-12-02)
    assert main(["dicts", "fit-skip", "--dicts", "organism-finetuned", "--out", str(out), "--rows", "16", "--ioi-prompts", "8",
                 "--float16", "--quiet"]) == 0
    assert "transcoder_L3" in capsys.readouterr().out
    record = json.loads((out / "skip_fit.json").read_text())
    rep = record["dictionaries"]["transcoder_L3"]
    assert record["config"]["rows"] == 16 and rep["weighted_sq_error_after"] < rep["weighted_sq_error_before"]
    model, _ = load_model("organism")
    fitted, shipped = load_dictionaries(str(out), model), load_dictionaries("organism-finetuned", model)
    assert fitted.dictionaries["transcoder_L3"].cfg.skip and not shipped.dictionaries["transcoder_L3"].cfg.skip
    for d in shipped:
        if d.cfg.name != "transcoder_L3":
            for name, t in d.weights().items():
                assert torch.equal(fitted.dictionaries[d.cfg.name].weights()[name].to(t.dtype), t), (d.cfg.name, name)
