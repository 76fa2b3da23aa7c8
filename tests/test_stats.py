"""Bootstrap intervals and verdicts: each branch reachable, negative controls say "not confirmed"."""

from __future__ import annotations

import numpy as np
import pytest

from circuits.studies import stats
from circuits.studies.stats import Interval, faithfulness_interval, mean_interval, verdict


def test_interval_covers_the_true_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = mean_interval(rng.normal(2.0, 1.0, 30)), mean_interval(rng.normal(2.0, 1.0, 600))
    assert small.lo < 2.0 < small.hi and large.lo < 2.0 < large.hi
    assert (large.hi - large.lo) < 0.5 * (small.hi - small.lo)


def test_same_inputs_same_interval():
    x = np.random.default_rng(2).normal(size=40)
    assert mean_interval(x, seed=3) == mean_interval(x, seed=3)


def test_faithfulness_interval_is_paired():
    """m(C) and m(∅) move together across prompts: pairing makes the ratio's interval far tighter than the spread of
    either column would suggest."""
    rng = np.random.default_rng(4)
    base = rng.normal(0, 5, 60)  # a large per-prompt offset shared by every condition
    f = faithfulness_interval(base + 5 + rng.normal(0, 0.1, 60), base + rng.normal(0, 0.1, 60),
                              base + 10 + rng.normal(0, 0.1, 60))
    assert abs(f.value - 0.5) < 0.02 and f.hi - f.lo < 0.05


@pytest.mark.parametrize("effect,baseline,word", [
    (Interval(1.0, 0.8, 1.2, 50), Interval(0.1, -0.1, 0.3, 50), "confirmed"),
    (Interval(0.05, -0.1, 0.2, 50), Interval(0.0, -0.1, 0.1, 50), "not confirmed"),  # contains zero
    (Interval(0.2, 0.1, 0.3, 50), Interval(0.25, 0.15, 0.35, 50), "not confirmed"),  # below the random baseline
    (Interval(0.3, 0.2, 0.4, 50), Interval(0.0, -0.1, 0.1, 50), "not confirmed"),  # real but under the minimum
    (Interval(0.6, 0.3, 0.9, 50), Interval(0.25, 0.1, 0.4, 50), "inconclusive"),  # overlaps the baseline
    (Interval(0.6, float("nan"), float("nan"), 1), None, "inconclusive"),  # no interval
    # the estimate clears the minimum (0.5) but the interval reaches below it: not confirmed yet
    (Interval(0.55, 0.45, 0.65, 50), Interval(0.0, -0.1, 0.1, 50), "inconclusive"),
    (Interval(0.55, 0.45, 0.65, 50), None, "inconclusive"),
])
def test_every_verdict_branch(effect, baseline, word):
    assert verdict(effect, baseline, clean_metric=5.0).word == word


def test_a_drop_of_one_percent_against_noise_is_not_confirmed():
    """The old rule ("drop > 0 and drop > 2 × random") confirmed a 1% drop against a 0.3% random drop."""
    rng = np.random.default_rng(5)
    effect = mean_interval(0.1 + rng.normal(0, 0.3, 100))  # 1% of a clean metric of 10
    baseline = mean_interval(0.03 + rng.normal(0, 0.3, 100))
    assert verdict(effect, baseline, clean_metric=10.0).word == "not confirmed"


def test_faithfulness_difference_is_paired_and_allows_different_empty_circuits():
    """Two dictionary sets compared on the same prompts: each ratio uses its own empty circuit; the difference of a
    set with itself is exactly 0, and a shared per-prompt offset (hard and easy prompts) does not widen the interval
    of a constant difference."""
    import numpy as np

    from circuits.studies.stats import faithfulness, faithfulness_difference

    rng = np.random.default_rng(0)
    offset = rng.normal(0, 5, 60)  # prompts differ a lot; the sets differ by a constant share
    full = offset + 10
    a = (offset + 5, offset, full)  # keeps 0.5
    b = (offset + 3, offset + 1, full)  # keeps 2 / 9 with its own empty circuit
    d = faithfulness_difference(a, b)
    want = faithfulness(*map(np.asarray, a)) - faithfulness(*map(np.asarray, b))
    assert abs(d.value - want) < 1e-12 and abs(want - (0.5 - 2 / 9)) < 1e-12
    assert d.hi - d.lo < 1e-9  # paired: the shared offset cancels in every resample
    same = faithfulness_difference(a, a)
    assert same.value == same.lo == same.hi == 0.0


def test_batched_bootstrap_equals_one_call_per_resample():
    """The batched path (all resamples as rows of one [n_boot, n] array) gives the same interval, bit for bit, as
    calling the statistic once per resample, including resamples whose denominator is 0 (dropped as nan)."""
    rng = np.random.default_rng(3)
    for n in (2, 7, 64, 201):
        c, e, f = rng.normal(size=(3, n))
        f_flat = e.copy()
        f_flat[0] += 1.0  # most resamples miss prompt 0: their denominator is exactly 0
        for full in (f, f_flat):
            cols = {"c": c, "e": e, "f": full}

            def one(x):
                d = x["f"].mean() - x["e"].mean()
                return float((x["c"].mean() - x["e"].mean()) / d) if d != 0 else float("nan")

            looped = stats.bootstrap(cols, one, seed=n)
            batched = stats.bootstrap(cols, lambda x: stats.ratio_of_means(x["c"], x["e"], x["f"], x["e"]), seed=n,
                                      batched=True)
            assert looped == batched == stats.faithfulness_interval(c, e, full, seed=n)
        assert stats.mean_interval(c, seed=1) == stats.bootstrap({"x": c}, lambda x: float(x["x"].mean()), seed=1)
