"""Rolling (perplexity) log-likelihoods from an lm-eval LM's own token scorer, shared by both backends.

lm-eval's disjoint rolling windows of `max_length` tokens (context length 1) are
scored in one call of the LM's `_loglikelihood_tokens`, and each document's
log-likelihood is the sum over its windows:
  ll(doc) = sum_w sum_{i in cont_w} log p(x_i | x_<i)
Imports only lm-eval, so it runs in the main and the vLLM environment alike.
"""

from __future__ import annotations

from typing import Any, Callable

from lm_eval import utils as lm_utils

__all__ = ["rolling_loglikelihoods"]


def rolling_loglikelihoods(lm: Any, requests, score: Callable[[list], list[tuple[float, bool]]]) -> list[float]:
    """Per-request document log-likelihoods; `score(windows)` scores (None, ctx, cont) token triples."""
    windows, owner = [], []
    for idx, (string,) in enumerate(req.args for req in requests):
        for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=lm.tok_encode(string), prefix_token=lm.prefix_token_id,
                max_seq_len=lm.max_length, context_len=1)):
            windows.append((None, ctx, cont))
            owner.append(idx)
    totals = [0.0] * len(requests)
    for idx, (lp, _) in zip(owner, score(windows)):
        totals[idx] += lp
    for req, total in zip(requests, totals):
        lm.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals
