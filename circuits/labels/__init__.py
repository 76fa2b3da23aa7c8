"""Feature labels from token-set enrichment: ``name → promotes names``, ``city · after "in" → promotes countries``.

For every live feature of a dashboards database, three (four) enrichment tests (`circuits.labels.enrichment`):

1. **on** — its top-k activating tokens (the database's top examples) against the corpus's token frequencies;
2. **after** — the tokens just before them against the frequencies of tokens that have a successor; single tokens
   are candidates too (``after "in"``), Bonferroni-counted;
3. **promotes / suppresses** — the k tokens its logit effect (write direction → final LayerNorm as the graph reads
   it → unembedding, as on the dashboard) raises most / lowers most, against the vocabulary the corpus uses.

Each test claims at most one set, and nothing when no set passes. The label joins the claims that exist::

    <on> · after <after> → promotes <promotes>, suppresses <suppresses>

and the **category** is the *on* set, else ``→ <promoted plural>``, else None. A feature with no claim keeps the
peak-token label (``on ' Mary' (9/10) → ' John'``, the dashboard's `auto_label`, always kept as a second field);
a user label wins over both. Other code reads labels through `circuits.dashboards.Dashboards`:
``label(dictionary, feature)`` / ``labels(nodes)`` for the text shown, ``label_category(feature)`` /
``label_categories(nodes)`` for grouping — or, without a database at hand, through this module's
`label_category(node, graph)`, which finds the graph's database (`store_for`).

Stored in the dashboards database (plain SQL)::

    labels(dictionary TEXT, feature INTEGER, label TEXT, category TEXT,
           on_set TEXT, on_count INTEGER, on_n INTEGER, on_p REAL,            -- p: Bonferroni-corrected
           after_set TEXT, after_count INTEGER, after_n INTEGER, after_p REAL,
           promotes TEXT, promotes_count INTEGER, promotes_n INTEGER, promotes_p REAL,
           suppresses TEXT, suppresses_count INTEGER, suppresses_n INTEGER, suppresses_p REAL,
           PRIMARY KEY (dictionary, feature))                                 -- only features with a claim
    token_sets(name TEXT PRIMARY KEY, plural TEXT, tokens TEXT)               -- the sets used (JSON token ids)
    meta: label_config (JSON of `LabelConfig`), label_sets (their names)
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from circuits.labels.enrichment import Claim, Enrichment, LabelConfig, hypergeom_sf
from circuits.token_sets import TokenSet

__all__ = ["Claim", "Enrichment", "FeatureLabel", "LabelConfig", "LabelPopulations", "hypergeom_sf",
           "label_category", "label_database", "register", "store_for", "top_tokens_from_db", "LABEL_SCHEMA"]

LABEL_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels(dictionary TEXT, feature INTEGER, label TEXT, category TEXT,
    on_set TEXT, on_count INTEGER, on_n INTEGER, on_p REAL, after_set TEXT, after_count INTEGER, after_n INTEGER,
    after_p REAL, promotes TEXT, promotes_count INTEGER, promotes_n INTEGER, promotes_p REAL, suppresses TEXT,
    suppresses_count INTEGER, suppresses_n INTEGER, suppresses_p REAL, PRIMARY KEY (dictionary, feature))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS token_sets(name TEXT PRIMARY KEY, plural TEXT, tokens TEXT);
"""
CLAIMS = ("on", "after", "promotes", "suppresses")


@dataclass(frozen=True)
class FeatureLabel:
    """A feature's claims (each None when its test claimed nothing)."""

    on: Claim | None = None
    after: Claim | None = None
    promotes: Claim | None = None
    suppresses: Claim | None = None

    @property
    def text(self) -> str | None:
        """``city · after "in" → promotes countries, suppresses names``; None when there is no claim."""
        head = self.on.name if self.on else ""
        if self.after:
            head = f"{head} · after {self.after.name}" if head else f"after {self.after.name}"
        effects = ([f"promotes {self.promotes.plural}"] if self.promotes else []) + (
            [f"suppresses {self.suppresses.plural}"] if self.suppresses else [])
        tail = ("→ " + ", ".join(effects)) if effects else ""
        text = " ".join(p for p in (head, tail) if p)
        return text or None

    @property
    def category(self) -> str | None:
        """The set the feature fires on; else ``→ <what it promotes>``; else None."""
        if self.on:
            return self.on.name
        if self.promotes:
            return f"→ {self.promotes.plural}"
        return None


