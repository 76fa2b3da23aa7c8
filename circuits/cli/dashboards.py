"""`circuits dashboards build|label|label-accuracy` and `circuits feature`: feature dashboards (SQLite) and their
token-set enrichment labels (docs/labels.md)."""

from __future__ import annotations

from pathlib import Path

from circuits.cli.common import _dashboard_db
from circuits.cli.runtime import add_device_option, resolve_device
from circuits.errors import CircuitsError


def _token_sets(args, model) -> list | None:
    """The named token sets: the model's defaults plus a user's --token-sets FILE (checked before any work)."""
    if not getattr(args, "token_sets", None):
        return None
    from circuits.token_sets import default_sets, load_token_sets, vocabulary_strings

    vocab = vocabulary_strings(model)
    return load_token_sets(Path(args.token_sets), vocab, default_sets(vocab))


def _organism_rows(meta: dict, model):
    """The token rows a database was built from (its meta names the stream, the row count and the context)."""
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens

    return batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, int(meta["rows"]), int(meta["n_ctx"]),
                        stream=meta.get("stream", "heldout-dash"))


def _open_for_labels(args):
    """(rm, database path, meta) for `label` and `label-accuracy`, every input checked first."""
    from circuits import dashboards
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel

    if args.model != "organism":
        raise CircuitsError(f"labels are computed over the organism's held-out corpus; {args.model!r} has no corpus "
                            "here: use --model organism")
    db_path = Path(args.db) if args.db else _dashboard_db(args.model)
    if not db_path.is_file():
        raise CircuitsError(f"no dashboard database at {db_path}; build it with `circuits dashboards build` or give "
                            "--db FILE")
    if args.token_sets and not Path(args.token_sets).is_file():
        raise CircuitsError(f"--token-sets {args.token_sets}: no such file")
    model, _ = load_model(args.model, resolve_device(args.device))
    rm = ReplacementModel(model, load_dictionaries(args.dicts, model), name=args.model)
    db = dashboards.Dashboards(db_path, rm)  # refuses a database built for other dictionaries
    meta = db.meta
    db.close()
    return rm, db_path, meta


def cmd_dashboards_label(args) -> int:
    import time

    from circuits import dashboards

    rm, db_path, meta = _open_for_labels(args)
    sets = _token_sets(args, rm.model)
    t0 = time.perf_counter()
    n = dashboards.relabel(db_path, rm, _organism_rows(meta, rm.model), sets, progress=not args.quiet)
    total = sum(d.d_sae for d in rm.dictionaries)
    print(f"labelled {n} of {total} features ({n / total:.0%}) in {db_path} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_dashboards_label_accuracy(args) -> int:
    from circuits.dashboards.store import connect_read_only
    from circuits.labels.ground_truth import (
        BASELINES,
        evaluate,
        heldout_top_tokens,
        outcomes,
        plurality_categories,
        precision_difference,
        predicted_categories,
        top_tokens_in_db,
    )
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens
    from circuits.token_sets import organism_sets, vocabulary_strings

    if args.rows < 1:
        raise CircuitsError(f"--rows {args.rows}: must be at least 1")
    args.token_sets = None
    rm, db_path, meta = _open_for_labels(args)
    con = connect_read_only(db_path)
    if not con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'labels'").fetchone()[0]:
        raise CircuitsError(f"{db_path} has no labels; add them with `circuits dashboards label`")
    sets = organism_sets(vocabulary_strings(rm.model))
    predicted = predicted_categories(con)
    fresh = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, args.rows, rm.cfg.n_ctx, stream="heldout-labels")
    truth = heldout_top_tokens(rm, fresh, progress=not args.quiet)
    held = evaluate(predicted, truth, sets, rm.cfg.d_vocab, f"held-out ({args.rows} rows of stream 'heldout-labels')")
    db_tokens = top_tokens_in_db(con)
    inside = evaluate(predicted, db_tokens, sets, rm.cfg.d_vocab, "in-sample (the database's top examples)")
    print(held.table() + "\n\n" + inside.table())
    mine = outcomes(predicted, truth, sets, rm.cfg.d_vocab)
    print("\nheld-out, against baseline labellers (each feature's most common category among its database top "
          "tokens, no statistical test; precision difference = enrichment − baseline on the same features, 95% "
          "paired bootstrap over features):")
    print("| labeller | recall | precision | features labelled | precision difference |\n|---|---:|---:|---:|---|")
    print(f"| enrichment labels | {held.accuracy:.1%} | {held.precision:.1%} | {held.n_predicted} | — |")
    for name, share, n in BASELINES:
        guess = plurality_categories(db_tokens, sets, rm.cfg.d_vocab, share, n)
        base = evaluate(guess, truth, sets, rm.cfg.d_vocab, name)
        diff = precision_difference(mine, outcomes(guess, truth, sets, rm.cfg.d_vocab))
        print(f"| {name} | {base.accuracy:.1%} | {base.precision:.1%} | {base.n_predicted} | "
              f"{diff.value:+.1%} [{diff.lo:+.1%}, {diff.hi:+.1%}] |")
    import json

    from circuits.labels import LabelConfig
    from circuits.labels.ground_truth import negative_control

    cfg = LabelConfig(**json.loads(meta["label_config"])) if "label_config" in meta else None
    control = negative_control(_organism_rows(meta, rm.model), sets, vocabulary_strings(rm.model), cfg)
    print("\nnegative control (features with random contexts; Bonferroni promises a share <= alpha): " + ", ".join(
        f"{test} {k}/{n} ({k / n:.2%})" for test, (k, n) in control.items()))
    return 0


