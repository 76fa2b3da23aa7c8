"""Pictures sized to a circuit: the supernode graph drawn on a grid of token positions × layers (DOT, SVG, PNG).

A pruned graph of a short prompt has hundreds of nodes; drawn one box each it is a strip thousands of pixels wide
that nobody can read. The picture instead draws at most ``max_boxes`` boxes (40 by default, the prompt's tokens and
the target included):

1. **Supernodes**: the graph's ``ui.supernodes`` (automatic ones from `circuits.supernodes.auto_supernodes` are
   computed when the graph has none), and the error nodes of each position merged into one "errors" box (error
   nodes have no inputs, so merging them keeps the drawing acyclic); the graph is contracted with edges summed
   (`circuits.supernodes.contract`).
2. **The strongest boxes**: every token and target, then the other boxes in order of influence on the target in
   the supernode graph (`circuits.pruning.influence`) until ``max_boxes`` (but at least ``min_features`` of them:
   a prompt of more than 24 tokens goes over 40 boxes rather than draw no feature), at most ``max_per_cell`` side
   by side in one cell (so no row grows wider than the page); boxes left without a drawn edge towards the target are
   dropped.
3. **Layout**: one column per token position (the tokens along the bottom, in prompt order), one row per sublayer
   (attention L, MLP L; the target on top; each box names its layer: ``A3``, ``M0 ×4``); boxes of one cell side
   by side. Coordinates are computed here and given to Graphviz's ``neato -n2``, which only routes the edges, so
   the DOT file has exactly one node per box.
4. **Edges**: the supernode graph's edges between drawn boxes whose share of their target box's drawn input is at
   least ``min_share``; width ∝ that share, blue when the summed weight excites the target, red when it inhibits.
5. A **caption** with the prompt, the target, the graph's replacement and completeness scores and what was left
   out, and a **legend** of the box colours and edge encodings.

`detail="full"` in the CLI draws every pruned node instead (`circuits.export.to_dot`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from circuits.errors import ConfigError
from circuits.graph import ERROR_KINDS, FEATURE_KINDS, Graph, Node
from circuits.supernodes import Contracted, auto_supernodes, contract

FILL = {"token": "#e0e0e0", "attn_feature": "#9ecae1", "mlp_feature": "#a1d99b", "attn_error": "#f2f2f2",
        "mlp_error": "#f2f2f2", "logit": "#fdae6b", "logit_diff": "#fdae6b"}
GROUP_FILL = {"attn_feature": "#6baed6", "mlp_feature": "#74c476"}
POINTS_PER_INCH = 72.0


@dataclass(frozen=True)
class PictureConfig:
    """What the picture draws (see the module docstring)."""

    max_boxes: int = 40
    max_per_cell: int = 3  # boxes side by side in one (sublayer, position) cell, at most
    min_features: int = 16  # boxes beyond tokens and targets, at least (long prompts exceed max_boxes by this)
    min_share: float = 0.05  # edges below this share of their target box's drawn input are not drawn
    max_edges: int = 80
    width_px: int = 1600  # the PNG is at most this wide
    dpi: int = 96

    def __post_init__(self):
        if self.max_boxes < 2:
            raise ConfigError(f"max_boxes must be at least 2, got {self.max_boxes}")
        if not 0 <= self.min_share < 1:
            raise ConfigError(f"min_share must be in [0, 1), got {self.min_share}")


@dataclass
class Picture:
    """The boxes and edges chosen for a picture (before layout)."""

    contracted: Contracted
    boxes: list[int]  # rows of the contracted graph drawn
    edges: list[tuple[int, int, float, float]]  # (source row, target row, summed weight, share of target's input)
    n_candidates: int  # non-token, non-target nodes of the supernode graph
    n_members: int  # feature and error nodes of the member graph behind them


def _error_groups(graph: Graph, taken: set[Node]) -> list[dict]:
    by_pos: dict[int, list[Node]] = {}
    for node in graph.nodes:
        if node.kind in ERROR_KINDS and node not in taken:
            by_pos.setdefault(node.pos, []).append(node)
    return [{"name": f"errors @{pos}", "nodes": [n.to_json() for n in nodes], "errors": True}
            for pos, nodes in sorted(by_pos.items()) if len(nodes) > 1]


def choose(graph: Graph, config: PictureConfig | None = None) -> Picture:
    """Steps 1, 2 and 4 of the module docstring: the contracted graph and what of it is drawn."""
    from circuits.pruning import influence

    config = config or PictureConfig()
    supernodes = list(graph.metadata.get("ui", {}).get("supernodes", []))
    if not any(s.get("auto") for s in supernodes):
        supernodes += auto_supernodes(graph)
    taken = {Node.from_json(v) for s in supernodes for v in s["nodes"]}
    c = contract(graph, supernodes + _error_groups(graph, taken))
    g = c.graph
    inf = influence(g)
    fixed = [i for i, n in enumerate(g.nodes) if n.kind == "token" or float(g.target_weights[i]) > 0]
    others = [i for i in range(g.n_nodes) if i not in set(fixed)]
    others.sort(key=lambda i: (-float(inf[i]), i))
    budget = max(config.min_features, config.max_boxes - len(fixed))
    chosen, per_cell = set(fixed), {}
    for i in others:  # the most influential first, at most max_per_cell side by side in one cell
        if budget <= 0:
            break
        cell = (g.nodes[i].sublayer_rank, g.nodes[i].pos)
        if per_cell.get(cell, 0) < config.max_per_cell:
            per_cell[cell] = per_cell.get(cell, 0) + 1
            chosen.add(i)
            budget -= 1
    tgt, src = g.edge_index.tolist()
    weight = g.edge_weight.tolist()
    while True:  # drop boxes with no drawn edge towards the target (they would float unconnected)
        feeds = {s for t, s in zip(tgt, src, strict=True) if t in chosen and s in chosen}
        dangling = {i for i in chosen if i not in fixed and i not in feeds}
        if not dangling:
            break
        chosen -= dangling
    drawn = [(s, t, w) for t, s, w in zip(tgt, src, weight, strict=True) if s in chosen and t in chosen]
    total_in: dict[int, float] = {}
    for _, t, w in drawn:
        total_in[t] = total_in.get(t, 0.0) + abs(w)
    edges = [(s, t, w, abs(w) / total_in[t]) for s, t, w in drawn if total_in[t] > 0]
    edges = [e for e in edges if e[3] >= config.min_share]
    edges.sort(key=lambda e: (-e[3], e[0], e[1]))
    edges = edges[: config.max_edges]
    n_members = sum(1 for n in graph.nodes if n.kind in FEATURE_KINDS or n.kind in ERROR_KINDS)
    return Picture(c, sorted(chosen), edges, len(others), n_members)


def _token_text(graph: Graph, pos: int) -> str:
    toks = graph.metadata.get("token_strings", [])
    return toks[pos] if 0 <= pos < len(toks) else "?"


def _clip(text: str, most: int = 22) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= most else text[: most - 1] + "…"


def box_label(pic: Picture, row: int) -> str:
    """Text of one box: a token as itself and its position, a supernode as its layer and member count (and label
    category when the labels engine gave one), a single feature as its id and label."""
    from circuits import export

    g = pic.contracted.graph
    node = g.nodes[row]
    members = pic.contracted.members[row]
    name = pic.contracted.names[row]
    if node.kind == "token":
        return f"{_token_text(g, node.pos)!r}\n{node.pos}"
    if node.kind.startswith("logit"):
        return export.node_label(g, node)
    if node.kind in ERROR_KINDS:
        layers = sorted({m.layer for m in _member_nodes(pic, row)})
        span = f"L{layers[0]}" if len(layers) == 1 else f"L{layers[0]}–{layers[-1]}"
        return f"errors {span}" if len(members) > 1 else f"{export.node_id(node).split('@')[0]}"
    tag = "A" if node.kind == "attn_feature" else "M"
    if len(members) > 1:
        layers = sorted({m.layer for m in _member_nodes(pic, row)})
        span = f"{layers[0]}" if len(layers) == 1 else f"{layers[0]}–{layers[-1]}"
        head = f"{tag}{span} ×{len(members)}"
        cat = _category_of_name(name)
        return f"{head}\n{_clip(cat, 16)}" if cat else head
    from circuits.supernodes import category

    short = export.node_id(node).split("@")[0]
    cat = category(g, node)
    if cat in ("attention", "transcoder"):  # no label category: the label itself, shortened
        cat = g.metadata.get("ui", {}).get("labels", {}).get(export.node_id(node))
    elif (dense := _dense_mark(g, node)) is not None:  # a category names a dense feature's top examples only
        return f"{short}\n{_clip(f'{dense} · {cat}', 22)}"
    return f"{short}\n{_clip(cat, 16)}" if cat else short


def _dense_mark(graph: Graph, node: Node) -> str | None:
    """The feature's `circuits.dashboards.store.dense_mark` (``dense 45%``, as its shown label has it), or None
    (also without a database)."""
    from circuits.dashboards.store import dense_mark

    try:
        from circuits.labels import store_for

        store = store_for(graph)
        return dense_mark(store.density_of(node)) if store is not None else None
    except Exception:  # a label store that cannot be read: no mark, never fail the picture
        return None


def _category_of_name(name: str | None) -> str | None:
    """What a supernode box shows under its layer: an automatic supernode's label category (``A0 name @2 ' Mary'
    ×10`` → ``name``; none when it was grouped by kind), or a manual supernode's own name."""
    if not name:
        return None
    import re

    auto = re.match(r"^[AM]\d+(?:–\d+)?(?: (.+?))? @\d+ ", name)
    return auto.group(1) if auto else name


