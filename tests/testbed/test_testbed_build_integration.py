"""A real (small) testbed build from the SmolLM2 GGUF: loads, finite logits, top-K routing, cache hit."""

import math
import time

import pytest
import torch

from raymoe.cli import main
from raymoe.moe import MoeModelSpec
from raymoe.testbed import read_manifest

pytestmark = pytest.mark.integration

ARGS = ["--layers", "2", "--experts", "8", "--top-k", "2", "--calib-tokens", "1024", "--seq-len", "256",
        "--coact-tokens", "512", "--router-steps", "30", "--eval-tokens", "512", "--quiet"]


def test_small_testbed_builds_loads_routes_and_caches(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "testbed"
    assert main(["testbed", "--out", str(out), *ARGS]) == 0
    manifest = read_manifest(out)
    assert manifest is not None and manifest["options"]["layers"] == 2
    assert math.isfinite(manifest["metrics"]["dense_ppl"]) and math.isfinite(manifest["metrics"]["moe_ppl"])
    assert all(sum(layer["load"]) == 1024 * 2 for layer in manifest["layers"])  # K selections per token

    spec = MoeModelSpec.from_pretrained(out)
    assert spec.arch.causal_lm == "Qwen2MoeForCausalLM" and spec.top_k == 2
    assert spec.experts == {0: 8, 1: 8} and spec.expert_intermediate == 128
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The history of the Roman Empire spans many centuries.", return_tensors="pt").input_ids
    routed = []
    hooks = [b.mlp.gate.register_forward_hook(lambda m, i, o: routed.append(o[2])) for b in model.model.layers]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    for h in hooks:
        h.remove()
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()
    for idx in routed:  # [T, K]: each token uses K distinct experts of E
        assert idx.shape == (ids.shape[1], 2) and all(len(set(r.tolist())) == 2 for r in idx)
        assert int(idx.max()) < 8

    weights = out / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    start = time.monotonic()
    assert main(["testbed", "--out", str(out), *ARGS]) == 0
    assert time.monotonic() - start < 10
    assert "cached" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == stamp  # not rewritten


def test_small_healed_testbed_lowers_kl_to_dense_and_caches(tmp_path, capsys):
    """Real SmolLM2 layers (2 of 30): healing by distillation lowers the held-out KL to the dense model."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "healed"
    heal = ["--heal-tokens", "4096", "--heal-seq-len", "128", "--heal-lr", "1e-3"]
    assert main(["testbed", "--out", str(out), *ARGS, *heal]) == 0
    m = read_manifest(out)
    h = m["heal"]
    assert m["options"]["heal"]["tokens"] == 4096 and h["steps"] == 8 and len(h["train_kl"]) == 8
    assert h["kl_after"] < 0.9 * h["kl_before"], h  # seeded: 0.82 -> 0.60
    assert m["metrics"]["moe_ppl"] == h["ppl_after"] and h["ppl_after"] < h["ppl_before"]
    assert 1.0 < h["load_max_over_mean_after"] < 8.0  # still routed, still imbalanced
    model = AutoModelForCausalLM.from_pretrained(out)  # what was trained is what loads
    assert model.config.num_experts_per_tok == 2
    capsys.readouterr()
    start = time.monotonic()
    assert main(["testbed", "--out", str(out), *ARGS, *heal]) == 0
    assert time.monotonic() - start < 10 and "cached" in capsys.readouterr().out
