"""The committed organism dictionary set: loads offline, fits the organism, reproduces its fidelity numbers."""

from __future__ import annotations

import json

import pytest

from circuits import load_dictionaries, load_model
from circuits.dictionaries.evaluate import CI_SIZES, check_targets, evaluate_fidelity
from circuits.model import DATA_DIR

FOLDER = DATA_DIR / "dictionaries" / "organism"


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


def test_committed_fidelity_meets_targets():
    """Issue 3's targets hold for the committed report (the test above ties that report to the committed set)."""
    report = json.loads((FOLDER / "fidelity.json").read_text())
    assert all(check_targets(report).values()), check_targets(report)


def test_committed_set_reproduces_committed_fidelity_on_a_subsample(organism, no_network):
    committed = json.loads((FOLDER / "fidelity.json").read_text())["ci_subsample"]
    assert committed["sizes"] == CI_SIZES.__dict__
    fresh = evaluate_fidelity(organism, load_dictionaries("organism", organism), CI_SIZES)
    for name, metrics in committed["report"]["dictionaries"].items():
        for key, value in metrics.items():
            assert fresh["dictionaries"][name][key] == pytest.approx(value, rel=1e-3, abs=1e-4), (name, key)
    for key, value in committed["report"]["all"].items():
        assert fresh["all"][key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
