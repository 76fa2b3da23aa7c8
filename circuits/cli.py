"""The `circuits` command. Subcommands per capability; every user error is one line on stderr and exit status 2.

    circuits organism train   [--out DIR] [--steps N] [--seed S] [--no-resume] [--export]
    circuits organism eval    [--model organism|DIR] [--out FILE] [--subsample F]
    circuits organism corpus  [--rows N] [--seed S] [--stream train|heldout]

``--debug`` (before the subcommand) shows the traceback of an error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from circuits.errors import CircuitsError


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
    import torch

    from circuits.model import DATA_DIR
    from circuits.organism.evaluate import quick_eval
    from circuits.organism.train import OrganismTrainConfig, train_organism

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = OrganismTrainConfig(steps=args.steps, seed=args.seed, corpus_seed=args.corpus_seed)
    out = Path(args.out)
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


def build_parser() -> argparse.ArgumentParser:
    from circuits.model import DATA_DIR

    p = argparse.ArgumentParser(prog="circuits", description="Feature-level circuits in transformers.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    org = sub.add_parser("organism", help="the embedded toy-world model").add_subparsers(dest="action",
                                                                                        required=True)
    t = org.add_parser("train", help="train the organism from scratch (resumes from the folder's checkpoint)")
    t.add_argument("--out", default="runs/organism", help="run folder (checkpoints, log, exported weights)")
    t.add_argument("--steps", type=int, default=4500)
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
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "subsample", 1.0) <= 0 or getattr(args, "subsample", 1.0) > 1:
        parser.error("--subsample must be in (0, 1]")
    try:
        return args.func(args)
    except CircuitsError as e:
        if args.debug:
            raise
        print(f"circuits: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuits: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
