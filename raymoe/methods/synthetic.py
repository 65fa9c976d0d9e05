"""Synthetic calibration statistics of the store schema, for tests and the planning benchmark.

`simulate_stats(weights, ...)` runs a miniature calibration: synthetic hidden
states x_t^l stream through the routers and experts of a weights view (a real
checkpoint's `ExpertWeights`, or `SyntheticWeights` at DeepSeek-V3 / Qwen3-235B
scale) and every `LayerStats` sum is accumulated exactly as defined in
raymoe/store/calib_stats.py. Hidden states are structured like real ones:
- sequences belong to K calibration clusters (x_t^0 = mu_c + 0.7 n_t), so
  routing and transitions differ per cluster;
- each token drifts slowly through the layers (x^l = rho x^{l-1} + sqrt(1-rho^2) n),
  so consecutive MoE layers' choices are correlated (transitions);
- a per-layer "popular" direction d_l of layer-dependent strength gamma_l skews
  usage differently per layer (varied entropy).
Every field of the store schema (SCHEMA_VERSION) is produced, with the calibration's
definitions: routed transition intensities, per-sequence pooled MoE inputs, ...
`SyntheticWeights` adds functional families of experts (shared low-rank factors),
so co-activation and output similarity are correlated.
"""

from __future__ import annotations

import datetime as _dt
import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from raymoe.moe.model_spec import MoeModelSpec
from raymoe.store.calib_stats import SCHEMA_VERSION, CalibStats, LayerStats

if TYPE_CHECKING:
    import torch

    from raymoe.moe.routing import RoutingRule

__all__ = ["SCALES", "scale_config", "SyntheticWeights", "simulate_stats", "synthetic_stats"]

#: config dicts at the benchmark's scales (only the keys MoeModelSpec and routing read)
SCALES: dict[str, dict[str, Any]] = {
    "deepseek_v3": dict(model_type="deepseek_v3", num_hidden_layers=61, first_k_dense_replace=3,
                        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
                        norm_topk_prob=True, routed_scaling_factor=2.5, hidden_size=7168,
                        moe_intermediate_size=2048, hidden_act="silu"),
    "qwen3_235b": dict(model_type="qwen3_moe", num_hidden_layers=94, num_experts=128, num_experts_per_tok=8,
                       norm_topk_prob=True, hidden_size=4096, moe_intermediate_size=1536, decoder_sparse_step=1,
                       mlp_only_layers=[], hidden_act="silu"),
}


def scale_config(name: str, hidden: int | None = None) -> dict[str, Any]:
    """A benchmark-scale config; `hidden` overrides hidden_size (the probe width used here)."""
    cfg = dict(SCALES[name])
    if hidden is not None:
        cfg["hidden_size"] = int(hidden)
    return cfg


