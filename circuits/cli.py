"""The `circuits` command. Subcommands per capability; every user error is one line on stderr and exit status 2.

    circuits organism train   [--out DIR] [--steps N] [--seed S] [--no-resume] [--export]
    circuits organism eval    [--model organism|DIR] [--out FILE] [--subsample F]
    circuits organism corpus  [--rows N] [--seed S] [--stream train|heldout]
    circuits dicts train      [--model organism] [--out DIR] [--tokens N] [--d-sae N] [--k K] [--export]
    circuits dicts eval       [--model organism] [--dicts organism|NAME|DIR] [--out FILE]
    circuits dicts convert    SRC --out DIR [--n-heads N]
    circuits trace            PROMPT [--target T.. [--contrast B] | --feature K:L:P:I] [--json F --dot F ...]
    circuits attention        PROMPT --head L.H --key Q [--query P] [--versus Q2] [--pattern] [--top N] [--json F]
    circuits graph show FILE  |  circuits graph diff A B
    circuits dashboards build [--model organism] [--rows N]  |  circuits feature ID [--text PROMPT] [--label L]

``--debug`` (before the subcommand) shows the traceback of an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from circuits.errors import CircuitsError


def warn(message: str) -> None:
    """A warning for the user: one clean line on stderr (never a Python warning with its source line)."""
    print(f"circuits: warning: {message}", file=sys.stderr, flush=True)


def _print_eval_table(res: dict) -> None:
    rows = []
    for key, metrics in res.items():
        if not isinstance(metrics, dict) or key.startswith("ci_") or key == "meta":
            continue
        for name, value in metrics.items():
            if name in ("n", "rows", "span_length"):
                continue
            rows.append((key, name, value, metrics.get("n", metrics.get("rows", ""))))
    width = max(len(r[0]) for r in rows)
    print(f"{'family':<{width}}  {'metric':<16} {'value':>9}  n")
    for fam, name, value, n in rows:
        print(f"{fam:<{width}}  {name:<16} {value:>9.4f}  {n}")


def cmd_organism_train(args) -> int:
    from circuits.inputs import check_output_dir
    from circuits.model import DATA_DIR
    from circuits.organism.evaluate import quick_eval
    from circuits.organism.train import OrganismTrainConfig, train_organism

    defaults = OrganismTrainConfig()
    args.phase4_steps = defaults.phase4_steps if args.phase4_steps is None else args.phase4_steps
    args.phase5_steps = defaults.phase5_steps if args.phase5_steps is None else args.phase5_steps
    phases = ({"phase2_steps": 0, "phase3_steps": 0, "phase4_steps": 0, "phase5_steps": 0} if args.mix == "final"
              else {"phase2_steps": args.phase2_steps, "phase4_steps": args.phase4_steps,
                    "phase5_steps": args.phase5_steps})
    for flag, v in (("--steps", args.steps),):
        if v < 1:
            raise CircuitsError(f"{flag} {v}: phase 1 needs at least 1 step")
    for flag in ("--phase2-steps", "--phase4-steps", "--phase5-steps"):
        v = getattr(args, flag[2:].replace("-", "_"))
        if v < 0:
            raise CircuitsError(f"{flag} {v}: must be 0 or more")
    cfg = OrganismTrainConfig(steps=args.steps, seed=args.seed, corpus_seed=args.corpus_seed, mix=args.mix,
                              **phases)
    out = check_output_dir(args.out, "--out")
    if args.export:
        check_output_dir(DATA_DIR / "organism", "--export")
    record = train_organism(out, cfg=cfg, resume=not args.no_resume, progress=not args.quiet,
                            quick_eval=quick_eval)
    print(json.dumps(record))
    if args.export:
        dest = DATA_DIR / "organism"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "config.json", "log.jsonl"):
            shutil.copy2(out / name, dest / name)
        shutil.copytree(out / "tokenizer", dest / "tokenizer", dirs_exist_ok=True)
        print(f"exported to {dest}")
    return 0


def cmd_organism_eval(args) -> int:
    from circuits.model import load_model
    from circuits.organism.evaluate import EvalSizes, evaluate_organism, write_eval

    if args.out != "-":
        from circuits.inputs import check_output_file

        check_output_file(args.out, "--out")
    model, _ = load_model(args.model)
    sizes = EvalSizes().scaled(args.subsample) if args.subsample < 1 else EvalSizes()
    res = evaluate_organism(model, sizes=sizes, progress=not args.quiet)
    _print_eval_table(res)
    if args.out != "-":
        write_eval(res, Path(args.out), with_ci_subsample=(args.model == "organism" and args.subsample >= 1),
                   model=model)
        print(f"wrote {args.out}")
    return 0


def cmd_organism_corpus(args) -> int:
    from circuits.organism.corpus import ToyWorldCorpus

    corpus = ToyWorldCorpus(args.seed)
    for i in range(args.rows):
        print(corpus.row_text(i, args.tokens, args.stream))
    return 0


def organism_dictionary_configs(model, d_sae: int, k: int) -> list:
    """One BatchTopK transcoder per MLP and one attention SAE per attention layer."""
    from circuits.dictionaries.base import DictionaryConfig

    c = model.cfg
    z = c.n_heads * c.d_head
    configs = []
    for layer in range(c.n_layers):
        configs.append(DictionaryConfig("attention_sae", layer, z, d_sae, z, activation="batchtopk", k=k,
                                        n_heads=c.n_heads, context_size=c.n_ctx, model_name="organism"))
        configs.append(DictionaryConfig("transcoder", layer, c.d_model, d_sae, c.d_model, activation="batchtopk",
                                        k=k, context_size=c.n_ctx, model_name="organism"))
    return configs


def _site_values(specs: list[str] | None, flag: str, what: str, names: set[str], parse) -> dict:
    """{dictionary name: value} from repeated NAME=VALUE options; `parse` returns None for a bad value."""
    out = {}
    for spec in specs or []:
        name, _, raw = spec.partition("=")
        value = parse(raw)
        if value is None or name not in names:
            raise CircuitsError(f"{flag} {spec!r}: use NAME=VALUE with NAME one of {', '.join(sorted(names))} "
                                f"and VALUE {what}")
        out[name] = value
    return out


def cmd_dicts_train(args) -> int:
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.dictionaries.train import DictTrainConfig, train_dictionaries
    from circuits.model import DATA_DIR, load_model

    if args.model != "organism":
        raise CircuitsError(f"training is set up for the organism's corpus only, not {args.model!r}; "
                            "use --model organism")
    from circuits.inputs import check_output_dir

    for flag, v in (("--tokens", args.tokens), ("--d-sae", args.d_sae), ("--k", args.k)):
        if v < 1:
            raise CircuitsError(f"{flag} {v}: must be at least 1")
    check_output_dir(args.out, "--out")
    if args.export:
        check_output_dir(DATA_DIR / "dictionaries" / "organism", "--export")
    model, _ = load_model("organism")
    cfg = DictTrainConfig(total_tokens=args.tokens, seed=args.seed, aux_coef=args.aux_coef,
                          dead_after_tokens=args.dead_after, resample_every=args.resample_every,
                          resample_until=args.resample_until, resample_dead_after_tokens=args.resample_dead_after,
                          resample_scale=args.resample_scale, calibrate_tokens=args.calibrate_tokens)
    configs = organism_dictionary_configs(model, args.d_sae, args.k)
    names = {c.name for c in configs}
    site_d_sae = _site_values(args.site_d_sae, "--site-d-sae", "a positive integer", names,
                              lambda v: int(v) if v.isdigit() and int(v) > 0 else None)
    site_act = _site_values(args.site_activation, "--site-activation", "topk or batchtopk", names,
                            lambda v: v if v in ("topk", "batchtopk") else None)
    configs = [dataclasses.replace(c, d_sae=site_d_sae.get(c.name, c.d_sae),
                                   activation=site_act.get(c.name, c.activation),
                                   skip=args.skip_transcoders and c.kind == "transcoder") for c in configs]
    if args.sites:
        if args.export:
            raise CircuitsError("--export writes the whole organism set; it cannot be combined with --sites")
        unknown = sorted(set(args.sites) - {c.name for c in configs})
        if unknown:
            raise CircuitsError(f"--sites: unknown {', '.join(unknown)}; use {', '.join(c.name for c in configs)}")
        configs = [c for c in configs if c.name in args.sites]
    dicts = train_dictionaries(model, configs, Path(args.out), cfg,
                               resume=not args.no_resume, progress=not args.quiet)
    dset = DictionarySet("organism", dicts)
    dset.save(Path(args.out) / "set")
    print(f"saved {len(dset)} dictionaries to {Path(args.out) / 'set'}")
    if args.export:
        dest = DATA_DIR / "dictionaries" / "organism"
        dset.save(dest)
        shutil.copy2(Path(args.out) / "dict_log.jsonl", dest / "train_log.jsonl")
        print(f"exported to {dest}")
    return 0


def _print_fidelity(report: dict) -> None:
    from circuits.dictionaries.evaluate import check_targets

    ok = check_targets(report)
    cols = ("l0", "fvu", "dead", "dead_scored", "ce_increase", "zero_ablation_cost", "ce_recovered_zero", "ce_recovered_mean", "kl",
            "ioi_ld_retained")
    print(f"{'dictionary':<14} " + " ".join(f"{c[:12]:>12}" for c in cols) + "  targets")
    rows = list(report["dictionaries"].items()) + [("ALL", report["all"])]
    for name, m in rows:
        vals = " ".join(f"{m[c]:>12.4f}" if c in m else f"{'':>12}" for c in cols)
        verdict = ok.get(name if name != "ALL" else "all")
        print(f"{name:<14} {vals}  {'met' if verdict else 'MISSED'}")
    print(f"clean CE {report['all']['ce_clean']:.4f} nats/token; IOI logit diff clean "
          f"{report['all']['ioi_ld_clean']:.3f}, all spliced {report['all']['ioi_ld_spliced']:.3f}")


def cmd_dicts_eval(args) -> int:
    from circuits.dictionaries import load_dictionaries
    from circuits.dictionaries.evaluate import FidelitySizes, evaluate_fidelity
    from circuits.model import load_model

    if args.out != "-":
        from circuits.inputs import check_output_file

        check_output_file(args.out, "--out")
    for flag, v in (("--rows", args.rows), ("--dead-rows", args.dead_rows)):
        if v is not None and v < 1:
            raise CircuitsError(f"{flag} {v}: must be at least 1")
    model, _ = load_model(args.model)
    dset = load_dictionaries(args.dicts, model)
    sizes = FidelitySizes() if args.rows is None else FidelitySizes(rows=args.rows, mean_rows=args.rows,
                                                                   ioi_prompts=args.rows)
    if args.dead_rows is not None:
        sizes = dataclasses.replace(sizes, dead_rows=args.dead_rows)
    report = evaluate_fidelity(model, dset, sizes, progress=not args.quiet)
    _print_fidelity(report)
    if args.dicts == "organism" and args.rows is None:
        from circuits.dictionaries.evaluate import CI_SIZES

        report["ci_subsample"] = {"sizes": CI_SIZES.__dict__, "report": evaluate_fidelity(model, dset, CI_SIZES)}
    if args.out != "-":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(out)
        print(f"wrote {out}")
    return 0


def cmd_dicts_convert(args) -> int:
    from circuits.dictionaries import load_folder
    from circuits.inputs import check_output_dir

    out = check_output_dir(args.out, "--out")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CircuitsError(f"{out} exists and is not empty; choose another --out or pass --force")
    dset = load_folder(Path(args.src), n_heads=args.n_heads, model_name=args.model_name)
    dset.save(out)
    print(f"converted {len(dset)} dictionaries ({', '.join(d.cfg.name for d in dset)}) to {out}")
    return 0


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (a crash never leaves a half-written file where a good one was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _parse_feature(spec: str):
    """--feature: a feature at a position, canonical ``M2#517@11`` (old ``mlp:2:11:517`` accepted)."""
    from circuits.ids import NodeIdError, parse_feature

    try:
        ref = parse_feature(spec)
    except NodeIdError as e:
        raise CircuitsError(f"--feature: {e}") from None
    if ref.pos is None:
        raise CircuitsError(f"--feature {spec!r} needs the position of the feature: write e.g. {ref}@11 "
                            "(or KIND:LAYER:POS:INDEX, e.g. mlp:2:11:517)")
    return ref.node()


