"""Ray actor hosting one transformers model for lm-eval (the CPU default backend).

The model is loaded in memory (`AutoModelForCausalLM`, so raymoe's
variable-expert classes load non-uniform checkpoints) and handed to lm-eval's
`HFLM(pretrained=model)`, which works offline. With `scoring="shared"` (the
default, also when unset) the LM is `SharedContextHFLM` (raymoe.eval.lm_hf: one forward per
context for all its continuations); `scoring="stock"` keeps lm-eval's HFLM.
"""

from __future__ import annotations

import ray

from raymoe.eval.options import EngineOptions, scoring_length
from raymoe.eval.engine_host import EngineHost, load_transformers, mask_model
from raymoe.eval.tasks import TaskRequest

__all__ = ["HFWorker", "HFEngine", "load_hf"]


class HFEngine:
    def __init__(self, lm, version: str, path: str) -> None:
        self.lm = lm
        self.version = version
        self.path = path

    def set_mask(self, mask) -> None:
        """Router masks of a virtual variant (raymoe.moe.router_mask), updated in place; None: unmasked."""
        mask_model(self.lm.model, self.path, mask)

    def close(self) -> None:
        self.lm = None


def load_hf(path: str, opts: EngineOptions) -> HFEngine:
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    from raymoe.eval.lm_hf import SharedContextHFLM

    torch.manual_seed(opts.seed)
    model, tok = load_transformers(path, opts.dtype)
    kw = dict(pretrained=model, tokenizer=tok, backend="causal", device="cpu", batch_size=opts.batch_size,
              max_length=scoring_length(int(getattr(model.config, "max_position_embeddings", 2048)), opts))
    lm = SharedContextHFLM(**kw, token_budget=opts.score_tokens) if opts.scoring != "stock" else HFLM(**kw)
    return HFEngine(lm, f"transformers {transformers.__version__}", path)


@ray.remote(num_cpus=1)
class HFWorker:
    """One transformers engine; `evaluate` runs one (variant, task) pair."""

    def __init__(self, worker_id: str, opts: EngineOptions) -> None:
        self.host = EngineHost(worker_id, "hf", lambda path: load_hf(path, opts),
                               bootstrap_iters=opts.bootstrap_iters, seed=opts.seed, dtype=opts.dtype,
                               torch_model=lambda engine: engine.lm.model)

    def info(self) -> dict:
        return self.host.info()

    def evaluate(self, path: str, task: TaskRequest, mask: dict | None = None) -> dict:
        return self.host.evaluate(path, task, mask)

    def loglikelihood_throughput(self, path: str, task: TaskRequest, repeats: int = 1,
                                 mask: dict | None = None) -> dict:
        import torch

        return {**self.host.loglikelihood_throughput(path, task, repeats, mask), "threads": torch.get_num_threads()}
