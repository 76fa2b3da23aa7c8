"""Benchmark: feature dashboards for the organism (targets: build ≤ 15 min on 2 cores, lookup ≤ 20 ms,
database ≤ 50 MB).

    python benchmarks/dashboards.py [--rows 2000] [--out data/dashboards/organism.sqlite] [--skip-build]

Builds every dashboard (unless --skip-build; the build ends with the enrichment labels), then relabels the database
on its own (`dashboards.relabel`: what `circuits dashboards label` runs — with --skip-build this is the migration of a
database built before labels), times 200 random lookups (`Dashboards.get`, `Dashboards.label`) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path


def main() -> None:
    from circuits import dashboards, load_dictionaries, load_model
    from circuits.model import DATA_DIR
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens
    from circuits.replacement import ReplacementModel

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", default=str(DATA_DIR / "dashboards" / "organism.sqlite"))
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    build_s = None
    if not args.skip_build:
        if out.exists():
            out.unlink()
        rows = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, args.rows, model.cfg.n_ctx,
                            stream="heldout-dash")
        t = time.perf_counter()
        dashboards.build(rm, rows, out, seed=0, progress=True,
                         meta={"dictionaries": "organism", "stream": "heldout-dash"})
        build_s = time.perf_counter() - t
    meta = dashboards.Dashboards(out, rm).meta
    rows = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, int(meta["rows"]), int(meta["n_ctx"]),
                        stream=meta.get("stream", "heldout-dash"))
    t = time.perf_counter()
    n_labelled = dashboards.relabel(out, rm, rows, progress=True)
    label_s = time.perf_counter() - t
    db = dashboards.Dashboards(out, rm)
    rng = random.Random(0)
    names = [d.cfg.name for d in rm.dictionaries]
    times, label_times = [], []
    for _ in range(200):
        name = rng.choice(names)
        f = rng.randrange(rm.dictionaries.dictionaries[name].d_sae)
        t = time.perf_counter()
        db.get(name, f)
        times.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        db.label(name, f)
        db.label_category((name, f))
        label_times.append((time.perf_counter() - t) * 1000)
    times.sort()
    label_times.sort()
    size_mb = out.stat().st_size / 2**20
    print(f"{'measure':<40} {'value':>10} {'target':>10}")
    if build_s is not None:
        print(f"{'build all dashboards (s)':<40} {build_s:>10.1f} {'<= 900':>10}")
    print(f"{'enrichment labels alone (s)':<40} {label_s:>10.1f} {'':>10}")
    print(f"{'label + category median (ms)':<40} {statistics.median(label_times):>10.3f} {'':>10}")
    print(f"{'lookup median (ms)':<40} {statistics.median(times):>10.2f} {'<= 20':>10}")
    print(f"{'lookup 95th percentile (ms)':<40} {times[int(0.95 * len(times))]:>10.2f} {'<= 20':>10}")
    print(f"{'database size (MB)':<40} {size_mb:>10.1f} {'<= 50':>10}")
    n = sum(d.d_sae for d in rm.dictionaries)
    print(f"features: {n}, with an enrichment label: {n_labelled} ({n_labelled / n:.0%}), "
          f"rows: {db.meta.get('rows')} x {db.meta.get('n_ctx')}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
