"""Bad input to the `circuits` command: one line on stderr, exit status 2, no traceback, nothing half-written —
and found before the expensive work. Each case runs the real console entry point in a subprocess.

"Before the work" is shown by ordering, not by timing: where a case can, it also passes a model that does not exist
(`--model nosuch`); the error must still name the bad option, so the option was checked before any model loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "When Mary and John went to the store, John gave a drink to"


def run_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    argv = [os.fsencode(sys.executable), b"-m", b"circuits.cli",
            *[a if isinstance(a, bytes) else str(a).encode() for a in args]]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(argv, capture_output=True, timeout=timeout, env=full_env, cwd=ROOT)


def assert_one_line_error(proc, *needles: str) -> str:
    err = proc.stderr.decode("utf-8", "replace").strip()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("circuits: error:")]
    assert len(lines) == 1 and lines[0] == err.splitlines()[-1], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("args,needles", [
    (["trace", PROMPT, "--model", "nosuch", "--cum-prob", "0"], ["--cum-prob 0.0", "(0, 1]"]),
    (["trace", PROMPT, "--model", "nosuch", "--max-logits", "0"], ["--max-logits 0"]),
    (["trace", PROMPT, "--model", "nosuch", "--node-threshold", "0"], ["--node-threshold 0.0"]),
    (["trace", PROMPT, "--model", "nosuch", "--max-features", "-1"], ["--max-features -1"]),
    (["trace", PROMPT, "--model", "nosuch", "--json", "README.md/g.json"], ["--json", "README.md is a file"]),
    (["trace", PROMPT, "--model", "nosuch", "--json", "/proc/no/such/g.json"], ["--json", "cannot write"]),
    (["trace", "--model", "nosuch"], ["--prompt-file"]),
    (["trace", PROMPT, "--model", "nosuch", "--feature", "errM3@4"], ["not a feature"]),
    (["trace", PROMPT, "--model", "nosuch", "--feature", "M3#1184"], ["needs the position", "M3#1184@11"]),
    (["organism", "train", "--steps", "0", "--out", "runs/never-written"], ["--steps 0"]),
    (["organism", "eval", "--model", "nosuch", "--out", "/proc/no/such/eval.json"], ["--out", "cannot write"]),
    (["organism", "eval", "--model", "nosuch", "--out", "circuits"], ["--out", "is a folder"]),
    (["dicts", "eval", "--model", "nosuch", "--out", "/proc/no/such/f.json"], ["--out", "cannot write"]),
    (["dicts", "convert", "README.md", "--out", "/proc/no/such"], ["--out", "cannot write"]),
    (["dashboards", "build", "--rows", "0"], ["--rows 0"]),
    (["study", "ioi", "--model", "nosuch", "--out", "README.md"], ["--out", "is a file"]),
    (["feature", "banana"], ["cannot read the id", "M3#1184"]),
    (["feature", "M3#1184", "--db", "/no/such.sqlite"], ["no dashboard database"]),
    (["graph", "show", "circuits"], ["is a folder"]),
])
def test_bad_options_fail_in_one_line_before_any_work(args, needles):
    assert_one_line_error(run_cli(*args), *needles)
    assert not (ROOT / "runs" / "never-written").exists()


def test_a_file_given_as_a_dictionary_folder(tmp_path):
    assert_one_line_error(run_cli("dicts", "convert", ROOT / "README.md", "--out", tmp_path / "out"),
                          "README.md is a file", "folder")
    assert not (tmp_path / "out").exists()


def test_prompt_with_invalid_utf8_bytes_and_prompt_file(tmp_path):
    assert_one_line_error(run_cli("trace", b"When Mary \xff\xfe", "--model", "nosuch"),
                          "not valid UTF-8", "byte 0xff", "--prompt-file")
    bad = tmp_path / "prompt.txt"
    bad.write_bytes(b"When Mary and John \xff\xfe went")
    assert_one_line_error(run_cli("trace", "--prompt-file", bad, "--model", "nosuch"),
                          str(bad), "byte 0xff at offset 19")
    assert_one_line_error(run_cli("trace", PROMPT, "--prompt-file", bad), "exactly one")


def test_svg_without_graphviz_fails_before_loading(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_cli("trace", PROMPT, "--model", "nosuch", "--svg", tmp_path / "g.svg", env={"PATH": str(empty)})
    assert_one_line_error(proc, "Graphviz", "--dot")
    assert b"loading" not in proc.stderr and not (tmp_path / "g.svg").exists()


@pytest.mark.parametrize("make", ["directory", "deep", "bytes"])
def test_graph_show_on_files_that_are_not_graphs(tmp_path, make):
    path = tmp_path / "g.json"
    if make == "directory":
        path.mkdir()
        needle = "is a folder"
    elif make == "deep":
        path.write_text("[" * 200_000 + "]" * 200_000)
        needle = "nested too deeply"
    else:
        path.write_bytes(b"\xff\xfe{}")
        needle = "not UTF-8"
    assert_one_line_error(run_cli("graph", "show", path), needle)
    assert_one_line_error(run_cli("graph", "diff", path, path), needle)


def test_corrupt_organism_checkpoint_is_named_at_once(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    assert_one_line_error(run_cli("organism", "train", "--out", out, "--steps", "1", "--quiet"),
                          "checkpoint.pt", "corrupt", "--no-resume")
    assert (out / "checkpoint.pt").read_bytes() == b"PK\x03\x04 truncated"  # left for the user to inspect


def _dict_checkpoint(folder: Path, d_sae: int, total_tokens: int) -> None:
    import torch

    from circuits.dictionaries.base import DictionaryConfig, make_dictionary
    from circuits.dictionaries.train import DictTrainConfig

    cfg = DictionaryConfig("transcoder", 0, 256, d_sae, 256, activation="batchtopk", k=30, context_size=128,
                           model_name="organism")
    train_cfg = DictTrainConfig(total_tokens=total_tokens)
    from dataclasses import asdict

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "buffer": {}, "dicts": {"transcoder_L0": make_dictionary(cfg).state_dict()},
                "opts": {}, "since": {}, "config": json.dumps(asdict(train_cfg))}, folder / "dict_checkpoint.pt")


def test_resuming_dictionary_training_with_other_options_says_what_differs(tmp_path):
    """Without the check, another --d-sae failed after the activation buffer had filled (142 s) with a
    RuntimeError, and another --tokens was accepted silently (a different lr schedule from then on)."""
    _dict_checkpoint(tmp_path / "a", d_sae=32, total_tokens=4_000_000)
    assert_one_line_error(run_cli("dicts", "train", "--out", tmp_path / "a", "--sites", "transcoder_L0",
                                  "--d-sae", "64", "--quiet"), "transcoder_L0 has d_sae 32 in the checkpoint, 64 now")
    _dict_checkpoint(tmp_path / "b", d_sae=64, total_tokens=2_000_000)
    assert_one_line_error(run_cli("dicts", "train", "--out", tmp_path / "b", "--sites", "transcoder_L0",
                                  "--d-sae", "64", "--tokens", "4000000", "--quiet"),
                          "total_tokens: 2000000 in the checkpoint, 4000000 now", "--no-resume")


def test_disk_full_while_building_dashboards_is_one_line_and_leaves_a_consistent_database(tmp_path):
    """SQLite's page limit stands in for a full disk: the same SQLITE_FULL error ('database or disk is full')."""
    import sqlite3

    db = tmp_path / "d.sqlite"
    shim = ("import sys, circuits.dashboards.store as d\n"
            "orig = d._connect\n"
            "def small(path):\n"
            "    con = orig(path)\n"
            "    con.execute('PRAGMA max_page_count = 300')\n"
            "    return con\n"
            "d._connect = small\n"
            "from circuits.cli import main\n"
            f"sys.exit(main(['dashboards', 'build', '--rows', '1', '--quiet', '--out', {str(db)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", shim], capture_output=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_one_line_error(proc, "disk is full", str(db), "resumes")
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_a_successful_trace_prints_ids_labels_positions_and_clean_warnings(tmp_path):
    proc = run_cli("trace", PROMPT, "--target", "Mary", "--contrast", "John", "--max-features", "0", "--top", "5",
                   "--quiet", "--json", tmp_path / "g.json")
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err[-2000:]
    # warnings are one clean line each, never Python's "file:line: UserWarning" with a source line
    assert "circuits: warning: --max-features 0 keeps no feature nodes" in err
    assert "UserWarning" not in err and "warnings.warn" not in err
    assert "target ' Mary' − ' John':" in out  # no double space, both tokens quoted
    flat = " ".join(out.split())  # the explanation is wrapped to the terminal width
    assert "score = (circuit − empty) / (model − empty)" in flat and "1 = the pruned graph alone" in flat
    assert "'errors alone' keeps its error nodes and no feature" in flat
    top = out.split("nodes by influence", 1)[1].split("strongest nodes at each earlier position", 1)
    rows = [line.split() for line in top[0].splitlines()[1:] if line.strip()]
    assert len(rows) == 5 and all("@14" in r[0] for r in rows)
    assert any(len(r) > 6 for r in rows), "no top node shows its dashboard label"
    earlier = [line for line in top[1].splitlines()[1:] if line.startswith("  ")]
    assert len(earlier) == 14 and "' Mary'" in earlier[2] and "@2" in earlier[2]
    g = json.loads((tmp_path / "g.json").read_text())
    assert all(k == "feature" or "_feature" not in k for k in g["nodes"]["kind"])  # no features kept


