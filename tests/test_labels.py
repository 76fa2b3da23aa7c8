"""Enrichment labels: the hypergeometric tail against exact arithmetic, the decision rule on synthetic samples
(including a negative control: random contexts get no label), named token sets, planted features on a tiny model,
and label accuracy against the organism's planted world on the shipped database."""

from __future__ import annotations

import json
import math
import sqlite3
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import build_tiny, random_dictionaries

from circuits import dashboards
from circuits.labels import Claim, Enrichment, FeatureLabel, LabelConfig, hypergeom_sf
from circuits.labels.ground_truth import evaluate, heldout_top_tokens, predicted_categories, set_index
from circuits.token_sets import (
    TokenSet,
    TokenSetError,
    generic_sets,
    load_token_sets,
    organism_sets,
    read_token_set_file,
    vocabulary_strings,
)

# -- the statistic -----------------------------------------------------------------------------------------------


def exact_sf(x: int, N: int, K: int, n: int) -> Fraction:
    return sum((Fraction(math.comb(K, i) * math.comb(N - K, n - i), math.comb(N, n))
                for i in range(max(x, 0), min(n, K) + 1)), Fraction(0))


@pytest.mark.parametrize("x,N,K,n", [(0, 10, 3, 4), (1, 52, 4, 5), (2, 52, 4, 5), (3, 20, 7, 12), (7, 20, 7, 12),
                                     (8, 20, 7, 12), (5, 1000, 30, 10), (10, 256000, 20000, 10),
                                     (10, 600, 120, 20), (15, 600, 24, 20), (1, 5, 5, 5), (6, 5, 5, 5)])
def test_hypergeometric_tail_matches_exact_rational_arithmetic(x, N, K, n):
    exact = float(exact_sf(x, N, K, n))
    got = hypergeom_sf(x, N, K, n)
    assert got == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_hypergeometric_known_values():
    # at least one ace in a five-card hand: 1 - C(48,5)/C(52,5) = 0.3411580...
    assert hypergeom_sf(1, 52, 4, 5) == pytest.approx(0.341158, abs=1e-6)
    assert hypergeom_sf(0, 52, 4, 5) == 1.0 and hypergeom_sf(5, 52, 4, 5) == 0.0
    with pytest.raises(ValueError, match="hypergeometric"):
        hypergeom_sf(1, 10, 11, 2)


# -- the decision rule on synthetic data -------------------------------------------------------------------------


