"""`circuits trace` finds bad input before the expensive work: one line ``circuits: error: ...`` naming the problem,
exit status 2, no traceback.

"Before the work" is proved, not timed: the model loader (or, where the model must load to tell, the attribution)
is replaced by a function that fails the test if it is called, and the error must still appear. Each case has a
negative control where one makes sense: a valid input gets past the same checks (it reaches the replaced
function). The organism's checks all run before its model loads (its tokenizer and the set's JSON files are read
directly); a model without that cheap path (a saved tiny family model) is checked right after it loads.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "When Mary and John went to the store, John gave a drink to"  # 15 tokens with BOS: positions 0-14


class Reached(Exception):
    """Raised by a replaced expensive step: the input got past every check before it."""


@pytest.fixture
def no_model(monkeypatch):
    """The model loader must not run: a test that reaches it fails with `Reached`."""
    import circuits.model

    def load_model(*args, **kwargs):
        raise Reached("load_model")

    monkeypatch.setattr(circuits.model, "load_model", load_model)


@pytest.fixture
def no_attribution(monkeypatch):
    """The attribution must not run (the model may load)."""
    import circuits.attribution

    def attribute(*args, **kwargs):
        raise Reached("attribute")

    monkeypatch.setattr(circuits.attribution, "attribute", attribute)


def trace(capsys, *args) -> tuple[int, str]:
    """Run ``circuits trace PROMPT-or-args --quiet`` in this process: (exit status, stderr)."""
    from circuits.cli import main

    code = main(["trace", *map(str, args), "--quiet"])
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *needles: str) -> str:
    """The invariant: exit status 2 and exactly one line on stderr, the error, naming every needle."""
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("circuits: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- 1. --feature out of range: position, feature index, layer -------------------------------------------------


@pytest.mark.parametrize("feature,needles", [
    ("M3#1184@99", ["--feature M3#1184@99", "position 99", "15 tokens", "0–14"]),
    ("M3#99999@14", ["--feature M3#99999@14", "feature index 99999", "transcoder L3 has 2304 features", "0–2303"]),
    ("M9#1@14", ["--feature M9#1@14", "layer 9", "4 layers", "0–3"]),
    ("A7#1@3", ["layer 7", "4 layers"]),
])
def test_feature_out_of_range_names_the_part_before_the_model_loads(capsys, no_model, feature, needles):
    one_line_error(*trace(capsys, PROMPT, "--feature", feature), *needles)


@pytest.fixture(scope="module")
def l3_at_14():
    """(an active, an inactive) transcoder-L3 feature index at the prompt's last position (14), from the model."""
    from circuits.attribution.sources import collect_sources
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    active = {n.index for n in collect_sources(rm, rm.run(PROMPT)).nodes
              if n.kind == "mlp_feature" and n.layer == 3 and n.pos == 14}
    return min(active), min(set(range(rm.transcoders[3].cfg.d_sae)) - active)


def test_an_in_range_feature_passes_the_checks_and_an_inactive_one_is_still_not_active(capsys, monkeypatch,
                                                                                         l3_at_14):
    """Negative control: in range, the checks let the feature through (active: it reaches the attribution; not
    active: the attribution's own message, unchanged)."""
    import circuits.attribution

    active, inactive = l3_at_14
    real = circuits.attribution.attribute

    def attribute(rm, prompt, target, **kwargs):
        if target.node.index == active:
            raise Reached("attribute")
        return real(rm, prompt, target, **kwargs)

    monkeypatch.setattr(circuits.attribution, "attribute", attribute)
    with pytest.raises(Reached):
        trace(capsys, PROMPT, "--feature", f"M3#{active}@14")
    one_line_error(*trace(capsys, PROMPT, "--feature", f"M3#{inactive}@14"),
                   f"M3#{inactive}@14 is not active on this prompt")


