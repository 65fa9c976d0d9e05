"""Expert budget: a global ratio r of routed experts removed -> kept count n_l per MoE layer.

Shared by every method (docs/METHODS.md, "Budget"):
- uniform: n_l = round((1 - r) E_l) in every layer;
- global:  sum_l n_l = N = round((1 - r) sum_l E_l), each k <= n_l <= E_l, the split
  decided by the method (ranked scores, entropy shares, path frequencies ...).
With group-limited routing (DeepSeek-V3; DeepSeek-V2 with group_limited_greedy;
n_group = g > 1) every original group of E_l / g experts keeps the same count
(the pruned model re-forms its groups as contiguous runs of n_l / g kept
experts), so every n_l is a multiple of g and counts move in steps of g: the
uniform n_l and the global N are rounded to the nearest multiple of g; the
floor is the model's `min_kept`: g * max(ceil(top_k / topk_group), 2 for
DeepSeek-V3's top-2 group score else 1) (MoeModelSpec.min_kept_per_group).
Global allocation then adds one expert to every group of a layer at a time
(`counts_from_scores`), and methods pick the members per group
(raymoe.methods.common.keep_balanced).
Rounding is half-up (not Python's banker's rounding). Shared experts are never
in a plan, so they are not counted here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from raymoe.errors import BudgetError

__all__ = ["Budget", "BudgetError", "check_ratio", "round_half_up", "integerize"]


def check_ratio(ratio) -> float:
    """The ratio as a float in the open interval (0, 1), else BudgetError."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise BudgetError(f"ratio must be a number in (0, 1), got {ratio!r}") from None
    if not 0.0 < r < 1.0 or math.isnan(r):
        raise BudgetError(f"ratio must be in (0, 1) (the fraction of routed experts removed), got {ratio}")
    return r


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def _round_to(x: float, g: int) -> int:
    """x rounded (half-up) to the nearest multiple of g."""
    return g * round_half_up(x / g)