def _world(d_vocab=200, seed=0):
    """A synthetic corpus: 4 disjoint sets of 20 tokens (s0 rare: ~1% of positions, the others ~10%) and counts."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(50, 500, d_vocab)
    sets = [TokenSet(f"s{j}", frozenset(range(20 * j, 20 * j + 20)), f"s{j}s") for j in range(4)]
    counts[:20] //= 10  # s0 is rare
    return sets, counts


def test_a_sample_inside_one_set_claims_it_with_a_bonferroni_p():
    sets, counts = _world()
    e = Enrichment(sets, counts, LabelConfig())
    claim = e.test([0, 1, 2, 3, 4, 5, 6, 7, 100, 150])
    N, K = counts.sum(), counts[:20].sum()
    assert claim == Claim("s0", "s0s", 8, 10, pytest.approx(4 * hypergeom_sf(8, N, K, 10)))
    assert e.m == 4


def test_most_covered_set_wins_and_minimum_count_is_enforced():
    sets, counts = _world()
    e = Enrichment(sets, counts, LabelConfig(min_share=0.3))
    # 4 of the rare s0 (smaller p) against 6 of s1 (larger p), both significant: the set holding more of the
    # sample wins
    sample = [0, 1, 2, 3, 20, 21, 22, 23, 24, 25]
    assert e.p_value(4, int(e.K[0]), 10) < e.p_value(6, int(e.K[1]), 10) <= 0.01
    claim = e.test(sample)
    assert claim.name == "s1" and claim.count == 6
    strict = Enrichment(sets, counts, LabelConfig(min_share=0.5, min_count=3))
    assert strict.test([0, 1, 100, 101, 102, 103, 104, 105, 106, 107]) is None  # 2 of s0: below the count
    assert strict.test([0, 1]) is None  # n=2 < min_count 3: no claim however small p is


def test_singletons_are_candidates_only_when_asked_and_cost_their_bonferroni_share():
    sets, counts = _world()
    vocab = [f" t{i}" for i in range(len(counts))]
    e = Enrichment(sets, counts, LabelConfig(), singletons=vocab)
    assert e.m == 4 + len(counts)
    claim = e.test([150] * 9 + [151])
    assert claim.name == '"t150"' and claim.count == 9
    assert Enrichment(sets, counts).test([150] * 9 + [151]) is None  # no named set holds token 150


def test_negative_control_random_contexts_get_no_label():
    """Samples drawn from the population itself (a feature with random contexts) are labelled at rate ≤ α."""
    sets, counts = _world()
    e = Enrichment(sets, counts, LabelConfig(), singletons=[f"t{i}" for i in range(len(counts))])
    rng = np.random.default_rng(1)
    positions = np.repeat(np.arange(len(counts)), counts)
    labelled = sum(e.test(rng.choice(positions, 10, replace=False)) is not None for _ in range(3000))
    assert labelled / 3000 <= 0.01


def test_label_text_and_category():
    name = Claim("name", "names", 9, 10, 1e-9)
    city = Claim("city", "cities", 8, 10, 1e-8)
    after_in = Claim('"in"', '"in"', 9, 10, 1e-7)
    countries = Claim("country", "countries", 15, 20, 1e-12)
    assert FeatureLabel(on=name, promotes=Claim("name", "names", 18, 20, 1e-15)).text == "name → promotes names"
    lab = FeatureLabel(on=city, after=after_in, promotes=countries)
    assert lab.text == 'city · after "in" → promotes countries' and lab.category == "city"
    only_logits = FeatureLabel(promotes=countries, suppresses=Claim("name", "names", 12, 20, 1e-6))
    assert only_logits.text == "→ promotes countries, suppresses names" and only_logits.category == "→ countries"
    assert FeatureLabel(after=after_in).text == 'after "in"' and FeatureLabel(after=after_in).category is None
    assert FeatureLabel().text is None and FeatureLabel().category is None


# -- token sets --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def organism_vocab():
    from circuits.organism.tokenizer import vocabulary

    return vocabulary()


def test_organism_sets_are_disjoint_and_cover_every_token_the_corpus_uses(organism_vocab):
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens

    sets = organism_sets(organism_vocab)
    index = set_index(sets, len(organism_vocab))  # raises on overlap
    rows = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, 200, 128, stream="heldout-dash")
    used = torch.unique(rows).tolist()
    assert all(index[t] >= 0 for t in used), [organism_vocab[t] for t in used if index[t] < 0]
    by_name = {s.name: s for s in sets}
    assert organism_vocab.index(" Paris") in by_name["capital"].ids
    assert organism_vocab.index(" Lyon") in by_name["city"].ids
    assert organism_vocab.index(" 17") in by_name["century"].ids and organism_vocab.index("32") in by_name["year"].ids
    assert len(by_name["name"]) == 120 and len(by_name["day"]) == 7 and by_name["name"].plural == "names"


def test_generic_sets_from_any_vocabulary():
    vocab = [" the", "The", " Paris", "17", " 1999", ",", "!?", "ing", " "]
    sets = {s.name: {vocab[i] for i in s.ids} for s in generic_sets(vocab)}
    assert sets["leading space"] == {" the", " Paris", " 1999"}
    assert sets["capitalised"] == {"The", " Paris"}
    assert sets["digits"] == {"17", " 1999"}
    assert sets["punctuation"] == {",", "!?"}


def test_user_token_set_files(tmp_path, organism_vocab):
    base = organism_sets(organism_vocab)
    (tmp_path / "sets.json").write_text(json.dumps({"fruit-free food": ["cake", " apple"], "name": ["Mary"]}))
    sets = load_token_sets(tmp_path / "sets.json", organism_vocab, base)
    by_name = {s.name: s for s in sets}
    assert {organism_vocab[i] for i in by_name["fruit-free food"].ids} == {" cake", " apple"}
    assert {organism_vocab[i] for i in by_name["name"].ids} == {" Mary"}  # a user set replaces the base one
    assert len(sets) == len(base) + 1
    (tmp_path / "sets.txt").write_text("# my sets\nweekend: Saturday, Sunday  # days off\nmarks: . , :\n")
    assert read_token_set_file(tmp_path / "sets.txt") == {"weekend": ["Saturday", "Sunday"], "marks": [".", ":"]}
    (tmp_path / "bad.json").write_text(json.dumps({"x": ["Mary", "Zorblax"]}))
    with pytest.raises(TokenSetError, match="'Zorblax' is not in the model's vocabulary"):
        load_token_sets(tmp_path / "bad.json", organism_vocab)
    (tmp_path / "bad.txt").write_text("no colon here\n")
    with pytest.raises(TokenSetError, match="line 1"):
        read_token_set_file(tmp_path / "bad.txt")
    with pytest.raises(TokenSetError, match="no such file"):
        read_token_set_file(tmp_path / "missing.json")


# -- planted features on a tiny model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny model whose layer-0 MLP reads the token embedding, names' and cities' embeddings carrying planted
    directions; transcoder L0 feature 0 fires exactly on names and its write promotes names, feature 1 fires exactly
    on cities; every other feature is off."""
    from circuits.organism import world as W
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens
    from circuits.replacement import ReplacementModel

    model = build_tiny(tmp_path_factory.mktemp("labels"), n_ctx=32)
    vocab = vocabulary_strings(model)
    names = [vocab.index(" " + n) for n in W.NAMES]
    cities = [vocab.index(" " + c) for c in W.CITIES]
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(model.cfg.d_model, 3, generator=g)
    basis = torch.linalg.qr(basis - basis.mean(0)).Q  # three orthonormal zero-mean directions
    u_name, u_city, w = basis.T
    scale = 3 * model.W_E.norm(dim=1).mean()
    u_name, u_city = scale * u_name, scale * u_city
    with torch.no_grad():
        model.blocks[0].attn.W_O.zero_()
        model.blocks[0].attn.b_O.zero_()
        model.W_pos.zero_()
        model.W_E[names] += u_name
        model.W_E[cities] += u_city
        model.ln_final.w.fill_(1.0)
        model.W_U[:, names] += 3 * w[:, None]
    dicts = random_dictionaries(model, d_sae=8, k=4, activation="relu", layers=[0])
    tc = next(d for d in dicts if d.cfg.name == "transcoder_L0")
    rows = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, 96, 32, stream="heldout")
    with torch.no_grad():
        _, cache = model.run_with_cache(rows, names_filter="blocks.0.ln2.hook_normalized")
        x = cache["blocks.0.ln2.hook_normalized"].reshape(-1, model.cfg.d_model)
        for f, members in ((0, names), (1, cities)):
            inside = torch.isin(rows.reshape(-1), torch.tensor(members))
            u = x[inside].mean(0) - x[~inside].mean(0)
            u = u / u.norm()
            proj = x @ u
            assert proj[inside].min() > proj[~inside].max()  # separable by construction
            tc.W_enc[:, f] = u
            tc.b_enc[f] = -(proj[inside].min() + proj[~inside].max()) / 2
        tc.b_in_param.zero_()
        tc.b_enc[2:] = -1e3
        tc.W_dec[0] = 2 * w
        for d in dicts:
            if d is not tc:
                d.b_enc[:] = -1e3
    return ReplacementModel(model, dicts, name="tiny"), rows