def _prompt(args) -> str:
    """The prompt from the positional argument or --prompt-file (UTF-8, decode errors named)."""
    from circuits.inputs import check_text

    given = [x for x in (args.prompt, args.prompt_file) if x is not None]
    if len(given) != 1:
        raise CircuitsError("give the prompt either as an argument or with --prompt-file FILE (exactly one)")
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise CircuitsError(f"--prompt-file {path}: {'is a folder' if path.is_dir() else 'no such file'}")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CircuitsError(f"--prompt-file {path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                                f"{e.start}: {e.reason}); save the file as UTF-8") from None
        return text.removesuffix("\n")
    from circuits.errors import AttributionError

    try:
        return check_text(args.prompt, "the prompt")
    except AttributionError as e:
        raise CircuitsError(f"{e} (or pass it with --prompt-file FILE)") from None


def _check_trace_options(args) -> None:
    """Every option of `trace` that can be checked without the model, before it loads."""
    from circuits.inputs import check_output_file

    for flag, value in (("--node-threshold", args.node_threshold), ("--edge-threshold", args.edge_threshold)):
        if not 0 < value <= 1:
            raise CircuitsError(f"{flag} {value}: must be in (0, 1] (the fraction of influence to keep)")
    if not 0 < args.cum_prob <= 1:
        raise CircuitsError(f"--cum-prob {args.cum_prob}: must be in (0, 1] (the probability mass of the logits "
                            "to explain)")
    if args.max_logits < 1:
        raise CircuitsError(f"--max-logits {args.max_logits}: must be at least 1")
    if args.max_features is not None and args.max_features < 0:
        raise CircuitsError(f"--max-features {args.max_features}: must be 0 or more")
    if args.edge_tolerance < 0 or args.edge_tolerance >= 1:
        raise CircuitsError(f"--edge-tolerance {args.edge_tolerance}: must be in [0, 1)")
    if args.top < 0:
        raise CircuitsError(f"--top {args.top}: must be 0 or more")
    if args.ig_steps < 0:
        raise CircuitsError(f"--ig-steps {args.ig_steps}: must be 0 or more")
    if args.corrupt is not None:
        from circuits.errors import AttributionError
        from circuits.inputs import check_text

        try:
            check_text(args.corrupt, "the --corrupt prompt")
        except AttributionError as e:
            raise CircuitsError(str(e)) from None
    if args.ig_steps and not args.corrupt:
        raise CircuitsError("--ig-steps needs --corrupt PROMPT (integrated gradients between two prompts)")
    if (args.svg or args.png) and shutil.which("dot") is None:
        raise CircuitsError("--svg/--png need Graphviz's `dot`, which is not installed: install it (apt-get install "
                            "graphviz, brew install graphviz) or write --dot FILE and render it elsewhere")
    if args.dashboards and not Path(args.dashboards).is_file():
        raise CircuitsError(f"--dashboards {args.dashboards}: no such database file; build one with "
                            "`circuits dashboards build` or leave the option out")
    for kind in ("json", "dot", "svg", "png", "graphml", "circuit_tracer_json"):
        path = getattr(args, kind)
        if path:
            check_output_file(path, f"--{kind.replace('_', '-')}")


