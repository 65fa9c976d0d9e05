"""Options of the testbed builder, validated before any work (pydantic, fail fast).

Two layouts of a dense SwiGLU MLP of width I (SmolLM2-135M: I = 1536):
- `shared` (default): the `shared` most important neurons form one always-on shared
  expert, the other I - shared neurons form E routed experts (stock
  `Qwen2MoeForCausalLM`, `shared_expert_gate` zero);
- `mixtral`: all I neurons form E routed experts (stock `MixtralForCausalLM`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from raymoe.errors import TestbedConfigError

__all__ = ["TestbedConfig", "TestbedConfigError", "HealConfig", "DENSE_MLP_WIDTH", "BUILDER_VERSION",
           "UNHEALED_BUILDER_VERSION", "LAYOUT_DEFAULTS"]

#: SmolLM2-135M's MLP width; the config checks divisibility against it before loading anything.
DENSE_MLP_WIDTH = 1536
#: bump when the build algorithm changes, so old caches are not reused
BUILDER_VERSION = 3  # 2: zero q/k/v biases in the shared layout (vLLM); 3: healing by distillation
#: builds without healing are unchanged since version 2 and keep its hash (the main job's cache id)
UNHEALED_BUILDER_VERSION = 2
#: per-layout defaults of the options left unset (chosen by measurement: see raymoe/testbed/README.md)
LAYOUT_DEFAULTS: dict[str, dict[str, int]] = {
    "shared": {"experts": 16, "top_k": 4, "shared": 512},
    "mixtral": {"experts": 8, "top_k": 6, "shared": 0},
}


class HealConfig(BaseModel):
    """Healing by distillation from the dense model (`raymoe.testbed.heal`); defaults chosen by measurement."""

    __test__ = False
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: int = Field(65536, gt=0, le=1 << 20, description="calibration tokens distilled on (one pass)")
    lr: float = Field(5e-4, gt=0, le=1.0, description="AdamW peak learning rate (linear warm-up, cosine decay)")
    seq_len: int = Field(256, ge=16, le=2048, description="window length of the distillation batches")
    batch: int = Field(4, ge=1, le=256, description="windows per optimizer step")
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of the steps spent warming up")
    train: Literal["mlp", "router"] = Field("mlp", description="mlp: routers and all experts; router: routers only")


class TestbedConfig(BaseModel):
    """Everything that determines the built checkpoint (its hash names the cache)."""

    __test__ = False  # not a pytest class
    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["shared", "mixtral"] = "shared"
    experts: int = Field(ge=2, le=256, description="routed experts per layer E")
    top_k: int = Field(ge=1, description="experts per token K")
    shared: int = Field(ge=0, description="shared-expert width (layout shared; 0 for mixtral)")
    strata: int = Field(2, ge=1, description="importance strata the routed neurons are split into before clustering")
    calib_tokens: int = Field(16384, ge=256, le=131072, description="calibration tokens the builder fits on")
    seq_len: int = Field(512, ge=16, le=2048)
    coact_tokens: int = Field(4096, ge=64, description="tokens sampled for co-activation patterns (<= calib_tokens)")
    router_steps: int = Field(100, ge=0, description="L-BFGS iterations of the router fit")
    router_temperature: float = Field(1.0, gt=0, description="tau in q_e ~ ||f_e||^(1/tau), the router's target")
    down: Literal["k", "scale", "lstsq"] = Field("lstsq", description="how expert down projections are fitted")
    ridge: float = Field(1e-2, ge=0, description="ridge of the lstsq down-projection fit")
    fit_inputs: Literal["dense", "moe"] = "moe"
    layers: int | None = Field(None, ge=1, description="keep only the first N decoder layers (tests)")
    seed: int = 0
    heal: HealConfig | None = Field(None, description="distil the MoE from the dense model after MoEfication")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Leave `heal` out when unset, so unhealed builds keep their pre-healing hashes and sweep step ids."""
        data = handler(self)
        if data.get("heal") is None:
            data.pop("heal", None)
        return data

    @classmethod
    def parse(cls, **options: Any) -> "TestbedConfig":
        """Validate options (None means the layout's default); any problem is one TestbedConfigError line."""
        try:
            return cls(**{k: v for k, v in options.items() if v is not None})
        except ValidationError as err:
            first = err.errors()[0]
            where = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-") if first["loc"] else "options"
            raise TestbedConfigError(f"invalid testbed option {where}: {first['msg']}") from None

    @model_validator(mode="before")
    @classmethod
    def _layout_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            layout = data.get("layout", "shared")
            data = {**LAYOUT_DEFAULTS.get(layout, {}), **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> "TestbedConfig":
        routed = self.routed_width
        if self.layout == "shared" and not 0 < self.shared < DENSE_MLP_WIDTH:
            raise TestbedConfigError(
                f"--shared must be in 1..{DENSE_MLP_WIDTH - 1} for layout shared, got {self.shared}")
        if self.layout == "mixtral" and self.shared:
            raise TestbedConfigError("--shared applies to layout shared only (layout mixtral has no shared expert)")
        if routed % self.experts:
            raise TestbedConfigError(
                f"--experts {self.experts} does not divide the routed MLP width {routed}"
                + (f" ({DENSE_MLP_WIDTH} - shared {self.shared})" if self.layout == "shared" else "")
            )
        if self.top_k > self.experts:
            raise TestbedConfigError(f"--top-k {self.top_k} exceeds --experts {self.experts}")
        if self.experts % self.strata:
            raise TestbedConfigError(f"--strata {self.strata} does not divide --experts {self.experts}")
        return self

    @property
    def routed_width(self) -> int:
        """Neurons split among the routed experts."""
        return DENSE_MLP_WIDTH - (self.shared if self.layout == "shared" else 0)

    @property
    def expert_width(self) -> int:
        return self.routed_width // self.experts

    def digest(self) -> str:
        """Hash of the options and the builder version: the cache key."""
        version = BUILDER_VERSION if self.heal is not None else UNHEALED_BUILDER_VERSION
        blob = json.dumps({"builder": version, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
