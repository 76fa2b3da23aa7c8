"""Interop with the real circuit-tracer package (optional: ``pip install --no-deps circuit-tracer==0.5.0``, see
docs/interop.md; skipped without it).

* Our ``--circuit-tracer-json`` export (``circuits trace``, and gallery graphs through `export.write_circuit_tracer`)
  validates in circuit-tracer's own graph-file models (``circuit_tracer.frontend.graph_models.Model``) without
  losing or coercing a field, is listed by its ``add_graph_metadata`` and served by its local frontend server
  (its request handler on 127.0.0.1, a free port): the graph fetched over HTTP is the file we wrote, and what the
  frontend's ``formatData`` needs holds (unique node ids, every link end a node).
* Transcoder folders written by circuit-tracer's own save code that tests/test_skip_clt_formats.py does not cover
  (plain ReLU transcoder sets, ReLU cross-layer transcoders) load in ours with the same codes and outputs as
  circuit-tracer's own modules and its own loader.
"""

from __future__ import annotations

import functools
import gzip
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from circuits import export
from circuits.dictionaries import load_folder

ct = pytest.importorskip("circuit_tracer", reason="circuit-tracer is not installed (optional: pip install --no-deps "
                                                   "circuit-tracer==0.5.0 einops pydantic; see docs/interop.md)")

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "When Mary and John went to the store, John gave a drink to"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """circuit-tracer JSON files: one written by `circuits trace --circuit-tracer-json` (with node influence), one
    from a shipped gallery graph with pins and a supernode added (qParams)."""
    from circuits.cli import main

    out = tmp_path_factory.mktemp("ct")
    assert main(["trace", PROMPT, "--target", "Mary", "--contrast", "John", "--quiet",
                 "--circuit-tracer-json", str(out / "trace-ioi.json")]) == 0
    g = export.read_json(ROOT / "data" / "graphs" / "ioi_abba.json")
    feats = [n for n in g.nodes if n.kind.endswith("_feature")]
    g.metadata["ui"] = {"pins": [feats[0].to_json()],
                        "supernodes": [{"name": "pair", "nodes": [n.to_json() for n in feats[1:3]]}]}
    export.write_circuit_tracer(g, out / "gallery-ioi.json")
    return {"trace": out / "trace-ioi.json", "gallery": out / "gallery-ioi.json"}


@pytest.mark.parametrize("which", ["trace", "gallery"])
def test_export_validates_in_circuit_tracer_graph_models(exports, which):
    from circuit_tracer.frontend.graph_models import Link, Model, Node

    text = exports[which].read_text()
    model = Model.model_validate_json(text)
    data = json.loads(text)
    assert model.model_dump() == data  # nothing dropped, renamed or coerced by their models
    assert all(Node(**n).model_dump() == n for n in data["nodes"])
    assert all(Link(**link).model_dump() == link for link in data["links"])
    kinds = {n.feature_type for n in model.nodes}
    assert {"embedding", "logit", "cross layer transcoder", "attention sae"} <= kinds
    if which == "gallery":
        ids = {n.node_id for n in model.nodes}
        assert model.qParams.pinnedIds and set(model.qParams.pinnedIds) <= ids
        assert model.qParams.supernodes[0][0] == "pair" and set(model.qParams.supernodes[0][1:]) <= ids
    else:
        assert any(n.influence for n in model.nodes)  # the trace command passes node influence


def _frontend_checks(data: dict) -> None:
    """What circuit-tracer's frontend (attribution_graph/util-cg.js formatData) relies on."""
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(set(ids)) == len(ids), "node ids must be unique (the frontend keys nodes by node_id)"
    known = set(ids)
    assert all(link["source"] in known and link["target"] in known for link in data["links"])
    assert any(n["feature_type"] == "logit" for n in data["nodes"])
    n_tok = len(data["metadata"]["prompt_tokens"])
    assert all(0 <= n["ctx_idx"] < n_tok for n in data["nodes"])
    assert all(n["layer"] == "E" or n["layer"].isdigit() for n in data["nodes"])  # streamIdx = +layer + 1


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=20) as r:
        body = r.read()
        if r.headers.get("Content-Encoding") == "gzip":  # their server gzips responses over 1 MB
            body = gzip.decompress(body)
        return r.status, body