def _trace_target(args):
    from circuits.attribution import Contrast, FeatureTarget, Logit, TopLogits

    if args.feature and (args.target or args.contrast):
        raise CircuitsError("give either --feature or --target/--contrast, not both")
    if args.contrast:
        if not args.target or len(args.target) != 1:
            raise CircuitsError("--contrast B needs exactly one --target A (the graph explains logit(A) − logit(B))")
        return Contrast(args.target[0], args.contrast)
    if args.target:
        return Logit(tuple(args.target))
    if args.feature:
        return FeatureTarget(_parse_feature(args.feature))
    return TopLogits(args.cum_prob, args.max_logits)


def _feature_labels(rm, args, graph, say) -> dict[str, str]:
    """{node id: label} of the graph's features from the model's dashboard database, when there is one built for
    these dictionaries (empty otherwise)."""
    from circuits import dashboards, export

    path = Path(args.dashboards) if getattr(args, "dashboards", None) else _dashboard_db(args.model)
    if not path.exists():
        return {}
    try:
        db = dashboards.Dashboards(path, rm)
    except dashboards.DashboardError as e:
        say(f"no feature labels: {e}")
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


def _faithfulness(rm, pruned, prompt: str, say) -> list[dict] | None:
    """Ablation faithfulness of the pruned graph on its target metric (zero, and mean for the organism)."""
    from circuits.interventions import faithfulness, graph_metric, standard_ablations

    found = graph_metric(pruned)
    if found is None:
        return None
    metric, name = found
    say("faithfulness ...")
    out = []
    for ablation in standard_ablations(rm):
        f = faithfulness(rm, prompt, pruned, metric, ablation)
        out.append({"metric": name, "ablation": f.ablation, "score": f.score, "circuit": f.circuit, "empty": f.empty,
                    "full": f.full, "features": f.n_features, "errors": f.n_errors})
    return out


