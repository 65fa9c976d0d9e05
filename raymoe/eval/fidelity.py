"""Fidelity tasks `kld:<corpus>`: how far a variant's next-token distribution moves from a reference's.

On fixed held-out windows (the first `windows_per_doc` windows of `window`
tokens of each of the corpus's first `limit` documents; the first token of a
window only conditions), with p the reference's and q the variant's
next-token distribution at scored position t:

  kld_t   = KL(p_t || q_t)                 (nats; summarised by mean, median, 99th percentile)
  agree_t = 1[argmax q_t = argmax p_t]     (top-1 agreement)
  ll_t    = log q_t(x_{t+1})               (token perplexity exp(-mean ll) on the same windows)

The reference is run once per (reference, corpus, windows) and cached on disk
(`raymoe.eval.reference`): its top-K log-probabilities (K = 32), the log of the
remaining mass p_R, and S = 64 tokens drawn (seeded) from its tail p|R (p
restricted to the tokens outside the top K, renormalised) with their log p.
The KL splits exactly into

  KL = sum_{i in top-K} p_i log(p_i / q_i) + p_R log(p_R / q_R) + p_R KL(p|R || q|R)

The first two terms (KL_K, a lower bound by the log-sum inequality) are exact
from the cache; the tail term is estimated without bias from the S draws,
p_R * mean_s [log p|R(x_s) - log q|R(x_s)]. On the testbed (vocabulary 49152,
a flat tail) KL_K alone misses 26% of the KL at K = 32; what the estimator
leaves is measured in raymoe/eval/README.md (`bench/kld_topk.py`). A
position's estimate can be slightly negative (sampling noise); means stay
unbiased, so nothing is clamped. Standard errors are over documents (windows of
one document are correlated): bootstrap over documents for every statistic.

Scoring runs on a transformers model in every backend: vLLM 0.32 returns a
prompt position's own top-k logprobs, not the values at the reference's token
ids, so the vLLM worker computes this task with transformers (same weights,
same process).
"""

from __future__ import annotations

import numpy as np

from raymoe.errors import FidelityError
from raymoe.eval.uncertainty import bootstrap_se, bootstrap_stat_se, ratio_value

__all__ = ["FIDELITY_PREFIX", "KLD_CORPORA", "FidelityError", "is_fidelity", "fidelity_corpus", "corpus_documents",
           "token_scores", "fidelity_rows", "full_kl"]

FIDELITY_PREFIX = "kld:"
#: corpora a fidelity task can read (raymoe.data): wiki_heldout is never calibration text
KLD_CORPORA = ("wiki_heldout", "wiki_calib", "wiki", "c4")


def is_fidelity(name: str) -> bool:
    return name.startswith(FIDELITY_PREFIX)


def fidelity_corpus(name: str) -> str:
    """`kld:wiki_heldout` -> `wiki_heldout` (FidelityError for an unknown corpus)."""
    corpus = name[len(FIDELITY_PREFIX):]
    if corpus not in KLD_CORPORA:
        raise FidelityError(f"task {name!r}: unknown corpus {corpus!r} for a KL task (known: "
                            f"{', '.join(FIDELITY_PREFIX + c for c in KLD_CORPORA)})")
    return corpus


def corpus_documents(corpus: str) -> list[str]:
    """The documents of a fidelity corpus, in file order."""
    from raymoe.data import named_corpus_path
    from raymoe.data.splits import wiki_articles
    from raymoe.eval.corpora import split_lines

    if corpus in ("wiki_heldout", "wiki_calib"):
        return list(wiki_articles(corpus.split("_", 1)[1]))  # "calib" | "heldout"
    if corpus == "wiki":
        return list(wiki_articles("calib") + wiki_articles("heldout"))
    if corpus == "c4":
        return split_lines(named_corpus_path("c4").read_text(encoding="utf-8"))
    raise FidelityError(f"unknown KL corpus {corpus!r}")