@dataclass
class LabelPopulations:
    """Token counts the tests compare against, from the labelling corpus `rows` [n_rows, n_ctx]."""

    on: np.ndarray  # [d_vocab] positions holding each token
    after: np.ndarray  # [d_vocab] positions (with a successor) holding each token
    vocab: np.ndarray  # [d_vocab] 1 for every token the corpus uses

    @classmethod
    def from_rows(cls, rows: Tensor, d_vocab: int) -> LabelPopulations:
        rows = rows.cpu()
        on = torch.bincount(rows.reshape(-1), minlength=d_vocab).numpy()
        after = torch.bincount(rows[:, :-1].reshape(-1), minlength=d_vocab).numpy()
        return cls(on, after, (on > 0).astype(np.int64))


def top_tokens_from_db(con: sqlite3.Connection) -> dict[tuple[str, int], tuple[list[int], list[int]]]:
    """(dictionary, feature) → (activating token ids, token ids before them) of the stored top examples."""
    from circuits.dashboards import WINDOW_BEFORE

    out: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
    for name, f, pos, toks in con.execute("SELECT dictionary, feature, pos, tokens FROM examples WHERE kind = 'top' "
                                          "ORDER BY dictionary, feature, rank"):
        toks = json.loads(toks)
        focus = min(pos, WINDOW_BEFORE)
        on, before = out.setdefault((name, f), ([], []))
        on.append(toks[focus])
        if focus > 0:
            before.append(toks[focus - 1])
    return out


@torch.no_grad()
def _effects(rm, d, used: np.ndarray) -> Tensor:
    """[d_sae, d_vocab] logit effects of every feature, tokens the corpus never uses set to NaN."""
    from circuits.dashboards import logit_effect_matrix

    eff = logit_effect_matrix(rm, d).float().cpu()  # as the dashboards list them (the model family's final norm)
    eff[:, torch.from_numpy(used == 0)] = float("nan")
    return eff


def label_features(rm, d, tops: dict, pops: LabelPopulations, tests: dict[str, Enrichment],
                   cfg: LabelConfig) -> dict[int, FeatureLabel]:
    """Labels of dictionary `d`'s features with any stored top example or (if live) logit claim."""
    eff = _effects(rm, d, pops.vocab)
    k = min(cfg.k_logits, int(pops.vocab.sum()))
    top = eff.nan_to_num(float("-inf")).topk(k, dim=-1).indices.numpy()
    bottom = (-eff).nan_to_num(float("-inf")).topk(k, dim=-1).indices.numpy()
    out = {}
    for f in range(d.d_sae):
        on_ids, before = tops.get((d.cfg.name, f), ([], []))
        if not on_ids:
            continue  # dead: no claim about what it does
        lab = FeatureLabel(tests["on"].test(on_ids), tests["after"].test(before),
                           tests["vocab"].test(top[f]), tests["vocab"].test(bottom[f]))
        if lab.text is not None:
            out[f] = lab
    return out


