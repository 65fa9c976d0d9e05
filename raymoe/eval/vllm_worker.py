"""Ray actor hosting one vLLM engine for lm-eval; it runs in the vLLM environment.

The fleet starts it with `runtime_env={"py_executable": <.venv-vllm python>}`
(see `raymoe.eval.backends`), so this module is imported there; the main
environment imports it too, to name the class, but never imports vllm.
vLLM must not start Ray inside the actor (nested placement groups deadlock):
the engine core runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) and the
executor is `uni` (one device) or `mp` (tensor parallel), never `ray`.
"""

from __future__ import annotations

import gc

import ray

from raymoe.eval.options import EngineOptions, scoring_length
from raymoe.eval.engine_host import EngineHost
from raymoe.eval.tasks import TaskRequest

__all__ = ["VLLMWorker", "VLLMEngine", "load_vllm", "serving_overrides", "vllm_env_vars"]


def vllm_env_vars(opts: EngineOptions) -> dict[str, str]:
    """Environment of a vLLM worker process."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": str(opts.kv_cache_gib),
            "VLLM_WORKER_MULTIPROC_METHOD": "spawn", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "VLLM_NO_USAGE_STATS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


class VLLMEngine:
    """A `vllm.LLM` and its lm-eval LM; `maskable`: served through raymoe's plugin class (router masks)."""

    def __init__(self, llm, lm, version: str, maskable: bool = False) -> None:
        self.llm = llm
        self.lm = lm
        self.version = version
        self.maskable = maskable
        self.mask_id: str | None = None  # the mask the routers hold (None: every expert available)

    def set_mask(self, mask) -> None:
        """Mask the routers to a raymoe.plan.mask.ExpertMask (None: every expert available), in place, on
        every vLLM worker; on a change of mask the prefix cache is emptied and the prompt salt follows it."""
        from raymoe.vllm_plugin.masking import SET_MASK

        if not self.maskable:
            if mask is None:
                return
            raise ValueError(f"mask {mask.id}: this checkpoint's architecture is served by stock vLLM, "
                             "which has no router masks")
        self.llm.collective_rpc(SET_MASK, args=(None if mask is None else mask.to_wire(),))
        new = None if mask is None else mask.id
        if new != self.mask_id:
            cache = self.llm.llm_engine.vllm_config.cache_config
            if cache.enable_prefix_caching and not self.llm.reset_prefix_cache():
                raise RuntimeError("vLLM could not reset its prefix cache after an expert-mask change")
            self.mask_id = new
        self.lm.mask_id = new

    def close(self) -> None:
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = self.lm = None
        gc.collect()

    @property
    def executor_backend(self) -> str:
        return str(self.llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend)


def serving_overrides(cfg: dict) -> dict:
    """vLLM `hf_overrides` for a checkpoint's config: a stock MoE architecture is served through raymoe's
    plugin class of its family (the same computation, plus router mask buffers), with the config keys the
    family implies and vLLM reads (`MoeArch.implied_config`; a transformers-saved DeepSeek lacks them).
    Empty for raymoe's own architectures (exported with those keys) and for families raymoe does not know."""
    from raymoe.errors import NotMoEError
    from raymoe.moe.arch import arch_for_config

    try:
        arch = arch_for_config(cfg)
    except NotMoEError:
        return {}
    if cfg.get("architectures") != [arch.causal_lm]:
        return {}
    return {**arch.implied_config(cfg), "architectures": [arch.variable_causal_lm]}


