"""The IOI headline on fresh prompts, and two dictionary sets compared prompt by prompt.

    python benchmarks/headline_fresh.py --sets organism organism-finetuned --seed 1 [--n 200] [--workers 2]

The study's headline (features-alone faithfulness of the 100-node IG circuit, standard mean ablation) is measured on
seed 0's evaluation prompts, which also helped choose the default dictionary set (docs/case-studies.md). This runs
`circuits study ioi` for each set on another seed — new selection, evaluation and reference prompts, the same
prompts for every set — and prints each set's headline with its bootstrap interval and the difference between the
sets with a **paired** bootstrap interval over the shared evaluation prompts (one resample of prompts for both sets'
ratios). Each set's circuit is chosen on its own selection prompts, as in the report.

Only the faithfulness curves are needed, so the head analysis and the QK section (about 3.5 min per run) are
switched off in this process; the test set is computed by the runner but not printed.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["organism", "organism-finetuned"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from circuits.studies import StudySpec, run_study, stats
    from circuits.studies.ioi import IOIStudy

    IOIStudy.head_analysis = lambda self, *a, **k: None  # not needed for the curves
    IOIStudy.qk_analysis = lambda self, *a, **k: None

    per_set = {}
    for name in args.sets:
        t0 = time.perf_counter()
        result = run_study(StudySpec("ioi", dicts=name, n=args.n, seed=args.seed), workers=args.workers,
                           keep_per_prompt=True, progress=False)
        per_set[name] = result.data["per_prompt_headline"]
        print(f"{name}: ran in {time.perf_counter() - t0:.0f} s", flush=True)
    prompts = {tuple(v["prompts"]) for v in per_set.values()}
    if len(prompts) != 1:
        raise SystemExit("the sets saw different evaluation prompts; a paired comparison needs the same")

    k = next(iter(per_set.values()))["k"]
    print(f"\nIOI, seed {args.seed}, {args.n} evaluation prompts, {k}-node IG circuit, standard mean ablation, "
          "95% bootstrap intervals over prompts:")
    print("| set | features alone | + every error node |\n|---|---|---|")
    for name, v in per_set.items():
        alone = stats.faithfulness_interval(v["features_only"], v["empty"], v["full"], seed=0)
        both = stats.faithfulness_interval(v["with_errors"], v["empty"], v["full"], seed=0)
        print(f"| {name} | {alone} | {both} |")
    names = list(per_set)
    for other in names[1:]:
        a, b = per_set[names[0]], per_set[other]
        for what in ("features_only", "with_errors"):
            diff = stats.faithfulness_difference((a[what], a["empty"], a["full"]), (b[what], b["empty"], b["full"]))
            print(f"{names[0]} − {other}, {what.replace('_', ' ')}: {diff} (paired)")


if __name__ == "__main__":
    main()
