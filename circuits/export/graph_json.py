"""Our lossless graph JSON: the schema check, graph ↔ dict, and atomic reads and writes (the package's
docstring describes the format)."""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from circuits.errors import CircuitsError
from circuits.graph import Graph, Node

SCHEMA_VERSION = 4
#: 3 added the optional metadata.qk; 4 the optional nodes.bos_constant, paths and metadata.bos_folded. Each older
#: file is a valid file of the newer versions (nothing was removed or renamed).
READABLE_VERSIONS = (2, 3, 4)
FORMAT = "circuits-graph"
SCHEMA_PATH = Path(__file__).parent.parent / "schemas" / "graph.schema.json"


class GraphFileError(CircuitsError):
    """A graph file is malformed, foreign, or cannot be written."""


def node_id(node: Node) -> str:
    """The node's canonical id (`circuits.ids`: ``M3#1184@14``), also the key of UI labels in graph files."""
    from circuits.ids import format_node

    return format_node(node)


def _canonical_labels(ui: dict) -> dict:
    """UI state read from a file with its label keys in the canonical form: files written before the canonical
    id keyed labels by ``kind:layer:pos:index``; those keys are converted, unknown keys are kept as they are."""
    from circuits.ids import NodeIdError, parse_id

    labels = ui.get("labels") or {}
    if not labels:
        return ui
    out = {}
    for key, text in labels.items():
        try:
            got = parse_id(key)
        except NodeIdError:
            got = None
        out[node_id(got) if isinstance(got, Node) else key] = text
    return {**ui, "labels": out}




def to_dict(graph: Graph) -> dict:
    """The JSON object of `graph` (schema_version `SCHEMA_VERSION`)."""
    heads = None
    if graph.head_weights is not None and graph.n_edges:
        has = graph.head_weights.abs().sum(1) > 0
        idx = torch.nonzero(has).flatten()
        heads = {"edge": idx.tolist(), "weights": graph.head_weights[idx].tolist()}
    meta = {k: v for k, v in graph.metadata.items() if k not in ("ui", "paths")}
    meta.setdefault("model", "unknown")
    meta["dtype"] = str(graph.edge_weight.dtype).removeprefix("torch.")
    out = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "metadata": meta,
        "nodes": {
            "kind": [n.kind for n in graph.nodes], "layer": [n.layer for n in graph.nodes],
            "pos": [n.pos for n in graph.nodes], "index": [n.index for n in graph.nodes],
            "activation": graph.activations.tolist(), "pre_activation": graph.pre_activations.tolist(),
            "constant": graph.constants.tolist(), "dropped": graph.dropped.tolist(),
            "target_weight": graph.target_weights.tolist(),
        },
        "edges": {"source": graph.edge_index[1].tolist(), "target": graph.edge_index[0].tolist(),
                  "weight": graph.edge_weight.tolist()},
    }
    if heads is not None:
        out["edges"]["heads"] = heads
    if bool((graph.bos_constants != 0).any()):
        out["nodes"]["bos_constant"] = graph.bos_constants.tolist()
    labels = graph.metadata.get("ui", {}).get("labels", {})
    if labels:  # a per-node label column for other tools (ui.labels stays the source of truth)
        out["nodes"]["label"] = [labels.get(node_id(n)) for n in graph.nodes]
    if graph.metadata.get("ui"):
        out["ui"] = graph.metadata["ui"]
    if graph.metadata.get("paths"):
        out["paths"] = graph.metadata["paths"]
    return out


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(schema)


def _where(path) -> str:
    parts = []
    for p in path:
        parts.append(f"[{p}]" if isinstance(p, int) else (("." if parts else "") + str(p)))
    return "".join(parts) or "(top level)"