def _member_nodes(pic: Picture, row: int) -> list[Node]:
    return [pic.contracted.member_nodes[i] for i in pic.contracted.members[row]]


def layout(pic: Picture) -> dict[int, tuple[float, float, float]]:
    """{row: (x, y, width)} in points: columns = token positions, rows = sublayers (see the module docstring)."""
    g = pic.contracted.graph
    cells: dict[tuple[int, int], list[int]] = {}
    for i in pic.boxes:
        node = g.nodes[i]
        cells.setdefault((node.sublayer_rank, node.pos), []).append(i)
    widths = {i: _box_width(box_label(pic, i)) for i in pic.boxes}
    gap = 8.0
    n_pos = max([n.pos for n in g.nodes] + [len(g.metadata.get("token_strings", [])) - 1]) + 1
    col_width = [0.0] * n_pos
    for (_, pos), rows in cells.items():
        col_width[pos] = max(col_width[pos], sum(widths[i] for i in rows) + gap * (len(rows) - 1))
    ranks = sorted({r for r, _ in cells})
    row_y = {r: k * 62.0 for k, r in enumerate(ranks)}
    out = {}
    x0 = 10.0
    col_x = []
    for w in col_width:
        col_x.append(x0 + w / 2)
        x0 += w + 1.5 * gap
    for (rank, pos), rows in cells.items():
        rows.sort(key=lambda i: (-float(abs(g.activations[i])), i) if g.nodes[i].kind in FEATURE_KINDS else (0, i))
        total = sum(widths[i] for i in rows) + gap * (len(rows) - 1)
        x = col_x[pos] - total / 2
        for i in rows:
            out[i] = (x + widths[i] / 2, row_y[rank], widths[i])
            x += widths[i] + gap
    return out