def _token_at(graph, node) -> str:
    toks = graph.metadata.get("token_strings", [])
    return repr(toks[node.pos]) if 0 <= node.pos < len(toks) else "?"


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


def _print_top_nodes(summary: dict) -> None:
    def label(n: dict) -> str:
        return f"  {n['label'][:60]}" if n.get("label") else ""

    print(f"top {len(summary['top_nodes'])} nodes by influence (id, token at its position, influence, activation, "
          "label):")
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

    from circuits import export
    from circuits.attribution import attribute
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.pruning import graph_scores, prune
    from circuits.replacement import ReplacementModel

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    target = _trace_target(args)
    if args.qk_heads < 1:
        raise CircuitsError(f"--qk-heads {args.qk_heads}: must be at least 1")
    if args.max_features == 0:
        warn("--max-features 0 keeps no feature nodes: the pruned graph has only tokens, error nodes and the "
             "target (leave the option out for no cap)")
    t0 = time.perf_counter()
    say(f"loading {args.model} and dictionaries {args.dicts} ...")
    model, _ = load_model(args.model)
    rm = ReplacementModel(model, load_dictionaries(args.dicts, model), name=args.model)
    load_s = time.perf_counter() - t0
    say("attributing ...")
    cache = rm.run(prompt) if args.qk else None  # --qk reads the same forward pass
    graph = attribute(rm, prompt, target, method=args.method, demean_logits=args.demean,
                      edge_tolerance=args.edge_tolerance, progress=not args.quiet, cache=cache)
    t1 = time.perf_counter()
    result = prune(graph, args.node_threshold, args.edge_threshold, args.max_features)
    labels = _feature_labels(rm, args, graph, say)
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
    faith = _faithfulness(rm, result.graph, prompt, say)
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
    for f in faith or []:
        print(f"faithfulness of the pruned graph on {f['metric']} ({f['ablation']} ablation): {f['score']:.3f} "
              f"(circuit {f['circuit']:.3f}, empty {f['empty']:.3f}, model {f['full']:.3f})")
    if faith:
        print("  = (circuit − empty) / (model − empty): 'circuit' keeps the pruned graph's feature and error nodes "
              "and ablates every other active feature and error node (zero: set to 0; mean: set to its mean over "
              "held-out text) with live attention; 'empty' ablates them all; 1.0 = the pruned graph alone gives the "
              "model's value, 0 = no better than ablating everything")
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
    from circuits.attribution.qk import qk_tables

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


def _node_name(node, pos: int) -> str:
    """A QK table entry: the node's id, or ``const@POS`` for a position's constant part."""
    from circuits import export

    return export.node_id(node) if node is not None else f"const@{pos}"


def _parse_head(spec: str) -> tuple[int, int]:
    """--head L.H → (layer, head)."""
    parts = spec.split(".")
    if len(parts) != 2 or not all(x.isdigit() for x in parts):
        raise CircuitsError(f"--head {spec!r}: write LAYER.HEAD, e.g. 3.0 (layer 3, head 0)")
    return int(parts[0]), int(parts[1])


def _check_attention_options(args) -> tuple[int, int]:
    from circuits.inputs import check_output_file

    layer, head = _parse_head(args.head)
    for flag, v in (("--key", args.key), ("--query", args.query), ("--versus", args.versus)):
        if v is not None and v < 0:
            raise CircuitsError(f"{flag} {v}: positions count from 0 (the BOS token)")
    if args.versus is not None and args.versus == args.key:
        raise CircuitsError(f"--versus {args.versus}: must differ from --key (the contrast is key minus versus)")
    if args.query is not None:
        for flag, v in (("--key", args.key), ("--versus", args.versus)):
            if v is not None and v > args.query:
                raise CircuitsError(f"{flag} {v}: a query at {args.query} attends to positions 0-{args.query} "
                                    "(causal attention)")
    if args.top < 1:
        raise CircuitsError(f"--top {args.top}: must be at least 1")
    if args.json:
        check_output_file(args.json, "--json")
    return layer, head


