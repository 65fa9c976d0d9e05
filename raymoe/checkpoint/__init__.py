"""Pruned checkpoints: stream a source checkpoint through a plan into a loadable checkpoint."""

from raymoe.checkpoint.apply import apply_plan, pruned_config

__all__ = ["apply_plan", "pruned_config"]