def test_served_by_circuit_tracer_local_server(exports, tmp_path):
    from circuit_tracer.frontend import local_server
    from circuit_tracer.frontend.graph_models import Model
    from circuit_tracer.frontend.utils import add_graph_metadata

    data_dir = tmp_path / "graphs"
    data_dir.mkdir()
    for path in exports.values():  # laid out as their create_graph_files does: <slug>.json + graph-metadata.json
        (data_dir / path.name).write_bytes(path.read_bytes())
        add_graph_metadata(Model.model_validate_json(path.read_text()).metadata.model_dump(), str(data_dir))
    # their request handler and server class (local_server.serve binds every interface; we bind 127.0.0.1, port 0)
    handler = functools.partial(local_server.CircuitGraphHandler, frontend_dir=local_server.DEFAULT_FRONTEND_DIR,
                                data_dir=str(data_dir))
    httpd = local_server.ReusableTCPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    server = local_server.Server(httpd, thread)
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        status, page = _get(f"{base}/index.html")
        assert status == 200 and b"Attribution Graphs" in page and b"graph-metadata.json" in page
        status, listing = _get(f"{base}/data/graph-metadata.json")
        slugs = {g["slug"]: g for g in json.loads(listing)["graphs"]}
        assert status == 200 and set(slugs) == {p.stem for p in exports.values()}
        for path in exports.values():
            status, body = _get(f"{base}/graph_data/{path.stem}.json")
            assert status == 200 and body == path.read_bytes()
            data = json.loads(body)
            Model.model_validate(data)
            _frontend_checks(data)
            assert slugs[path.stem]["node_threshold"] == data["metadata"]["node_threshold"]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(f"{base}/graph_data/missing.json")
    finally:
        server.stop()


# ---- transcoder folders written by circuit-tracer's own save code (beyond tests/test_skip_clt_formats.py) ------


def _config_yaml(folder: Path, kind: str) -> None:
    (folder / "config.yaml").write_text(f"model_kind: {kind}\nmodel_name: tiny\nfeature_input_hook: "
                                        "ln2.hook_normalized\nfeature_output_hook: hook_mlp_out\n")


def test_relu_transcoder_set_written_by_circuit_tracer(tmp_path):
    import torch.nn.functional as F
    from circuit_tracer.transcoder.single_layer_transcoder import (
        SingleLayerTranscoder,
        TranscoderSet,
        load_transcoder_set,
    )

    torch.manual_seed(0)
    theirs = {}
    for i in range(3):
        tc = SingleLayerTranscoder(16, 40, F.relu, i, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            for p in tc.parameters():
                p.normal_(0, 0.3)
        theirs[i] = tc
    folder = tmp_path / "ct"
    TranscoderSet(theirs, "ln2.hook_normalized", "hook_mlp_out").to_safetensors(str(folder))
    _config_yaml(folder, "transcoder_set")
    ours = load_folder(folder)
    assert [d.cfg.name for d in ours] == ["transcoder_L0", "transcoder_L1", "transcoder_L2"]
    reloaded = load_transcoder_set({i: str(folder / f"layer_{i}.safetensors") for i in range(3)}, "tiny",
                                   "ln2.hook_normalized", "hook_mlp_out", device=torch.device("cpu"),
                                   lazy_encoder=False, lazy_decoder=False)
    x = torch.randn(3, 12, 16)
    with torch.no_grad():
        for i in range(3):
            d = ours.transcoder(i)
            assert d.cfg.activation == "relu" and not d.cfg.skip
            codes, out = d.encode(x[i]), d(x[i]).output
            assert (codes > 0).any() and (codes == 0).any()
            for module in (theirs[i], reloaded[i]):
                # bit-identical on this machine; F.linear fuses the bias into the product (addmm), ours adds it
                # after, which need not round alike everywhere: rounding only
                assert _rel(codes, module.encode(x[i])) <= 1e-6
                assert _rel(out, module(x[i])) <= 1e-6
            assert torch.equal((codes > 0), theirs[i].encode(x[i]) > 0)  # the same features fire


def test_relu_clt_written_by_circuit_tracer(tmp_path):
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder as TheirCLT

    torch.manual_seed(1)
    theirs = TheirCLT(3, 24, 16, activation_function="relu", lazy_decoder=False, device=torch.device("cpu"),
                      dtype=torch.float32)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
    folder = tmp_path / "clt"
    theirs.to_safetensors(str(folder))
    _config_yaml(folder, "cross_layer_transcoder")
    ours = load_folder(folder)
    assert ours.clts[0].cfg.activation == "relu"
    x = torch.randn(3, 9, 16)
    with torch.no_grad():
        codes = [d.encode(xi) for d, xi in zip(ours, x, strict=True)]
        upstream = dict(enumerate(codes))
        outs = [d.reconstruct(c, xi, upstream) for d, c, xi in zip(ours, codes, x, strict=True)]
        their_codes, their_outs = theirs.encode(x), theirs(x)
    assert any((c > 0).any() for c in codes)
    assert _rel(torch.stack(codes), their_codes) <= 1e-6 and _rel(torch.stack(outs), their_outs) <= 1e-6
