"""Variants to evaluate: checkpoint directories, validated up front, with their provenance.

A variant is `PATH` or `NAME=PATH`. Provenance comes from the checkpoint
itself: `config.json` (family, per-layer expert counts) and, for pruned
checkpoints, the `plan.json` written by `raymoe prune` (method, ratio, source).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from raymoe.errors import CheckpointError, RaymoeError
from raymoe.moe.safetensors_files import SafetensorsCheckpoint
from raymoe.moe.spec import MoeModelSpec

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

    @property
    def experts_total(self) -> int:
        return sum(self.experts_per_layer)

    @classmethod
    def from_path(cls, path: str | Path, name: str | None = None) -> "Variant":
        path = Path(path).expanduser().resolve()
        spec = MoeModelSpec.from_pretrained(path)  # CheckpointError / NotMoEError with a clear message
        ckpt = SafetensorsCheckpoint(path)  # weights present, shard headers valid
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise CheckpointError(f"{path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
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


def serving_cost(spec: MoeModelSpec, ckpt: SafetensorsCheckpoint) -> dict[str, int]:
    """Routed-expert and total parameter counts and tensor bytes, from the shard headers (no tensor read)."""
    routed = total = nbytes = 0
    for name, info in ckpt.infos.items():
        numel = math.prod(info.shape)
        total += numel
        nbytes += info.nbytes
        if spec.role(name).kind == "expert":
            routed += numel
    return {"params_routed": routed, "params_total": total, "checkpoint_bytes": nbytes}


def parse_variants(items: list[str]) -> list[Variant]:
    """`[NAME=]PATH` items -> validated Variants with distinct names."""
    if not items:
        raise RaymoeError("no variants given")
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        out.append(Variant.from_path(path, name) if sep and name and "/" not in name else Variant.from_path(item))
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RaymoeError(f"variant name used twice: {', '.join(dup)} (name them with NAME=PATH)")
    return out
