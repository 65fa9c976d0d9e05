"""The stats store's manifest, typed: the model, data and run behind a set of statistics.

A stats store is self-contained: `model.config` is the calibrated checkpoint's
config.json, so its expert view (`ModelFacts.spec()`: MoE layers, expert counts,
top_k, groups) comes from the store alone, and methods that read no weights plan
on a machine without the model. The other model facts (family, per-layer expert
counts, top_k, n_group/topk_group, ...) are derived from that config when the
manifest is validated; a manifest that states them differently is refused.

Stores written before the config was recorded (no `model.config`) are upgraded on
read (`upgrade_manifest`, called by `raymoe.store.stats_store.load_stats`): the config is
read from the recorded model path when that checkpoint is still there and still
hashes to the recorded model hash. Otherwise loading fails with a StatsStoreError
that says to calibrate again. The store on disk is left as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from raymoe.errors import RaymoeError, StatsStoreError
from raymoe.store.calib_stats import SCHEMA_VERSION

if TYPE_CHECKING:
    from raymoe.moe.model_spec import MoeModelSpec

__all__ = ["ModelFacts", "StatsManifest", "StatsStoreError", "upgrade_manifest", "recorded_model_hash"]


def _spec(config: dict[str, Any]) -> "MoeModelSpec":
    from raymoe.moe.model_spec import MoeModelSpec  # lazy: the store is read where raymoe.moe is not yet imported

    return MoeModelSpec.from_config(config)


class ModelFacts(BaseModel):
    """The calibrated model: where it was, its hash, its config.json, and the facts derived from the config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = ""  # checkpoint directory calibrated ("" for synthetic statistics)
    hash: str = ""  # raymoe.moe.safetensors_files.model_hash of it ("" when unknown)
    config: dict[str, Any] = Field(repr=False)  # the checkpoint's config.json
    # derived from `config` (filled in when absent, checked when present)
    model_type: str = ""
    family: str = ""
    num_layers: int = 0
    experts: dict[int, int] = Field(default_factory=dict)  # MoE decoder layer -> routed experts E_l
    top_k: int = 0
    hidden_size: int = 0
    n_group: int = 1  # original expert groups of group-limited routing (DeepSeek-V3), else 1
    topk_group: int = 1  # groups a token may route to, else 1
    _spec: Any = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            return data
        try:
            spec = _spec(data["config"])
        except (RaymoeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"model.config is not a usable MoE config ({err})") from None
        derived = {"model_type": str(spec.config.get("model_type") or spec.arch.family), "family": spec.arch.family,
                   "num_layers": spec.num_layers, "experts": dict(spec.experts), "top_k": spec.top_k,
                   "hidden_size": spec.hidden_size, "n_group": spec.n_group, "topk_group": spec.topk_group}
        for key, value in derived.items():
            given = data.get(key)
            if key == "experts" and isinstance(given, dict):
                given = {int(k): int(v) for k, v in given.items()}
            if given is not None and given != value:
                raise ValueError(f"model.{key} is {given!r} but model.config gives {value!r}")
        return {**data, **derived}

    def __eq__(self, other: object) -> bool:  # the facts, not whether the spec was built yet
        return isinstance(other, ModelFacts) and self.model_dump() == other.model_dump()

    def spec(self) -> "MoeModelSpec":
        """The model's expert view, from the recorded config (no checkpoint needed; built once)."""
        if self._spec is None:
            self._spec = _spec(self.config)
        return self._spec


class StatsManifest(BaseModel):
    """manifest.json of a stats store (see raymoe/store/stats_store.py for the other files)."""

    model_config = ConfigDict(extra="forbid")

    model: ModelFacts
    data: dict[str, Any] = Field(default_factory=dict)  # source, samples, seq_len, hash, ...
    calibration: dict[str, Any] = Field(default_factory=dict)  # CalibConfig.manifest() and derived counts
    run: dict[str, Any] = Field(default_factory=dict)  # how the pass ran: stages, replicas, timings, actors
    raymoe_version: str = ""
    created: str = ""
    num_clusters: int = 0
    files: list[str] = Field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def upgrade_manifest(raw: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """`raw` with `model.config` read from the recorded checkpoint when the manifest predates it.

    StatsStoreError (calibrate again) when the checkpoint is gone or no longer hashes as recorded."""
    model = raw.get("model")
    if not isinstance(model, dict) or "config" in model:
        return raw
    path = model.get("path") or ""
    cfg_file = Path(path) / "config.json" if path else None
    if cfg_file is None or not cfg_file.is_file():
        raise StatsStoreError(f"{where} was written by an older raymoe (its manifest holds no model config) and "
                              f"its model {path!r} is not there to read it from; calibrate again")
    from raymoe.moe.safetensors_files import SafetensorsCheckpoint, model_hash

    found = model_hash(path, SafetensorsCheckpoint(path))
    if model.get("hash") and model["hash"] != found:
        raise StatsStoreError(f"{where} was written by an older raymoe (its manifest holds no model config) and "
                              f"its model {path!r} changed since (hash {found[:12]}, recorded "
                              f"{str(model['hash'])[:12]}); calibrate again")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise StatsStoreError(f"{cfg_file}: invalid JSON ({err.msg}); calibrate again") from None
    return {**raw, "model": {**model, "config": config}}


def recorded_model_hash(manifest: Mapping[str, Any] | StatsManifest | None) -> str | None:
    """The model hash a stats manifest (typed, or as a plan's `stats` dict of any version) records, if any."""
    if isinstance(manifest, StatsManifest):
        return manifest.model.hash or None
    model = (manifest or {}).get("model")
    return (model.get("hash") or None) if isinstance(model, Mapping) else None
