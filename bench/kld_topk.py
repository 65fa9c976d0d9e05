"""How well the cached reference (top K + tail draws) recovers the full-vocabulary KL, on a real variant.

    .venv/bin/python bench/kld_topk.py --reference results/.cache/testbed/<id>/model \
        --variant results/quickstart/variants/<id> [--docs 10] [--ks 8,16,32,64]

Runs both models on the fidelity task's windows (raymoe.eval.reference, the
same WindowSpec as `kld:wiki_heldout`), computes the exact KL(reference ||
variant) per position over the whole vocabulary, and for each K the K + 1
outcome bound KL_K and the estimate the cache gives (KL_K plus the tail term
estimated from S tokens drawn from the reference's tail). Prints their means
against the exact mean and the per-position error.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> int:
    import numpy as np
    import torch

    from raymoe.eval.fidelity import full_kl, token_scores
    from raymoe.eval.reference import WindowSpec, _tail_draws, _windows
    from raymoe.eval.engine_host import load_transformers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--variant", type=Path, required=True)
    ap.add_argument("--corpus", default="wiki_heldout")
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--ks", default="8,16,32,64")
    ap.add_argument("--samples", type=int, default=64, help="tail draws per position (the cache's S)")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    ref_m, tok = load_transformers(str(args.reference))
    var_m, _ = load_transformers(str(args.variant))
    spec = WindowSpec(args.corpus, docs=args.docs)
    exact, approx, mc = [], {k: [] for k in ks}, {k: [] for k in ks}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for _, ids in _windows(tok, spec, int(ref_m.config.max_position_embeddings)):
            x = torch.tensor([ids])
            logp = torch.log_softmax(ref_m(input_ids=x).logits[0, :-1].float(), -1)  # [T, V]
            logq = torch.log_softmax(var_m(input_ids=x).logits[0, :-1].float(), -1)  # [T, V]
            exact.append(full_kl(logp.double(), logq.double()).numpy())
            for k in ks:
                top = logp.topk(k, -1)
                rest = torch.logsumexp(logp.scatter(-1, top.indices, float("-inf")), -1)
                ref = {"top_logp": top.values, "top_ids": top.indices, "rest_logp": rest, "targets": x[0, 1:]}
                approx[k].append(token_scores(logq, ref)["kld"])
                tail = logp.scatter(-1, top.indices, float("-inf"))
                draw = _tail_draws(tail, rest, args.samples, gen)  # [T, S]
                ref |= {"tail_ids": draw, "tail_logp": tail.gather(-1, draw)}
                mc[k].append(token_scores(logq, ref)["kld"])
    e = np.concatenate(exact)
    print(f"positions {e.size}; exact mean KL {e.mean():.5f} nats")
    print(f"| K | mean KL_K (bound) | its gap / KL | mean KL_K + tail estimate (S = {args.samples}) | "
          "its error / KL | per-position rms error |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        a, m = np.concatenate(approx[k]), np.concatenate(mc[k])
        print(f"| {k} | {a.mean():.5f} | {(e.mean() - a.mean()) / e.mean():.2%} | {m.mean():.5f} | "
              f"{(m.mean() - e.mean()) / e.mean():+.2%} | {np.sqrt(np.mean((m - e) ** 2)):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
