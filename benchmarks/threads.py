"""Benchmark: torch threads for one organism graph on an idle and on a busy machine (issue 22 item 8).

    python benchmarks/threads.py [--repeats 5] [--burners 2] [--settings 1,2,torch] [--states idle,busy]

For each machine state (``idle``: no extra load — the load average column says how idle the machine really was;
``busy``: this script starts `--burners` processes that spin on a core each) and each thread setting, a fresh process loads the organism and its dictionaries, traces one warm-up graph and then times
`--repeats` graphs of the IOI prompt (contrast Mary − John, method auto: what `circuits trace` does). A setting is a
number of threads (`torch.set_num_threads`) or ``torch``: torch's own default (OMP_NUM_THREADS unset: one thread per
core). The table gives the median and the slowest graph, the 1-minute load average when the setting started, and
the ratio to one thread in the same machine state — compare ratios, not absolute times, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "When Mary and John went to the store, John gave a drink to"


def worker(setting: str, repeats: int) -> None:
    """One setting in this (fresh) process: prints one JSON line."""
    import torch

    if setting != "torch":
        torch.set_num_threads(int(setting))
    from circuits import load_dictionaries, load_model
    from circuits.attribution import Contrast, attribute
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism", "cpu")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    attribute(rm, PROMPT, Contrast("Mary", "John"))  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        attribute(rm, PROMPT, Contrast("Mary", "John"))
        times.append(time.perf_counter() - t)
    print(json.dumps({"threads": torch.get_num_threads(), "median": statistics.median(times), "max": max(times)}))


def physical_cores() -> int:
    """Cores this process may run on, counting hyper-threads of one core once (Linux sysfs; else os.cpu_count)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or 1


def run_setting(setting: str, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CIRCUITS_THREADS")}
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, __file__, "--worker", setting, "--repeats", str(repeats)],
                          capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"worker {setting} failed:\n{proc.stderr[-2000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load": load, "setting": setting}


def start_burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--burners", type=int, default=2, help="spinning processes for the busy machine")
    ap.add_argument("--settings", default="1,2,torch", help="comma-separated thread counts and/or 'torch'")
    ap.add_argument("--states", default="idle,busy", help="idle, busy or both (comma-separated)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker(args.worker, args.repeats)
        return
    settings = args.settings.split(",")
    print(f"{os.cpu_count()} logical CPUs, {physical_cores()} physical cores; organism graph of {PROMPT!r} "
          f"(contrast Mary − John), median of {args.repeats} after a warm-up")
    print(f"{'machine':<22} {'setting':<8} {'threads':>7} {'median s':>9} {'max s':>8} {'× 1 thread':>10} "
          f"{'load 1m':>8}")
    states = {"idle": "idle (no burners)", "busy": f"busy ({args.burners} burners)"}
    for state in [states[s] for s in args.states.split(",")]:
        burners = start_burners(args.burners) if state.startswith("busy") else []
        try:
            if burners:
                time.sleep(2.0)
            rows = [run_setting(s, args.repeats) for s in settings]
        finally:
            for b in burners:
                b.kill()
                b.wait()
        base = next((r["median"] for r in rows if r["setting"] == "1"), None)
        for r in rows:
            ratio = f"{r['median'] / base:>10.2f}" if base else f"{'':>10}"
            label = "torch" if r["setting"] == "torch" else r["setting"]
            print(f"{state:<22} {label:<8} {r['threads']:>7} {r['median']:>9.3f} {r['max']:>8.3f} {ratio} "
                  f"{r['load']:>8.2f}")
        time.sleep(1.0)


if __name__ == "__main__":
    main()
