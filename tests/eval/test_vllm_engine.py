"""vLLM's CPU engine (in .venv-vllm, inside a Ray actor) serves uniform and non-uniform checkpoints.

One worker actor loads the four checkpoints in turn (four in-process engine
starts, one process start). Checked against transformers in this process:
greedy tokens are equal, prompt logprobs agree within LOGPROB_TOL, and lm-eval
scores through the vLLM worker equal those through the transformers backend.
"""

from __future__ import annotations

import pytest
import torch

from raymoe.eval.backends import actor_options
from raymoe.eval.hf_worker import load_hf
from raymoe.eval.options import EngineOptions
from raymoe.eval.engine_host import EngineHost
from raymoe.eval.tasks import TaskRequest

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

LOGPROB_TOL = 1e-4  # float32 on both sides; measured differences are ~1e-6
NEW_TOKENS = 8
CASES = [("mixtral", "uniform"), ("mixtral", "mixed"), ("qwen3_moe", "uniform"), ("qwen3_moe", "mixed")]


def prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in (5, 11, 23)]


def hf_reference(path, batch: list[list[int]]) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy continuation by repeated argmax, and log p(x_i | x_<i) for i >= 1, with transformers."""
    import raymoe
    from transformers import AutoModelForCausalLM

    raymoe.ensure_registered()  # the variable-expert architectures load with the Auto classes

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens, logprobs = [], []
    with torch.no_grad():
        for p in batch:
            lp = model(torch.tensor([p])).logits.log_softmax(-1)[0]  # [T, V]
            logprobs.append([lp[i - 1, p[i]].item() for i in range(1, len(p))])
            seq = list(p)
            for _ in range(NEW_TOKENS):
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
            tokens.append(seq[len(p):])
    return tokens, logprobs


@pytest.fixture(scope="module")
def vllm_worker(ray_local, vllm_python):
    from raymoe.eval.vllm_worker import VLLMWorker

    opts = EngineOptions(vllm_python=vllm_python)
    worker = VLLMWorker.options(**actor_options("vllm", opts, 1)).remote("vllm-test", opts)
    yield worker
    ray_local.kill(worker)


@pytest.mark.parametrize("family, kind", CASES)
def test_greedy_tokens_and_logprobs_match_transformers(vllm_worker, eval_models, family, kind):
    import ray

    path = str(eval_models(family)[kind])
    batch = prompts(320)
    got = ray.get(vllm_worker.greedy_and_logprobs.remote(path, batch, NEW_TOKENS))
    stock = {"mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}[family]
    # raymoe's worker serves every checkpoint through its plugin class (router masks for virtual variants);
    # stock vLLM serving uniform checkpoints is tests/vllm_plugin/test_vllm_families.py's
    assert got["model_class"] == "Raymoe" + stock
    assert got["executor_backend"] == "uni"  # vLLM did not start Ray inside the actor
    tokens, logprobs = hf_reference(path, batch)
    assert got["tokens"] == tokens
    diff = max(abs(a - b) for g, r in zip(got["logprobs"], logprobs) for a, b in zip(g, r))
    print(f"{family}/{kind}: max |logprob(vLLM) - logprob(transformers)| = {diff:.2e}")
    assert diff < LOGPROB_TOL, diff


def test_lm_eval_scores_match_transformers_backend(vllm_worker, eval_models):
    """The same tasks through lm-eval: vLLM worker (engine already loaded) vs the transformers backend."""
    import ray

    path = str(eval_models("qwen3_moe")["mixed"])
    tasks = [TaskRequest("arc_easy", 12), TaskRequest("wiki_ppl", 2)]
    host = EngineHost("hf-test", "hf", lambda p: load_hf(p, EngineOptions()))
    for task in tasks:
        got = ray.get(vllm_worker.evaluate.remote(path, task))
        ref = host.evaluate(path, task)
        assert got["version"].startswith("vllm ") and ref["version"].startswith("transformers ")
        g = {r["metric"]: r for r in got["rows"]}
        h = {r["metric"]: r for r in ref["rows"]}
        assert g.keys() == h.keys() and all(g[m]["n"] == h[m]["n"] == task.limit for m in g)
        for m in g:
            assert g[m]["value"] == pytest.approx(h[m]["value"], rel=1e-4), m


def test_virtual_variant_through_lm_eval_equals_its_checkpoint(vllm_worker, eval_models):
    """lm-eval tasks on the vLLM worker: the source with the plan's mask (a virtual variant, also KL through the
    masked transformers copy) equals the materialised checkpoint (1e-4), and unmasked afterwards the source."""
    import ray

    from dataclasses import replace

    from raymoe.eval.variants import Variant

    m = eval_models("qwen3_moe")
    virtual = Variant.from_plan(m["mixed"] / "plan.json", m["base"], name="virtual-mixed")
    ckpt = str(m["mixed"])
    tasks = [TaskRequest("arc_easy", 8), TaskRequest("wiki_ppl", 1),
             replace(TaskRequest("kld:wiki_heldout", 2), reference=str(m["base"]), cache_dir=str(m["base"] / "kld"))]
    for task in tasks:
        got = ray.get(vllm_worker.evaluate.remote(virtual.path, task, virtual.mask))
        want = ray.get(vllm_worker.evaluate.remote(ckpt, task))
        g, w = ({r["metric"]: r["value"] for r in x["rows"]} for x in (got, want))
        assert g.keys() == w.keys()
        for metric in g:
            assert g[metric] == pytest.approx(w[metric], rel=1e-4, abs=1e-6), (task.name, metric)
    plain = ray.get(vllm_worker.evaluate.remote(virtual.path, tasks[1]))  # no mask: the source itself
    masked = ray.get(vllm_worker.evaluate.remote(virtual.path, tasks[1], virtual.mask))
    assert {r["metric"]: r["value"] for r in plain["rows"]} != {r["metric"]: r["value"] for r in masked["rows"]}


@pytest.fixture(scope="module")
def tiny_testbed(tmp_path_factory):
    """A testbed export (shared layout: stock Qwen2-MoE with a shared expert) of a random dense Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from raymoe.testbed.build import moefy_model
    from raymoe.testbed.config import DENSE_MLP_WIDTH, TestbedConfig
    from raymoe.testbed.export import build_moe_model
    from raymoe.testing import build_tokenizer

    torch.manual_seed(0)
    dense = LlamaForCausalLM(LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=DENSE_MLP_WIDTH, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2)).eval()
    cfg = TestbedConfig.parse(experts=8, top_k=2, shared=512, calib_tokens=512, seq_len=64, coact_tokens=256,
                              router_steps=10)
    ids = torch.randint(3, 320, (8, 64), generator=torch.Generator().manual_seed(1))
    out = tmp_path_factory.mktemp("testbed") / "tiny"
    build_moe_model(dense, moefy_model(dense, ids, cfg, progress=False), cfg).save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out


