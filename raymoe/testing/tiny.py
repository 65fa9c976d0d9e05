"""Tiny random MoE checkpoints of every family, built in-process (no hub access).

`build_tiny_model("mixtral", out)` writes a `save_pretrained` checkpoint with a
small byte-level BPE tokenizer trained locally, for tests and the smoke job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["FAMILIES", "tiny_config", "build_tiny_model", "build_tokenizer", "SAMPLE_TEXT"]

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")

SAMPLE_TEXT = (
    "Mixture of experts models route each token to a few experts. "
    "The router picks the top k experts by probability and mixes their outputs. "
    "Pruning removes experts that are rarely used or redundant, merging folds similar experts together. "
    "Calibration text streams through the model to collect routing statistics for every layer. "
    "The quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat. "
    "Numbers like 1 2 3 4 5 6 7 8 9 10 and symbols such as + - * / = ( ) appear in code and math. "
    "def add(a, b): return a + b  # a tiny function in python code. "
)


def build_tokenizer(vocab_size: int = 256):
    """A byte-level BPE tokenizer trained on SAMPLE_TEXT, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([SAMPLE_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(family: str, *, layers: int = 4, experts: int = 8, top_k: int = 2, vocab_size: int = 320,
                hidden: int = 32, **overrides: Any):
    """A transformers config object of `family` small enough for unit tests."""
    from transformers import AutoConfig

    common: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=256, num_experts_per_tok=top_k,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )
    per_family: dict[str, dict[str, Any]] = {
        "mixtral": dict(num_local_experts=experts, intermediate_size=24),
        "qwen2_moe": dict(num_experts=experts, moe_intermediate_size=16, shared_expert_intermediate_size=24,
                          norm_topk_prob=False),
        "qwen3_moe": dict(num_experts=experts, moe_intermediate_size=16, head_dim=8, norm_topk_prob=True),
        "olmoe": dict(num_experts=experts, intermediate_size=16),
        "deepseek_v2": dict(n_routed_experts=experts, moe_intermediate_size=16, n_shared_experts=1,
                            first_k_dense_replace=1, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None,
                            qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, topk_method="greedy"),
        "deepseek_v3": dict(n_routed_experts=experts, moe_intermediate_size=16, n_shared_experts=1,
                            first_k_dense_replace=1, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None,
                            qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_group=2, topk_group=1,
                            norm_topk_prob=True, routed_scaling_factor=2.5),
    }
    if family not in per_family:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    kwargs = common | per_family[family] | overrides
    return AutoConfig.for_model(family, **kwargs)


def build_tiny_model(family: str, out: str | Path, *, seed: int = 0, max_shard_size: str | None = None,
                     **config_kwargs: Any) -> Path:
    """Build a random tiny `family` model, save it (and a tokenizer) to `out`, return the path."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = Path(out)
    cfg = tiny_config(family, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # random router and correction bias, so routing is not degenerate
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0.0, 0.1)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    build_tokenizer().save_pretrained(out)
    return out
