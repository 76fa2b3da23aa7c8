"""Feature dashboards: what each feature does, computed over held-out text and stored in SQLite.

For every feature of every dictionary in a set, two streaming passes over held-out token rows collect:

1. **Pass 1** (codes of all dictionaries, one batch at a time): activation density (fraction of tokens where the
   feature is on), a histogram of its non-zero activations (log-spaced bins), the top activating (row, position)
   pairs, and a uniform random sample of activating positions (random keys, kept by top-k: a reservoir sample in one
   pass), from which five samples at the 10/30/50/70/90% activation quantiles are shown.
2. **Pass 2** (only the rows those examples live in): each example's context window with the feature's activation
   on every token, and for attention-SAE features the decomposition of each top activation by head and by source
   position (``A[h, p, q] · v[q, h] · W_enc[h, :, i]`` — the same terms as the graph's per-head edges).

**Logit effects** (`logit_effect_matrix`): a feature's direct effect on each token's logit per unit activation, as the
graph's feature → logit edge reads it with every frozen norm scale σ set to 1 (a σ is one positive number per
position: it rescales a feature's effects but never reorders its tokens). The write direction is ``W_dec[i]`` for a
transcoder (a cross-layer transcoder's decoders summed: its total direct write; Gemma-2's ``ln2_post`` needs nothing,
a transcoder predicts ``hook_mlp_out`` after it) and ``W_dec[i] W_O`` for an attention-SAE feature, times Gemma-2's
``ln1_post`` weight (the norm after attention). The final norm reads it as the model family does
(`ReplacementModel.center`): LayerNorm centres it then scales by γ, RMSNorm (Gemma-2, Llama-3, Qwen3) only scales by
its weight; then the unembedding. Gemma-2's final soft-cap is monotone and not applied (the effect is on the logit
before the cap, as graph targets are). The top and bottom tokens are stored.

**Labels.** The label shown everywhere is, first found: the user's label (`set_label`); the enrichment label
(:mod:`circuits.labels`: the token set the feature's top tokens, the tokens before them and its logit effects are
enriched in — ``"name → promotes names"``), computed at the end of every build over named token sets
(:mod:`circuits.token_sets`); the *peak-token label* (`auto_label`, always kept as a second field): the token on
which the feature most often peaks in its top contexts, with the share of top contexts where it does, and the token
it promotes most — ``"on ' Mary' (9/10) → ' John'"``. Features with no activation are labelled ``"dead"``.
Other code reads labels only through `Dashboards.label` / `Dashboards.labels` (text) and
`Dashboards.label_category` / `Dashboards.label_categories` (the category, for grouping).

Layout (plain SQL; every JSON column is a JSON text):

    meta(key TEXT PRIMARY KEY, value TEXT)                      -- fingerprint, model, rows, seed, ...
    features(dictionary TEXT, feature INTEGER, density REAL, max_activation REAL, n_active INTEGER,
             histogram TEXT, logits_top TEXT, logits_bottom TEXT, heads TEXT, source_offsets TEXT,
             auto_label TEXT, user_label TEXT, PRIMARY KEY (dictionary, feature))
             -- source_offsets: the 8 largest shares by (query − source) distance, the rest as "other"
    examples(dictionary TEXT, feature INTEGER, kind TEXT ('top' | 'quantile'), rank INTEGER, activation REAL,
             row INTEGER, pos INTEGER, tokens TEXT, activations TEXT, PRIMARY KEY (dictionary, feature, kind, rank))
    done(dictionary TEXT PRIMARY KEY)                           -- dictionaries finished (the build resumes)
    labels(...), token_sets(...)                                -- enrichment labels: see circuits.labels

The fingerprint (a hash of every dictionary tensor and the model's weights) is stored in ``meta``; opening a
database built for different dictionaries is refused with the build command.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from circuits.errors import CircuitsError
from circuits.graph import Node

TOP_K = 10  # top activating examples per feature
SAMPLE_K = 32  # reservoir of activating positions per feature, for quantile samples
QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)
WINDOW_BEFORE, WINDOW_AFTER = 8, 2  # context around the activating token (sized so the file stays ≤ 50 MB)
HIST_EDGES = torch.logspace(-3, 3, 25)  # activation histogram bins (non-zero activations)
N_LOGITS = 8
N_OFFSETS = 8  # attention features: the query − source offsets kept by share (the rest is "other")


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
    logits_top: list[tuple[str, float]]
    logits_bottom: list[tuple[str, float]]
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


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path))
    con.executescript(SCHEMA)
    return con


# -- logit effects ---------------------------------------------------------------------------------------------


def write_directions(rm, d) -> Tensor:
    """[d_sae, d_model]: each feature's direct write into the residual stream per unit activation, frozen norm scales
    σ = 1: ``W_dec[i]`` (a transcoder; a CLT layer's decoders summed), ``W_dec[i] W_O_cat`` (an attention SAE) times
    ``w`` of Gemma-2's ``ln1_post`` (the engine's own factor ``w / σ[p]``, `ReplacementModel.attn_out_scale`)."""
    if d.cfg.kind != "attention_sae":
        return d.W_dec
    W_O = rm.W_O_cat(d.cfg.layer)
    v = d.W_dec.to(W_O.dtype) @ W_O  # as the graph's attention-feature sources (`attribution.sources.feature_writes`)
    if rm.has_post_norm:
        v = v * rm._post_factor("ln1_post", d.cfg.layer, torch.ones(1, dtype=v.dtype, device=v.device))
    return v


def logit_directions(rm, d) -> Tensor:
    """[d_sae, d_model]: each feature's write as the unembedding reads it through the frozen final norm (σ = 1):
    ``P v ⊙ γ`` for LayerNorm (P the centring), ``v ⊙ w`` for RMSNorm (`ReplacementModel.center`)."""
    gamma, _ = rm.ln_weights("ln_final")
    v = write_directions(rm, d).to(rm.model.W_U.dtype)
    return rm.center(v) * gamma.to(v.dtype)


@torch.no_grad()
def logit_effect_matrix(rm, d) -> Tensor:
    """[d_sae, d_vocab]: each feature's direct logit effect per unit activation (frozen scales σ = 1; for the tokens
    of one prompt, the graph's feature → logit edge is this × activation / (σ_final[p] · σ_post[p]))."""
    return logit_directions(rm, d) @ rm.model.W_U


