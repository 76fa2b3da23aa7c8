"""`circuits graph show | diff`: inspect graph JSON files."""

from __future__ import annotations

from pathlib import Path

from circuits.cli.common import _token_at
from circuits.errors import CircuitsError


def _check_top(args) -> None:
    """`--top` as `trace` checks it: before any file is read."""
    if args.top < 0:
        raise CircuitsError(f"--top {args.top}: must be 0 or more")


def cmd_graph_show(args) -> int:
    from circuits import export

    _check_top(args)
    g = export.read_json(Path(args.file))
    m = g.metadata
    kinds: dict[str, int] = {}
    for n in g.nodes:
        kinds[n.kind] = kinds.get(n.kind, 0) + 1
    print(f"{args.file}: {m.get('model')} with {len(m.get('dictionaries', []))} dictionaries, method {m.get('method')}")
    print(f"prompt: {' '.join(repr(t) for t in m.get('token_strings', []))}")
    for t in m.get("targets", []):
        print(f"target {export.target_label(t)}: value {t['value']:.4f}, weight {t['weight']:.3f}")
    print(f"{g.n_nodes} nodes ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}), {g.n_edges} edges")
    if "pruning" in m:
        pr = m["pruning"]
        print(f"pruned from {pr['nodes_before']} nodes / {pr['edges_before']} edges at node {pr['node_threshold']}, "
              f"edge {pr['edge_threshold']}")
    if "scores" in m:
        print(f"scores of the full graph: replacement {m['scores']['replacement']:.3f}, completeness "
              f"{m['scores']['completeness']:.3f}")
    strongest = g.edge_weight.abs().argsort(descending=True)[: args.top].tolist()
    print(f"strongest {len(strongest)} edges (source -> target, weight):")
    for k in strongest:
        t, s = g.edge_index[:, k].tolist()
        print(f"  {_describe(g, g.nodes[s])} -> {_describe(g, g.nodes[t])}  {float(g.edge_weight[k]):+.4f}")
    return 0


def _describe(graph, node) -> str:
    """A node as printed by `graph show` / `graph diff`: its id (with position), the token there, its label."""
    from circuits import export

    nid = export.node_id(node)
    if node.kind.startswith("logit"):
        return f"{nid} ({export.node_label(graph, node)})"
    label = (graph.metadata.get("ui") or {}).get("labels", {}).get(nid)
    return f"{nid} {_token_at(graph, node)}" + (f" [{label}]" if label else "")


def _model_name(model):
    """A graph's model, with the shipped organism's folder (`--model data/organism`) named 'organism'."""
    if isinstance(model, str) and model != "organism":
        from circuits.model import DATA_DIR

        try:
            if Path(model).resolve() == (DATA_DIR / "organism").resolve():
                return "organism"
        except (OSError, ValueError):
            pass
    return model


def _check_comparable(a, b, path_a: str, path_b: str) -> None:
    """`graph diff` matches nodes by (kind, layer, position, index): refuse graphs where that matches nothing
    meaningful — other models or dictionaries (feature numbers differ), other token counts (positions differ), a
    study's role graph (positions are roles)."""
    for g, path in ((a, path_a), (b, path_b)):
        if g.metadata.get("study"):
            raise CircuitsError(f"{path} is the {g.metadata['study']} study's role graph (positions are roles), not "
                                "a prompt's graph; graph diff compares two prompts' graphs")
    ma, mb = _model_name(a.metadata.get("model")), _model_name(b.metadata.get("model"))
    if ma != mb:
        raise CircuitsError(f"the graphs are of different models ({ma} and {mb}): their nodes do not correspond")
    ia, ib = a.metadata.get("dictionary_ids"), b.metadata.get("dictionary_ids")
    if ia is not None and ib is not None and ia != ib:
        raise CircuitsError("the graphs were traced with different dictionaries (--dicts): feature numbers do not "
                            "correspond; trace both with the same set")
    na, nb = len(a.metadata.get("token_strings", [])), len(b.metadata.get("token_strings", []))
    if na != nb:
        raise CircuitsError(f"the prompts have {na} and {nb} tokens: nodes are matched by position, so give two "
                            "prompts of the same length (e.g. the names swapped)")


