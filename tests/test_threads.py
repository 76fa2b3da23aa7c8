"""Where the CLI and the explorer compute (circuits/cli/runtime.py): the torch-threads rule (--threads, then
CIRCUITS_THREADS, then OMP_NUM_THREADS, then 1) and --device (auto = best available; a device that is not here is one
line and exit 2 before any model loads; the model gets the device, the dictionaries follow it)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from circuits.cli import main
from circuits.cli.runtime import DEFAULT_THREADS, THREADS_ENV, apply_threads, resolve_device, resolve_threads
from circuits.errors import CircuitsError

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture
def keep_threads(monkeypatch):
    """The test may change torch's thread count and OMP_NUM_THREADS: both are restored after it."""
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    yield
    torch.set_num_threads(before)


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", THREADS_ENV)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**clean, **env})


def _one_line_error(proc, *needles: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-2000:]
    assert err.startswith("circuits: error: ")
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize("flag,env,expected", [
    (None, {}, (DEFAULT_THREADS, "default")),
    (None, {"OMP_NUM_THREADS": "3"}, (3, "OMP_NUM_THREADS")),
    (None, {"OMP_NUM_THREADS": "4,2"}, (4, "OMP_NUM_THREADS")),  # OpenMP's nested list: the outer level counts
    (None, {"OMP_NUM_THREADS": "3", THREADS_ENV: "2"}, (2, THREADS_ENV)),
    ("5", {"OMP_NUM_THREADS": "3", THREADS_ENV: "2"}, (5, "--threads")),
    (None, {"OMP_NUM_THREADS": " "}, (DEFAULT_THREADS, "default")),  # set but empty: as if unset
])
def test_the_thread_rule_first_match_wins(flag, env, expected):
    assert resolve_threads(flag, env) == expected


@pytest.mark.parametrize("flag,env,needle", [
    ("0", {}, "--threads 0"), ("two", {}, "--threads two"), ("-1", {}, "--threads -1"), ("1.5", {}, "--threads 1.5"),
    (None, {THREADS_ENV: "many"}, "CIRCUITS_THREADS='many'"), (None, {"OMP_NUM_THREADS": "0"}, "OMP_NUM_THREADS='0'"),
])
def test_a_bad_thread_count_names_where_it_came_from(flag, env, needle):
    with pytest.raises(CircuitsError, match="whole number") as e:
        resolve_threads(flag, env)
    assert needle in str(e.value)


def test_the_option_sets_torch_threads_in_process(keep_threads, capsys):
    assert main(["--threads", "3", "organism", "corpus", "--rows", "1"]) == 0
    assert torch.get_num_threads() == 3 and os.environ["OMP_NUM_THREADS"] == "3"
    assert main(["--threads", "1", "organism", "corpus", "--rows", "1"]) == 0
    assert torch.get_num_threads() == 1


def test_env_and_default_set_torch_threads_when_torch_is_imported_later():
    """The command sets the count before torch is imported (a fresh process): torch must start with it."""
    code = ("import sys; from circuits.cli import main; main(['organism', 'corpus', '--rows', '1']); "
            "assert 'torch' not in sys.modules; import torch; print(torch.get_num_threads())")
    assert _run(code, {}).stdout.split()[-1] == str(DEFAULT_THREADS)
    assert _run(code, {THREADS_ENV: "2"}).stdout.split()[-1] == "2"
    assert _run(code, {"OMP_NUM_THREADS": "2"}).stdout.split()[-1] == "2"


@pytest.mark.parametrize("args,env,needles", [
    (["--threads", "0"], {}, ["--threads 0", "whole number"]),
    (["--threads", "x"], {}, ["--threads x"]),
    ([], {THREADS_ENV: "lots"}, ["CIRCUITS_THREADS='lots'", "unset"]),
])
def test_a_bad_thread_count_is_one_line_before_any_work(args, env, needles):
    """--model nosuch would fail too: the error names the thread count, so it was checked first."""
    code = f"import sys; from circuits.cli import main; sys.exit(main({[*args, 'trace', PROMPT, '--model', 'nosuch']!r}))"
    _one_line_error(_run(code, env), *needles)


def test_the_explorer_applies_the_rule_in_its_computing_thread(monkeypatch, keep_threads):
    """Streamlit runs each script run in a new thread, and OpenMP keeps the thread count per thread: the explorer
    applies the rule in that thread (`circuits.explorer.state.use_threads`)."""
    from circuits.explorer.state import use_threads

    monkeypatch.setenv(THREADS_ENV, "3")
    seen = []

    def run():
        seen.append((use_threads(), torch.get_num_threads()))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [(None, 3)]
    monkeypatch.setenv(THREADS_ENV, "zero")
    out = []
    t = threading.Thread(target=lambda: out.append(use_threads()))
    t.start()
    t.join()
    assert out and "CIRCUITS_THREADS='zero'" in out[0]


