"""User labels of a dashboard database: a JSON file beside it (``organism.sqlite`` → ``organism.user-labels.json``),
never the database itself, so that labelling a feature never writes a shipped or tracked file and a database rebuilt
for the same dictionaries shows the labels again. Labels are kept per fingerprint of the dictionaries; `set_label`
writes through a temporary file that is renamed over the old one, and never overwrites a file it cannot read as
labels. `circuits.dashboards.store.Dashboards` reads them (`read_user_labels`)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from circuits.dashboards.store import DashboardError, connect_read_only, feature_id

USER_LABELS_FORMAT = "circuits-user-labels/1"


def user_labels_path(db_path: Path) -> Path:
    """Where the user labels of a database live: a JSON file beside it (``organism.sqlite`` →
    ``organism.user-labels.json``). They are kept out of the database itself, so setting a label never writes to a
    shipped or tracked file, and a rebuilt database (same dictionaries) shows them again."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + ".user-labels.json")


def read_user_labels(db_path: Path) -> dict[str, dict[str, dict[str, str | None]]]:
    """{fingerprint: {dictionary: {feature index (text): label, or None for a cleared one}}} from the labels file of
    `db_path` ({} when there is none). Labels are kept per fingerprint: those set on a database built for other
    dictionaries are kept in the file and not shown. A file that is not a labels file raises `DashboardError` (it
    is never overwritten)."""
    path = user_labels_path(db_path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(data, dict) and data.get("format") == USER_LABELS_FORMAT and isinstance(
            data.get("labels"), dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DashboardError(f"{path} cannot be read as user labels ({e}); fix it or move it away") from None
    if ok:
        ok = all(isinstance(by_dict, dict) and all(
            isinstance(labels, dict) and all(isinstance(k, str) and k.isdigit() and (v is None or isinstance(v, str))
                                             for k, v in labels.items()) for labels in by_dict.values())
            for by_dict in data["labels"].values())
    if not ok:
        raise DashboardError(f"{path} is not a user-labels file (format {USER_LABELS_FORMAT!r}: labels by "
                             "fingerprint, dictionary and feature index); fix it or move it away")
    return data["labels"]


def set_label(path: Path, dictionary: str, feature: int, label: str | None) -> None:
    """Set (or clear, with None) a user label that overrides the automatic one, in the labels file beside the
    database (`user_labels_path`; written to a temporary file and renamed, so it is never left half-written). The
    database is only read."""
    path = Path(path)
    con = connect_read_only(path)
    try:
        fp = dict(con.execute("SELECT key, value FROM meta").fetchall()).get("fingerprint", "")
        row = con.execute("SELECT user_label FROM features WHERE dictionary = ? AND feature = ?",
                          (dictionary, feature)).fetchone()
    finally:
        con.close()
    if row is None:
        raise DashboardError(f"no feature {feature_id(dictionary, feature)} ({dictionary}) in {path}")
    labels = read_user_labels(path)
    mine = labels.setdefault(fp, {}).setdefault(dictionary, {})
    if label is not None:
        mine[str(feature)] = label
    elif row[0] is not None:  # a label an older version stored in the database: cleared here
        mine[str(feature)] = None
    else:
        mine.pop(str(feature), None)
    out = user_labels_path(path)
    try:  # a temporary file of its own in the same folder, renamed over the old one: never half-written
        fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": USER_LABELS_FORMAT, "labels": labels}, f, indent=1, sort_keys=True)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        raise DashboardError(f"cannot write user labels to {out} ({e.strerror}); give a database in a folder you "
                             "can write with --db FILE") from None
