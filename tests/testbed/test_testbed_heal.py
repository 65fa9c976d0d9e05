"""Healing by distillation: the KL it minimises, that it lowers held-out KL on a tiny seeded dense-to-MoE
build, what it trains, the cache key of healed builds, and bad healing options."""

import json
import time

import numpy as np
import pytest
import torch

from raymoe.cli import main
from raymoe.testbed import source
from raymoe.testbed.build import MANIFEST, build_testbed, moefy_model
from raymoe.testbed.config import HealConfig, TestbedConfig
from raymoe.testbed.export import build_moe_model
from raymoe.testbed.heal import distill, held_out_fidelity, kl_loss

VOCAB = 256


def test_kl_loss_matches_direct_sum():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 3, 7, generator=g) * 3, torch.randn(2, 3, 7, generator=g) * 3  # [B, S, V]
    p = np.exp(t.numpy()) / np.exp(t.numpy()).sum(-1, keepdims=True)
    q = np.exp(s.numpy()) / np.exp(s.numpy()).sum(-1, keepdims=True)
    want = float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)))  # mean over the 6 tokens
    assert kl_loss(t, s).item() == pytest.approx(want, rel=1e-5)
    assert kl_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)


def _tiny_dense():
    """A seeded random Llama with the testbed's MLP width 1536 (so TestbedConfig's layouts apply)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=1536, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
                      initializer_range=0.08, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _tokens(n: int, seq: int, seed: int) -> torch.Tensor:
    """Windows of a seeded order-1 Markov chain over the vocabulary (structure the models can share)."""
    g = torch.Generator().manual_seed(1234)
    trans = torch.softmax(torch.randn(VOCAB, VOCAB, generator=g) * 2.5, dim=1)  # [V, V]
    g.manual_seed(seed)
    out = torch.empty(n, seq, dtype=torch.long)
    out[:, 0] = torch.randint(0, VOCAB, (n,), generator=g)
    for t in range(1, seq):
        out[:, t] = torch.multinomial(trans[out[:, t - 1]], 1, generator=g)[:, 0]
    return out  # [N, S]


@pytest.fixture(scope="module")
def tiny_build():
    dense = _tiny_dense()
    cfg = TestbedConfig.parse(experts=16, top_k=1, shared=256, calib_tokens=512, seq_len=64, coact_tokens=256, router_steps=10)
    layers = moefy_model(dense, _tokens(8, 64, seed=1), cfg, progress=False)
    return dense, build_moe_model(dense, layers, cfg)


def test_healing_lowers_held_out_kl_and_trains_only_mlp(tiny_build):
    dense, moe = tiny_build
    held = _tokens(8, 64, seed=2)  # not the training windows
    before = held_out_fidelity(moe, dense, held)
    frozen = {n: p.clone() for n, p in moe.named_parameters() if ".mlp." not in n}
    router0 = moe.model.layers[0].mlp.gate.weight.clone()
    info = distill(moe, dense, _tokens(128, 64, seed=3), HealConfig(tokens=128 * 64, lr=3e-3, seq_len=64, batch=4),
                   progress=False)
    after = held_out_fidelity(moe, dense, held)
    assert info["steps"] == 32 and info["tokens"] == 8192 and len(info["train_kl"]) == 32
    assert before["kl"] > 0.1
    assert after["kl"] < 0.85 * before["kl"], (before, after)  # seeded: 0.25 -> 0.18
    assert after["ppl"] < before["ppl"]
    assert all(torch.equal(p, frozen[n]) for n, p in moe.named_parameters() if n in frozen)  # attention etc. frozen
    assert not torch.equal(moe.model.layers[0].mlp.gate.weight, router0)  # routers are trained
    assert not any(p.requires_grad for p in moe.parameters())  # handed back frozen
    assert 1.0 < after["load_max_over_mean"] <= 16.0


def test_router_only_healing_changes_only_routers(tiny_build):
    dense, moe = tiny_build
    state = {n: p.clone() for n, p in moe.named_parameters()}
    distill(moe, dense, _tokens(8, 64, seed=4), HealConfig(tokens=256, lr=1e-3, seq_len=64, batch=4, train="router"),
            progress=False)
    changed = {n for n, p in moe.named_parameters() if not torch.equal(p, state[n])}
    assert changed and all(".mlp.gate." in n for n in changed), changed


def test_cache_key_changes_with_every_healing_option_and_unhealed_key_is_kept():
    plain = TestbedConfig.parse()
    assert plain.digest() == "41d6a09bf6828e29"  # the unhealed default's id before healing existed (main job cache)
    assert "heal" not in plain.model_dump(mode="json")  # so sweep step ids are unchanged too
    from raymoe.sweep.records import step_id

    assert step_id("testbed", {"testbed": plain.model_dump(mode="json")}) == "testbed-3f4612558d03"
    healed = TestbedConfig.parse(heal={})
    assert healed.heal == HealConfig() and healed.digest() != plain.digest()
    variants = [dict(tokens=8192), dict(lr=1e-4), dict(seq_len=128), dict(batch=8), dict(warmup=0.0),
                dict(train="router")]
    digests = {TestbedConfig.parse(heal=v).digest() for v in variants}
    assert len(digests) == len(variants) and healed.digest() not in digests


@pytest.fixture
def no_build(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a build was attempted")
    monkeypatch.setattr(source, "load_dense", refuse)


def _fake_testbed(path, cfg):
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / MANIFEST).write_text(json.dumps({"kind": "raymoe-testbed", "hash": cfg.digest(), "metrics": {},
                                             "build_seconds": 1.0, "architecture": "X"}))


def test_cached_healed_build_returns_at_once_and_unhealed_is_a_miss(tmp_path, no_build, capsys):
    healed = TestbedConfig.parse(heal={"tokens": 4096})
    _fake_testbed(tmp_path / "tb", healed)
    start = time.monotonic()
    res = build_testbed(healed, tmp_path / "tb")
    assert res.cached and time.monotonic() - start < 1.0
    assert main(["testbed", "--out", str(tmp_path / "tb"), "--heal-tokens", "4096"]) == 0
    assert "cached" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="build was attempted"):  # same options without healing: rebuild
        build_testbed(TestbedConfig.parse(), tmp_path / "tb")


@pytest.mark.parametrize("argv, needle", [
    (["--heal-tokens", "0"], "invalid testbed option --heal-tokens: Input should be greater than 0"),
    (["--heal-tokens", "-8"], "invalid testbed option --heal-tokens: Input should be greater than 0"),
    (["--heal-lr", "0"], "invalid testbed option --heal-lr: Input should be greater than 0"),
    (["--heal", "--heal-lr=-1e-3"], "invalid testbed option --heal-lr: Input should be greater than 0"),
    (["--heal-seq-len", "4"], "invalid testbed option --heal-seq-len"),
    (["--heal-batch", "0"], "invalid testbed option --heal-batch"),
])
def test_bad_healing_options_exit_2_one_line_nothing_written(tmp_path, capsys, no_build, argv, needle):
    out = tmp_path / "tb"
    assert main(["testbed", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert list(tmp_path.iterdir()) == []
