"""`circuits organism train | eval | corpus`: the embedded toy-world model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from circuits.cli.runtime import add_device_option, resolve_device
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


def eval_output(args) -> str:
    """Where `organism eval` writes: ``--out`` when given ('-': nowhere); otherwise the shipped
    ``data/organism/eval.json`` only for a full evaluation of the shipped organism (which reproduces that file), and
    nowhere for another model or a subsample (a result the shipped file must not be overwritten with)."""
    if args.out is not None:
        return args.out
    from circuits.model import DATA_DIR

    if args.model == "organism" and args.subsample >= 1:
        return str(DATA_DIR / "organism" / "eval.json")
    return "-"


def cmd_organism_eval(args) -> int:
    from circuits.model import load_model
    from circuits.organism.evaluate import EvalSizes, evaluate_organism, write_eval

    defaulted, args.out = args.out is None, eval_output(args)
    if args.out != "-":
        from circuits.inputs import check_output_file

        check_output_file(args.out, "--out", kind="json")
    model, _ = load_model(args.model, resolve_device(args.device))
    sizes = EvalSizes().scaled(args.subsample) if args.subsample < 1 else EvalSizes()
    res = evaluate_organism(model, sizes=sizes, progress=not args.quiet)
    _print_eval_table(res)
    if args.out != "-":
        write_eval(res, Path(args.out), with_ci_subsample=(args.model == "organism" and args.subsample >= 1),
                   model=model)
        print(f"wrote {args.out}")
    elif defaulted:
        print("not saved (another model or a subsample never replaces the shipped eval.json): pass --out FILE")
    return 0


def cmd_organism_corpus(args) -> int:
    from circuits.organism.corpus import ToyWorldCorpus

    corpus = ToyWorldCorpus(args.seed)
    for i in range(args.rows):
        print(corpus.row_text(i, args.tokens, args.stream))
    return 0


def add_parser(sub) -> None:
    """`organism` and its actions."""
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
    e.add_argument("--out", default=None, help="JSON output ('-': none; default: data/organism/eval.json for the "
                   "shipped organism at full size, which it reproduces; not saved for another model or a subsample)")
    e.add_argument("--subsample", type=float, default=1.0, help="fraction of prompts (0 < F <= 1)")
    e.add_argument("--quiet", action="store_true")
    add_device_option(e)
    e.set_defaults(func=cmd_organism_eval)

    c = org.add_parser("corpus", help="print corpus rows")
    c.add_argument("--rows", type=int, default=3)
    c.add_argument("--tokens", type=int, default=128)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--stream", default="train", choices=["train", "heldout"])
    c.set_defaults(func=cmd_organism_corpus)