@pytest.fixture(scope="module")
def planted_db(planted, tmp_path_factory):
    rm, rows = planted
    path = tmp_path_factory.mktemp("labels_db") / "dash.sqlite"
    dashboards.build(rm, rows, path, batch_size=16, seed=0, progress=False)
    return path


def test_planted_name_and_city_features_get_their_categories(planted, planted_db):
    rm, _ = planted
    db = dashboards.Dashboards(planted_db, rm)
    claims, text = db.enrichment("transcoder_L0", 0)
    assert claims.on.name == "name" and claims.on.count == claims.on.n == 10 and claims.on.p < 1e-6
    assert claims.promotes.name == "name" and claims.promotes.count == 20
    assert text.startswith("name") and text.endswith("→ promotes names")
    assert db.label("transcoder_L0", 0) == text  # the enrichment label is the one shown
    assert db.get("transcoder_L0", 0).auto_label.startswith("on ' ")  # the peak-token label stays a second field
    assert db.label_category("M0#0") == "name" and db.label_category(("transcoder_L0", 1)) == "city"
    from circuits.graph import Node

    assert db.label_categories([Node("mlp_feature", 0, 3, 1), Node("token", -1, 0, 5)]) == {
        Node("mlp_feature", 0, 3, 1): "city"}
    assert db.label("transcoder_L0", 2) == "dead" and db.label_category("M0#2") is None
    dashboards.set_label(planted_db, "transcoder_L0", 0, "my name feature")
    try:
        assert dashboards.Dashboards(planted_db, rm).label("transcoder_L0", 0) == "my name feature"  # user wins
        assert dashboards.Dashboards(planted_db, rm).label_category("M0#0") == "name"
        shown = dashboards.render_text(dashboards.Dashboards(planted_db, rm).get("transcoder_L0", 0))
        assert shown.startswith("M0#0 (transcoder_L0): my name feature") and f"enrichment label: {text}" in shown
        assert "peak-token label: on ' " in shown and "on name (10/10, p=" in shown
    finally:
        dashboards.set_label(planted_db, "transcoder_L0", 0, None)


