"""The committed organism dictionary sets: the default loads offline, fits the organism and is the previous
default's layout with least-squares fits on top; the default and the previous default (`organism-finetuned`)
meet every fidelity target in their committed reports and reproduce those reports on a subsample."""

from __future__ import annotations

import json

import pytest
import torch

from circuits import load_dictionaries, load_model
from circuits.dictionaries.evaluate import CI_SIZES, check_targets, evaluate_fidelity
from circuits.model import DATA_DIR

FOLDER = DATA_DIR / "dictionaries" / "organism"
SHIPPED = ("organism", "organism-finetuned")


@pytest.fixture(scope="module")
def organism():
    return load_model("organism").model


def test_set_is_complete_and_in_saelens_layout(organism):
    dset = load_dictionaries("organism", organism)
    assert sorted(d.cfg.name for d in dset) == sorted(
        [f"transcoder_L{i}" for i in range(4)] + [f"attn_sae_L{i}" for i in range(4)])
    for d in dset:
        cfg = json.loads((FOLDER / d.cfg.name / "cfg.json").read_text())
        assert {"architecture", "d_in", "d_sae", "metadata", "apply_b_dec_to_input"} <= set(cfg)
        assert cfg["metadata"]["hook_name"] == d.hook_in
        assert (FOLDER / d.cfg.name / "sae_weights.safetensors").exists()


def test_default_is_the_previous_default_with_skip_terms_and_a_refitted_decoder(organism):
    """Since 2026-12-02 the default is the set first shipped as `organism-fitted` (docs/skip-and-clt.md, probe
    12; that name still loads it): the previous default's dictionary names and widths, a skip term on every
    transcoder, and attention L0's decoder refitted by `dicts fit-decoder`, whose record says so."""
    dset, previous = load_dictionaries("organism", organism), load_dictionaries("organism-finetuned", organism)
    assert [(d.cfg.name, d.cfg.d_sae) for d in dset] == [(d.cfg.name, d.cfg.d_sae) for d in previous]
    for d in dset:
        assert (d.W_skip is not None) == (d.cfg.kind == "transcoder"), d.cfg.name
    assert all(d.W_skip is None for d in previous)
    record = json.loads((FOLDER / "decoder_fit.json").read_text())
    assert record["config"]["sites"] == ["attn_sae_L0"] and record["config"]["ioi_positions"] == "all"
    rep = record["dictionaries"]["attn_sae_L0"]
    assert rep["weighted_sq_error_after"] < rep["weighted_sq_error_before"]
    alias = load_dictionaries("organism-fitted", organism)
    for a, d in zip(alias, dset, strict=True):
        assert a.cfg.name == d.cfg.name and torch.equal(a.W_dec, d.W_dec)


@pytest.mark.parametrize("name", SHIPPED)
def test_committed_fidelity_meets_targets(name):
    """Issue 3's per-dictionary and all-spliced targets, and issue 19's: ΔCE ≤ 0.04 and ≥ 85% of the IOI logit
    difference kept on held-out templates with every dictionary spliced (the test below ties each report to its
    committed set)."""
    report = json.loads((DATA_DIR / "dictionaries" / name / "fidelity.json").read_text())
    assert all(check_targets(report).values()), check_targets(report)
    assert report["all"]["ce_increase"] <= 0.04
    assert report["all"]["ioi_ld_retained_heldout_templates"] >= 0.85


@pytest.mark.parametrize("name", SHIPPED)
def test_committed_set_reproduces_committed_fidelity_on_a_subsample(organism, no_network, name):
    committed = json.loads((DATA_DIR / "dictionaries" / name / "fidelity.json").read_text())["ci_subsample"]
    assert committed["sizes"] == CI_SIZES.__dict__
    fresh = evaluate_fidelity(organism, load_dictionaries(name, organism), CI_SIZES)
    for dname, metrics in committed["report"]["dictionaries"].items():
        for key, value in metrics.items():
            assert fresh["dictionaries"][dname][key] == pytest.approx(value, rel=1e-3, abs=1e-4), (dname, key)
    for key, value in committed["report"]["all"].items():
        assert fresh["all"][key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
