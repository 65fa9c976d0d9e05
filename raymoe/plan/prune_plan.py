"""`plan.json`: per MoE layer, the experts kept (in new order), merge groups, and the deciding scores.

Expert indices are source indices. The pruned layer's expert `j` is source
expert `keep[j]`, or, when a merge group targets `keep[j]`, the weighted
average sum_i w_i * P_i(W_{members[i]}) of its members' weights, P_i the
member's neuron permutation (identity unless the plan has an `alignment`);
router rows and correction bias are sum_i w_i r_{members[i]} (never permuted).

Permutations live in a sidecar safetensors file next to plan.json
(`raymoe.plan.alignment`), named in plan.json with its SHA-256 and width.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raymoe.errors import PlanError
from raymoe.atomic import atomic_write_text
from raymoe.plan.alignment import Alignment

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MergeGroup", "LayerPlan", "PrunePlan", "PLAN_VERSION", "Alignment"]

PLAN_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MergeGroup(_Strict):
    """Experts `members` fold into `target` (one of them) with `weights` summing to 1."""

    target: int
    members: list[int]
    weights: list[float]

    @model_validator(mode="after")
    def _check(self) -> "MergeGroup":
        if len(self.members) != len(self.weights):
            raise ValueError("merge group: members and weights differ in length")
        if self.target not in self.members:
            raise ValueError(f"merge group: target {self.target} is not among its members {self.members}")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"merge group: duplicate members {self.members}")
        if any(w < 0 for w in self.weights) or abs(sum(self.weights) - 1.0) > 1e-4:
            raise ValueError(f"merge group: weights must be >= 0 and sum to 1, got {self.weights}")
        return self


class LayerPlan(_Strict):
    layer: int  # decoder layer index
    num_experts: int  # routed experts in the source layer
    keep: list[int]  # source indices kept, in the pruned layer's order
    merges: list[MergeGroup] = Field(default_factory=list)
    scores: dict[str, list[float]] = Field(default_factory=dict)  # name -> [num_experts]

    @model_validator(mode="after")
    def _check(self) -> "LayerPlan":
        L = self.layer
        bad = [e for e in self.keep if not 0 <= e < self.num_experts]
        if bad:
            raise ValueError(f"layer {L}: experts {bad} do not exist (layer has {self.num_experts})")
        if len(set(self.keep)) != len(self.keep):
            raise ValueError(f"layer {L}: duplicate kept experts {self.keep}")
        seen: set[int] = set()
        for g in self.merges:
            if g.target not in self.keep:
                raise ValueError(f"layer {L}: merge target {g.target} is not kept")
            bad = [m for m in g.members if not 0 <= m < self.num_experts]
            if bad:
                raise ValueError(f"layer {L}: merge members {bad} do not exist")
            if seen & set(g.members):
                raise ValueError(f"layer {L}: experts {sorted(seen & set(g.members))} are in two merge groups")
            seen |= set(g.members)
            others = set(g.members) - {g.target}
            if others & set(self.keep):
                raise ValueError(f"layer {L}: merged-away experts {sorted(others & set(self.keep))} are also kept")
        for name, vals in self.scores.items():
            if len(vals) != self.num_experts:
                raise ValueError(f"layer {L}: score {name!r} has {len(vals)} values, expected {self.num_experts}")
        return self


def _check_groups(lp: LayerPlan, spec) -> None:
    """Group-limited routing: the same count kept in every ORIGINAL group, at least the per-group floor.

    The pruned model re-forms its n_group groups as contiguous runs of len(keep) / n_group
    kept experts; it routes like the original (with the removed experts masked) only when
    each original group of E / n_group contributes exactly that many (`keep` is in source
    order, so the runs are the original groups' survivors).
    """
    g, e = spec.n_group, lp.num_experts
    size = e // g
    per = [sum(1 for x in lp.keep if x // size == j) for j in range(g)]
    need = spec.min_kept_per_group
    where = (f"layer {lp.layer} keeps {len(lp.keep)} experts, per original group of {size} (n_group={g}): "
             f"{per}")
    if len(set(per)) > 1:
        raise PlanError(f"{where}; group-limited routing needs the same count in every group")
    runs = [lp.keep[i:i + per[0]] for i in range(0, len(lp.keep), per[0])] if per[0] else []
    mixed = next((r for r in runs if len({x // size for x in r}) > 1), None)
    if mixed is not None:
        raise PlanError(f"layer {lp.layer}: kept experts {mixed} form one group of the pruned layer but come "
                        f"from different original groups (keep them grouped, e.g. in source order)")
    if per[0] < need:
        raise PlanError(f"{where}; group-limited routing (top_k={spec.top_k}, topk_group={spec.topk_group}) "
                        f"needs at least {need} per group")
    for mg in lp.merges:
        groups = sorted({m // size for m in mg.members})
        if len(groups) > 1:
            raise PlanError(f"layer {lp.layer}: merge group of target {mg.target} has members {mg.members} from "
                            f"original groups {groups} (n_group={g}); group-limited routing needs every merge "
                            f"within one original group")


class PrunePlan(_Strict):
    version: int = PLAN_VERSION
    method: str
    config: dict[str, Any] = Field(default_factory=dict)
    ratio: float | None = None  # target fraction of routed experts removed
    uniform: bool = False
    model: str  # source checkpoint path
    model_type: str
    stats: dict[str, Any] | None = None  # manifest of the stats store the plan came from
    layers: list[LayerPlan]
    alignment: Alignment | None = None  # neuron permutations of merge members (sidecar file)
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())

    @model_validator(mode="after")
    def _check(self) -> "PrunePlan":
        layers = [lp.layer for lp in self.layers]
        if len(set(layers)) != len(layers):
            raise ValueError(f"plan names a layer twice: {layers}")
        return self

    def counts(self) -> dict[int, int]:
        return {lp.layer: len(lp.keep) for lp in self.layers}

    def layer(self, layer: int) -> LayerPlan | None:
        return next((lp for lp in self.layers if lp.layer == layer), None)

    def validate_for(self, spec) -> None:
        """Check the plan against a model's expert view; raise PlanError naming the first problem."""
        if spec.arch.family != self.model_type.removeprefix("raymoe_"):
            raise PlanError(f"plan is for {self.model_type!r}, model is {spec.arch.family!r}")
        for lp in self.layers:
            if lp.layer not in spec.experts:
                raise PlanError(f"plan layer {lp.layer} is not an MoE layer of the model "
                                f"(MoE layers: {spec.moe_layers})")
            if lp.num_experts != spec.experts[lp.layer]:
                raise PlanError(f"plan layer {lp.layer} expects {lp.num_experts} experts, model has "
                                f"{spec.experts[lp.layer]}")
            if len(lp.keep) < spec.top_k:
                raise PlanError(f"layer {lp.layer} keeps {len(lp.keep)} experts, fewer than top_k={spec.top_k}")
            if spec.n_group > 1:
                _check_groups(lp, spec)
        if self.alignment is not None:
            self.alignment.check(spec.expert_intermediate, self.merged_members())

    def merged_members(self) -> dict[int, list[int]]:
        """Per layer, the experts merged into another one (the members that are not their group's target)."""
        return {lp.layer: sorted(m for g in lp.merges for m in g.members if m != g.target)
                for lp in self.layers if lp.merges}

    def permutations(self) -> dict[int, dict[int, "np.ndarray"]]:
        """layer -> merged-away expert -> neuron permutation [I] (empty without an alignment)."""
        return {} if self.alignment is None else self.alignment.permutations()

    # ---- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write plan.json (and, with an alignment, its sidecar beside it first)."""
        path = Path(path)
        if self.alignment is None:
            return atomic_write_text(path, self.model_dump_json(indent=1) + "\n")
        self.alignment.write(path.parent)
        return atomic_write_text(path, self.model_dump_json(indent=1, exclude={"alignment": {"data"}}) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "PrunePlan":
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {str(path)!r} does not exist")
        try:
            plan = cls.model_validate(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise PlanError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PlanError(f"{path}: invalid plan: {where}: {first['msg']}") from None
        if plan.alignment is not None:
            plan.alignment = plan.alignment.read(path.parent, path.name)
        return plan
