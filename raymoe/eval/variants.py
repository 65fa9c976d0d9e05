"""Variants to evaluate: checkpoint directories or virtual variants, validated up front, with their provenance.

A variant is `PATH` or `NAME=PATH`. Provenance comes from the checkpoint
itself: `config.json` (family, per-layer expert counts) and, for pruned
checkpoints, the `plan.json` written by `raymoe prune` (method, ratio, source).

A *virtual* variant (`Variant.from_plan(PLAN, SOURCE)`) is a pruning plan scored on
its source checkpoint with the removed experts masked out of routing
(raymoe.plan.mask): `path` is the source (what a worker loads, once for every plan
of that source), `mask` the routers' view of the plan. Its parameter counts and
bytes are those of the checkpoint the plan would produce, computed from the
source's shard headers; it measures quality only (serving speed and memory need
a materialised checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from raymoe.errors import CheckpointError, PlanError, RaymoeError
from raymoe.moe.safetensors_files import SafetensorsCheckpoint
from raymoe.moe.model_spec import MoeModelSpec

__all__ = ["Variant", "parse_variants", "serving_cost"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Variant(BaseModel):
    """One checkpoint to score, with what it is and where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: str  # absolute
    model_type: str
    family: str
    experts_per_layer: list[int]  # routed experts per MoE layer, in layer order
    source_model: str
    method: str  # plan method, "unpruned" without a plan
    ratio: float | None = None
    uniform: bool
    config_sha256: str
    plan_sha256: str | None = None
    params_routed: int | None = None  # parameters of the routed experts (serving cost)
    params_total: int | None = None
    checkpoint_bytes: int | None = None
    virtual: bool = False  # the source at `path` with `mask` on its routers (no checkpoint written)
    plan_path: str | None = None  # the plan of a virtual variant
    mask: dict | None = None  # raymoe.plan.mask.ExpertMask.to_wire() of a virtual variant

    @property
    def experts_total(self) -> int:
        return sum(self.experts_per_layer)

    @classmethod
    def from_path(cls, path: str | Path, name: str | None = None) -> "Variant":
        path, spec, ckpt = _open_checkpoint(path)
        plan_file = path / "plan.json"
        plan = json.loads(plan_file.read_text()) if plan_file.is_file() else None
        return cls(
            name=name or path.name, path=str(path), model_type=spec.config["model_type"], family=spec.arch.family,
            experts_per_layer=[spec.experts[l] for l in spec.moe_layers],
            source_model=str(plan["model"]) if plan else str(path),
            method=str(plan["method"]) if plan else "unpruned",
            ratio=plan.get("ratio") if plan else None, uniform=spec.is_uniform,
            config_sha256=_sha256(path / "config.json"), plan_sha256=_sha256(plan_file) if plan else None,
            **serving_cost(spec, ckpt))

    @classmethod
    def from_plan(cls, plan_path: str | Path, source: str | Path | None = None,
                  name: str | None = None) -> "Variant":
        """A virtual variant: a pruning plan (no merges) on its source checkpoint (default: the plan's `model`).

        PlanError when the plan merges experts, or was made for another model (its stats' model hash,
        family or expert counts differ from the source's)."""
        from raymoe.moe.safetensors_files import model_hash
        from raymoe.plan import PrunePlan
        from raymoe.plan.mask import ExpertMask
        from raymoe.store.manifest import recorded_model_hash

        plan_path = Path(plan_path).expanduser().resolve()
        plan = PrunePlan.load(plan_path)
        mask = ExpertMask.from_plan(plan)  # refuses merges
        path, spec, ckpt = _open_checkpoint(source if source is not None else plan.model)
        made_for, found = recorded_model_hash(plan.stats), model_hash(path, ckpt)
        if made_for and made_for != found:
            raise PlanError(f"{plan_path} was made for another model (stats model hash {made_for[:12]}, "
                            f"{path} hashes to {found[:12]})")
        plan.validate_for(spec)  # family, MoE layers, expert counts, top_k, original groups
        counts = [len(mask.keep.get(l, range(spec.experts[l]))) for l in spec.moe_layers]
        default = plan.method if plan.ratio is None else f"{plan.method}@{plan.ratio:g}"
        return cls(
            name=name or default,
            path=str(path), model_type=spec.config["model_type"], family=spec.arch.family, experts_per_layer=counts,
            source_model=str(path), method=plan.method, ratio=plan.ratio, uniform=len(set(counts)) == 1,
            config_sha256=_sha256(path / "config.json"), plan_sha256=_sha256(plan_path), virtual=True,
            plan_path=str(plan_path), mask=mask.to_wire(), **serving_cost(spec, ckpt, mask))


def _open_checkpoint(path: str | Path) -> tuple[Path, MoeModelSpec, SafetensorsCheckpoint]:
    """(resolved path, expert view, shard headers) of a checkpoint directory, validated, with tokenizer files."""
    path = Path(path).expanduser().resolve()
    spec = MoeModelSpec.from_pretrained(path)  # CheckpointError / NotMoEError with a clear message
    ckpt = SafetensorsCheckpoint(path)  # weights present, shard headers valid
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise CheckpointError(f"{path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    return path, spec, ckpt


def serving_cost(spec: MoeModelSpec, ckpt: SafetensorsCheckpoint, mask=None) -> dict[str, int]:
    """Routed-expert and total parameter counts and tensor bytes, from the shard headers (no tensor read).

    With a mask (raymoe.plan.mask.ExpertMask), those of the checkpoint the plan produces: masked experts'
    tensors and their router rows (and correction-bias entries) are not counted.
    """
    routed = total = nbytes = 0
    for name, info in ckpt.infos.items():
        numel, size = math.prod(info.shape), info.nbytes
        role = spec.role(name)
        if mask is not None and role.layer in mask.keep:
            kept = len(mask.keep[role.layer]) / spec.experts[role.layer]
            if role.kind == "expert" and role.expert not in mask.keep[role.layer]:
                continue
            if role.kind in ("router", "router_bias"):  # rows [E, ...] -> [kept, ...]
                numel, size = round(numel * kept), round(size * kept)
        total += numel
        nbytes += size
        if role.kind == "expert":
            routed += numel
    return {"params_routed": routed, "params_total": total, "checkpoint_bytes": nbytes}


def _named(item: str) -> tuple[str | None, str]:
    name, sep, path = item.partition("=")
    return (name, path) if sep and name and "/" not in name else (None, item)


def parse_variants(items: list[str], plans: list[str] = (), source: str | Path | None = None) -> list[Variant]:
    """`[NAME=]PATH` checkpoints and `[NAME=]PLAN.json` virtual variants (on `source`, default each plan's
    model) -> validated Variants with distinct names."""
    if not items and not plans:
        raise RaymoeError("no variants given")
    out = [Variant.from_path(path, name) for name, path in map(_named, items)]
    out += [Variant.from_plan(path, source, name) for name, path in map(_named, plans)]
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RaymoeError(f"variant name used twice: {', '.join(dup)} (name them with NAME=PATH or NAME=PLAN)")
    return out
