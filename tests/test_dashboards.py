"""Feature dashboards on a tiny model with a planted feature: top contexts, logit effects, SQLite, labels."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from conftest import build_tiny, random_dictionaries

from circuits import dashboards
from circuits.dashboards import DashboardError, Dashboards
from circuits.replacement import ReplacementModel

PLANTED = " the"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A model whose layer-0 MLP input is exactly the token embedding (attention 0 writes nothing, no position
    embeddings), and a ReLU transcoder whose feature 0 fires only on ' the'."""
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens

    model = build_tiny(tmp_path_factory.mktemp("dash"), n_ctx=32)
    with torch.no_grad():
        model.blocks[0].attn.W_O.zero_()
        model.blocks[0].attn.b_O.zero_()
        model.W_pos.zero_()
    dicts = random_dictionaries(model, d_sae=16, k=4, activation="relu", layers=[0, 1])
    tc = next(d for d in dicts if d.cfg.name == "transcoder_L0")
    rows = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, 24, 32, stream="heldout")
    mary = model.to_single_token("the")
    assert (rows == mary).sum() >= 3
    with torch.no_grad():
        _, cache = model.run_with_cache(rows, names_filter="blocks.0.ln2.hook_normalized")
        x = cache["blocks.0.ln2.hook_normalized"].reshape(-1, model.cfg.d_model)
        is_mary = (rows == mary).reshape(-1)
        u = x[is_mary].mean(0) - x[~is_mary].mean(0)
        u = u / u.norm()
        tc.b_in_param.zero_()
        proj = x @ u
        threshold = (proj[is_mary].min() + proj[~is_mary].max()) / 2
        assert proj[is_mary].min() > proj[~is_mary].max()  # separable by construction
        tc.W_enc[:, 0] = u
        tc.b_enc[0] = -threshold
        for d in dicts:  # other features: off (negative bias), so only the planted one is tested
            d.b_enc[1:] = -1e3 if d is tc else d.b_enc[1:]
    rm = ReplacementModel(model, dicts, name="tiny")
    return rm, rows


@pytest.fixture(scope="module")
def db(planted, tmp_path_factory):
    rm, rows = planted
    path = tmp_path_factory.mktemp("db") / "dash.sqlite"
    dashboards.build(rm, rows, path, batch_size=8, seed=0, progress=False)
    return path


def test_planted_feature_top_contexts_all_contain_its_token(planted, db):
    rm, _ = planted
    dash = Dashboards(db, rm).get("transcoder_L0", 0)
    tops = dash.top_examples()
    assert len(tops) >= 3 and all(e.tokens[e.focus] == PLANTED for e in tops)
    # context activations are stored to 4 significant digits: relative rounding error ≤ 5e-4
    assert all(e.activations[e.focus] == pytest.approx(e.activation, rel=5e-4) for e in tops)
    assert dash.auto_label.startswith(f"on {PLANTED!r} ({len(tops)}/{len(tops)})")
    assert 0 < dash.density < 0.2 and dash.n_active == int((planted[1] == rm.model.to_single_token("the")).sum())
    assert sum(c for _, _, c in dash.histogram) == dash.n_active


def test_logit_effects_match_a_hand_computation(planted, db):
    rm, _ = planted
    tc = rm.transcoders[0]
    gamma = rm.model.ln_final.w
    v = tc.W_dec[0]
    effect = ((v - v.mean()) * gamma) @ rm.model.W_U
    top = effect.topk(dashboards.N_LOGITS)
    dash = Dashboards(db, rm).get("transcoder_L0", 0)
    assert [t for t, _ in dash.logits_top] == [rm.model.to_string(torch.tensor([i])) for i in top.indices.tolist()]
    assert [v for _, v in dash.logits_top] == pytest.approx(top.values.tolist(), abs=1e-3)
    bottom = (-effect).topk(dashboards.N_LOGITS).indices.tolist()
    assert [t for t, _ in dash.logits_bottom] == [rm.model.to_string(torch.tensor([i])) for i in bottom]


def test_attention_features_get_head_and_source_breakdowns(planted, db):
    rm, _ = planted
    con = sqlite3.connect(db)
    row = con.execute("SELECT feature FROM features WHERE dictionary = 'attn_sae_L1' AND n_active > 0 "
                      "ORDER BY n_active DESC LIMIT 1").fetchone()
    assert row is not None
    dash = Dashboards(db, rm).get("attn_sae_L1", row[0])
    assert dash.heads is not None and len(dash.heads) == rm.cfg.n_heads and abs(sum(dash.heads) - 1) < 1e-3
    assert dash.source_offsets and abs(sum(dash.source_offsets.values()) - 1) < 1e-3
    assert all(k == "other" or int(k) >= 0 for k in dash.source_offsets)