class SyntheticWeights:
    """A seeded stand-in for ExpertWeights: f_e(x) = m_e B_e silu(A_e x), A_e [r, H], B_e [H, r].

    Experts form functional families (A_e = A_fam + 0.5 noise, B_e likewise); router
    rows are family direction + noise + a popularity component along d_l.
    """

    def __init__(self, config: dict[str, Any], *, rank: int = 8, families: int | None = None, seed: int = 0):
        self.spec = MoeModelSpec.from_config(config)
        self.rank, self.seed = rank, seed
        self.families = families
        self.hidden = self.spec.hidden_size

    def popular_direction(self, layer: int) -> np.ndarray:
        d = np.random.default_rng([self.seed, layer, 7]).standard_normal(self.hidden)
        return d / np.linalg.norm(d)

    @functools.lru_cache(maxsize=2)
    def _layer(self, layer: int) -> dict[str, torch.Tensor]:
        import torch

        E, H, r = self.spec.experts[layer], self.hidden, self.rank
        nf = self.families or max(2, E // 8)
        g = np.random.default_rng([self.seed, layer])
        fam = np.sort(g.integers(0, nf, E))  # [E] family of each expert
        fa = g.standard_normal((nf, r, H)) / np.sqrt(H)
        fb = g.standard_normal((nf, H, r)) / np.sqrt(r)
        A = fa[fam] + 0.5 * g.standard_normal((E, r, H)) / np.sqrt(H)  # [E, r, H]
        B = fb[fam] + 0.5 * g.standard_normal((E, H, r)) / np.sqrt(r)  # [E, H, r]
        scale = np.exp(0.3 * g.standard_normal(E))  # [E]
        fdir = g.standard_normal((nf, H))
        pop = g.standard_normal(E) * 0.8  # [E] popularity along d_l
        router = (fdir[fam] + 0.7 * g.standard_normal((E, H))) / np.sqrt(H) + pop[:, None] * self.popular_direction(
            layer)[None, :] / np.sqrt(H)  # [E, H]
        bias = 0.01 * g.standard_normal(E)
        f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        return {"A": f32(A), "B": f32(B * scale[:, None, None]), "router": f32(router), "bias": f32(bias),
                "family": torch.as_tensor(fam)}

    def router(self, layer: int) -> torch.Tensor:
        return self._layer(layer)["router"]  # [E, H]

    def router_bias(self, layer: int) -> torch.Tensor | None:
        return self._layer(layer)["bias"] if self.spec.arch.correction_bias else None

    def family(self, layer: int) -> np.ndarray:
        return self._layer(layer)["family"].numpy()

    def outputs(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        w = self._layer(layer)
        h = F.silu(torch.einsum("erh,th->ter", w["A"], x.float()))  # [T, E, r]
        return torch.einsum("ehr,ter->teh", w["B"], h)  # [T, E, H]

    def routed_norms(self, layer: int, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """||f_{idx[t, j]}(x_t)|| -> [T, k], via ||B h||^2 = h^T (B^T B) h (no [T, k, H] tensor)."""
        import torch
        import torch.nn.functional as F

        w = self._layer(layer)
        E, r, H = w["A"].shape
        h = F.silu(x.float() @ w["A"].reshape(E * r, H).T).view(len(x), E, r)  # [T, E, r]
        h = h.gather(1, idx[:, :, None].expand(-1, -1, r))  # [T, k, r]
        btb = torch.einsum("ehr,ehs->ers", w["B"], w["B"])  # [E, r, r]
        return torch.einsum("tkr,tkrs,tks->tk", h, btb[idx], h).clamp_min(0).sqrt()  # [T, k]


def _routed_norms(weights, layer: int, x: torch.Tensor, idx: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """||f_e(x_t)|| of the routed experts -> [T, k]."""
    import torch

    fn = getattr(weights, "routed_norms", None)
    if fn is not None:
        return fn(layer, x, idx)
    parts = []
    for s in range(0, len(x), chunk):
        outs = weights.outputs(layer, x[s:s + chunk])  # [t, E, H]
        ids = idx[s:s + chunk]
        parts.append(outs.gather(1, ids[:, :, None].expand(-1, -1, outs.shape[-1])).norm(dim=-1))  # [t, k]
    return torch.cat(parts)  # [T, k]


def _dense(w: torch.Tensor, idx: torch.Tensor, E: int) -> torch.Tensor:
    """Gate weights [..., k] at indices [..., k] -> dense [..., E]."""
    import torch

    return torch.zeros(*idx.shape[:-1], E, dtype=torch.float64).scatter_(-1, idx, w.double())


def _loo_errors(rule: RoutingRule, logits: torch.Tensor, bias, gram: torch.Tensor) -> np.ndarray:
    """sum_t ||y_t - y_t^{-e}||^2 for every e, y^{-e} routed again without e -> [E].

    All E masked routings run as one batch (the masked expert's logit, and for
    sigmoid routers its choice bias, set to -inf); errors use the Gram matrices
    gram [P, E, E] of the expert outputs: ||sum_i d_i f_i||^2 = d^T G d.
    """
    import torch

    from raymoe.moe.routing import route

    P, E = logits.shape
    _, w, idx = route(rule, logits, bias)
    full = _dense(w, idx, E)  # [P, E]
    eye = torch.eye(E, dtype=torch.bool)[:, None, :].expand(E, P, E)  # [E, P, E]
    lg = logits[None].expand(E, P, E).masked_fill(eye, float("-inf")).reshape(E * P, E)
    b = torch.zeros(E) if bias is None else bias.float()
    bb = b[None, None].expand(E, P, E).masked_fill(eye, float("-inf")).reshape(E * P, E)
    _, w2, i2 = route(rule, lg, bb if rule.scoring == "sigmoid" else None)
    d = (full[None] - _dense(w2, i2, E).view(E, P, E)).float()  # [E, P, E]
    gd = torch.bmm(d.transpose(0, 1), gram.float())  # [P, E, E]: row e is G_t d_{e,t}
    return (gd.transpose(0, 1) * d).sum((1, 2)).double().clamp_min(0).numpy()  # [E]


def _bias(weights, layer: int):
    from raymoe.methods.common import router_bias

    return router_bias(weights, layer)


def simulate_stats(weights, *, sequences: int = 32, seq_len: int = 32, clusters: int = 4, probe_tokens: int = 32,
                   seed: int = 0, model_path: str | None = None, keep_inputs: bool = False, traced_sequences: int = 2,
                   gamma: tuple[float, float] = (0.2, 1.5)) -> CalibStats:
    """Accumulate every LayerStats sum over synthetic hidden states routed through `weights`.

    With keep_inputs, `stats.extra["inputs"][layer]` holds the hidden states x^l [T, H]
    and `stats.extra["token_cluster"]` the cluster of each token (for tests).
    """
    import torch

    from raymoe.moe.routing import RoutingRule, route

    spec: MoeModelSpec = weights.spec
    rule = RoutingRule.for_spec(spec)
    H, T, K = spec.hidden_size, sequences * seq_len, max(clusters, 1)
    g = np.random.default_rng(seed)
    seq_cluster = g.integers(0, K, sequences)  # [N]
    tok_cluster = np.repeat(seq_cluster, seq_len)  # [T]
    mu = g.standard_normal((K, H))  # [K, H]
    x0 = mu[tok_cluster] + 0.7 * g.standard_normal((T, H))  # [T, H]
    layers = spec.moe_layers
    gammas = np.linspace(gamma[0], gamma[1], len(layers))[g.permutation(len(layers))]
    probe = np.sort(g.choice(T, min(probe_tokens, T), replace=False))
    out: dict[int, LayerStats] = {}
    inputs: dict[int, np.ndarray] = {}
    traces: list[tuple] = []
    prev_sel = prev_int = prev_l = None
    xl = x0
    rho = 0.9
    for li, l in enumerate(layers):
        E, k = spec.experts[l], spec.top_k
        xl = rho * xl + np.sqrt(1 - rho ** 2) * g.standard_normal((T, H))
        d = getattr(weights, "popular_direction", None)
        d = d(l) if d else np.random.default_rng([seed, l, 7]).standard_normal(H)
        d = d / np.linalg.norm(d)  # [H] unit
        x = torch.as_tensor(xl + gammas[li] * np.sqrt(H) * d[None, :], dtype=torch.float32)  # [T, H]
        if keep_inputs:
            inputs[l] = x.numpy().copy()
        with torch.no_grad():
            logits = x @ weights.router(l).float().T  # [T, E]
            bias = _bias(weights, l)
            probs, w, idx = route(rule, logits, bias)  # [T, E], [T, k], [T, k]
            norms = _routed_norms(weights, l, x, idx)  # [T, k]
        sel = torch.zeros(T, E, dtype=torch.float64).scatter_(1, idx, 1.0).numpy()  # [T, E]
        gate = torch.zeros(T, E, dtype=torch.float64).scatter_(1, idx, w.double()).numpy()  # [T, E]
        act = torch.zeros(T, E, dtype=torch.float64).scatter_(1, idx, norms.double()).numpy()  # [T, E]
        s = LayerStats(l, E, k, tokens=float(T))
        s.counts, s.prob_mass, s.gate_mass = sel.sum(0), probs.double().numpy().sum(0), gate.sum(0)
        s.act_norm_sum, s.reap_sum = act.sum(0), (gate * act).sum(0)
        s.coact = sel.T @ sel  # [E, E]
        # probe tokens: every expert's output, functional similarity, leave-one-out error
        xp = x[probe]  # [P, H]
        with torch.no_grad():
            outs = weights.outputs(l, xp).float()  # [P, E, H]
            gram = torch.bmm(outs, outs.transpose(1, 2)).double()  # [P, E, E]
            nrm = torch.diagonal(gram, dim1=1, dim2=2).clamp_min(1e-24).sqrt()  # [P, E]
            s.probe_cos_sum = (gram / (nrm[:, :, None] * nrm[:, None, :])).sum(0).numpy()  # [E, E]
            s.mean_output_sum = outs.sum(0).double().numpy()  # [E, H]
            loo = _loo_errors(rule, logits[probe], bias, gram)  # [E]
        s.loo_err_sum, s.probe_tokens, s.probe_inputs = loo, float(len(probe)), xp.numpy().copy()
        s.pooled_inputs = x.view(sequences, seq_len, H).mean(1).numpy().copy()  # [N, H]
        if prev_sel is not None:  # transitions from the previous MoE layer into this one
            p = probs.double().numpy()
            pr = sel * p  # p_t(j) on the routed experts [T, E']
            out[prev_l].trans = prev_sel.T @ sel  # [E, E']
            out[prev_l].trans_intensity = prev_int.T @ p  # [E, E']
            out[prev_l].trans_intensity_by_cluster = np.stack(
                [prev_int[tok_cluster == c].T @ p[tok_cluster == c] for c in range(K)])  # [K, E, E']
            out[prev_l].trans_routed = prev_int.T @ pr  # [E, E']
            out[prev_l].trans_routed_by_cluster = np.stack(
                [prev_int[tok_cluster == c].T @ pr[tok_cluster == c] for c in range(K)])  # [K, E, E']
        out[l] = s
        prev_sel, prev_int, prev_l = sel, act, l
        nt = min(traced_sequences * seq_len, T)  # sampled routing traces of the first sequences
        traces.append((np.arange(nt) // seq_len, np.arange(nt) % seq_len, np.full(nt, l), idx[:nt].numpy(),
                       w[:nt].float().numpy()))
    manifest = {
        "model": {"path": model_path or "", "config": dict(spec.config)},  # facts derived from the config
        "data": {"synthetic": True, "sequences": sequences, "seq_len": seq_len, "seed": seed},
        "calibration": {"clusters": K, "probe_tokens": int(len(probe)), "stats_schema": SCHEMA_VERSION},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    extra = {"traces": {k: np.concatenate([t[i] for t in traces]) for i, k in
                        enumerate(("seq", "pos", "layer", "experts", "weights"))}}
    if keep_inputs:
        extra |= {"inputs": inputs, "token_cluster": tok_cluster}
    pooled = np.stack([x0[i * seq_len:(i + 1) * seq_len].mean(0) for i in range(sequences)])  # [N, H]
    return CalibStats(manifest=manifest, layers=out, num_clusters=K, seq_cluster=seq_cluster,
                      seq_pooled=pooled.astype(np.float32), extra=extra)


def synthetic_stats(config: dict[str, Any], *, seed: int = 0, rank: int = 8, **kwargs) -> CalibStats:
    """Statistics of a synthetic model with `config` (see SCALES), simulated with SyntheticWeights."""
    return simulate_stats(SyntheticWeights(config, rank=rank, seed=seed), seed=seed, **kwargs)
