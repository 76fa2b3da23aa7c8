"""Label accuracy against the organism's planted world.

The organism's text comes from a world whose categories are known (`circuits.token_sets.organism_sets`: disjoint,
covering the vocabulary), so a label's category can be checked:

* A feature **falls in category C** when at least ``threshold`` (70%) of its top-k activating tokens are in C
  (and it has at least ``min_n`` = 5 of them). Its *true* category is then C; otherwise it has none.
* Its **predicted** category is the *on* set of its enrichment label (None when that test claimed nothing).
* **Accuracy** = share of features with a true category whose predicted category is that category.
  Per category: **recall** = correct / features truly in C; **precision** = correct / features predicted C (among
  those with enough top tokens to judge; a predicted C whose tokens are in no single category counts as wrong).

Two sources for the true category:

* *held-out* (`heldout_top_tokens`): top-k activating tokens over fresh rows of another corpus stream than the
  database's — the label (from the database's examples) must predict what the feature does on new text;
* *in-sample*: the database's own top examples (the same tokens the label was computed from: this checks only the
  decision rule — thresholds, multiple testing — not generalisation).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from circuits.token_sets import TokenSet

THRESHOLD = 0.7
MIN_N = 5


def set_index(sets: list[TokenSet], d_vocab: int) -> np.ndarray:
    """[d_vocab] index of each token's set (-1 for none); raises ValueError when the sets overlap."""
    out = np.full(d_vocab, -1, dtype=np.int64)
    for j, s in enumerate(sets):
        ids = np.array(sorted(i for i in s.ids if i < d_vocab), dtype=np.int64)
        clash = ids[out[ids] >= 0] if len(ids) else ids
        if len(clash):
            raise ValueError(f"token sets overlap: token {int(clash[0])} is in {sets[out[clash[0]]].name!r} and "
                             f"{s.name!r}; ground truth needs disjoint categories")
        out[ids] = j
    return out


def true_category(tokens: list[int], index: np.ndarray, sets: list[TokenSet], threshold: float = THRESHOLD,
                  min_n: int = MIN_N) -> str | None:
    """The category holding ≥ `threshold` of `tokens` (None if none, or fewer than `min_n` tokens)."""
    if len(tokens) < min_n:
        return None
    cats = index[np.asarray(tokens, dtype=np.int64)]
    cats = cats[cats >= 0]
    if len(cats) == 0:
        return None
    values, counts = np.unique(cats, return_counts=True)
    j = int(counts.argmax())
    return sets[int(values[j])].name if counts[j] >= threshold * len(tokens) else None


@dataclass
class CategoryScore:
    name: str
    n_true: int = 0  # features whose true category is this one
    n_predicted: int = 0  # features predicted this category (and judgeable)
    n_correct: int = 0

    @property
    def precision(self) -> float | None:
        return self.n_correct / self.n_predicted if self.n_predicted else None

    @property
    def recall(self) -> float | None:
        return self.n_correct / self.n_true if self.n_true else None


@dataclass
class GroundTruthReport:
    source: str  # "held-out" or "in-sample"
    n_judged: int  # features with enough top tokens to judge
    categories: list[CategoryScore] = field(default_factory=list)

    @property
    def n_true(self) -> int:
        return sum(c.n_true for c in self.categories)

    @property
    def n_correct(self) -> int:
        return sum(c.n_correct for c in self.categories)

    @property
    def accuracy(self) -> float:
        """Correct / features that fall in one category: a recall (a labeller that names a category for every
        feature scores high here; `precision` says how often a named category is right)."""
        return self.n_correct / self.n_true if self.n_true else float("nan")

    @property
    def n_predicted(self) -> int:
        return sum(c.n_predicted for c in self.categories)

    @property
    def precision(self) -> float:
        """Correct / features given a category (and judgeable)."""
        return self.n_correct / self.n_predicted if self.n_predicted else float("nan")

    def table(self) -> str:
        """A markdown table: per category, features truly in it, predicted, correct, precision, recall."""

        def pct(x):
            return "–" if x is None else f"{x:.0%}"

        lines = [f"{self.source}: accuracy {self.accuracy:.1%} ({self.n_correct}/{self.n_true} features that fall in "
                 f"one category; {self.n_judged} features judged)", "",
                 "| category | true | predicted | correct | precision | recall |", "|---|---:|---:|---:|---:|---:|"]
        for c in self.categories:
            if c.n_true or c.n_predicted:
                lines.append(f"| {c.name} | {c.n_true} | {c.n_predicted} | {c.n_correct} | {pct(c.precision)} | "
                             f"{pct(c.recall)} |")
        return "\n".join(lines)