def test_sqlite_is_plain_and_complete(planted, db):
    rm, _ = planted
    con = sqlite3.connect(db)
    n = con.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    assert n == sum(d.d_sae for d in rm.dictionaries)
    assert {r[0] for r in con.execute("SELECT dictionary FROM done")} == {d.cfg.name for d in rm.dictionaries}
    assert con.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()[0] == dashboards.fingerprint(rm)
    dead = con.execute("SELECT auto_label FROM features WHERE n_active = 0").fetchall()
    assert all(label == "dead" for (label,) in dead)


def test_labels_are_stable_across_rebuilds_and_user_labels_override(planted, db, tmp_path):
    rm, rows = planted
    again = dashboards.build(rm, rows, tmp_path / "again.sqlite", batch_size=8, seed=0, progress=False)
    q = "SELECT dictionary, feature, auto_label FROM features ORDER BY dictionary, feature"
    assert sqlite3.connect(db).execute(q).fetchall() == sqlite3.connect(again).execute(q).fetchall()
    qe = "SELECT * FROM examples ORDER BY dictionary, feature, kind, rank"
    ql = "SELECT * FROM labels ORDER BY dictionary, feature"
    assert sqlite3.connect(db).execute(ql).fetchall() == sqlite3.connect(again).execute(ql).fetchall()
    assert sqlite3.connect(db).execute(qe).fetchall() == sqlite3.connect(again).execute(qe).fetchall()
    dashboards.set_label(again, "transcoder_L0", 0, "the detector")
    d = Dashboards(again, rm)
    assert d.get("transcoder_L0", 0).label == "the detector"
    assert d.get("transcoder_L0", 0).auto_label.startswith("on")
    from circuits.graph import Node

    assert d.labels([Node("mlp_feature", 0, 3, 0), Node("token", -1, 0, 5)]) == {
        Node("mlp_feature", 0, 3, 0): "the detector"}


def test_labels_prefer_user_then_enrichment_then_peak_token_and_old_databases_migrate(planted, db, tmp_path):
    import shutil

    from circuits.dashboards.store import DENSE_LABEL_DENSITY

    rm, rows = planted
    d = Dashboards(db, rm)
    enriched = sqlite3.connect(db).execute("SELECT l.dictionary, l.feature, l.label, f.density FROM labels l JOIN "
                                           "features f USING (dictionary, feature)").fetchall()
    for name, f, text, density in enriched:  # every stored enrichment label is the one shown (no user labels here)
        shown = f"dense {density:.0%} · {text}" if density >= DENSE_LABEL_DENSITY else text
        assert d.label(name, f) == shown == d.get(name, f).label and d.get(name, f).enrichment_label == text
        assert text != d.get(name, f).auto_label
    dash = d.get("transcoder_L0", 0)
    assert dash.auto_label.startswith(f"on {PLANTED!r}")  # the peak-token label is kept as a second field
    if dash.enrichment_label is not None:
        assert "token-set enrichment" in dashboards.render_text(dash)
    old = tmp_path / "old.sqlite"  # a database built before labels existed: no labels table
    shutil.copy(db, old)
    con = sqlite3.connect(old)
    con.executescript("DROP TABLE labels; DROP TABLE token_sets;")
    con.close()
    d_old = Dashboards(old, rm)
    assert d_old.label("transcoder_L0", 0) == dash.auto_label and d_old.label_category("M0#0") is None
    d_old.close()
    n = dashboards.relabel(old, rm, rows)  # the migration: labels only, nothing rebuilt
    assert n == len(enriched)
    q = "SELECT * FROM labels ORDER BY dictionary, feature"
    assert sqlite3.connect(old).execute(q).fetchall() == sqlite3.connect(db).execute(q).fetchall()


