"""Pruning methods: a registry of name -> "module:Class", imported only when chosen.

`validate(stats, "reap", 0.5)` checks the method name, its options and the
budget once and returns a MethodRequest (raymoe.methods.request);
`make_plan(stats, "reap", 0.5)` is validate + run: it opens the expert weights
when the method needs them and returns the PrunePlan. docs/METHODS.md says
what each method computes.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import ValidationError

from raymoe.errors import UnknownMethodError, OptionError
from raymoe.methods.budget import Budget, BudgetError
from raymoe.methods.request import MethodRequest, validate
from raymoe.registry import Registry

__all__ = ["METHODS", "UnknownMethodError", "OptionError", "method_names", "load_method", "parse_options",
           "option_message", "budget_for", "open_weights", "validate", "MethodRequest", "make_plan",
           "describe_methods", "Budget", "BudgetError"]


#: method name -> "module:Class" (heavy imports, e.g. torch_geometric, live inside those modules' functions)
METHODS: Registry[type] = Registry("method", {
    "c-gnn-prune": "raymoe.methods.cgnn:CGnnPrune",
    "c-prune": "raymoe.methods.cprune:CPrune",
    "c-prune-merge": "raymoe.methods.cprune_merge:CPruneMerge",
    "pathfinder": "raymoe.methods.pathfinder:Pathfinder",
    "random": "raymoe.methods.baselines:RandomPrune",
    "frequency": "raymoe.methods.baselines:FrequencyPrune",
    "soft-count": "raymoe.methods.baselines:SoftCountPrune",
    "ean": "raymoe.methods.baselines:EanPrune",
    "reap": "raymoe.methods.baselines:ReapPrune",
    "naee": "raymoe.methods.naee:Naee",
    "hc-smoe": "raymoe.methods.hcsmoe:HcSmoe",
    "m-smoe": "raymoe.methods.msmoe:MSmoe",
}, error=UnknownMethodError)


def method_names() -> list[str]:
    return METHODS.names()


def load_method(name: str):
    """An instance of the registered method `name` (UnknownMethodError listing the known ones)."""
    return METHODS.get(name)()


def parse_options(method, options: Mapping[str, Any] | None):
    """The method's validated config (OptionError names the first bad option and lists the valid ones)."""
    try:
        return method.Config.model_validate(dict(options or {}))
    except ValidationError as err:
        raise OptionError(option_message(method.name, method.Config, err.errors()[0])) from None


def option_message(name: str, config: type, error: Mapping[str, Any]) -> str:
    """One line for a pydantic error of method `name`'s Config (shared by parse_options and sweep specs)."""
    where = ".".join(str(p) for p in error["loc"]) or "options"
    if error["type"] == "extra_forbidden":
        return f"method {name!r} has no option {where!r} (options: {', '.join(config.model_fields) or 'none'})"
    return f"method {name!r} option {where!r}: {error['msg']} (got {error.get('input')!r})"


def budget_for(stats, ratio: float, uniform: bool = False) -> Budget:
    from raymoe.methods.common import stats_spec

    if not stats.layers:
        raise BudgetError("the statistics hold no MoE layers")
    return Budget.for_spec(stats_spec(stats), ratio, uniform=uniform, experts=stats.experts())


def open_weights(stats, required: bool = True):
    """The expert weights of the checkpoint the statistics came from (None if optional and absent)."""
    from pathlib import Path

    from raymoe.methods.common import StatsError, stats_spec
    from raymoe.moe import ExpertWeights
    from raymoe.moe.safetensors_files import model_hash

    path = stats.manifest.model.path
    if not required and not (path and (Path(path) / "config.json").is_file()):
        return None
    if required and not (path and Path(path).exists()):
        raise StatsError(f"this method needs the expert weights, but the stats' model {path!r} does not exist "
                         f"(methods that read no weights plan from the stats alone)")
    weights = ExpertWeights(path, stats_spec(stats))
    recorded = stats.manifest.model.hash
    if recorded and model_hash(path, weights.ckpt) != recorded:
        raise StatsError(f"the stats' model {path!r} changed since calibration (its hash is not the recorded "
                         f"{recorded[:12]}); calibrate again")
    return weights


def make_plan(stats, method: str, ratio: float, *, uniform: bool = False,
              options: Mapping[str, Any] | None = None, weights=None):
    """Run `method` on `stats` for `ratio`: `validate` (once, before any work), then the request's run."""
    return validate(stats, method, ratio, uniform=uniform, options=options).run(weights)


def describe_methods() -> list[dict[str, Any]]:
    """Name, summary, weights need and options (type, default, description) of every method."""
    out = []
    for name in METHODS:
        m = load_method(name)
        opts = []
        for key, field in m.Config.model_fields.items():
            ann = field.annotation
            typ = getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann).replace("typing.", "")
            opts.append({"name": key, "type": typ, "default": field.default, "help": field.description or ""})
        out.append({"name": name, "summary": m.summary, "weights": m.weights, "options": opts})
    return out
