"""Shard plan: decoder layers split into S contiguous stages.

Stage s holds layers [first, last) plus the embeddings (stage 0) and the final
norm (last stage); the lm_head is never loaded. Bytes per layer come from the
safetensors headers. With S given, the partition minimises the largest stage
(linear partition by dynamic programming, O(S n^2)); with a per-stage budget,
layers are packed greedily and S is the number of stages that needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from raymoe.errors import CalibrationError
from raymoe.moe.safetensors_files import SafetensorsCheckpoint
from raymoe.moe.model_spec import MoeModelSpec

__all__ = ["CalibrationError", "StageRange", "plan_stages", "layer_bytes", "EMBED_NAME", "NORM_NAME"]

EMBED_NAME = "model.embed_tokens.weight"
NORM_NAME = "model.norm.weight"


@dataclass(frozen=True)
class StageRange:
    index: int
    first: int  # first decoder layer
    last: int  # one past the last decoder layer
    embed: bool  # holds the embeddings (stage 0)
    norm: bool  # holds the final norm (last stage)
    nbytes: int  # weight bytes this stage loads

    @property
    def layers(self) -> list[int]:
        return list(range(self.first, self.last))

    def to_dict(self) -> dict:
        return asdict(self)


def layer_bytes(ckpt: SafetensorsCheckpoint, num_layers: int) -> list[int]:
    sizes = [0] * num_layers
    for name, info in ckpt.infos.items():
        if name.startswith("model.layers."):
            idx = int(name.split(".")[2])
            if idx < num_layers:
                sizes[idx] += info.nbytes
    return sizes


def _min_max_partition(sizes: list[int], parts: int) -> list[int]:
    """Cut points (len parts+1) of a contiguous partition minimising the largest part."""
    n = len(sizes)
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]  # best[p][i]: first i items in p parts
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for p in range(1, parts + 1):
        for i in range(p, n + 1):
            for j in range(p - 1, i):
                cost = max(best[p - 1][j], prefix[i] - prefix[j])
                if cost < best[p][i]:
                    best[p][i], cut[p][i] = cost, j
    cuts = [n]
    for p in range(parts, 0, -1):
        cuts.append(cut[p][cuts[-1]])
    return cuts[::-1]


def plan_stages(spec: MoeModelSpec, ckpt: SafetensorsCheckpoint, stages: int | None = None,
                budget_bytes: int | None = None) -> list[StageRange]:
    """Split `spec.num_layers` decoder layers into contiguous stages."""
    n = spec.num_layers
    sizes = layer_bytes(ckpt, n)
    embed = ckpt.infos[EMBED_NAME].nbytes if EMBED_NAME in ckpt else 0
    norm = ckpt.infos[NORM_NAME].nbytes if NORM_NAME in ckpt else 0
    weighted = list(sizes)
    weighted[0] += embed
    weighted[-1] += norm
    if stages is not None:
        if stages > n:
            raise CalibrationError(f"{stages} stages asked but the model has only {n} decoder layers")
        cuts = _min_max_partition(weighted, stages)
    elif budget_bytes is not None:
        if max(weighted) > budget_bytes:
            need = max(weighted) / 2**30
            raise CalibrationError(f"a stage memory budget of {budget_bytes / 2**30:.3g} GiB is below one layer "
                                   f"(needs at least {need:.3g} GiB)")
        cuts, acc = [0], 0
        for i, w in enumerate(weighted):
            if acc + w > budget_bytes:
                cuts.append(i)
                acc = 0
            acc += w
        cuts.append(n)
    else:
        cuts = [0, n]
    out = []
    for s in range(len(cuts) - 1):
        a, b = cuts[s], cuts[s + 1]
        out.append(StageRange(index=s, first=a, last=b, embed=s == 0, norm=s == len(cuts) - 2,
                              nbytes=sum(weighted[a:b])))
    return out