def test_a_layer_without_a_dictionary_in_the_set_is_named(capsys, no_model, tmp_path):
    """A set with transcoders only (layers 0 and 1 linked from the shipped set): A0 and M2 have no dictionary."""
    import json

    (tmp_path / "set.json").write_text(json.dumps({"format": "circuits-dictionary-set/1", "model_name": "organism",
                                                   "dictionaries": [str(ROOT / "data/dictionaries/organism/transcoder_L0"),
                                                                    str(ROOT / "data/dictionaries/organism/transcoder_L1")]}))
    one_line_error(*trace(capsys, PROMPT, "--dicts", tmp_path, "--feature", "A0#1@3"),
                   "has no attention SAE at layer 0", "it has no attention SAEs")
    one_line_error(*trace(capsys, PROMPT, "--dicts", tmp_path, "--feature", "M2#1@3"),
                   "has no transcoder at layer 2", "layers 0, 1")


@pytest.mark.filterwarnings("ignore::UserWarning")  # the replacement model's notes on unknown and special tokens
@pytest.mark.parametrize("name", ["organism", "organism-skip", "organism-clt"])
def test_the_cheap_checks_agree_with_the_loaded_model_and_set(name):
    """What the checks read before loading (the organism's tokenizer file, the set's JSON files) is what the
    loaded model and set say: token counts and ids, context, layers, and every dictionary's width (plain set,
    linked members, a cross-layer transcoder)."""
    from circuits.cli.trace_checks import _loaded_shapes, _model_vocab, organism_vocab, set_shapes
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism")
    cheap, loaded = organism_vocab("organism"), _model_vocab(model)
    rm = ReplacementModel(model, load_dictionaries(name, model), name="organism")
    from circuits.errors import AttributionError
    from circuits.inputs import whitespace_problem

    for prompt in (PROMPT, "  Mary  and\tJohn ,1732.", "Marry Zyx went <|endoftext|> home", "x"):
        assert cheap.n_tokens(prompt) == loaded.n_tokens(prompt), prompt
        assert cheap.encode(prompt) == loaded.encode(prompt), prompt
        if whitespace_problem(prompt, cheap.encode, cheap.unk):  # refused by both, in the same words
            with pytest.raises(AttributionError) as refused:
                rm.tokenize(prompt)
            assert str(refused.value) == whitespace_problem(prompt, cheap.encode, cheap.unk)
        else:
            assert rm.tokenize(prompt).shape[0] == cheap.n_tokens(prompt), prompt
    assert (cheap.unk, cheap.n_ctx, cheap.n_layers) == (loaded.unk, loaded.n_ctx, loaded.n_layers)
    assert set_shapes(name) == _loaded_shapes(rm.dictionaries) and len(set_shapes(name)) == 8


# -- 2. no abbreviated options ------------------------------------------------------------------------------------


def test_every_parser_refuses_abbreviations():
    from circuits.cli import build_parser

    def parsers(p):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    found = list(parsers(build_parser()))
    assert len(found) > 20 and all(p.allow_abbrev is False for p in found), [p.prog for p in found if p.allow_abbrev]


@pytest.mark.parametrize("argv,bad", [
    (["trace", "--prompt", PROMPT], "--prompt"),  # was read as --prompt-file
    (["trace", PROMPT, "--targ", "Mary"], "--targ"),
    (["dicts", "eval", "--dict", "organism", "--rows", "1", "--out", "-"], "--dict"),  # a nested subcommand (if
    # the abbreviation ever passed again, this would run a small eval that writes nothing)
    (["--thread=2", "trace", PROMPT], "--thread=2"),  # the top-level parser
])
def test_an_abbreviated_option_is_argparses_error(capsys, argv, bad):
    from circuits.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "unrecognized arguments" in err and bad in err and len(err.strip().splitlines()) == 1, err
    command = [a for a in argv if not a.startswith("-")][:2 if argv[0] == "dicts" else 1]
    if argv[0] != "--thread=2":  # one line naming the subcommand and pointing to its own help
        assert err.startswith(f"circuits: error: {' '.join(command)}: "), err
        assert f"`circuits {' '.join(command)} --help`" in err, err
    else:  # an option of the top level, given before the subcommand: the top level's help
        assert err.startswith("circuits: error: unrecognized") and "`circuits --help`" in err, err