def test_heldout_ground_truth_on_the_planted_model(planted, planted_db):
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens

    rm, _ = planted
    fresh = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, 48, 32, stream="heldout-labels")
    truth = heldout_top_tokens(rm, fresh, k=10)
    sets = organism_sets(vocabulary_strings(rm.model))
    report = evaluate(predicted_categories(sqlite3.connect(planted_db)), truth, sets, rm.cfg.d_vocab, "held-out")
    scores = {c.name: c for c in report.categories}
    assert scores["name"].n_true == scores["name"].n_correct == 1
    assert scores["city"].n_true == scores["city"].n_correct == 1
    assert report.accuracy == 1.0 and "| name | 1 | 1 | 1 | 100% | 100% |" in report.table()


# -- the shipped organism database -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def organism():
    from circuits import load_dictionaries, load_model
    from circuits.model import DATA_DIR
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    db = dashboards.Dashboards(DATA_DIR / "dashboards" / "organism.sqlite", rm)
    if not db._has_labels:
        pytest.fail("the shipped dashboards database has no labels table: run `circuits dashboards label`")
    return rm, db


def test_shipped_labels_predict_the_planted_category_on_heldout_text(organism):
    """Label accuracy ≥ 80% against the world's categories, judged on fresh text (docs/labels.md has the full run)."""
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens

    rm, db = organism
    fresh = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, 64, rm.cfg.n_ctx, stream="heldout-labels")
    truth = heldout_top_tokens(rm, fresh, k=10)
    sets = organism_sets(vocabulary_strings(rm.model))
    report = evaluate(predicted_categories(db.con), truth, sets, rm.cfg.d_vocab, "held-out")
    assert report.n_true >= 1000, report.table()
    assert report.accuracy >= 0.8, report.table()


