"""Each family's top-k routing, re-implemented from router logits, with an optional expert mask.

Used where routing must be recomputed without some experts (leave-one-out
error, NAEE, and the masked reference that pruned checkpoints are checked
against). Masked experts are never chosen and take no probability mass:
- softmax routers (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2): p = softmax over
  unmasked logits; top-k; renormalised to sum 1 when the family does
  (Mixtral always, others when `norm_topk_prob`); DeepSeek-V2 scales by
  `routed_scaling_factor` and may limit choice to the top `topk_group` groups
  (group score = max p in the group);
- DeepSeek-V3: s = sigmoid(logits); choice score s + correction bias, masked
  experts -inf; group score = sum of the group's top-2 choice scores, top
  `topk_group` groups; top-k within them; weights s renormalised when
  `norm_topk_prob`, times `routed_scaling_factor`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raymoe.moe.model_spec import MoeModelSpec

__all__ = ["RoutingRule", "route"]


@dataclass(frozen=True)
class RoutingRule:
    scoring: str  # "softmax" | "sigmoid"
    top_k: int
    renormalize: bool
    scaling: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"  # "max" (DeepSeek-V2) | "top2sum" (DeepSeek-V3)

    @classmethod
    def for_spec(cls, spec: MoeModelSpec) -> "RoutingRule":
        cfg, arch = spec.config, spec.arch
        if arch.family == "mixtral":
            renorm = True
        else:
            renorm = bool(cfg.get("norm_topk_prob", False))
        deepseek = arch.family.startswith("deepseek")
        return cls(
            scoring=arch.scoring,
            top_k=spec.top_k,
            renormalize=renorm if arch.family != "deepseek_v2" else False,
            scaling=float(cfg.get("routed_scaling_factor") or 1.0) if deepseek else 1.0,
            n_group=spec.n_group,
            topk_group=int(cfg.get("topk_group") or 1),
            group_score="top2sum" if arch.scoring == "sigmoid" else "max",
        )


def _group_mask(choice: torch.Tensor, rule: RoutingRule) -> torch.Tensor:
    T, E = choice.shape
    grouped = choice.view(T, rule.n_group, E // rule.n_group)  # [T, G, E/G]
    if rule.group_score == "top2sum":
        gscore = grouped.topk(2, dim=-1).values.sum(-1)  # [T, G]
    else:
        gscore = grouped.max(dim=-1).values  # [T, G]
    gidx = gscore.topk(rule.topk_group, dim=-1).indices  # [T, topk_group]
    gmask = torch.zeros_like(gscore, dtype=torch.bool).scatter_(1, gidx, True)  # [T, G]
    return gmask.unsqueeze(-1).expand_as(grouped).reshape(T, E)  # [T, E]


def route(rule: RoutingRule, logits: torch.Tensor, bias: torch.Tensor | None = None,
          mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Route tokens: logits [T, E] -> (probs [T, E], weights [T, k], indices [T, k]).

    `mask` [E] bool marks the available experts (None: all). `probs` are the
    router's probabilities (softmax, or sigmoid scores) with masked experts at 0.
    """
    logits = logits.float()
    T, E = logits.shape
    avail = torch.ones(E, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    assert int(avail.sum()) >= rule.top_k, "fewer available experts than top_k"
    if rule.scoring == "softmax":
        probs = torch.softmax(logits.masked_fill(~avail, float("-inf")), dim=-1)  # [T, E]
        choice = probs
        if rule.n_group > 1:
            choice = choice.masked_fill(~_group_mask(choice, rule), 0.0)
        idx = choice.topk(rule.top_k, dim=-1).indices  # [T, k]
    else:
        probs = torch.sigmoid(logits).masked_fill(~avail, 0.0)  # [T, E]
        choice = probs + (bias.float() if bias is not None else 0.0)
        choice = choice.masked_fill(~avail, float("-inf"))
        if rule.n_group > 1:
            choice = choice.masked_fill(~_group_mask(choice, rule), float("-inf"))
        idx = choice.topk(rule.top_k, dim=-1).indices  # [T, k]
    weights = probs.gather(1, idx)  # [T, k]
    if rule.renormalize:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return probs, weights * rule.scaling, idx
