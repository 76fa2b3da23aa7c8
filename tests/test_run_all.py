"""benchmarks/run_all.py (issue 22 item 5): every script in benchmarks/ is registered, a missing optional dependency
is a skip and a failing script a failure (never a crash of the runner), and a cheap benchmark runs through it."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
run_all = importlib.util.module_from_spec(_spec)
sys.modules["run_all"] = run_all  # dataclasses look their module up there
_spec.loader.exec_module(run_all)


def test_every_benchmark_script_is_registered():
    assert run_all.unregistered_scripts() == [], \
        "add the new benchmark to BENCHMARKS in benchmarks/run_all.py (or to HELPERS if it is not one)"
    on_disk = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert run_all.registered_scripts() <= on_disk, "the registry names a script that does not exist"
    assert set(run_all.HELPERS) <= on_disk, "HELPERS names a script that does not exist"
    names = [b.name for b in run_all.BENCHMARKS]
    assert len(names) == len(set(names))
    for b in run_all.BENCHMARKS:  # nothing is written over the shipped data
        assert not any("data/" in a for a in b.args + b.quick), b.name
        assert b.targets.strip(), b.name


def test_missing_dependency_is_reported_as_skipped(capsys):
    b = run_all.Benchmark("needs-nothing-here", "load_model.py", (), (), "none",
                          modules=("no_such_module_for_circuits_tests",), programs=("no-such-program-circuits",),
                          files=("data/dictionaries/no-such-set",), install="pip install it")
    out = run_all.run_one(b, quick=False)
    assert out.status == "skipped" and out.seconds == 0.0
    for need in ("no_such_module_for_circuits_tests", "no-such-program-circuits", "data/dictionaries/no-such-set",
                 "pip install it"):
        assert need in out.detail
    assert "skipped: needs" in capsys.readouterr().out
    # files are what the real settings read: a quick run does not need them
    assert run_all.missing(run_all.Benchmark("q", "load_model.py", (), (), "none", files=("nope",)), quick=True) == []


def test_failing_benchmark_is_reported_as_failed():
    # argparse rejects the option before anything heavy is imported: exit status 2
    b = run_all.Benchmark("bad-option", "load_model.py", ("--no-such-option",), ("--no-such-option",), "none")
    out = run_all.run_one(b, quick=True)
    assert out.status == "failed" and out.detail == "exit status 2"


def test_quick_run_of_one_benchmark_prints_its_table_and_targets():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--only", "load-model"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "first load_model(organism)" in out  # the script's own table
    assert "targets: load_model('organism') < 2 s" in out
    assert "load average before:" in out
    summary = out.split("=== summary", 1)[1]
    assert summary.split("\n")[2].split()[:2] == ["load-model", "ok"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--only", "nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown benchmark nope" in proc.stderr


def test_every_benchmark_is_documented():
    """docs/benchmarks.md has a section for every registered benchmark (its targets and last numbers)."""
    headings = re.findall(r"^### (.+)$", (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8"), re.M)
    documented = {name for h in headings for name in re.split(r",? and |, ", h)}
    missing = sorted(b.name for b in run_all.BENCHMARKS if b.name not in documented)
    assert not missing, f"docs/benchmarks.md has no section for {missing}"
