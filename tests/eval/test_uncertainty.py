"""Bootstrap standard errors cover at the nominal rate; paired differences on constructed item scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raymoe.eval.uncertainty import ItemScores, bootstrap_se, paired_difference, ratio_value, z_value

pytestmark = pytest.mark.unit


def test_ratio_value_transforms():
    num, den = np.array([-10.0, -20.0]), np.array([5.0, 5.0])
    assert ratio_value(num, den) == pytest.approx(-3.0)
    assert ratio_value(num, den, "exp_neg") == pytest.approx(math.exp(3.0))
    assert ratio_value(num, den, "neg_log2") == pytest.approx(3.0 / math.log(2))


def test_bootstrap_interval_covers_the_true_mean_at_the_nominal_rate():
    """Documents of varying length with per-token values of known mean 0.3: the 95% interval covers 0.3
    in about 95% of 300 seeded data sets."""
    rng = np.random.default_rng(1)
    covered = 0
    trials = 300
    for trial in range(trials):
        den = rng.integers(50, 400, size=40).astype(float)  # tokens per document
        doc_mean = rng.gamma(3.0, 0.1, size=40)  # per-document level, mean 0.3 (correlated tokens)
        num = np.array([rng.exponential(m, size=int(n)).sum() for m, n in zip(doc_mean, den)])
        est = num.sum() / den.sum()
        se = bootstrap_se(num, den, iters=400, seed=trial)
        covered += abs(est - 0.3) <= 1.96 * se
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_bootstrap_se_of_a_mean_matches_the_closed_form():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=500).astype(float)
    se = bootstrap_se(x, np.ones_like(x), iters=4000, seed=0)
    assert se == pytest.approx(x.std(ddof=1) / math.sqrt(x.size), rel=0.08)


def test_paired_difference_cancels_shared_item_difficulty():
    """Two variants whose per-item scores share a large item effect: the paired se is far below the
    unpaired one, and the difference is exact."""
    rng = np.random.default_rng(0)
    items = np.arange(300)
    difficulty = rng.normal(0, 1.0, size=300)
    a = ItemScores.of(items, difficulty + 0.10 + rng.normal(0, 0.05, 300), np.ones(300))
    b = ItemScores.of(items, difficulty + rng.normal(0, 0.05, 300), np.ones(300))
    diff, se, n = paired_difference(a, b, iters=2000)
    assert n == 300
    assert diff == pytest.approx(a.value - b.value)
    unpaired = math.hypot(bootstrap_se(a.num, a.den, iters=2000), bootstrap_se(b.num, b.den, iters=2000))
    assert se < unpaired / 5
    assert diff - 1.96 * se > 0  # a real difference of 0.1 is resolved


def test_paired_difference_uses_common_items_only():
    a = ItemScores.of([0, 1, 2, 3], [1, 1, 0, 1], [1, 1, 1, 1])
    b = ItemScores.of([2, 3, 4], [1, 1, 0], [1, 1, 1])
    diff, _, n = paired_difference(a, b)
    assert n == 2 and diff == pytest.approx(0.5 - 1.0)
    with pytest.raises(ValueError, match="transforms"):
        paired_difference(a, ItemScores.of([0], [1], [1], "exp_neg"))


def test_bonferroni_z():
    assert z_value(1) == pytest.approx(1.959964, abs=1e-5)
    assert z_value(5) == pytest.approx(2.575829, abs=1e-5)  # 1 - 0.05 / 10


def test_perplexity_se_is_the_delta_method_of_the_log_domain_se():
    """ppl = exp(-x): se(ppl) = ppl * se(x), robust to documents of two words with huge per-word loss."""
    num = np.array([-7.0 * 30, -4.9 * 170, -21.8 * 2, -19.9 * 3, -32.2 * 2, -6.9 * 196])
    den = np.array([30.0, 170.0, 2.0, 3.0, 2.0, 196.0])
    se_x = bootstrap_se(num, den, "mean", seed=3)
    ppl = ratio_value(num, den, "exp_neg")
    assert bootstrap_se(num, den, "exp_neg", seed=3) == pytest.approx(ppl * se_x)
    assert bootstrap_se(num, den, "neg_log2", seed=3) == pytest.approx(se_x / math.log(2))
