"""Statistics of the case studies: paired bootstrap intervals over prompts, and verdicts that can say "no".

Every effect a report states is a mean over prompts of a per-prompt quantity, or a ratio of such means
(faithfulness ``(m̄(C) − m̄(∅)) / (m̄(M) − m̄(∅))``). Its uncertainty is the **paired bootstrap** over prompts: draw
n prompts with replacement, recompute the statistic from the same draw for every quantity it uses (so the pairing
between e.g. m(C) and m(∅) on one prompt is kept), repeat `n_boot` times, take the 2.5% and 97.5% percentiles.
Draws come from a seeded generator: the same inputs give the same interval, byte for byte.

A verdict is **confirmed** only when (1) the effect's interval excludes zero, (2) it lies entirely above the
baseline's interval (a stratified random ablation of the same size), and (3) the interval's lower end is at least a
stated minimum (default 10% of the clean metric): an effect whose estimate clears the minimum but whose interval
reaches below it is not confirmed. It is **not confirmed** when the interval contains zero, ends below the
baseline's upper bound, or lies wholly below the minimum; anything else is **inconclusive**. The numbers go with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 1000
MIN_EFFECT_SHARE = 0.10


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% paired-bootstrap interval."""

    value: float
    lo: float
    hi: float
    n: int

    def excludes(self, x: float) -> bool:
        return not self.lo <= x <= self.hi

    def as_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def bootstrap(columns: dict[str, Sequence[float]], statistic: Callable[[dict[str, np.ndarray]], float],
              n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95, batched: bool = False) -> Interval:
    """`statistic` of the per-prompt `columns` (equal lengths, one entry per prompt) with a paired bootstrap
    interval: every resample draws one set of prompt indices and applies it to all columns.

    `batched`: `statistic` reduces over the last axis (``x.mean(-1)``), so all resamples go through it at once as
    columns of shape [n_boot, n] (one row per resample), instead of one call per resample. The draws and the
    numbers are the same; a row's mean is summed exactly as the 1-D mean of that resample."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns differ in length: { {k: len(a) for k, a in arrays.items()} }")
    n = lengths.pop()
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    value = float(statistic(arrays))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    if batched:
        with np.errstate(divide="ignore", invalid="ignore"):
            draws = np.asarray(statistic({k: a[idx] for k, a in arrays.items()}), dtype=np.float64).reshape(n_boot)
    else:
        draws = np.array([statistic({k: a[i] for k, a in arrays.items()}) for i in idx], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval(value, float("nan"), float("nan"), n)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return Interval(value, float(lo), float(hi), n)


def mean_interval(values: Sequence[float], seed: int = 0, n_boot: int = N_BOOT) -> Interval:
    """The mean of per-prompt `values` with its bootstrap interval."""
    return bootstrap({"x": values}, lambda c: c["x"].mean(-1), n_boot, seed, batched=True)


def ratio_of_means(num_a: np.ndarray, num_b: np.ndarray, den_a: np.ndarray, den_b: np.ndarray) -> np.ndarray:
    """``(ā − b̄) / (c̄ − d̄)`` over the last axis (prompts); nan where the denominator is 0. Arrays [..., n] in,
    [...] out: one value for 1-D per-prompt arrays, one per resample for [n_boot, n]."""
    num = num_a.mean(-1) - num_b.mean(-1)
    denom = np.asarray(den_a.mean(-1) - den_b.mean(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom != 0, num / np.where(denom != 0, denom, 1.0), np.nan)


def faithfulness(circuit: np.ndarray, empty: np.ndarray, full: np.ndarray) -> float:
    """``(m̄(C) − m̄(∅)) / (m̄(M) − m̄(∅))`` of per-prompt metrics (nan when the model and the empty circuit agree)."""
    return float(ratio_of_means(np.asarray(circuit), np.asarray(empty), np.asarray(full), np.asarray(empty)))


def faithfulness_interval(circuit: Sequence[float], empty: Sequence[float], full: Sequence[float], seed: int = 0,
                          n_boot: int = N_BOOT) -> Interval:
    """`faithfulness` with a paired bootstrap interval (per-prompt metrics in; nan on a resample where the model and
    the empty circuit agree)."""
    return bootstrap({"circuit": circuit, "empty": empty, "full": full},
                     lambda c: ratio_of_means(c["circuit"], c["empty"], c["full"], c["empty"]), n_boot, seed,
                     batched=True)


def faithfulness_difference(a: tuple[Sequence[float], Sequence[float], Sequence[float]],
                            b: tuple[Sequence[float], Sequence[float], Sequence[float]], seed: int = 0,
                            n_boot: int = N_BOOT) -> Interval:
    """Faithfulness of a minus that of b, each given as per-prompt (circuit, empty, full) on the same prompts (e.g.
    two dictionary sets, whose empty circuits differ), with a paired bootstrap interval: one resample of prompts
    for both."""
    cols = {f"{side}{k}": v for side, (c, e, f) in (("a", a), ("b", b)) for k, v in (("c", c), ("e", e), ("f", f))}
    return bootstrap(cols, lambda x: (ratio_of_means(x["ac"], x["ae"], x["af"], x["ae"])
                                      - ratio_of_means(x["bc"], x["be"], x["bf"], x["be"])), n_boot, seed, batched=True)


@dataclass(frozen=True)
class Verdict:
    word: str  # "confirmed", "not confirmed" or "inconclusive"
    reason: str

    def as_dict(self) -> dict:
        return {"verdict": self.word, "reason": self.reason}


def verdict(effect: Interval, baseline: Interval | None, clean_metric: float,
            min_share: float = MIN_EFFECT_SHARE) -> Verdict:
    """Is `effect` (a drop of the metric, positive = the ablation hurt) real and larger than `baseline`'s?

    See the module docstring for the rule; `clean_metric` sets the minimum effect (`min_share` of it)."""
    minimum = abs(clean_metric) * min_share
    base = f"; random {baseline}" if baseline is not None else ""
    numbers = f"effect {effect}{base}; minimum {minimum:.3f} ({min_share:.0%} of the clean metric {clean_metric:.3f})"
    if not np.isfinite(effect.lo) or effect.n < 2:
        return Verdict("inconclusive", f"too few prompts for an interval ({numbers})")
    above_zero = effect.lo > 0
    above_base = baseline is None or effect.lo > baseline.hi
    big = effect.lo >= minimum  # the whole interval clears the minimum, not only the estimate
    if above_zero and above_base and big:
        return Verdict("confirmed", numbers)
    if not effect.excludes(0.0) or (baseline is not None and effect.hi < baseline.hi) or effect.hi < minimum:
        return Verdict("not confirmed", numbers)
    return Verdict("inconclusive", numbers)
