"""Graph files: JSON round trip and schema validation, DOT (parsed and rendered by Graphviz), GraphML, the
circuit-tracer layout, diffs, and the `circuits trace` / `circuits graph` commands end to end."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from circuits import export
from circuits.attribution import Contrast, TopLogits, attribute
from circuits.cli import main
from circuits.graph import Graph
from circuits.pruning import prune
from circuits.replacement import ReplacementModel

PROMPT = "When Mary and John went to the store, John gave a drink to"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


@pytest.fixture(scope="module")
def graph(tiny64):
    model, dicts = tiny64
    rm = ReplacementModel(model, dicts, name="tiny")
    g = prune(attribute(rm, PROMPT, TopLogits(0.8, 3)), 0.6, 0.9).graph
    g.metadata["ui"] = {"pins": [g.nodes[-1].to_json()],
                        "supernodes": [{"name": "late", "nodes": [n.to_json() for n in g.nodes[-3:-1]]}],
                        "labels": {export.node_id(g.nodes[-2]): "a labelled feature"}}
    return g


def test_json_round_trip_is_lossless(graph, tmp_path):
    path = export.write_json(graph, tmp_path / "g.json")
    back = export.read_json(path)
    assert back.nodes == graph.nodes and back.metadata == json.loads(json.dumps(graph.metadata))
    for name in ("activations", "edge_index", "edge_weight", "head_weights", "constants", "pre_activations",
                 "dropped", "target_weights"):
        assert torch.equal(getattr(back, name), getattr(graph, name)), name
    assert export.to_dict(back) == export.to_dict(graph)
    labelled = export.to_dict(graph)["nodes"]["label"]
    assert labelled[-2] == "a labelled feature" and labelled.count(None) == graph.n_nodes - 1


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["nodes"]["kind"].__setitem__(2, "neuron"), "nodes.kind[2]"),
    (lambda d: d["edges"]["weight"].__setitem__(0, "heavy"), "edges.weight[0]"),
    (lambda d: d["metadata"].pop("tokens"), "'tokens' is a required property"),
    (lambda d: d["edges"]["source"].append(0), "edges.source has"),
    (lambda d: d["edges"]["target"].__setitem__(0, 10**6), "edges.target[0] = 1000000 is not a node"),
    (lambda d: d.__setitem__("schema_version", 99), "schema_version 99"),
    (lambda d: d.__setitem__("paths", [{"weight": 0.5, "sign": 2, "steps": []}]), "paths[0]"),
    (lambda d: d["nodes"].__setitem__("bos_constant", [0.0]), "nodes.bos_constant has 1 entries"),
    (lambda d: d.__setitem__("format", "something-else"), "not a circuits graph"),
])
def test_schema_validation_points_at_the_bad_field(graph, tmp_path, mutate, message):
    data = export.to_dict(graph)
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(export.GraphFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        export.read_json(path)


def test_a_cut_off_graph_file_says_so(graph, tmp_path):
    """A graph file that ends early (copied or written in part) is named as cut off, not as 'Invalid escape'."""
    text = json.dumps(export.to_dict(graph))
    for cut in (len(text) // 2, len(text) - 3, 200):
        (tmp_path / "cut.json").write_text(text[:cut])
        with pytest.raises(export.GraphFileError, match="the JSON stops before its end"):
            export.read_json(tmp_path / "cut.json")
    for broken in ('{"a": 1}}', '{"a": 1} x', '{"a": 1,}'):  # whole but malformed (a hand edit): not "cut off"
        with pytest.raises(export.GraphFileError, match="not valid JSON"):
            export.loads(broken, "f")


def test_foreign_and_broken_files(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(export.GraphFileError, match="not valid JSON"):
        export.read_json(tmp_path / "x.json")
    (tmp_path / "ct.json").write_text(json.dumps({"metadata": {}, "nodes": [], "links": []}))
    with pytest.raises(export.GraphFileError, match=r"is a circuit-tracer graph JSON, not a circuits graph file"):
        export.read_json(tmp_path / "ct.json")  # named by its kind (a newcomer read "no 'format' field")
    (tmp_path / "other.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(export.GraphFileError, match=r"not a circuits graph file \(it has no 'format' field\)"):
        export.read_json(tmp_path / "other.json")
    (tmp_path / "g.graphml").write_text('<?xml version="1.0"?>\n<graphml xmlns="http://graphml.graphdrawing.org/xmlns">')
    with pytest.raises(export.GraphFileError, match="is a GraphML file, not a circuits graph file"):
        export.read_json(tmp_path / "g.graphml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(export.GraphFileError, match=r"\(a JSON list, not an object\)"):
        export.read_json(tmp_path / "list.json")
    with pytest.raises(export.GraphFileError, match="does not exist"):
        export.read_json(tmp_path / "missing.json")


def test_writes_are_atomic_and_unwritable_paths_are_clear(graph, tmp_path):
    target = tmp_path / "g.json"
    target.write_text("precious")
    with pytest.raises(export.GraphFileError, match="does not exist"):
        export.write_json(graph, tmp_path / "nope" / "g.json")

    def boom(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(export.GraphFileError, match="No space left"):
        export._atomic_write(target, boom)
    assert target.read_text() == "precious" and len(list(tmp_path.iterdir())) == 1


@needs_dot
def test_dot_parses_and_renders(graph, tmp_path):
    path = export.write_dot(graph, tmp_path / "g.dot")
    text = path.read_text()
    assert "rankdir=BT" in text and 'rank=same' in text and "a labelled feature" in text
    assert "#b2182b" in text or "#2166ac" in text  # edge colours by sign
    proc = subprocess.run(["dot", "-Tsvg", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "<svg" in proc.stdout
    svg = export.render(graph, tmp_path / "g.svg", "svg")
    png = export.render(graph, tmp_path / "g.png", "png")
    assert svg.read_text().lstrip().startswith("<?xml") and png.read_bytes()[:4] == b"\x89PNG"


def test_render_without_dot_is_clear(graph, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(export.GraphFileError, match="Graphviz `dot` is not installed"):
        export.render(graph, tmp_path / "g.svg", "svg")


def test_graphml_loads_back_with_attributes(graph, tmp_path):
    import networkx as nx

    path = export.write_graphml(graph, tmp_path / "g.graphml")
    g = nx.read_graphml(path)
    assert g.number_of_nodes() == graph.n_nodes and g.number_of_edges() == graph.n_edges
    attrs = g.nodes[str(graph.n_nodes - 1)]
    assert attrs["kind"] == graph.nodes[-1].kind and "label" in attrs and "pre_activation" in attrs
    attn = [d for _, _, d in g.edges(data=True) if "heads" in d]
    assert attn and len(json.loads(attn[0]["heads"])) == graph.metadata["n_heads"]
    assert abs(sum(json.loads(attn[0]["heads"])) - attn[0]["weight"]) < 1e-9


def test_circuit_tracer_json_has_their_fields_and_types(graph, tmp_path):
    data = json.loads(export.write_circuit_tracer(graph, tmp_path / "ct.json").read_text())
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert set(data["metadata"]) == {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
                                     "schema_version"}
    assert set(data["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    types = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str,
             "token_prob": float, "is_target_logit": bool, "run_idx": int, "reverse_ctx_idx": int,
             "jsNodeId": str, "clerp": str, "influence": float, "activation": float}
    for node in data["nodes"]:
        assert set(node) == set(types)
        assert all(isinstance(node[k], t) for k, t in types.items()), node
    ids = {n["node_id"] for n in data["nodes"]}
    assert len(ids) == len(data["nodes"])
    assert all(set(link) == {"source", "target", "weight"} and link["source"] in ids and link["target"] in ids
               for link in data["links"])
    kinds = {n["feature_type"] for n in data["nodes"]}
    assert {"embedding", "logit", "cross layer transcoder"} <= kinds
    tokens = [n for n in data["nodes"] if n["feature_type"] == "embedding"]
    assert all(n["node_id"] == f"E_{n['feature']}_{n['ctx_idx']}" for n in tokens)
    assert data["qParams"]["pinnedIds"] and data["qParams"]["supernodes"][0][0] == "late"


def _frontend_keys(nodes: list[dict], n_tokens: int) -> list[str]:
    """circuit-tracer's frontend key of each node (its util-cg.js: ``{layer}_{feature}_{ctx_idx}``, error nodes
    suffixed ``__err_idx_{ctx_from_end}``)."""
    keys = []
    for n in nodes:
        key = f"{n['layer']}_{n['feature']}_{n['ctx_idx']}"
        if "error" in n["feature_type"]:
            key += f"__err_idx_{n_tokens - n['ctx_idx']}"
        keys.append(key)
    return keys


def test_circuit_tracer_frontend_keys_are_unique_on_the_organism_example():
    """circuit-tracer's frontend identifies a node by layer, feature and position: an attention feature and a
    transcoder feature with the same layer, index and position (and the two error kinds at one layer and position)
    must not share a key. Attention nodes' ``feature`` is shifted (`CT_ATTN_FEATURE_OFFSET`, -2 for their errors);
    node ids keep the plain index."""
    path = Path(__file__).resolve().parent.parent / "data" / "graphs" / "ioi_abba.json"
    graph = export.loads(path.read_bytes(), path.name)
    data = export.to_circuit_tracer(graph)
    n_tokens = len(data["metadata"]["prompt_tokens"])
    keys = _frontend_keys(data["nodes"], n_tokens)
    assert len(set(keys)) == len(keys)
    attn = [n for n in data["nodes"] if n["feature_type"] == "attention sae"]
    assert attn and all(n["feature"] >= export.CT_ATTN_FEATURE_OFFSET for n in attn)
    assert all(n["node_id"] == f"A{n['layer']}_{n['feature'] - export.CT_ATTN_FEATURE_OFFSET}_{n['ctx_idx']}"
               for n in attn)
    # without the shift this example has collisions, so the check above can fail
    plain = [dict(n, feature=n["feature"] - export.CT_ATTN_FEATURE_OFFSET) if n in attn else
             dict(n, feature=-1) if "error" in n["feature_type"] else n for n in data["nodes"]]
    plain_keys = _frontend_keys(plain, n_tokens)
    assert len(set(plain_keys)) < len(plain_keys)


def test_diff_finds_changes(graph):
    other = Graph.from_json(graph.to_json())
    other.edge_weight = other.edge_weight.clone()
    other.edge_weight[0] *= 3
    keep = torch.ones(other.n_nodes, dtype=torch.bool)
    victim = next(i for i, n in enumerate(other.nodes) if n.kind.endswith("_feature"))
    keep[victim] = False
    d = export.diff(graph, other.subgraph(keep))
    assert d.removed_nodes == [graph.nodes[victim]] and not d.added_nodes
    assert d.removed_edges and any(s == graph.nodes[victim] or t == graph.nodes[victim]
                                   for s, t, _ in d.removed_edges)
    changed = {(s, t) for s, t, _, _ in d.changed_edges}
    t0, s0 = graph.edge_index[:, 0].tolist()
    assert (graph.nodes[s0], graph.nodes[t0]) in changed or graph.nodes[victim] in (graph.nodes[s0], graph.nodes[t0])


def test_trace_show_diff_end_to_end_on_the_organism(tmp_path, capsys):
    abba, baba = tmp_path / "abba.json", tmp_path / "baba.json"
    argv = ["trace", PROMPT, "--target", "Mary", "--contrast", "John", "--json", str(abba), "--graphml",
            str(tmp_path / "g.graphml"), "--circuit-tracer-json", str(tmp_path / "ct.json"), "--quiet",
            "--corrupt", "When Mary and John went to the store, Anna gave a drink to", "--top", "4"]
    if shutil.which("dot"):
        argv += ["--svg", str(tmp_path / "g.svg"), "--dot", str(tmp_path / "g.dot")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tokens: 0:'<|endoftext|>'" in out and "top 4 nodes by influence" in out and "atp node effects" in out
    rows = {line.split("  ")[1].strip(): line for line in out.splitlines() if line.startswith("  ") and
            line.strip().startswith(("standard mean ablation ", "zero ablation ", "held-inactive"))
            and re.search(r"\s-?\d+\.\d{3}\s", line)}  # table rows (numbers), not the wrapped explanation
    assert set(rows) == {"standard mean ablation", "zero ablation", "held-inactive mean ablation (variant)"}, rows
    assert "on this prompt only" in out and "random circuits of the same shape" in out
    # issue 21: BOS folded, routes printed and stored, the default picture is the supernode graph (<= 40 boxes)
    assert "folded into the constants" in out and "top 5 routes from the tokens" in out
    routes = [line for line in out.splitlines() if line.startswith("  0.") and " → " in line]
    assert len(routes) == 5 and all(line.rstrip().endswith("logit ' Mary' − ' John'") for line in routes)
    if shutil.which("dot"):
        from circuits.picture import box_count

        dot = (tmp_path / "g.dot").read_text()
        assert box_count(dot) <= 40 and "' Mary'" in dot and "pos=" in dot
        assert "<svg" in (tmp_path / "g.svg").read_text()
    assert main(["trace", "When John and Mary went to the store, John gave a drink to", "--target", "Mary",
                 "--contrast", "John", "--json", str(baba), "--json-summary", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["full"]["nodes"] > summary["pruned"]["nodes"] > 0 and summary["written"] == [str(baba)]
    assert main(["graph", "show", str(abba)]) == 0
    assert "strongest" in capsys.readouterr().out
    assert main(["graph", "diff", str(abba), str(baba)]) == 0
    assert "nodes only in B" in capsys.readouterr().out
    g = export.read_json(abba)
    assert g.metadata["model"] == "organism" and g.metadata["patching"]["method"] == "atp"
    assert not [n for n in g.nodes if n.pos == 0 and n.kind != "token"] and g.metadata["bos_folded"]["nodes"] > 0
    assert len(g.metadata["paths"]) == 5 and g.metadata["paths"][0]["weight"] >= g.metadata["paths"][-1]["weight"]
    assert any(s.get("auto") for s in g.metadata["ui"]["supernodes"])
    from circuits.pruning import graph_scores

    # the file holds the pruned graph: its own scores, recomputed from the file, are the ones recorded as pruned
    recomputed = graph_scores(g)
    assert g.metadata["scores_pruned"]["replacement"] == pytest.approx(recomputed.replacement, rel=1e-5)
    assert g.metadata["scores_pruned"]["completeness"] == pytest.approx(recomputed.completeness, rel=1e-5)
    assert 0 < g.metadata["scores"]["replacement"] <= 1 and 0 < g.metadata["scores"]["completeness"] <= 1
    faith = g.metadata["faithfulness"]
    assert [(f["ablation"], f["convention"]) for f in faith] == [("mean", "standard"), ("mean", "held-inactive"),
                                                                ("zero", "standard")]
    assert all(len(f["random"]["scores"]) == 5 and f["score"] > f["random"]["mean"] for f in faith)
    labels = g.metadata["ui"]["labels"]  # from the committed dashboard database
    assert labels and all(export.node_id(n) in labels for n in g.nodes if n.kind.endswith("_feature"))


def test_trace_show_bos_and_full_detail(tmp_path, capsys):
    """--show-bos keeps the BOS features; --detail full draws every pruned node (the picture before issue 21)."""
    argv = ["trace", PROMPT, "--target", "Mary", "--contrast", "John", "--quiet", "--show-bos", "--paths", "0",
            "--json", str(tmp_path / "g.json"), "--dot", str(tmp_path / "g.dot"), "--detail", "full"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "routes" not in out and "folded" not in out
    g = export.read_json(tmp_path / "g.json")
    assert [n for n in g.nodes if n.pos == 0 and n.kind != "token"] and "bos_folded" not in g.metadata
    assert (tmp_path / "g.dot").read_text().count("rank=same") > 3  # the sublayer-ranked drawing of every node


def test_trace_bad_input_is_one_line(tmp_path, capsys):
    cases = [
        (["trace", PROMPT, "--json", str(tmp_path / "no" / "g.json")], "does not exist"),
        (["trace", PROMPT, "--contrast", "John"], "needs exactly one --target"),
        (["trace", PROMPT, "--paths", "-1"], "--paths -1"),
        (["trace", PROMPT, "--model", "nosuch"], "unknown model"),
        (["trace", PROMPT, "--dicts", "nosuchset"], "nosuchset"),
        (["graph", "show", str(tmp_path / "missing.json")], "does not exist"),
    ]
    (tmp_path / "bad.json").write_text("[1, 2]")
    cases.append((["graph", "show", str(tmp_path / "bad.json")], "not a circuits graph"))
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        errors = [line for line in err.splitlines() if line.startswith("circuits: error")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, (argv, err)


def test_contrast_graph_json_names_the_pair(tiny64, tmp_path):
    model, dicts = tiny64
    g = attribute(ReplacementModel(model, dicts), PROMPT, Contrast(" Mary", " John"))
    back = export.read_json(export.write_json(g, tmp_path / "c.json"))
    assert back.metadata["contrast"] == g.metadata["contrast"] and back.nodes[-1].kind == "logit_diff"


# -- pictures sized to a circuit (issue 21 item 5) -------------------------------------------------------------


def test_picture_draws_at_most_max_boxes_on_a_position_grid(graph):
    from circuits import picture

    for most in (20, 40):  # tokens (15) and targets (3) are always drawn
        source = picture.to_picture_dot(graph, picture.PictureConfig(max_boxes=most, min_features=0))
        assert picture.box_count(source) <= most
    # a long prompt's tokens never crowd out the circuit: at least min_features boxes beyond tokens and targets
    few = picture.choose(graph, picture.PictureConfig(max_boxes=10, min_features=4))
    assert len(few.boxes) <= 18 + 4 and len(few.boxes) > 18
    pic = picture.choose(graph, picture.PictureConfig(max_boxes=20, min_features=0))
    g = pic.contracted.graph
    tokens = [i for i in pic.boxes if g.nodes[i].kind == "token"]
    assert len(tokens) == len(graph.metadata["token_strings"])  # every token along the bottom
    assert any(float(g.target_weights[i]) > 0 for i in pic.boxes)
    at = picture.layout(pic)
    xs = [at[i][0] for i in sorted(tokens, key=lambda i: g.nodes[i].pos)]
    assert xs == sorted(xs) and len({at[i][1] for i in tokens}) == 1  # one row, in prompt order
    assert all(at[i][1] > at[tokens[0]][1] for i in pic.boxes if g.nodes[i].kind != "token")
    for s, t, _, share in pic.edges:  # edges join drawn boxes, upwards
        assert s in pic.boxes and t in pic.boxes and at[s][1] < at[t][1] and 0 < share <= 1


@needs_dot
def test_picture_renders_svg_and_png(graph, tmp_path):
    from circuits import picture

    svg = picture.render_picture(graph, tmp_path / "p.svg", "svg")
    png = picture.render_picture(graph, tmp_path / "p.png", "png")
    assert "<svg" in svg.read_text() and png.read_bytes()[:4] == b"\x89PNG"
    scored = Graph.from_json(graph.to_json())
    scored.metadata["scores"] = {"replacement": 0.625, "completeness": 0.75}
    assert "replacement 0.62, completeness 0.75" in picture.to_picture_dot(scored)  # the caption has the scores


def test_picture_marks_dense_features_on_the_organism_gallery_graph():
    """A single-feature box of a dense feature (active on ≥ 20% of held-out tokens) says so beside its category:
    the organism's A0#996 (45%) reads ``dense 45% · city`` and not the bare ``city``; M3#1184 (10%) is unmarked
    (the negative control). Every box of the shipped picture that shows A0#996 carries the mark."""
    from circuits import picture
    from circuits.model import DATA_DIR

    graph = export.read_json(DATA_DIR / "graphs" / "ioi_abba.json")
    dense = next(n for n in graph.nodes if n.kind == "attn_feature" and n.layer == 0 and n.index == 996)
    sparse = next(n for n in graph.nodes if n.kind == "mlp_feature" and n.layer == 3 and n.index == 1184)
    assert picture._dense_mark(graph, dense) == "dense 45%" and picture._dense_mark(graph, sparse) is None
    pic = picture.choose(graph)
    texts = [picture.box_label(pic, row) for row in pic.boxes]
    shown = [t for t in texts if t.startswith("A0#996\n")]
    assert shown and all(t == "A0#996\ndense 45% · city" for t in shown), shown
    assert any(t.startswith("M3#1184\n") and "dense" not in t for t in texts)
