"""What every method shares: its protocol, its config base, and turning kept sets into a plan.

A method is a class registered by name (raymoe/methods/__init__.py) with
- `Config`: a pydantic model (extra="forbid": unknown options fail before any work),
- `weights`: "none" | "optional" | "required" (does it read expert weights?),
- `plan(stats, weights, budget, config) -> PrunePlan`: a pure function of its inputs.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Mapping, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from raymoe.errors import StatsError
from raymoe.methods.budget import Budget, BudgetError
from raymoe.moe.model_spec import MoeModelSpec
from raymoe.plan.prune_plan import LayerPlan, MergeGroup, PrunePlan
from raymoe.store.calib_stats import CalibStats

if TYPE_CHECKING:
    import torch

__all__ = ["MethodConfig", "Method", "WeightsView", "StatsError", "stats_spec", "model_path", "top_n",
           "keep_balanced", "group_counts", "per_layer_share", "build_plan", "keep_by_scores", "router_bias",
           "probe_subset", "single_thread"]


class MethodConfig(BaseModel):
    """Base of every method's options: strict, validated, JSON-able."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WeightsView(Protocol):
    """Read access to expert weights (raymoe.moe.ExpertWeights, or a synthetic stand-in)."""

    spec: MoeModelSpec

    def router(self, layer: int) -> torch.Tensor: ...  # [E, H]

    def outputs(self, layer: int, x: torch.Tensor) -> torch.Tensor: ...  # x [T, H] -> [T, E, H]


class Method(Protocol):
    name: ClassVar[str]
    summary: ClassVar[str]
    weights: ClassVar[Literal["none", "optional", "required"]]
    Config: ClassVar[type[MethodConfig]]

    def plan(self, stats: CalibStats, weights: WeightsView | None, budget: Budget,
             config: MethodConfig) -> PrunePlan: ...


# ---- the model behind the statistics ---------------------------------------------------------
def model_path(stats: CalibStats) -> str:
    """The checkpoint the statistics were calibrated on (StatsError when none is recorded)."""
    if not stats.manifest.model.path:
        raise StatsError("the stats manifest names no model path (synthetic statistics?)")
    return stats.manifest.model.path


def stats_spec(stats: CalibStats) -> MoeModelSpec:
    """The model spec the statistics describe, from the config recorded in their manifest (no checkpoint read)."""
    spec = stats.manifest.model.spec()
    if stats.experts() != {l: spec.experts[l] for l in stats.layers if l in spec.experts}:
        raise StatsError(f"stats layers/experts {stats.experts()} do not match the model's {spec.experts}")
    return spec


def router_bias(weights: WeightsView, layer: int) -> torch.Tensor | None:
    """DeepSeek-V3's correction bias [E] of a layer (None for families without one)."""
    getter = getattr(weights, "router_bias", None)
    if getter is not None:
        return getter(layer)
    name = weights.spec.router_bias_name(layer)
    return None if name is None else weights.ckpt.get(name).float()


