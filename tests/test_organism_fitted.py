"""The committed `organism-fitted` set (docs/skip-and-clt.md, probe 12): loads by name, is the default set's layout
with a skip term on every transcoder, meets every fidelity target in its committed report, reproduces that report
on a subsample, and its fit record names what was fitted."""

from __future__ import annotations

import json

import pytest

from circuits import load_dictionaries, load_model
from circuits.dictionaries.evaluate import CI_SIZES, check_targets, evaluate_fidelity
from circuits.model import DATA_DIR

FOLDER = DATA_DIR / "dictionaries" / "organism-fitted"


@pytest.fixture(scope="module")
def organism():
    return load_model("organism").model


def test_loads_by_name_with_a_skip_term_on_every_transcoder(organism):
    dset = load_dictionaries("organism-fitted", organism)
    default = load_dictionaries("organism", organism)
    assert [d.cfg.name for d in dset] == [d.cfg.name for d in default]
    for d in dset:
        assert d.cfg.d_sae == default.dictionaries[d.cfg.name].cfg.d_sae  # widths are the default set's
        assert (d.W_skip is not None) == (d.cfg.kind == "transcoder"), d.cfg.name
    record = json.loads((FOLDER / "decoder_fit.json").read_text())
    assert record["config"]["sites"] == ["attn_sae_L0"] and record["config"]["ioi_positions"] == "all"
    rep = record["dictionaries"]["attn_sae_L0"]
    assert rep["weighted_sq_error_after"] < rep["weighted_sq_error_before"]


def test_committed_fidelity_meets_every_target():
    """Issue 3's per-dictionary and all-spliced targets, and issue 19's: ΔCE ≤ 0.04 and ≥ 85% of the IOI logit
    difference kept on held-out templates with every dictionary spliced."""
    report = json.loads((FOLDER / "fidelity.json").read_text())
    assert all(check_targets(report).values()), check_targets(report)
    assert report["all"]["ce_increase"] <= 0.04
    assert report["all"]["ioi_ld_retained_heldout_templates"] >= 0.85


def test_committed_set_reproduces_its_fidelity_on_a_subsample(organism, no_network):
    committed = json.loads((FOLDER / "fidelity.json").read_text())["ci_subsample"]
    assert committed["sizes"] == CI_SIZES.__dict__
    fresh = evaluate_fidelity(organism, load_dictionaries("organism-fitted", organism), CI_SIZES)
    for name, metrics in committed["report"]["dictionaries"].items():
        for key, value in metrics.items():
            assert fresh["dictionaries"][name][key] == pytest.approx(value, rel=1e-3, abs=1e-4), (name, key)
    for key, value in committed["report"]["all"].items():
        assert fresh["all"][key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
