"""Prune plans (`plan.json`): typed schema and validation against a model; merge permutations (sidecar)."""

from raymoe.plan.alignment import Alignment
from raymoe.plan.prune_plan import LayerPlan, MergeGroup, PrunePlan

__all__ = ["LayerPlan", "MergeGroup", "PrunePlan", "Alignment"]