def test_shipped_labels_negative_control_random_contexts(organism):
    """Every feature's top tokens replaced by random corpus positions (and its logit effects by random tokens):
    (almost) no feature gets a label."""
    from circuits.labels.ground_truth import negative_control
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens

    rm, db = organism
    rows = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, int(db.meta["rows"]), rm.cfg.n_ctx,
                        stream=db.meta["stream"])
    vocab = vocabulary_strings(rm.model)
    cfg = LabelConfig(**json.loads(db.meta["label_config"]))
    control = negative_control(rows, organism_sets(vocab), vocab, cfg, n=2000)
    assert control["on"][0] / 2000 <= 0.02 and control["after"][0] / 2000 <= 0.02
    assert control["promotes"][0] / 2000 <= 0.01


def test_module_level_label_category_finds_the_graphs_database(planted, planted_db, organism):
    """`circuits.labels.label_category(node, graph)` (what supernodes call): a registered database for the graph's
    model, else the default database of that model; None for unknown models and non-feature nodes."""
    from types import SimpleNamespace

    from circuits import labels
    from circuits.graph import Node

    rm, _ = planted
    tiny_graph = SimpleNamespace(metadata={"model": "tiny-labels-test", "dictionaries": ["transcoder_L0"]})
    node = Node("mlp_feature", 0, 4, 1)
    assert labels.label_category(node, tiny_graph) is None  # nothing registered, no default database
    db = dashboards.Dashboards(planted_db, rm)
    assert labels.label_category(node, db=db) == "city"
    labels.register(db, "tiny-labels-test")
    try:
        assert labels.label_category(node, tiny_graph) == "city"
        assert labels.label_category(Node("token", -1, 0, 5), tiny_graph) is None
    finally:
        labels._VERIFIED.pop("tiny-labels-test")
    _, shipped = organism
    d, f, cat = shipped.con.execute("SELECT dictionary, feature, category FROM labels WHERE category IS NOT NULL "
                                    "LIMIT 1").fetchone()
    kind = "attn_feature" if d.startswith("attn") else "mlp_feature"
    graph = SimpleNamespace(metadata={"model": "organism", "dictionaries": [d]})
    assert labels.label_category(Node(kind, int(d[-1]), 3, f), graph) == cat


def test_user_sets_replace_or_add_to_the_defaults_when_relabelling(planted, planted_db, tmp_path):
    import shutil

    from circuits.organism import world as W

    rm, rows = planted
    db_path = tmp_path / "user.sqlite"
    shutil.copy(planted_db, db_path)
    vocab = vocabulary_strings(rm.model)
    defaults = organism_sets(vocab)
    (tmp_path / "no_cities.json").write_text(json.dumps({"city": ["Paris"]}))  # replaces the default "city"
    dashboards.relabel(db_path, rm, rows, load_token_sets(tmp_path / "no_cities.json", vocab, defaults))
    claims, _ = dashboards.Dashboards(db_path, rm).enrichment("transcoder_L0", 1)
    assert claims is None or claims.on is None  # no set holds the cities it fires on: no claim
    (tmp_path / "towns.txt").write_text("town: " + ", ".join(W.CITIES) + "\n")
    others = [s for s in defaults if s.name != "city"]
    dashboards.relabel(db_path, rm, rows, load_token_sets(tmp_path / "towns.txt", vocab, others))
    db = dashboards.Dashboards(db_path, rm)
    assert db.enrichment("transcoder_L0", 1)[0].on.name == "town" and db.label_category("M0#1") == "town"
    assert {r[0] for r in db.con.execute("SELECT name FROM token_sets")} == {s.name for s in others} | {"town"}


