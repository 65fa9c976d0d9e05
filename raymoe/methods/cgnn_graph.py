"""C-GNN-PRUNE modules 2-4: expert interaction graph, GCN auto-encoder embedding, Leiden communities.

(Li, Wang, Wang, AAAI 2026; only the abstract is public, docs/METHODS.md makes it precise.)
- Co-activation that is not popularity: positive PMI of the routed pairs. With
  M_ij = coact_ij (i != j; tokens routing both i and j; M_ii = 0) and its marginals
  r_i = sum_j M_ij (= (k - 1) count_i under top-k routing), the null is quasi-independence
  fitted to those marginals: e_ij = a_i a_j (i != j) with sum_{j != i} e_ij = r_i (the
  diagonal excluded: an expert never pairs with itself, which plain r_i r_j / S ignores and
  which would favour popular pairs). PMI_ij = log((M_ij + m) / (e_ij + m)) with a
  pseudo-count m (`pmi_prior`) shrinking rarely seen pairs to independence;
  coact_ij = 1 - exp(-max(0, PMI_ij)) = max(0, 1 - (e_ij + m) / (M_ij + m)) in [0, 1),
  the share of the pair's co-activations above chance (a monotone map of positive PMI).
  Popular experts co-occur often by chance alone; the Jaccard index of routed sets
  (`jaccard`, kept for comparison) grows with the product of usages, PMI does not.
- Interaction graph of layer l: w_ij = lambda max(0, funcsim_ij) + (1 - lambda) coact_ij; no self loops.
- Node features (`node_features`): functional ones only by default, so usage is not the
  embedding: the top `pca_dims` principal components of the mean expert output on the
  shared probe tokens (each column standardised within the layer) and the mean activation
  norm ||f_e(x)|| on routed tokens, rank-transformed (evenly spaced, zero mean, unit variance:
  a magnitude without its heavy tail). With `usage=True` the usage share, probability-mass
  share and REAP saliency are added, rank-transformed the same way (METHODS.md's full list; an
  ablation). Importance enters only at selection (cgnn_select.py).
- Embedding: a 2-layer GCN (torch_geometric's dense GCN layer with edge
  weights, message passing over each node's `knn` strongest edges) trained as a
  graph auto-encoder: A_hat = sigmoid(Z Z^T) against A = W / max W with binary
  cross-entropy (diagonal excluded). One GCN is trained on all layers' graphs
  as one batch; seeded, deterministic on CPU.
- Communities: Leiden modularity (graspologic's native Leiden) on a kNN-sparsified graph,
  at the resolution whose community count is closest to a target (bisection on log10
  resolution); the graph and the target are chosen in cgnn.py / cgnn_select.py.
torch_geometric and graspologic are imported inside the functions that use them.
"""

from __future__ import annotations

import numpy as np

from raymoe.methods.common import per_layer_share, single_thread
from raymoe.store.calib_stats import LayerStats

__all__ = ["jaccard", "quasi_independence", "ppmi", "coactivation", "interaction_graph", "node_features",
           "rank_feature", "knn_mask", "knn_edges", "train_gae", "leiden_communities"]


def jaccard(s: LayerStats) -> np.ndarray:
    """Jaccard index of routed sets [E, E] from co-activation counts (0 on the diagonal); popularity-biased."""
    co = np.asarray(s.coact, dtype=np.float64)
    c = np.diagonal(co)
    union = c[:, None] + c[None, :] - co
    j = np.divide(co, union, out=np.zeros_like(co), where=union > 0)
    np.fill_diagonal(j, 0.0)
    return j


def quasi_independence(r: np.ndarray, iters: int = 200) -> np.ndarray:
    """e_ij = a_i a_j (i != j, 0 on the diagonal) with row sums r [E] -> [E, E].

    Fixed point a_i = r_i / (sum_j a_j - a_i) (iterative proportional fitting of the
    off-diagonal independence model), started from a = r / sqrt(sum r); damped by a
    geometric mean of old and new values. Needs max r_i < sum r / 2 (true for top-k, k >= 2,
    unless one expert is chosen on every token); rows then match r to ~1e-9 relative.
    """
    r = np.clip(np.asarray(r, dtype=np.float64), 0.0, None)
    S = r.sum()
    if S <= 0:
        return np.zeros((len(r), len(r)))
    a = r / np.sqrt(S)  # [E]
    for _ in range(iters):
        new = r / np.maximum(a.sum() - a, 1e-300)  # [E]
        a = np.sqrt(a * new)
    e = np.outer(a, a)  # [E, E]
    np.fill_diagonal(e, 0.0)
    return e