def evaluate(predicted: dict[tuple[str, int], str | None], truth_tokens: dict[tuple[str, int], list[int]],
             sets: list[TokenSet], d_vocab: int, source: str, threshold: float = THRESHOLD,
             min_n: int = MIN_N) -> GroundTruthReport:
    """Score predicted categories against the true category of each feature's `truth_tokens`."""
    index = set_index(sets, d_vocab)
    scores = {s.name: CategoryScore(s.name) for s in sets}
    judged = 0
    for key, tokens in truth_tokens.items():
        if len(tokens) < min_n:
            continue
        judged += 1
        truth = true_category(tokens, index, sets, threshold, min_n)
        guess = predicted.get(key)
        if truth is not None:
            scores[truth].n_true += 1
        if guess in scores:
            scores[guess].n_predicted += 1
            if guess == truth:
                scores[guess].n_correct += 1
    return GroundTruthReport(source, judged, list(scores.values()))


def plurality_categories(top_tokens: dict[tuple[str, int], list[int]], sets: list[TokenSet], d_vocab: int,
                         min_share: float = 0.0, min_n: int = 0) -> dict[tuple[str, int], str | None]:
    """The baseline labellers the enrichment labels are compared with: each feature's most common category among
    its stored top tokens (ties: the first set), with no statistical test. With the defaults it names a category
    whenever one of its top tokens has one; with `min_share` / `min_n` only when that category holds at least
    that share of the tokens and there are at least `min_n` of them (a share rule: the harder baseline)."""
    index = set_index(sets, d_vocab)
    out: dict[tuple[str, int], str | None] = {}
    for key, tokens in top_tokens.items():
        cats = index[np.asarray(tokens, dtype=np.int64)] if tokens else np.array([], dtype=np.int64)
        cats = cats[cats >= 0]
        out[key] = None
        if len(cats) and len(tokens) >= min_n:
            values, counts = np.unique(cats, return_counts=True)
            j = int(counts.argmax())
            if counts[j] >= min_share * len(tokens):
                out[key] = sets[int(values[j])].name
    return out


#: the baselines `circuits dashboards label-accuracy` scores beside the enrichment labels: (name, min_share, min_n)
BASELINES = (("plurality, no threshold", 0.0, 0), ("plurality, ≥ half of ≥ 3 top tokens", 0.5, 3),
             (f"plurality, ≥ {THRESHOLD:.0%} of ≥ {MIN_N} top tokens (the truth's own rule)", THRESHOLD, MIN_N))


def outcomes(predicted: dict[tuple[str, int], str | None], truth_tokens: dict[tuple[str, int], list[int]],
             sets: list[TokenSet], d_vocab: int, threshold: float = THRESHOLD, min_n: int = MIN_N
             ) -> dict[str, np.ndarray]:
    """Per judged feature (≥ `min_n` truth tokens, in `truth_tokens` order): labelled (a category of `sets`),
    correct, and has a true category — the columns `evaluate` counts, kept per feature for paired intervals."""
    index = set_index(sets, d_vocab)
    names = {s.name for s in sets}
    rows = []
    for key, tokens in truth_tokens.items():
        if len(tokens) < min_n:
            continue
        truth = true_category(tokens, index, sets, threshold, min_n)
        guess = predicted.get(key)
        rows.append((guess in names, guess in names and guess == truth, truth is not None))
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return {"labelled": arr[:, 0], "correct": arr[:, 1], "has_truth": arr[:, 2]}


