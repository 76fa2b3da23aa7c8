"""Run every benchmark in benchmarks/ and print each table with its targets.

    python benchmarks/run_all.py                 # the real settings (tens of minutes on 2 cores; see --list)
    python benchmarks/run_all.py --quick         # a smoke run: tiny settings, every script once (a few minutes)
    python benchmarks/run_all.py --only attribution-organism qk-organism
    python benchmarks/run_all.py --list          # the registry: name, command, targets

Each benchmark is its own script with its own command line; this file only holds a registry (`BENCHMARKS`: the
command with the real settings, the command with quick ones, the targets, and what it needs beyond the package)
and runs the scripts one after another in fresh processes, so one benchmark's memory or threads never leak into
the next. Before each it prints the command and the load average (timings on a shared machine depend on it), then
the script's own table, then the targets. A benchmark whose optional dependency is missing (circuit-tracer,
Playwright, a Chromium binary) is reported as skipped with the install line; a benchmark that fails is reported as
failed, and the run goes on. The summary at the end lists every benchmark's status and wall time; the exit status
is 1 when any failed.

Nothing here writes into data/: outputs (the dashboards database, study reports, screenshots) go to a temporary
folder. Every script in benchmarks/ must be registered here or listed in `HELPERS` (tests/test_run_all.py checks
it), so a new benchmark cannot be forgotten.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Benchmark:
    """One registered run of a benchmark script. ``{tmp}`` in the arguments is replaced by a temporary folder."""

    name: str
    script: str  # file name in benchmarks/
    args: tuple[str, ...]  # the real settings
    quick: tuple[str, ...]  # settings for a smoke run (--quick)
    targets: str  # printed after the script's table
    modules: tuple[str, ...] = ()  # optional Python modules it needs (skipped without them)
    programs: tuple[str, ...] = ()  # executables it needs on the PATH
    files: tuple[str, ...] = ()  # paths (relative to the repository) its real settings read, e.g. a dictionary set
    install: str = ""  # how to get what it needs


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("load-model", "load_model.py", ("--repeats", "5"), ("--repeats", "1"),
              "load_model('organism') < 2 s once TransformerLens is imported, no network"),
    Benchmark("attribution-organism", "attribution.py", ("organism", "--repeats", "5"),
              ("organism", "--repeats", "1"),
              "organism, full uncapped graph with all 8 dictionaries: graph ≤ 1 s, pruning ≤ 0.2 s (2 cores)"),
    Benchmark("attribution-scale", "attribution.py", ("scale",),
              ("scale", "--d-sae", "1024", "--pos", "16"),
              "GPT-2-small-shaped random model, 24,576-feature transcoders and attention SAEs at every layer, "
              "64 tokens: full graph ≤ 60 s, peak memory ≤ 8 GB"),
    Benchmark("qk-organism", "qk.py", ("organism", "--repeats", "5"), ("organism", "--repeats", "1"),
              "organism: one head, one query, all keys ≤ 0.5 s; every head at the last position ≤ 5 s"),
    Benchmark("qk-scale", "qk.py", ("scale",), ("scale", "--d-sae", "1024", "--pos", "16"),
              "GPT-2-small-shaped random model: one head, one query, 64 keys ≤ 10 s"),
    Benchmark("transcoder-only-organism", "transcoder_only.py", ("organism", "--repeats", "3"),
              ("organism", "--repeats", "1", "--autograd-sample", "4", "--no-circuit-tracer"),
              "organism with 4 transcoders and no attention SAEs: ≥ 5× faster than circuit-tracer 0.5.0 on the "
              "same inputs (circuit-tracer is optional: without it only our times are printed)"),
    Benchmark("transcoder-only-scale", "transcoder_only.py", ("scale",), ("scale", "--d-sae", "1024", "--pos", "16"),
              "GPT-2-small-shaped random model, 24,576-feature transcoders, no attention SAEs, 64 tokens: "
              "≤ 60 s, ≤ 8 GB"),
    Benchmark("dashboards", "dashboards.py", ("--rows", "2000", "--out", "{tmp}/organism.sqlite"),
              ("--rows", "16", "--out", "{tmp}/organism.sqlite"),
              "build every dashboard ≤ 15 min on 2 cores, lookup ≤ 20 ms, database ≤ 50 MB "
              "(written to a temporary folder, never over data/dashboards/)"),
    Benchmark("explorer", "explorer.py", ("--screenshot", "{tmp}/explorer.png", "--chromium", "{chromium}"),
              ("--screenshot", "{tmp}/explorer.png", "--chromium", "{chromium}"),
              "trace an organism prompt end to end ≤ 3 s; graph-view re-prune after a slider step ≤ 0.3 s; "
              "the page stays usable with ~5,000 nodes",
              modules=("playwright",), programs=("chromium",),
              install='pip install -e ".[dev]" and apt-get install -y chromium'),
    Benchmark("explorer-first-graph", "explorer.py", ("--first-graph", "--repeats", "3", "--chromium", "{chromium}"),
              ("--first-graph", "--repeats", "1", "--chromium", "{chromium}"),
              "time to first graph: a new tab on a running server ≤ 5 s, a fresh server ≤ 15 s",
              modules=("playwright",), programs=("chromium",),
              install='pip install -e ".[dev]" and apt-get install -y chromium'),
    Benchmark("study-ioi", "study.py", ("--study", "ioi", "--n", "200", "--workers", "2", "--out", "{tmp}/ioi"),
              ("--study", "ioi", "--n", "8", "--workers", "1", "--out", "{tmp}/ioi"),
              "IOI report with n = 200 in ≤ 10 min on 2 cores; aim: features-alone faithfulness ≥ 0.5 with "
              "≤ 100 feature nodes (standard mean ablation)"),
    Benchmark("ioi-heads", "ioi_heads.py", ("--n", "200", "--out", "{tmp}/ioi_heads.md"),
              ("--n", "8", "--out", "{tmp}/ioi_heads.md"),
              "no target: the time of the IOI per-head analysis (docs/ioi-heads.md)"),
    Benchmark("ioi-s2-offset", "ioi_s2_offset.py", ("--n", "200"), ("--n", "4"),
              "no target: does L0H4 find S2 by the name or by its offset from END (one word inserted after S2; "
              "docs/ioi-heads.md)"),
    Benchmark("headline-fresh", "headline_fresh.py", ("--sets", "organism", "organism-finetuned", "--seed", "1"),
              ("--sets", "organism", "--seed", "1", "--n", "8", "--workers", "1"),
              "the IOI headline (features alone, 100 features, standard mean ablation) on prompts that chose nothing, "
              "and sets compared prompt by prompt; aim as study-ioi (docs/case-studies.md)",
              files=("data/dictionaries/organism-finetuned",)),
    Benchmark("ioi-answer-position", "ioi_answer_position.py", ("--n", "200"), ("--n", "20"),
              "no target: a fidelity diagnostic (the last transcoder at the IOI answer position)"),
    Benchmark("ioi-word-swap", "ioi_word_swap.py", ("--n", "32"), ("--n", "2", "--conditions", "OV"),
              "no target: a fidelity diagnostic (replacement score of IOI graphs when words of a training template "
              "are swapped for words no training IOI sentence uses; docs/skip-and-clt.md, probe 11)"),
    Benchmark("skipfit-sweep", "skipfit_sweep.py", ("--weights", "100", "300", "1000", "--prompts", "32"),
              ("--weights", "100", "--rows", "16", "--prompts", "1"),
              "no target: `dicts fit-skip` on organism-finetuned per IOI weight, replacement score of IOI graphs on "
              "training templates against ordinary-text fidelity (docs/skip-and-clt.md, probe 10)"),
    Benchmark("clt-compare", "clt.py",
              ("compare", "--sets", "organism", "organism-skip", "organism-clt", "--prompts", "8",
               "--out", "{tmp}/clt.json"),
              ("compare", "--sets", "organism", "--ld-prompts", "8", "--prompts", "1", "--out", "{tmp}/clt.json"),
              "per-layer vs skip transcoders vs a CLT on the organism (issue 19): IOI logit difference kept ≥ 85% "
              "on held-out templates with everything spliced, ΔCE ≤ 0.04, replacement score ≥ 0.9",
              files=("data/dictionaries/organism-skip", "data/dictionaries/organism-clt"),
              install="train them: docs/skip-and-clt.md"),
    Benchmark("clt-scale", "clt.py", ("gpt2",), ("gpt2", "--d-sae", "1024", "--pos", "16"),
              "GPT-2-small-shaped random model, one CLT of 24,576 features per layer with attention SAEs, "
              "64 tokens: graph ≤ 120 s, ≤ 12 GB"),
    Benchmark("threads", "threads.py", ("--repeats", "5", "--burners", "2"),
              ("--repeats", "1", "--burners", "1", "--settings", "1"),
              "no fixed target: one organism graph with 1, 2 and torch's default threads on an idle and a busy "
              "machine (it starts its own CPU burners); compare the ratios to one thread (the rule: docs/cli.md)"),
)

# scripts in benchmarks/ that are not benchmarks themselves
HELPERS = {
    "run_all.py": "this runner",
    "gpt2_shaped.py": "the GPT-2-shaped random model shared by the scale benchmarks",
    "clt_scale.py": "clt.py gpt2's CLT scale benchmark (model, timing, micro-benchmarks)",
}


def registered_scripts() -> set[str]:
    return {b.script for b in BENCHMARKS}


def unregistered_scripts() -> list[str]:
    """Scripts in benchmarks/ that neither the registry nor `HELPERS` names."""
    return sorted(p.name for p in HERE.glob("*.py") if p.name not in registered_scripts() | set(HELPERS))


def missing(b: Benchmark, quick: bool = False) -> list[str]:
    """What `b` needs and this machine lacks: the script itself, optional modules, programs, files."""
    out = [] if (HERE / b.script).exists() else [f"the script benchmarks/{b.script}"]
    out += [f"the Python module {m}" for m in b.modules if importlib.util.find_spec(m) is None]
    out += [f"the program {p}" for p in b.programs if shutil.which(p) is None]
    out += [] if quick else [f for f in b.files if not (ROOT / f).exists()]
    return out


def command(b: Benchmark, quick: bool, tmp: Path) -> list[str]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    args = [a.replace("{tmp}", str(tmp)).replace("{chromium}", chromium) for a in (b.quick if quick else b.args)]
    return [sys.executable, str(HERE / b.script), *args]


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} / {five:.2f} (1 / 5 min, {os.cpu_count()} CPUs)"


@dataclass
class Outcome:
    name: str
    status: str  # "ok", "skipped", "failed"
    seconds: float
    detail: str = ""


def run_one(b: Benchmark, quick: bool, timeout: float | None = None) -> Outcome:
    """Run one benchmark in a fresh process with its output going straight to ours; never raises."""
    print(f"\n=== {b.name} ({'quick' if quick else 'real settings'})", flush=True)
    lacking = missing(b, quick)
    if lacking:
        why = "needs " + ", ".join(lacking) + (f" ({b.install})" if b.install else "")
        print(f"skipped: {why}", flush=True)
        return Outcome(b.name, "skipped", 0.0, why)
    with tempfile.TemporaryDirectory(prefix=f"bench-{b.name}-") as tmp:
        cmd = command(b, quick, Path(tmp))
        print("$ " + " ".join(cmd[1:]).replace(str(ROOT) + "/", ""), flush=True)
        print(f"load average before: {load_average()}", flush=True)
        t = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = None
        seconds = time.perf_counter() - t
    print(f"load average after: {load_average()}; wall time {seconds:.1f} s", flush=True)
    print(f"targets: {b.targets}", flush=True)
    if rc != 0:
        why = f"timed out after {timeout:.0f} s" if rc is None else f"exit status {rc}"
        print(f"FAILED: {why}", flush=True)
        return Outcome(b.name, "failed", seconds, why)
    return Outcome(b.name, "ok", seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: check that every benchmark runs")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (names from --list)")
    p.add_argument("--skip", nargs="+", metavar="NAME", default=[], help="leave these benchmarks out")
    p.add_argument("--list", action="store_true", help="print the registry and exit")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per benchmark (default: none)")
    args = p.parse_args(argv)
    names = {b.name for b in BENCHMARKS}
    unknown = sorted((set(args.only or []) | set(args.skip)) - names)
    if unknown:
        p.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(sorted(names))}")
    chosen = [b for b in BENCHMARKS if (args.only is None or b.name in args.only) and b.name not in args.skip]
    if args.list:
        for b in chosen:
            print(f"{b.name:<26} python benchmarks/{b.script} {' '.join(b.args)}\n{'':<26} quick: {' '.join(b.quick)}"
                  f"\n{'':<26} targets: {b.targets}")
        return 0
    stray = unregistered_scripts()
    if stray:
        print(f"warning: not in the registry of benchmarks/run_all.py: {', '.join(stray)}", file=sys.stderr)
    outcomes = [run_one(b, args.quick, args.timeout) for b in chosen]
    print(f"\n=== summary ({'quick' if args.quick else 'real settings'}; load average now {load_average()})")
    print(f"{'benchmark':<26} {'status':<8} {'seconds':>8}  detail")
    for o in outcomes:
        print(f"{o.name:<26} {o.status:<8} {o.seconds:>8.1f}  {o.detail}")
    return int(any(o.status == "failed" for o in outcomes))


if __name__ == "__main__":
    sys.exit(main())