def load_vllm(path: str, opts: EngineOptions) -> VLLMEngine:
    import json
    from pathlib import Path

    import vllm
    from vllm import LLM

    from raymoe.eval.lm_vllm import VLLMLM
    from raymoe.vllm_plugin import VLLM_ARCHITECTURES
    from raymoe.vllm_plugin.masking import EXTENSION

    cfg = json.loads((Path(path) / "config.json").read_text())
    # every MoE checkpoint runs on raymoe's plugin class, so it can score virtual variants of itself
    overrides = serving_overrides(cfg)
    maskable = (overrides.get("architectures") or cfg.get("architectures") or [""])[0] in VLLM_ARCHITECTURES
    max_length = scoring_length(int(cfg.get("max_position_embeddings", 2048)), opts)
    shared = opts.scoring == "shared"  # opt-in on vLLM: contexts read from the prefix cache (lm_vllm.py)
    llm = LLM(model=path, tokenizer=path, dtype=opts.dtype, max_model_len=max_length + 2, seed=opts.seed,
              enforce_eager=opts.enforce_eager, tensor_parallel_size=opts.tensor_parallel_size,
              distributed_executor_backend="uni" if opts.tensor_parallel_size == 1 else "mp",
              enable_prefix_caching=shared, max_num_seqs=opts.max_num_seqs,
              gpu_memory_utilization=opts.gpu_memory_utilization, disable_log_stats=True,
              worker_extension_cls=EXTENSION, **({"hf_overrides": overrides} if overrides else {}),
              # CPU KV blocks default to 128 tokens, longer than most multiple-choice contexts: only whole
              # blocks are cached, so shared scoring uses 32-token blocks (the smallest the CPU backend takes)
              **({"block_size": 32} if shared else {}))
    # the salt keys cached contexts to this checkpoint: a cache never serves another variant's weights
    lm = VLLMLM(llm, llm.get_tokenizer(), max_length=max_length, max_gen_toks=opts.max_gen_toks,
                shared=shared, cache_salt=f"{path}@{Path(path, 'config.json').stat().st_mtime_ns}")
    return VLLMEngine(llm, lm, f"vllm {vllm.__version__}", maskable=maskable)


@ray.remote(num_cpus=1, num_gpus=0)
class VLLMWorker:
    """One vLLM engine; `evaluate` runs one (variant, task) pair (num_gpus = TP size on GPU clusters)."""

    def __init__(self, worker_id: str, opts: EngineOptions) -> None:
        self.opts = opts
        self.host = EngineHost(worker_id, "vllm", lambda path: load_vllm(path, opts),
                               bootstrap_iters=opts.bootstrap_iters, seed=opts.seed, dtype=opts.dtype)

    def info(self) -> dict:
        info = self.host.info()
        if self.host.engine is not None:
            info["executor_backend"] = self.host.engine.executor_backend
        return info

    def evaluate(self, path: str, task: TaskRequest, mask: dict | None = None) -> dict:
        """Run `task` on `path`, its routers masked by `mask` (ExpertMask.to_wire(); None: unmasked)."""
        return self.host.evaluate(path, task, mask)

    def loglikelihood_throughput(self, path: str, task: TaskRequest, repeats: int = 1) -> dict:
        import torch

        return {**self.host.loglikelihood_throughput(path, task, repeats), "threads": torch.get_num_threads()}

    def scoring_stats(self) -> dict:
        """Shared scoring counters of the loaded engine: prompt tokens read from the prefix cache, rescored requests."""
        lm = self.host.engine.lm if self.host.engine is not None else None
        return {"cached_tokens": getattr(lm, "cached_tokens", 0), "rescored": getattr(lm, "rescored", 0)}

    def greedy_and_logprobs(self, path: str, prompts: list[list[int]], max_new_tokens: int,
                            mask: dict | None = None) -> dict:
        """Greedy continuations and per-position prompt logprobs (for checks against transformers), the
        routers masked by `mask` (ExpertMask.to_wire(); None: unmasked) first."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        engine = self.host.masked_engine(path, mask)
        llm = engine.llm
        gen = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                           SamplingParams(max_tokens=max_new_tokens, temperature=0.0, ignore_eos=True),
                           use_tqdm=False)
        scored = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                              SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False),
                              use_tqdm=False)
        logprobs = [[o.prompt_logprobs[i][p[i]].logprob for i in range(1, len(p))] for o, p in zip(scored, prompts)]
        model_cls = llm.apply_model(lambda model: type(model).__name__)[0]
        return {"tokens": [list(o.outputs[0].token_ids) for o in gen], "logprobs": logprobs,
                "model_class": model_cls, "executor_backend": self.host.engine.executor_backend}