@torch.no_grad()
def logit_effects(rm, d, n: int = N_LOGITS) -> tuple[list[list], list[list]]:
    """Top and bottom ``n`` (token id, effect) per feature of `logit_effect_matrix`."""
    eff = logit_effect_matrix(rm, d)  # [d_sae, vocab]
    top = eff.topk(n, dim=-1)
    bottom = (-eff).topk(n, dim=-1)
    return ([list(zip(i.tolist(), v_.tolist(), strict=True)) for i, v_ in zip(top.indices, top.values, strict=True)],
            [list(zip(i.tolist(), (-v_).tolist(), strict=True)) for i, v_ in zip(bottom.indices, bottom.values,
                                                                                  strict=True)])


# -- the build -------------------------------------------------------------------------------------------------


@dataclass
class _Stats:
    d_sae: int
    n_tokens: int = 0

    def __post_init__(self):
        self.count = torch.zeros(self.d_sae, dtype=torch.long)
        self.maxact = torch.zeros(self.d_sae)
        self.hist = torch.zeros(self.d_sae, len(HIST_EDGES) + 1, dtype=torch.long)
        self.top_val = torch.full((TOP_K, self.d_sae), -1.0)
        self.top_idx = torch.full((TOP_K, self.d_sae), -1, dtype=torch.long)
        self.res_key = torch.full((SAMPLE_K, self.d_sae), -1.0)
        self.res_idx = torch.full((SAMPLE_K, self.d_sae), -1, dtype=torch.long)
        self.res_val = torch.zeros(SAMPLE_K, self.d_sae)

    def update(self, codes: Tensor, flat_offset: int, gen: torch.Generator) -> None:
        """codes [n_tokens, d_sae] for tokens flat_offset .. flat_offset + n_tokens - 1."""
        codes = codes.float()
        n = codes.shape[0]
        active = codes > 0
        self.n_tokens += n
        self.count += active.sum(0)
        self.maxact = torch.maximum(self.maxact, codes.max(0).values)
        nz_t, nz_f = torch.nonzero(active, as_tuple=True)
        bins = torch.bucketize(codes[nz_t, nz_f], HIST_EDGES)
        self.hist.index_put_((nz_f, bins), torch.ones_like(bins), accumulate=True)
        idx = torch.arange(flat_offset, flat_offset + n)
        k = min(TOP_K, n)
        vals, rows = codes.topk(k, dim=0)
        cand_v = torch.cat([self.top_val, vals])
        cand_i = torch.cat([self.top_idx, idx[rows]])
        best = cand_v.topk(TOP_K, dim=0).indices
        self.top_val, self.top_idx = cand_v.gather(0, best), cand_i.gather(0, best)
        keys = torch.where(active, torch.rand(codes.shape, generator=gen), torch.full_like(codes, -1.0))
        k = min(SAMPLE_K, n)
        kv, kr = keys.topk(k, dim=0)
        cand_k = torch.cat([self.res_key, kv])
        cand_i = torch.cat([self.res_idx, idx[kr]])
        cand_a = torch.cat([self.res_val, codes.gather(0, kr)])
        best = cand_k.topk(SAMPLE_K, dim=0).indices
        self.res_key, self.res_idx, self.res_val = (cand_k.gather(0, best), cand_i.gather(0, best),
                                                    cand_a.gather(0, best))

    def quantile_examples(self, f: int) -> list[tuple[float, int]]:
        ok = self.res_key[:, f] >= 0
        vals, idx = self.res_val[ok, f], self.res_idx[ok, f]
        if len(vals) == 0:
            return []
        order = vals.argsort()
        chosen = sorted({int(order[min(len(order) - 1, int(q * len(order)))]) for q in QUANTILES})
        return [(float(vals[c]), int(idx[c])) for c in chosen]


