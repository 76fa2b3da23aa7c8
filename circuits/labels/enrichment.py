"""Set enrichment: is a small sample of tokens concentrated in a named token set more than chance allows?

**The test.** A feature's top-k activating positions are k positions drawn (without replacement) from the N
positions of the labelling corpus; K of those N positions hold a token of set S. If the feature ignored S, the
number x of sampled positions in S would follow the hypergeometric distribution, so the p-value of seeing x or more
is its survival function::

    P(X ≥ x) = Σ_{i=x}^{min(n, K)} C(K, i) · C(N − K, n − i) / C(N, n)

computed here in log space with `math.lgamma` (scipy is not a dependency; tests check it against exact rational
arithmetic). The same test serves the token *before* each activating token (population: every position that has a
previous token) and the logit effects (population: the vocabulary the corpus uses, one entry per token; the
sample: the k tokens the feature's write promotes most, or suppresses most).

**Many sets, one claim.** Every set with members in the population is a candidate, so the p-values are
Bonferroni-corrected (multiplied by the number of candidates m). When singletons are allowed (the token before, so
that a label can say ``after "in"``), every token of the population is a candidate as well and counts in m. A set
is *claimed* when its corrected p ≤ α and it holds at least ``max(min_count, ⌈min_share · n⌉)`` of the sample;
among claimable sets the one holding the most of the sample wins (then the smaller p, then the smaller set). When
no set passes, there is no claim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from circuits.token_sets import TokenSet


@dataclass(frozen=True)
class LabelConfig:
    """Thresholds of the enrichment labels (stored in the database's meta as `label_config`)."""

    alpha: float = 0.01  # family-wise error per test: Bonferroni-corrected p ≤ alpha
    min_share: float = 0.5  # a claimed set holds at least this share of the sample ...
    min_count: int = 3  # ... and at least this many of its tokens
    k_logits: int = 20  # top / bottom logit effects tested for "promotes" / "suppresses"


def log_hypergeom_pmf(i: int, N: int, K: int, n: int) -> float:
    """log P(X = i) for X ~ Hypergeometric(population N, successes K, draws n)."""

    def lchoose(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    return lchoose(K, i) + lchoose(N - K, n - i) - lchoose(N, n)


@lru_cache(maxsize=1 << 16)
def hypergeom_sf(x: int, N: int, K: int, n: int) -> float:
    """P(X ≥ x) for X ~ Hypergeometric(N, K, n): the one-sided enrichment p-value (log-sum-exp of the tail)."""
    if not (0 <= K <= N and 0 <= n <= N):
        raise ValueError(f"hypergeometric needs 0 ≤ K ≤ N and 0 ≤ n ≤ N (got N={N}, K={K}, n={n})")
    lo, hi = max(x, 0, n - (N - K)), min(n, K)
    if lo > hi:
        return 0.0 if x > 0 else 1.0
    if lo == max(0, n - (N - K)):
        return 1.0  # the whole support
    logs = [log_hypergeom_pmf(i, N, K, n) for i in range(lo, hi + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


@dataclass(frozen=True)
class Claim:
    """The set a sample is enriched in: `count` of the sample's `n` tokens lie in it; `p` is Bonferroni-corrected."""

    name: str  # the set's name, or a token in double quotes ('"in"') for a singleton
    plural: str
    count: int
    n: int
    p: float


def singleton_name(text: str) -> str:
    """How a single token reads in a label: its text without the leading space, in double quotes."""
    return '"' + (text[1:] if text.startswith(" ") else text) + '"'


class Enrichment:
    """Enrichment tests of token samples against one population, for a fixed list of sets.

    `population` [d_vocab] counts each token's positions in the corpus (or 1 per vocabulary entry for logit
    effects). Build once per population; `test` is then cheap (one membership sum, p-values only for sets that
    could pass the count threshold)."""

    def __init__(self, sets: list[TokenSet], population: np.ndarray, cfg: LabelConfig = LabelConfig(),
                 singletons: list[str] | None = None):
        self.cfg = cfg
        self.population = np.asarray(population, dtype=np.int64)
        self.N = int(self.population.sum())
        d_vocab = len(self.population)
        self.sets = [s for s in sets if int(self.population[[i for i in s.ids if i < d_vocab]].sum()) > 0]
        self.member = np.zeros((d_vocab, len(self.sets)), dtype=bool)
        for j, s in enumerate(self.sets):
            self.member[[i for i in s.ids if i < d_vocab], j] = True
        self.K = (self.population[:, None] * self.member).sum(0)
        self.singletons = singletons  # token texts by id, when single tokens are candidates too
        self.m = len(self.sets) + (int((self.population > 0).sum()) if singletons is not None else 0)

    def p_value(self, count: int, K: int, n: int) -> float:
        """Bonferroni-corrected enrichment p-value."""
        return min(1.0, self.m * hypergeom_sf(count, self.N, K, n))

    def test(self, sample: list[int] | np.ndarray) -> Claim | None:
        """The claimed set of a sample of token ids (None when no set passes)."""
        sample = np.asarray(sample, dtype=np.int64)
        n = len(sample)
        if n == 0 or self.N == 0:
            return None
        need = max(self.cfg.min_count, math.ceil(self.cfg.min_share * n))
        candidates = []
        counts = self.member[sample].sum(0)
        for j in np.nonzero(counts >= need)[0]:
            s = self.sets[int(j)]
            candidates.append((int(counts[j]), self.p_value(int(counts[j]), int(self.K[j]), n), int(self.K[j]),
                               s.name, s.plural))
        if self.singletons is not None:
            ids, c = np.unique(sample, return_counts=True)
            for t, cnt in zip(ids.tolist(), c.tolist(), strict=True):
                if cnt >= need and self.population[t] > 0:
                    name = singleton_name(self.singletons[t])
                    candidates.append((cnt, self.p_value(cnt, int(self.population[t]), n), int(self.population[t]),
                                       name, name))
        passing = [c for c in candidates if c[1] <= self.cfg.alpha]
        if not passing:
            return None
        count, p, _, name, plural = min(passing, key=lambda c: (-c[0], c[1], c[2], c[3]))
        return Claim(name, plural, count, n, p)