def validate(data, source: str = "graph") -> None:
    """Raise GraphFileError naming the first bad field, if `data` is not a valid circuits graph."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        if not isinstance(data, dict):
            what = f"a JSON {type(data).__name__}, not an object"
        elif "format" in data or "schema" in data:
            what = f"format {data.get('format', data.get('schema'))!r}"
        else:
            what = "it has no 'format' field"
        raise GraphFileError(f"{source}: not a circuits graph file ({what}); write one with "
                             "`circuits trace ... --json FILE`")
    if data.get("schema_version") not in READABLE_VERSIONS:
        raise GraphFileError(f"{source}: schema_version {data.get('schema_version')!r} is not supported "
                             f"(this version reads {', '.join(map(str, READABLE_VERSIONS))})")
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        raise GraphFileError(f"{source}: {_where(error.absolute_path)}: {error.message}")
    nodes, edges = data["nodes"], data["edges"]
    n = len(nodes["kind"])
    for key, values in nodes.items():
        if len(values) != n:
            raise GraphFileError(f"{source}: nodes.{key} has {len(values)} entries but nodes.kind has {n}")
    m = len(edges["weight"])
    for key in ("source", "target"):
        if len(edges[key]) != m:
            raise GraphFileError(f"{source}: edges.{key} has {len(edges[key])} entries but edges.weight has {m}")
        bad = next((i for i, v in enumerate(edges[key]) if v >= n), None)
        if bad is not None:
            raise GraphFileError(f"{source}: edges.{key}[{bad}] = {edges[key][bad]} is not a node (there are {n})")
    heads = edges.get("heads")
    if heads is not None:
        if len(heads["edge"]) != len(heads["weights"]):
            raise GraphFileError(f"{source}: edges.heads.edge and edges.heads.weights differ in length")
        h = data["metadata"]["n_heads"]
        bad = next((i for i, w in enumerate(heads["weights"]) if len(w) != h), None)
        if bad is not None:
            raise GraphFileError(f"{source}: edges.heads.weights[{bad}] has {len(heads['weights'][bad])} "
                                 f"numbers, expected n_heads = {h}")


def from_dict(data: dict, source: str = "graph") -> Graph:
    validate(data, source)
    dtype = getattr(torch, data["metadata"]["dtype"])
    nodes = data["nodes"]
    table = tuple(Node(k, la, p, i) for k, la, p, i in zip(nodes["kind"], nodes["layer"], nodes["pos"],
                                                            nodes["index"], strict=True))
    edges = data["edges"]
    m = len(edges["weight"])
    head_weights = torch.zeros(m, data["metadata"]["n_heads"], dtype=dtype)
    if edges.get("heads"):
        head_weights[torch.tensor(edges["heads"]["edge"], dtype=torch.long)] = torch.tensor(
            edges["heads"]["weights"], dtype=dtype).reshape(-1, data["metadata"]["n_heads"])
    meta = dict(data["metadata"])
    if data.get("ui"):
        meta["ui"] = _canonical_labels(data["ui"])
    if data.get("paths"):
        meta["paths"] = data["paths"]

    def t(key):
        return torch.tensor(nodes[key], dtype=dtype)

    try:
        return Graph(table, t("activation"), torch.tensor([edges["target"], edges["source"]], dtype=torch.long
                                                          ).reshape(2, m),
                     torch.tensor(edges["weight"], dtype=dtype), head_weights, meta, constants=t("constant"),
                     pre_activations=t("pre_activation"), dropped=t("dropped"), target_weights=t("target_weight"),
                     bos_constants=t("bos_constant") if "bos_constant" in nodes else None)
    except ValueError as e:
        raise GraphFileError(f"{source}: {e}") from None


def _atomic_write(path: Path, write) -> Path:
    """Call write(tmp_path) then rename onto `path`; clear errors for unwritable places."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise GraphFileError(f"cannot write {path}: folder {folder} does not exist; create it or choose another path")
    if path.is_dir():
        raise GraphFileError(f"cannot write {path}: it is a folder; give a file name inside it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as e:
        raise GraphFileError(f"cannot write {path}: {e.strerror}; choose a writable path") from None
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except OSError as e:
        raise GraphFileError(f"cannot write {path}: {e.strerror}; choose a writable path") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(graph: Graph, path: Path) -> Path:
    # serialised inside the write, after `_atomic_write` checked the place: a full graph takes seconds and 100s of MB
    return _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(to_dict(graph))))


def loads(data: bytes | str, source: str = "graph") -> Graph:
    """A graph from the bytes (or text) of a JSON file; every defect is a `GraphFileError` naming `source`:
    undecodable bytes, invalid JSON, nesting too deep for the parser, or a file that is not a circuits graph."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        parsed = json.loads(text)
    except UnicodeDecodeError as e:
        raise GraphFileError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start}); is it a graph written by "
                             "`circuits trace --json`?") from None
    except json.JSONDecodeError as e:
        ended = e.pos >= len(text.rstrip()) and e.msg.startswith(("Expecting", "Unterminated"))
        if text.lstrip().startswith("{") and (ended or e.msg.startswith("Unterminated")):
            raise GraphFileError(f"{source}: the JSON stops before its end (at character {e.pos}): the file is cut "
                                 "off, e.g. copied or written only in part; write it again with `circuits trace "
                                 "--json`") from None
        raise GraphFileError(f"{source}: not valid JSON ({e}); is it a graph written by `circuits trace --json`?"
                             ) from None
    except RecursionError:
        raise GraphFileError(f"{source}: JSON nested too deeply to read; a graph file is a flat object written "
                             "by `circuits trace --json`") from None
    try:
        return from_dict(parsed, source)
    except RecursionError:
        raise GraphFileError(f"{source}: JSON nested too deeply; not a circuits graph file") from None


def read_json(path: Path) -> Graph:
    """Read a graph file written by `write_json` (errors name the file and what is wrong with it)."""
    path = Path(path)
    if not path.exists():
        raise GraphFileError(f"{path} does not exist")
    if path.is_dir():
        raise GraphFileError(f"{path} is a folder; give a graph file (written by `circuits trace --json FILE`)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise GraphFileError(f"cannot read {path}: {e.strerror}") from None
    from circuits.inputs import KIND_NAMES, file_kind

    kind = file_kind(path)
    if kind not in (None, "circuits-graph", "json", "text", "binary"):  # another of our outputs, a picture, a database
        raise GraphFileError(f"{path} is {KIND_NAMES[kind]}, not a circuits graph file; give the file written by "
                             "`circuits trace --json FILE`")
    return loads(data, str(path))
