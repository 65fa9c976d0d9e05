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
from raymoe.eval.runner import EngineHost
from raymoe.eval.tasks import TaskRequest

__all__ = ["VLLMWorker", "VLLMEngine", "load_vllm", "vllm_env_vars"]


def vllm_env_vars(opts: EngineOptions) -> dict[str, str]:
    """Environment of a vLLM worker process."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": str(opts.kv_cache_gib),
            "VLLM_WORKER_MULTIPROC_METHOD": "spawn", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "VLLM_NO_USAGE_STATS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


class VLLMEngine:
    def __init__(self, llm, lm, version: str) -> None:
        self.llm = llm
        self.lm = lm
        self.version = version

    def close(self) -> None:
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = self.lm = None
        gc.collect()

    @property
    def executor_backend(self) -> str:
        return str(self.llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend)


def load_vllm(path: str, opts: EngineOptions) -> VLLMEngine:
    import json
    from pathlib import Path

    import vllm
    from vllm import LLM

    from raymoe.eval.lm_vllm import VLLMLM

    cfg = json.loads((Path(path) / "config.json").read_text())
    max_length = scoring_length(int(cfg.get("max_position_embeddings", 2048)), opts)
    shared = opts.scoring == "shared"  # opt-in on vLLM: contexts read from the prefix cache (lm_vllm.py)
    llm = LLM(model=path, tokenizer=path, dtype=opts.dtype, max_model_len=max_length + 2, seed=opts.seed,
              enforce_eager=opts.enforce_eager, tensor_parallel_size=opts.tensor_parallel_size,
              distributed_executor_backend="uni" if opts.tensor_parallel_size == 1 else "mp",
              enable_prefix_caching=shared, max_num_seqs=opts.max_num_seqs,
              gpu_memory_utilization=opts.gpu_memory_utilization, disable_log_stats=True,
              # CPU KV blocks default to 128 tokens, longer than most multiple-choice contexts: only whole
              # blocks are cached, so shared scoring uses 32-token blocks (the smallest the CPU backend takes)
              **({"block_size": 32} if shared else {}))
    # the salt keys cached contexts to this checkpoint: a cache never serves another variant's weights
    lm = VLLMLM(llm, llm.get_tokenizer(), max_length=max_length, max_gen_toks=opts.max_gen_toks,
                shared=shared, cache_salt=f"{path}@{Path(path, 'config.json').stat().st_mtime_ns}")
    return VLLMEngine(llm, lm, f"vllm {vllm.__version__}")


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

    def evaluate(self, path: str, task: TaskRequest) -> dict:
        return self.host.evaluate(path, task)

    def loglikelihood_throughput(self, path: str, task: TaskRequest, repeats: int = 1) -> dict:
        import torch

        return {**self.host.loglikelihood_throughput(path, task, repeats), "threads": torch.get_num_threads()}

    def scoring_stats(self) -> dict:
        """Shared scoring counters of the loaded engine: prompt tokens read from the prefix cache, rescored requests."""
        lm = self.host.engine.lm if self.host.engine is not None else None
        return {"cached_tokens": getattr(lm, "cached_tokens", 0), "rescored": getattr(lm, "rescored", 0)}

    def greedy_and_logprobs(self, path: str, prompts: list[list[int]], max_new_tokens: int) -> dict:
        """Greedy continuations and per-position prompt logprobs (for checks against transformers)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self.host.engine_for(path).llm
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