def cmd_attention(args) -> int:
    prompt = _prompt(args)
    layer, head = _check_attention_options(args)  # before the model loads

    from circuits.attribution.qk import explain_attention
    from circuits.attribution.targets import token_string
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel

    model, _ = load_model(args.model)
    rm = ReplacementModel(model, load_dictionaries(args.dicts, model), name=args.model)
    cache = rm.run(prompt)
    tokens = [token_string(model, t) for t in cache.tokens.tolist()]
    query = args.query if args.query is not None else cache.n_pos - 1
    keys = args.key if args.versus is None else (args.key, args.versus)
    qk = explain_attention(rm, cache, layer, head, query, keys, quantity="pattern" if args.pattern else "score")
    out = {"model": args.model, "dictionaries": args.dicts, "prompt": prompt, "token_strings": tokens,
           **qk.to_json(args.top)}
    if args.json:
        _write_json(Path(args.json), out)
    print("tokens: " + " ".join(f"{i}:{t!r}" for i, t in enumerate(tokens)))
    where = " − ".join(f"{query} {tokens[query]!r} → {q} {tokens[q]!r}" for q in qk.keys)
    pattern = " − ".join(f"{float(qk.pattern[q]):.4f}" for q in qk.keys)
    what = "linearised pattern change Σ_j ∂A/∂s_j · s_j" if args.pattern else "pre-softmax score"
    print(f"L{layer}.H{head} {where}: {what} {qk.value:.4f} (Σ of all terms {qk.total():.4f}); pattern {pattern}")
    print(f"top {args.top} pairs (query side × key side: contribution):")
    for t in qk.top(args.top):
        print(f"  {_node_name(t.query, query):<14} × {_node_name(t.key, t.key_pos):<14} {tokens[t.key_pos]!r:<12} "
              f"{t.contribution:+.4f}")
    print(f"top {args.top} pairs of two sources (constant parts left out):")
    for t in qk.top(args.top, constants=False):
        print(f"  {_node_name(t.query, query):<14} × {_node_name(t.key, t.key_pos):<14} {tokens[t.key_pos]!r:<12} "
              f"{t.contribution:+.4f}")
    for title, rows in (("query side (summed over the key side)", qk.query_marginals()),
                        ("key side (summed over the query side)", qk.key_marginals())):
        print(f"{title}:")
        for m in rows[: args.top]:
            print(f"  {_node_name(m.node, m.pos):<14} {tokens[m.pos]!r:<12} {m.contribution:+.4f}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def cmd_graph_show(args) -> int:
    from circuits import export

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


def cmd_graph_diff(args) -> int:
    from circuits import export

    a, b = export.read_json(Path(args.a)), export.read_json(Path(args.b))
    d = export.diff(a, b, args.rel_tol)
    print(f"A: {args.a} ({a.n_nodes} nodes, {a.n_edges} edges); B: {args.b} ({b.n_nodes} nodes, {b.n_edges} edges)")
    print(f"nodes only in B: {len(d.added_nodes)}; only in A: {len(d.removed_nodes)}; edges only in B: "
          f"{len(d.added_edges)}; only in A: {len(d.removed_edges)}; changed by > {args.rel_tol:.0%}: "
          f"{len(d.changed_edges)}")

    lab = _describe

    for title, rows, g in (("nodes only in B", d.added_nodes, b), ("nodes only in A", d.removed_nodes, a)):
        if rows:
            print(f"{title}: " + ", ".join(lab(g, n) for n in rows[: args.top]))
    for title, rows, g in (("edges only in B", d.added_edges, b), ("edges only in A", d.removed_edges, a)):
        for s, t, w in rows[: args.top]:
            print(f"  {title}: {lab(g, s)} -> {lab(g, t)} {w:+.4f}")
    for s, t, wa, wb in d.changed_edges[: args.top]:
        print(f"  changed: {lab(a, s)} -> {lab(a, t)} {wa:+.4f} -> {wb:+.4f}")
    return 0


def _dashboard_db(model_name: str) -> Path:
    from circuits.model import DATA_DIR

    return DATA_DIR / "dashboards" / f"{model_name}.sqlite"


def cmd_dashboards_build(args) -> int:
    import time

    from circuits import dashboards
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel

    if args.model != "organism":
        raise CircuitsError(f"dashboards are built from the organism's held-out corpus; {args.model!r} has no "
                            "corpus here: use --model organism")
    import sqlite3

    from circuits.inputs import check_output_file
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens

    if args.rows < 1:
        raise CircuitsError(f"--rows {args.rows}: must be at least 1")
    out = check_output_file(Path(args.out) if args.out else _dashboard_db(args.model), "--out")
    model, _ = load_model(args.model)
    rm = ReplacementModel(model, load_dictionaries(args.dicts, model), name=args.model)
    rows = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, args.rows, model.cfg.n_ctx, stream="heldout-dash")
    t0 = time.perf_counter()
    try:
        dashboards.build(rm, rows, out, seed=args.seed, progress=not args.quiet,
                         meta={"dictionaries": args.dicts, "stream": "heldout-dash"})
    except sqlite3.OperationalError as e:
        if "full" in str(e) or "disk" in str(e):
            raise CircuitsError(f"the disk is full while writing {out} ({e}); the database is consistent up to its "
                                "last committed batch: free some space and run the same command again (it resumes)"
                                ) from None
        raise CircuitsError(f"cannot write {out}: {e}") from None
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MB) from {rows.numel():,} tokens in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_feature(args) -> int:
    from circuits import dashboards
    from circuits.dictionaries import load_dictionaries
    from circuits.ids import NodeIdError, parse_feature
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel

    try:
        ref = parse_feature(args.id)
    except NodeIdError as e:
        raise CircuitsError(str(e)) from None
    name, feature = ref.dictionary, ref.index
    db_path = Path(args.db) if args.db else _dashboard_db(args.model)
    if args.text is not None:
        from circuits.errors import AttributionError
        from circuits.inputs import check_text

        try:
            check_text(args.text, "--text")
        except AttributionError as e:
            raise CircuitsError(str(e)) from None
    elif not db_path.is_file():
        raise CircuitsError(f"no dashboard database at {db_path}; build it with `circuits dashboards build` or give "
                            "--db FILE")
    model, _ = load_model(args.model)
    rm = ReplacementModel(model, load_dictionaries(args.dicts, model), name=args.model)
    if args.text is not None:
        print(f"{ref}: activation on every token of the text")
        for tok, act in dashboards.activations_on(rm, args.text, name, feature):
            act = round(act, 3) + 0.0  # never print -0.000
            print(f"{tok!r:<16} {act:8.3f} {'#' * max(0, min(40, round(4 * act)))}")
        return 0
    db = dashboards.Dashboards(db_path, rm)
    if args.label is not None:
        db.close()
        dashboards.set_label(db.path, name, feature, args.label or None)
        print(f"{ref}: label {'cleared' if not args.label else repr(args.label)}")
        return 0
    print(dashboards.render_text(db.get(name, feature)))
    return 0