def _box_width(label: str) -> float:
    longest = max(len(line) for line in label.split("\n"))
    return max(34.0, 5.6 * longest + 10)


def to_picture_dot(graph: Graph, config: PictureConfig | None = None) -> str:
    """DOT source of the picture (positions fixed: render with ``neato -n2``; `render_picture` does)."""
    config = config or PictureConfig()
    pic = choose(graph, config)
    g = pic.contracted.graph
    pos = layout(pic)
    width_pt = max(x + w / 2 for x, _, w in pos.values()) + 20
    height_pt = max(y for _, y, _ in pos.values()) + 40
    inches = config.width_px / config.dpi
    lines = ["digraph circuit {",
             f'  graph [splines=true, outputorder=edgesfirst, dpi={config.dpi}, size="{inches:.2f},100", '
             f'pad=0.2, bb="0,0,{width_pt:.0f},{height_pt:.0f}", labelloc=t, labeljust=l, fontname=Helvetica, '
             f"fontsize=12, label=<{_caption(graph, pic, config)}>];",
             '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10, height=0.42, '
             "fixedsize=false, margin=\"0.05,0.03\"];",
             "  edge [arrowsize=0.5];"]
    for i in pic.boxes:
        x, y, w = pos[i]
        node = g.nodes[i]
        grouped = len(pic.contracted.members[i]) > 1 and node.kind in FEATURE_KINDS
        fill = GROUP_FILL[node.kind] if grouped else FILL[node.kind]
        extra = ", penwidth=2" if grouped else ""
        members = ", ".join(_ids(pic, i)[:12]) + (" …" if len(pic.contracted.members[i]) > 12 else "")
        lines.append(f'  n{i} [label="{_esc(box_label(pic, i))}", pos="{x:.1f},{y:.1f}!", width={w / 72:.2f}, '
                     f'fillcolor="{fill}", tooltip="{_esc(members)}"{extra}];')
    for s, t, w, share in pic.edges:
        colour = "#2166ac" if w >= 0 else "#b2182b"
        lines.append(f'  n{s} -> n{t} [color="{colour}", penwidth={0.6 + 6 * share:.2f}, '
                     f'tooltip="{w:+.4g} ({share:.0%} of the input drawn)"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _ids(pic: Picture, row: int) -> list[str]:
    from circuits import export

    return [export.node_id(n) for n in _member_nodes(pic, row)]


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _caption(graph: Graph, pic: Picture, config: PictureConfig) -> str:
    """HTML-like label: title (prompt and target), scores, what was left out, and the legend."""
    from circuits import export

    meta = graph.metadata
    targets = meta.get("targets", [])
    target = "; ".join(f"{export.target_label(t)} = {float(t.get('value', float('nan'))):.2f}" for t in targets[:3])
    prompt = meta.get("prompt") or "".join(meta.get("token_strings", []))
    scores = meta.get("scores_pruned") or meta.get("scores") or {}
    score = ""
    if scores:
        score = (f"pruned graph: replacement {float(scores.get('replacement', float('nan'))):.2f}, completeness "
                 f"{float(scores.get('completeness', float('nan'))):.2f}")
        full = meta.get("scores")
        if meta.get("scores_pruned") and full:
            score += (f" (full graph {float(full.get('replacement', float('nan'))):.2f}, "
                      f"{float(full.get('completeness', float('nan'))):.2f})")
    g = pic.contracted.graph
    shown = sum(1 for i in pic.boxes if g.nodes[i].kind != "token" and not float(g.target_weights[i]) > 0)
    bos = meta.get("bos_folded")
    left = (f"{shown} of {pic.n_candidates} boxes of the supernode graph drawn (the most influential), standing for "
            f"{sum(len(pic.contracted.members[i]) for i in pic.boxes if g.nodes[i].kind != 'token' and not float(g.target_weights[i]) > 0)}"
            f" of the pruned graph's {pic.n_members} features and error nodes"
            + ("; BOS features folded into constants" if bos and bos.get("nodes") else ""))

    def sw(colour: str, text: str) -> str:
        return (f'<td bgcolor="{colour}" border="1" width="14"> </td><td align="left">{html.escape(text)}'
                "</td><td> </td>")

    legend = ("<table border=\"0\" cellspacing=\"2\" cellpadding=\"1\"><tr>"
              + sw(FILL["token"], "token") + sw(FILL["attn_feature"], "attention feature")
              + sw(GROUP_FILL["attn_feature"], "attention supernode (A3 ×5: 5 features of layer 3)")
              + sw(FILL["mlp_feature"], "transcoder feature") + sw(GROUP_FILL["mlp_feature"], "transcoder supernode")
              + sw(FILL["mlp_error"], "error terms") + sw(FILL["logit"], "target")
              + "</tr></table>")
    note = f"{left}; edge width ∝ share of the receiving box's drawn input; blue excites, red inhibits"
    return ("<table border=\"0\" cellspacing=\"0\" cellpadding=\"1\">"
            f"<tr><td align=\"left\"><b>{_wrap(prompt, 110)}</b>  →  {html.escape(target)}</td></tr>"
            f"<tr><td align=\"left\">{html.escape(score)}</td></tr>"
            f"<tr><td align=\"left\"><font point-size=\"10\">{_wrap(note, 190)}</font></td></tr>"
            f"<tr><td align=\"left\"><font point-size=\"10\">{legend}</font></td></tr></table>")


def _wrap(text: str, width: int) -> str:
    """Escaped text in lines of at most `width` characters (long prompts must not widen the picture)."""
    import textwrap

    lines = [html.escape(line) for line in textwrap.wrap(text, width) or [""]]
    return "".join(f'{line}<br align="left"/>' for line in lines) if len(lines) > 1 else lines[0]


def render_picture(graph: Graph, path: Path, fmt: str, config: PictureConfig | None = None) -> Path:
    """Write the picture as ``dot`` source, ``svg`` or ``png`` (SVG and PNG need Graphviz's ``neato``)."""
    from circuits.export import GraphFileError, _atomic_write, render_source

    source = to_picture_dot(graph, config)
    if fmt == "dot":
        return _atomic_write(path, lambda tmp: tmp.write_text(source))
    if fmt not in ("svg", "png"):
        raise GraphFileError(f"cannot render to {fmt!r}; use dot, svg or png")
    return render_source(source, path, fmt, program="neato", args=("-n2",), timeout=300)


def box_count(source: str) -> int:
    """Node statements in a DOT source (one per box)."""
    import re

    return len(re.findall(r"^\s+n\d+ \[", source, flags=re.M))