def _stored_meta(out: Path) -> dict | None:
    """The `meta` table of an existing database at `out` (None when there is no file); a file that is not a
    dashboard database is one line, whatever the options (a build into it would fail half-way)."""
    import sqlite3

    from circuits.dashboards.store import connect_read_only

    if not out.is_file():
        return None
    try:
        con = connect_read_only(out)
        try:
            return dict(con.execute("SELECT key, value FROM meta").fetchall())
        finally:
            con.close()
    except sqlite3.DatabaseError:
        raise CircuitsError(f"{out} exists and is not a dashboard database; give another --out, or move it away"
                            ) from None


def _refuse_other_database(out: Path, stored: dict | None, rm, rows: int, seed: int, replace: bool) -> None:
    """A build into a database of other dictionaries would delete its dashboards (the shipped one, with the default
    --out), and one into a database of other rows or another seed would mix two corpora (a resumed build keeps the
    finished dictionaries): both refused, after the model loads and before the build, unless --replace."""
    from circuits.dashboards import fingerprint

    if replace or not stored:
        return
    if stored.get("fingerprint") not in (None, fingerprint(rm)):
        raise CircuitsError(f"{out} holds the dashboards of other dictionaries ({stored.get('dictionaries', '?')}); "
                            "give --out FILE for this set's, or --replace to delete them and build these")
    if (stored.get("rows"), stored.get("seed")) not in ((None, None), (str(rows), str(seed))):
        raise CircuitsError(f"{out} was built from {stored.get('rows')} rows with seed {stored.get('seed')}, not "
                            f"{rows} with seed {seed}; give --out FILE for a new database, or --replace to rebuild it")


def cmd_dashboards_build(args) -> int:
    import time

    from circuits import dashboards
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel

    if args.model != "organism":
        raise CircuitsError(f"dashboards are built from the organism's held-out corpus; {args.model!r} has no "
                            "corpus here: use --model organism")
    import sqlite3

    from circuits.inputs import check_output_file
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens

    if args.rows < 1:
        raise CircuitsError(f"--rows {args.rows}: must be at least 1")
    out = check_output_file(Path(args.out) if args.out else _dashboard_db(args.model), "--out")
    stored = _stored_meta(out)  # not a database: refused before anything loads
    if args.token_sets and not Path(args.token_sets).is_file():
        raise CircuitsError(f"--token-sets {args.token_sets}: no such file")
    model, _ = load_model(args.model, resolve_device(args.device))
    sets = _token_sets(args, model)  # unknown tokens are refused here, before the build
    rm = ReplacementModel(model, load_dictionaries(args.dicts, model), name=args.model)
    _refuse_other_database(out, stored, rm, args.rows, args.seed, args.replace)
    if args.replace and out.is_file():  # a fresh database: a build would otherwise resume the old one's dictionaries
        out.unlink()
    rows = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, args.rows, model.cfg.n_ctx, stream="heldout-dash")
    t0 = time.perf_counter()
    todo = dashboards.pending(rm, out)
    try:
        dashboards.build(rm, rows, out, seed=args.seed, progress=not args.quiet,
                         meta={"dictionaries": args.dicts, "stream": "heldout-dash"}, token_sets=sets)
    except sqlite3.OperationalError as e:
        if "full" in str(e) or "disk" in str(e):
            raise CircuitsError(f"the disk is full while writing {out} ({e}); the database is consistent up to its "
                                "last committed batch: free some space and run the same command again (it resumes)"
                                ) from None
        raise CircuitsError(f"cannot write {out}: {e}") from None
    size = out.stat().st_size / 2**20
    took = f"in {time.perf_counter() - t0:.1f} s"
    if not todo:
        print(f"{out} ({size:.1f} MB) already held every dictionary's dashboards: only the labels were recomputed "
              f"{took} (--replace rebuilds it)")
    else:
        print(f"wrote {out} ({size:.1f} MB): dashboards of {len(todo)} of {len(rm.dictionaries)} dictionaries from "
              f"{rows.numel():,} tokens {took}")
    return 0


