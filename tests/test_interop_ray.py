"""Ray for real (optional: ``pip install -e ".[interop]"``; skipped without the ``ray`` package).

Starts a local Ray cluster on 127.0.0.1 with 2 CPUs (``ray start --head --block`` in its own process group, stopped
by that group's id), runs ``circuits study ioi --n 8 --top 20 --ig-steps 1`` in-process (``--workers 1``) and with
``--ray-address 127.0.0.1:PORT``, and checks the invariant of `circuits.studies.batch`: the report does not depend
on where the per-prompt work ran — every file but timings.json is byte-identical. Both runs go through the CLI's
``main`` in this process (the driver's prompt sets are built once and cached; the Ray workers build their own).
A wrong address or a missing package fails in seconds with one line.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from circuits.cli import main
from circuits.errors import CircuitsError

STUDY = ["study", "ioi", "--n", "8", "--top", "20", "--ig-steps", "1", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def ray_address():
    """A 2-CPU Ray head on 127.0.0.1 (its own temp dir; short path: Ray's socket names must fit 107 bytes)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (optional: pip install -e '.[interop]')")
    exe = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if exe is None:
        pytest.skip("the `ray` command is not installed next to this Python")
    port, temp = _free_port(), tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [exe, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
         "--temp-dir", temp, "--object-store-memory", str(128 * 1024**2)],
        stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{Path(temp, 'head.log').read_text()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not listen on 127.0.0.1:{port} within 90 s")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()  # this process's driver connection (made by the study), before the cluster goes
        try:  # the head and everything it started (same process group); `ray start` takes ~30 s on SIGTERM alone
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _report(argv: list[str], out: Path) -> dict[str, bytes]:
    assert main([*STUDY, *argv, "--out", str(out)]) == 0
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "timings.json"}


def test_study_on_ray_is_byte_identical_to_in_process(ray_address, tmp_path):
    import ray

    out = tmp_path / "report"  # the same folder for both: report.md names its own path
    local = _report(["--workers", "1"], out)
    assert not ray.is_initialized()
    try:
        on_ray = _report(["--ray-address", ray_address], out)
        # it used the cluster (Ray names the head by the node's address, not 127.0.0.1: compare the port)
        port = ray_address.rsplit(":", 1)[1]
        assert ray.is_initialized() and ray.get_runtime_context().gcs_address.endswith(f":{port}")
    finally:
        ray.shutdown()  # run_study reuses an existing connection; the next test must start without one
    assert {"report.md", "results.json", "circuit.json", "features.csv", "faithfulness.png"} <= set(local)
    assert list(local) == list(on_ray)
    for name in local:
        assert local[name] == on_ray[name], name


def test_unreachable_address_fails_in_seconds(tmp_path, capsys):
    pytest.importorskip("ray", reason="ray is not installed (optional: pip install -e '.[interop]')")
    t0 = time.monotonic()
    assert main([*STUDY, "--ray-address", f"127.0.0.1:{_free_port()}", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("circuits: error: cannot connect to the Ray cluster at '127.0.0.1:") and "ray start" in err
    assert time.monotonic() - t0 < 30 and not (tmp_path / "r" / "report.md").exists()


def test_missing_ray_package_fails_clearly(monkeypatch):
    from circuits.studies import StudySpec, run_study

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError, as without the package
    with pytest.raises(CircuitsError, match=r"'ray' package is not installed; pip install 'circuits\[interop\]'"):
        run_study(StudySpec("ioi", n=8), ray_address="127.0.0.1:6379")
    with pytest.raises(CircuitsError, match="pass names only"):
        run_study(StudySpec("ioi", n=8), ray_address="127.0.0.1:6379", study=object())
