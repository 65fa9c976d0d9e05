"""The expert view of one model: which layers are MoE, how many experts, which tensors.

Built from `config.json` alone (no weights, no transformers import), so planners
and drivers can reason about a 600B checkpoint on a laptop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raymoe.errors import CheckpointError, NotMoEError
from raymoe.moe.arch import RAYMOE_COUNTS_KEY, MoeArch, arch_for_config

__all__ = ["MoeModelSpec", "TensorRole"]

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

Proj = Literal["gate", "up", "down"]


@dataclass(frozen=True)
class TensorRole:
    """What a tensor name on disk is, as far as pruning cares."""

    kind: Literal["router", "router_bias", "expert", "other"]
    layer: int | None = None
    expert: int | None = None
    proj: Proj | None = None
    suffix: str = ""  # text after the projection name ("weight", "bias", ...)


@dataclass(frozen=True)
class MoeModelSpec:
    """Architecture facts resolved for one config (per-layer expert counts included)."""

    arch: MoeArch
    config: dict[str, Any] = field(repr=False)
    num_layers: int
    experts: dict[int, int]  # MoE decoder layer -> routed experts E_l
    top_k: int
    hidden_size: int
    expert_intermediate: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "MoeModelSpec":
        """The spec of a parsed config.json: a checkpoint's, or the one a stats manifest records
        (`raymoe.store.manifest.ModelFacts.spec`), so no checkpoint is needed."""
        arch = arch_for_config(cfg)
        layers = arch.moe_layers(cfg)
        default_e = arch.num_experts(cfg)
        per_layer = cfg.get(RAYMOE_COUNTS_KEY)
        if per_layer is not None:
            experts = {i: int(per_layer[i]) for i in layers}
        else:
            experts = {i: default_e for i in layers}
        if not experts:
            raise NotMoEError(f"{arch.family} config has no MoE layers")
        top_k = int(cfg["num_experts_per_tok"])
        return cls(
            arch=arch,
            config=cfg,
            num_layers=int(cfg["num_hidden_layers"]),
            experts=experts,
            top_k=top_k,
            hidden_size=int(cfg["hidden_size"]),
            expert_intermediate=int(cfg[arch.intermediate_key]),
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "MoeModelSpec":
        path = Path(path)
        cfg_file = path / "config.json"
        if not path.exists():
            raise CheckpointError(f"model path {str(path)!r} does not exist")
        if not cfg_file.is_file():
            raise CheckpointError(f"{str(path)!r} is not a checkpoint directory (no config.json)")
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{cfg_file}: invalid JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_config(cfg)

    # ---- routing facts -------------------------------------------------------------------
    @property
    def moe_layers(self) -> list[int]:
        return sorted(self.experts)

    @property
    def n_group(self) -> int:
        return int(self.config.get("n_group") or 1) if self.arch.uses_groups(self.config) else 1

    @property
    def topk_group(self) -> int:
        """Groups a token may route to (1 without group-limited routing)."""
        return int(self.config.get("topk_group") or 1) if self.n_group > 1 else 1

    @property
    def group_score(self) -> str | None:
        """How a group is scored for group-limited routing: "top2sum" (DeepSeek-V3: the sum of its
        top-2 choice scores), "max" (DeepSeek-V2 group_limited_greedy), None when not group-limited."""
        if self.n_group == 1:
            return None
        return "top2sum" if self.arch.scoring == "sigmoid" else "max"

    @property
    def min_kept_per_group(self) -> int:
        """Fewest experts each original group may keep under group-limited routing (0 without it).

        A token picks its top_k among the experts of its top `topk_group` groups, so with c
        kept per group routing needs c * topk_group >= top_k; a top-2-sum group score needs
        c >= 2. The floor is max(ceil(top_k / topk_group), 2 if top2sum else 1).
        """
        if self.n_group == 1:
            return 0
        return max(-(-self.top_k // self.topk_group), 2 if self.group_score == "top2sum" else 1)

    @property
    def min_kept(self) -> int:
        """Fewest routed experts a layer may keep: top_k, and under group-limited routing
        n_group * min_kept_per_group (every original group keeps the same count)."""
        return max(self.top_k, self.n_group * self.min_kept_per_group)

    @property
    def is_uniform(self) -> bool:
        return len(set(self.experts.values())) == 1

    def next_moe_layer(self, layer: int) -> int | None:
        later = [i for i in self.moe_layers if i > layer]
        return later[0] if later else None

    # ---- tensor names on disk ------------------------------------------------------------
    def block_prefix(self, layer: int) -> str:
        return f"model.layers.{layer}.{self.arch.disk_block}."

    def router_name(self, layer: int) -> str:
        return self.block_prefix(layer) + "gate.weight"

    def router_bias_name(self, layer: int) -> str | None:
        bias = self.arch.correction_bias
        return None if bias is None else self.block_prefix(layer) + f"gate.{bias}"

    def expert_name(self, layer: int, expert: int, proj: Proj, suffix: str = "weight") -> str:
        idx = ("gate", "up", "down").index(proj)
        return self.block_prefix(layer) + f"experts.{expert}.{self.arch.disk_proj[idx]}.{suffix}"

    def role(self, name: str) -> TensorRole:
        """Classify a tensor name found on disk."""
        m = _LAYER_RE.match(name)
        if m is None:
            return TensorRole("other")
        layer, rest = int(m.group(1)), m.group(2)
        if layer not in self.experts or not rest.startswith(self.arch.disk_block + "."):
            return TensorRole("other", layer)
        rest = rest[len(self.arch.disk_block) + 1 :]
        if rest == "gate.weight":
            return TensorRole("router", layer)
        if self.arch.correction_bias and rest == f"gate.{self.arch.correction_bias}":
            return TensorRole("router_bias", layer)
        parts = rest.split(".")
        if parts[0] == "experts" and len(parts) >= 4 and parts[1].isdigit():
            proj_name, suffix = parts[2], ".".join(parts[3:])
            if proj_name in self.arch.disk_proj:
                proj = ("gate", "up", "down")[self.arch.disk_proj.index(proj_name)]
                return TensorRole("expert", layer, int(parts[1]), proj, suffix)
        return TensorRole("other", layer)

    def layer_of(self, name: str) -> int | None:
        m = _LAYER_RE.match(name)
        return int(m.group(1)) if m else None