def test_dense_features_labels_say_so_and_nothing_else_changes(planted, db, tmp_path):
    """A feature active on ≥ 20% of the held-out tokens shows ``dense NN% · <its label>`` everywhere the label is
    read (graphs, explorer, CLI); below the threshold (the negative control), with a user label, and for the
    grouping category, nothing changes."""
    import shutil

    from circuits.dashboards.store import DENSE_LABEL_DENSITY
    from circuits.graph import Node

    rm, _ = planted
    copy = tmp_path / "dense.sqlite"
    shutil.copy(db, copy)
    con = sqlite3.connect(copy)
    name, f, text, category = con.execute("SELECT dictionary, feature, label, category FROM labels WHERE category "
                                          "IS NOT NULL ORDER BY dictionary, feature LIMIT 1").fetchone()
    con.execute("UPDATE features SET density = 0.0")
    con.execute("UPDATE features SET density = 0.45 WHERE dictionary = ? AND feature = ?", (name, f))
    con.commit()
    con.close()
    d = Dashboards(copy, rm)
    node = Node("attn_feature" if name.startswith("attn") else "mlp_feature", int(name[-1]), 3, f)
    assert d.label(name, f) == d.get(name, f).label == d.label_of(node) == f"dense 45% · {text}"
    assert d.labels([node]) == {node: f"dense 45% · {text}"} and d.density_of(node) == 0.45
    assert d.label_category((name, f)) == category and not category.startswith("dense")  # grouping unchanged
    assert d.get(name, f).enrichment_label == text
    d.close()
    con = sqlite3.connect(copy)
    con.execute("UPDATE features SET density = ? WHERE dictionary = ? AND feature = ?",
                (DENSE_LABEL_DENSITY - 0.01, name, f))
    con.commit()
    con.close()
    d = Dashboards(copy, rm)
    assert d.label(name, f) == text  # just below the threshold: unmarked
    d.close()
    dashboards.set_label(copy, name, f, "mine")
    con = sqlite3.connect(copy)
    con.execute("UPDATE features SET density = 0.9 WHERE dictionary = ? AND feature = ?", (name, f))
    con.commit()
    con.close()
    d = Dashboards(copy, rm)
    assert d.label(name, f) == "mine"  # a user's label is shown as written
    d.close()


def test_never_predicted_tokens_are_left_out_of_what_is_shown(planted, db, tmp_path):
    """A token the model never predicts (the organism's special tokens) is dropped from the promote/suppress lists
    that `get` returns, and a peak-token label whose arrow names one names the next promoted token instead; the
    other tokens keep their order and values. The negative control: the same rows in a database of another model
    are shown as stored."""
    import shutil

    rm, _ = planted
    copy = tmp_path / "hidden.sqlite"
    shutil.copy(db, copy)
    con = sqlite3.connect(copy)
    name, f = con.execute("SELECT dictionary, feature FROM features WHERE n_active > 0 LIMIT 1").fetchone()
    top = [["<|pad|>", 0.9], [" a", 0.8], ["<|unk|>", 0.7], [" b", 0.6]]
    bottom = [[" c", -0.9], ["<|endoftext|>", -0.8]]
    con.execute("UPDATE features SET logits_top = ?, logits_bottom = ?, auto_label = ?, user_label = NULL, "
                "density = 0.01 WHERE dictionary = ? AND feature = ?",
                (json.dumps(top), json.dumps(bottom), "on ' x' (3/3) → '<|pad|>'", name, f))
    con.execute("DELETE FROM labels WHERE dictionary = ? AND feature = ?", (name, f))  # the peak-token label shows
    con.commit()
    stored = con.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0]
    assert stored != "organism"
    con.close()
    d = Dashboards(copy, rm)  # another model: shown as stored
    dash = d.get(name, f)
    assert [t for t, _ in dash.logits_top] == [t for t, _ in top] and dash.label == "on ' x' (3/3) → '<|pad|>'"
    d.close()
    con = sqlite3.connect(copy)
    con.execute("UPDATE meta SET value = 'organism' WHERE key = 'model'")
    con.commit()
    con.close()
    d = Dashboards(copy)  # the organism (no model given: the fingerprint is not checked)
    dash = d.get(name, f)
    assert dash.logits_top == [(" a", 0.8), (" b", 0.6)] and dash.logits_bottom == [(" c", -0.9)]
    assert dash.label == dash.auto_label == d.label(name, f) == "on ' x' (3/3) → ' a'"
    d.close()