def test_the_explorer_shows_a_bad_thread_count_as_a_message(monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(THREADS_ENV, "0")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("CIRCUITS_THREADS='0'" in e.value for e in at.error)


# -- device --------------------------------------------------------------------------------------------------------


def test_auto_is_the_best_device_here():
    best = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto") == best and resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("device,needle", [
    ("banana", "not a device"), ("meta", "not a device"),
    pytest.param("cuda", "no CUDA GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
    pytest.param("cuda:0", "no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
    pytest.param("mps", "MPS", marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is here")),
])
def test_a_device_that_is_not_here_is_one_line_before_the_model_loads(device, needle):
    """--model nosuch would fail too: the error names the device, so it was checked first."""
    code = ("import sys; from circuits.cli import main; "
            f"sys.exit(main(['trace', {PROMPT!r}, '--model', 'nosuch', '--device', {device!r}]))")
    _one_line_error(_run(code, {"OMP_NUM_THREADS": "1"}), f"--device {device}", needle)


MODEL_COMMANDS = [
    ["organism", "eval", "--out", "-"],
    ["dicts", "eval", "--out", "-"],
    ["dicts", "train", "--sites", "transcoder_L0"],
    ["trace", PROMPT],
    ["attention", PROMPT, "--head", "1.0", "--key", "2"],
    ["dashboards", "build"],
    ["dashboards", "label"],
    ["dashboards", "label-accuracy"],
    ["feature", "M3#1184", "--text", PROMPT],
    ["study", "ioi", "--n", "4", "--workers", "1"],  # in-process: the worker state is built here
]


@pytest.mark.parametrize("argv", MODEL_COMMANDS, ids=lambda a: " ".join(a[:2]).split(" When")[0])
def test_every_command_that_loads_a_model_loads_it_on_the_device(argv, monkeypatch, tmp_path, capsys):
    """The device reaches `load_model` (recorded here instead of loading anything)."""
    import circuits
    import circuits.model

    seen = []

    def record(name="organism", device="cpu"):
        seen.append(device)
        raise CircuitsError(f"recorded device {device}")

    monkeypatch.setattr(circuits.model, "load_model", record)
    monkeypatch.setattr(circuits, "load_model", record)  # the study's worker imports it from the package
    monkeypatch.chdir(tmp_path)  # dicts train / dashboards build write nothing before loading, but in case
    if argv[:2] == ["dashboards", "build"]:
        argv = [*argv, "--out", str(tmp_path / "d.sqlite")]
    elif argv[0] == "dashboards":  # label, label-accuracy: the database must exist before the model loads
        (tmp_path / "d.sqlite").touch()
        argv = [*argv, "--db", str(tmp_path / "d.sqlite")]
    if argv[0] == "study":
        argv = [*argv, "--out", str(tmp_path / "report")]
    if argv[:2] == ["dicts", "train"]:
        argv = [*argv, "--out", str(tmp_path / "dicts")]
    for device, expected in (("cpu", "cpu"), ("auto", resolve_device("auto"))):
        assert main([*argv, "--device", device]) == 2
        assert f"recorded device {expected}" in capsys.readouterr().err
    assert seen == ["cpu", resolve_device("auto")]


def test_dictionaries_follow_the_model_to_its_device():
    """Checked with the meta device (no GPU needed): the set is moved to wherever the model's weights are."""
    from circuits import load_dictionaries, load_model

    model, _ = load_model("organism", "cpu")
    model.to("meta")
    dset = load_dictionaries("organism", model)
    devices = {p.device.type for d in dset for p in d.parameters()} | {b.device.type for d in dset for b in d.buffers()}
    assert devices == {"meta"}


def test_apply_threads_is_idempotent(keep_threads):
    apply_threads(2)
    apply_threads(2)
    assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"


def test_pytest_xdist_workers_share_the_cores():
    """Under the README's `pytest -n 2` each worker computes with its share of the cores (tests/conftest.py sets
    OMP_NUM_THREADS before torch is imported, unless it was set), so two workers do not oversubscribe two cores."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("runs under pytest-xdist only (the README's `python -m pytest -q -n 2`)")
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    assert "OMP_NUM_THREADS" in os.environ
    code = "import torch; print(torch.get_num_threads())"  # what a CLI subprocess of a test computes with
    threads = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert threads == int(os.environ["OMP_NUM_THREADS"]) >= 1
    if os.environ.get("CI"):  # CI sets no thread count of its own: the conftest's share applies
        assert threads * workers <= max(workers, os.cpu_count() or 1)
