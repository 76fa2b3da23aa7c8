"""Labels shared by the visual formats, and DOT for Graphviz (the package's docstring describes the drawing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import torch

from circuits.export.graph_json import GraphFileError, _atomic_write, node_id
from circuits.graph import Graph, Node


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