def _codes_by_dictionary(rm, tokens: Tensor, want_attention: bool = False) -> tuple[dict, dict]:
    """One spliced forward pass (errors on): codes per dictionary [batch, pos, d_sae], and (optionally) the values
    and patterns of attention layers with an SAE."""
    from circuits.model import hook_attn_pattern
    from circuits.replacement import splice_hooks

    store: dict = {}
    extra: dict = {}
    hooks = splice_hooks(rm.dictionaries, "on", store)
    if want_attention:
        for layer in rm.attention_saes:
            for name in (f"blocks.{layer}.attn.hook_v", hook_attn_pattern(layer)):
                hooks.append((name, lambda act, hook: extra.__setitem__(hook.name, act.detach())))
    rm.model.run_with_hooks(tokens, fwd_hooks=hooks)
    return {k: v[0] for k, v in store.items()}, extra


def _label(tokens: list[str], logits_top: list, decode: Callable[[int], str]) -> str:
    if not tokens:
        return "dead"
    counts: dict[str, int] = {}
    for t in tokens:
        counts[t] = counts.get(t, 0) + 1
    tok, c = max(sorted(counts.items()), key=lambda kv: kv[1])
    promoted = decode(logits_top[0][0]) if logits_top else "?"
    return f"on {tok!r} ({c}/{len(tokens)}) → {promoted!r}"