def cmd_study(args) -> int:
    from circuits.studies import STUDY_NAMES, StudySpec, get_study, run_study, write_report

    if args.name == "list":
        for name in STUDY_NAMES:
            study = get_study(name)
            print(f"{name:10s} {study.title} — roles: {', '.join(study.roles)}")
        return 0
    if args.n < 4:
        raise CircuitsError(f"--n must be at least 4 (got {args.n}); mean ablation needs several prompts per group")
    if args.workers < 1:
        raise CircuitsError(f"--workers must be at least 1 (got {args.workers})")
    if args.top < 1:
        raise CircuitsError(f"--top must be at least 1 (got {args.top})")
    options = {}
    if args.templates is not None:
        if args.name != "ioi":
            raise CircuitsError("--templates applies to the ioi study only")
        options["templates"] = args.templates
    get_study(args.name, **options)  # validates the options before any model loads
    spec = StudySpec(args.name, model=args.model, dicts=args.dicts, n=args.n, seed=args.seed,
                     options=tuple(sorted(options.items())), ig_steps=args.ig_steps)
    from circuits.inputs import check_output_dir

    out = check_output_dir(args.out or f"reports/{args.name}", "--out")
    result = run_study(spec, workers=args.workers, ray_address=args.ray_address, top=args.top,
                       progress=not args.quiet)
    folder = write_report(result, out)
    d = result.data
    c = d["circuit"]

    def iv(x):
        return f"{x['value']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]" if x and x.get("lo") is not None else "n/a"

    sets = ", ".join(f"{k} {v['n']}" for k, v in d["sets"].items() if isinstance(v, dict) and "n" in v)
    print(f"{result.title}: prompts {sets}; clean metric {d['metrics']['clean_mean']:.3f} "
          f"(accuracy {d['metrics']['accuracy']:.1%}) on the evaluation set")
    print(f"circuit of {c['n_features']} feature role nodes (chosen on the selection set), standard mean-ablation "
          f"faithfulness on the evaluation set (95% intervals): features alone {iv(c['features_only'])}, with every "
          f"error node {iv(c['with_errors'])}; stratified random {iv(c['random_features_only'])} / "
          f"{iv(c['random_with_errors'])}")
    print(f"labelled variants: zero ablation {iv(c['zero_features_only'])} / {iv(c['zero_with_errors'])}; "
          f"held-inactive {iv(c['held_features_only'])} / {iv(c['held_with_errors'])}")
    if "test" in d:
        t = d["test"]["circuit"]
        print(f"test set ({d['test']['n']} prompts, new templates): features alone {iv(t['features_only'])}, with "
              f"errors {iv(t['with_errors'])}")
    for w in d["sets"]["main_groups"]["warnings"]:
        print(f"warning: {w}")
    for ck in d["checks"].values():
        print(f"- {ck['title']}: {ck['verdict']}")
    print(f"report: {folder / 'report.md'} ({result.timings['total_s']:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from circuits.model import DATA_DIR  # no torch: the parser and the option checks stay fast

    p = argparse.ArgumentParser(prog="circuits", description="Feature-level circuits in transformers.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    org = sub.add_parser("organism", help="the embedded toy-world model").add_subparsers(dest="action",
                                                                                        required=True)
    t = org.add_parser("train", help="train the organism from scratch (resumes from the folder's checkpoint)")
    t.add_argument("--out", default="runs/organism", help="run folder (checkpoints, log, exported weights)")
    t.add_argument("--steps", type=int, default=4500, help="phase-1 steps (batch 32 x 128 tokens)")
    t.add_argument("--phase2-steps", type=int, default=1500, help="phase-2 steps (compositional IOI, callbacks)")
    t.add_argument("--phase4-steps", type=int, default=None,
                   help="phase-4 steps (slot-noised IOI; default 1500); phase 3 is 1500 steps")
    t.add_argument("--phase5-steps", type=int, default=None,
                   help="phase-5 steps (phase 4 with every name in IOI, held-out pairs excluded; default 1500)")
    t.add_argument("--mix", default="phased", choices=["phased", "final"],
                   help="phased: the five-phase recipe; final: one corpus mix from step 0 (phase flags ignored)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--corpus-seed", type=int, default=0)
    t.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--export", action="store_true", help="copy the result into data/organism")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_organism_train)

    e = org.add_parser("eval", help="behaviour evaluation on held-out splits")
    e.add_argument("--model", default="organism", help="organism or an organism folder")
    e.add_argument("--out", default=str(DATA_DIR / "organism" / "eval.json"), help="JSON output ('-': none)")
    e.add_argument("--subsample", type=float, default=1.0, help="fraction of prompts (0 < F <= 1)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_organism_eval)

    c = org.add_parser("corpus", help="print corpus rows")
    c.add_argument("--rows", type=int, default=3)
    c.add_argument("--tokens", type=int, default=128)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--stream", default="train", choices=["train", "heldout"])
    c.set_defaults(func=cmd_organism_corpus)

    dicts = sub.add_parser("dicts", help="transcoders and attention-output SAEs").add_subparsers(dest="action",
                                                                                              required=True)
    t = dicts.add_parser("train", help="train every dictionary of a model on its corpus (resumable)")
    t.add_argument("--model", default="organism")
    t.add_argument("--out", default="runs/dicts")
    t.add_argument("--tokens", type=int, default=4_000_000, help="activations per dictionary")
    t.add_argument("--d-sae", type=int, default=2048)
    t.add_argument("--k", type=int, default=30, help="BatchTopK mean active features per token")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--site-d-sae", action="append", metavar="NAME=N",
                   help="features for one dictionary, e.g. transcoder_L3=4096 (repeatable)")
    t.add_argument("--site-activation", action="append", metavar="NAME=ACT",
                   help="training activation for one dictionary: batchtopk (default; saved as JumpReLU with its "
                   "learned threshold) or topk (exactly k features per token), e.g. transcoder_L3=topk (repeatable)")
    t.add_argument("--skip-transcoders", action="store_true", help="train skip transcoders: each transcoder's "
                   "output adds a linear term W_skip·x of its input (Paulo et al. 2025)")
    t.add_argument("--sites", nargs="+", metavar="NAME", help="train only these dictionaries (e.g. transcoder_L3); "
                   "default: all (same activation stream; initial weights differ from a full run)")
    t.add_argument("--aux-coef", type=float, default=1 / 32, help="AuxK loss weight")
    t.add_argument("--dead-after", type=int, default=200_000, help="tokens without firing before AuxK treats a "
                   "feature as dead")
    t.add_argument("--resample-every", type=int, default=0, help="steps between resampling dead features "
                   "(0 = never; AuxK only)")
    t.add_argument("--resample-until", type=float, default=0.7, help="fraction of the run after which nothing "
                   "is resampled")
    t.add_argument("--resample-dead-after", type=int, default=100_000, help="tokens without firing before a "
                   "feature is resampled")
    t.add_argument("--resample-scale", type=float, default=0.2, help="resampled encoder norm / mean live "
                   "encoder norm")
    t.add_argument("--calibrate-tokens", type=int, default=0, help="BatchTopK: after training, set the inference "
                   "threshold so that L0 = k on this many training tokens (0 = keep the running threshold)")
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--export", action="store_true", help="write the set to data/dictionaries/organism")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_dicts_train)

    e = dicts.add_parser("eval", help="fidelity report: L0, FVU, dead, CE spliced/ablated, KL, IOI")
    e.add_argument("--model", default="organism")
    e.add_argument("--dicts", default="organism", help="organism, gpt2-transcoders, gpt2-attn-kk or a folder")
    e.add_argument("--out", default=str(DATA_DIR / "dictionaries" / "organism" / "fidelity.json"))
    e.add_argument("--rows", type=int, default=None, help="held-out rows (default 256)")
    e.add_argument("--dead-rows", type=int, default=None,
                   help="held-out rows over which a feature must fire once not to count as dead (default 8192)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_dicts_eval)

    v = dicts.add_parser("convert", help="convert public dictionary files to our (SAELens) layout")
    v.add_argument("src", help="a Dunefsky/Kissane .pt folder, a SAELens folder or a circuit-tracer folder")
    v.add_argument("--out", required=True)
    v.add_argument("--n-heads", type=int, default=None, help="heads of the model (attention SAEs on hook_z)")
    v.add_argument("--model-name", default=None)
    v.add_argument("--force", action="store_true", help="write into a non-empty folder")
    v.set_defaults(func=cmd_dicts_convert)

    a = sub.add_parser("trace", aliases=["attribute"],
                       help="attribution graph of a prompt: summary, and JSON / DOT / SVG / PNG / GraphML files")
    a.add_argument("prompt", nargs="?", help="the prompt (or --prompt-file)")
    a.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 text file")
    a.add_argument("--model", default="organism")
    a.add_argument("--dicts", default="organism", help="organism, a public set name, or a folder")
    a.add_argument("--target", nargs="+", metavar="TOKEN", help="explain these tokens' logits")
    a.add_argument("--contrast", metavar="TOKEN", help="with one --target A: explain logit(A) − logit(TOKEN)")
    a.add_argument("--feature", metavar="ID@POS", help="explain one active feature at a position (local circuit), "
                   "e.g. M2#517@11 (transcoder L2 feature 517 at position 11) or A1#33@5")
    a.add_argument("--cum-prob", type=float, default=0.95, help="salient logits: probability mass to cover")
    a.add_argument("--max-logits", type=int, default=10)
    a.add_argument("--method", default="auto", choices=["auto", "analytic", "reverse", "autograd"])
    a.add_argument("--demean", action="store_true", help="explain logits minus their mean over the vocabulary")
    a.add_argument("--edge-tolerance", type=float, default=0.0,
                   help="store only edges above this fraction of each target's total |weight|")
    a.add_argument("--node-threshold", type=float, default=0.8)
    a.add_argument("--edge-threshold", type=float, default=0.98)
    a.add_argument("--max-features", type=int, default=None, help="cap on feature nodes after pruning")
    a.add_argument("--corrupt", metavar="PROMPT", help="also run attribution patching against this prompt")
    a.add_argument("--ig-steps", type=int, default=0, help="with --corrupt: integrated gradients with N steps")
    a.add_argument("--top", type=int, default=15, help="nodes to list")
    for flag in ("--json", "--dot", "--svg", "--png", "--graphml", "--circuit-tracer-json"):
        a.add_argument(flag, metavar="FILE")
    a.add_argument("--full", action="store_true", help="write the unpruned graph (default: the pruned one)")
    a.add_argument("--dashboards", metavar="DB", help="feature labels from this dashboard database "
                   "(default data/dashboards/MODEL.sqlite when it exists)")
    a.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a.add_argument("--json-summary", action="store_true", help="print the summary as one JSON object")
    a.add_argument("--qk", action="store_true", help="attach the QK tables (why each head attended there) of the "
                   "heads carrying the strongest edges into attention features to the graph (metadata.qk)")
    a.add_argument("--qk-heads", type=int, default=3, metavar="N", help="with --qk: how many (head, query, key) "
                   "routes (default 3)")
    a.set_defaults(func=cmd_trace)

    at = sub.add_parser("attention", help="why a head attended where it did: its attention score as a sum over "
                        "(query-side source, key-side source) pairs in the frozen replacement model")
    at.add_argument("prompt", nargs="?", help="the prompt (or --prompt-file)")
    at.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 text file")
    at.add_argument("--model", default="organism")
    at.add_argument("--dicts", default="organism", help="organism, a public set name, or a folder")
    at.add_argument("--head", required=True, metavar="L.H", help="layer and head, e.g. 3.0")
    at.add_argument("--query", type=int, default=None, metavar="P", help="query position (default: the last)")
    at.add_argument("--key", type=int, required=True, metavar="Q", help="key position")
    at.add_argument("--versus", type=int, default=None, metavar="Q2",
                    help="explain the preference score(P→Q) − score(P→Q2) (IOI: END→IO minus END→S2)")
    at.add_argument("--pattern", action="store_true", help="explain the first-order change of the attention "
                    "pattern (softmax Jacobian × terms) instead of the pre-softmax score")
    at.add_argument("--top", type=int, default=10, help="pairs and per-side sources to list")
    at.add_argument("--json", metavar="FILE", help="write the table as JSON")
    at.set_defaults(func=cmd_attention)

    gr = sub.add_parser("graph", help="inspect graph files").add_subparsers(dest="action", required=True)
    sh = gr.add_parser("show", help="summary of a graph JSON file")
    sh.add_argument("file")
    sh.add_argument("--top", type=int, default=10)
    sh.set_defaults(func=cmd_graph_show)
    df = gr.add_parser("diff", help="nodes and edges that appear, vanish or change between two graphs")
    df.add_argument("a")
    df.add_argument("b")
    df.add_argument("--rel-tol", type=float, default=0.1, help="relative weight change that counts")
    df.add_argument("--top", type=int, default=10)
    df.set_defaults(func=cmd_graph_diff)

    dash = sub.add_parser("dashboards", help="feature dashboards (SQLite)").add_subparsers(dest="action",
                                                                                         required=True)
    b = dash.add_parser("build", help="build every feature's dashboard over held-out text (resumes)")
    b.add_argument("--model", default="organism")
    b.add_argument("--dicts", default="organism")
    b.add_argument("--rows", type=int, default=2000, help="held-out rows of n_ctx tokens")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", help="database path (default data/dashboards/MODEL.sqlite)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_dashboards_build)
    f = sub.add_parser("feature", help="print a feature's dashboard (or its activations on --text)")
    f.add_argument("id", help="feature id: M2#517 (transcoder L2 feature 517), A1#33 (attention SAE L1); a "
                   "position (@5) is ignored; old forms transcoder_L2#517, mlp:2:517 are accepted")
    f.add_argument("--model", default="organism")
    f.add_argument("--dicts", default="organism")
    f.add_argument("--db", help="database path (default data/dashboards/MODEL.sqlite)")
    f.add_argument("--text", help="test on custom text: the feature's activation on every token")
    f.add_argument("--label", help="set a label that overrides the automatic one ('' clears it)")
    f.set_defaults(func=cmd_feature)

    st = sub.add_parser("study", help="scripted case studies (ioi, induction, two_hop) → a report folder")
    st.add_argument("name", help="ioi | induction | two_hop | list")
    st.add_argument("--n", type=int, default=200,
                    help="evaluation prompts (default 200); selection and reference sets are drawn beside them")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--model", default="organism")
    st.add_argument("--dicts", default="organism")
    st.add_argument("--templates", choices=["heldout", "train", "all"], default=None,
                    help="ioi: which templates (default heldout); names are always the held-out ones")
    st.add_argument("--top", type=int, default=100, help="feature role nodes in the circuit (default 100)")
    st.add_argument("--ig-steps", type=int, default=4, help="integrated-gradient steps for node scores")
    st.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                    help="parallel worker processes (default: up to 2)")
    st.add_argument("--ray-address", default=None, help="run the per-prompt work as Ray tasks on this cluster")
    st.add_argument("--out", default=None, help="report folder (default reports/NAME)")
    st.add_argument("--quiet", action="store_true")
    st.set_defaults(func=cmd_study)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "subsample", 1.0) <= 0 or getattr(args, "subsample", 1.0) > 1:
        parser.error("--subsample must be in (0, 1]")
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        warn(str(message))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            for noise in (DeprecationWarning, FutureWarning, PendingDeprecationWarning, ResourceWarning):
                warnings.simplefilter("ignore", noise)  # libraries' notes to developers, not to the user
            warnings.showwarning = show
            return args.func(args)
    except CircuitsError as e:
        if args.debug:
            raise
        print(f"circuits: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuits: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `circuits ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
