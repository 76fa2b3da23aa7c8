"""User input checked before the work (no torch here, so a bad option fails in a fraction of a second).

Text: `check_text` names the first character that is not valid Unicode (a shell hands undecodable bytes to Python
as lone surrogates, which the tokenizer rejects with a TypeError deep inside).

Output paths: a command that would fail to write its result fails at once instead.

`check_output_file` and `check_output_dir` try what the command will do later — create the folder, create and
remove a temporary file in it — so a read-only or missing place, a path that is a folder where a file is expected
(or the reverse), is one `OutputPathError` naming the option, before any model is loaded. A command whose writer
does not create folders asks `check_output_file(..., folder_must_exist=True)`, so a missing folder fails then too. Writing by the root user
into a folder without write bits succeeds (root ignores them), so the check is a real attempt, not `os.access`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from circuits.errors import AttributionError, OutputPathError


def check_text(text: str, what: str) -> str:
    """`text` unchanged if it is valid Unicode; an `AttributionError` naming the first bad character otherwise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"character {bad!r}"
        raise AttributionError(f"{what} is not valid UTF-8 text ({byte} at character {e.start}); save it as "
                               "UTF-8") from None
    return text


def _probe(folder: Path, what: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".circuits-probe-", dir=folder)
    except OSError as e:
        raise OutputPathError(f"{what}: cannot write into {folder} ({e.strerror}); choose a writable place") from None
    os.close(fd)
    os.unlink(tmp)


def _make_folder(folder: Path, what: str) -> None:
    probe = folder
    while not probe.exists():  # the nearest existing ancestor must be a folder we can write into
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(f"{what}: {probe} is a file, not a folder; choose another path")
    if probe != folder:
        _probe(probe, what)  # the folder will be created at the end; nothing is created now
    else:
        _probe(folder, what)


def check_output_file(path: str | Path, what: str, folder_must_exist: bool = False) -> Path:
    """`path` can be written as a file; raises `OutputPathError`. By default its folder may be created by the
    command (the nearest existing ancestor must be writable); `folder_must_exist` True: for writers that do not
    create folders (the graph files of `circuits trace`), a missing folder is an error now, not after the work."""
    path = Path(path)
    if str(path) == "":
        raise OutputPathError(f"{what}: empty path; give a file name")
    if path.is_dir():
        raise OutputPathError(f"{what}: {path} is a folder; give a file name inside it")
    folder = path.parent if str(path.parent) else Path(".")
    _make_folder(folder, what)
    if folder_must_exist and not folder.is_dir():
        raise OutputPathError(f"{what} {path}: folder {folder} does not exist; create it first (mkdir -p {folder}) "
                              "or choose another path")
    return path


def check_output_dir(path: str | Path, what: str, force: bool | None = None) -> Path:
    """`path` is (or can be created as) a writable folder; raises `OutputPathError`.

    `force` False: a folder that already holds files is refused too (``--force`` overrides), so that a command
    writing a whole set never mixes its files with another's; None: no such check (resumable runs)."""
    path = Path(path)
    if str(path) == "":
        raise OutputPathError(f"{what}: empty path; give a folder")
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what}: {path} is a file, not a folder; choose a folder")
    if force is False and path.is_dir() and any(path.iterdir()):
        raise OutputPathError(f"{path} exists and is not empty; choose another {what} or pass --force")
    _make_folder(path, what)
    return path
