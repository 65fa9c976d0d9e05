"""Test helpers: tiny in-process MoE checkpoints of every family."""

from raymoe.testing.tiny import FAMILIES, build_tiny_model, build_tokenizer, tiny_config

__all__ = ["FAMILIES", "build_tiny_model", "build_tokenizer", "tiny_config"]
