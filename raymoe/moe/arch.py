"""Per-architecture MoE facts: the one table that knows module and tensor names.

transformers 5.x holds routed experts fused in memory (`mlp.experts.gate_up_proj
[E, 2I, H]`, `mlp.experts.down_proj [E, H, I]`) and writes them per expert on
disk (`...experts.N.w1/w2/w3` for Mixtral, `...experts.N.{gate,up,down}_proj`
for the others). Everything else in raymoe asks this table, never a class name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from raymoe.errors import NotMoEError

__all__ = ["MoeArch", "ARCHS", "arch_for_config", "RAYMOE_COUNTS_KEY"]

#: config key that records per-layer routed-expert counts in raymoe's variable-expert configs.
RAYMOE_COUNTS_KEY = "raymoe_experts_per_layer"

Config = dict[str, Any]


def _all_layers(cfg: Config) -> list[int]:
    return list(range(cfg["num_hidden_layers"]))


def _qwen_moe_layers(cfg: Config) -> list[int]:
    only_mlp = set(cfg.get("mlp_only_layers") or [])
    step = cfg.get("decoder_sparse_step") or 1
    return [i for i in range(cfg["num_hidden_layers"]) if i not in only_mlp and (i + 1) % step == 0]


def _deepseek_moe_layers(cfg: Config) -> list[int]:
    first_dense = cfg.get("first_k_dense_replace") or 0
    return list(range(first_dense, cfg["num_hidden_layers"]))


def _deepseek_v2_serving(cfg: Config) -> Config:
    """Plain greedy top-k ignores groups in transformers; vLLM routes by n_group whenever it is set."""
    if cfg.get("topk_method") == "group_limited_greedy":
        return {}
    return {"n_group": 1, "topk_group": 1}


def _deepseek_v3_serving(cfg: Config) -> Config:
    """transformers' DeepSeek-V3 always scores by sigmoid with a correction bias (noaux_tc); vLLM reads both
    from config.json (without `topk_method: noaux_tc` it creates no e_score_correction_bias and cannot load)."""
    return {"topk_method": "noaux_tc", "scoring_func": "sigmoid"}


@dataclass(frozen=True)
class MoeArch:
    """Facts about one MoE family as transformers 5.x defines it."""

    family: str  # raymoe's name, also the stock `model_type`
    causal_lm: str  # stock architecture class name
    modeling_module: str  # transformers module holding the classes
    decoder_layer: str  # decoder layer class name (built per layer with a per-layer config)
    count_keys: tuple[str, ...]  # config keys holding the routed-expert count (first is canonical)
    moe_layers: Callable[[Config], list[int]]
    disk_block: str  # name of the MoE block on disk: "block_sparse_moe" or "mlp"
    disk_proj: tuple[str, str, str]  # per-expert (gate, up, down) names on disk
    intermediate_key: str  # config key of one routed expert's width
    shared_prefixes: tuple[str, ...] = ()  # shared-expert submodules (never pruned)
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    correction_bias: str | None = None  # router buffer added for choice only (DeepSeek-V3)
    group_limited: bool = False  # experts split into n_group groups for routing
    serving_keys: Callable[[Config], Config] | None = None  # config keys implied by the family, for vLLM

    def implied_config(self, cfg: Config) -> Config:
        """Config keys the family implies and vLLM needs explicitly (written into exported configs)."""
        return self.serving_keys(cfg) if self.serving_keys else {}

    @property
    def variable_model_type(self) -> str:
        return f"raymoe_{self.family}"

    @property
    def variable_causal_lm(self) -> str:
        return "Raymoe" + self.causal_lm

    def num_experts(self, cfg: Config) -> int:
        for key in self.count_keys:
            if cfg.get(key):
                return int(cfg[key])
        raise NotMoEError(f"{self.family} config has no routed-expert count ({'/'.join(self.count_keys)})")

    def uses_groups(self, cfg: Config) -> bool:
        if self.group_limited:
            return (cfg.get("n_group") or 1) > 1
        return cfg.get("topk_method") == "group_limited_greedy" and (cfg.get("n_group") or 1) > 1


_STD_PROJ = ("gate_proj", "up_proj", "down_proj")

ARCHS: dict[str, MoeArch] = {
    a.family: a
    for a in (
        MoeArch(
            family="mixtral",
            causal_lm="MixtralForCausalLM",
            modeling_module="transformers.models.mixtral.modeling_mixtral",
            decoder_layer="MixtralDecoderLayer",
            count_keys=("num_local_experts",),
            moe_layers=_all_layers,
            disk_block="block_sparse_moe",
            disk_proj=("w1", "w3", "w2"),
            intermediate_key="intermediate_size",
        ),
        MoeArch(
            family="qwen2_moe",
            causal_lm="Qwen2MoeForCausalLM",
            modeling_module="transformers.models.qwen2_moe.modeling_qwen2_moe",
            decoder_layer="Qwen2MoeDecoderLayer",
            count_keys=("num_experts", "num_local_experts"),
            moe_layers=_qwen_moe_layers,
            disk_block="mlp",
            disk_proj=_STD_PROJ,
            intermediate_key="moe_intermediate_size",
            shared_prefixes=("shared_expert", "shared_expert_gate"),
        ),
        MoeArch(
            family="qwen3_moe",
            causal_lm="Qwen3MoeForCausalLM",
            modeling_module="transformers.models.qwen3_moe.modeling_qwen3_moe",
            decoder_layer="Qwen3MoeDecoderLayer",
            count_keys=("num_experts", "num_local_experts"),
            moe_layers=_qwen_moe_layers,
            disk_block="mlp",
            disk_proj=_STD_PROJ,
            intermediate_key="moe_intermediate_size",
        ),
        MoeArch(
            family="olmoe",
            causal_lm="OlmoeForCausalLM",
            modeling_module="transformers.models.olmoe.modeling_olmoe",
            decoder_layer="OlmoeDecoderLayer",
            count_keys=("num_experts", "num_local_experts"),
            moe_layers=_all_layers,
            disk_block="mlp",
            disk_proj=_STD_PROJ,
            intermediate_key="intermediate_size",
        ),
        MoeArch(
            family="deepseek_v2",
            causal_lm="DeepseekV2ForCausalLM",
            modeling_module="transformers.models.deepseek_v2.modeling_deepseek_v2",
            decoder_layer="DeepseekV2DecoderLayer",
            count_keys=("n_routed_experts", "num_experts", "num_local_experts"),
            moe_layers=_deepseek_moe_layers,
            disk_block="mlp",
            disk_proj=_STD_PROJ,
            intermediate_key="moe_intermediate_size",
            shared_prefixes=("shared_experts",),
            serving_keys=_deepseek_v2_serving,
        ),
        MoeArch(
            family="deepseek_v3",
            causal_lm="DeepseekV3ForCausalLM",
            modeling_module="transformers.models.deepseek_v3.modeling_deepseek_v3",
            decoder_layer="DeepseekV3DecoderLayer",
            count_keys=("n_routed_experts", "num_local_experts"),
            moe_layers=_deepseek_moe_layers,
            disk_block="mlp",
            disk_proj=_STD_PROJ,
            intermediate_key="moe_intermediate_size",
            shared_prefixes=("shared_experts",),
            scoring="sigmoid",
            correction_bias="e_score_correction_bias",
            group_limited=True,
            serving_keys=_deepseek_v3_serving,
        ),
    )
}

_BY_MODEL_TYPE = {a.family: a for a in ARCHS.values()} | {a.variable_model_type: a for a in ARCHS.values()}


def arch_for_config(cfg: Config) -> MoeArch:
    """The family of a config dict, or NotMoEError naming what was found."""
    model_type = cfg.get("model_type")
    arch = _BY_MODEL_TYPE.get(model_type)
    if arch is None:
        known = ", ".join(sorted(ARCHS))
        raise NotMoEError(f"model_type {model_type!r} is not a supported MoE architecture (supported: {known})")
    return arch