def full_kl(logp, logq):
    """Exact KL(p || q) per position over the whole vocabulary: logp, logq [T, V] -> [T]."""
    return (logp.exp() * (logp - logq)).sum(-1)


def token_scores(logq, ref: dict) -> dict:
    """Per scored position: KL_K, top-1 agreement, log q(target), from the variant's log-probs.

    logq [T, V] log-softmax of the variant; ref holds the window's `top_logp` [T, K], `top_ids` [T, K],
    `rest_logp` [T] and `targets` [T] (raymoe.eval.reference)."""
    import torch

    top_ids = ref["top_ids"].long()  # [T, K]
    p_top = ref["top_logp"].double()  # [T, K] log p
    q_top = logq.gather(-1, top_ids).double()  # [T, K] log q at the reference's top tokens
    masked = logq.scatter(-1, top_ids, float("-inf"))
    q_rest = torch.logsumexp(masked, -1).double()  # [T] log q_R
    p_rest = ref["rest_logp"].double()  # [T] log p_R
    has_tail = torch.isfinite(p_rest)  # [T] False when the top K hold all the mass
    grouped = torch.where(has_tail, p_rest.exp() * (p_rest - q_rest), 0.0)  # [T] p_R log(p_R / q_R)
    kl = (p_top.exp() * (p_top - q_top)).sum(-1) + grouped  # [T] KL_K, a lower bound
    if "tail_ids" in ref and ref["tail_ids"].shape[-1] > 0:
        # + p_R KL(p|R || q|R), estimated without bias from tokens drawn from p|R
        lp = ref["tail_logp"].double() - p_rest[:, None]  # [T, S] log p|R
        lq = logq.gather(-1, ref["tail_ids"].long()).double() - q_rest[:, None]  # [T, S] log q|R
        inner = torch.where(has_tail[:, None], lp - lq, 0.0).mean(-1)  # [T]
        kl = kl + torch.where(has_tail, p_rest.exp() * inner, 0.0)
    agree = (logq.argmax(-1) == top_ids[:, 0]).double()  # [T]
    ll = logq.gather(-1, ref["targets"].long()[:, None])[:, 0].double()  # [T]
    return {"kld": kl.numpy(), "agree": agree.numpy(), "ll": ll.numpy()}


def fidelity_rows(task: str, per_doc: dict[int, dict], *, iters: int = 1000, seed: int = 0) -> list[dict]:
    """Per-document token scores -> result rows with bootstrap standard errors over documents."""
    docs = sorted(per_doc)
    if len(docs) == 0:
        raise FidelityError(f"task {task}: no document had a window to score")
    kld = [np.asarray(per_doc[d]["kld"]) for d in docs]
    n_tok = np.array([k.size for k in kld], dtype=np.float64)  # [D]
    sums = {key: np.array([np.sum(per_doc[d][key]) for d in docs]) for key in ("kld", "agree", "ll")}  # [D]
    n = len(docs)

    def ratio_row(metric, key, transform):
        num = sums[key]
        return {"task": task, "metric": metric, "value": ratio_value(num, n_tok, transform),
                "stderr": bootstrap_se(num, n_tok, transform, iters=iters, seed=seed), "n": n,
                "items": docs, "item_num": num.tolist(), "item_den": n_tok.tolist(), "transform": transform}

    rows = [ratio_row("kld_mean", "kld", "mean"), ratio_row("top1_agree", "agree", "mean"),
            ratio_row("token_perplexity", "ll", "exp_neg")]
    for metric, q in (("kld_median", 50.0), ("kld_p99", 99.0)):
        stat = lambda v, q=q: float(np.percentile(v, q))  # noqa: E731
        rows.append({"task": task, "metric": metric, "value": stat(np.concatenate(kld)),
                     "stderr": bootstrap_stat_se(kld, stat, iters=min(iters, 300), seed=seed), "n": n})
    rows.append({"task": task, "metric": "tokens", "value": float(n_tok.sum()), "stderr": 0.0, "n": n})
    return rows