@torch.no_grad()
def build(rm, rows: Tensor, path: Path, batch_size: int = 32, seed: int = 0, progress: bool = True,
          meta: dict | None = None, token_sets: list | None = None, label_config=None) -> Path:
    """Build (or finish) the dashboard database for every dictionary of `rm` over token `rows` [n_rows, n_ctx],
    then (re)compute the enrichment labels over `token_sets` (default: `circuits.token_sets.default_sets` of the
    model's vocabulary) with `label_config` (default `circuits.labels.LabelConfig()`).

    Dictionaries already finished in the database (same fingerprint) are skipped, so an interrupted build resumes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(rm)
    con = _connect(path)
    stored = dict(con.execute("SELECT key, value FROM meta").fetchall())
    if stored.get("fingerprint") not in (None, fp):
        con.executescript("DELETE FROM features; DELETE FROM examples; DELETE FROM done; DELETE FROM meta;")
    info = {"fingerprint": fp, "model": getattr(rm, "name", "model"), "rows": str(rows.shape[0]),
            "n_ctx": str(rows.shape[1]), "seed": str(seed), **(meta or {})}
    con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", info.items())
    con.commit()
    done = {r[0] for r in con.execute("SELECT dictionary FROM done")}
    todo = [d for d in rm.dictionaries if d.cfg.name not in done]
    if todo:
        _build_dictionaries(rm, rows, con, todo, batch_size, seed, progress)
    relabel(con, rm, rows, token_sets, label_config, progress)
    con.execute("VACUUM")
    con.close()
    return path


def relabel(path_or_con, rm, rows: Tensor, token_sets: list | None = None, label_config=None,
            progress: bool = False) -> int:
    """(Re)compute the enrichment labels of a built database (`rows`: the rows it was built from); returns how many
    features got one. A database built before labels existed is migrated by this alone (no rebuild)."""
    from circuits import labels
    from circuits.token_sets import default_sets, vocabulary_strings

    sets = token_sets if token_sets is not None else default_sets(vocabulary_strings(rm.model))
    return labels.label_database(path_or_con, rm, rows, sets, label_config or labels.LabelConfig(), progress)


def _build_dictionaries(rm, rows: Tensor, con, todo: list, batch_size: int, seed: int, progress: bool) -> None:
    """Passes 1 and 2 for the dictionaries `todo`, written to `con`."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    stats = {d.cfg.name: _Stats(d.d_sae) for d in todo}
    n_ctx = rows.shape[1]
    for start in tqdm(range(0, rows.shape[0], batch_size), desc="dashboards: pass 1", disable=not progress):
        batch = rows[start:start + batch_size]
        store, _ = _codes_by_dictionary(rm, batch)
        for d in todo:
            codes = store[d.cfg.name] if store[d.cfg.name].ndim == 3 else store[d.cfg.name][None]
            stats[d.cfg.name].update(codes.reshape(-1, d.d_sae), start * n_ctx, gen)
    # pass 2: contexts (and attention decompositions) for the chosen examples, row by row
    wanted: dict[int, list[tuple[str, int, str, int, float, int]]] = {}
    for d in todo:
        s = stats[d.cfg.name]
        for f in range(d.d_sae):
            for r in range(TOP_K):
                if s.top_val[r, f] > 0:
                    flat = int(s.top_idx[r, f])
                    wanted.setdefault(flat // n_ctx, []).append((d.cfg.name, f, "top", r, float(s.top_val[r, f]),
                                                                 flat % n_ctx))
            for r, (val, flat) in enumerate(s.quantile_examples(f)):
                wanted.setdefault(flat // n_ctx, []).append((d.cfg.name, f, "quantile", r, val, flat % n_ctx))
    contexts: dict[tuple[str, int, str, int], tuple] = {}
    attn: dict[tuple[str, int], dict] = {}
    by_name = {d.cfg.name: d for d in todo}
    row_ids = sorted(wanted)
    for start in tqdm(range(0, len(row_ids), batch_size), desc="dashboards: pass 2", disable=not progress):
        ids = row_ids[start:start + batch_size]
        store, extra = _codes_by_dictionary(rm, rows[ids], want_attention=True)
        for b, row in enumerate(ids):
            for name, f, kind, r, val, pos in wanted[row]:
                codes = store[name]
                codes = codes[b] if codes.ndim == 3 else codes
                lo, hi = max(0, pos - WINDOW_BEFORE), min(n_ctx, pos + WINDOW_AFTER + 1)
                contexts[(name, f, kind, r)] = (val, row, pos, rows[row, lo:hi].tolist(),
                                                codes[lo:hi, f].float().tolist())
                d = by_name[name]
                if kind == "top" and d.cfg.kind == "attention_sae":
                    _attention_terms(rm, d, extra, b, pos, f, attn.setdefault((name, f), {}))
    _write(con, rm, todo, stats, contexts, attn, progress)


def head_source_terms(rm, d, v: Tensor, A: Tensor, f: int) -> Tensor:
    """[q, H] signed terms ``A[h, p, q] · v[q, kv(h)] · W_enc[h, :, f]`` of attention feature `f`'s encoder input at
    one query position p, from the values ``v [q, H_kv, d_head]`` (``hook_v``) and the pattern row ``A [H, q]``.
    Summed over q they give ``z[p, h] · W_enc[h, :, f]``. With grouped-query attention ``hook_v`` has one slot per
    key/value head and query head h reads value head ``h // (H / H_kv)`` (TransformerLens repeats each shared head
    for its group of query heads: ``repeat_interleave``)."""
    H, dh = rm.cfg.n_heads, rm.cfg.d_head
    if v.shape[1] != H:
        v = v.repeat_interleave(H // v.shape[1], dim=1)
    w = d.W_enc[:, f].reshape(H, dh).to(v.dtype)
    return A.T * torch.einsum("qhd,hd->qh", v, w)


def _attention_terms(rm, d, extra: dict, b: int, pos: int, f: int, acc: dict) -> None:
    """Accumulate |A[h,p,q] v[q,h]·W_enc[h,:,f]| by head and by offset p − q for one top activation."""
    from circuits.model import hook_attn_pattern

    layer, H = d.cfg.layer, rm.cfg.n_heads
    v = extra[f"blocks.{layer}.attn.hook_v"][b, : pos + 1]  # [q, H_kv, d_head]
    A = extra[hook_attn_pattern(layer)][b, :, pos, : pos + 1]  # [H, q]
    terms = head_source_terms(rm, d, v, A, f).abs()  # [q, H]
    acc["heads"] = acc.get("heads", torch.zeros(H)) + terms.sum(0).float()
    offsets = acc.setdefault("offsets", {})
    for q, value in enumerate(terms.sum(1).tolist()):
        offsets[pos - q] = offsets.get(pos - q, 0.0) + value


def _write(con, rm, todo, stats, contexts, attn, progress: bool) -> None:
    from circuits.attribution.targets import token_string

    model = rm.model
    cache: dict[int, str] = {}

    def decode(t: int) -> str:
        if t not in cache:
            cache[t] = token_string(model, t)
        return cache[t]

    for d in todo:
        name = d.cfg.name
        s = stats[name]
        top, bottom = logit_effects(rm, d)
        feature_rows, example_rows = [], []
        for f in range(d.d_sae):
            peak_tokens = []
            for kind in ("top", "quantile"):
                for r in range(TOP_K):
                    c = contexts.get((name, f, kind, r))
                    if c is None:
                        continue
                    val, row, pos, toks, acts = c
                    focus = min(pos, WINDOW_BEFORE)
                    if kind == "top":
                        peak_tokens.append(decode(toks[focus]))
                    example_rows.append((name, f, kind, r, val, row, pos, _compact(toks), _numbers(acts)))
            hist = [[float(f"{lo:.4g}"), float(f"{hi:.4g}"), int(c)] for lo, hi, c in zip(
                [0.0] + HIST_EDGES.tolist(), HIST_EDGES.tolist() + [float("inf")], s.hist[f].tolist(), strict=True)
                if c > 0]
            heads = offsets = None
            if (name, f) in attn:
                h = attn[(name, f)]["heads"]
                heads = _numbers((h / h.sum().clamp_min(1e-12)).tolist())
                off = attn[(name, f)]["offsets"]
                total = sum(off.values()) or 1.0
                best = sorted(off.items(), key=lambda kv: -kv[1])[:N_OFFSETS]  # the rest is summed as "other"
                shares = {str(k): float(f"{v / total:.4g}") for k, v in sorted(best)}
                shares["other"] = float(f"{max(0.0, 1 - sum(v for _, v in best) / total):.4g}")
                offsets = _compact(shares)
            label = _label(peak_tokens, top[f], decode)
            feature_rows.append((name, f, float(s.count[f]) / max(1, s.n_tokens), float(s.maxact[f]),
                                 int(s.count[f]), _compact(hist),
                                 _compact([[decode(t), float(f"{v:.4g}")] for t, v in top[f]]),
                                 _compact([[decode(t), float(f"{v:.4g}")] for t, v in bottom[f]]),
                                 heads, offsets, label))
        con.execute("DELETE FROM features WHERE dictionary = ?", (name,))
        con.execute("DELETE FROM examples WHERE dictionary = ?", (name,))
        con.executemany("INSERT INTO features (dictionary, feature, density, max_activation, n_active, histogram, "
                        "logits_top, logits_bottom, heads, source_offsets, auto_label) VALUES "
                        "(?,?,?,?,?,?,?,?,?,?,?)", feature_rows)
        con.executemany("INSERT INTO examples VALUES (?,?,?,?,?,?,?,?,?)", example_rows)
        con.execute("INSERT OR REPLACE INTO done VALUES (?)", (name,))
        con.commit()


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
            raise DashboardError(f"{self.path} is not a dashboard database ({e}); rebuild it with "
                                 f"`{build_hint}`") from None
        if rm is not None and self.meta.get("fingerprint") != fingerprint(rm):
            raise DashboardError(f"{self.path} was built for different dictionaries or a different model "
                                 f"(fingerprint mismatch); rebuild it with `{build_hint}`")
        self._tokens = getattr(rm, "model", None)
        self._has_labels = self.con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND "
                                            "name = 'labels'").fetchone()[0] > 0

    def _decode(self, ids: list[int]) -> list[str]:
        from circuits.attribution.targets import token_string

        return [token_string(self._tokens, t) if self._tokens is not None else f"<{t}>" for t in ids]

    def label(self, dictionary: str, feature: int) -> str | None:
        """THE label shown for a feature (graphs, explorer, CLI): the user's label, else the enrichment label, else
        the peak-token label; None for a feature not in the database."""
        if self._has_labels:
            row = self.con.execute(
                "SELECT COALESCE(f.user_label, l.label, f.auto_label) FROM features f LEFT JOIN labels l ON "
                "l.dictionary = f.dictionary AND l.feature = f.feature WHERE f.dictionary = ? AND f.feature = ?",
                (dictionary, feature)).fetchone()
        else:
            row = self.con.execute("SELECT COALESCE(user_label, auto_label) FROM features WHERE dictionary = ? AND "
                                   "feature = ?", (dictionary, feature)).fetchone()
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
        claims, enriched = self.enrichment(dictionary, feature)
        examples = []
        for kind, rank, act, r, pos, toks, acts in self.con.execute(
                "SELECT kind, rank, activation, row, pos, tokens, activations FROM examples WHERE dictionary = ? "
                "AND feature = ? ORDER BY kind DESC, rank", (dictionary, feature)):
            toks = json.loads(toks)
            examples.append(Example(kind, rank, act, r, pos, self._decode(toks), json.loads(acts),
                                    min(pos, WINDOW_BEFORE)))
        return Dashboard(dictionary, feature, user or enriched or auto, auto, density, maxact, n_active,
                         [tuple(h) for h in json.loads(hist)], [tuple(x) for x in json.loads(top)],
                         [tuple(x) for x in json.loads(bottom)], examples,
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
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
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


def set_label(path: Path, dictionary: str, feature: int, label: str | None) -> None:
    """Set (or clear, with None) a user label that overrides the automatic one."""
    con = sqlite3.connect(str(path))
    cur = con.execute("UPDATE features SET user_label = ? WHERE dictionary = ? AND feature = ?",
                      (label, dictionary, feature))
    con.commit()
    con.close()
    if cur.rowcount == 0:
        raise DashboardError(f"no feature {feature_id(dictionary, feature)} ({dictionary}) in {path}")


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


def render_text(dash: Dashboard, width: int = 100) -> str:
    """A terminal rendering: header, logit effects, histogram, and contexts with the activating token marked."""
    lines = [f"{feature_id(dash.dictionary, dash.feature)} ({dash.dictionary}): {dash.label}",
             f"density {dash.density:.4%} ({dash.n_active} tokens), max activation {dash.max_activation:.3f}"]
    if dash.enrichment_label is not None and dash.label != dash.enrichment_label:
        lines.append(f"enrichment label: {dash.enrichment_label}")
    if dash.label != dash.auto_label:
        lines.append(f"peak-token label: {dash.auto_label}")
    if dash.enrichment is not None:
        parts = [f"{what} {c.name} ({c.count}/{c.n}, p={c.p:.2g})" for what, c in
                 zip(("on", "after", "promotes", "suppresses"), (dash.enrichment.on, dash.enrichment.after,
                     dash.enrichment.promotes, dash.enrichment.suppresses), strict=True) if c is not None]
        lines.append("token-set enrichment (Bonferroni p): " + "; ".join(parts))
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
