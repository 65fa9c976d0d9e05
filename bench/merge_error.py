"""How far merged experts are from their members: usage-weighted relative output error on probe tokens.

    .venv/bin/python bench/merge_error.py --stats results/.cache/stats/<id> [--ratio 0.5 --tokens 128]

For each merge plan (c-prune-merge and hc-smoe, each with align=none / weights / activations) over the
stats' model: per merge group G_t with weights w_m and aligned members P_m(W_m), the merged expert
f' = f(sum_m w_m P_m(W_m)) on the layer's probe tokens x (`tokens` of them, seed 1), and
    error = sum_{groups, m} w_m ||f'(x) - f_m(x)||^2 / sum_{groups, m} w_m ||f_m(x)||^2
(0: the merged expert computes every member's function; a permutation changes no f_m).
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    import torch
    import torch.nn.functional as F

    from raymoe.methods import make_plan, open_weights
    from raymoe.methods.common import probe_subset
    from raymoe.store import load_stats

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stats", required=True)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    st = load_stats(args.stats)
    weights = open_weights(st)

    def f(g, u, d, x):
        return (F.silu(x @ g.T) * (x @ u.T)) @ d.T  # [T, H]

    for method in ("c-prune-merge", "hc-smoe"):
        for align in ("none", "weights", "activations"):
            t0 = time.perf_counter()
            plan = make_plan(st, method, args.ratio, options={"align": align}, weights=weights)
            perms = plan.permutations()
            num = den = 0.0
            for lp in plan.layers:
                x = probe_subset(st, lp.layer, args.tokens, 1).double()  # [T, H]
                for grp in lp.merges:
                    parts = []
                    for m in grp.members:
                        g, u, d = (t.double() for t in weights.expert(lp.layer, m))
                        p = perms.get(lp.layer, {}).get(m)
                        if p is not None:
                            p = torch.as_tensor(p)
                            g, u, d = g[p], u[p], d[:, p]
                        parts.append((g, u, d))
                    merged = [sum(w * t[i] for w, t in zip(grp.weights, parts)) for i in range(3)]
                    ym = f(*merged, x)
                    for w, t in zip(grp.weights, parts):
                        y = f(*t, x)
                        num += w * float(((ym - y) ** 2).sum())
                        den += w * float((y ** 2).sum())
            print(f"{method:14s} align={align:11s} ratio={args.ratio}: relative output error of merged experts = "
                  f"{num / max(den, 1e-300):.4f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