def test_shown_auto_label_only_replaces_a_hidden_arrow_target():
    from circuits.dashboards.store import never_predicted, shown_auto_label

    hidden = never_predicted("organism")
    assert "<|pad|>" in hidden and not never_predicted("gpt2") and not never_predicted(None)
    top = [("<|pad|>", 1.0), (" Mary", 0.5)]
    assert shown_auto_label("on ' John' (9/10) → '<|pad|>'", top, hidden) == "on ' John' (9/10) → ' Mary'"
    assert shown_auto_label("on ' John' (9/10) → ' Mary'", top, hidden) == "on ' John' (9/10) → ' Mary'"
    assert shown_auto_label("on '<|endoftext|>' (9/9) → ' Mary'", top, hidden) == "on '<|endoftext|>' (9/9) → ' Mary'"
    assert shown_auto_label("on ' a' (1/1) → '<|unk|>'", [("<|unk|>", 1.0)], hidden) == "on ' a' (1/1) → ?"
    assert shown_auto_label("dead", top, hidden) == "dead"


def test_user_labels_live_beside_the_database_and_never_change_it(planted, db, tmp_path):
    """`set_label` writes the labels file beside the database, never the database (a shipped, tracked file): its
    bytes stay the same; the label survives a rebuild of the database at the same path; a database built for other
    dictionaries (another fingerprint) does not show it, and the file keeps it; a label an older version stored in
    the database is still shown and can be cleared; a file that is not a labels file is reported, not overwritten."""
    import hashlib
    import shutil

    from circuits.dashboards.user_labels import user_labels_path

    rm, rows = planted
    path = tmp_path / "mine.sqlite"
    shutil.copy(db, path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    dashboards.set_label(path, "transcoder_L0", 0, "the detector")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert user_labels_path(path) == tmp_path / "mine.user-labels.json" and user_labels_path(path).exists()
    d = Dashboards(path, rm)
    assert d.label("transcoder_L0", 0) == d.get("transcoder_L0", 0).label == "the detector"
    dashboards.set_label(path, "transcoder_L0", 1, "second")  # an open reader sees labels set after it opened
    assert d.label("transcoder_L0", 1) == "second"
    d.close()

    path.unlink()  # rebuilt in place for the same dictionaries: the labels come back
    dashboards.build(rm, rows, path, batch_size=8, seed=0, progress=False)
    assert Dashboards(path, rm).label("transcoder_L0", 0) == "the detector"

    other = tmp_path / "other.sqlite"  # another set's database at a path whose labels file has this set's labels
    shutil.copy(path, other)
    shutil.copy(user_labels_path(path), user_labels_path(other))
    con = sqlite3.connect(other)
    con.execute("UPDATE meta SET value = 'something else' WHERE key = 'fingerprint'")
    con.commit()
    con.close()
    assert Dashboards(other).label("transcoder_L0", 0) != "the detector"
    assert "the detector" in user_labels_path(other).read_text()

    con = sqlite3.connect(path)  # a label stored in the database by an older version
    con.execute("UPDATE features SET user_label = 'old' WHERE dictionary = 'transcoder_L0' AND feature = 2")
    con.commit()
    con.close()
    assert Dashboards(path, rm).label("transcoder_L0", 2) == "old"
    dashboards.set_label(path, "transcoder_L0", 2, None)
    assert Dashboards(path, rm).label("transcoder_L0", 2) != "old"
    dashboards.set_label(path, "transcoder_L0", 0, None)
    assert Dashboards(path, rm).label("transcoder_L0", 0) != "the detector"

    dashboards.set_label(path, "transcoder_L0", 0, "kept")
    assert Dashboards(path, rm).label("transcoder_L0", 0) == "kept"
    for broken in ("{not json", '{"format": "circuits-user-labels/1", "labels": {"fp": "x"}}'):
        user_labels_path(path).write_text(broken)
        d = Dashboards(path, rm)  # the dashboards still work, without the user labels, and say why
        with pytest.warns(UserWarning, match="user labels not shown"):
            shown = d.label("transcoder_L0", 0)
        assert shown == d.get("transcoder_L0", 0).label and shown != "kept"
        d.close()
        with pytest.raises(DashboardError, match="user.labels"):
            dashboards.set_label(path, "transcoder_L0", 0, "x")
        assert user_labels_path(path).read_text() == broken  # never overwritten
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind


def test_custom_text_activations(planted):
    rm, _ = planted
    acts = dashboards.activations_on(rm, "Mary went to the store and the park", "transcoder_L0", 0)
    on = [tok for tok, a in acts if a > 0]
    assert on == [PLANTED, PLANTED] and acts[0][0] == "<|endoftext|>"


def test_rendering_marks_the_activating_token(planted, db):
    rm, _ = planted
    text = dashboards.render_text(Dashboards(db, rm).get("transcoder_L0", 0))
    assert f"[[{PLANTED}]]" in text and "promotes:" in text and "histogram" in text
    assert text.startswith("M0#0 (transcoder_L0): ")  # the canonical id first


def test_bad_input(planted, db, tmp_path):
    rm, _ = planted
    with pytest.raises(DashboardError, match="circuits dashboards build"):
        Dashboards(tmp_path / "missing.sqlite", rm)
    d = Dashboards(db, rm)
    with pytest.raises(DashboardError, match="no feature 99"):
        d.get("transcoder_L0", 99)
    with pytest.raises(DashboardError, match="no dictionary 'transcoder_L7'"):
        d.get("transcoder_L7", 0)
    with pytest.raises(DashboardError, match="M3#1184"):
        dashboards.parse_feature_id("banana")
    assert dashboards.parse_feature_id("mlp:2:517") == ("transcoder_L2", 517)
    assert dashboards.parse_feature_id("attn_sae_L1#33") == ("attn_sae_L1", 33)
    assert dashboards.parse_feature_id("M2#517") == ("transcoder_L2", 517)  # the canonical id
    assert dashboards.parse_feature_id("A1#33@5") == ("attn_sae_L1", 33)  # a position is ignored
    assert dashboards.feature_id("attn_sae_L1", 33) == "A1#33"
    other = ReplacementModel(rm.model, random_dictionaries(rm.model, d_sae=16, k=4, seed=5, layers=[0, 1]))
    with pytest.raises(DashboardError, match="fingerprint"):
        Dashboards(db, other)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DashboardError, match="not a dashboard database"):
        Dashboards(tmp_path / "junk.sqlite", rm)