def probe_subset(stats: CalibStats, layer: int, max_tokens: int, seed: int) -> torch.Tensor:
    """Up to `max_tokens` of the layer's probe inputs [P, H] (a seeded sample when there are more)."""
    import torch

    x = stats.layers[layer].probe_inputs
    if x is None or len(x) == 0:
        raise StatsError(f"layer {layer} has no probe inputs (calibrate with probe tokens)")
    if len(x) > max_tokens:
        idx = np.sort(np.random.default_rng([seed, layer]).choice(len(x), max_tokens, replace=False))
        x = x[idx]
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)  # [T, H]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run small CPU kernels on one thread (torch and BLAS/LAPACK).

    Measured on the 2-core machine under load: torch's `index_add_` on a [1024, 32]
    tensor takes 0.15 s with 2 threads and 25 us with 1; a 128x128 `eigh` 76 ms vs
    20 ms; Pathfinder's DP 16.6 s vs 1.5 s per cluster. Work this small gains nothing
    from threads, and thread hand-offs stall when the cores are busy.
    """
    import torch

    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


# ---- scores -> kept sets -> plan -------------------------------------------------------------
def top_n(score: np.ndarray, n: int) -> list[int]:
    """Indices of the n highest scores (ties: lower index first), returned in ascending order."""
    order = np.lexsort((np.arange(len(score)), -np.asarray(score, dtype=np.float64)))
    return sorted(int(i) for i in order[:n])


def keep_balanced(priority: np.ndarray, n: int, n_group: int) -> list[int]:
    """The n kept experts of a layer whose router limits tokens to groups, in ascending order.

    A group-limited router (DeepSeek-V3; DeepSeek-V2 with group_limited_greedy) splits its E
    experts into `n_group` ORIGINAL contiguous groups of E / n_group. The pruned model re-forms
    groups as contiguous runs of n / n_group kept experts, so it routes like the original only
    when every original group keeps the same count: this keeps the top n / n_group of each
    group by `priority` (ties: lower index first). With n_group == 1 it is `top_n`.
    """
    p = np.asarray(priority, dtype=np.float64)
    g = max(int(n_group), 1)
    if g == 1:
        return top_n(p, n)
    e = len(p)
    assert e % g == 0, f"{e} experts do not split into n_group={g} groups"
    assert n % g == 0, f"{n} kept experts do not split evenly over n_group={g} groups"
    size, per = e // g, n // g
    return sorted(j * size + i for j in range(g) for i in top_n(p[j * size:(j + 1) * size], per))


def group_counts(keep: list[int], num_experts: int, n_group: int) -> list[int]:
    """How many of `keep` fall in each of the n_group contiguous original groups."""
    size = num_experts // n_group
    return [sum(1 for e in keep if e // size == j) for j in range(n_group)]


def per_layer_share(values: np.ndarray) -> np.ndarray:
    """s / sum(s) for non-negative scores (uniform when the layer sums to 0): comparable across layers."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    total = v.sum()
    return v / total if total > 0 else np.full(len(v), 1.0 / len(v))


def _floats(a: Any) -> list[float]:
    return [float(x) for x in np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)]


def build_plan(method: str, config: MethodConfig, stats: CalibStats, budget: Budget,
               keep: Mapping[int, list[int]], scores: Mapping[int, Mapping[str, Any]],
               merges: Mapping[int, list[MergeGroup]] | None = None) -> PrunePlan:
    """Assemble and check a plan: counts meet the budget, every original group keeps the same count
    (group-limited routers), keep lists ascending, scores of length E."""
    budget.check_counts({l: len(k) for l, k in keep.items()})
    if budget.n_group > 1:
        for l, k in keep.items():
            per = group_counts(k, budget.experts[l], budget.n_group)
            if len(set(per)) > 1:
                raise BudgetError(f"{method}: layer {l} keeps {per} experts per original group (n_group="
                                  f"{budget.n_group}); group-limited routing needs the same count in every group")
    model = stats.manifest.model
    layers = [
        LayerPlan(layer=l, num_experts=stats.layers[l].num_experts, keep=sorted(int(e) for e in keep[l]),
                  merges=list((merges or {}).get(l, [])),
                  scores={k: _floats(v) for k, v in scores.get(l, {}).items()})
        for l in sorted(keep)
    ]
    return PrunePlan(method=method, config=config.model_dump(mode="json"), ratio=budget.ratio,
                     uniform=budget.uniform, model=model.path, model_type=model.model_type,
                     stats=stats.manifest.to_json(), layers=layers)


def keep_by_scores(stats: CalibStats, budget: Budget, scores: Mapping[int, np.ndarray]) -> dict[int, list[int]]:
    """Uniform or global allocation from per-expert keep scores, then the top n_l per layer
    (per original group for group-limited routers: `keep_balanced`)."""
    shares = {l: per_layer_share(s) for l, s in scores.items()}
    counts = budget.counts_from_scores(shares)
    return {l: keep_balanced(shares[l], counts[l], budget.n_group) for l in stats.moe_layers}
