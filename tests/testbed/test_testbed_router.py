"""Router fit, top-k routing and expert scales, checked against direct recomputation."""

import torch

from raymoe.testbed.router import fit_router, route, scale_terms, solve_scales


def test_fit_router_recovers_a_softmax_model_at_temperature_one():
    g = torch.Generator().manual_seed(0)
    t, h, e = 4096, 12, 6
    x = torch.randn(t, h, generator=g) * 3.0
    w_true = torch.randn(e, h, generator=g) * 0.4
    norms = torch.softmax(x @ w_true.T, dim=1) * 7.0  # norm shares exactly softmax(W x), any overall scale
    w = fit_router(x, norms, temperature=1.0, steps=200, weight_decay=0.0)
    p_fit = torch.softmax(x @ w.T, dim=1)
    p_true = torch.softmax(x @ w_true.T, dim=1)
    assert (p_fit - p_true).abs().max() < 0.02
    # the probabilities stay spread (not a collapsed one-hot or flat router)
    assert 0.3 < p_fit.max(1).values.mean() < 0.95


def test_temperature_sharpens_the_target():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 8, generator=g)
    norms = torch.softmax(x @ torch.randn(4, 8, generator=g).T, dim=1)
    soft = torch.softmax(x @ fit_router(x, norms, temperature=1.0).T, 1).max(1).values.mean()
    sharp = torch.softmax(x @ fit_router(x, norms, temperature=0.5).T, 1).max(1).values.mean()
    assert sharp > soft + 0.05


def test_route_renormalises_the_top_k_softmax():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    router = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    gates, idx = route(x, router, 2)
    logits = x @ router.T
    for t in range(2):
        p = torch.softmax(logits[t], 0)
        top = torch.argsort(p, descending=True)[:2]
        assert idx[t].tolist() == top.tolist()
        torch.testing.assert_close(gates[t], p[top] / p[top].sum())


def test_solve_scales_recovers_planted_scales():
    g = torch.Generator().manual_seed(2)
    t, e, h, k = 512, 4, 10, 2
    outs = torch.randn(t, e, h, generator=g)  # f_e(x_t)
    logits = torch.randn(t, e, generator=g)
    gates, idx = torch.softmax(logits, 1).topk(k, dim=1)
    gates = gates / gates.sum(1, keepdim=True)
    a, b = scale_terms(outs, gates, idx)
    # direct recomputation of the normal equations
    z = torch.zeros(t, e, h)
    for tt in range(t):
        for j in range(k):
            z[tt, idx[tt, j]] = gates[tt, j] * outs[tt, idx[tt, j]]
    y = outs.sum(1)
    a_ref = torch.einsum("teh,tfh->ef", z, z)
    b_ref = torch.einsum("teh,th->e", z, y)
    torch.testing.assert_close(a, a_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b, b_ref, rtol=1e-4, atol=1e-3)
    c = solve_scales(a, b, k, ridge=0.0)
    c_ls = torch.linalg.lstsq(z.permute(0, 2, 1).reshape(-1, e).double(), y.reshape(-1).double()).solution.float()
    torch.testing.assert_close(c, c_ls, rtol=1e-3, atol=1e-4)
