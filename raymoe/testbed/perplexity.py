"""Held-out perplexity of a causal LM: exp(mean token negative log-likelihood)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["perplexity"]


@torch.no_grad()
def perplexity(model, seqs: torch.Tensor, *, batch_size: int = 4, progress: bool = True, desc: str = "ppl") -> float:
    """PPL = exp(-(1/N) sum_t log p(x_t | x_<t)) over every predicted token of the windows seqs [N, S]."""
    nll, count = 0.0, 0
    for i in tqdm(range(0, len(seqs), batch_size), desc=desc, disable=not progress, leave=False):
        batch = seqs[i:i + batch_size]  # [B, S]
        logits = model(input_ids=batch).logits[:, :-1]  # [B, S-1, V]
        target = batch[:, 1:]  # [B, S-1]
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="sum").item()
        count += target.numel()
    return math.exp(nll / count)