@pytest.mark.parametrize("argv, needle", [
    (["grpah", "show", "x.json"], "'grpah' is not one of organism, dicts, trace"),
    (["graph", "shw", "x.json"], "did you mean show?"),
    (["attention", PROMPT, "--key", "Mary"], "invalid int value: 'Mary'"),
])
def test_parser_errors_are_one_line_with_a_suggestion(capsys, argv, needle):
    """argparse printed its whole usage block (17 lines) before the error; now one line, exit 2."""
    from circuits.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_options_spelt_in_full_still_parse(tmp_path):
    from circuits.cli import build_parser

    args = build_parser().parse_args(["--threads", "2", "trace", "--prompt-file", str(tmp_path / "p.txt"),
                                      "--target", "Mary", "--contrast", "John"])
    assert args.prompt_file == str(tmp_path / "p.txt") and args.threads == "2"


# -- 3. an option given twice -------------------------------------------------------------------------------------


def test_a_repeated_target_is_refused_and_names_contrast(capsys, no_model):
    line = one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--target", "John"),
                          "--target given twice", "'Mary', 'John'", "--target Mary --contrast John")
    assert "\n" not in line
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--contrast", "John", "--contrast", "Bob"),
                   "--contrast given twice")
    one_line_error(*trace(capsys, PROMPT, "--feature", "M3#1@4", "--feature", "M3#2@4"), "--feature given twice")


def test_one_target_with_several_tokens_and_a_contrast_pass(capsys, no_model):
    """Negative control: the same tokens after one --target, or as --target/--contrast, reach the model loader."""
    for args in (["--target", "Mary", "John"], ["--target", "Mary", "--contrast", "John"]):
        with pytest.raises(Reached):
            trace(capsys, PROMPT, *args)


# -- 4. prompt, target, set and output paths before the model loads ---------------------------------------------


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt(capsys, no_model, prompt):
    one_line_error(*trace(capsys, prompt), "the prompt is empty")


def test_an_empty_prompt_file(capsys, no_model, tmp_path):
    (tmp_path / "p.txt").write_text("\n")
    one_line_error(*trace(capsys, "--prompt-file", tmp_path / "p.txt"), "--prompt-file", "the prompt is empty")


def test_an_over_long_prompt(capsys, no_model):
    one_line_error(*trace(capsys, " ".join(["Mary"] * 200)), "201 tokens (BOS included)", "context is 128",
                   "shorten the prompt")


@pytest.mark.parametrize("args,needles", [
    (["--target", "Marry"], ["--target 'Marry' is not in the model's vocabulary", "<|unk|>"]),
    (["--target", "Mary", "--contrast", "Marry"], ["--contrast 'Marry' is not in the model's vocabulary"]),
    (["--target", "Mary", "Marry"], ["--target 'Marry' is not in the model's vocabulary"]),
    (["--target", "Mary went"], ["not a single token", "[' Mary', ' went']"]),
    (["--target", "Mary Marry"], ["not a single token", "not in the model's vocabulary", "[' Mary', '<|unk|>']"]),
    (["--target", "Mary", "--contrast", "Mary"], ["--contrast 'Mary' is the same token as --target 'Mary'"]),
    (["--target", "Mary", "--contrast", " Mary "], ["is the same token as --target 'Mary'"]),
    (["--target", ""], ["--target ''", "empty"]),
])
def test_bad_target_tokens(capsys, no_model, args, needles):
    one_line_error(*trace(capsys, PROMPT, *args), *needles)


@pytest.mark.parametrize("dicts,needles", [
    ("nosuchset", ["--dicts nosuchset", "no such dictionary set or folder", "organism-clt", "or a folder"]),
    ("README.md", ["--dicts README.md", "is a file"]),
    ("circuits/cli", ["--dicts circuits/cli", "no dictionary files"]),
    ("", ["--dicts", "empty"]),
])
def test_an_unknown_dictionary_set(capsys, no_model, dicts, needles, monkeypatch):
    monkeypatch.chdir(ROOT)
    one_line_error(*trace(capsys, PROMPT, "--dicts", dicts), *needles)


