"""In-memory calibration statistics: the contract between calibration and the methods.

Every field is a *sum* over calibration tokens (or sequences), so stages and
data-parallel replicas reduce by addition (`LayerStats.merge`). Means are
derived on read. Notation (docs/METHODS.md): for token t at MoE layer l,
router probabilities p_t(e), routed set S_t (|S_t| = k), gate weight g_t(e),
expert output f_e(x_t), a_t(e) = 1[e in S_t] * ||f_e(x_t)||.

Schema version 2 (`SCHEMA_VERSION`) added the routed transition intensity
(`trans_routed`, per cluster `trans_routed_by_cluster`), the per-sequence pooled
MoE inputs (`pooled_inputs`, for C-Prune's votes), and calibration clusters from
pooled final hidden states (a pre-pass) instead of mean input embeddings; the
default probe budget grew (CalibConfig.probe_hits). A store of another version is
refused on load (`raymoe.store.stats_store.load_stats`), so old caches are not reused.

On disk (the stats store directory, written atomically, never pickled):
  manifest.json          `raymoe.store.manifest.StatsManifest`: the model (path, hash, config.json and
                         the facts derived from it), data hash, calibration config, version, created
  experts.parquet        one row per (layer, expert): the [E] vectors below
  matrices.safetensors   "L{layer}.{field}" for the matrix fields below
  sequences.parquet      per sequence: id, cluster, n_tokens, pooled hidden state
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from raymoe.store.manifest import StatsManifest

__all__ = ["LayerStats", "CalibStats", "VECTOR_FIELDS", "MATRIX_FIELDS", "SCHEMA_VERSION"]

#: version of the statistics this raymoe writes and reads (bump when a field or its definition changes)
SCHEMA_VERSION = 2

#: [E] sums, stored in experts.parquet
VECTOR_FIELDS = ("counts", "prob_mass", "gate_mass", "reap_sum", "act_norm_sum", "loo_err_sum")
#: matrix sums, stored in matrices.safetensors (name -> shape comment)
MATRIX_FIELDS = {
    "coact": "[E, E]  sum_t 1[i in S_t] 1[j in S_t]",
    "trans": "[E, E']  sum_t 1[i in S_t^l] 1[j in S_t^l'], l' the next MoE layer",
    "trans_intensity": "[E, E']  sum_t a_t^l(i) p_t^l'(j)",
    "trans_intensity_by_cluster": "[K, E, E']  the same, per calibration cluster",
    "trans_routed": "[E, E']  sum_t a_t^l(i) 1[j in S_t^l'] p_t^l'(j)  (routed pairs of the same token)",
    "trans_routed_by_cluster": "[K, E, E']  the same, per calibration cluster",
    "pooled_inputs": "[N, H]  per sequence, the mean over its tokens of the layer's MoE input x_t "
                     "(rows of unseen sequences are 0, so partials add)",
    "probe_cos_sum": "[E, E]  sum over probe tokens of cos(f_i(x), f_j(x))",
    "mean_output_sum": "[E, H]  sum over probe tokens of f_e(x)",
    "probe_inputs": "[P, H]  the layer's inputs on the sampled probe tokens (not a sum; concatenated)",
}


@dataclass
class LayerStats:
    """Statistics of one MoE layer (all sums over calibration tokens)."""

    layer: int  # decoder layer index
    num_experts: int  # E
    top_k: int
    tokens: float = 0.0  # tokens seen
    probe_tokens: float = 0.0  # probe tokens on which every expert ran
    # [E]
    counts: np.ndarray = None  # top-k selections
    prob_mass: np.ndarray = None  # sum_t p_t(e)
    gate_mass: np.ndarray = None  # sum_{t: e in S_t} g_t(e)
    reap_sum: np.ndarray = None  # sum_{t: e in S_t} g_t(e) ||f_e(x_t)||
    act_norm_sum: np.ndarray = None  # sum_{t: e in S_t} ||f_e(x_t)||
    loo_err_sum: np.ndarray = None  # probe: sum ||y_t - y_t^{-e}||^2, y^{-e} re-routed without e
    # matrices
    coact: np.ndarray = None
    trans: np.ndarray | None = None  # None for the last MoE layer
    trans_intensity: np.ndarray | None = None
    trans_intensity_by_cluster: np.ndarray | None = None
    trans_routed: np.ndarray | None = None  # [E, E'] over the routed experts of both layers
    trans_routed_by_cluster: np.ndarray | None = None  # [K, E, E']
    pooled_inputs: np.ndarray | None = None  # [N, H] per-sequence mean MoE input
    probe_cos_sum: np.ndarray = None
    mean_output_sum: np.ndarray = None
    probe_inputs: np.ndarray | None = None

    # ---- derived means (what the methods read) -------------------------------------------------
    @property
    def usage(self) -> np.ndarray:
        """u(e) = count(e) / sum counts."""
        return self.counts / max(self.counts.sum(), 1e-12)

    @property
    def reap(self) -> np.ndarray:
        """REAP saliency: mean over routed tokens of g_t(e) ||f_e(x_t)|| (0 for never-routed experts)."""
        return np.divide(self.reap_sum, self.counts, out=np.zeros_like(self.reap_sum), where=self.counts > 0)

    @property
    def act_norm(self) -> np.ndarray:
        return np.divide(self.act_norm_sum, self.counts, out=np.zeros_like(self.act_norm_sum),
                         where=self.counts > 0)

    @property
    def funcsim(self) -> np.ndarray:
        """Mean cosine similarity of expert outputs on probe tokens [E, E]."""
        return self.probe_cos_sum / max(self.probe_tokens, 1.0)

    @property
    def mean_output(self) -> np.ndarray:
        return self.mean_output_sum / max(self.probe_tokens, 1.0)  # [E, H]

    @property
    def loo_err(self) -> np.ndarray:
        return self.loo_err_sum / max(self.probe_tokens, 1.0)

    @property
    def entropy(self) -> float:
        """Normalised usage entropy H = -sum u log u / log E."""
        u = self.usage
        nz = u[u > 0]
        return float(-(nz * np.log(nz)).sum() / np.log(self.num_experts)) if self.num_experts > 1 else 0.0

    def merge(self, other: "LayerStats") -> "LayerStats":
        """Sum of two partial statistics of the same layer (probe inputs concatenate)."""
        assert (self.layer, self.num_experts) == (other.layer, other.num_experts), "merging different layers"
        out = LayerStats(self.layer, self.num_experts, self.top_k)
        for f in fields(self):
            if f.name in ("layer", "num_experts", "top_k"):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a is None or b is None:
                setattr(out, f.name, a if b is None else b)
            elif f.name == "probe_inputs":
                setattr(out, f.name, np.concatenate([a, b]))
            else:
                setattr(out, f.name, a + b)
        return out


@dataclass
class CalibStats:
    """All MoE layers' statistics plus per-sequence records and the manifest (a dict is validated into one)."""

    manifest: "StatsManifest"
    layers: dict[int, LayerStats]  # decoder layer index -> stats
    num_clusters: int = 0  # K calibration clusters (Pathfinder)
    seq_cluster: np.ndarray | None = None  # [N] cluster id per calibration sequence
    seq_pooled: np.ndarray | None = None  # [N, H] pooled hidden states
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from raymoe.store.manifest import StatsManifest  # the manifest module imports SCHEMA_VERSION from here

        if not isinstance(self.manifest, StatsManifest):
            self.manifest = StatsManifest.model_validate(self.manifest)

    @property
    def moe_layers(self) -> list[int]:
        return sorted(self.layers)

    def experts(self) -> dict[int, int]:
        return {i: s.num_experts for i, s in self.layers.items()}
