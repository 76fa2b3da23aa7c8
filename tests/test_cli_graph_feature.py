"""`circuits graph show|diff`, `circuits feature --text`, `Graph.from_json` and `python -m circuits`: bad input is
one line on stderr with exit status 2 (a typed exception in the API), found before any work; valid input still
works (the negative controls)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from circuits import export
from circuits.cli import main
from circuits.graph import Graph, Node

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "When Mary and John went to the store, John gave a drink to"


def _one_line_error(capsys, needle: str) -> str:
    """The CLI (called in-process) printed exactly one error line naming `needle`, and nothing on stdout."""
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("circuits: error:"), (out, err)
    assert "Traceback" not in err and needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory) -> Path:
    """A hand-built graph file: 3 tokens, 3 features, a logit; 12 edges of distinct weights."""
    nodes = (Node("token", -1, 0, 1), Node("token", -1, 1, 2), Node("token", -1, 2, 3),
             Node("mlp_feature", 0, 1, 7), Node("mlp_feature", 0, 2, 8), Node("attn_feature", 1, 2, 9),
             Node("logit", 2, 2, 4))
    pairs = [(3, 0), (3, 1), (4, 0), (4, 1), (4, 2), (5, 3), (5, 4), (5, 2), (6, 3), (6, 4), (6, 5), (6, 2)]
    g = Graph(nodes, torch.ones(len(nodes)), torch.tensor(pairs).T.contiguous(),
              torch.linspace(0.1, 1.2, len(pairs)) * torch.tensor([1.0, -1.0] * (len(pairs) // 2)),
              metadata={"model": "hand", "dictionaries": [], "tokens": [1, 2, 3], "token_strings": ["a", "b", "c"],
                        "targets": [{"label": "d", "node": nodes[-1].to_json(), "weight": 1.0, "value": 1.0}],
                        "method": "analytic", "n_layers": 2, "n_heads": 2})
    return export.write_json(g, tmp_path_factory.mktemp("graph") / "g.json")


# 1. --top of `graph show` / `graph diff` ------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["show", "diff"])
def test_graph_negative_top_is_one_line_before_reading_any_file(action, capsys, tmp_path):
    """--top < 0 used to list every edge (a slice [:-3]); it is refused like `trace --top`, before the files are
    read (a missing file would be the error otherwise)."""
    missing = str(tmp_path / "no-such.json")
    files = [missing] if action == "show" else [missing, missing]
    assert main(["graph", action, *files, "--top", "-3"]) == 2
    assert _one_line_error(capsys, "--top -3: must be 0 or more")


@pytest.mark.parametrize("tol", ["-0.1", "inf", "nan"])
def test_graph_diff_bad_rel_tol_is_one_line_before_reading_any_file(tol, capsys, tmp_path):
    missing = str(tmp_path / "no-such.json")
    assert main(["graph", "diff", missing, missing, "--rel-tol", tol]) == 2
    assert _one_line_error(capsys, f"--rel-tol {float(tol)}: must be a finite number")


def test_graph_top_lists_at_most_top_and_zero_is_allowed(graph_file, capsys):
    """Negative control: --top N lists N edges (0 lists none), all of them when N is larger."""
    for top, shown in ((2, 2), (0, 0), (100, 12)):
        assert main(["graph", "show", str(graph_file), "--top", str(top)]) == 0
        out = capsys.readouterr().out
        assert f"strongest {shown} edges" in out
        assert sum(line.startswith("  ") and " -> " in line for line in out.splitlines()) == shown
    assert main(["graph", "diff", str(graph_file), str(graph_file), "--top", "0"]) == 0
    assert "A: " in capsys.readouterr().out


# 2. and 3. `feature --text`: empty text, bar scale ---------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_feature_empty_text_is_one_line_before_the_model_loads(text, capsys):
    """An empty or blank --text used to print the header, load the model and then fail; now one line, nothing on
    stdout, and no model loaded (`--model nosuch` would be the error otherwise)."""
    assert main(["feature", "M3#1184", "--text", text, "--model", "nosuch"]) == 2
    _one_line_error(capsys, "--text")


def test_feature_explicit_missing_db_with_text_is_one_line_before_the_model_loads(capsys):
    assert main(["feature", "M3#1184", "--text", PROMPT, "--model", "nosuch", "--db", "/no/such.sqlite"]) == 2
    _one_line_error(capsys, "no dashboard database at /no/such.sqlite")


def test_bar_scale_rules():
    """40 # = the scale; empty for zero, negative or no scale; the scale is the stored maximum unless the text's is
    larger; the header names it."""
    from circuits.cli.dashboards import BAR, _bar, _bar_scale

    assert BAR == 40 and _bar(53.6, 53.6) == "#" * 40 and _bar(26.8, 53.6) == "#" * 20
    assert _bar(0.0, 53.6) == _bar(-3.0, 53.6) == _bar(5.0, 0.0) == ""
    assert len(_bar(12.0, 53.6)) != len(_bar(40.0, 53.6))  # above 10 the bars still differ (they saturated at 10)
    assert _bar_scale(44.9, 53.56, "") == (53.56, "bar: 40 # = 53.6, its maximum over the dashboard corpus")
    scale, note = _bar_scale(60.0, 53.6, "")
    assert scale == 60.0 and "40 # = 60.0" in note and "53.6" in note
    scale, note = _bar_scale(7.5, None, "no dashboard database at X")
    assert scale == 7.5 and "40 # = 7.5" in note and "no dashboard database at X" in note
    assert _bar_scale(0.0, None, "why")[0] == 0.0 and "no bars" in _bar_scale(0.0, None, "why")[1]


def test_feature_text_bars_are_scaled_to_the_stored_maximum(capsys):
    """On the organism, M3#1184 fires ~43 and ~45 on the IOI prompt (both saturated at 40 '#' before); its stored
    maximum is ~53.6, so the bars are round(40 * act / max), below 40 and different."""
    from circuits import dashboards, load_dictionaries, load_model
    from circuits.model import DATA_DIR
    from circuits.replacement import ReplacementModel

    assert main(["feature", "M3#1184", "--text", PROMPT]) == 0
    lines = capsys.readouterr().out.splitlines()
    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    top = dashboards.Dashboards(DATA_DIR / "dashboards" / "organism.sqlite", rm).get("transcoder_L3", 1184)
    assert lines[0].startswith("M3#1184: ") and f"bar: 40 # = {top.max_activation:.1f}" in lines[0]
    bars = {}
    for line in lines[1:]:
        act = float(line[16:].split()[0])
        n = line.count("#")
        assert n == (round(40 * act / top.max_activation) if act > 0 else 0), line
        bars[act] = n
    fired = [n for a, n in bars.items() if a > 10]
    assert len(fired) >= 2 and max(fired) < 40 and len(set(fired)) >= 2, bars


# 4. Graph.from_json given a path ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["abba.json", Path("abba.json")])
def test_graph_from_json_given_a_path_names_read_json(arg):
    with pytest.raises(TypeError, match=r"circuits\.export\.read_json\(path\)") as e:
        Graph.from_json(arg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arg", ['{"format": "circuits-graph"}', b"{}"])
def test_graph_from_json_given_json_text_names_loads(arg):
    with pytest.raises(TypeError, match=r"circuits\.export\.loads\(text\)"):
        Graph.from_json(arg)


def test_graph_from_json_still_loads_a_dict_and_read_json_a_file(graph_file):
    """Negative control: the dict (and the file through the one file loader) still load, identically."""
    import json

    g = export.read_json(graph_file)
    assert Graph.from_json(json.loads(graph_file.read_text())).nodes == g.nodes
    assert export.loads(graph_file.read_bytes()).nodes == g.nodes
    assert Graph.from_json(g.to_json()).nodes == g.nodes


# 5. python -m circuits -------------------------------------------------------------------------------------------


def test_python_dash_m_circuits_is_the_circuits_command():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "circuits", "--help"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: circuits") and "graph" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "circuits", "graph", "show", "x.json", "--top", "-1"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "circuits: error: --top -1: must be 0 or more", bad.stderr


def test_dashboards_build_never_deletes_another_sets_database_unasked(tmp_path, monkeypatch, capsys):
    """`dashboards build --dicts OTHER` with the default --out used to delete the shipped database's dashboards and
    rebuild them for OTHER. A database of other dictionaries is now refused before the build (one line), and left as
    it was; --replace (the negative control) goes ahead."""
    import hashlib
    import shutil

    from circuits import dashboards
    from circuits.model import DATA_DIR

    db = tmp_path / "organism.sqlite"
    shutil.copy(DATA_DIR / "dashboards" / "organism.sqlite", db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    built = []
    def stand_in(rm, rows, path, **kwargs):  # what the build would start from is what the test looks at
        built.append((path, path.exists()))
        path.write_bytes(b"")

    monkeypatch.setattr(dashboards, "build", stand_in)
    assert main(["dashboards", "build", "--dicts", "organism-finetuned", "--out", str(db), "--rows", "1"]) == 2
    assert "--replace" in _one_line_error(capsys, "holds the dashboards of other dictionaries")
    assert built == [] and hashlib.sha256(db.read_bytes()).hexdigest() == before
    # the same dictionaries from other rows would mix two corpora in one database: refused too
    assert main(["dashboards", "build", "--out", str(db), "--rows", "1"]) == 2
    assert "--replace" in _one_line_error(capsys, "was built from 2000 rows with seed 0")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    import circuits.model

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    with monkeypatch.context() as m:
        m.setattr(circuits.model, "load_model", no_load)
        for extra in ([], ["--replace"]):  # never a database: one line before anything loads, --replace or not
            assert main(["dashboards", "build", "--out", str(junk), *extra]) == 2
            assert _one_line_error(capsys, "is not a dashboard database")
    assert built == [] and hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert main(["dashboards", "build", "--dicts", "organism-finetuned", "--out", str(db), "--rows", "1",
                 "--replace", "--quiet"]) == 0
    assert built == [(db, False)]  # replaced: the old file went before the (stand-in) build


# graph diff refuses graphs whose nodes do not correspond ----------------------------------------------------------


@pytest.mark.parametrize("change,needle", [
    ({"model": "other"}, "different models (hand and other)"),
    ({"dictionary_ids": {"t": "1"}}, "different dictionaries"),
    ({"token_strings": ["a", "b"]}, "the prompts have 3 and 2 tokens"),
    ({"study": "ioi"}, "is the ioi study's role graph"),
])
def test_graph_diff_refuses_graphs_whose_nodes_do_not_correspond(graph_file, tmp_path, capsys, change, needle):
    """Nodes are matched by (kind, layer, position, index): a diff of graphs of other dictionaries, prompt lengths
    or a study's role graph printed thousands of 'changes' that meant nothing."""
    import json

    data = json.loads(graph_file.read_text())
    base = dict(data["metadata"], dictionary_ids={"t": "0"})
    ours, other = tmp_path / "a.json", tmp_path / "b.json"
    ours.write_text(json.dumps({**data, "metadata": base}))
    other.write_text(json.dumps({**data, "metadata": {**base, **change}}))
    assert main(["graph", "diff", str(ours), str(other)]) == 2
    _one_line_error(capsys, needle)
    assert main(["graph", "diff", str(ours), str(ours)]) == 0  # the control: the same graph diffs fine
    assert "different kinds of target" not in capsys.readouterr().err
    target = dict(base["targets"][0], node=["logit_diff", *base["targets"][0]["node"][1:]])
    contrast = {"kind": "contrast", "token": "a", "baseline": "b"}
    other.write_text(json.dumps({**data, "metadata": {**base, "targets": [target], "target": contrast}}))
    assert main(["graph", "diff", str(ours), str(other)]) == 0  # another kind of target: diffed, with a warning
    assert "the graphs explain different kinds of target" in capsys.readouterr().err
    top = {"kind": "top_logits", "cum_prob": 0.95, "max_logits": 10}  # two default traces keep different numbers
    ours.write_text(json.dumps({**data, "metadata": {**base, "target": top}}))  # of top logits: the same kind
    other.write_text(json.dumps({**data, "metadata": {**base, "target": top, "targets": base["targets"] * 2}}))
    assert main(["graph", "diff", str(ours), str(other)]) == 0
    assert "different kinds of target" not in capsys.readouterr().err
    organism = {**base, "model": "organism"}
    folder = {**base, "model": str(ROOT / "data" / "organism")}  # `--model data/organism` is the same model
    ours.write_text(json.dumps({**data, "metadata": organism}))
    other.write_text(json.dumps({**data, "metadata": folder}))
    assert main(["graph", "diff", str(ours), str(other)]) == 0
    out = capsys.readouterr().out
    assert "nodes only in B: 0" in out and "tokens that differ" not in out


@pytest.mark.parametrize("argv,needle", [
    (["feature", "M9#1"], "layer 9 is out of range: the model has 4 layers"),
    (["feature", "M3#999999"], "feature index 999999 is out of range: transcoder L3 has 2304 features"),
    (["attention", PROMPT, "--head", "9.0", "--key", "2"], "layer 9 is out of range"),
    (["attention", PROMPT, "--head", "3.99", "--key", "2"], "head 99 is out of range: layer 3 has 8 heads"),
    (["attention", PROMPT, "--head", "3.0", "--key", "20"], "--key 20: the prompt has 15 tokens"),
    (["attention", PROMPT + " ", "--head", "3.0", "--key", "2"], "ends with whitespace"),
])
def test_feature_and_attention_check_ranges_before_the_model_loads(argv, needle, capsys, monkeypatch):
    """These were found only after the model and dictionaries loaded (5-12 s); the organism's sizes and the set's
    widths are read from their files first, as trace does."""
    import circuits.model

    def load_model(*args, **kwargs):
        raise AssertionError("the model loaded before the check")

    monkeypatch.setattr(circuits.model, "load_model", load_model)
    assert main(argv) == 2
    _one_line_error(capsys, needle)