def test_graph_show_and_diff_print_ids_with_positions(capsys):
    import re

    from circuits.cli import main

    gallery = sorted((ROOT / "data" / "graphs").glob("*.json"))[:2]
    assert main(["graph", "show", str(gallery[0]), "--top", "5"]) == 0
    assert main(["graph", "diff", str(gallery[0]), str(gallery[1]), "--top", "5"]) == 0
    out = capsys.readouterr().out
    edges = [line for line in out.splitlines() if " -> " in line and line.startswith("  ")]
    assert len(edges) >= 10
    assert all(len(re.findall(r"(?:err)?[AME]\d*(?:#\d+)?@\d+", line)) >= 2 for line in edges), edges[:3]


def test_feature_text_never_prints_negative_zero(capsys):
    """JumpReLU multiplies a negative pre-activation by 0: the activation is -0.0, which printed as -0.000."""
    import math

    from circuits import dashboards, load_dictionaries, load_model
    from circuits.cli import main
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    acts = [a for _, a in dashboards.activations_on(rm, PROMPT, "transcoder_L3", 1184)]
    assert any(a == 0 and math.copysign(1, a) < 0 for a in acts)  # the case exists on this text
    assert main(["feature", "M3#1184", "--text", PROMPT]) == 0
    out = capsys.readouterr().out
    assert "-0.000" not in out and out.startswith("M3#1184")
    assert main(["feature", "transcoder_L3#1184", "--text", PROMPT]) == 0  # the old spelling still works
    assert capsys.readouterr().out == out