def test_testbed_export_serves_on_vllm(vllm_worker, tiny_testbed):
    """vLLM's Qwen2-MoE always has q/k/v biases: the export writes zeros, else vLLM reads uninitialised memory."""
    import ray

    batch = prompts(320)
    got = ray.get(vllm_worker.greedy_and_logprobs.remote(str(tiny_testbed), batch, NEW_TOKENS))
    assert got["model_class"] == "RaymoeQwen2MoeForCausalLM"  # the plugin class (masks), see above
    tokens, logprobs = hf_reference(tiny_testbed, batch)
    assert got["tokens"] == tokens
    diff = max(abs(a - b) for g, r in zip(got["logprobs"], logprobs) for a, b in zip(g, r))
    assert diff < LOGPROB_TOL, diff


def test_shared_scoring_equals_stock_and_reads_the_cache(vllm_worker, eval_models, vllm_python):
    """Prefix-cached scoring (scoring="shared") vs the default uncached path: scores to 1e-4, contexts cached."""
    import ray

    from raymoe.eval.vllm_worker import VLLMWorker

    path = str(eval_models("mixtral")["mixed"])
    opts = EngineOptions(vllm_python=vllm_python, scoring="shared")
    shared = VLLMWorker.options(**actor_options("vllm", opts, 1)).remote("vllm-shared", opts)
    try:
        for task in (TaskRequest("arc_easy", 16), TaskRequest("wiki_ppl", 2)):
            got = ray.get(shared.loglikelihood_throughput.remote(path, task))
            ref = ray.get(vllm_worker.loglikelihood_throughput.remote(path, task))
            assert got["requests"] == ref["requests"] > 0
            diff = max(abs(a - b) for a, b in zip(got["results"], ref["results"]))
            print(f"{task}: max |shared - stock| = {diff:.2e}")
            assert diff < LOGPROB_TOL, diff
        stats = ray.get(shared.scoring_stats.remote())
        assert stats["cached_tokens"] > 0, stats  # arc_easy's choices read their contexts' KV blocks
        assert ray.get(vllm_worker.scoring_stats.remote())["cached_tokens"] == 0
    finally:
        ray.kill(shared)
