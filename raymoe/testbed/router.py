"""Router fitting and expert output scales for one MoEfied layer.

Router (a bias-free Linear H -> E, as in Mixtral and Qwen2-MoE): logits z_t = W x_t,
fitted by minimising the cross-entropy between softmax(z_t) and the target
q_t(e) = n_te^(1/tau) / sum_j n_tj^(1/tau), where n_te = ||f_e(x_t)|| is group e's
output norm in the dense MLP. With tau = 1 the router's probabilities are the
groups' shares of the output norm, so gate weights keep their meaning (DESIGN:
a router tuned for perplexity alone collapses to equal gates). The problem is
convex (multinomial logistic regression with soft labels); L-BFGS solves it.

Down projection: the MoE layer computes sum_{e in topk} g_te c_e f_e(x_t) with
top-k gates renormalised to sum 1. `k` sets c_e = K (gates about 1/K each);
`scale` solves least squares for c against the dense routed output
y_t = sum_e f_e(x_t): (A + lam I) c = b + lam K, A = sum_t Z_t Z_t^T,
b = sum_t Z_t y_t, Z_te = g_te f_e(x_t) (zero when e is not routed).
`lstsq` refits the whole down projection D [H, I] by ridge regression of the
dense MLP output on the gated activations u_t = a_t * w_t (w_t: 1 on shared
neurons, g_te on routed expert e's, 0 on the rest), shrunk towards the K-scaled
W_d (D0): D^T = (U^T U + lam I)^-1 (U^T Y + lam D0^T), lam = ridge * mean diag(U^T U).
It absorbs the gates' variation and part of the dropped experts' output (the
router and its temperature are left as fitted).
"""

from __future__ import annotations

import torch

__all__ = ["fit_router", "route", "scale_terms", "solve_scales", "lstsq_down"]


def fit_router(x: torch.Tensor, norms: torch.Tensor, *, temperature: float = 1.0, steps: int = 300,
               weight_decay: float = 1e-4) -> torch.Tensor:
    """Router weight [E, H] fitted so softmax(W x) matches the norm shares.  x [T, H], norms [T, E]."""
    e, h = norms.shape[1], x.shape[1]
    logn = norms.clamp_min(1e-12).log() / temperature  # [T, E]
    q = torch.softmax(logn, dim=1)  # [T, E] target shares
    w = torch.zeros(e, h, requires_grad=True)
    if steps == 0:
        return w.detach()
    scale = x.pow(2).mean().sqrt().clamp_min(1e-6)
    xs = x / scale  # well-conditioned inputs; the scale is folded back into W
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(xs @ w.T, dim=1)  # [T, E]
        loss = -(q * logp).sum(1).mean() + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (w.detach() / scale).contiguous()


def route(x: torch.Tensor, router: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing with renormalised softmax gates: (gates [T, K], experts [T, K])."""
    probs = torch.softmax(x @ router.T, dim=1)  # [T, E]
    top, idx = probs.topk(top_k, dim=1)  # [T, K]
    return top / top.sum(1, keepdim=True), idx


def scale_terms(outs: torch.Tensor, gates: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal-equation terms (A [E, E], b [E]) for one chunk; see `solve_scales`.  outs [T, E, H]."""
    t, e, _ = outs.shape
    g = torch.zeros(t, e).scatter_(1, idx, gates)  # [T, E] gate of each routed expert, 0 elsewhere
    z = outs * g[:, :, None]  # [T, E, H]
    y = outs.sum(1)  # [T, H] dense routed output
    zf = z.transpose(0, 1).reshape(e, -1)  # [E, T*H]
    return zf @ zf.T, zf @ y.reshape(-1)


def solve_scales(a: torch.Tensor, b: torch.Tensor, top_k: int, ridge: float = 1e-3) -> torch.Tensor:
    """c = (A + lam I)^-1 (b + lam K), lam = ridge * trace(A) / E (shrinks towards c_e = K)."""
    e = a.shape[0]
    lam = ridge * torch.trace(a) / e
    c = torch.linalg.solve(a.double() + lam * torch.eye(e, dtype=torch.float64), (b + lam * top_k).double())
    return c.float()


def lstsq_down(u: torch.Tensor, y: torch.Tensor, d0: torch.Tensor, *, ridge: float = 1e-2,
               chunk: int = 4096) -> torch.Tensor:
    """Ridge-refit down projection D [H, I].  u [T, I] gated activations, y [T, H] target, d0 [H, I] prior."""
    i = u.shape[1]
    g = torch.zeros(i, i, dtype=torch.float64)
    r = torch.zeros(i, y.shape[1], dtype=torch.float64)
    for s in range(0, u.shape[0], chunk):
        uc = u[s:s + chunk]  # [C, I]; float32 products per chunk, float64 sums
        g += (uc.T @ uc).double()
        r += (uc.T @ y[s:s + chunk]).double()
    lam = ridge * g.diagonal().mean()
    sol = torch.linalg.solve(g + lam * torch.eye(i, dtype=torch.float64), r + lam * d0.T.double())  # [I, H]
    return sol.T.float().contiguous()
