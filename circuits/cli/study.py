"""`circuits study NAME`: scripted case studies (ioi, induction, two_hop) written to a report folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from circuits.cli.runtime import add_device_option, resolve_device
from circuits.errors import CircuitsError


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
    study = get_study(args.name, **options)  # validates the options before any model loads
    from circuits.cli.trace_checks import check_dicts_name, check_model_name

    check_dicts_name(args.dicts)  # a mistyped set: now, not after the model loads
    threads = os.environ.get("OMP_NUM_THREADS", "1")  # set by the global --threads rule (cli/runtime.py)
    if threads.isdigit() and int(threads) > 1:
        print(f"note: a study runs one torch thread per process (its numbers must not depend on the count), so the "
              f"{threads} threads asked for are not used; --workers {args.workers} sets its parallelism",
              file=sys.stderr)
    if study.max_evaluation is not None and args.n > study.max_evaluation:
        print(f"warning: --n {args.n}: the {args.name} study has at most {study.max_evaluation} evaluation prompts; "
              f"using --n {study.max_evaluation}", file=sys.stderr)
        args.n = study.max_evaluation
    spec = StudySpec(args.name, model=args.model, dicts=args.dicts, n=args.n, seed=args.seed,
                     options=tuple(sorted(options.items())), ig_steps=args.ig_steps,
                     device=resolve_device(args.device))
    from circuits.inputs import check_output_dir

    out = check_output_dir(args.out or f"reports/{args.name}", "--out")
    _check_report_folder(out, args.name)
    check_model_name(args.model)  # the last check before the model loads
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


def add_parser(sub) -> None:
    """`study`."""
    st = sub.add_parser("study", help="scripted case studies (ioi, induction, two_hop) → a report folder")
    st.add_argument("name", metavar="STUDY", help="ioi | induction | two_hop, or list (the studies, one line each)")
    st.add_argument("--n", type=int, default=200,
                    help="evaluation prompts (default 200); selection and reference sets are drawn beside them")
    st.add_argument("--seed", type=int, default=0, help="seed of the prompt draws (default 0)")
    st.add_argument("--model", default="organism", help="the model (default organism)")
    st.add_argument("--dicts", default="organism", help="dictionary set name or folder (default organism)")
    st.add_argument("--templates", choices=["heldout", "train", "all"], default=None,
                    help="ioi: which templates (default heldout); names are always the held-out ones")
    st.add_argument("--top", type=int, default=100, help="feature role nodes in the circuit (default 100)")
    st.add_argument("--ig-steps", type=int, default=4, help="integrated-gradient steps for node scores")
    st.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                    help="parallel worker processes (default: up to 2)")
    st.add_argument("--ray-address", default=None, help="run the per-prompt work as Ray tasks on this cluster")
    st.add_argument("--out", default=None, help="report folder (default reports/NAME)")
    st.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_device_option(st)
    st.set_defaults(func=cmd_study)


def _check_report_folder(out: Path, name: str) -> None:
    """A study writes a whole folder: it may replace a previous report of the same study, never other files."""
    import json

    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        previous = json.loads((out / "results.json").read_text()).get("study")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous is None:
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise CircuitsError(f"--out {out}: the folder holds files that are not a study report ({shown}); a "
                            "study writes report.md, results.json and more there: choose a new or empty folder")
    if previous != name:
        raise CircuitsError(f"--out {out}: the folder holds a report of the {previous} study; choose another folder "
                            f"for {name}")
