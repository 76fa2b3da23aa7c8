"""benchmarks/clt.py's score variants: each graph is what its label says (issue 19's replacement-score target is
measured on the first; the others are labelled variants for comparison with circuit-tracer's conventions)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from circuits.graph import ERROR_KINDS, FEATURE_KINDS
from circuits.pruning import graph_scores

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_clt", ROOT / "benchmarks" / "clt.py")
clt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(clt)


@pytest.fixture(scope="module")
def graphs():
    from circuits import load_dictionaries, load_model
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.replacement import ReplacementModel
    from circuits.studies.ioi import IOIStudy

    torch.set_num_threads(1)
    model, _ = load_model("organism")
    dset = load_dictionaries("organism", model)
    mlps = DictionarySet(dset.model_name, {d.cfg.name: d for d in dset if d.cfg.kind == "transcoder"})
    prompt = IOIStudy("train").prompts(model, 1, seed=0)[0]
    full, only = ReplacementModel(model, dset, name="organism"), ReplacementModel(model, mlps, name="organism")
    return clt.variant_graphs(full, only, prompt)


def _kinds(g, pos=None) -> set:
    return {n.kind for n in g.nodes if pos is None or n.pos == pos}


def test_the_target_graph_has_every_node_kind_and_bos_nodes(graphs):
    g = graphs["all dictionaries, every node (target)"]
    assert {"attn_feature", "mlp_feature", "attn_error", "mlp_error", "token"} <= _kinds(g)
    assert _kinds(g, pos=0) & set(ERROR_KINDS)  # BOS error nodes are counted in the target's convention


def test_bos_folded_variant_drops_exactly_the_bos_features_and_errors(graphs):
    g, f = graphs["all dictionaries, every node (target)"], graphs["BOS folded"]
    at_bos = sum(n.pos == 0 and (n.kind in FEATURE_KINDS or n.kind in ERROR_KINDS) for n in g.nodes)
    assert at_bos > 0 and f.n_nodes == g.n_nodes - at_bos
    assert not (_kinds(f, pos=0) & (set(FEATURE_KINDS) | set(ERROR_KINDS)))


def test_transcoders_only_variant_has_no_attention_nodes(graphs):
    t = graphs["transcoders only"]
    assert not (_kinds(t) & {"attn_feature", "attn_error"})
    assert {"mlp_feature", "mlp_error", "token"} <= _kinds(t)


def test_scores_differ_between_variants_and_lie_in_the_unit_interval(graphs):
    s = {k: graph_scores(g).replacement for k, g in graphs.items()}
    assert all(0 < v <= 1 for v in s.values())
    # without attention error nodes less influence can start at errors: the circuit-tracer setting scores higher
    assert s["transcoders only"] > s["all dictionaries, every node (target)"]


def test_paired_difference_cancels_the_shared_spread_and_can_say_no_difference():
    import numpy as np

    rng = np.random.default_rng(0)
    base = list(rng.uniform(0.8, 0.95, 32))  # prompts differ a lot from each other
    shifted = [v + 0.006 for v in base]  # a small improvement on every prompt
    d = clt.paired_difference(base, shifted)
    assert d.value == pytest.approx(0.006) and d.lo > 0  # paired: significant although 0.006 << the spread
    noise = [v + e for v, e in zip(base, rng.normal(0, 0.01, 32), strict=True)]
    assert not clt.paired_difference(base, noise).excludes(0.0)  # negative control: zero-mean noise is 'no difference'
    assert clt.paired_difference(base, base).value == 0.0
