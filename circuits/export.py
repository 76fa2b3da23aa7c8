"""Graph files: our lossless JSON (with a JSON Schema), DOT for Graphviz, GraphML, and circuit-tracer JSON.

* **Our JSON** (`circuits/schemas/graph.schema.json`, ``schema_version`` 4; versions 2 and 3 are still read)
  stores the node table and the edges as parallel arrays (compact enough for full graphs with millions of edges),
  per-head parts only for edges into attention features, metadata (model, dictionaries, tokens, targets, method,
  pruning thresholds, scores; since version 3 optionally ``qk``, the QK tables of `trace --qk`; since version 4
  ``bos_folded``), the UI state (pins, supernodes — manual and automatic —, labels) and, since version 4, the
  BOS part of each constant (``nodes.bos_constant``, when BOS nodes were folded) and the top paths (``paths``). `read_json` validates against the schema and then checks the arrays agree (same lengths,
  edge ends inside the node table), naming the offending field. Graph → JSON → graph is exact.
* **DOT**: one rank per sublayer (tokens at the bottom, then attention L / MLP L, logits on top), nodes ordered
  by position left to right, fill colour by kind, edges blue (positive) or red (negative) with width ∝ |weight|.
  Only the strongest `DOT_MAX_EDGES` edges are drawn (Graphviz cannot lay out tens of thousands); the caption says
  how many were left out.
* **GraphML** through networkx, every node and edge attribute included (per-head parts as a JSON string).
* **circuit-tracer / Neuronpedia JSON** (their field names and types). That format has no attention features:
  they are exported with ``feature_type = "attention sae"`` and node ids ``"A{layer}_{feature}_{pos}"``; their
  errors with ``feature_type = "attention reconstruction error"`` and ids ``"A0_{layer}_{pos}"``. Its frontend
  keys a node by ``{layer}_{feature}_{ctx_idx}``, so an attention node's ``feature`` field is shifted out of the
  transcoders' range: ``CT_ATTN_FEATURE_OFFSET + index`` for attention features, ``-2`` for attention errors
  (``-1`` for MLP errors) — the node id keeps the plain index; a contrast
  target is a logit node whose ``clerp`` names both tokens. Our JSON stays the lossless format.

All writers write to a temporary file and rename it, so an existing file is never left half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
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
SCHEMA_PATH = Path(__file__).parent / "schemas" / "graph.schema.json"


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


# -- our JSON --------------------------------------------------------------------------------------------------


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
        found = data.get("format", data.get("schema", "no 'format' field")) if isinstance(data, dict) else type(
            data).__name__
        raise GraphFileError(f"{source}: not a circuits graph file (format: {found!r}); write one with "
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
    data = to_dict(graph)
    return _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data)))


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
    return loads(data, str(path))


# -- labels shared by the visual formats -----------------------------------------------------------------------


def target_label(target: dict) -> str:
    """How a target of ``metadata["targets"]`` is printed: a logit as its quoted token (``' Mary'``); a contrast's
    label already names both tokens quoted (``' Mary' − ' John'``; an aggregated study's names roles, ``IO − S``)
    and is printed as it is, as is a feature target's."""
    label = str(target.get("label", "?"))
    if (target.get("node") or ["logit"])[0] == "logit" and not label.startswith(("'", '"')):
        return repr(label)
    return label


def node_label(graph: Graph, node: Node) -> str:
    """Display label: a UI label when set, else a short description with the token at the node's position."""
    labels = graph.metadata.get("ui", {}).get("labels", {})
    if node_id(node) in labels:
        return labels[node_id(node)]
    toks = graph.metadata.get("token_strings", [])
    tok = toks[node.pos] if 0 <= node.pos < len(toks) else "?"
    if node.kind == "token":
        return f"{tok!r}@{node.pos}"
    if node.kind in ("logit", "logit_diff"):
        target = next((t for t in graph.metadata.get("targets", []) if Node.from_json(t["node"]) == node), None)
        return f"logit {target_label(target)}" if target else f"logit {node.index}"
    return f"{node_id(node)} {tok!r}"


# -- DOT -------------------------------------------------------------------------------------------------------

FILL = {"token": "#e0e0e0", "attn_feature": "#9ecae1", "mlp_feature": "#a1d99b", "attn_error": "#c6dbef",
        "mlp_error": "#c7e9c0", "logit": "#fdae6b", "logit_diff": "#fdae6b"}


#: Graphviz lays out a few hundred edges in seconds but tens of thousands take hours: DOT files (and the SVG / PNG
#: rendered from them) draw the strongest edges only, and say so in the drawing's caption.
DOT_MAX_EDGES = 400


def _drawable(graph: Graph, max_edges: int) -> tuple[Graph, int]:
    """The graph restricted to its `max_edges` strongest edges (tokens and targets kept); and how many were cut."""
    if graph.n_edges <= max_edges:
        return graph, 0
    keep_e = torch.zeros(graph.n_edges, dtype=torch.bool)
    keep_e[graph.edge_weight.abs().argsort(descending=True)[:max_edges]] = True
    keep_n = torch.tensor([n.kind in ("token", "logit", "logit_diff") for n in graph.nodes]) | (graph.target_weights > 0)
    keep_n[graph.edge_index[:, keep_e].flatten()] = True
    return graph.subgraph(keep_n, keep_e), graph.n_edges - max_edges


def to_dot(graph: Graph, max_width: float = 6.0, max_edges: int = DOT_MAX_EDGES) -> str:
    """Graphviz DOT source: sublayer ranks bottom to top, positions left to right (strongest `max_edges` edges)."""
    import graphviz

    graph, cut = _drawable(graph, max_edges)

    dot = graphviz.Digraph("circuit", graph_attr={"rankdir": "BT", "newrank": "true", "splines": "true",
                                                  "nodesep": "0.15", "ranksep": "0.6"},
                           node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                                      "fontsize": "10"})
    if cut:
        dot.attr(label=f"strongest {graph.n_edges} edges drawn; {cut} weaker edges omitted (the JSON has them all)",
                 labelloc="t", fontsize="10")
    by_rank: dict[int, list[int]] = {}
    for i, node in enumerate(graph.nodes):
        by_rank.setdefault(node.sublayer_rank, []).append(i)
    for rank in sorted(by_rank):
        rows = sorted(by_rank[rank], key=lambda i: (graph.nodes[i].pos, graph.nodes[i].index))
        with dot.subgraph(name=f"rank_{rank}") as sub:
            sub.attr(rank="same")
            for i in rows:
                node = graph.nodes[i]
                sub.node(f"n{i}", node_label(graph, node), fillcolor=FILL[node.kind],
                         tooltip=f"{node_id(node)} activation {float(graph.activations[i]):.4g}")
            for a, b in zip(rows, rows[1:], strict=False):  # keep positions in order within a rank
                sub.edge(f"n{a}", f"n{b}", style="invis")
    ranks = sorted(by_rank)
    for lower, upper in zip(ranks, ranks[1:], strict=False):  # stack the sublayers in forward order
        dot.edge(f"n{by_rank[lower][0]}", f"n{by_rank[upper][0]}", style="invis", weight="0")
    w = graph.edge_weight
    scale = float(w.abs().max()) if graph.n_edges else 1.0
    for (t, s), weight in zip(graph.edge_index.T.tolist(), w.tolist(), strict=True):
        dot.edge(f"n{s}", f"n{t}", color="#2166ac" if weight >= 0 else "#b2182b",
                 penwidth=f"{0.3 + max_width * abs(weight) / scale:.2f}", tooltip=f"{weight:.4g}",
                 constraint="true")
    return dot.source