def test_committed_organism_database_matches_its_dictionaries():
    from circuits import load_dictionaries, load_model
    from circuits.model import DATA_DIR

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    db = Dashboards(DATA_DIR / "dashboards" / "organism.sqlite", rm)  # raises on a fingerprint mismatch
    n = db.con.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    assert n == sum(d.d_sae for d in rm.dictionaries)
    live = db.con.execute("SELECT dictionary, feature FROM features WHERE n_active > 100 LIMIT 1").fetchone()
    dash = db.get(*live)
    assert dash.top_examples() and dash.logits_top and dash.label != "dead"
    stored = [a for (a,) in db.con.execute("SELECT activation FROM examples WHERE dictionary = 'transcoder_L3' AND "
                                           "feature = 1184 AND kind = 'quantile' ORDER BY rank")]
    shown = [e.activation for e in db.get("transcoder_L3", 1184).examples if e.kind == "quantile"]
    assert stored != sorted(stored, reverse=True) and shown == sorted(stored, reverse=True)  # strongest first
    from circuits.dashboards.store import enrichment_evidence

    name, f = db.con.execute("SELECT dictionary, feature FROM labels WHERE promotes IS NOT NULL LIMIT 1").fetchone()
    claimed = db.get(name, f)  # the label's counts are shown with it: the promotes claim counts the top 20 logits
    c = claimed.enrichment.promotes
    assert c.n == 20 and f"promotes {c.name} ({c.count}/20, p=" in enrichment_evidence(claimed)
    assert enrichment_evidence(claimed) in dashboards.render_text(claimed)
    pad = db.con.execute("SELECT dictionary, feature, logits_top FROM features WHERE logits_top LIKE '%<|pad|>%' "
                         "LIMIT 1").fetchone()  # the stored lists keep special tokens; what is shown does not
    shown = db.get(pad[0], pad[1]).logits_top
    assert [t for t, _ in shown] == [t for t, _ in json.loads(pad[2]) if not t.startswith("<|")] and len(shown) < 8
    assert db._has_labels and "label_config" in db.meta  # enrichment labels are stored (circuits.labels)
    top = dash.top_examples()[0]
    acts = dashboards.activations_on(rm, "".join(top.tokens).strip(), live[0], live[1])
    assert max(a for _, a in acts) > 0  # the feature fires again on its own top context


