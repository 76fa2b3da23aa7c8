"""`circuits trace` (alias `attribute`): a prompt's attribution graph (`circuits attention`, why a head attended
where it did, is in `circuits.cli.attention`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from circuits.cli.attention import _node_name
from circuits.cli.common import _dashboard_db, _prompt, _token_at, warn
from circuits.cli.runtime import add_device_option, resolve_device
from circuits.cli.trace_checks import (
    _check_inputs,
    _check_trace_options,
    _choose_dicts,
    _loaded_shapes,
    _model_vocab,
    _trace_target,
    check_dicts_name,
    check_model_name,
    organism_vocab,
    set_shapes,
)
from circuits.errors import CircuitsError


def _open_dashboards(rm, args):
    """The dashboard database for labels (the --dashboards file, else the model's default when it exists) and the
    error that stops it being used (None when it is fine). A --dashboards file that does not fit these dictionaries
    is an error: called right after the model loads, before any attribution."""
    from circuits import dashboards

    explicit = bool(getattr(args, "dashboards", None))
    path = Path(args.dashboards) if explicit else _dashboard_db(args.model)
    if not path.exists():
        return None, None
    hint = f"circuits dashboards build --model {args.model}" + (
        "" if args.dicts in (None, "organism") else f" --dicts {args.dicts} --out FILE` and pass `--dashboards FILE")
    try:
        return dashboards.Dashboards(path, rm, build_hint=hint), None
    except dashboards.DashboardError as e:
        if explicit:  # asked for by name: not a silent "no labels"
            raise CircuitsError(f"--dashboards: {e}") from None
        return None, e


def _feature_labels(rm, graph, say, opened) -> dict[str, str]:
    """{node id: label} of the graph's features from the dashboard database `_open_dashboards` returned (`opened`),
    when there is one built for these dictionaries (empty otherwise)."""
    from circuits import export

    db, problem = opened
    if db is None and problem is None:
        return {}
    if db is None:
        say(f"no feature labels: {problem}")
        # the database is not these dictionaries' (e.g. organism-skip shares the default set's dictionary names):
        # supernodes must not borrow its label categories either (circuits.labels.store_for's fallback)
        from circuits import labels

        labels.register(None, rm.name)
        return {}
    try:
        return {export.node_id(n): lab for n, lab in db.labels(list(graph.nodes)).items()}
    finally:
        db.close()


def _attach_labels(graph, labels: dict[str, str]) -> None:
    """Put the labels of `graph`'s nodes into its UI state (saved with the file; user labels win)."""
    from circuits import export

    ids = {export.node_id(n) for n in graph.nodes}
    ui = graph.metadata.setdefault("ui", {})
    ui["labels"] = {**{k: v for k, v in labels.items() if k in ids}, **ui.get("labels", {})}


def _faithfulness(rm, pruned, prompt: str, say, constant_nodes=()) -> list[dict] | None:
    """Ablation faithfulness of the pruned graph on its target metric, on the prompt it was pruned on, under each
    convention with its random baseline (`circuits.interventions.faithfulness_with_baselines`). `constant_nodes`
    (the BOS nodes folded into constants) are kept with the circuit, as the graph assumes, and with every random
    one."""
    from circuits.interventions import faithfulness_with_baselines, graph_metric

    found = graph_metric(pruned)
    if found is None:
        return None
    metric, name = found
    say("faithfulness and its random baseline ...")
    out = []
    for f, base in faithfulness_with_baselines(rm, prompt, pruned, metric, fixed=constant_nodes):
        out.append({"metric": name, "ablation": f.ablation, "convention": f.convention, "label": f.label,
                    "score": f.score, "circuit": f.circuit, "empty": f.empty, "full": f.full,
                    "features": f.n_features, "errors": f.n_errors,
                    "random": {"scores": base.scores, "mean": base.mean, "draws": len(base.scores),
                               "features": base.n_features, "elsewhere": base.n_elsewhere,
                               "errors_only": base.errors_only}})
    return out


def _top_nodes(graph, influence, labels: dict, top: int, per_position: int = 3) -> tuple[list, list]:
    """The `top` most influential nodes (targets and tokens excluded), and for every position before the last the
    `per_position` most influential nodes there (tokens included): the second list shows where the circuit starts,
    which the first hides when most influence sits at the last position."""
    from circuits import export

    def entry(row: int) -> dict:
        node = graph.nodes[row]
        nid = export.node_id(node)
        return {"node": node.to_json(), "id": nid, "pos": node.pos, "token": graph.metadata["token_strings"][node.pos],
                "label": labels.get(nid), "influence": float(influence[row]),
                "activation": float(graph.activations[row])}

    order = [r for r in influence.argsort(descending=True).tolist() if graph.target_weights[r] <= 0]
    best = [entry(r) for r in order if graph.nodes[r].kind != "token"][:top]
    last = len(graph.metadata["token_strings"]) - 1
    by_pos: dict[int, list[dict]] = {}
    for r in order:
        p = graph.nodes[r].pos
        if p < last and len(by_pos.setdefault(p, [])) < per_position and float(influence[r]) > 0:
            by_pos[p].append(entry(r))
    return best, [{"pos": p, "token": graph.metadata["token_strings"][p], "nodes": by_pos[p]} for p in sorted(by_pos)]


def _clip(text: str, width: int = 60) -> str:
    """`text` in at most `width` characters: a longer one is cut at a word boundary when there is one in its last
    third (else mid-word) and ends with "…", so a shortened label never reads as a complete one."""
    if len(text) <= width:
        return text
    cut = text[:width - 1]
    space = cut.rfind(" ")
    if space >= (2 * width) // 3:
        cut = cut[:space]
    return cut.rstrip(" ,;·-") + "…"


def _print_faithfulness(faith: list[dict], bos_kept: bool) -> None:
    """The faithfulness table: one row per convention, the circuit's score beside its random circuits'."""
    import textwrap

    r0 = faith[0]["random"]
    print(f"faithfulness of the pruned graph on {faith[0]['metric']}, on this prompt only (the one it was pruned "
          f"on), against {r0['draws']} random circuits of the same shape:")
    width = max(len(f.get("label", f["ablation"])) for f in faith)
    print(f"  {'convention':<{width}}  score  random (min–max)       errors alone   circuit    empty    model")
    for f in faith:
        r = f["random"]
        spread = f"{r['mean']:.3f} ({min(r['scores']):.3f}–{max(r['scores']):.3f})"
        print(f"  {f.get('label', f['ablation'] + ' ablation'):<{width}}  {f['score']:.3f}  {spread:<21} "
              f"{r.get('errors_only', float('nan')):12.3f}  {f['circuit']:8.3f} {f['empty']:8.3f} {f['full']:8.3f}")
    if r0.get("elsewhere"):
        print(textwrap.fill(f"(each random circuit: {r0['elsewhere']} of its {r0['features']} features drawn at other "
                            "positions of their dictionaries, too few being left at the circuit's; that makes the "
                            "baseline weaker)", width=116, initial_indent="  ", subsequent_indent="   "))
    print(textwrap.fill(
        "score = (circuit − empty) / (model − empty): 'circuit' keeps the pruned graph's feature and error nodes "
        + ("(and the BOS nodes folded into its constants) " if bos_kept else "")
        + "and ablates everything else with live attention; 'errors alone' keeps its error nodes and no feature "
        "(what every random circuit starts from); 'empty' ablates everything; 1 = the pruned graph alone "
        "gives the model's value, 0 = no better than ablating everything. Standard mean ablation (the field's "
        "convention) sets every other feature, inactive ones included, and error node to its mean over held-out "
        "text; the held-inactive variant leaves features inactive on the prompt at 0 (not comparable with the "
        "literature); zero ablation sets them to 0. A random circuit keeps the same error nodes and as many other "
        "active features per dictionary and position. Across prompts, with intervals: `circuits study` "
        "(docs/case-studies.md)", width=116, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False))


def _print_top_nodes(summary: dict) -> None:
    def label(n: dict) -> str:
        return f"  {_clip(n['label'])}" if n.get("label") else ""

    print(f"top {len(summary['top_nodes'])} nodes by influence (id, token at its position, influence, activation, "
          "label: a heuristic from top activations and direct logit effects, not a causal test; docs/labels.md):")
    for n in summary["top_nodes"]:
        print(f"  {n['id']:<14} {n['token']!r:<14} influence {n['influence']:.4f}  activation {n['activation']:8.3f}"
              f"{label(n)}")
    if summary["by_position"]:
        print("strongest nodes at each earlier position (where the circuit starts):")
        for row in summary["by_position"]:
            print(f"  {row['pos']:>3} {row['token']!r:<12} " + "; ".join(
                f"{n['id']} {n['influence']:.4f}{label(n)}" for n in row["nodes"]))


def cmd_trace(args) -> int:
    import time

    outputs = {k: getattr(args, k) for k in ("json", "dot", "svg", "png", "graphml", "circuit_tracer_json")}
    prompt = args.prompt = _prompt(args)
    _check_trace_options(args)  # fail before the work (and before torch is imported), not after it

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    spec = _trace_target(args)
    _choose_dicts(args)
    check_dicts_name(args.dicts)
    # the prompt, the target tokens and the --feature: with the organism's tokenizer and the set's JSON files
    # before anything loads; what they cannot tell (another model, another layout) right after loading, before
    # the attribution
    vocab, shapes = organism_vocab(args.model), set_shapes(args.dicts)
    _check_inputs(args, prompt, spec, vocab, shapes)
    check_model_name(args.model)  # the last check before torch is imported and "loading ..." is printed
    from circuits import export
    from circuits.attribution import attribute
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.pruning import graph_scores, prune
    from circuits.replacement import ReplacementModel

    target = spec.build()
    if args.max_features == 0:
        warn("--max-features 0 keeps no feature nodes: the pruned graph has only tokens, error nodes and the "
             "target (leave the option out for no cap)")
    t0 = time.perf_counter()
    say(f"loading {args.model} and dictionaries {args.dicts} ...")
    model, _ = load_model(args.model, resolve_device(args.device))
    if vocab is None:
        vocab = _model_vocab(model)
        _check_inputs(args, prompt, spec, vocab, shapes)
    from circuits.dictionaries import DictionaryLoadError

    try:
        dset = load_dictionaries(args.dicts, model)
    except DictionaryLoadError as e:
        if args.dicts_given or args.model == "organism":
            raise
        raise CircuitsError(f"{e}; the default set (organism) is the organism's: pass --dicts SET_OR_FOLDER for "
                            "this model") from None
    if shapes is None:
        _check_inputs(args, prompt, spec, None, _loaded_shapes(dset))
    rm = ReplacementModel(model, dset, name=args.model)
    opened = _open_dashboards(rm, args)  # an explicit --dashboards of other dictionaries fails here, before the work
    load_s = time.perf_counter() - t0
    say("attributing ...")
    cache = rm.run(prompt) if args.qk else None  # --qk reads the same forward pass
    graph = attribute(rm, prompt, target, method=args.method, demean_logits=args.demean,
                      edge_tolerance=args.edge_tolerance, progress=not args.quiet, cache=cache)
    bos_nodes = []
    if not args.show_bos:  # BOS features and errors are the same on every prompt: fold them into constants
        from circuits.graph import bos_mask, fold_bos

        bos_nodes = [n for n, m in zip(graph.nodes, bos_mask(graph).tolist(), strict=True) if m]
        graph = fold_bos(graph)
    t1 = time.perf_counter()
    result = prune(graph, args.node_threshold, args.edge_threshold, args.max_features)
    labels = _feature_labels(rm, graph, say, opened)
    _attach_labels(graph if args.full else result.graph, labels)
    prune_s = time.perf_counter() - t1
    full_scores, pruned_scores = graph_scores(graph), graph_scores(result.graph)
    for g in (graph, result.graph):
        g.metadata["scores"] = {"replacement": full_scores.replacement, "completeness": full_scores.completeness}
    result.graph.metadata["scores_pruned"] = {"replacement": pruned_scores.replacement,
                                              "completeness": pruned_scores.completeness}
    qk = _qk_tables(rm, cache, graph, args, say) if args.qk else None
    if qk is not None:
        result.graph.metadata["qk"] = graph.metadata["qk"] = qk
    from circuits.paths import attach_routes
    from circuits.supernodes import attach_supernodes

    attach_supernodes(result.graph)
    routes = attach_routes(result.graph, args.paths) if args.paths else []
    if args.full:  # the unpruned file gets the pruned graph's supernodes and routes
        ui = graph.metadata.setdefault("ui", {})
        ui["supernodes"] = result.graph.metadata["ui"]["supernodes"]
        graph.metadata["paths"] = result.graph.metadata.get("paths", [])
    faith = _faithfulness(rm, result.graph, prompt, say, bos_nodes)
    if faith:
        result.graph.metadata["faithfulness"] = graph.metadata["faithfulness"] = faith
    patching = None
    if args.corrupt:
        from circuits.attribution.patching import attribution_patching, integrated_gradients

        say(f"attribution patching against {args.corrupt!r} ...")
        from circuits.interventions import graph_metric

        found = graph_metric(graph)
        if found is None:
            raise CircuitsError("--corrupt needs a logit target (not --feature)")
        metric, metric_name = found
        effects = (integrated_gradients(rm, prompt, args.corrupt, metric, args.ig_steps) if args.ig_steps
                   else attribution_patching(rm, prompt, args.corrupt, metric))
        patching = {"method": effects.method, "metric": metric_name, "corrupt": args.corrupt,
                    "metric_clean": effects.metric_clean, "metric_corrupted": effects.metric_corrupted,
                    "top": [[n.to_json(), e] for n, e in effects.top(args.top)]}
        result.graph.metadata["patching"] = graph.metadata["patching"] = patching
    kept = result.graph
    written = []
    out_graph = graph if args.full else kept
    influence = result.node_influence if args.full else result.node_influence[result.node_mask]
    writers = {"json": export.write_json, "dot": export.write_dot, "graphml": export.write_graphml,
               "svg": lambda g, p: export.render(g, p, "svg"), "png": lambda g, p: export.render(g, p, "png"),
               "circuit_tracer_json": lambda g, p: export.write_circuit_tracer(g, p, influence)}
    if args.detail == "supernodes":  # pictures sized to a circuit: the pruned graph's supernodes, <= 40 boxes
        from circuits.picture import render_picture

        for kind in ("dot", "svg", "png"):
            writers[kind] = lambda g, p, fmt=kind: render_picture(kept, p, fmt)
    for kind, path in outputs.items():
        if path:
            writers[kind](out_graph, Path(path))
            written.append(path)
    summary = {
        "tokens": graph.metadata["token_strings"],
        "targets": graph.metadata["targets"],
        "method": graph.metadata["method"],
        "full": {"nodes": graph.n_nodes, "edges": graph.n_edges, **graph.metadata["scores"]},
        "pruned": {"nodes": kept.n_nodes, "edges": kept.n_edges, "replacement": pruned_scores.replacement,
                   "completeness": pruned_scores.completeness},
        "seconds": {"load": round(load_s, 3), "attribute": graph.metadata["timings_s"]["total"],
                    "prune": round(prune_s, 4)},
        "top_nodes": [],
        "patching": patching,
        "faithfulness": faith,
        "qk": qk,
        "paths": [r.to_json() for r in routes],
        "supernodes": len([s for s in result.graph.metadata["ui"]["supernodes"] if s.get("auto")]),
        "bos_folded": graph.metadata.get("bos_folded"),
        "written": written,
    }
    summary["top_nodes"], summary["by_position"] = _top_nodes(graph, result.node_influence, labels, args.top)
    if args.json_summary:
        print(json.dumps(summary))
        return 0
    print("tokens: " + " ".join(f"{i}:{t!r}" for i, t in enumerate(summary["tokens"])))
    for t in summary["targets"]:
        prob = f", p={t['probability']:.3f}" if t.get("probability") is not None else ""
        print(f"target {export.target_label(t)}: value {t['value']:.4f}{prob}, weight {t['weight']:.3f}")
    f, pr = summary["full"], summary["pruned"]
    print(f"full graph: {f['nodes']} nodes, {f['edges']} edges ({summary['method']}, "
          f"{summary['seconds']['attribute']:.3f} s); replacement score {f['replacement']:.3f}, "
          f"completeness {f['completeness']:.3f}")
    print(f"pruned (node {args.node_threshold}, edge {args.edge_threshold}): {pr['nodes']} nodes, {pr['edges']} edges "
          f"({prune_s:.3f} s); replacement {pr['replacement']:.3f}, completeness {pr['completeness']:.3f}")
    bos = summary["bos_folded"]
    if bos and bos["nodes"]:
        print(f"BOS: {bos['nodes']} features and error nodes at position {bos['pos']} folded into the constants "
              "(the same on every prompt; --show-bos keeps them)")
    if faith:
        _print_faithfulness(faith, bool(bos_nodes))
    if routes:
        print(f"top {len(routes)} routes from the tokens to the target (features merged per position, layer and "
              "kind; weight = share of the target's attribution along the route, + pushes it up):")
        for r in routes:
            print(f"  {r.text()}")
    _print_top_nodes(summary)
    for table in qk or []:
        _print_qk_route(table, graph.metadata["token_strings"])
    if patching:
        print(f"{patching['method']} node effects on {patching['metric']} (clean {patching['metric_clean']:.3f}, "
              f"corrupted {patching['metric_corrupted']:.3f}):")
        for nid, e in patching["top"]:
            from circuits.graph import Node

            node = Node.from_json(nid)
            print(f"  {export.node_id(node):<14} {_token_at(graph, node):<14} {e:+.4f}")
    for path in written:
        print(f"wrote {path}")
    return 0


def _qk_tables(rm, cache, graph, args, say) -> list[dict]:
    """trace --qk: the QK tables of the heads carrying the strongest edges into attention features."""
    from circuits.attribution.head_routes import qk_tables

    say("QK tables ...")
    tables = qk_tables(rm, cache, graph, args.qk_heads, top=10)
    if not tables:
        warn("--qk: this graph has no per-head edge weights (method autograd, or no attention-feature edges); "
             "no QK tables attached (use --method analytic)")
    return tables


def _print_qk_route(table: dict, tokens: list[str]) -> None:
    from circuits.graph import Node

    def name(n, pos: int) -> str:
        return _node_name(Node.from_json(n) if n is not None else None, pos)

    p, (q,) = table["query_pos"], table["keys"]
    best = table["pairs"][0] if table["pairs"] else None
    pair = (f"; top pair {name(best['query'], p)} × {name(best['key'], best['key_pos'])} "
            f"{best['contribution']:+.3f}") if best else ""
    print(f"QK L{table['layer']}.H{table['head']} {p} {tokens[p]!r} → {q} {tokens[q]!r} (route |edges| "
          f"{table['route_strength']:.3f}): score {table['score']:.3f}, pattern {table['pattern'][0]:.3f}{pair}")


def add_parser(sub) -> None:
    """`trace` (alias `attribute`)."""
    a = sub.add_parser("trace", aliases=["attribute"],
                       help="attribution graph of a prompt: summary, and JSON / DOT / SVG / PNG / GraphML files")
    a.add_argument("prompt", nargs="?", help="the prompt (or --prompt-file)")
    a.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 text file")
    a.add_argument("--model", default="organism", help="organism (default), gpt2, a public family model or a saved "
                   "model folder")
    a.add_argument("--dicts", default=None, help="organism, a public set name, or a folder (default: organism, "
                   "the organism's set; another model needs its own)")
    # action="append" for the next three only to see a repeat (`_one_each` refuses it); each is given once
    a.add_argument("--target", nargs="+", action="append", metavar="TOKEN", help="explain these tokens' logits "
                   "(given once)")
    a.add_argument("--contrast", action="append", metavar="TOKEN",
                   help="with one --target A: explain logit(A) − logit(TOKEN)")
    a.add_argument("--feature", action="append", metavar="ID@POS", help="explain one active feature at a position "
                   "(local circuit), e.g. M2#517@11 (transcoder L2 feature 517 at position 11) or A1#33@5")
    a.add_argument("--cum-prob", type=float, default=0.95, help="salient logits: probability mass to cover")
    a.add_argument("--max-logits", type=int, default=10, help="salient logits: at most this many (default 10)")
    a.add_argument("--method", default="auto", choices=["auto", "analytic", "reverse", "autograd"],
                   help="how edges are computed; they agree to float precision (default auto: analytic when every "
                   "attention layer has an SAE, else reverse; autograd is the slow reference; docs/attribution.md)")
    a.add_argument("--demean", action="store_true", help="explain logits minus their mean over the vocabulary")
    a.add_argument("--edge-tolerance", type=float, default=0.0,
                   help="store only edges above this fraction of each target's total |weight|")
    a.add_argument("--node-threshold", type=float, default=0.8, help="pruning: keep the nodes that carry this "
                   "fraction of the influence on the target (default 0.8)")
    a.add_argument("--edge-threshold", type=float, default=0.98, help="pruning: keep the edges that carry this "
                   "fraction of the influence (default 0.98)")
    a.add_argument("--max-features", type=int, default=None, help="cap on feature nodes after pruning")
    a.add_argument("--corrupt", metavar="PROMPT", help="also run attribution patching against this prompt")
    a.add_argument("--ig-steps", type=int, default=0, help="with --corrupt: integrated gradients with N steps")
    a.add_argument("--top", type=int, default=15, help="nodes to list")
    for flag, what in (("--json", "our lossless graph file (read it with `circuits graph show`)"),
                       ("--dot", "Graphviz source of the picture"), ("--svg", "the picture (needs Graphviz)"),
                       ("--png", "the picture (needs Graphviz)"), ("--graphml", "GraphML (networkx, Gephi)"),
                       ("--circuit-tracer-json", "circuit-tracer / Neuronpedia graph JSON")):
        a.add_argument(flag, metavar="FILE", help=f"write {what}; the folder must exist")
    a.add_argument("--force", action="store_true", help="replace a graph file that holds your work (saved from the "
                   "explorer, or with pins or supernodes of your own; refused without it)")
    a.add_argument("--full", action="store_true", help="write the unpruned graph (default: the pruned one)")
    a.add_argument("--show-bos", action="store_true", help="keep the features and error nodes at the BOS position "
                   "(default: folded into the constants, as they are the same on every prompt)")
    a.add_argument("--detail", choices=["supernodes", "full"], default="supernodes",
                   help="--dot/--svg/--png draw the supernode graph, at most 40 boxes on a tokens × layers grid "
                   "(default), or every node of the pruned graph (full)")
    a.add_argument("--paths", type=int, default=5, metavar="N", help="routes from the tokens to the target to print "
                   "and store in the JSON (default 5; 0: none)")
    a.add_argument("--dashboards", metavar="DB", help="feature labels from this dashboard database "
                   "(default data/dashboards/MODEL.sqlite when it exists)")
    a.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a.add_argument("--json-summary", action="store_true", help="print the summary as one JSON object")
    a.add_argument("--qk", action="store_true", help="attach the QK tables (why each head attended there) of the "
                   "heads carrying the strongest edges into attention features to the graph (metadata.qk)")
    a.add_argument("--qk-heads", type=int, default=3, metavar="N", help="with --qk: how many (head, query, key) "
                   "routes (default 3)")
    add_device_option(a)
    a.set_defaults(func=cmd_trace)