def test_the_usage_line_names_each_command_once_and_the_alias_still_works():
    """`circuits --help` listed the alias `attribute` as a ninth command; it stays usable and shown beside trace."""
    from circuits.cli.main import build_parser

    parser = build_parser()
    usage = parser.format_usage()
    assert "trace" in usage and "attribute" not in usage
    assert "trace (attribute)" in parser.format_help()
    assert parser.parse_args(["attribute", "a prompt", "--target", "Mary"]).command == "attribute"


def _every_parser(parser, path=("circuits",)):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _every_parser(child, (*path, name))


def test_every_option_says_what_it_is_and_its_default(capsys):
    """`--help` of every command explains every option and positional (a newcomer met bare `--seed SEED`, `file`,
    `a`, `b`), and an option with a default shows it; a left-out action or command names the choices, not
    argparse's "action"; `--version` answers."""
    from circuits.cli.main import build_parser

    bare, no_default = [], []
    for path, parser in _every_parser(build_parser()):
        for action in parser._actions:
            if action.dest == "help" or action.__class__.__name__ in ("_SubParsersAction", "_VersionAction"):
                continue
            if not action.help:
                bare.append(f"{' '.join(path)} {action.option_strings or action.dest}")
            elif action.option_strings and not (action.default is None or action.default is False
                                                or action.default == []) and \
                    "default" not in (parser.formatter_class(prog="x")._get_help_string(action) or ""):
                no_default.append(f"{' '.join(path)} {action.option_strings}")
    assert not bare and not no_default, (bare, no_default)
    seed = next(a for a in dict(_every_parser(build_parser()))[("circuits", "organism", "corpus")]._actions
                if a.dest == "seed")
    assert seed.default == 0 and "(default 0)" in build_parser().formatter_class(prog="x")._get_help_string(seed) \
        .replace("%(default)s", "0")
    for args, needle in ((["graph"], "graph: an action is missing: one of show, diff"),
                         ([], "a command is missing: one of organism, dicts, trace")):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(args)
        assert e.value.code == 2 and needle in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("circuits 0.")


def test_attention_and_study_outputs_never_replace_other_files(tmp_path, capsys):
    """`attention --json saved_graph.json` overwrote a graph; `study --out mywork` replaced a user's files."""
    import shutil

    from circuits.cli import main

    graph = tmp_path / "g.json"
    shutil.copy(Path(__file__).resolve().parents[1] / "data" / "graphs" / "two_hop_lyon.json", graph)
    before = graph.read_bytes()
    code = main(["attention", "When Mary and John went to the store, John gave a drink to", "--head", "3.0",
                 "--key", "2", "--versus", "10", "--json", str(graph)])
    err = capsys.readouterr().err
    assert code == 2 and "is a circuits graph file, not a JSON file" in err and graph.read_bytes() == before
    mine = tmp_path / "mywork"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code = main(["study", "two_hop", "--n", "8", "--out", str(mine), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "not a study report (notes.txt)" in err and (mine / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text('{"study": "ioi"}')
    code = main(["study", "two_hop", "--n", "8", "--out", str(other), "--quiet"])
    assert code == 2 and "holds a report of the ioi study" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["trace", "When Mary", "--targt", "Mary"], "unrecognized arguments: --targt Mary; did you mean --target?"),
    (["trace", "When Mary", "--target", "Mary", "--threads", "2"],
     "--threads goes before the subcommand: circuits --threads N COMMAND"),
    (["trace", "When Mary", "--target", "Mary", "--zzz"], "unrecognized arguments: --zzz"),
])
def test_a_mistyped_option_gets_a_suggestion(argv, needle, capsys):
    from circuits.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and needle in capsys.readouterr().err
