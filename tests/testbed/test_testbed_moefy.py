"""The reference MoE forward against direct per-expert recomputation, and fit_layer's invariants."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raymoe.testbed.config import DENSE_MLP_WIDTH, TestbedConfig
from raymoe.testbed.moefy import MoeLayer, fit_layer


def _mlp(h=24, i=DENSE_MLP_WIDTH, seed=0):
    torch.manual_seed(seed)
    mlp = torch.nn.Module()
    mlp.gate_proj = torch.nn.Linear(h, i, bias=False)
    mlp.up_proj = torch.nn.Linear(h, i, bias=False)
    mlp.down_proj = torch.nn.Linear(i, h, bias=False)
    return mlp


def _dense(mlp, x):
    return mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))


def test_moe_forward_matches_per_expert_loop():
    mlp = _mlp(i=64)
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(64, generator=g).numpy()
    shared, groups = np.sort(perm[:16]), [np.sort(perm[16 + 8 * j:24 + 8 * j]) for j in range(6)]
    down = torch.randn(24, 64, generator=g)
    layer = MoeLayer(shared, groups, torch.randn(6, 24, generator=g), down, top_k=2)
    x = torch.randn(40, 24, generator=g)
    with torch.no_grad():
        y = layer.forward(mlp, x)
        w_g, w_u = mlp.gate_proj.weight, mlp.up_proj.weight
        for t in range(x.shape[0]):
            def part(ids):
                ids = torch.as_tensor(ids)
                return down[:, ids] @ (F.silu(w_g[ids] @ x[t]) * (w_u[ids] @ x[t]))
            p = torch.softmax(layer.router @ x[t], 0)
            top = torch.argsort(p, descending=True)[:2]
            ref = part(shared) + sum(p[e] / p[top].sum() * part(groups[e]) for e in top.tolist())
            torch.testing.assert_close(y[t], ref, rtol=1e-4, atol=1e-5)


def test_all_experts_equal_gates_is_lossless():
    mlp = _mlp(i=64)
    groups = [np.arange(16 * j, 16 * j + 16) for j in range(4)]
    layer = MoeLayer(np.array([], dtype=int), groups, torch.zeros(4, 24), mlp.down_proj.weight.detach() * 4, top_k=4)
    x = torch.randn(10, 24)
    with torch.no_grad():
        torch.testing.assert_close(layer.forward(mlp, x), _dense(mlp, x), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def fitted():
    """fit_layer on a random MLP of SmolLM2's width, for each down-projection fit and K."""
    mlp = _mlp()
    x = torch.randn(1024, 24, generator=torch.Generator().manual_seed(0)) * 2
    out = {}
    for down in ("k", "scale", "lstsq"):
        for k in (2, 8):
            cfg = TestbedConfig.parse(experts=16, top_k=k, calib_tokens=1024, coact_tokens=512, router_steps=30,
                                      down=down)
            with torch.no_grad():
                out[down, k] = fit_layer(mlp, x, cfg, np.random.default_rng(0))
    return mlp, x, out


def test_fit_layer_structure_and_routing(fitted):
    mlp, x, layers = fitted
    for (down, k), layer in layers.items():
        assert layer.router.shape == (16, 24) and layer.down.shape == (24, DENSE_MLP_WIDTH)
        assert len(layer.shared) == 512 and all(len(g) == 64 for g in layer.groups)
        assert sum(layer.load) == len(x) * k  # every token routed to exactly k experts
        with torch.no_grad():
            dense = _dense(mlp, x)
            err = float((layer.forward(mlp, x) - dense).norm() / dense.norm())
        assert abs(err - layer.metrics["rel_err"]) < 1e-4  # the recorded diagnostic is the real error


def test_down_fits_order_and_k(fitted):
    _, _, layers = fitted
    err = {key: layer.metrics["rel_err"] for key, layer in layers.items()}
    for k in (2, 8):  # least squares can only improve on its special cases (up to the ridge)
        assert err["lstsq", k] < err["scale", k] <= err["k", k] + 1e-6
    assert err["scale", 8] < err["scale", 2]  # more experts per token, less error
    # "k" scales routed columns by K and keeps the shared ones
    layer = layers["k", 2]
    mlp = fitted[0]
    g0 = torch.as_tensor(layer.groups[0])
    torch.testing.assert_close(layer.down[:, g0], 2 * mlp.down_proj.weight[:, g0].detach())
    s = torch.as_tensor(layer.shared)
    torch.testing.assert_close(layer.down[:, s], mlp.down_proj.weight[:, s].detach())
