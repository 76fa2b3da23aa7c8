"""Benchmark: time to load the embedded organism (target: under 2 s, no network).

    python benchmarks/load_model.py [--repeats 5]

Prints a table: the first load in a fresh process (imports included) and warm reloads.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    t0 = time.perf_counter()
    from circuits import load_model

    t_import = time.perf_counter() - t0
    t = time.perf_counter()
    import transformer_lens  # noqa: F401  (what the first load_model call would otherwise import)

    t_tl = time.perf_counter() - t
    t1 = time.perf_counter()
    load_model("organism")
    t_first = time.perf_counter() - t1
    warm = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        load_model("organism")
        warm.append(time.perf_counter() - t)
    print(f"{'measure':<36} {'seconds':>8}")
    print(f"{'import circuits (cold process)':<36} {t_import:>8.3f}")
    print(f"{'import transformer_lens (+ torch)':<36} {t_tl:>8.3f}")
    print(f"{'first load_model(organism)':<36} {t_first:>8.3f}")
    print(f"{'fresh process: imports + first load':<36} {t_import + t_tl + t_first:>8.3f}")
    print(f"{'warm load_model(organism), median':<36} {statistics.median(warm):>8.3f}")
    print(f"target: load_model(organism) < 2 s (TransformerLens already imported) -> "
          f"{'met' if t_first < 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
