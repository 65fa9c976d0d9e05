"""The typed stats manifest: facts derived from the recorded config, validation, old stores, plan manifests."""

from __future__ import annotations

import json

import pytest

from raymoe.store import ModelFacts, StatsManifest, StatsStoreError, load_stats, save_stats
from raymoe.store.manifest import recorded_model_hash

from test_store import CONFIG, random_stats

pytestmark = pytest.mark.unit

V3 = {"model_type": "deepseek_v3", "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 16,
      "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2, "hidden_size": 8, "moe_intermediate_size": 4}


def test_facts_are_derived_from_the_config():
    facts = ModelFacts(config=V3)
    assert (facts.family, facts.model_type, facts.num_layers, facts.top_k, facts.hidden_size) == \
        ("deepseek_v3", "deepseek_v3", 3, 4, 8)
    assert facts.experts == {1: 16, 2: 16} and (facts.n_group, facts.topk_group) == (4, 2)
    assert facts.spec().min_kept == 8 and facts.spec() is facts.spec()  # built once
    assert (facts.path, facts.hash) == ("", "")
    # the facts stated as an older raymoe wrote them (string layer keys) validate against the config
    same = ModelFacts.model_validate({"config": V3, "experts": {"1": 16, "2": 16}, "top_k": 4})
    assert same == facts


def test_contradicting_or_unusable_facts_are_refused():
    with pytest.raises(ValueError, match="model.top_k is 2 but model.config gives 4"):
        ModelFacts(config=V3, top_k=2)
    with pytest.raises(ValueError, match="not a usable MoE config"):
        ModelFacts(config={"model_type": "deepseek_v3"})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        StatsManifest.model_validate({"model": {"config": V3}, "notes": "x"})


def test_json_round_trip():
    m = random_stats().manifest
    assert StatsManifest.model_validate_json(json.dumps(m.to_json())) == m
    assert m.to_json()["model"]["experts"] == {"1": 4, "2": 6, "3": 4}


def test_unreadable_manifest_is_a_store_error(tmp_path):
    save_stats(random_stats(), tmp_path / "s")
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    man["model"]["config"] = dict(CONFIG, num_experts_per_tok="many")
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StatsStoreError, match=r"manifest.json: model: .*not a usable MoE config"):
        load_stats(tmp_path / "s")


def test_old_store_without_its_model_says_calibrate_again(tmp_path):
    save_stats(random_stats(), tmp_path / "s")
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    del man["model"]["config"]  # as written before the config was recorded; /abs/model does not exist
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StatsStoreError, match="older raymoe .*no model config.* '/abs/model' .*calibrate again"):
        load_stats(tmp_path / "s")


def test_recorded_model_hash_of_any_plan_manifest():
    assert recorded_model_hash({"model": {"hash": "f" * 64}}) == "f" * 64  # a plan's stats of any version
    assert recorded_model_hash(None) is None and recorded_model_hash({"model": {}}) is None
    assert recorded_model_hash(random_stats().manifest) == "ab" * 32
