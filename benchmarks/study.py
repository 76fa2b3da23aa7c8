"""Benchmark: the full IOI case study on the organism (targets: n = 200 report in ≤ 10 min on 2 cores; the
aggregated circuit of ≤ 100 feature nodes keeps ≥ 80% of the logit difference under mean ablation and clearly beats
random circuits).

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
    print(f"{'pass 1: graphs, effects, roll-ups, IG':44s} {t['graphs_s']:7.1f}")
    print(f"{'pass 2: faithfulness curve, edges, checks':44s} {t['circuits_s']:7.1f}")
    print(f"{'report files':44s} {total - t['total_s']:7.1f}")
    print(f"{'total (process start excluded)':44s} {total:7.1f}")
    print(f"{args.study}, n = {args.n}, {args.workers} workers; report in {out}")
    print(f"circuit of {c['n_features']} feature role nodes: faithfulness {c['faithfulness_features_only']:.3f} "
          f"alone (random {c['random_features_only']:.3f}), {c['faithfulness_with_errors']:.3f} with every error "
          f"node kept (random {c['random_with_errors']:.3f})")
    ok_time = total <= 600
    ok_faith = c["faithfulness_with_errors"] >= 0.8
    print(f"targets: report ≤ 10 min -> {'met' if ok_time else 'MISSED'} ({total / 60:.1f} min); faithfulness ≥ 0.8 "
          f"with ≤ 100 feature nodes -> {'met' if ok_faith else 'MISSED'} with error nodes in the circuit "
          f"({c['faithfulness_with_errors']:.3f}), {'met' if c['faithfulness_features_only'] >= 0.8 else 'MISSED'} "
          f"by features alone ({c['faithfulness_features_only']:.3f})")


if __name__ == "__main__":
    main()