def test_pending_names_what_a_build_would_compute(planted, db, tmp_path):
    """`pending`: every dictionary for a missing database, none for a complete one (a build then only relabels, and
    `dashboards build` says so instead of "wrote"), the unfinished ones of a partial one, all for another set's."""
    import shutil

    rm, _ = planted
    names = [d.cfg.name for d in rm.dictionaries]
    assert dashboards.pending(rm, tmp_path / "missing.sqlite") == names
    assert dashboards.pending(rm, db) == []
    odd = tmp_path / "a?b#c%d.sqlite"  # characters a file URI must escape
    shutil.copy(db, odd)
    assert dashboards.pending(rm, odd) == []
    partial = tmp_path / "partial.sqlite"
    shutil.copy(db, partial)
    con = sqlite3.connect(partial)
    con.execute("DELETE FROM done WHERE dictionary = ?", (names[-1],))
    con.commit()
    assert dashboards.pending(rm, partial) == [names[-1]]
    con.execute("UPDATE meta SET value = 'other' WHERE key = 'fingerprint'")
    con.commit()
    con.close()
    assert dashboards.pending(rm, partial) == names


def test_every_read_only_opening_takes_a_path_with_uri_characters(planted, db, tmp_path):
    """A database in a folder named ``runs?2#b%41`` is read where it is. Pasted raw into SQLite's URI form, ``?``
    ends the path: the reader opened (and created) an empty database ``runs`` beside it and called the real one
    "not a dashboard database". Checked for the reader, the labels writer, the build's `pending` and the CLI's
    pre-build check; nothing is created beside the folder."""
    import shutil

    from circuits.cli.dashboards import _stored_meta
    from circuits.dashboards.store import connect_read_only

    rm, _ = planted
    folder = tmp_path / "runs?2#b%41"
    folder.mkdir()
    path = folder / "dash.sqlite"
    shutil.copy(db, path)
    before = path.read_bytes()
    d = Dashboards(path, rm)
    assert d.meta["fingerprint"] == dashboards.fingerprint(rm) and d.get("transcoder_L0", 0) is not None
    d.close()
    dashboards.set_label(path, "transcoder_L0", 0, "odd folder")
    assert Dashboards(path, rm).label("transcoder_L0", 0) == "odd folder"
    assert dashboards.pending(rm, path) == []
    assert _stored_meta(path)["fingerprint"] == dashboards.fingerprint(rm)
    con = connect_read_only(path)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        con.execute("UPDATE meta SET value = 'x' WHERE key = 'fingerprint'")
    con.close()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs?2#b%41"]


def test_the_build_command_says_whether_it_computed_dashboards_or_only_relabelled(planted, tmp_path, capsys,
                                                                                 monkeypatch):
    """`circuits dashboards build`: a new database reports every dictionary's dashboards written; the same command
    again finds it complete, only recomputes the labels and says so (it printed "wrote" before), leaving the
    dashboards as they were (a marked example survives it); a database with one dictionary missing computes that
    one only."""
    import circuits.dictionaries
    import circuits.model
    from circuits.cli import main

    rm, _ = planted
    monkeypatch.setattr(circuits.model, "load_model", lambda *a, **k: (rm.model, None))
    monkeypatch.setattr(circuits.dictionaries, "load_dictionaries", lambda *a, **k: rm.dictionaries)
    out = tmp_path / "dash.sqlite"
    build = ["dashboards", "build", "--rows", "6", "--out", str(out), "--quiet"]
    n = len(rm.dictionaries)

    def examples():
        con = sqlite3.connect(out)
        try:
            return con.execute("SELECT * FROM examples ORDER BY 1, 2, 3").fetchall()
        finally:
            con.close()

    assert main(build) == 0
    assert f"dashboards of {n} of {n} dictionaries" in capsys.readouterr().out
    con = sqlite3.connect(out)  # a mark a recomputation would wipe: the same seed gives the same rows
    key = con.execute("SELECT dictionary, feature, kind, rank FROM examples LIMIT 1").fetchone()
    con.execute("UPDATE examples SET activation = -12345.0 WHERE dictionary = ? AND feature = ? AND kind = ? AND "
                "rank = ?", key)
    con.commit()
    con.close()
    first = examples()
    assert first and any(-12345.0 in row for row in first)
    assert main(build) == 0
    said = capsys.readouterr().out
    assert "already held every dictionary's dashboards: only the labels were recomputed" in said
    assert "wrote" not in said and examples() == first
    con = sqlite3.connect(out)
    con.execute("DELETE FROM done WHERE dictionary = ?", ([d.cfg.name for d in rm.dictionaries][-1],))
    con.commit()
    con.close()
    assert main(build) == 0
    assert f"dashboards of 1 of {n} dictionaries" in capsys.readouterr().out
