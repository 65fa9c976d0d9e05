"""Virtual variants on vLLM: a source model with its routers masked to a plan scores like the pruned checkpoint.

One vLLM worker actor (the eval fleet's `VLLMWorker`) serves, per family, the
stock source through raymoe's plugin class and switches expert masks on it
(`VLLMEngine.set_mask` -> `collective_rpc` -> the router buffers, no reload),
then the two materialised checkpoints of the same plans (uniform, and per-layer
counts; DeepSeek's plans keep an equal count in each original group). Checked:
prompt logprobs of source + mask equal the pruned checkpoint's within
LOGPROB_TOL (both on vLLM, so DeepSeek's MLA kernel is the same on both sides);
masks A, B, A give A's logprobs twice; mask None after a mask gives the stock
model's again; a mask does change the model; a mask keeping fewer than top_k
experts is refused and leaves the routers as they were. Three engine loads per
family. The unit tests at the end need no vLLM: the serving overrides, the
prefix-cache salt and `VLLMEngine.set_mask` on a stand-in engine.
"""

from __future__ import annotations

import pytest
import torch


FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")
KINDS = ("uniform", "mixed")
LOGPROB_TOL = 1e-4  # float32 on both sides
REPEAT_TOL = 1e-6  # the same engine, mask and batch twice


def prompts(vocab: int = 320) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in (7, 19, 40)]


@pytest.fixture(scope="module")
def scored(vllm_worker, family_models, pruning_plan):
    """family -> {name: greedy_and_logprobs result}, computed once per family (three engine loads)."""
    import ray

    from raymoe.plan.mask import ExpertMask

    cache: dict[str, dict] = {}

    def run(family: str) -> dict:
        if family not in cache:
            paths = family_models(family)
            base, batch = str(paths["base"]), prompts()
            masks = {k: ExpertMask.from_plan(pruning_plan(paths["base"], k)).to_wire() for k in KINDS}

            def score(path: str, mask: dict | None) -> dict:
                return ray.get(vllm_worker.greedy_and_logprobs.remote(path, batch, 1, mask))

            out = {"stock": score(base, None)}
            for name, mask in (("uniform", masks["uniform"]), ("mixed", masks["mixed"]),
                               ("uniform_again", masks["uniform"])):  # A, B, A
                out[name] = score(base, mask)
            bad = {**masks["uniform"], "id": "too-few"}
            first = min(bad["keep"], key=int)
            bad["keep"] = {**bad["keep"], first: bad["keep"][first][:1]}  # 1 expert < top_k = 2
            with pytest.raises(ray.exceptions.RayTaskError, match="fewer than top_k"):
                score(base, bad)
            out["stock_again"] = score(base, None)
            out.update({f"pruned_{k}": score(str(paths[k]), None) for k in KINDS})
            cache[family] = out
        return cache[family]

    return run


def max_diff(a: dict, b: dict) -> float:
    return max(abs(x - y) for p, q in zip(a["logprobs"], b["logprobs"]) for x, y in zip(p, q))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.integration
@pytest.mark.vllm
def test_source_is_served_through_the_plugin(scored, family):
    from raymoe.moe.arch import ARCHS

    got = scored(family)
    assert got["stock"]["model_class"] == ARCHS[family].variable_causal_lm  # a stock config, router masks
    assert got["stock"]["executor_backend"] == "uni"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.integration
@pytest.mark.vllm
def test_virtual_variant_equals_pruned_checkpoint(scored, family, kind):
    got = scored(family)
    diff, moved = max_diff(got[kind], got[f"pruned_{kind}"]), max_diff(got[kind], got["stock"])
    print(f"{family}/{kind}: max |logprob(source + mask) - logprob(pruned)| = {diff:.2e}; "
          f"vs unmasked source {moved:.2e}")
    assert moved > 1e-3, "the mask did not change the model"
    assert diff < LOGPROB_TOL, diff


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.integration
@pytest.mark.vllm
def test_masks_leave_nothing_behind(scored, family):
    """Masks A, B, A: A's logprobs both times; mask None afterwards (after a refused mask): the stock model's."""
    got = scored(family)
    again, stock = max_diff(got["uniform"], got["uniform_again"]), max_diff(got["stock"], got["stock_again"])
    print(f"{family}: A vs A after B {again:.2e}; unmasked before vs after masks {stock:.2e}")
    assert again <= REPEAT_TOL and stock <= REPEAT_TOL, (again, stock)


def test_serving_overrides_name_the_plugin_class():
    from raymoe.eval.vllm_worker import serving_overrides

    assert serving_overrides({"model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"]}) == {
        "architectures": ["RaymoeQwen2MoeForCausalLM"]}
    v3 = serving_overrides({"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"]})
    assert v3 == {"topk_method": "noaux_tc", "scoring_func": "sigmoid",
                  "architectures": ["RaymoeDeepseekV3ForCausalLM"]}
    assert serving_overrides({"model_type": "raymoe_olmoe", "architectures": ["RaymoeOlmoeForCausalLM"]}) == {}
    assert serving_overrides({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}) == {}


def test_prefix_cache_salt_follows_the_mask():
    from raymoe.eval.lm_vllm import VLLMLM

    lm = VLLMLM(None, None, max_length=8, shared=True, cache_salt="ckpt@1")
    assert lm.cache_salt == "ckpt@1|none"
    lm.mask_id = "mask-0123"
    assert lm.cache_salt == "ckpt@1|mask-0123"
    assert VLLMLM(None, None, max_length=8).cache_salt is None


def test_set_mask_calls_the_extension_and_resets_the_cache_on_change():
    from types import SimpleNamespace

    from raymoe.eval.lm_vllm import VLLMLM
    from raymoe.eval.vllm_worker import VLLMEngine
    from raymoe.plan.mask import ExpertMask

    calls = []
    cache = SimpleNamespace(enable_prefix_caching=True)
    llm = SimpleNamespace(collective_rpc=lambda method, args: calls.append((method, args)),
                          reset_prefix_cache=lambda: calls.append("reset") or True,
                          llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(cache_config=cache)))
    engine = VLLMEngine(llm, VLLMLM(llm, None, max_length=8, shared=True, cache_salt="c"), "vllm x", maskable=True)
    a = ExpertMask(id="mask-a", keep={1: (0, 2)}, num_experts={1: 4})
    engine.set_mask(a)
    engine.set_mask(a)  # written again, the cache kept
    engine.set_mask(None)
    assert calls == [("raymoe_set_expert_mask", (a.to_wire(),)), "reset", ("raymoe_set_expert_mask", (a.to_wire(),)),
                     ("raymoe_set_expert_mask", (None,)), "reset"]
    assert engine.lm.cache_salt == "c|none"
    stock = VLLMEngine(llm, None, "vllm x", maskable=False)
    stock.set_mask(None)  # nothing to clear
    with pytest.raises(ValueError, match="stock vLLM, which has no router masks"):
        stock.set_mask(a)
