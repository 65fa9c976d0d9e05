"""One validation of a planning request: (method, options, ratio) against a stats store.

`validate` is the single place a request is checked; `make_plan`, the planner
actor and `raymoe prune` all call it once and then run the returned request:

    req = validate(stats, "pathfinder", 0.5, options={"top_m": 2})
    plan = req.run()                     # opens the expert weights if the method needs them

The checks run cheapest first, so a typo fails before a large stats store is
read: the method name (UnknownMethodError), its options (OptionError), the
ratio's range, then the budget against the statistics (BudgetError).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel

from raymoe.methods.budget import Budget, check_ratio

__all__ = ["MethodRequest", "validate"]


@dataclass(frozen=True)
class MethodRequest:
    """A validated request: the method instance, its validated Config, the Budget and the stats it holds for."""

    method: Any  # an instance of the registered method class (raymoe.methods.common.Method)
    config: BaseModel
    budget: Budget
    stats: Any  # the CalibStats the budget was computed for

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def needs_weights(self) -> bool:
        return self.method.weights != "none"

    def run(self, weights=None):
        """The PrunePlan; the expert weights are opened here when the method needs them and none are given."""
        if weights is None and self.needs_weights:
            from raymoe.methods import open_weights

            weights = open_weights(self.stats, required=self.method.weights == "required")
        return self.method.plan(self.stats, weights, self.budget, self.config)


def validate(stats, method: str, ratio: float, *, uniform: bool = False,
             options: Mapping[str, Any] | None = None) -> MethodRequest:
    """Check a request once; `stats` is a CalibStats or a stats directory (read only after the cheap checks)."""
    from raymoe.methods import budget_for, load_method, parse_options

    m = load_method(method)
    config = parse_options(m, options)
    check_ratio(ratio)
    if isinstance(stats, (str, Path)):
        from raymoe.store import load_stats

        stats = load_stats(stats)
    return MethodRequest(m, config, budget_for(stats, ratio, uniform), stats)
