"""Standard errors and paired differences of metrics that are ratios of per-item sums.

Every headline metric raymoe reports is a transform of a ratio of sums over
scored items (documents, or multiple-choice questions):

  value = f(sum_i num_i / sum_i den_i)

- accuracy:        num_i = 1[item i correct], den_i = 1,        f = identity
- KLD mean / top-1 agreement: num_i = the document's sum over tokens, den_i = its tokens, f = identity
- word/byte/token perplexity: num_i = the document's log-likelihood, den_i = its words/bytes/tokens,
  f(x) = exp(-x)
- bits per byte:   num_i = log-likelihood, den_i = bytes, f(x) = -x / ln 2

Items are the unit of resampling, so tokens of one document (correlated) are
never treated as independent. Standard errors come from a seeded bootstrap over
items (B resamples, with replacement) of the ratio x = sum num / sum den,
carried through f by the delta method, se(f(x)) = |f'(x)| se(x): a bootstrap
in the exp domain is dominated by the few resamples that repeat an outlying
document (wiki articles of 2 words have per-word perplexities of e^20), the
delta method is what llama.cpp's perplexity tool reports too. Paired
differences of two variants scored on the same items resample the same item
indices for both, so their shared per-item difficulty cancels; the difference
f(x_a) - f(x_b) is linearised the same way. Intervals are normal-approximation
intervals value +- z * se; for m simultaneous comparisons z is Bonferroni's
z_{1 - alpha / (2m)}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["TRANSFORMS", "SLOPES", "ItemScores", "ratio_value", "bootstrap_se", "paired_difference", "z_value",
           "bootstrap_stat_se", "Z95"]

#: transform name -> f applied to sum(num) / sum(den) (vectorised over numpy arrays)
TRANSFORMS = {
    "mean": lambda x: x,
    "exp_neg": lambda x: np.exp(-x),
    "neg_log2": lambda x: -x / math.log(2.0),
}
#: f' of each transform
SLOPES = {
    "mean": lambda x: 1.0,
    "exp_neg": lambda x: -math.exp(-x),
    "neg_log2": lambda x: -1.0 / math.log(2.0),
}


@dataclass(frozen=True)
class ItemScores:
    """Per-item numerators and denominators of one metric of one variant."""

    items: np.ndarray  # [n] item ids (int)
    num: np.ndarray  # [n]
    den: np.ndarray  # [n]
    transform: str = "mean"

    def __post_init__(self) -> None:
        assert self.transform in TRANSFORMS, self.transform
        assert self.items.shape == self.num.shape == self.den.shape

    @classmethod
    def of(cls, items, num, den, transform: str = "mean") -> "ItemScores":
        return cls(np.asarray(items, dtype=np.int64), np.asarray(num, dtype=np.float64),
                   np.asarray(den, dtype=np.float64), transform)

    @property
    def value(self) -> float:
        return ratio_value(self.num, self.den, self.transform)


def ratio_value(num: np.ndarray, den: np.ndarray, transform: str = "mean") -> float:
    return float(TRANSFORMS[transform](np.sum(num) / np.sum(den)))


def _resamples(n: int, iters: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(iters, n))  # [B, n]


def bootstrap_se(num, den, transform: str = "mean", *, iters: int = 1000, seed: int = 0) -> float:
    """Standard error of f(sum num / sum den): bootstrap over items of the ratio, delta method through f."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if num.size < 2:
        return 0.0
    idx = _resamples(num.size, iters, seed)
    est = num[idx].sum(1) / den[idx].sum(1)  # [B]
    return float(abs(SLOPES[transform](num.sum() / den.sum())) * np.std(est, ddof=1))


def bootstrap_stat_se(groups: list[np.ndarray], stat, *, iters: int = 1000, seed: int = 0) -> float:
    """Bootstrap standard error of `stat(concatenated values)` resampling whole groups (documents).

    For statistics that are not ratios of sums (median, 99th percentile of per-token KLD)."""
    if len(groups) < 2:
        return 0.0
    idx = _resamples(len(groups), iters, seed)
    est = [stat(np.concatenate([groups[i] for i in row])) for row in idx]
    return float(np.std(est, ddof=1))


def paired_difference(a: ItemScores, b: ItemScores, *, iters: int = 1000, seed: int = 0) -> tuple[float, float, int]:
    """value(a) - value(b) on the items both were scored on, its paired-bootstrap se, and the item count."""
    if a.transform != b.transform:
        raise ValueError(f"cannot pair metrics with transforms {a.transform} and {b.transform}")
    common, ia, ib = np.intersect1d(a.items, b.items, return_indices=True)
    n = common.size
    if n == 0:
        raise ValueError("the two variants share no scored items")
    an, ad, bn, bd = a.num[ia], a.den[ia], b.num[ib], b.den[ib]
    f, slope = TRANSFORMS[a.transform], SLOPES[a.transform]
    xa, xb = an.sum() / ad.sum(), bn.sum() / bd.sum()
    diff = float(f(xa) - f(xb))
    if n < 2:
        return diff, 0.0, n
    idx = _resamples(n, iters, seed)
    est = slope(xa) * (an[idx].sum(1) / ad[idx].sum(1)) - slope(xb) * (bn[idx].sum(1) / bd[idx].sum(1))  # [B]
    return diff, float(np.std(est, ddof=1)), n


def z_value(comparisons: int = 1, alpha: float = 0.05) -> float:
    """Two-sided normal quantile with Bonferroni's correction for `comparisons` simultaneous intervals."""
    assert comparisons >= 1 and 0 < alpha < 1
    return NormalDist().inv_cdf(1 - alpha / (2 * comparisons))


#: half-width of a single 95% interval, in standard errors
Z95 = z_value(1)
