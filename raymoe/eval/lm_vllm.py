"""lm-eval's language-model interface over a vLLM engine (runs in the vLLM environment).

lm-eval drives models through its `TemplateLM` base class (its extension
point: the tokenisation of (context, continuation) pairs is the base class's,
exactly as for the transformers backend); this adapter supplies the scoring:

- loglikelihood: the whole sequence x = ctx + cont (left-truncated to
  max_length + 1 tokens) is one prompt; with `prompt_logprobs` vLLM returns
  log p(x_i | x_<i) for each prompt position, so
  log p(cont | ctx) = sum_{i in cont} log p(x_i | x_<i), and the continuation is
  greedy iff every x_i has vocabulary rank 1. One `generate` call carries all
  requests; vLLM batches them itself.
  With `shared=True` (engine option scoring="shared") the engine has the prefix
  cache on and requests run in two waves: the first request of each context,
  then the others, which read the context's KV blocks from the cache
  (`skip_reading_prefix_cache=False`; vLLM sets it True for prompt-logprob
  requests because a cache hit drops the logprobs of cached positions). Only
  continuation positions are needed; a request whose needed positions came back
  missing (a hit reaching into its continuation) is rescored without the cache.
  Every prompt carries `cache_salt` = the engine's salt (its checkpoint) and the
  expert mask its routers hold (`mask_id`, set by the engine), so a cached
  context is never reused across weights or masks (the engine also empties the
  prefix cache when the mask changes).
- loglikelihood_rolling: lm-eval's disjoint rolling windows of max_length tokens,
  each scored as above, summed per document.
- generate_until: greedy decoding (or the task's sampling settings) with the
  task's stop strings.
"""

from __future__ import annotations

import math
from typing import Any

from lm_eval.api.model import TemplateLM

from raymoe.eval.rolling import rolling_loglikelihoods

__all__ = ["VLLMLM"]

_CONTEXTS_PER_WAVE = 128  # shared scoring: contexts whose KV blocks must stay cached between the two waves


class VLLMLM(TemplateLM):
    """An lm-eval LM whose requests run on `llm` (a `vllm.LLM`)."""

    def __init__(self, llm: Any, tokenizer: Any, max_length: int, max_gen_toks: int = 256, *,
                 shared: bool = False, cache_salt: str | None = None) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self._max_length = max_length
        self.max_gen_toks = max_gen_toks
        self.shared = shared
        self.checkpoint_salt = cache_salt
        self.mask_id: str | None = None  # the routers' expert mask (VLLMEngine.set_mask); part of the salt
        self.rescored = 0  # shared scoring: requests rescored without the cache
        self.cached_tokens = 0  # prompt tokens served from the prefix cache

    # ---- tokens ------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "tokenizer").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """As the transformers backend does: the tokenizer's default special tokens unless told."""
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        enc = self.tokenizer.encode(string, **kw)
        return enc[-left_truncate_len:] if left_truncate_len else enc

    @property
    def cache_salt(self) -> str | None:
        """Prefix-cache salt: the checkpoint's, and the expert mask in force ("none": unmasked)."""
        if self.checkpoint_salt is None:
            return None
        return f"{self.checkpoint_salt}|{self.mask_id or 'none'}"

    # ---- scoring -----------------------------------------------------------------------------
    def _prompt(self, tokens: list[int]):
        from vllm.inputs import TokensPrompt

        if self.cache_salt is None or not self.shared:
            return TokensPrompt(prompt_token_ids=tokens)
        return TokensPrompt(prompt_token_ids=tokens, cache_salt=self.cache_salt)

    @staticmethod
    def _read(tokens: list[int], n_cont: int, lps) -> tuple[float, bool] | None:
        """(sum of the last n_cont tokens' logprobs, all rank 1), or None if any of them is missing."""
        shift = len(tokens) - len(lps)  # a prefix-cache hit may leave the list short at the front
        total, greedy = 0.0, True
        for i in range(len(tokens) - n_cont, len(tokens)):
            entry = lps[i - shift] if i - shift >= 1 else None
            lp = entry.get(tokens[i]) if entry is not None else None
            if lp is None:
                return None
            if not math.isfinite(lp.logprob):  # silent NaN would make every choice's score NaN
                raise RuntimeError(f"vLLM returned a non-finite log-probability ({lp.logprob}) at position {i}; "
                                   "the checkpoint likely lacks tensors this vLLM model allocates")
            total += lp.logprob
            greedy = greedy and lp.rank == 1
        return total, greedy

    def _run(self, sequences: list[tuple[list[int], int]], read_cache: bool) -> list[tuple[float, bool] | None]:
        from vllm import SamplingParams

        if not sequences:
            return []
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False,
                                **({"skip_reading_prefix_cache": False} if read_cache else {}))
        outs = self.llm.generate([self._prompt(t) for t, _ in sequences], params, use_tqdm=False)
        self.cached_tokens += sum(o.num_cached_tokens or 0 for o in outs)
        return [self._read(t, n, o.prompt_logprobs) for (t, n), o in zip(sequences, outs)]

    def _score(self, sequences: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """(tokens, n_cont) -> (sum of the last n_cont tokens' logprobs, all of them rank 1)."""
        if not self.shared:
            out = self._run(sequences, read_cache=False)
            if any(r is None for r in out):
                raise RuntimeError("vLLM returned no prompt logprobs for a continuation")
            return out
        by_ctx: dict[tuple[int, ...], list[int]] = {}
        for k, (t, n) in enumerate(sequences):
            by_ctx.setdefault(tuple(t[: len(t) - n]), []).append(k)
        groups = list(by_ctx.values())
        results: dict[int, tuple[float, bool] | None] = {}
        for a in range(0, len(groups), _CONTEXTS_PER_WAVE):  # bounded, so wave 1's blocks stay cached
            chunk = groups[a: a + _CONTEXTS_PER_WAVE]
            for wave in ([g[0] for g in chunk], [k for g in chunk for k in g[1:]]):  # wave 2 reads wave 1's
                results.update(zip(wave, self._run([sequences[k] for k in wave], read_cache=True)))
        missing = [k for k, r in results.items() if r is None]
        self.rescored += len(missing)
        results.update(zip(missing, self._run([sequences[k] for k in missing], read_cache=False)))
        if any(results[k] is None for k in missing):
            raise RuntimeError("vLLM returned no prompt logprobs for a continuation scored without the cache")
        return [results[k] for k in range(len(sequences))]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        seqs = []
        for _, ctx, cont in requests:
            whole = (ctx + cont)[-(self.max_length + 1):]  # [<= max_length + 1]
            seqs.append((whole, min(len(cont), len(whole) - 1)))
        results = self._score(seqs)
        for (key, _, _), res in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return rolling_loglikelihoods(self, requests, self._loglikelihood_tokens)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        eos = self.tokenizer.decode([self.eot_token_id])
        for req in requests:
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs)
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kw.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kw.pop("temperature", 0.0)) if kw.pop("do_sample", False) else 0.0
            ctx = self.tok_encode(context, left_truncate_len=max(1, self.max_length + 1 - max_gen))
            prompts.append(TokensPrompt(prompt_token_ids=ctx))
            params.append(SamplingParams(max_tokens=max_gen, temperature=temperature,
                                         stop=[*until, eos] if eos else until))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        texts = [o.outputs[0].text for o in outs]
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts
