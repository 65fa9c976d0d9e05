"""Serve checkpoints with vLLM's CPU engine, one after another in this process; run in .venv-vllm.

    python serve.py JOB.json OUT.json

JOB: {"paths": [...], "prompts": [[token ids]], "new_tokens": N}. OUT maps each
path to {"tokens", "logprobs" (log p(x_i | x_<i), i >= 1), "model_class"} or
{"error"}; one failing checkpoint does not stop the others.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback

os.environ.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "VLLM_NO_USAGE_STATS": "1",
                   "VLLM_LOGGING_LEVEL": "WARNING"})


def serve(path: str, prompts: list[list[int]], new_tokens: int) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=path, tokenizer=path, dtype="float32", max_model_len=256, enforce_eager=True, seed=0,
              enable_prefix_caching=False, max_num_seqs=8, disable_log_stats=True)
    try:
        inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        gen = llm.generate(inputs, SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True),
                           use_tqdm=False)
        scored = llm.generate(inputs, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1,
                                                     detokenize=False), use_tqdm=False)
        logprobs = [[o.prompt_logprobs[i][p[i]].logprob for i in range(1, len(p))] for o, p in zip(scored, prompts)]
        return {"tokens": [list(o.outputs[0].token_ids) for o in gen], "logprobs": logprobs,
                "model_class": llm.apply_model(lambda model: type(model).__name__)[0]}
    finally:
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()


def main() -> None:
    job = json.loads(open(sys.argv[1]).read())
    out = {}
    for path in job["paths"]:
        try:
            out[path] = serve(path, job["prompts"], job["new_tokens"])
        except Exception as exc:  # reported per checkpoint; the test names it
            traceback.print_exc()
            out[path] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"served {path}: {'error' if 'error' in out[path] else 'ok'}", flush=True)
    with open(sys.argv[2], "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
