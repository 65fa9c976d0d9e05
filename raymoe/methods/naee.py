"""NAEE: per layer, the expert subset whose pruned layer output is closest to the original.

Lu et al. 2024, "Not All Experts are Equal: Efficient Expert Pruning and Skipping
for Mixture-of-Experts LLMs". For MoE layer l with probe inputs x_t (t = 1..T),
expert outputs f_e(x_t) and the family's routing (raymoe.moe.routing.route),

    Y_t        = sum_{e in S_t}   g_t(e)   f_e(x_t)         (all experts)
    Y_t^K      = sum_{e in S_t^K} g_t^K(e) f_e(x_t)         (router rows of K only, routed again)
    loss(K)    = mean_t ||Y_t^K - Y_t||^2

and NAEE keeps argmin_{|K| = n_l} loss(K): exhaustively when the number of
candidate subsets is at most `max_subsets`, otherwise by greedy backward
elimination (each round drops the experts whose single removal raises the loss
least; `eliminate_frac` of the remaining excess per round, at least one).

Group-limited routers (DeepSeek-V3; DeepSeek-V2 with group_limited_greedy; g =
n_group > 1): the paper is silent. The pruned model re-forms its groups as
contiguous runs of n_l / g kept experts, so only subsets keeping n_l / g of every
ORIGINAL group route like the original; we search within that constraint (the
per-group counts are fixed): exhaustive search enumerates the C(E_l/g, n_l/g)^g
balanced subsets, and each greedy round drops the same number of experts, the
lowest single-removal losses, from every group. The pruned layer's experts keep
their source order, so its groups are the original groups' survivors.

Every loss uses per-token Gram matrices G_t = F_t F_t^T [E, E] (F_t = [f_e(x_t)]_e):
||sum_i w_i f_i - Y||^2 = w^T G w - 2 sum_i w_i <f_i, Y> + ||Y||^2, so a candidate
costs O(k^2) per token whatever the hidden size. Greedy rounds score
sets whose size is not a multiple of n_group without the group limit (an
approximation used only for ranking; exhaustive search is exact).
`global`: n_l from each layer's single-removal losses, as shares ranked across layers.

Probe budget: NAEE searches on `max_tokens` = 64 probe tokens per layer (a seeded sample of the
calibration's probe inputs; calibration now records at least 64 routed probe hits per expert, so
there are more). Its cost grows about linearly with the tokens (21-31 s at DeepSeek-V3 scale on
64 tokens, bench/plan_scale.py), so the default stays 64 to keep NAEE within the 60 s planning
target there; at that scale 64 tokens give 64 x 8 / 256 = 2 routed hits per expert, which is why
the leave-one-out node weights of Pathfinder read the full calibration probe set instead.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from raymoe.methods.budget import Budget
from raymoe.methods.common import (MethodConfig, StatsError, WeightsView, build_plan, per_layer_share,
                                   probe_subset, router_bias, single_thread)
from raymoe.plan.prune_plan import PrunePlan
from raymoe.store.calib_stats import CalibStats

if TYPE_CHECKING:
    import torch

    from raymoe.moe.routing import RoutingRule

__all__ = ["Naee", "NaeeConfig", "LayerObjective", "balanced_subsets"]


class NaeeConfig(MethodConfig):
    max_tokens: int = Field(64, ge=1, description="probe tokens per layer (seeded sample)")
    max_subsets: int = Field(5000, ge=1, description="search exhaustively when the candidate subsets (C(E, n); "
                             "balanced ones under group-limited routing) are at most this")
    eliminate_frac: float = Field(0.25, ge=0.0, lt=1.0,
                                  description="greedy: fraction of the remaining excess dropped per round")
    seed: int = Field(0, description="probe-token sampling seed")
    progress: bool = Field(False, description="show a progress bar over layers")


@dataclass
class LayerObjective:
    """loss(K) of one layer for many candidate subsets K at once."""

    rule: RoutingRule
    logits: torch.Tensor  # [T, E]
    bias: torch.Tensor | None  # [E]
    gram: torch.Tensor  # [T, E, E] float64
    cross: torch.Tensor  # [T, E]  b_t(e) = <f_e(x_t), Y_t>
    yy: torch.Tensor  # [T]  ||Y_t||^2

    @classmethod
    def build(cls, weights: WeightsView, layer: int, x: torch.Tensor) -> "LayerObjective":
        import torch

        from raymoe.moe.routing import RoutingRule, route

        rule = RoutingRule.for_spec(weights.spec)
        with torch.no_grad():
            logits = x @ weights.router(layer).float().T  # [T, E]
            outs = weights.outputs(layer, x).float()  # [T, E, H]
            gram = torch.bmm(outs, outs.transpose(1, 2)).double()  # [T, E, E]
        bias = router_bias(weights, layer)
        _, w, idx = route(rule, logits, bias)  # [T, k]
        T, E = logits.shape
        cols = gram.gather(2, idx[:, None, :].expand(T, E, idx.shape[1]))  # [T, E, k] = <f_e, f_idx_j>
        cross = torch.einsum("tej,tj->te", cols, w.double())  # [T, E]
        yy = torch.einsum("tj,tj->t", cross.gather(1, idx), w.double())  # [T]
        return cls(rule, logits, bias, gram, cross, yy)

    @property
    def num_experts(self) -> int:
        return self.logits.shape[1]

    def _quad(self, w: torch.Tensor, idx: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
        """w^T G_t w for rows (w [R, k], global idx [R, k], token tok [R]) -> [R]."""
        import torch

        g = self.gram[tok[:, None, None], idx[:, :, None], idx[:, None, :]]  # [R, k, k]
        return torch.einsum("ri,rij,rj->r", w, g, w)

    def losses(self, subsets: torch.Tensor, chunk_rows: int = 1 << 16) -> torch.Tensor:
        """subsets [S, n] of source indices -> loss [S] (mean over probe tokens)."""
        import torch

        from raymoe.moe.routing import route

        S, n = subsets.shape
        T = self.logits.shape[0]
        rule = self.rule if n % self.rule.n_group == 0 else replace(self.rule, n_group=1)
        out = []
        step = max(1, chunk_rows // T)
        for s0 in range(0, S, step):
            sub = subsets[s0:s0 + step]  # [s, n]
            s = sub.shape[0]
            lg = self.logits[:, sub].permute(1, 0, 2).reshape(s * T, n)  # [s*T, n]
            bias = None if self.bias is None else self.bias[sub][:, None, :].expand(s, T, n).reshape(s * T, n)
            _, w, loc = route(rule, lg, bias)  # [s*T, k]
            idx = sub[:, None, :].expand(s, T, n).reshape(s * T, n).gather(1, loc)  # [s*T, k] source ids
            tok = torch.arange(T).repeat(s)  # [s*T]
            w = w.double()
            cross = (w * self.cross[tok[:, None], idx]).sum(1)  # [s*T]
            err = self._quad(w, idx, tok) - 2 * cross + self.yy[tok]  # [s*T]
            out.append(err.clamp_min(0).view(s, T).mean(1))
        return torch.cat(out)  # [S]

    def without_each(self, keep: list[int]) -> torch.Tensor:
        """loss(keep minus e) for every e in keep -> [len(keep)]."""
        import torch

        kt = torch.tensor(keep)
        mask = ~torch.eye(len(keep), dtype=torch.bool)  # [m, m]
        return self.losses(kt.expand(len(keep), -1)[mask].view(len(keep), len(keep) - 1))


def balanced_subsets(e: int, n: int, n_group: int) -> int:
    """How many subsets keep n / n_group of each of n_group contiguous groups of e / n_group."""
    return math.comb(e // n_group, n // n_group) ** n_group


def exhaustive(obj: LayerObjective, n: int, chunk: int = 4096, n_group: int = 1) -> tuple[list[int], float]:
    """argmin over all balanced subsets of size n (first in lexicographic order on ties).

    With n_group == 1 these are all C(E, n) subsets; otherwise the n / n_group-subsets of
    every group, combined (`balanced_subsets` of them)."""
    import torch

    best, best_loss = None, math.inf
    size = obj.num_experts // n_group
    per_group = [itertools.combinations(range(j * size, (j + 1) * size), n // n_group) for j in range(n_group)]
    combos = (sum(c, ()) for c in itertools.product(*per_group))
    while True:
        block = list(itertools.islice(combos, chunk))
        if not block:
            break
        losses = obj.losses(torch.tensor(block))  # [S]
        i = int(torch.argmin(losses))
        if float(losses[i]) < best_loss:
            best, best_loss = list(block[i]), float(losses[i])
    return best, best_loss


def greedy(obj: LayerObjective, n: int, frac: float, first: np.ndarray | None = None,
           n_group: int = 1) -> tuple[list[int], np.ndarray]:
    """Backward elimination down to n experts; returns (kept, elimination rank per expert, 0 = kept).

    Each round drops the same number m of experts from every one of the n_group contiguous
    groups (the m lowest single-removal losses within it), so the kept set stays balanced.
    `first`: the first round's losses `obj.without_each(range(E))` when the caller already has them."""
    import torch

    keep = list(range(obj.num_experts))
    rank = np.zeros(obj.num_experts)
    size = obj.num_experts // n_group
    step = 0
    while len(keep) > n:
        if first is not None and len(keep) == obj.num_experts:
            losses = torch.as_tensor(first)  # [E], the full set's round, already computed
        else:
            losses = obj.without_each(keep)  # [|keep|]
        m = max(1, int(frac * (len(keep) - n) // n_group))  # per group
        order = []
        for j in range(n_group):
            mine = [i for i in range(len(keep)) if keep[i] // size == j]
            order += sorted(mine, key=lambda i: (float(losses[i]), keep[i]))[:m]
        order.sort(key=lambda i: (float(losses[i]), keep[i]))
        for i in order:
            step += 1
            rank[keep[i]] = step
        drop = {keep[i] for i in order}
        keep = [e for e in keep if e not in drop]
    return keep, rank


class Naee:
    name: ClassVar[str] = "naee"
    summary: ClassVar[str] = "keep the expert subset whose layer output changes least (exhaustive or greedy)"
    weights: ClassVar[str] = "required"
    Config = NaeeConfig

    def plan(self, stats: CalibStats, weights: WeightsView | None, budget: Budget, config: NaeeConfig) -> PrunePlan:
        if weights is None:
            raise StatsError("naee needs the expert weights (the model checkpoint of the statistics)")
        with single_thread():
            return self._plan(stats, weights, budget, config)

    def _plan(self, stats: CalibStats, weights: WeightsView, budget: Budget, config: NaeeConfig) -> PrunePlan:
        import torch

        objectives, single = {}, {}
        for l in tqdm(stats.moe_layers, desc="naee: probe outputs", disable=not config.progress):
            x = probe_subset(stats, l, config.max_tokens, config.seed)  # [T, H]
            objectives[l] = LayerObjective.build(weights, l, x)
            single[l] = objectives[l].without_each(list(range(stats.layers[l].num_experts))).numpy()  # [E]
        counts = budget.counts_from_scores({l: per_layer_share(v) for l, v in single.items()})
        keep, scores = {}, {}
        for l in tqdm(stats.moe_layers, desc="naee: subsets", disable=not config.progress):
            E, n, g = stats.layers[l].num_experts, counts[l], budget.n_group
            if n == E:
                keep[l], extra = list(range(E)), {"in_subset": np.ones(E)}
            elif balanced_subsets(E, n, g) <= config.max_subsets:
                keep[l], loss = exhaustive(objectives[l], n, n_group=g)
                extra = {"in_subset": np.isin(np.arange(E), keep[l]).astype(float),
                         "subset_loss": np.full(E, loss)}
            else:
                keep[l], rank = greedy(objectives[l], n, config.eliminate_frac, first=single[l], n_group=g)
                loss = float(objectives[l].losses(torch.tensor([keep[l]]))[0])
                extra = {"elimination_rank": rank, "subset_loss": np.full(E, loss)}
            scores[l] = {"loss_without": single[l], **extra}
        return build_plan(self.name, config, stats, budget, keep, scores)
