"""The dashboard database: its SQLite layout, the fingerprint that ties it to a set, and read access.

`Dashboards` reads one database (a read-only connection per thread) and the user labels beside it
(:mod:`circuits.dashboards.user_labels`, where `set_label` writes them); the feature-id
helpers turn ``M2#517`` into (dictionary, index) and back; `render_text` prints a dashboard in the terminal. The
layout and how labels are chosen are described in :mod:`circuits.dashboards`; the build is in
:mod:`circuits.dashboards.build`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from circuits.errors import CircuitsError
from circuits.graph import Node

WINDOW_BEFORE, WINDOW_AFTER = 8, 2  # context around the activating token (sized so the file stays ≤ 50 MB)
#: A feature active on at least this share of the held-out tokens has its shown label marked ``dense 45% · …``. Its
#: label reads its strongest activations (the top examples), and a feature that fires on every fifth token or more
#: mostly does something else: the organism's A0#996 fires on 45% of tokens, and its top ten include six cities.
DENSE_LABEL_DENSITY = 0.2


def never_predicted(model_name: str | None) -> frozenset[str]:
    """Token strings that a database of `model_name` leaves out of the promote/suppress lists it shows: tokens the
    model is never trained to predict (the organism's special tokens, `circuits.organism.tokenizer.NEVER_PREDICTED`).
    Other models hide nothing (GPT-2 predicts ``<|endoftext|>`` between documents). The stored lists keep every token
    (the top and bottom 8 logit effects over the whole vocabulary), so a list shown may be shorter than 8."""
    if model_name != "organism":
        return frozenset()
    from circuits.organism.tokenizer import NEVER_PREDICTED

    return frozenset(NEVER_PREDICTED)


def shown_auto_label(auto: str, logits_top: list, hidden: frozenset[str]) -> str:
    """The peak-token label (``on ' Mary' (9/10) → ' John'``) as shown: when the token after the arrow is one the
    model never predicts (`never_predicted`), it names the first stored promoted token that is not (or ``?``)."""
    head, arrow, promoted = auto.rpartition(" → ")
    if not arrow or not any(promoted == repr(t) for t in hidden):
        return auto
    shown = next((t for t, _ in logits_top if t not in hidden), None)
    return f"{head} → {shown!r}" if shown is not None else f"{head} → ?"


def dense_mark(density: float | None) -> str | None:
    """``dense 45%`` for a density of at least `DENSE_LABEL_DENSITY`, else None: what labels and pictures add."""
    return f"dense {density:.0%}" if density is not None and density >= DENSE_LABEL_DENSITY else None


def shown_label(user: str | None, enriched: str | None, auto: str, density: float | None) -> str:
    """THE label text of a feature: the user's label as written, else the enrichment label, else the peak-token
    label, preceded by its `dense_mark` (``dense 45% · city``) when it has one (the label's category, used for
    grouping, is not changed)."""
    if user is not None:
        return user
    text, mark = enriched or auto, dense_mark(density)
    return f"{mark} · {text}" if mark else text


class DashboardError(CircuitsError):
    """A dashboard database is missing, stale, or does not have the feature asked for."""


@dataclass
class Example:
    kind: str  # "top" or "quantile"
    rank: int
    activation: float
    row: int
    pos: int
    tokens: list[str]  # the context window
    activations: list[float]  # the feature's activation on each token of the window
    focus: int  # index of the activating token inside the window


@dataclass
class Dashboard:
    dictionary: str
    feature: int
    label: str
    auto_label: str
    density: float
    max_activation: float
    n_active: int
    histogram: list[tuple[float, float, int]]  # (low, high, count)
    logits_top: list[tuple[str, float]]  # (token, logit effect): the stored top 8 less `never_predicted` tokens
    logits_bottom: list[tuple[str, float]]  # the same for the bottom 8
    examples: list[Example] = field(default_factory=list)
    heads: list[float] | None = None  # attention features: share of |contribution| per head
    source_offsets: dict[str, float] | None = None  # attention features: share by (query − source) distance
    enrichment_label: str | None = None  # the token-set enrichment label (None: no set passed its test)
    enrichment: object | None = None  # its claims with p-values (a circuits.labels.FeatureLabel)

    def top_examples(self) -> list[Example]:
        return [e for e in self.examples if e.kind == "top"]

    def frame(self):
        """The examples as a pandas DataFrame (one row per example)."""
        import pandas as pd

        return pd.DataFrame([{"kind": e.kind, "rank": e.rank, "activation": e.activation, "row": e.row,
                              "pos": e.pos, "context": "".join(e.tokens)} for e in self.examples])


# -- fingerprint and database ----------------------------------------------------------------------------------


def fingerprint(rm) -> str:
    """A hash of every dictionary tensor and the model's unembedding and embedding (detects stale databases)."""
    h = hashlib.sha256()
    for d in rm.dictionaries:
        h.update(d.cfg.name.encode())
        for name, t in sorted(d.weights().items()):
            h.update(name.encode())
            h.update(t.detach().float().contiguous().numpy().tobytes())
    for t in (rm.model.W_E, rm.model.W_U):
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS features(dictionary TEXT, feature INTEGER, density REAL, max_activation REAL,
    n_active INTEGER, histogram TEXT, logits_top TEXT, logits_bottom TEXT, heads TEXT, source_offsets TEXT,
    auto_label TEXT, user_label TEXT, PRIMARY KEY (dictionary, feature)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS examples(dictionary TEXT, feature INTEGER, kind TEXT, rank INTEGER, activation REAL,
    row INTEGER, pos INTEGER, tokens TEXT, activations TEXT, PRIMARY KEY (dictionary, feature, kind, rank))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS done(dictionary TEXT PRIMARY KEY);
"""


def _numbers(values) -> str:
    """Compact JSON for a list of numbers: 4 significant digits, zeros as 0, no spaces."""
    return "[" + ",".join("0" if v == 0 else f"{v:.4g}" for v in values) + "]"


def _compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def connect_read_only(path: Path, **kwargs) -> sqlite3.Connection:
    """A read-only SQLite connection to the database at `path`.

    Read-only needs SQLite's URI form (``file:...?mode=ro``), where ``?``, ``#`` and ``%`` in the path are syntax:
    pasted in raw, a database in a folder named ``runs?2`` would open (and create) an empty ``runs`` instead.
    `Path.as_uri` escapes them (it needs an absolute path)."""
    return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, **kwargs)


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path))
    con.executescript(SCHEMA)
    return con


# -- reading ---------------------------------------------------------------------------------------------------


class Dashboards:
    """Read access to a dashboard database (checked against the replacement model when one is given)."""

    def __init__(self, path: Path, rm=None, build_hint: str = "circuits dashboards build --model organism"):
        self.path = Path(path)
        if not self.path.exists():
            raise DashboardError(f"no dashboard database at {self.path}; build it with `{build_hint}`")
        self._local = threading.local()
        self._opened: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        try:
            self.meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            self.close()
            raise DashboardError(f"{self.path} is not a dashboard database ({e}); give the path of one built by "
                                 f"`{build_hint}`") from None
        if rm is not None and self.meta.get("fingerprint") != fingerprint(rm):
            raise DashboardError(f"{self.path} was built for different dictionaries or a different model "
                                 f"(fingerprint mismatch); build one for them with `{build_hint}`")
        self._tokens = getattr(rm, "model", None)
        self._hidden = never_predicted(self.meta.get("model"))  # left out of promote/suppress lists shown
        self._user_stamp, self._user = None, {}
        self._has_labels = self.con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND "
                                            "name = 'labels'").fetchone()[0] > 0

    def _user_labels(self) -> dict[str, dict[str, str | None]]:
        """This database's user labels ({dictionary: {index: label or None}}), re-read when the file changes (a
        label set from the CLI shows in a running explorer)."""
        from circuits.dashboards.user_labels import read_user_labels, user_labels_path

        path = user_labels_path(self.path)
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a write renames a new file in: a new inode
        except FileNotFoundError:
            stamp = None
        if stamp != self._user_stamp:
            self._user_stamp = stamp
            try:
                self._user = read_user_labels(self.path).get(self.meta.get("fingerprint", ""), {}) if stamp else {}
            except DashboardError as e:  # the dashboards still work; only `set_label` refuses to touch the file
                import warnings

                warnings.warn(f"user labels not shown: {e}", stacklevel=3)
                self._user = {}
        return self._user

    def _user_label(self, dictionary: str, feature: int, stored: str | None) -> str | None:
        """The user's label: from the labels file when it has an entry (None: cleared), else the one an older
        version stored in the database."""
        mine = self._user_labels().get(dictionary, {})
        return mine[str(feature)] if str(feature) in mine else stored

    def _decode(self, ids: list[int]) -> list[str]:
        from circuits.attribution.targets import token_string

        return [token_string(self._tokens, t) if self._tokens is not None else f"<{t}>" for t in ids]

    def label(self, dictionary: str, feature: int) -> str | None:
        """THE label shown for a feature (graphs, explorer, CLI; `shown_label`): the user's label, else the
        enrichment label, else the peak-token label, marked when the feature is dense; None for a feature not in
        the database."""
        if self._has_labels:
            row = self.con.execute(
                "SELECT f.user_label, l.label, f.auto_label, f.density, f.logits_top FROM features f LEFT JOIN labels l "
                "ON l.dictionary = f.dictionary AND l.feature = f.feature WHERE f.dictionary = ? AND f.feature = ?",
                (dictionary, feature)).fetchone()
        else:
            row = self.con.execute("SELECT user_label, NULL, auto_label, density, logits_top FROM features WHERE "
                                   "dictionary = ? AND feature = ?", (dictionary, feature)).fetchone()
        if row is None:
            return None
        user, enriched, auto, density, top = row
        user = self._user_label(dictionary, feature, user)
        if user is None and enriched is None and self._hidden:
            auto = shown_auto_label(auto, json.loads(top), self._hidden)
        return shown_label(user, enriched, auto, density)

    def label_of(self, feature) -> str | None:
        """`label` of a feature given as a graph `Node`, a `FeatureRef`, an id (``"M2#517"``) or a (dictionary,
        index) pair; None for a node that is no feature."""
        key = _feature_key(feature)
        return self.label(*key) if key is not None else None

    def density_of(self, feature) -> float | None:
        """The feature's density on the held-out tokens (as `label_of` takes it); None for no feature."""
        key = _feature_key(feature)
        row = self.con.execute("SELECT density FROM features WHERE dictionary = ? AND feature = ?",
                               key).fetchone() if key is not None else None
        return row[0] if row else None

    def labels(self, nodes: list[Node]) -> dict[Node, str]:
        """Labels (as `label`) of the feature nodes among `nodes` (for graph exports)."""
        out = {}
        for node in nodes:
            name = _dictionary_of(node)
            if name is not None:
                lab = self.label(name, node.index)
                if lab is not None:
                    out[node] = lab
        return out

    def label_category(self, feature) -> str | None:
        """The category of a feature's enrichment label, for grouping (supernodes): the token set it fires on
        (``"name"``, ``"city"``, ``"BOS"``), else ``"→ <what it promotes>"`` (``"→ names"``), else None (no set
        passed its test, or no labels in this database). User labels do not change it.

        `feature`: a graph `Node`, a `circuits.ids.FeatureRef`, a feature id (``"M2#517"``, ``"A1#33@5"``), or a
        (dictionary, index) pair."""
        if not self._has_labels:
            return None
        key = _feature_key(feature)
        if key is None:
            return None
        row = self.con.execute("SELECT category FROM labels WHERE dictionary = ? AND feature = ?", key).fetchone()
        return row[0] if row else None

    def label_categories(self, nodes: list[Node]) -> dict[Node, str]:
        """Categories (as `label_category`) of the feature nodes among `nodes` that have one."""
        out = {}
        for node in nodes:
            cat = self.label_category(node)
            if cat is not None:
                out[node] = cat
        return out

    def enrichment(self, dictionary: str, feature: int):
        """The stored enrichment claims (a `circuits.labels.FeatureLabel`) and label text, or (None, None)."""
        if not self._has_labels:
            return None, None
        from circuits.labels import claims_from_row

        row = self.con.execute("SELECT * FROM labels WHERE dictionary = ? AND feature = ?",
                               (dictionary, feature)).fetchone()
        return (claims_from_row(row[4:]), row[2]) if row else (None, None)

    def get(self, dictionary: str, feature: int) -> Dashboard:
        row = self.con.execute(
            "SELECT density, max_activation, n_active, histogram, logits_top, logits_bottom, heads, source_offsets, "
            "auto_label, user_label FROM features WHERE dictionary = ? AND feature = ?", (dictionary, feature)
        ).fetchone()
        if row is None:
            names = [r[0] for r in self.con.execute("SELECT DISTINCT dictionary FROM features")]
            if dictionary not in names:
                raise DashboardError(f"no dictionary {dictionary!r} in {self.path} (it has {', '.join(names)})")
            n = self.con.execute("SELECT COUNT(*) FROM features WHERE dictionary = ?", (dictionary,)).fetchone()[0]
            raise DashboardError(f"{dictionary} has no feature {feature} (features are 0..{n - 1})")
        density, maxact, n_active, hist, top, bottom, heads, offsets, auto, user = row
        user = self._user_label(dictionary, feature, user)
        claims, enriched = self.enrichment(dictionary, feature)
        examples = []
        for kind, rank, act, r, pos, toks, acts in self.con.execute(
                "SELECT kind, rank, activation, row, pos, tokens, activations FROM examples WHERE dictionary = ? "
                "AND feature = ? ORDER BY kind DESC, CASE WHEN kind = 'top' THEN rank ELSE -activation END, rank",
                (dictionary, feature)):  # top examples by rank; quantile samples strongest first
            toks = json.loads(toks)
            examples.append(Example(kind, rank, act, r, pos, self._decode(toks), json.loads(acts),
                                    min(pos, WINDOW_BEFORE)))
        top = [tuple(x) for x in json.loads(top) if x[0] not in self._hidden]
        bottom = [tuple(x) for x in json.loads(bottom) if x[0] not in self._hidden]
        auto = shown_auto_label(auto, top, self._hidden)
        return Dashboard(dictionary, feature, shown_label(user, enriched, auto, density), auto, density, maxact, n_active,
                         [tuple(h) for h in json.loads(hist)], top, bottom, examples,
                         json.loads(heads) if heads else None, json.loads(offsets) if offsets else None,
                         enriched, claims)

    @property
    def con(self) -> sqlite3.Connection:
        """This thread's read-only connection to the database, opened on first use.

        One object is shared by every thread that reads it (the explorer caches it per process and Streamlit runs
        each browser tab's script on threads of its own), but a `sqlite3` connection may only be used by the thread
        that made it: so each thread gets its own (read-only: they never contend). Connections of threads that have
        ended are closed when the next one opens, so a long-running server does not collect open files."""
        con = getattr(self._local, "con", None)
        if con is None:
            # check_same_thread=False only so that another thread can close it; only its own thread uses it
            con = connect_read_only(self.path, check_same_thread=False)
            with self._lock:
                ended = [(t, c) for t, c in self._opened if not t.is_alive()]
                self._opened = [(t, c) for t, c in self._opened if t.is_alive()]
                self._opened.append((threading.current_thread(), con))
            for _, c in ended:
                c.close()
            self._local.con = con
        return con

    def close(self) -> None:
        """Close every thread's connection (a later read from any thread opens a new one)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for _, con in opened:
            con.close()
        self._local = threading.local()


def _feature_key(feature) -> tuple[str, int] | None:
    """(dictionary, index) of a Node, FeatureRef, feature id text or pair; None for a node that is no feature."""
    if isinstance(feature, Node):
        name = _dictionary_of(feature)
        return (name, feature.index) if name is not None else None
    if isinstance(feature, str):
        return parse_feature_id(feature)
    if isinstance(feature, tuple):
        return str(feature[0]), int(feature[1])
    return feature.dictionary, feature.index  # a circuits.ids.FeatureRef


def _dictionary_of(node: Node) -> str | None:
    if node.kind == "attn_feature":
        return f"attn_sae_L{node.layer}"
    if node.kind == "mlp_feature":
        return f"transcoder_L{node.layer}"
    return None


def parse_feature_id(text: str) -> tuple[str, int]:
    """A feature id in any accepted spelling (`circuits.ids`: ``M2#517``, ``A1#33``; also ``transcoder_L2#517``,
    ``mlp:2:517``; a position is ignored) → (dictionary, feature)."""
    from circuits.ids import NodeIdError, parse_feature

    try:
        ref = parse_feature(text)
    except NodeIdError as e:
        raise DashboardError(str(e)) from None
    return ref.dictionary, ref.index


def feature_id(dictionary: str, feature: int) -> str:
    """The canonical id of a dictionary's feature (``transcoder_L3``, 1184 → ``M3#1184``)."""
    from circuits.ids import FeatureRef

    kind = "attn_feature" if dictionary.startswith("attn_sae_L") else "mlp_feature"
    return str(FeatureRef(kind, int(dictionary.rsplit("L", 1)[1]), feature))


@torch.no_grad()
def activations_on(rm, prompt: str, dictionary: str, feature: int) -> list[tuple[str, float]]:
    """Test on custom text: the feature's activation on every token of `prompt` (BOS first)."""
    from circuits.attribution.targets import token_string

    d = rm.dictionaries.dictionaries.get(dictionary)
    if d is None:
        raise DashboardError(f"no dictionary {dictionary!r} (have {', '.join(rm.dictionaries.dictionaries)})")
    if not 0 <= feature < d.d_sae:
        raise DashboardError(f"{dictionary} has no feature {feature} (features are 0..{d.d_sae - 1})")
    cache = rm.run(prompt)
    acts = cache.codes[dictionary][:, feature].tolist()
    return [(token_string(rm.model, t), a) for t, a in zip(cache.tokens.tolist(), acts, strict=True)]


def enrichment_evidence(dash: Dashboard) -> str | None:
    """The counts behind the enrichment label, e.g. ``token-set enrichment (Bonferroni p): on name (10/10,
    p=1e-09); promotes year (9/20, p=3e-05)``: a claim counts the feature's top contexts (on, after) or its top 20
    logit effects (promotes, suppresses; the lists shown are the top 8), so a label can name a set that is only part
    of what the lists show. None without enrichment claims."""
    if dash.enrichment is None:
        return None
    parts = [f"{what} {c.name} ({c.count}/{c.n}, p={c.p:.2g})" for what, c in
             zip(("on", "after", "promotes", "suppresses"), (dash.enrichment.on, dash.enrichment.after,
                 dash.enrichment.promotes, dash.enrichment.suppresses), strict=True) if c is not None]
    return "token-set enrichment (Bonferroni p): " + "; ".join(parts) if parts else None


def render_text(dash: Dashboard, width: int = 100) -> str:
    """A terminal rendering: header, logit effects, histogram, and contexts with the activating token marked."""
    lines = [f"{feature_id(dash.dictionary, dash.feature)} ({dash.dictionary}): {dash.label}",
             f"density {dash.density:.4%} ({dash.n_active} tokens), max activation {dash.max_activation:.3f}"]
    if dash.enrichment_label is not None and dash.label != dash.enrichment_label:
        lines.append(f"enrichment label: {dash.enrichment_label}")
    if dash.label != dash.auto_label:
        lines.append(f"peak-token label: {dash.auto_label}")
    evidence = enrichment_evidence(dash)
    if evidence is not None:
        lines.append(evidence)
    lines.append("logit effect per unit of activation (its write through the final LayerNorm as the graph reads "
                 "it, then the unembedding):")
    lines.append("promotes: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in dash.logits_top))
    lines.append("suppresses: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in dash.logits_bottom))
    if dash.heads:
        lines.append("heads: " + " ".join(f"h{h}:{s:.0%}" for h, s in enumerate(dash.heads)))
    if dash.source_offsets:
        best = sorted(dash.source_offsets.items(), key=lambda kv: -kv[1])[:5]
        lines.append("source offsets (query − source): " + ", ".join(f"{k}: {v:.0%}" for k, v in best))
    if dash.histogram:
        peak = max(c for _, _, c in dash.histogram)
        lines.append("histogram of non-zero activations:")
        for lo, hi, c in dash.histogram:
            lines.append(f"  {lo:>8.3f}–{hi:<8.3f} {'#' * max(1, round(30 * c / peak))} {c}")
    for kind in ("top", "quantile"):
        rows = [e for e in dash.examples if e.kind == kind]
        if rows:
            lines.append("top activating contexts:" if kind == "top" else "samples across activation quantiles:")
        for e in rows:
            text = "".join(f"[[{t}]]" if i == e.focus else t for i, t in enumerate(e.tokens))
            lines.append(f"  {e.activation:7.3f}  {text[-width:]}")
    return "\n".join(lines)