def ppmi(s: LayerStats, prior: float = 1.0) -> np.ndarray:
    """Positive PMI of co-activation against quasi-independence [E, E] (0 on the diagonal)."""
    M = np.asarray(s.coact, dtype=np.float64).copy()  # [E, E]
    np.fill_diagonal(M, 0.0)
    M = (M + M.T) / 2
    e = quasi_independence(M.sum(axis=1))  # [E, E]
    num, den = M + prior, e + prior
    pmi = np.log(np.divide(num, den, out=np.ones_like(num), where=(num > 0) & (den > 0)))  # [E, E]
    out = np.clip(pmi, 0.0, None)
    np.fill_diagonal(out, 0.0)
    return out


def coactivation(s: LayerStats, prior: float = 1.0) -> np.ndarray:
    """coact_ij = 1 - exp(-PPMI_ij) in [0, 1) [E, E]: the share of co-activations above chance."""
    return -np.expm1(-ppmi(s, prior))


def interaction_graph(s: LayerStats, lam: float, prior: float = 1.0) -> np.ndarray:
    """w_ij = lam max(0, funcsim_ij) + (1 - lam) coact_ij, zero diagonal -> [E, E]."""
    w = lam * np.clip(np.asarray(s.funcsim, dtype=np.float64), 0.0, None) + (1 - lam) * coactivation(s, prior)
    w = (w + w.T) / 2
    np.fill_diagonal(w, 0.0)
    return w


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return np.divide(x - x.mean(axis=0), sd, out=np.zeros_like(x), where=sd > 1e-12)


def rank_feature(v: np.ndarray) -> np.ndarray:
    """Ranks of v [E] mapped to evenly spaced values of zero mean and unit variance (ties averaged)."""
    v = np.asarray(v, dtype=np.float64)
    E = len(v)
    if E < 2:
        return np.zeros(E)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(E)
    ranks[order] = np.arange(E, dtype=np.float64)
    for val in np.unique(v):  # average ranks of ties
        tie = v == val
        ranks[tie] = ranks[tie].mean()
    return (ranks - (E - 1) / 2) / np.sqrt((E * E - 1) / 12)


def node_features(s: LayerStats, pca_dims: int, usage: bool = False) -> np.ndarray:
    """[E, pca_dims + 1] functional node features (+3 usage columns with `usage`)."""
    mo = np.asarray(s.mean_output, dtype=np.float64)  # [E, H]
    mo = mo - mo.mean(axis=0)
    with single_thread():
        evals, evecs = np.linalg.eigh(mo @ mo.T)  # [E], [E, E]: PCA scores from the Gram matrix (E << H)
    top = np.argsort(-evals)[:pca_dims]
    d = len(top)
    proj = evecs[:, top] * np.sqrt(np.clip(evals[top], 0, None))  # [E, d] = U S of the SVD
    proj *= np.where(proj.sum(axis=0) < 0, -1.0, 1.0)  # deterministic sign
    proj = np.pad(proj, ((0, 0), (0, pca_dims - d)))  # [E, pca_dims]
    cols = [s.act_norm] + ([per_layer_share(s.counts), per_layer_share(s.prob_mass), s.reap] if usage else [])
    ranked = np.stack([rank_feature(c) for c in cols], axis=1)  # [E, 1 or 4]
    return np.concatenate([_standardise(proj), ranked], axis=1)


def knn_mask(w: np.ndarray, k: int) -> np.ndarray:
    """Symmetrised mask of each node's k strongest positive edges [E, E] (no diagonal)."""
    E = len(w)
    k = min(k, E - 1)
    nbr = np.argsort(-w, axis=1, kind="stable")[:, :k]  # [E, k]
    keep = np.zeros_like(w, dtype=bool)
    keep[np.repeat(np.arange(E), k), nbr.ravel()] = True
    keep = (keep | keep.T) & (w > 0)
    np.fill_diagonal(keep, False)
    return keep