BAR = 40  # characters of `feature --text`'s bar at the scale's maximum


def _bar(act: float, scale: float) -> str:
    """`act` as a bar of '#': `BAR` characters = `scale`; zero, negative (or no scale) is empty."""
    if act <= 0 or scale <= 0:
        return ""
    return "#" * min(BAR, round(BAR * act / scale))


def _bar_scale(text_max: float, stored_max: float | None, why_none: str) -> tuple[float, str]:
    """The bars' scale, and the words that say it: the feature's maximum activation over the dashboard corpus
    (`stored_max`), or this text's maximum when that is larger or there is no stored one (`why_none` says why)."""
    if max(text_max, stored_max or 0.0) <= 0:
        return 0.0, "no bars: the feature is not active on this text" + (f"; {why_none}" if why_none else
                                                                          " nor in the dashboard corpus")
    if stored_max is not None and stored_max >= text_max:
        return stored_max, f"bar: {BAR} # = {stored_max:.1f}, its maximum over the dashboard corpus"
    if stored_max is not None:
        return text_max, (f"bar: {BAR} # = {text_max:.1f}, this text's maximum, above the "
                          f"{stored_max:.1f} of the dashboard corpus")
    return text_max, f"bar: {BAR} # = {text_max:.1f}, this text's maximum; {why_none}"


def _stored_max(args, db_path: Path, rm, name: str, feature: int) -> tuple[float | None, str]:
    """The feature's maximum activation in the dashboard database, or (None, why) when the default database is
    absent or was built for other dictionaries (a database given with --db must serve: its errors are raised)."""
    from circuits import dashboards

    if not db_path.is_file():
        return None, f"no dashboard database at {db_path}"
    try:
        db = dashboards.Dashboards(db_path, rm)
        try:
            return db.get(name, feature).max_activation, ""
        finally:
            db.close()
    except dashboards.DashboardError:
        if args.db:
            raise
        return None, f"{db_path} is not a dashboard of these dictionaries"


def cmd_feature(args) -> int:
    from circuits.ids import NodeIdError, parse_feature  # torch-free: the id and ranges are checked before imports

    try:
        ref = parse_feature(args.id)
    except NodeIdError as e:
        raise CircuitsError(str(e)) from None
    name, feature = ref.dictionary, ref.index
    from circuits.cli.trace_checks import (
        check_database_file,
        check_dicts_name,
        check_feature,
        check_model_name,
        organism_vocab,
        set_shapes,
    )

    # everything the input can be wrong about, before anything loads: the set, the feature's range, the text, the
    # database file
    check_dicts_name(args.dicts)
    vocab = organism_vocab(args.model)  # the organism's sizes and the set's widths, read before anything loads
    check_feature(args.id, ref.kind, ref.layer, ref.index, args.dicts, vocab.n_layers if vocab else None,
                  set_shapes(args.dicts))
    db_path = Path(args.db) if args.db else _dashboard_db(args.model)
    other_set = args.dicts not in ("organism", "organism-fitted")
    build = (f"`circuits dashboards build --dicts {args.dicts} --out FILE` and pass --db FILE" if other_set else
             "`circuits dashboards build`")
    if args.text is not None:
        from circuits.errors import AttributionError
        from circuits.inputs import check_text, whitespace_problem

        if not args.text.strip():
            raise CircuitsError(f"--text {args.text!r}: empty; give the text to run the feature on (at least one word)")
        try:
            check_text(args.text, "--text")
        except AttributionError as e:
            raise CircuitsError(str(e)) from None
        problem = whitespace_problem(args.text, vocab.encode, vocab.unk, "--text") if vocab else None
        if problem:
            raise CircuitsError(problem)
    if args.db:  # a database given (with --text: for the bars' scale) must be one
        check_database_file(args.db, "--db", "leave out --db" + ("" if args.text is not None or other_set else
                                                                  " to use the shipped one"), build)
    check_model_name(args.model)  # (the default database's path is named after the model)
    if not args.db and args.text is None and not db_path.is_file() and args.model != "organism":
        raise CircuitsError(f"no dashboard database for {args.model}: dashboards are built from the organism's "
                            "held-out corpus only; show the feature on your own text with --text \"...\" (no "
                            "database needed), or give --db FILE")
    if not args.db and args.text is None and not db_path.is_file():
        raise CircuitsError(f"no dashboard database at {db_path}; build it with {build}, or give --db FILE")
    from circuits import dashboards
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel

    model, _ = load_model(args.model, resolve_device(args.device))
    rm = ReplacementModel(model, load_dictionaries(args.dicts, model), name=args.model)
    if args.text is not None:
        acts = dashboards.activations_on(rm, args.text, name, feature)  # bad dictionary/feature: before any output
        stored, why_none = _stored_max(args, db_path, rm, name, feature)
        scale, note = _bar_scale(max(a for _, a in acts), stored, why_none)
        print(f"{ref}: activation on every token of the text ({note})")
        for tok, act in acts:
            act = round(act, 3) + 0.0  # never print -0.000
            print(f"{tok!r:<16} {act:8.3f} {_bar(act, scale)}")
        return 0
    db = dashboards.Dashboards(db_path, rm, build_hint=build.strip("`") if not other_set else
                               f"circuits dashboards build --dicts {args.dicts} --out FILE` and pass `--db FILE")
    if args.label is not None:
        db.close()
        dashboards.set_label(db.path, name, feature, args.label or None)
        print(f"{ref}: label {'cleared' if not args.label else repr(args.label)}")
        return 0
    print(dashboards.render_text(db.get(name, feature)))
    return 0