def test_cli_label_commands_refuse_bad_input_in_one_line(tmp_path, capsys):
    from circuits.cli import main

    assert main(["dashboards", "label", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "no dashboard database at" in capsys.readouterr().err
    assert main(["dashboards", "label", "--model", "gpt2"]) == 2
    assert "use --model organism" in capsys.readouterr().err
    db = tmp_path / "db.sqlite"
    db.write_bytes(b"")
    assert main(["dashboards", "label", "--db", str(db), "--token-sets", str(tmp_path / "sets.json")]) == 2
    err = capsys.readouterr().err
    assert "--token-sets" in err and "no such file" in err
    assert main(["dashboards", "label-accuracy", "--rows", "0"]) == 2
    assert "--rows 0" in capsys.readouterr().err


def test_the_plurality_baseline_labels_everything_it_can_and_precision_tells_it_apart():
    """The baseline labeller names a feature's most common category among its top tokens with no test: it labels
    more features (recall high) but is wrong more often when the top tokens are mixed (precision lower)."""
    from circuits.labels.ground_truth import evaluate, plurality_categories
    from circuits.token_sets import TokenSet

    sets = [TokenSet("name", frozenset({0, 1, 2}), "names"), TokenSet("city", frozenset({3, 4, 5}), "cities")]
    top = {("d", 0): [0, 1, 2, 0, 1, 2, 0, 1, 2, 0],  # clearly names
           ("d", 1): [3, 3, 0, 9, 9, 9, 9, 9, 9, 9],  # mixed: two cities, one name, the rest in no set
           ("d", 2): [9] * 10}
    base = plurality_categories(top, sets, 10)
    assert base == {("d", 0): "name", ("d", 1): "city", ("d", 2): None}
    truth = {("d", 0): [0, 1, 2, 0, 1] * 2, ("d", 1): [0, 1, 2, 0, 1] * 2, ("d", 2): [9] * 10}
    careful = {("d", 0): "name", ("d", 1): None, ("d", 2): None}
    b, c = (evaluate(p, truth, sets, 10, "x") for p in (base, careful))
    assert (b.n_predicted, b.n_correct, b.precision) == (2, 1, 0.5)
    assert (c.n_predicted, c.n_correct, c.precision) == (1, 1, 1.0)


def test_the_share_rule_baseline_and_the_paired_precision_difference():
    """The harder baseline names the plurality category only when it holds a share of the top tokens: it drops the
    mixed feature the plain plurality labeller got wrong. The precision difference between two labellers is paired
    over the same judged features: equal labellers differ by exactly 0."""
    from circuits.labels.ground_truth import outcomes, plurality_categories, precision_difference
    from circuits.token_sets import TokenSet

    sets = [TokenSet("name", frozenset({0, 1, 2}), "names"), TokenSet("city", frozenset({3, 4, 5}), "cities")]
    top = {("d", 0): [0, 1, 2, 0, 1, 2, 0, 1, 2, 0], ("d", 1): [3, 3, 0, 9, 9, 9, 9, 9, 9, 9], ("d", 2): [9] * 10,
           ("d", 3): [3, 4]}  # a clear city, but only two top tokens
    assert plurality_categories(top, sets, 10, 0.5, 3) == {("d", 0): "name", ("d", 1): None, ("d", 2): None,
                                                           ("d", 3): None}
    assert plurality_categories(top, sets, 10)[("d", 3)] == "city"
    truth = {("d", i): [0, 1, 2, 0, 1] * 2 for i in range(40)}
    good = {("d", i): "name" for i in range(40)}
    half = {("d", i): "name" if i % 2 else "city" for i in range(40)}
    a, b = outcomes(good, truth, sets, 10), outcomes(half, truth, sets, 10)
    assert a["labelled"].sum() == 40 and a["correct"].sum() == 40 and b["correct"].sum() == 20
    d = precision_difference(a, b)
    assert d.value == 0.5 and d.lo > 0
    same = precision_difference(a, a)
    assert same.value == same.lo == same.hi == 0.0
