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
import re
import tempfile
from pathlib import Path

from circuits.errors import AttributionError, OutputPathError


def as_integer(value) -> int | None:
    """`value` as an int when it is an integer of any kind (int, NumPy integer, 0-d integer tensor); None for
    anything else, a bool included (``True`` is not a token id or a count)."""
    import operator

    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def as_real(value) -> float | None:
    """`value` as a float when it is a real number of any kind (NumPy, 0-d tensor); None for text, a bool or
    anything `float()` refuses. NaN and infinities pass: the caller says which range it needs."""
    if isinstance(value, str | bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


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


def whitespace_problem(text: str, encode, unk: int | None, what: str = "the prompt") -> str | None:
    """One line when `text` has whitespace the tokenizer turns into unknown tokens — a leading or trailing space,
    two spaces in a row, a tab or a newline (the organism's tokenizer has no token for a space without a word: a
    trailing space becomes one more, unknown position, the target is then explained there); None otherwise, and
    for tokenizers without an unknown token (GPT-2 reads every space). `encode` maps text to token ids."""
    if unk is None:
        return None
    tidy = " ".join(text.split())
    if tidy == text or sum(t == unk for t in encode(text)) <= sum(t == unk for t in encode(tidy)):
        return None
    found = []
    if text[:1].isspace():
        found.append("starts with whitespace")
    if text[-1:].isspace():
        found.append("ends with whitespace")
    inner = text.strip()
    odd = re.search(r"\s{2,}|[^\S ]", inner)
    if odd:
        other = odd.group().strip(" ")  # the first character that is not a plain space, if any
        kind = "two spaces in a row" if not other else f"a {_SPACE_NAMES.get(other[0], 'whitespace character')}"
        at = odd.start() + (len(odd.group()) - len(odd.group().lstrip(" ")) if other else 0)
        found.append(f"has {kind} at character {len(text) - len(text.lstrip()) + at}")
    return (f"{what} {' and '.join(found)}, which the model's tokenizer reads as an unknown token (it changes the "
            f"positions and what is explained); remove it: {tidy!r}")


_SPACE_NAMES = {"\t": "tab", "\n": "newline", "\r": "carriage return"}


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


#: What `file_kind` calls each kind of file, for messages.
KIND_NAMES = {"circuits-graph": "a circuits graph file", "circuit-tracer": "a circuit-tracer graph JSON",
              "json": "a JSON file", "sqlite": "a SQLite database", "png": "a PNG image", "svg": "an SVG picture",
              "graphml": "a GraphML file", "dot": "a DOT file", "safetensors": "a safetensors weights file",
              "text": "a text file", "binary": "a binary file"}


def file_kind(path: str | Path) -> str | None:
    """What an existing file holds, from its first bytes (None for a missing or empty file): one of `KIND_NAMES`."""
    import json

    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if not head:
        return None
    if head.startswith(b"SQLite format 3\x00"):
        return "sqlite"
    if head.startswith(b"\x89PNG"):
        return "png"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")  # a byte-order mark too
    if text.startswith(("{", "[")):
        if re.match(r'\{\s*"format"\s*:\s*"circuits-graph"', text):  # our writer puts "format" first
            return "circuits-graph"
        if path.stat().st_size > 50_000_000:  # not parsed whole: a large JSON file of another kind
            return "json"
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError):
            return "text"
        except RecursionError:  # nested too deeply for the parser: JSON, of no kind we write
            return "json"
        if isinstance(data, dict) and data.get("format") == "circuits-graph":
            return "circuits-graph"
        if isinstance(data, dict) and "nodes" in data and "links" in data:
            return "circuit-tracer"
        return "json"
    if "<svg" in text[:2000]:
        return "svg"
    if "<graphml" in text[:2000]:
        return "graphml"
    if re.match(r"(strict\s+)?(di)?graph\b[^{]*\{", text):
        return "dot"
    return "text" if "\ufffd" not in text else "binary"


def saved_work(path: str | Path) -> str | None:
    """What a user saved into an existing graph file, in words (e.g. "saved from the explorer: 2 pins, 1 label"),
    or None for a file `circuits trace` wrote (which running it again may replace) or one that is not a graph file.

    A file saved from the explorer (our JSON's ``ui.saved_by``) is the user's whatever it holds. Without that mark
    (a trace output, or a file saved before the mark existed), only what `trace` never writes counts: pins, and
    supernodes without ``"auto"`` (circuit-tracer JSON: ``qParams.pinnedIds``). Labels alone do not, since `trace`
    writes the dashboard database's labels into the same place."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None

    def count(x) -> int:
        return len(x) if isinstance(x, (list, dict)) else 0

    ui, q = data.get("ui"), data.get("qParams")
    ui = ui if isinstance(ui, dict) else {}
    q = q if isinstance(q, dict) else {}
    supernodes = ui.get("supernodes") if isinstance(ui.get("supernodes"), list) else []
    manual = [s for s in supernodes if not (isinstance(s, dict) and s.get("auto"))]
    explorer = ui.get("saved_by") == "explorer"
    amounts = (("pin", count(ui.get("pins")) or count(q.get("pinnedIds"))), ("supernode", len(manual)),
               ("label", count(ui.get("labels")) if explorer else 0))
    words = ", ".join(f"{n} {what}{'' if n == 1 else 's'}" for what, n in amounts if n)
    if explorer:
        return "saved from the explorer" + (f": {words}" if words else "")
    return words or None


def check_output_file(path: str | Path, what: str, folder_must_exist: bool = False, kind: str | None = None,
                      force: bool = False) -> Path:
    """`path` can be written as a file; raises `OutputPathError`. By default its folder may be created by the
    command (the nearest existing ancestor must be writable); `folder_must_exist` True: for writers that do not
    create folders (the graph files of `circuits trace`), a missing folder is an error now, not after the work.

    `kind` (a `file_kind` name): what the command writes there. An existing file of another kind — a graph file, a
    database, a picture a user saved — is refused instead of overwritten; one of the same kind is replaced (running
    a command again), unless it is a graph file holding the user's work (`saved_work`): that needs `force`."""
    path = Path(path)
    if str(path) == "":
        raise OutputPathError(f"{what}: empty path; give a file name")
    if path.is_dir():
        raise OutputPathError(f"{what}: {path} is a folder; give a file name inside it")
    if kind is not None and path.is_file():
        found = file_kind(path)
        if found is not None and found != kind:
            raise OutputPathError(f"{what} {path}: the file exists and is {KIND_NAMES[found]}, not "
                                  f"{KIND_NAMES[kind]}; choose another name or remove it first (nothing was written)")
        work = saved_work(path) if found in ("circuits-graph", "circuit-tracer") and not force else None
        if work:
            raise OutputPathError(f"{what} {path}: the file holds your work ({work}); choose another name, or pass "
                                  "--force to replace it (nothing was written)")
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
