"""Benchmark: the full IOI case study on the organism (targets: n = 200 report in ≤ 10 min on 2 cores; the project's
aim for the circuit of ≤ 100 feature nodes is standard mean-ablation faithfulness ≥ 0.5 from features alone, on
evaluation prompts, clearly above the stratified random baseline).

    python benchmarks/study.py [--study ioi] [--n 200] [--workers 2] [--out DIR]

Runs `circuits study` in this process (the same code path as the command), writes the report, and prints the time
of each stage and the faithfulness numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    from circuits.studies import StudySpec, run_study, write_report

    parser = argparse.ArgumentParser()
    parser.add_argument("--study", default="ioi")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    result = run_study(StudySpec(args.study, n=args.n), workers=args.workers, progress=False)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / args.study
    write_report(result, out)
    total = time.perf_counter() - t0
    t = result.timings
    c = result.data["circuit"]
    print(f"{'stage':44s} seconds")
    print(f"{'model, dataset, group means, metrics, fidelity':44s} {t['setup_s']:7.1f}")
    print(f"{'pass 1 (selection set): graphs, scores':44s} {t['graphs_s']:7.1f}")
    print(f"{'pass 2 (evaluation set): curves, checks':44s} {t['circuits_s']:7.1f}")
    for key, label in (("test_s", "test set"), ("heads_s", "head analysis")):
        if key in t:
            print(f"{label:44s} {t[key]:7.1f}")
    print(f"{'report files':44s} {total - t['total_s']:7.1f}")
    print(f"{'total (process start excluded)':44s} {total:7.1f}")
    print(f"{args.study}, n = {args.n} evaluation prompts, {args.workers} workers; report in {out}")

    def iv(x):
        return f"{x['value']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]"

    print(f"circuit of {c['n_features']} feature role nodes, standard mean ablation: features alone "
          f"{iv(c['features_only'])} (stratified random {iv(c['random_features_only'])}), with every error node "
          f"{iv(c['with_errors'])} (random {iv(c['random_with_errors'])})")
    ok_time = total <= 600
    ok_faith = c["features_only"]["lo"] >= 0.5
    print(f"targets: report ≤ 10 min -> {'met' if ok_time else 'MISSED'} ({total / 60:.1f} min); features-alone "
          f"faithfulness ≥ 0.5 with ≤ 100 feature nodes -> {'met' if ok_faith else 'MISSED'}")


if __name__ == "__main__":
    main()
