"""Shared fixtures for calibration tests: tiny models of every family and an independent reference.

`hf_reference` recomputes every statistic directly from the stock transformers
model (`AutoModelForCausalLM`, whole model in one process), hooks on the MoE
blocks and routers, and `ExpertWeights.outputs` (every expert on every token):
it shares no code with raymoe.calib.
"""

from __future__ import annotations

import os

for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from raymoe.testing.tiny import build_tiny_model  # noqa: E402

# the tiny models' routers are random N(0, 0.5): no routing near-ties that float32 rounding could flip
TINY = dict(layers=4, experts=8, top_k=2)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """family -> path of a tiny random checkpoint (built once per session)."""
    cache: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in cache:
            cache[family] = str(build_tiny_model(family, tmp_path_factory.mktemp(family) / "model", **TINY))
        return cache[family]

    return get


def hf_reference(model_path: str, ids: np.ndarray, seq_cluster: np.ndarray, num_clusters: int,
                 probe: dict[int, list[tuple[int, int]]]) -> dict:
    """Statistics recomputed from the whole transformers model.

    probe: layer -> [(seq, pos)] probe tokens (the same for every layer). Returns {layer: {field: array}},
    plus "pooled" [N, H] and "mean_embed" [N, H].
    """
    from transformers import AutoModelForCausalLM

    from raymoe.moe import ExpertWeights, MoeModelSpec
    from raymoe.moe.routing import RoutingRule, route

    spec = MoeModelSpec.from_pretrained(model_path)
    rule = RoutingRule.for_spec(spec)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    weights = ExpertWeights(model_path, spec)
    seen: dict[int, dict] = {}
    hooks = []
    for l in spec.moe_layers:
        mlp = model.model.layers[l].mlp
        hooks.append(mlp.register_forward_pre_hook(
            lambda m, a, l=l: seen.setdefault(l, {}).update(x=a[0].reshape(-1, a[0].shape[-1]).detach().clone())))
        hooks.append(mlp.gate.register_forward_hook(
            lambda m, a, o, l=l: seen.setdefault(l, {}).update(logits=o[0].float(), w=o[1].float(), idx=o[2])))
    N, L = ids.shape
    with torch.no_grad():
        out = model.model(torch.from_numpy(ids))
    for h in hooks:
        h.remove()
    tok_cluster = np.repeat(seq_cluster, L)  # [T]
    res: dict = {"pooled": out.last_hidden_state.double().mean(1).numpy(),
                 "mean_embed": model.model.embed_tokens.weight.detach()[torch.from_numpy(ids)].double().mean(1).numpy()}
    prev = None
    for l in spec.moe_layers:
        E = spec.experts[l]
        x, logits, w, idx = seen[l]["x"], seen[l]["logits"], seen[l]["w"], seen[l]["idx"].long()
        outs = weights.outputs(l, x).double()  # [T, E, H]
        T = x.shape[0]
        probs = (torch.softmax(logits, -1) if spec.arch.scoring == "softmax" else torch.sigmoid(logits)).double()
        routed = np.zeros((T, E))
        strength = np.zeros((T, E))
        gate = np.zeros((T, E))
        norms = outs.norm(dim=-1).numpy()  # [T, E]
        for t in range(T):
            for j in range(idx.shape[1]):
                e = int(idx[t, j])
                routed[t, e] = 1.0
                strength[t, e] = norms[t, e]
                gate[t, e] = float(w[t, j])
        r = {"counts": routed.sum(0), "prob_mass": probs.numpy().sum(0), "gate_mass": gate.sum(0),
             "reap_sum": (gate * strength).sum(0), "act_norm_sum": strength.sum(0), "coact": routed.T @ routed,
             "tokens": float(T)}
        rows = np.array([s * L + p for s, p in probe[l]], dtype=np.int64)
        po = outs[rows]  # [P, E, H]
        unit = po / po.norm(dim=-1, keepdim=True)
        r["probe_cos_sum"] = torch.einsum("peh,pfh->ef", unit, unit).numpy()
        r["mean_output_sum"] = po.sum(0).numpy()
        r["probe_inputs"] = x[rows].numpy()
        bias = None
        if spec.arch.correction_bias:
            bias = getattr(model.model.layers[l].mlp.gate, spec.arch.correction_bias).detach()
        _, w0, i0 = route(rule, logits[rows], bias)
        y = torch.stack([(w0[p, :, None].double() * po[p, i0[p]]).sum(0) for p in range(len(rows))])
        loo = np.zeros(E)
        for e in range(E):
            mask = torch.ones(E, dtype=torch.bool)
            mask[e] = False
            _, we, ie = route(rule, logits[rows], bias, mask)
            ye = torch.stack([(we[p, :, None].double() * po[p, ie[p]]).sum(0) for p in range(len(rows))])
            loo[e] = float(((y - ye) ** 2).sum())
        r["loo_err_sum"] = loo
        r["pooled_inputs"] = x.view(N, L, -1).double().mean(1).numpy()  # [N, H]
        r["probe_tokens"] = float(len(rows))
        if prev is not None:
            pl, p_routed, p_strength = prev
            res[pl]["trans"] = p_routed.T @ routed
            res[pl]["trans_intensity"] = p_strength.T @ probs.numpy()
            routed_p = routed * probs.numpy()  # p_t(j) on the routed experts only
            res[pl]["trans_routed"] = p_strength.T @ routed_p
            by = np.zeros((2, num_clusters, p_routed.shape[1], E))
            for c in range(num_clusters):
                sel = tok_cluster == c
                by[0, c] = p_strength[sel].T @ probs.numpy()[sel]
                by[1, c] = p_strength[sel].T @ routed_p[sel]
            res[pl]["trans_intensity_by_cluster"], res[pl]["trans_routed_by_cluster"] = by
        res[l] = r
        prev = (l, routed, strength)
    return res


FLOAT_FIELDS = ("prob_mass", "gate_mass", "reap_sum", "act_norm_sum", "loo_err_sum", "trans_intensity",
                "trans_intensity_by_cluster", "trans_routed", "trans_routed_by_cluster", "probe_cos_sum",
                "mean_output_sum", "probe_inputs", "pooled_inputs")
COUNT_FIELDS = ("counts", "coact", "trans")


def assert_layer_close(a, b, rtol: float, atol_rel: float, where: str = "") -> None:
    """Compare two LayerStats-like objects field by field (b may be a dict)."""
    get = (lambda o, n: o.get(n)) if isinstance(b, dict) else getattr
    for name in COUNT_FIELDS + FLOAT_FIELDS + ("tokens", "probe_tokens"):
        x, y = getattr(a, name), get(b, name)
        if x is None or y is None:
            assert x is None and y is None, f"{where} {name}: one side missing"
            continue
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        assert x.shape == y.shape, f"{where} {name}: shapes {x.shape} != {y.shape}"
        if name in COUNT_FIELDS:
            np.testing.assert_array_equal(x, y, err_msg=f"{where} {name}")
        else:
            scale = max(1.0, float(np.abs(y).max())) if y.size else 1.0
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol_rel * scale, err_msg=f"{where} {name}")
