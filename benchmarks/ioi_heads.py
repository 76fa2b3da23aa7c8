"""Component-level IOI analysis on the organism: ``python benchmarks/ioi_heads.py [--n 200] [--out FILE.md]``.

Evaluation prompts from `IOIStudy().prompts(model, n, seed=11)`, reference prompts from seed 12 (held-out names and
templates), prepared as the study runner prepares them. Roles are assigned on the evaluation prompts among 32 heads
and several tests, so a chance pass is possible: the whole analysis runs again on a third set (seed 13, any prompt
text shared with the other two removed) and each role is marked replicated or not (`heads.replication`), as the
study report does with its selection prompts. Prints the timing and writes the Markdown section (and the JSON next
to it)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eval-seed", type=int, default=11)
    ap.add_argument("--ref-seed", type=int, default=12)
    ap.add_argument("--replication-seed", type=int, default=13,
                    help="prompts of the replication run (0 skips it)")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--out", default="reports/ioi_heads.md")
    args = ap.parse_args()

    import torch

    from circuits import load_dictionaries, load_model
    from circuits.replacement import ReplacementModel
    from circuits.studies.base import prepare
    from circuits.studies.heads import ioi_head_analysis, render_head_section, replication
    from circuits.studies.ioi import IOIStudy

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    study = IOIStudy()
    evaluation = prepare(rm, study, study.prompts(model, args.n, args.eval_seed))
    reference = prepare(rm, study, study.prompts(model, args.n, args.ref_seed))
    t1 = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the analysis' progress lines
    data = ioi_head_analysis(rm, evaluation, reference, seed=args.seed, progress=True)
    t2 = time.perf_counter()
    if args.replication_seed:
        seen = {p.prompt.clean for p in evaluation + reference}
        again = [p for p in prepare(rm, study, study.prompts(model, args.n, args.replication_seed))
                 if p.prompt.clean not in seen]
        data["replication"] = replication(data, ioi_head_analysis(rm, again, reference, seed=args.seed), len(again),
                                          f"prompts of seed {args.replication_seed} (no prompt text in common with "
                                          "the evaluation or reference prompts)")
    t3 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_head_section(data))
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, sort_keys=True))
    print(f"load + prepare {t1 - t0:.1f} s; analysis {t2 - t1:.1f} s; replication {t3 - t2:.1f} s; wrote {out}")


if __name__ == "__main__":
    main()