def label_database(path_or_con, rm, rows: Tensor, sets: list[TokenSet], cfg: LabelConfig | None = None,
                   progress: bool = False) -> int:
    """(Re)label every feature of a dashboards database from its stored top examples; returns how many got a label.

    `rows` [n_rows, n_ctx] must be the token rows the database was built from (their counts are the population).
    Replaces the `labels` and `token_sets` tables; other tables are untouched (user labels stay)."""
    from tqdm.auto import tqdm

    cfg = cfg or LabelConfig()
    con = path_or_con if isinstance(path_or_con, sqlite3.Connection) else sqlite3.connect(str(Path(path_or_con)))
    con.executescript(LABEL_SCHEMA)
    d_vocab = rm.cfg.d_vocab
    pops = LabelPopulations.from_rows(rows, d_vocab)
    from circuits.token_sets import vocabulary_strings

    vocab = vocabulary_strings(rm.model)
    tests = {"on": Enrichment(sets, pops.on, cfg), "after": Enrichment(sets, pops.after, cfg, singletons=vocab),
             "vocab": Enrichment(sets, pops.vocab, cfg)}
    tops = top_tokens_from_db(con)
    records = []
    for d in tqdm(list(rm.dictionaries), desc="labels", disable=not progress):
        for f, lab in label_features(rm, d, tops, pops, tests, cfg).items():
            row: list = [d.cfg.name, f, lab.text, lab.category]
            for c in (lab.on, lab.after, lab.promotes, lab.suppresses):
                row += [c.name, c.count, c.n, float(f"{c.p:.3g}")] if c else [None] * 4
            records.append(row)
    con.execute("DELETE FROM labels")
    con.execute("DELETE FROM token_sets")
    con.executemany(f"INSERT INTO labels VALUES ({','.join('?' * 20)})", records)
    con.executemany("INSERT INTO token_sets VALUES (?, ?, ?)",
                    [(s.name, s.plural, json.dumps(sorted(s.ids), separators=(",", ":"))) for s in sets])
    con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [("label_config", json.dumps(asdict(cfg))), ("label_sets", json.dumps([s.name for s in sets]))])
    con.commit()
    if not isinstance(path_or_con, sqlite3.Connection):
        con.execute("VACUUM")  # the replaced rows' pages are freed (a build vacuums at its end itself)
        con.close()
    return len(records)


def claims_from_row(row) -> FeatureLabel:
    """A `FeatureLabel` from the 16 claim columns of a `labels` row (on_set … suppresses_p)."""
    claims = []
    for i in range(4):
        name, count, n, p = row[4 * i: 4 * i + 4]
        claims.append(Claim(name, name, count, n, p) if name is not None else None)
    return FeatureLabel(*claims)


# -- the category of a graph's node, for code that holds a graph but no database -------------------------------

_VERIFIED: dict[str, object] = {}  # model name → a Dashboards checked against that model's weights (fingerprint)
_UNVERIFIED: dict[str, object] = {}  # model name → the default database opened without weights (or None)


def register(db, model_name: str) -> None:
    """Make `db` (a `Dashboards` opened with the replacement model, so its fingerprint was checked) the store that
    `label_category` uses for graphs of `model_name` (code that has opened one — the CLI, the explorer — may call
    this so that graphs of other dictionaries are never grouped by the default database's categories)."""
    _VERIFIED[model_name] = db


def store_for(graph):
    """The dashboards database for a graph's features: the one registered for its model (``metadata["model"]``),
    else ``data/dashboards/<model>.sqlite`` when its meta names the same model and it holds every dictionary the
    graph uses (graphs carry no weights fingerprint, so this fallback cannot check the weights); else None."""
    meta = getattr(graph, "metadata", None) or {}
    name = meta.get("model")
    if not name:
        return None
    if name in _VERIFIED:
        return _VERIFIED[name]
    if name not in _UNVERIFIED:
        from circuits.dashboards import DashboardError, Dashboards
        from circuits.model import DATA_DIR

        path = DATA_DIR / "dashboards" / f"{name}.sqlite"
        db = None
        if path.is_file():
            try:
                db = Dashboards(path)
                names = {r[0] for r in db.con.execute("SELECT dictionary FROM done")}
                if db.meta.get("model") != name or not set(meta.get("dictionaries") or []) <= names:
                    db.close()
                    db = None
            except (DashboardError, sqlite3.DatabaseError):
                db = None
        _UNVERIFIED[name] = db
    return _UNVERIFIED[name]


def label_category(feature, graph=None, db=None) -> str | None:
    """THE category of a feature for grouping (supernodes, pictures): its enrichment label's *on* set
    (``"name"``), else ``"→ <promoted plural>"``, else None (no claim, no labels, or no database found).

    `feature`: a graph `Node` (non-feature nodes give None), a `FeatureRef`, an id (``"M2#517"``) or a
    (dictionary, index) pair; the database is `db` if given, else `store_for(graph)`."""
    store = db if db is not None else (store_for(graph) if graph is not None else None)
    return store.label_category(feature) if store is not None else None