def integerize(target: Mapping[int, float], lo: Mapping[int, int], hi: Mapping[int, int], total: int,
               step: int = 1) -> dict[int, int]:
    """Integer counts in [lo, hi], multiples of `step`, summing to `total`, closest to real `target`.

    Largest-remainder rounding in units of `step`: floor every target, then hand the
    remaining units to the layers with the largest fractional parts that are below `hi`.
    """
    layers = sorted(target)
    units = {l: min(max(target[l], lo[l]), hi[l]) / step for l in layers}
    n = {l: max(int(math.floor(units[l] + 1e-9)), lo[l] // step) for l in layers}
    left = total // step - sum(n.values())
    order = sorted(layers, key=lambda l: (-(units[l] - math.floor(units[l] + 1e-9)), l))
    while left > 0:
        moved = False
        for l in order:
            if left and n[l] < hi[l] // step:
                n[l] += 1
                left -= 1
                moved = True
        if not moved:
            raise BudgetError(f"cannot place {total} experts within the per-layer caps")
    while left < 0:  # floors above targets: take back from the layers furthest above their target
        l = max((l for l in layers if n[l] > lo[l] // step), key=lambda l: (n[l] - units[l], -l))
        n[l] -= 1
        left += 1
    return {l: n[l] * step for l in layers}


@dataclass(frozen=True)
class Budget:
    """Kept-expert budget for one (model, ratio, allocation) request."""

    ratio: float  # fraction of routed experts removed, 0 < r < 1
    experts: dict[int, int]  # MoE decoder layer -> E_l
    top_k: int
    uniform: bool = False
    n_group: int = 1
    min_kept: int = 0  # the model's own floor (MoeModelSpec.min_kept); top_k when 0

    @classmethod
    def for_spec(cls, spec, ratio: float, *, uniform: bool = False,
                 experts: Mapping[int, int] | None = None) -> "Budget":
        """Budget for a model spec (its MoE layers, top_k, n_group and min_kept)."""
        return cls.create(ratio, experts or spec.experts, spec.top_k, uniform=uniform, n_group=spec.n_group,
                          min_kept=spec.min_kept)

    @classmethod
    def create(cls, ratio: float, experts: Mapping[int, int], top_k: int, *, uniform: bool = False,
               n_group: int = 1, min_kept: int = 0) -> "Budget":
        """Validate the request and return the budget (BudgetError naming the problem otherwise)."""
        r = check_ratio(ratio)
        b = cls(r, dict(sorted((int(l), int(e)) for l, e in experts.items())), int(top_k), bool(uniform),
                max(int(n_group), 1), int(min_kept))
        b._check()
        return b

    # ---- derived counts ------------------------------------------------------------------
    @property
    def total_experts(self) -> int:
        return sum(self.experts.values())

    @property
    def floor(self) -> int:
        """Smallest count a layer may keep: max(top_k, min_kept), rounded up to a multiple of n_group."""
        return self.n_group * math.ceil(max(self.top_k, self.min_kept) / self.n_group)

    def _fewer(self) -> str:
        if self.floor == self.top_k:
            return f"fewer than top_k={self.top_k}"
        return (f"fewer than {self.floor} (top_k={self.top_k}; group-limited routing needs "
                f"{self.floor // self.n_group} per group, n_group={self.n_group})")

    @property
    def total(self) -> int:
        """Experts kept over all MoE layers."""
        if self.uniform:
            return sum(self.uniform_counts().values())
        return _round_to((1.0 - self.ratio) * self.total_experts, self.n_group)

    def uniform_counts(self) -> dict[int, int]:
        return {l: _round_to((1.0 - self.ratio) * e, self.n_group) for l, e in self.experts.items()}

    def floors(self, extra: Mapping[int, int] | None = None) -> dict[int, int]:
        """Per-layer minimum: the top_k floor, or a method's own larger floor (capped at E_l)."""
        out = {}
        for l, e in self.experts.items():
            f = max(self.floor, int((extra or {}).get(l, 0)))
            out[l] = min(self.n_group * math.ceil(f / self.n_group), e)
        return out

    def _check(self) -> None:
        g = self.n_group
        for l, e in self.experts.items():
            if e % g:
                raise BudgetError(f"layer {l} has {e} experts, not divisible by n_group={g}")
            if e < self.floor:
                raise BudgetError(f"layer {l} has {e} experts, {self._fewer()}")
        if self.uniform:
            for l, n in self.uniform_counts().items():
                if n < self.floor:
                    raise BudgetError(
                        f"ratio {self.ratio} leaves {n} of {self.experts[l]} experts in layer {l}, {self._fewer()}")
        else:
            need = sum(self.floors().values())
            if self.total < need:
                raise BudgetError(
                    f"ratio {self.ratio} leaves {self.total} of {self.total_experts} routed experts over "
                    f"{len(self.experts)} MoE layers, {self._fewer()} per layer "
                    f"(at least {need} needed, ratio <= {1 - need / self.total_experts:.4f})")

    # ---- allocation ----------------------------------------------------------------------
    def counts_from_scores(self, scores: Mapping[int, np.ndarray], *,
                           floors: Mapping[int, int] | None = None) -> dict[int, int]:
        """Global allocation by ranking per-expert keep priorities across layers.

        Every layer first keeps its floor (its highest-priority experts); the remaining
        N - sum floors slots go to the highest remaining priorities over all layers, in
        units of n_group. With groups (n_group = g > 1) a unit adds one expert to every
        original group of the layer: unit i is the (floor/g + i)-th best of each group,
        valued at the mean of those g priorities, so the counts are the ones
        `keep_balanced` fills. Scores must already be comparable across layers (methods
        normalise them first).
        """
        if self.uniform:
            return self.uniform_counts()
        fl = self.floors(floors)
        free = self.total - sum(fl.values())
        if free < 0:
            raise BudgetError(f"ratio {self.ratio} leaves {self.total} experts, fewer than the per-layer "
                              f"floors ({sum(fl.values())})")
        g = self.n_group
        units: list[tuple[float, int, int]] = []  # (-value, layer, position)
        for l, e in self.experts.items():
            s = -np.sort(-np.asarray(scores[l], dtype=np.float64).reshape(g, e // g), axis=1)  # [g, E/g] desc
            vals = s[:, fl[l] // g:].mean(axis=0)  # [units] one expert more in every group
            units += [(-float(v), l, i) for i, v in enumerate(vals)]
        units.sort()
        counts = dict(fl)
        for _, l, _ in units[: free // g]:
            counts[l] += g
        return counts

    def counts_from_targets(self, targets: Mapping[int, float], *,
                            floors: Mapping[int, int] | None = None) -> dict[int, int]:
        """Integer counts closest to real per-layer targets (summing to `total`)."""
        if self.uniform:
            return self.uniform_counts()
        return integerize(targets, self.floors(floors), self.experts, self.total, self.n_group)

    def check_counts(self, counts: Mapping[int, int]) -> None:
        """Raise BudgetError unless `counts` meets this budget (used by every method's result)."""
        if set(counts) != set(self.experts):
            raise BudgetError(f"counts name layers {sorted(counts)}, budget has {sorted(self.experts)}")
        for l, n in counts.items():
            if not self.floor <= n <= self.experts[l] or n % self.n_group:
                raise BudgetError(f"layer {l}: {n} kept experts is outside [{self.floor}, {self.experts[l]}] "
                                  f"or not a multiple of n_group={self.n_group}")
        if sum(counts.values()) != self.total:
            raise BudgetError(f"counts keep {sum(counts.values())} experts, budget is {self.total}")