def knn_edges(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The kNN-sparsified graph as (index [2, M], weight [M])."""
    src, dst = np.nonzero(knn_mask(w, k))
    return np.stack([src, dst]), w[src, dst]


def train_gae(graphs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], *, hidden: int, dim: int,
              epochs: int, lr: float, seed: int, history: list[float] | None = None) -> list[np.ndarray]:
    """Train one GCN auto-encoder on all layers' graphs; return each layer's embeddings [E_l, dim].

    graphs: per layer (features [E, F], message-passing adjacency [E, E] (kNN-sparsified,
    weighted), target adjacency [E, E]). The layers form one batch of dense graphs
    (torch_geometric DenseGCNConv: D^-1/2 (A + I) D^-1/2 X W, padded to the largest E).
    `history`, when given, receives the loss before each epoch and after the last.
    """
    from torch_geometric.nn import DenseGCNConv

    with single_thread():
        return _train_gae(DenseGCNConv, graphs, hidden=hidden, dim=dim, epochs=epochs, lr=lr, seed=seed,
                          history=history)


def _train_gae(conv, graphs, *, hidden: int, dim: int, epochs: int, lr: float, seed: int,
               history: list[float] | None) -> list[np.ndarray]:
    import torch

    torch.manual_seed(seed)
    B, N, F = len(graphs), max(len(g[0]) for g in graphs), graphs[0][0].shape[1]
    x = torch.zeros(B, N, F)
    adj, target = torch.zeros(B, N, N), torch.zeros(B, N, N)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for i, (feat, a, t) in enumerate(graphs):
        E = len(feat)
        x[i, :E] = torch.as_tensor(feat, dtype=torch.float32)
        adj[i, :E, :E] = torch.as_tensor(a, dtype=torch.float32)
        target[i, :E, :E] = torch.as_tensor(t / max(t.max(), 1e-12), dtype=torch.float32)
        mask[i, :E] = True
    pairs = mask[:, :, None] & mask[:, None, :] & ~torch.eye(N, dtype=torch.bool)  # [B, N, N] scored pairs
    weight = pairs.float() / pairs.sum((1, 2), keepdim=True).clamp_min(1)  # each layer counts once
    conv1, conv2 = conv(F, hidden), conv(hidden, dim)
    opt = torch.optim.Adam(list(conv1.parameters()) + list(conv2.parameters()), lr=lr)

    def encode() -> torch.Tensor:
        return conv2(torch.relu(conv1(x, adj, mask)), adj, mask)  # [B, N, dim]

    def loss_of(z: torch.Tensor) -> torch.Tensor:
        logits = torch.bmm(z, z.transpose(1, 2))  # [B, N, N] inner-product decoder
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (bce * weight).sum() / B

    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_of(encode())
        loss.backward()
        opt.step()
        if history is not None:
            history.append(float(loss.detach()))
    with torch.no_grad():
        zt = encode()  # [B, N, dim]
        if history is not None:
            history.append(float(loss_of(zt)))
        z = zt.numpy()
    return [z[i, :len(g[0])] for i, g in enumerate(graphs)]


def _leiden(edges: list[tuple[str, str, float]], n: int, resolution: float, seed: int) -> np.ndarray:
    """graspologic's Leiden (modularity), called at its native core with the arguments
    `graspologic.partition.leiden` passes (randomness 0.001, one iteration, one trial); importing
    graspologic itself pulls networkx, numba, POT ... (about 20 s here) for nothing else."""
    import graspologic_native as gn

    part = {}
    if edges:  # the native PRNG wants a positive seed
        _, part = gn.leiden(edges=edges, starting_communities=None, resolution=resolution, randomness=0.001,
                            iterations=1, use_modularity=True, seed=seed + 1, trials=1)
    labels = np.full(n, -1)
    for node, c in part.items():
        labels[int(node)] = c
    free = np.flatnonzero(labels < 0)  # isolated nodes: own communities
    labels[free] = labels.max() + 1 + np.arange(len(free))
    _, labels = np.unique(labels, return_inverse=True)
    return labels


def leiden_communities(adj: np.ndarray, target: int, *, seed: int, knn: int,
                       steps: int = 14) -> tuple[np.ndarray, float]:
    """Leiden partition of a weighted graph with about `target` communities -> (labels [E], resolution)."""
    ei, ew = knn_edges(adj, knn)
    edges = [(str(a), str(b), float(w)) for a, b, w in zip(ei[0], ei[1], ew) if a < b]
    n = len(adj)
    lo, hi = -3.0, 3.0
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        labels = _leiden(edges, n, 10 ** mid, seed)
        count = int(labels.max()) + 1
        key = (abs(count - target), mid)
        if best is None or key < best[0]:
            best = (key, labels, 10 ** mid)
        if count == target:
            break
        lo, hi = (mid, hi) if count < target else (lo, mid)
    return best[1], float(best[2])