def test_a_known_set_and_a_set_folder_pass(capsys, no_model):
    """Negative control."""
    for dicts in ("organism-clt", "organism-fitted", ROOT / "data/dictionaries/organism-skip"):
        with pytest.raises(Reached):
            trace(capsys, PROMPT, "--dicts", dicts)


@pytest.mark.parametrize("flag", ["--json", "--dot", "--svg", "--png", "--graphml", "--circuit-tracer-json"])
def test_an_output_folder_that_does_not_exist(capsys, no_model, tmp_path, flag):
    if flag in ("--svg", "--png") and shutil.which("neato") is None:
        pytest.skip("Graphviz is not installed (--svg/--png fail earlier, on that)")
    path = tmp_path / "out" / "g.x"
    one_line_error(*trace(capsys, PROMPT, flag, path), f"{flag} {path}", f"folder {tmp_path / 'out'} does not exist",
                   "mkdir -p")
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()  # negative control: the folder exists
    with pytest.raises(Reached):
        trace(capsys, PROMPT, flag, path)


# -- 5. another model without --dicts ----------------------------------------------------------------------------


def test_a_public_model_without_dicts_is_told_to_pass_them(capsys, no_model):
    one_line_error(*trace(capsys, PROMPT, "--model", "gpt2"), "--model gpt2 needs --dicts",
                   "pass --dicts SET_OR_FOLDER for this model", "gpt2-transcoders")
    one_line_error(*trace(capsys, PROMPT, "--model", "gemma-2-2b"), "gemma-2-2b-transcoders")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A saved tiny Llama-family model (2 layers, context 32, the organism's tokenizer; no cheap tokenizer path:
    checked after it loads) and a random dictionary set for it (d_sae 48)."""
    from conftest import random_dictionaries

    from circuits.dictionaries import DictionarySet
    from circuits.families import save_model, tiny_model

    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_model("llama3", seed=0, tokenizer_folder=folder / "tok")
    save_model(model, folder / "model", tokenizer_folder=folder / "tok")
    DictionarySet("tiny-llama3", {d.cfg.name: d for d in random_dictionaries(model, seed=1)}).save(folder / "dicts")
    return folder


def test_another_model_folder_without_dicts_gets_the_hint(capsys, no_attribution, tiny_folder):
    one_line_error(*trace(capsys, PROMPT, "--model", tiny_folder / "model"), "does not match the model",
                   "pass --dicts SET_OR_FOLDER for this model")


@pytest.mark.parametrize("args,needles", [
    (["--feature", "M1#3@40"], ["position 40", "0–14"]),
    (["--feature", "M1#48@3"], ["feature index 48", "48 features (0–47)"]),
    (["--feature", "M2#1@3"], ["no transcoder at layer 2", "layers 0, 1"]),
    (["--target", "Marry"], ["not in the model's vocabulary"]),
    (["--target", "Mary", "--contrast", "Bob Marry"], ["--contrast 'Bob Marry'", "not a single token"]),
])
def test_a_model_without_the_cheap_path_is_checked_after_loading_before_attribution(capsys, no_attribution,
                                                                                      tiny_folder, args, needles):
    one_line_error(*trace(capsys, PROMPT, "--model", tiny_folder / "model", "--dicts", tiny_folder / "dicts", *args),
                   *needles)


def test_an_over_long_prompt_for_a_model_without_the_cheap_path(capsys, no_attribution, tiny_folder):
    one_line_error(*trace(capsys, " ".join(["Mary"] * 40), "--model", tiny_folder / "model", "--dicts", tiny_folder / "dicts"),
                   "41 tokens", "context is 32")


def test_valid_input_for_a_model_without_the_cheap_path_reaches_the_attribution(capsys, no_attribution,
                                                                                tiny_folder):
    """Negative control."""
    with pytest.raises(Reached):
        trace(capsys, PROMPT, "--model", tiny_folder / "model", "--dicts", tiny_folder / "dicts", "--target", "Mary",
              "--contrast", "John")


# -- 6. long labels in the node table ----------------------------------------------------------------------------


def test_long_labels_end_with_an_ellipsis():
    from circuits.cli.trace import _clip

    label = "dense 39% · name · after \",\" → promotes names, suppresses verbs and places"
    short = _clip(label)
    assert len(short) <= 60 and short.endswith("…") and label.startswith(short[:-1])
    assert short == "dense 39% · name · after \",\" → promotes names, suppresses…"
    assert _clip("x" * 80).endswith("…") and len(_clip("x" * 80)) == 60  # no space: cut mid-word, still marked
    assert _clip("promotes names") == "promotes names"  # short labels unchanged
    assert _clip("y" * 60) == "y" * 60


def test_the_node_table_prints_clipped_labels(capsys):
    from circuits.cli.trace import _print_top_nodes

    node = {"id": "A1#1990@14", "token": " to", "influence": 0.02, "activation": 5.1,
            "label": "dense 39% · name · after \",\" → promotes names, suppresses verbs and places"}
    _print_top_nodes({"top_nodes": [node], "by_position": [{"pos": 3, "token": " and", "nodes": [node]}]})
    out = capsys.readouterr().out
    assert out.count("promotes names, suppresses…") == 2 and "suppresses ve" not in out


# -- the real console entry point --------------------------------------------------------------------------------


def test_the_console_command_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "circuits.cli", "trace", PROMPT, "--feature", "M3#1184@99"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["circuits: error: --feature M3#1184@99: position 99 is out of range: "
                                                "the prompt has 15 tokens, BOS included (positions 0–14)"]


# -- whitespace the organism's tokenizer reads as unknown tokens --------------------------------------------------


@pytest.mark.parametrize("prompt,needles", [
    (PROMPT + " ", ["ends with whitespace", repr(PROMPT)]),
    (" " + PROMPT, ["starts with whitespace"]),
    (PROMPT.replace("store, John", "store,  John"), ["two spaces in a row at character 37"]),
    (PROMPT.replace(" and ", "\tand "), ["a tab at character 9"]),
])
def test_stray_whitespace_is_refused_before_the_model_loads(capsys, no_model, prompt, needles):
    """A trailing space became one more, unknown, position and the target was explained there (value 1.04
    instead of 14.49), with exit 0 and a warning blaming the words."""
    one_line_error(*trace(capsys, prompt, "--target", "Mary", "--contrast", "John"), *needles)


def test_the_tidy_prompt_gets_past_the_whitespace_check(capsys, no_model):
    with pytest.raises(Reached):
        trace(capsys, PROMPT, "--target", "Mary", "--contrast", "John")


def test_the_api_refuses_stray_whitespace_with_a_typed_error_and_gpt2_style_tokenizers_are_not_asked():
    from circuits.errors import AttributionError
    from circuits.inputs import whitespace_problem

    with pytest.raises(AttributionError, match="ends with whitespace"):
        from circuits import load_dictionaries, load_model
        from circuits.replacement import ReplacementModel

        model, _ = load_model("organism")
        ReplacementModel(model, load_dictionaries("organism", model)).tokenize(PROMPT + " ")
    assert whitespace_problem(PROMPT + " ", lambda t: [1] * len(t.split(" ")), None) is None  # no unknown token
    # whitespace the tokenizer reads without unknown tokens is not a problem
    assert whitespace_problem(PROMPT + " ", lambda t: [5] * len(t), 0) is None


# -- output files: never another kind of file, never one file for two outputs -------------------------------------


def test_an_existing_file_of_another_kind_is_not_overwritten(capsys, no_model, tmp_path):
    """`trace --json keep.sqlite` replaced a 50 MB dashboard database with a graph; now it is refused, untouched."""
    import sqlite3

    db = tmp_path / "keep.sqlite"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    before = db.read_bytes()
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--json", db), "--json", "is a SQLite database",
                   "not a circuits graph file", "nothing was written")
    assert db.read_bytes() == before
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--svg", png), "--svg", "is a PNG image")
    # the same kind is replaced (running a trace again), and so is an empty file
    graph = tmp_path / "g.json"
    graph.write_text('{"format": "circuits-graph"}')
    (tmp_path / "empty.svg").write_text("")
    with pytest.raises(Reached):
        trace(capsys, PROMPT, "--target", "Mary", "--json", graph, "--svg", tmp_path / "empty.svg")


def test_a_graph_file_with_work_saved_from_the_explorer_needs_force(capsys, no_model, tmp_path):
    """A graph file saved from the explorer (``ui.saved_by``), or one with pins or supernodes of the user's own, is
    the user's work: `trace --json` with the same name is refused, untouched, unless --force. What `trace` writes
    itself — automatic supernodes, the dashboard database's labels — does not count: re-running a trace replaces
    its own output (the review found the first version refusing exactly that)."""
    import json

    auto = [{"name": "L0 says Mary", "nodes": ["T@1"], "auto": True, "pos": 1}]
    saved = tmp_path / "mine.json"
    saved.write_text(json.dumps({"format": "circuits-graph", "nodes": {}, "ui": {
        "pins": ["a", "b"], "supernodes": auto, "labels": {"x": "says Mary"}, "saved_by": "explorer"}}))
    before = saved.read_bytes()
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--json", saved), "--json", "holds your work (saved "
                   "from the explorer: 2 pins, 1 label)", "--force", "nothing was written")
    assert saved.read_bytes() == before
    manual = tmp_path / "manual.json"  # no mark, but a supernode of the user's own
    manual.write_text(json.dumps({"format": "circuits-graph", "ui": {"supernodes": auto + [{"name": "mine",
                                                                                           "nodes": ["T@2"]}]}}))
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--json", manual), "(1 supernode)")
    ct = tmp_path / "ct.json"  # circuit-tracer's layout keeps pins in qParams
    ct.write_text(json.dumps({"nodes": [], "links": [], "qParams": {"pinnedIds": ["1"], "supernodes": []}}))
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--circuit-tracer-json", ct), "(1 pin)")
    with pytest.raises(Reached):  # --force replaces them
        trace(capsys, PROMPT, "--target", "Mary", "--json", saved, "--circuit-tracer-json", ct, "--force")
    # negative controls: what trace itself writes (automatic supernodes, database labels; circuit-tracer supernodes
    # carry no auto flag) is replaced without --force
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"format": "circuits-graph", "ui": {"pins": [], "supernodes": auto,
                                                                    "labels": {"x": "on ' to' (10/10)"}}}))
    plain_ct = tmp_path / "plain_ct.json"
    plain_ct.write_text(json.dumps({"nodes": [], "links": [], "qParams": {"pinnedIds": [], "supernodes": [["s", "1"]]}}))
    with pytest.raises(Reached):
        trace(capsys, PROMPT, "--target", "Mary", "--json", plain, "--circuit-tracer-json", plain_ct)


def test_saved_work_of_a_real_trace_output_is_none(tiny64, tmp_path):
    """A graph file exactly as `circuits trace --json` writes it — automatic supernodes and the dashboards' labels in
    its ui — holds no work of the user's; the same graph saved with the explorer's mark does, and a malformed ui
    is no work rather than an error."""
    import json

    from circuits import export
    from circuits.attribution import TopLogits, attribute
    from circuits.cli.trace import _attach_labels
    from circuits.inputs import saved_work
    from circuits.pruning import prune
    from circuits.replacement import ReplacementModel
    from circuits.supernodes import attach_supernodes

    model, dicts = tiny64
    g = prune(attribute(ReplacementModel(model, dicts, name="tiny"), PROMPT, TopLogits(0.8, 3)), 0.6, 0.9).graph
    attach_supernodes(g)
    _attach_labels(g, {export.node_id(n): "a label" for n in g.nodes})
    assert g.metadata["ui"]["supernodes"] and g.metadata["ui"]["labels"]
    path = export.write_json(g, tmp_path / "g.json")
    assert saved_work(path) is None
    data = json.loads(path.read_text())
    data["ui"]["saved_by"] = "explorer"
    path.write_text(json.dumps(data))
    assert saved_work(path).startswith("saved from the explorer")
    export.read_json(path)  # the mark is part of the schema
    path.write_text(json.dumps({"format": "circuits-graph", "ui": {"pins": 3, "supernodes": "x"}}))
    assert saved_work(path) is None


def test_two_outputs_naming_one_file_are_refused(capsys, no_model, tmp_path):
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--json", tmp_path / "a.json", "--dot",
                          tmp_path / "a.json"), "--json and --dot name the same file")


def test_file_kind_tells_the_files_the_commands_write(tmp_path):
    from circuits.inputs import file_kind

    cases = {"g.json": '{"format": "circuits-graph", "nodes": []}', "ct.json": '{"nodes": [], "links": []}',
             "r.json": '{"study": "ioi"}', "p.svg": '<?xml version="1.0"?>\n<svg xmlns="x"></svg>',
             "p.graphml": '<?xml version="1.0"?><graphml></graphml>', "p.dot": "digraph G {}", "n.txt": "notes"}
    want = {"g.json": "circuits-graph", "ct.json": "circuit-tracer", "r.json": "json", "p.svg": "svg",
            "p.graphml": "graphml", "p.dot": "dot", "n.txt": "text"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert file_kind(tmp_path / name) == want[name], name
    assert file_kind(tmp_path / "missing") is None
    (tmp_path / "e").write_text("")
    assert file_kind(tmp_path / "e") is None


# -- --corrupt: its length and target kind before the work ------------------------------------------------------


def test_corrupt_prompt_problems_are_found_before_the_model_loads(capsys, no_model):
    """A corrupted prompt of another length, or --corrupt with --feature, failed after attribution, pruning and
    faithfulness (about 12 s), and the requested --json was never written."""
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--contrast", "John", "--corrupt",
                          "When Mary went to the store, Anna gave a drink to"), "--corrupt has 13 tokens",
                   "the prompt 15")
    one_line_error(*trace(capsys, PROMPT, "--feature", "M3#1184@14", "--corrupt",
                          PROMPT.replace("store, John", "store, Anna")), "--corrupt needs a logit target")
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--corrupt", PROMPT + " "), "the --corrupt prompt ends")
    with pytest.raises(Reached):  # the same length: past the checks
        trace(capsys, PROMPT, "--target", "Mary", "--contrast", "John", "--corrupt",
              "When Mary and John went to the store, Anna gave a drink to")


def test_a_dashboards_option_that_is_not_a_database_is_refused_before_the_model_loads(capsys, no_model, tmp_path):
    """`--dashboards graph.json` exited 0 with no labels and a note only on the progress stream (hidden by
    --quiet), advising a rebuild."""
    graph = tmp_path / "g.json"
    graph.write_text('{"format": "circuits-graph"}')
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--dashboards", graph), "--dashboards",
                   "a circuits graph file, not a dashboard database")


def test_a_dashboards_database_of_other_dictionaries_fails_before_the_attribution(capsys, no_attribution):
    """Named explicitly, a database built for other dictionaries is an error — found when the model loads, not
    after the attribution, pruning and faithfulness (which then wrote none of the requested files)."""
    db = ROOT / "data" / "dashboards" / "organism.sqlite"
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--dicts", "organism-base", "--dashboards", db),
                   "--dashboards", "fingerprint mismatch", "--dicts organism-base --out FILE")


def test_file_kind_reads_a_byte_order_mark_and_does_not_take_notes_for_dot(tmp_path):
    from circuits.inputs import file_kind, whitespace_problem

    bom = tmp_path / "bom.json"
    bom.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    notes = tmp_path / "notes.txt"
    notes.write_text("graph notes: what the diff showed")
    assert (file_kind(bom), file_kind(notes)) == ("json", "text")
    encode = lambda t: [0 if c.isspace() else 1 for c in t]  # noqa: E731  (a tokenizer with no space token)
    assert "a tab at character 5" in whitespace_problem("Mary \twent", encode, 0)


def test_a_corrupted_prompt_equal_to_the_prompt_is_refused(capsys, no_model):
    """It ran and printed all-zero effects with no note."""
    one_line_error(*trace(capsys, PROMPT, "--target", "Mary", "--corrupt", PROMPT), "--corrupt is the prompt itself")


@pytest.mark.parametrize("argv", [
    ["trace", "x  y"],  # stray whitespace
    ["trace", PROMPT, "--dicts", "no-such-set"],
    ["trace", PROMPT, "--feature", "M9#1@0"],
    ["feature", "M9#1"],
    ["feature", "M1#999999"],
    ["trace", PROMPT, "--target", " Mary", "--model", "gpt3"],
    ["feature", "M3#1", "--model", "gpt3"],
    ["feature", "M3#1", "--model", "gpt2"],  # no database for GPT-2: dashboards are the organism's only
    ["dicts", "eval", "--dicts", "organsim"],
    ["dicts", "fit-skip", "--dicts", "organsim", "--out", "runs/never"],
    ["dicts", "calibrate", "--model", "orgnism", "--l0", "30", "--out", "runs/never"],
    ["dicts", "train", "--out", "runs/never", "--sites", "transcoder_L9"],
    ["dicts", "train", "--out", "runs/never", "--site-d-sae", "transcoder_L9=64"],
])
def test_early_errors_do_not_import_torch(argv):
    """The checks before the work read the tokenizer and JSON files only: an input error is reported without
    importing torch (which alone takes seconds), so a mistyped command answers at once."""
    code = ("import sys\nfrom circuits.cli import main\n"
            f"rc = main({argv!r})\n"
            "assert rc == 2, rc\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "circuits: error:" in done.stderr


@pytest.mark.parametrize("argv, needle", [
    (["trace", PROMPT, "--target", "Mary", "--model", "gpt3"], "did you mean gpt2?"),
    (["feature", "M3#1", "--model", "orgnism"], "did you mean organism?"),
    (["feature", "M3#1", "--text", "hello supermarket "], "ends with whitespace"),
    (["feature", "M3#1", "--db", "README.md"], "not a dashboard database"),
    (["feature", "M3#1", "--dicts", "organsim"], "no such dictionary set"),
    (["study", "ioi", "--n", "5", "--dicts", "organsim"], "no such dictionary set"),
    (["feature", "M3#1", "--model", "gpt2"], "dashboards are built from the organism's held-out corpus only"),
    (["dicts", "finetune", "--dicts", "organsim", "--out", "runs/never"], "no such dictionary set"),
    (["dicts", "train", "--out", "runs/never", "--sites", "transcoder_L9"], "--sites: unknown transcoder_L9"),
    (["dicts", "train", "--out", "runs/never", "--init-from", "organsim"], "--init-from organsim: no such dictionary"),
    (["dicts", "eval", "--model", "gpt2"], "the fidelity report reads the organism's corpus, which 'gpt2' has not"),
    (["dicts", "finetune", "--model", "gpt2", "--out", "runs/never"], "the fine-tune streams the organism's corpus"),
])
def test_model_set_text_and_database_are_checked_before_loading(capsys, no_model, argv, needle):
    """A newcomer found these refused only after the model loaded (8-10 s), and trace printed "loading gpt3 ..."
    before saying the model is unknown. Now each is one line, exit 2, before the loader (which fails the test) and
    before any progress line."""
    from circuits.cli import main

    old = Path.cwd()
    import os

    os.chdir(ROOT)  # README.md: a real file that is not a database
    try:
        code = main(argv)
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
