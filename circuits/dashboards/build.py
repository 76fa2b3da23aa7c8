"""Building a dashboard database: two streaming passes over held-out rows (see :mod:`circuits.dashboards`).

Pass 1 keeps, per feature, counts, a histogram, the top activations and a reservoir sample (`_Stats`); pass 2 runs
only the rows those examples live in, for their context windows and the attention features' head and source-offset
decomposition (`head_source_terms`). `_write` stores one dictionary at a time and marks it done, so a build resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from circuits.dashboards import store
from circuits.dashboards.logit_effects import logit_effects
from circuits.dashboards.store import WINDOW_AFTER, WINDOW_BEFORE, _compact, _numbers, fingerprint

TOP_K = 10  # top activating examples per feature
SAMPLE_K = 32  # reservoir of activating positions per feature, for quantile samples
QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)
HIST_EDGES = torch.logspace(-3, 3, 25)  # activation histogram bins (non-zero activations)
N_OFFSETS = 8  # attention features: the query − source offsets kept by share (the rest is "other")


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
    con = store._connect(path)  # through the module: a test stands in a small page limit
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


def pending(rm, path: Path) -> list[str]:
    """The dictionaries of `rm` that `build` would compute into the database at `path` (all of them for a missing
    database or one built for other dictionaries; none when it is complete: a build then only relabels)."""
    import sqlite3

    path = Path(path)
    names = [d.cfg.name for d in rm.dictionaries]
    if not path.is_file():
        return names
    con = store.connect_read_only(path)
    try:
        if dict(con.execute("SELECT key, value FROM meta").fetchall()).get("fingerprint") != fingerprint(rm):
            return names
        done = {r[0] for r in con.execute("SELECT dictionary FROM done")}
    except sqlite3.DatabaseError:
        return names
    finally:
        con.close()
    return [n for n in names if n not in done]


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
