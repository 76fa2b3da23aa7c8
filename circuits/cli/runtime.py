"""Where the `circuits` command and the explorer compute: how many torch threads, and on which device.

Threads — one rule for the CLI and the explorer, first match wins:

1. ``circuits --threads N ...`` (CLI only);
2. the environment variable ``CIRCUITS_THREADS``;
3. the environment variable ``OMP_NUM_THREADS`` (its first entry: OpenMP allows a list such as ``4,2``);
4. otherwise ``DEFAULT_THREADS`` = 1.

Why 1 by default (docs/cli.md has the table, `benchmarks/threads.py` measures it): torch's own default is one thread
per core, and its OpenMP threads spin while they wait for each other. When other processes hold the cores, every
parallel step waits for a thread that is not running — on a busy 2-core machine one organism graph took 8.5 s with
torch's default and 0.42 s with one thread. The organism is too small for more threads to pay off even on an idle
machine; for a large model on a machine of your own, pass ``--threads`` (or set ``CIRCUITS_THREADS``).

A bad value (not a whole number ≥ 1) is a `CircuitsError` that names where it came from, raised before any work.

Device — ``--device auto|cpu|cuda|cuda:N|mps`` on every command that loads a model. ``auto`` (the default) is the
best available: cuda if torch sees a GPU, else mps, else cpu. A device that is not there is a `CircuitsError` before
the model loads. The dictionaries move with the model (`circuits.dictionaries.load_dictionaries`); the graphs are
computed where both are. Only the CPU has been run here (no GPU was available).
"""

from __future__ import annotations

import os
import sys

from circuits.errors import CircuitsError

THREADS_ENV = "CIRCUITS_THREADS"
DEFAULT_THREADS = 1
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def _whole(raw: str) -> int | None:
    raw = raw.strip()
    return int(raw) if raw.isdigit() and int(raw) >= 1 else None


def resolve_threads(flag: str | int | None = None, environ=None) -> tuple[int, str]:
    """(threads, where the number came from) under the rule above; `flag` is ``--threads``'s value (None: not
    given). Raises `CircuitsError` for a bad value."""
    environ = os.environ if environ is None else environ
    if flag is not None:
        n = _whole(str(flag))
        if n is None:
            raise CircuitsError(f"--threads {flag}: must be a whole number of at least 1 (torch threads for this "
                                "command)")
        return n, "--threads"
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        raw = environ.get(name)
        if raw is None or not raw.strip():
            continue
        first = raw.split(",")[0] if name == "OMP_NUM_THREADS" else raw
        n = _whole(first)
        if n is None:
            raise CircuitsError(f"{name}={raw!r}: must be a whole number of at least 1 (torch threads); fix or "
                                "unset it")
        return n, name
    return DEFAULT_THREADS, "default"


def apply_threads(n: int) -> None:
    """Use `n` torch threads in this process from now on, and in processes it starts (study workers).

    ``OMP_NUM_THREADS`` is set for torch imported later (OpenMP reads it once, when the library loads) and for child
    processes; when torch is already imported, `torch.set_num_threads` sets it for the calling thread (OpenMP keeps
    the count per thread: the explorer calls this at the start of every script run, in the thread that computes)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def configure_threads(flag: str | int | None = None) -> tuple[int, str]:
    """`resolve_threads` then `apply_threads`: the rule applied; returns (threads, source)."""
    n, source = resolve_threads(flag)
    apply_threads(n)
    return n, source


def check_device(spec: str) -> None:
    """Raise `CircuitsError` unless `spec` names a device that is here (``auto`` always is). Imports torch only for
    a device other than auto and cpu."""
    if spec in ("auto", "cpu"):
        return
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise CircuitsError(f"--device {spec}: not a device; use one of {', '.join(DEVICES)}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CircuitsError(f"--device {spec}: torch sees no CUDA GPU here (torch {torch.__version__}, "
                                f"{'a CPU-only build' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda}"
                                "); use --device cpu or leave the option out (auto)")
        if device.index is not None and device.index >= count:
            raise CircuitsError(f"--device {spec}: there {'is' if count == 1 else 'are'} {count} CUDA "
                                f"GPU{'s' if count != 1 else ''} here (cuda:0{f'-cuda:{count - 1}' if count > 1 else ''})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CircuitsError(f"--device {spec}: Apple's MPS backend is not available here; use --device cpu or leave "
                            "the option out (auto)")


def resolve_device(spec: str = "auto") -> str:
    """The device to load on: `spec` checked (`check_device`), with ``auto`` → cuda, else mps, else cpu."""
    check_device(spec)
    if spec != "auto":
        return spec
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def add_device_option(parser) -> None:
    """``--device`` for a command that loads a model."""
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto (default: cuda if available, else mps, else cpu), cpu, cuda, cuda:N or mps")
