"""Benchmark: feature dashboards for the organism (targets: build ≤ 15 min on 2 cores, lookup ≤ 20 ms,
database ≤ 50 MB).

    python benchmarks/dashboards.py [--rows 2000] [--out data/dashboards/organism.sqlite] [--skip-build]

Builds every dashboard (unless --skip-build), then times 200 random lookups (`Dashboards.get`) and prints a table.
"""

from __future__ import annotations

import argparse
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
    db = dashboards.Dashboards(out, rm)
    rng = random.Random(0)
    names = [d.cfg.name for d in rm.dictionaries]
    times = []
    for _ in range(200):
        name = rng.choice(names)
        f = rng.randrange(rm.dictionaries.dictionaries[name].d_sae)
        t = time.perf_counter()
        db.get(name, f)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    size_mb = out.stat().st_size / 2**20
    print(f"{'measure':<40} {'value':>10} {'target':>10}")
    if build_s is not None:
        print(f"{'build all dashboards (s)':<40} {build_s:>10.1f} {'<= 900':>10}")
    print(f"{'lookup median (ms)':<40} {statistics.median(times):>10.2f} {'<= 20':>10}")
    print(f"{'lookup 95th percentile (ms)':<40} {times[int(0.95 * len(times))]:>10.2f} {'<= 20':>10}")
    print(f"{'database size (MB)':<40} {size_mb:>10.1f} {'<= 50':>10}")
    print(f"features: {sum(d.d_sae for d in rm.dictionaries)}, rows: {db.meta.get('rows')} x {db.meta.get('n_ctx')}")


if __name__ == "__main__":
    main()
