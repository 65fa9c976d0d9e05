"""lm-eval's HFLM with shared-context scoring: each context is computed once for all its continuations.

Stock `HFLM._loglikelihood_tokens` runs every (context, continuation) pair as
its own sequence, so a multiple-choice item's context is recomputed once per
choice, and it materialises log-softmax over the vocabulary at every position.
`SharedContextHFLM` keeps lm-eval's tokenisation of the pairs (the base
class's `_encode_pair`) and its truncation rule (the scored sequence is
(ctx + cont)[-(L+1):]), and changes only how the numbers are computed:

- requests whose truncated contexts are equal form one *group*, packed into one
  row: ctx, then cont_1[:-1], cont_2[:-1], ... (tree attention). A 4D mask lets
  each continuation token attend to the context and to its own earlier tokens;
  position ids restart at len(ctx) for every continuation. The hidden state at
  each scored position is therefore the one the stock path computes, and
  log p(cont_k | ctx) = sum_j log_softmax(W h_{j})[cont_k[j]] as before;
  a one-token continuation costs no extra token at all;
- rows are batched by a token budget (rows sorted by length, right-padded);
  rows of a single sequence (rolling windows) use the plain causal mask;
- the LM head and log-softmax run only at scored positions, in chunks.

`loglikelihood_rolling` builds lm-eval's disjoint rolling windows (as HFLM
does) and scores all of them in one call, so windows are batched by the token
budget instead of `batch_size` windows at a time. Equal to stock HFLM to float
rounding (tests: tests/eval/test_hf_scoring.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from raymoe.eval.rolling import rolling_loglikelihoods

__all__ = ["SharedContextHFLM", "pack_groups"]

_HEAD_CHUNK = 1024  # scored positions per LM-head call


def pack_groups(requests: list[tuple[Any, list[int], list[int]]], max_length: int, *, share: bool = True,
                row_limit: int | None = None) -> list[dict]:
    """Group (key, ctx, cont) requests by their left-truncated context.

    Returns groups {ctx: [c] tokens, members: [(request index, cont)]}, in first-seen order.
    A group's packed row (ctx + sum of len(cont) - 1) is kept within `row_limit` tokens
    (a member that would exceed it starts a new group); `share=False` gives one group per request.
    """
    groups: dict[tuple[int, ...], dict] = {}
    out: list[dict] = []
    for i, (_, ctx, cont) in enumerate(requests):
        if not ctx or not cont or len(cont) > max_length:
            raise ValueError(f"request {i}: need a non-empty context and 1..{max_length} continuation tokens, got "
                             f"{len(ctx)} and {len(cont)}")
        whole = (list(ctx) + list(cont))[-(max_length + 1):]  # [<= L + 1], as HFLM truncates
        key = tuple(whole[: len(whole) - len(cont)])
        g = groups.get(key) if share else None
        if g is not None and row_limit is not None and g["length"] + len(cont) - 1 > row_limit:
            g = None
        if g is None:
            g = groups[key] = {"ctx": list(key), "members": [], "length": len(key)}
            out.append(g)
        g["members"].append((i, list(cont)))
        g["length"] += len(cont) - 1
    return out


def _row(group: dict) -> tuple[list[int], list[int], list[int], list[tuple[int, list[int], list[int]]]]:
    """(tokens, positions, segment ids, [(request, scored row offsets, targets)]) of one packed group."""
    ctx = group["ctx"]
    c = len(ctx)
    tokens, pos, seg = list(ctx), list(range(c)), [0] * c
    scored = []
    for k, (i, cont) in enumerate(group["members"], start=1):
        start = len(tokens)
        body = cont[:-1]
        tokens += body
        pos += range(c, c + len(body))
        seg += [k] * len(body)
        scored.append((i, [c - 1] + list(range(start, start + len(body))), cont))
    return tokens, pos, seg, scored


class SharedContextHFLM(HFLM):
    """HFLM scoring each context once for all its continuations (see the module docstring)."""

    def __init__(self, *args: Any, token_budget: int = 256, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {token_budget}")
        self.token_budget = token_budget
        cfg = self.model.config
        if self.backend != "causal" or getattr(cfg, "final_logit_softcapping", None) \
                or getattr(cfg, "logit_scale", None):
            raise ValueError("SharedContextHFLM needs a causal LM whose logits are lm_head(last hidden state)")

    # ---- scoring -----------------------------------------------------------------------------
    def _batches(self, rows: list[tuple]) -> list[list[tuple]]:
        order = sorted(rows, key=lambda r: -len(r[0]))
        batches, cur = [], []
        for r in order:
            if cur and len(cur[0][0]) * (len(cur) + 1) > self.token_budget:
                batches.append(cur)
                cur = []
            cur.append(r)
        return batches + ([cur] if cur else [])

    def _forward_hidden(self, batch: list[tuple]) -> torch.Tensor:
        """Last hidden states [B, T, H] of right-padded packed rows."""
        B, T = len(batch), len(batch[0][0])
        ids = torch.full((B, T), self.tokenizer.pad_token_id or 0, dtype=torch.long)  # [B, T]
        for b, (tokens, *_rest) in enumerate(batch):
            ids[b, : len(tokens)] = torch.tensor(tokens)
        kwargs: dict[str, Any] = {}
        if any(max(seg) > 0 for _, _, seg, _ in batch):  # tree rows: explicit positions and mask
            pos = torch.zeros((B, T), dtype=torch.long)  # [B, T]
            seg = torch.full((B, T), -1, dtype=torch.long)  # [B, T], -1 = padding
            for b, (tokens, p, s, _) in enumerate(batch):
                pos[b, : len(tokens)] = torch.tensor(p)
                seg[b, : len(tokens)] = torch.tensor(s)
            causal = torch.ones(T, T, dtype=torch.bool).tril()  # [T, T] key <= query
            same = (seg[:, None, :] == seg[:, :, None]) | (seg[:, None, :] == 0)  # [B, T(q), T(k)]
            allowed = causal[None] & same  # padding queries see context and padding only (never all masked)
            dtype = self.model.dtype
            mask = torch.zeros((B, 1, T, T), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
            kwargs = {"attention_mask": mask, "position_ids": pos}
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            out = self.model.base_model(input_ids=ids.to(self.device), use_cache=False,
                                        **{k: v.to(self.device) for k, v in kwargs.items()})
        return out.last_hidden_state  # [B, T, H]

    def _score_batch(self, batch: list[tuple]) -> dict[int, tuple[float, bool]]:
        hidden = self._forward_hidden(batch)  # [B, T, H]
        rows, cols, targets, owners = [], [], [], []
        for b, (_, _, _, scored) in enumerate(batch):
            for i, offsets, cont in scored:
                rows += [b] * len(offsets)
                cols += offsets
                targets += cont
                owners.append((i, len(cont)))
        h = hidden[torch.tensor(rows), torch.tensor(cols)]  # [N, H]
        tgt = torch.tensor(targets, device=h.device)  # [N]
        head = self.model.get_output_embeddings()
        lps, greedy = [], []
        with torch.no_grad():
            for a in range(0, len(targets), _HEAD_CHUNK):
                logp = F.log_softmax(head(h[a: a + _HEAD_CHUNK]), dim=-1, dtype=self.softmax_dtype)  # [n, V]
                t = tgt[a: a + _HEAD_CHUNK]
                lps.append(logp.gather(-1, t[:, None])[:, 0])  # [n]
                greedy.append(logp.argmax(-1) == t)  # [n]
        lp, gr = torch.cat(lps), torch.cat(greedy)  # [N], [N]
        out, a = {}, 0
        for i, n in owners:
            out[i] = (float(lp[a: a + n].sum()), bool(gr[a: a + n].all()))  # summed in the model's dtype, as HFLM does
            a += n
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None,
                              share: bool = True, **kwargs) -> list[tuple[float, bool]]:
        if not requests:
            return []
        groups = pack_groups(requests, self.max_length, share=share, row_limit=self.token_budget)
        rows = [_row(g) for g in groups]
        results: dict[int, tuple[float, bool]] = {}
        for batch in tqdm(self._batches(rows), disable=disable_tqdm or self.rank != 0,
                                   desc="Scoring shared contexts"):
            results.update(self._score_batch(batch))
        res = [results[i] for i in range(len(requests))]
        for (key, _, _), answer in zip(requests, res):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        def score(windows):  # windows share no context: no grouping
            return self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm, share=False)

        return rolling_loglikelihoods(self, requests, score)