def precision_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], seed: int = 0):
    """Precision of labeller a minus labeller b on the same judged features, with a paired bootstrap interval over
    features (`outcomes` of each; one resample of features for both)."""
    from circuits.studies import stats

    def stat(c):
        pa, pb = c["la"].sum(), c["lb"].sum()
        return float(c["ca"].sum() / pa - c["cb"].sum() / pb) if pa and pb else float("nan")

    return stats.bootstrap({"la": a["labelled"], "ca": a["correct"], "lb": b["labelled"], "cb": b["correct"]}, stat,
                           n_boot=500, seed=seed)


def predicted_categories(con: sqlite3.Connection) -> dict[tuple[str, int], str | None]:
    """(dictionary, feature) → the *on* set of its stored enrichment label."""
    return {(d, f): s for d, f, s in con.execute("SELECT dictionary, feature, on_set FROM labels")}


@torch.no_grad()
def heldout_top_tokens(rm, rows: Tensor, k: int = 10, batch_size: int = 32,
                       progress: bool = False) -> dict[tuple[str, int], list[int]]:
    """(dictionary, feature) → token ids at its top-k activating positions (activation > 0) over `rows`."""
    from tqdm.auto import tqdm

    from circuits.dashboards.build import _codes_by_dictionary

    best: dict[str, tuple[Tensor, Tensor]] = {}
    flat_tokens = rows.reshape(-1)
    n_ctx = rows.shape[1]
    for start in tqdm(range(0, rows.shape[0], batch_size), desc="held-out top tokens", disable=not progress):
        store, _ = _codes_by_dictionary(rm, rows[start:start + batch_size])
        for name, codes in store.items():
            codes = codes.reshape(-1, codes.shape[-1]).float().cpu()
            kk = min(k, codes.shape[0])
            vals, idx = codes.topk(kk, dim=0)
            idx = idx + start * n_ctx
            if name in best:
                vals, idx = torch.cat([best[name][0], vals]), torch.cat([best[name][1], idx])
                keep = vals.topk(k, dim=0).indices
                vals, idx = vals.gather(0, keep), idx.gather(0, keep)
            best[name] = (vals, idx)
    out = {}
    for name, (vals, idx) in best.items():
        for f in range(vals.shape[1]):
            live = vals[:, f] > 0
            out[(name, f)] = flat_tokens[idx[live, f]].tolist()
    return out


def top_tokens_in_db(con: sqlite3.Connection) -> dict[tuple[str, int], list[int]]:
    """(dictionary, feature) → token ids of its stored top examples (the in-sample truth)."""
    from circuits.labels import top_tokens_from_db

    return {key: on for key, (on, _) in top_tokens_from_db(con).items()}


def negative_control(rows: Tensor, sets: list[TokenSet], vocab: list[str], cfg=None, n: int = 20000,
                     seed: int = 0) -> dict[str, tuple[int, int]]:
    """How often features with *random* contexts get a claim: for each of `n` fake features, 10 positions drawn at
    random from `rows` (positions ≥ 1, so each has a token before it) for *on* and *after*, and `k_logits` tokens
    drawn from the used vocabulary for *promotes*. Returns {test: (claims, n)}; the Bonferroni correction promises
    claims/n ≤ α."""
    from circuits.labels import Enrichment, LabelConfig, LabelPopulations

    cfg = cfg or LabelConfig()
    pops = LabelPopulations.from_rows(rows, len(vocab))
    on, after = Enrichment(sets, pops.on, cfg), Enrichment(sets, pops.after, cfg, singletons=vocab)
    promotes = Enrichment(sets, pops.vocab, cfg)
    rng = np.random.default_rng(seed)
    flat = rows.cpu().reshape(-1).numpy()
    n_rows, n_ctx = rows.shape
    pos = rng.integers(1, n_ctx, (n, 10)) + n_ctx * rng.integers(0, n_rows, (n, 10))
    used = np.nonzero(pops.vocab)[0]
    return {"on": (sum(on.test(flat[p]) is not None for p in pos), n),
            "after": (sum(after.test(flat[p - 1]) is not None for p in pos), n),
            "promotes": (sum(promotes.test(rng.choice(used, cfg.k_logits, replace=False)) is not None
                             for _ in range(n)), n)}
