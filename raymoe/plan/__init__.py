"""Prune plans (`plan.json`): typed schema and validation against a model."""

from raymoe.plan.schema import LayerPlan, MergeGroup, PrunePlan

__all__ = ["LayerPlan", "MergeGroup", "PrunePlan"]
