"""Micro-batches: what travels from stage to stage.

Sequences are cut into micro-batches of `micro_batch` consecutive samples
(batch b holds samples [bB, (b+1)B)). Each micro-batch carries its sequences'
calibration clusters and its probe tokens, chosen before the pass from a
generator seeded by (seed, b): the same tokens whatever the stage count or
replica. Between stages it also carries the hidden states [B, L, H] and the
routing of the last MoE layer seen so far (indices and routed output norms),
so that a transition to the next MoE layer can be counted in a later stage.
A `prepass` micro-batch (the cluster pre-pass) gathers no statistics; the last
stage answers it with `Pooled`, the pooled final hidden states of its sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["MicroBatch", "BatchDone", "Pooled", "make_batches", "probe_positions"]


@dataclass
class MicroBatch:
    batch_id: int
    seq_ids: np.ndarray  # [B] calibration sequence indices
    clusters: np.ndarray  # [B] calibration cluster of each sequence
    probe: np.ndarray  # [P] flat token positions in [0, B*L)
    ids: np.ndarray | None = field(default=None, repr=False)  # [B, L] token ids (into stage 0)
    hidden: torch.Tensor | None = field(default=None, repr=False)  # [B, L, H] (between stages)
    prev: tuple[int, np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # (layer, [T,k], [T,k])
    prepass: bool = False  # cluster pre-pass: forward only, no statistics


@dataclass(frozen=True)
class BatchDone:
    """What the last stage returns for a micro-batch."""

    batch_id: int
    tokens: int


@dataclass(frozen=True)
class Pooled:
    """What the last stage returns for a pre-pass micro-batch."""

    batch_id: int
    seq_ids: np.ndarray  # [B]
    pooled: np.ndarray  # [B, H] float64, mean over tokens of the final-normed hidden states


def probe_positions(seed: int, batch_id: int, tokens: int, count: int) -> np.ndarray:
    """`count` distinct flat token positions of one micro-batch, sorted (seeded by (seed, batch))."""
    count = min(count, tokens)
    rng = np.random.default_rng([seed, batch_id])
    return np.sort(rng.choice(tokens, size=count, replace=False)).astype(np.int64)  # [P]


def make_batches(ids: np.ndarray, clusters: np.ndarray | None, micro_batch: int, probe_tokens: int,
                 seed: int, prepass: bool = False) -> list[MicroBatch]:
    """Split samples [N, L] into micro-batches with their clusters and probe tokens (clusters None: all 0)."""
    n, seq_len = ids.shape
    clusters = np.zeros(n, dtype=np.int64) if clusters is None else clusters
    out = []
    for b, start in enumerate(range(0, n, micro_batch)):
        rows = np.arange(start, min(start + micro_batch, n))
        out.append(MicroBatch(batch_id=b, seq_ids=rows, clusters=clusters[rows].astype(np.int64),
                              probe=probe_positions(seed, b, len(rows) * seq_len, probe_tokens), ids=ids[rows],
                              prepass=prepass))
    return out