def write_dot(graph: Graph, path: Path) -> Path:
    source = to_dot(graph)
    return _atomic_write(path, lambda tmp: tmp.write_text(source))


def render(graph: Graph, path: Path, fmt: str) -> Path:
    """Render with Graphviz's `dot` to SVG or PNG."""
    if fmt not in ("svg", "png"):
        raise GraphFileError(f"cannot render to {fmt!r}; use svg or png")
    return render_source(to_dot(graph), path, fmt)


def render_source(source: str, path: Path, fmt: str, program: str = "dot", args: tuple[str, ...] = (),
                  timeout: float = 600) -> Path:
    """Run Graphviz `program` on DOT `source` to write `path` as SVG or PNG (atomically); a missing Graphviz or a
    failed layout is one `GraphFileError`. Shared by the full-graph drawing and the supernode picture
    (`circuits.picture`, which lays out with ``neato -n2``)."""
    if fmt not in ("svg", "png"):
        raise GraphFileError(f"cannot render to {fmt!r}; use svg or png")
    exe = shutil.which(program)
    if exe is None:
        raise GraphFileError(f"Graphviz `{program}` is not installed; install Graphviz (e.g. apt-get install graphviz) "
                             "or write --dot and render elsewhere")

    def write(tmp: Path) -> None:
        proc = subprocess.run([exe, *args, f"-T{fmt}", "-o", str(tmp)], input=source, text=True,
                              capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            raise GraphFileError(f"{program} failed rendering {path}: {proc.stderr.strip()[:300]}")

    return _atomic_write(path, write)


# -- GraphML ---------------------------------------------------------------------------------------------------


def write_graphml(graph: Graph, path: Path) -> Path:
    """GraphML through networkx: node attributes kind, layer, pos, index, activation, pre_activation, constant,
    target_weight, label; edge attributes weight and (attention edges) heads as a JSON list."""
    import networkx as nx

    g = graph.to_networkx()
    for i, node in enumerate(graph.nodes):
        attrs = g.nodes[i]
        attrs.update(pre_activation=float(graph.pre_activations[i]), constant=float(graph.constants[i]),
                     target_weight=float(graph.target_weights[i]), label=node_label(graph, node),
                     node_id=node_id(node))
    if graph.head_weights is not None:
        has = graph.head_weights.abs().sum(1) > 0
        for k in torch.nonzero(has).flatten().tolist():
            t, s = graph.edge_index[:, k].tolist()
            g.edges[s, t]["heads"] = json.dumps(graph.head_weights[k].tolist())
    g.graph.update(model=str(graph.metadata.get("model", "")), prompt=str(graph.metadata.get("prompt", "")),
                   tokens=json.dumps(graph.metadata.get("tokens", [])))
    return _atomic_write(path, lambda tmp: nx.write_graphml(g, str(tmp)))


# -- circuit-tracer / Neuronpedia JSON -------------------------------------------------------------------------


def _ct_node_id(node: Node, n_layers: int) -> str:
    if node.kind == "mlp_feature":
        return f"{node.layer}_{node.index}_{node.pos}"
    if node.kind == "attn_feature":
        return f"A{node.layer}_{node.index}_{node.pos}"
    if node.kind == "mlp_error":
        return f"0_{node.layer}_{node.pos}"
    if node.kind == "attn_error":
        return f"A0_{node.layer}_{node.pos}"
    if node.kind == "token":
        return f"E_{node.index}_{node.pos}"
    return f"{n_layers + 1}_{node.index}_{node.pos}"


#: circuit-tracer's frontend keys nodes by layer, ``feature`` and position: attention features get this offset added
#: to their ``feature`` field (never to their node id) so they cannot collide with a transcoder feature.
CT_ATTN_FEATURE_OFFSET = 10_000_000

CT_FEATURE_TYPES = {"mlp_feature": "cross layer transcoder", "attn_feature": "attention sae",
                    "mlp_error": "mlp reconstruction error", "attn_error": "attention reconstruction error",
                    "token": "embedding", "logit": "logit", "logit_diff": "logit"}


def _json_id(value) -> str:
    """The canonical id of a node stored as ``[kind, layer, pos, index]`` in the UI state."""
    return node_id(Node.from_json(value))


def to_circuit_tracer(graph: Graph, slug: str = "circuits-graph", influence=None) -> dict:
    """The graph in circuit-tracer's frontend JSON layout (see the module docstring for the mapping)."""
    meta = graph.metadata
    n_layers = int(meta.get("n_layers", 0))
    n_pos = len(meta.get("tokens", [])) or (max(n.pos for n in graph.nodes) + 1)
    probs = {tuple(t["node"]): t.get("probability") for t in meta.get("targets", [])}
    nodes = []
    for i, node in enumerate(graph.nodes):
        is_logit = node.kind in ("logit", "logit_diff")
        layer = "E" if node.kind == "token" else (str(n_layers + 1) if is_logit else str(node.layer))
        if node.kind == "attn_feature":
            feature = CT_ATTN_FEATURE_OFFSET + node.index
        elif node.kind == "mlp_feature" or node.kind == "token" or is_logit:
            feature = node.index
        else:
            feature = -2 if node.kind == "attn_error" else -1
        nid = _ct_node_id(node, n_layers)
        p = probs.get(tuple(node.to_json()))
        clerp = node_label(graph, node)
        if is_logit:
            clerp = f'Output "{clerp.removeprefix("logit ")}"' + (f" (p={p:.3f})" if p is not None else "")
        nodes.append({
            "node_id": nid, "feature": int(feature), "layer": layer, "ctx_idx": int(node.pos),
            "feature_type": CT_FEATURE_TYPES[node.kind], "token_prob": float(p) if p is not None else 0.0,
            "is_target_logit": bool(is_logit), "run_idx": 0, "reverse_ctx_idx": int(n_pos - 1 - node.pos),
            "jsNodeId": f"{nid.rsplit('_', 1)[0]}-0" if node.kind.endswith("_feature") else nid,
            "clerp": clerp, "influence": float(influence[i]) if influence is not None else 0.0,
            "activation": float(graph.activations[i]),
        })
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(w)}
             for (t, s), w in zip(graph.edge_index.T.tolist(), graph.edge_weight.tolist(), strict=True)]
    ui = meta.get("ui", {})
    to_ct = {node_id(n): nodes[i]["node_id"] for i, n in enumerate(graph.nodes)}
    pruning = meta.get("pruning", {})
    return {
        "metadata": {"slug": slug, "scan": str(meta.get("model", "unknown")),
                     "transcoder_list": list(meta.get("dictionaries", [])),
                     "prompt_tokens": list(meta.get("token_strings", [])), "prompt": str(meta.get("prompt") or ""),
                     "node_threshold": float(pruning.get("node_threshold", 0.8)), "schema_version": 1},
        "qParams": {"pinnedIds": [to_ct[k] for k in (_json_id(p) for p in ui.get("pins", [])) if k in to_ct],
                    "supernodes": [[s["name"]] + [to_ct[k] for k in (_json_id(n) for n in s["nodes"]) if k in to_ct]
                                   for s in ui.get("supernodes", [])],
                    "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def write_circuit_tracer(graph: Graph, path: Path, influence=None) -> Path:
    data = to_circuit_tracer(graph, slug=Path(path).stem, influence=influence)
    return _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data)))


