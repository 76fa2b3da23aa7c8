"""Reading training checkpoints: a corrupt or mismatched checkpoint is a one-line `CheckpointError`, at once.

Checkpoints hold plain tensors and numbers and load with ``torch.load(weights_only=True)``; a truncated file (a run
killed while the file system was full, a partial copy) makes torch raise a RuntimeError or an unpickling error deep
inside its zip reader, which is turned here into a message that names the file and the two ways out.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from circuits.errors import CheckpointError


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at `path` (weights only); `CheckpointError` if it is unreadable."""
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first[:120]}); delete it to start "
                              "afresh, or pass --no-resume") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint of this project; delete it or pass "
                              "--no-resume")
    return state


def describe_differences(saved: dict, current: dict) -> list[str]:
    """``["total_tokens: 4000000 in the checkpoint, 2000000 now", ...]`` for the keys whose values differ."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            out.append(f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now")
    return out