def add_parser(sub) -> None:
    """`dashboards build` and `feature`."""
    dash = sub.add_parser("dashboards", help="feature dashboards (SQLite)").add_subparsers(dest="action",
                                                                                         required=True)
    b = dash.add_parser("build", help="build every feature's dashboard over held-out text (resumes)")
    b.add_argument("--model", default="organism", help="organism (dashboards read its held-out corpus)")
    b.add_argument("--dicts", default="organism", help="a set name or a set folder")
    b.add_argument("--rows", type=int, default=2000, help="held-out rows of n_ctx tokens")
    b.add_argument("--seed", type=int, default=0, help="seed of the examples' sampling")
    b.add_argument("--out", help="database path (default data/dashboards/MODEL.sqlite)")
    b.add_argument("--replace", action="store_true", help="build into a database of other dictionaries, rows or "
                   "seed (deletes its dashboards; user labels stay in their own file)")
    b.add_argument("--token-sets", metavar="FILE", help="named token sets for the labels, added to the defaults: "
                   'JSON {"name": ["token", ...]} or text lines "name: token, token"')
    b.add_argument("--quiet", action="store_true")
    add_device_option(b)
    b.set_defaults(func=cmd_dashboards_build)
    lab = dash.add_parser("label", help="(re)compute the token-set enrichment labels of a built database (no rebuild)")
    acc = dash.add_parser("label-accuracy", help="label accuracy against the organism's planted categories "
                          "(precision and recall per category, on held-out text)")
    for p in (lab, acc):
        p.add_argument("--model", default="organism", help="organism (the only model with a corpus here)")
        p.add_argument("--dicts", default="organism")
        p.add_argument("--db", help="database path (default data/dashboards/MODEL.sqlite)")
        p.add_argument("--quiet", action="store_true")
        add_device_option(p)
    lab.add_argument("--token-sets", metavar="FILE", help="named token sets added to the defaults (as for build)")
    lab.set_defaults(func=cmd_dashboards_label)
    acc.add_argument("--rows", type=int, default=200, help="held-out rows the true categories are read from")
    acc.set_defaults(func=cmd_dashboards_label_accuracy)
    f = sub.add_parser("feature", help="print a feature's dashboard (or its activations on --text)")
    f.add_argument("id", help="feature id: M2#517 (transcoder L2 feature 517), A1#33 (attention SAE L1); a "
                   "position (@5) is ignored; old forms transcoder_L2#517, mlp:2:517 are accepted")
    f.add_argument("--model", default="organism")
    f.add_argument("--dicts", default="organism")
    f.add_argument("--db", help="database path (default data/dashboards/MODEL.sqlite)")
    f.add_argument("--text", help="test on custom text: the feature's activation on every token (bars scaled to its "
                   "maximum over the dashboard corpus)")
    f.add_argument("--label", help="set a label that overrides the automatic one ('' clears it)")
    add_device_option(f)
    f.set_defaults(func=cmd_feature)
