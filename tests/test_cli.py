"""The `circuits` command: subcommands run, and bad input is one line on stderr with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from circuits.cli import main


def test_corpus_subcommand_prints_deterministic_rows(capsys):
    assert main(["organism", "corpus", "--rows", "2", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(["organism", "corpus", "--rows", "2", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first and len(first.splitlines()) == 2


def test_unknown_model_is_one_line_exit_2(capsys):
    assert main(["organism", "eval", "--model", "nosuchmodel", "--out", "-"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("circuits: error: unknown model 'nosuchmodel'") and "\n" not in err
    assert "Traceback" not in err


def test_console_script_entry_point_reports_errors_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "circuits.cli", "organism", "eval", "--model", "nope", "--out", "-"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown model 'nope'" in proc.stderr


def test_eval_subcommand_on_a_tiny_folder(tmp_path, capsys, monkeypatch):
    from circuits.organism.train import OrganismModelConfig, OrganismTrainConfig, train_organism

    tiny = OrganismModelConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=32)
    train_organism(tmp_path / "m", tiny, OrganismTrainConfig(steps=2, batch_size=2, warmup_steps=1, phase2_steps=0, phase3_steps=0, phase4_steps=0, phase5_steps=0),
                   resume=False, progress=False)
    out = tmp_path / "eval.json"
    assert main(["organism", "eval", "--model", str(tmp_path / "m"), "--subsample", "0.02", "--quiet",
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "ioi_train_templates_ABBA" in table and "greater_than" in table and out.exists()
    import hashlib

    import circuits.organism.evaluate as evaluate
    from circuits.model import DATA_DIR

    shipped = DATA_DIR / "organism" / "eval.json"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    written = []
    monkeypatch.setattr(evaluate, "write_eval", lambda res, path, **k: written.append(path))  # never the real file
    assert main(["organism", "eval", "--model", str(tmp_path / "m"), "--subsample", "0.02", "--quiet"]) == 0
    assert "not saved" in capsys.readouterr().out and written == []  # another model never replaces eval.json
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before


def test_dicts_eval_writes_a_report_only_beside_the_set_it_measured(tmp_path):
    """`dicts eval` used to write data/dictionaries/organism/fidelity.json whatever set it measured: another set's
    or a subsample's report replaced the shipped one. Now the default is the set's own report, full size only."""
    from argparse import Namespace

    from circuits.cli.dicts import fidelity_output
    from circuits.model import DATA_DIR

    def out(**kw):
        return fidelity_output(Namespace(**{"out": None, "model": "organism", "dicts": "organism", "rows": None,
                                            "dead_rows": None, **kw}))

    assert out() == str(DATA_DIR / "dictionaries" / "organism" / "fidelity.json")
    assert out(dicts="organism-fitted") == out()  # the alias names the same set
    assert out(dicts="organism-finetuned") == str(DATA_DIR / "dictionaries" / "organism-finetuned" / "fidelity.json")
    assert out(dicts=str(DATA_DIR / "dictionaries" / "organism")) == out()  # a shipped set by its folder
    assert out(dicts=str(DATA_DIR / "dictionaries" / "organism"), model="other") == "-"
    assert out(dicts="organism-clt") == "-"  # ships no report: none is started under data/
    assert out(rows=16) == out(dead_rows=64) == "-"
    assert out(dicts=str(tmp_path)) == str(tmp_path / "fidelity.json")
    assert out(dicts="gpt2-transcoders", model="gpt2") == "-" and out(dicts=str(tmp_path / "no")) == "-"
    assert out(out="x.json", rows=16) == "x.json"


def test_eval_never_writes_into_the_checkout_unless_told(monkeypatch, capsys):
    """The README's first command is `circuits organism eval`: a newcomer's run used to rewrite the tracked
    data/organism/eval.json (with last-digit differences from another machine). Now it writes only with --out; a
    full run of the shipped organism is compared with the shipped file instead."""
    from argparse import Namespace

    from circuits.cli import organism
    from circuits.cli.organism import _numbers, eval_output

    assert eval_output(Namespace(out=None, model="organism", subsample=1.0)) == "-"
    assert eval_output(Namespace(out="x.json", model="runs/mine", subsample=0.5)) == "x.json"
    assert _numbers({"a": {"b": [1, 2.5, "x", True]}, "c": 3}) == {"a.b[0]": 1.0, "a.b[1]": 2.5, "c": 3.0}
    seen = []
    monkeypatch.setattr(organism, "_compare_with_shipped", lambda res, model, full: seen.append(full))
    import circuits.model
    import circuits.organism.evaluate as evaluate

    monkeypatch.setattr(circuits.model, "load_model", lambda *a, **k: (None, None))
    monkeypatch.setattr(evaluate, "evaluate_organism", lambda *a, **k: {})
    monkeypatch.setattr(evaluate, "write_eval", lambda *a, **k: (_ for _ in ()).throw(AssertionError("wrote")))
    monkeypatch.setattr(organism, "_print_eval_table", lambda res: None)
    assert organism.cmd_organism_eval(Namespace(out=None, model="organism", subsample=1.0, device="cpu",
                                                quiet=True)) == 0
    assert seen == [True]


def test_attribute_alias_writes_a_graph(tmp_path, capsys):
    """`circuits attribute` is an alias of `circuits trace`."""
    import json

    from circuits import Graph

    out = tmp_path / "g.json"
    assert main(["attribute", "When Mary and John went to the store, John gave a drink to", "--target", "Mary",
                 "--contrast", "John", "--json", str(out), "--top", "3", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "full graph:" in text and "pruned" in text and "replacement score" in text
    g = Graph.from_json(json.loads(out.read_text()))
    assert g.metadata["target"]["kind"] == "contrast" and g.n_nodes > 20 and "pruning" in g.metadata


def test_trace_bad_input_is_one_line(capsys):
    for argv, needle in ((["trace", " ", "--quiet"], "empty"),
                         (["trace", "When Mary", "--target", "Mary", "--contrast", "Mary", "--quiet"], "same token"),
                         (["trace", "When Mary", "--target", "Zorblax", "--quiet"], "not a single token"),
                         (["trace", "When Mary", "--feature", "mlp:1", "--quiet"], "M3#1184"),
                         (["trace", " ".join(["Mary"] * 200), "--quiet"], "context"),
                         (["trace", "When Mary", "--node-threshold", "1.5", "--quiet"], "--node-threshold")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and "Traceback" not in err, (argv, err)


def test_the_eval_table_shows_each_behaviours_target_and_whether_it_is_met(capsys):
    """`organism eval` prints a target and a status for every targeted (family, metric) — "missed" below it, "met"
    at or above it — and leaves reported-only behaviours blank."""
    import torch

    from circuits.cli.organism import _print_eval_table
    from circuits.organism.evaluate import TARGETS

    at_target = float(torch.tensor([1.0] * 380 + [0.0] * 20).mean())  # 380 of 400 in float32: 0.94999999
    assert at_target < 0.95
    res = {"induction": {"top1": 0.89, "top1_first_copy": 0.0, "n": 200}, "one_hop": {"top1": 0.95, "n": 144},
           "ioi_train_templates_ABBA": {"accuracy": at_target, "n": 400},
           "pronoun": {"accuracy": 0.59, "n": 200}, "meta": {"seed": 0}}
    _print_eval_table(res)
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[("induction", "top1")] == ["0.8900", ">=", "0.9", "missed", "200"]
    assert rows[("one_hop", "top1")] == ["0.9500", ">=", "0.95", "met", "144"]
    assert rows[("ioi_train_templates_ABBA", "accuracy")] == ["0.9500", ">=", "0.95", "met", "400"]
    assert rows[("induction", "top1_first_copy")] == ["0.0000", "200"]
    assert rows[("pronoun", "accuracy")] == ["0.5900", "200"]
    import json

    from circuits.model import DATA_DIR

    shipped = json.loads((DATA_DIR / "organism" / "eval.json").read_text())
    assert all(shipped[fam][metric] >= least for (fam, metric), least in TARGETS.items())  # the shipped organism


def test_the_eval_targets_are_the_ones_docs_organism_md_states():
    """`evaluate.TARGETS` (what `organism eval` prints) and the target column of docs/organism.md's table say the
    same: every row with a target there is in TARGETS with that value, and TARGETS has nothing else."""
    import re

    from circuits.model import DATA_DIR
    from circuits.organism.evaluate import TARGETS

    rows = {"IOI, unseen name pairs, training templates, ABBA": "ioi_train_templates_ABBA",
            "IOI, unseen name pairs, training templates, BABA": "ioi_train_templates_BABA",
            "IOI, unseen name pairs, held-out templates, ABBA": "ioi_heldout_templates_ABBA",
            "IOI, unseen name pairs, held-out templates, BABA": "ioi_heldout_templates_BABA",
            "induction, fresh random spans": "induction", "one-hop facts": "one_hop",
            "two-hop, questions seen in training": "two_hop_seen", "greater-than, held-out start years": "greater_than"}
    metric = {"induction": "top1", "one_hop": "top1", "two_hop_seen": "top1",
              "greater_than": "prob_greater"}
    stated = {}
    for line in (DATA_DIR.parent / "docs" / "organism.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        family = next((f for label, f in rows.items() if cells[0].startswith(label)), None)
        if family is None or len(cells) != 4:
            continue
        first = re.match(r"≥ (\d+(?:\.\d+)?)(%?)", cells[2])
        stated[family, "accuracy" if family.startswith("ioi") else metric[family]] = \
            float(first.group(1)) / (100 if first.group(2) else 1)
        ld = re.search(r"LD ≥ (\d+(?:\.\d+)?)", cells[2])
        if ld:
            stated[family, "logit_diff"] = float(ld.group(1))
    assert len(stated) == len(TARGETS) == 10 and stated == pytest.approx(TARGETS), stated
