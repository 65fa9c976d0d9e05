"""The peers' score baselines: one score per expert, keep the highest (docs/METHODS.md, "Baselines").

For MoE layer l and expert e (sums over calibration tokens t, routed set S_t,
router probability p_t(e), gate weight g_t(e), expert output f_e(x_t)):
- `random`:     s_e ~ U(0, 1), seeded per (seed, layer);
- `frequency`:  s_e = #{t : e in S_t}                              (routing counts);
- `soft-count`: s_e = sum_t p_t(e)                                 (router probability mass, SEER-MoE,
                                                                    Muzio et al. 2024);
- `ean`:        s_e = sum_{t: e in S_t} ||f_e(x_t)||               (expert activation norm, EAN);
- `reap`:       s_e = mean_{t: e in S_t} g_t(e) ||f_e(x_t)||       (Router-weighted Expert Activation
                                                                    Pruning, Lasby et al. 2025).
`uniform` keeps the top n_l per layer; `global` normalises each layer's scores to
shares s_e / sum_l s and ranks all experts together (floor: the model's min_kept).
Group-limited routers (DeepSeek-V3; DeepSeek-V2 with group_limited_greedy) keep
the top n_l / n_group of every original group instead (common.keep_balanced),
and global mode adds one expert per group at a time (Budget.counts_from_scores).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from raymoe.methods.budget import Budget
from raymoe.methods.common import MethodConfig, build_plan, keep_by_scores, per_layer_share
from raymoe.plan.prune_plan import PrunePlan
from raymoe.store.calib_stats import CalibStats, LayerStats

__all__ = ["RandomPrune", "FrequencyPrune", "SoftCountPrune", "EanPrune", "ReapPrune", "score_plan"]


class NoOptions(MethodConfig):
    """This method has no options."""


class RandomConfig(MethodConfig):
    seed: int = Field(0, description="experts are drawn per (seed, layer)")


def score_plan(name: str, config: MethodConfig, stats: CalibStats, budget: Budget,
               scores: dict[int, np.ndarray]) -> PrunePlan:
    keep = keep_by_scores(stats, budget, scores)
    table = {l: {"score": s, "share": per_layer_share(s)} for l, s in scores.items()}
    return build_plan(name, config, stats, budget, keep, table)


class RandomPrune:
    name: ClassVar[str] = "random"
    summary: ClassVar[str] = "keep experts drawn at random (seeded per layer)"
    weights: ClassVar[str] = "none"
    Config = RandomConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: RandomConfig) -> PrunePlan:
        scores = {l: np.random.default_rng([config.seed, l]).random(s.num_experts) for l, s in stats.layers.items()}
        return score_plan(self.name, config, stats, budget, scores)


def _stat_plan(name: str, config, stats: CalibStats, budget: Budget, fn) -> PrunePlan:
    scores = {l: np.asarray(fn(s), dtype=np.float64) for l, s in stats.layers.items()}  # [E] per layer
    return score_plan(name, config, stats, budget, scores)


class FrequencyPrune:
    name: ClassVar[str] = "frequency"
    summary: ClassVar[str] = "keep the experts routed most often (top-k selection counts)"
    weights: ClassVar[str] = "none"
    Config = NoOptions

    def plan(self, stats: CalibStats, weights, budget: Budget, config: NoOptions) -> PrunePlan:
        return _stat_plan(self.name, config, stats, budget, lambda s: s.counts)


class SoftCountPrune:
    name: ClassVar[str] = "soft-count"
    summary: ClassVar[str] = "keep the experts with the most router probability mass (SEER-MoE soft counting)"
    weights: ClassVar[str] = "none"
    Config = NoOptions

    def plan(self, stats: CalibStats, weights, budget: Budget, config: NoOptions) -> PrunePlan:
        return _stat_plan(self.name, config, stats, budget, lambda s: s.prob_mass)


class EanPrune:
    name: ClassVar[str] = "ean"
    summary: ClassVar[str] = "keep the experts with the largest summed activation norms (EAN)"
    weights: ClassVar[str] = "none"
    Config = NoOptions

    def plan(self, stats: CalibStats, weights, budget: Budget, config: NoOptions) -> PrunePlan:
        return _stat_plan(self.name, config, stats, budget, lambda s: s.act_norm_sum)


def _reap(s: LayerStats) -> np.ndarray:
    return s.reap  # reap_sum / counts, 0 for never-routed experts


class ReapPrune:
    name: ClassVar[str] = "reap"
    summary: ClassVar[str] = "keep the experts with the largest router-weighted activation norm (REAP)"
    weights: ClassVar[str] = "none"
    Config = NoOptions

    def plan(self, stats: CalibStats, weights, budget: Budget, config: NoOptions) -> PrunePlan:
        return _stat_plan(self.name, config, stats, budget, _reap)