# -- summaries and diffs ---------------------------------------------------------------------------------------


@dataclass
class GraphDiff:
    added_nodes: list[Node]
    removed_nodes: list[Node]
    added_edges: list[tuple[Node, Node, float]]  # (source, target, weight in B)
    removed_edges: list[tuple[Node, Node, float]]  # (source, target, weight in A)
    changed_edges: list[tuple[Node, Node, float, float]]  # (source, target, weight A, weight B)


def _edge_map(graph: Graph) -> dict[tuple[Node, Node], float]:
    return {(graph.nodes[s], graph.nodes[t]): w
            for (t, s), w in zip(graph.edge_index.T.tolist(), graph.edge_weight.tolist(), strict=True)}


def diff(a: Graph, b: Graph, rel_tol: float = 0.1) -> GraphDiff:
    """Nodes and edges that appear, vanish, or change weight by more than `rel_tol` (relative) from A to B.

    Nodes are matched by identity (kind, layer, position, index): compare graphs of prompts with the same token
    positions (e.g. ABBA against BABA with names swapped)."""
    na, nb = set(a.nodes), set(b.nodes)
    ea, eb = _edge_map(a), _edge_map(b)
    changed = [(s, t, wa, eb[(s, t)]) for (s, t), wa in ea.items() if (s, t) in eb
               and abs(eb[(s, t)] - wa) > rel_tol * max(abs(wa), abs(eb[(s, t)]))]
    def key(e):
        return (-abs(e[2]))
    return GraphDiff(sorted(nb - na), sorted(na - nb),
                     sorted([(s, t, w) for (s, t), w in eb.items() if (s, t) not in ea], key=key),
                     sorted([(s, t, w) for (s, t), w in ea.items() if (s, t) not in eb], key=key),
                     sorted(changed, key=lambda e: -abs(e[3] - e[2])))
