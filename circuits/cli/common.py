"""Helpers shared by the command modules: warnings and errors as one clean line, the prompt argument,
atomic JSON output, and the small lookups several commands use.

Every user error is raised as `CircuitsError` (before any expensive work) and printed by `main` as one line,
``circuits: error: ...``, with exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from circuits.errors import CircuitsError


def warn(message: str) -> None:
    """A warning for the user: one clean line on stderr (never a Python warning with its source line)."""
    print(f"circuits: warning: {message}", file=sys.stderr, flush=True)


def report_error(message: str) -> int:
    """A user error: one line ``circuits: error: MESSAGE`` on stderr; returns the exit status, 2."""
    print(f"circuits: error: {message}", file=sys.stderr)
    return 2


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (a crash never leaves a half-written file where a good one was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _prompt(args) -> str:
    """The prompt from the positional argument or --prompt-file (UTF-8, decode errors named; an empty or blank
    prompt is an error here, before any model loads)."""
    from circuits.inputs import check_text

    given = [x for x in (args.prompt, args.prompt_file) if x is not None]
    if len(given) != 1:
        raise CircuitsError("give the prompt either as an argument or with --prompt-file FILE (exactly one)")
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise CircuitsError(f"--prompt-file {path}: {'is a folder' if path.is_dir() else 'no such file'}")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CircuitsError(f"--prompt-file {path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                                f"{e.start}: {e.reason}); save the file as UTF-8") from None
        text = text.removesuffix("\n")
        if not text.strip():
            raise CircuitsError(f"--prompt-file {path}: the prompt is empty; write at least one word into the file")
        return text
    from circuits.errors import AttributionError

    try:
        text = check_text(args.prompt, "the prompt")
    except AttributionError as e:
        raise CircuitsError(f"{e} (or pass it with --prompt-file FILE)") from None
    if not text.strip():  # checked here, before any model loads (the replacement model checks it again)
        raise CircuitsError("the prompt is empty; give at least one word")
    return text


def _token_at(graph, node) -> str:
    toks = graph.metadata.get("token_strings", [])
    return repr(toks[node.pos]) if 0 <= node.pos < len(toks) else "?"


def _dashboard_db(model_name: str) -> Path:
    from circuits.model import DATA_DIR

    return DATA_DIR / "dashboards" / f"{model_name}.sqlite"