def _target_kind(g) -> str:
    """What a graph explains, in words: the trace's target kind (``metadata.target``: the top logits, given logits,
    a contrast or a feature), or for older files the first target node's kind. The number of top logits varies
    with the prompt and is not a kind."""
    kind = (g.metadata.get("target") or {}).get("kind")
    if kind is None:
        kind = ((g.metadata.get("targets") or [{}])[0].get("node") or ["?"])[0]
    return {"top_logits": "the top logits", "logit": "given logits", "contrast": "a logit difference",
            "logit_diff": "a logit difference", "feature": "a feature", "attn_feature": "a feature",
            "mlp_feature": "a feature"}.get(kind, str(kind))


def cmd_graph_diff(args) -> int:
    from circuits import export

    _check_top(args)
    if not 0 <= args.rel_tol < float("inf"):
        raise CircuitsError(f"--rel-tol {args.rel_tol}: must be a finite number ≥ 0 (a relative change, e.g. 0.1)")
    a, b = export.read_json(Path(args.a)), export.read_json(Path(args.b))
    _check_comparable(a, b, args.a, args.b)
    d = export.diff(a, b, args.rel_tol)
    print(f"A: {args.a} ({a.n_nodes} nodes, {a.n_edges} edges); B: {args.b} ({b.n_nodes} nodes, {b.n_edges} edges)")
    for name, g in (("A", a), ("B", b)):
        first = (g.metadata.get("targets") or [{}])[0]
        print(f"{name}: {g.metadata.get('prompt')!r} → {first.get('label', '?')}")
    kinds = [_target_kind(g) for g in (a, b)]
    if kinds[0] != kinds[1]:
        from circuits.cli.common import warn

        warn(f"the graphs explain different kinds of target (A: {kinds[0]}, B: {kinds[1]}): their edges differ for "
             "that reason too; trace both with the same kind of --target/--contrast for a like-for-like diff")
    toks_a, toks_b = a.metadata.get("token_strings", []), b.metadata.get("token_strings", [])
    differ = [i for i, (x, y) in enumerate(zip(toks_a, toks_b, strict=True)) if x != y]
    if differ:
        print("tokens that differ (nodes are matched by position): "
              + ", ".join(f"{i}: {toks_a[i]!r} → {toks_b[i]!r}" for i in differ))
    print(f"nodes only in B: {len(d.added_nodes)}; only in A: {len(d.removed_nodes)}; edges only in B: "
          f"{len(d.added_edges)}; only in A: {len(d.removed_edges)}; changed by > {args.rel_tol:.0%}: "
          f"{len(d.changed_edges)}")

    lab = _describe

    for title, rows, g in (("nodes only in B", d.added_nodes, b), ("nodes only in A", d.removed_nodes, a)):
        if rows:
            shown = rows[: args.top]
            print(f"{title}" + (f" (first {len(shown)} of {len(rows)})" if len(shown) < len(rows) else "") + ": "
                  + ", ".join(lab(g, n) for n in shown))
    for title, rows, g in (("edges only in B", d.added_edges, b), ("edges only in A", d.removed_edges, a)):
        for s, t, w in rows[: args.top]:
            print(f"  {title}: {lab(g, s)} -> {lab(g, t)} {w:+.4f}")
    for s, t, wa, wb in d.changed_edges[: args.top]:
        print(f"  changed: {lab(a, s)} -> {lab(a, t)} {wa:+.4f} -> {wb:+.4f}")
    return 0


def add_parser(sub) -> None:
    """`graph` and its actions."""
    gr = sub.add_parser("graph", help="inspect graph files").add_subparsers(dest="action", required=True)
    sh = gr.add_parser("show", help="summary of a graph JSON file")
    sh.add_argument("file", help="a graph JSON file written by `circuits trace --json` (or saved from the explorer)")
    sh.add_argument("--top", type=int, default=10, help="strongest edges to list (default 10)")
    sh.set_defaults(func=cmd_graph_show)
    df = gr.add_parser("diff", help="nodes and edges that appear, vanish or change between two graphs")
    df.add_argument("a", help="the first graph JSON file (the reference)")
    df.add_argument("b", help="the second graph JSON file, of a prompt with as many tokens")
    df.add_argument("--rel-tol", type=float, default=0.1, help="relative weight change that counts (default 0.1)")
    df.add_argument("--top", type=int, default=10, help="nodes and edges to list per kind of change (default 10)")
    df.set_defaults(func=cmd_graph_diff)
