"""A stats store is self-contained: its manifest records the model's config, so methods that read no
weights plan from the store alone, after the model directory is gone (in-process calibration, no Ray)."""

from __future__ import annotations

import json
import shutil

import pytest

from raymoe.calib import CalibConfig
from raymoe.calib.calibration import Prepared, calibrate, load_tokenizer
from raymoe.data.text import calibration_data
from raymoe.methods import METHODS, load_method, make_plan
from raymoe.methods.common import StatsError
from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint
from raymoe.moe.safetensors_files import model_hash
from raymoe.store import StatsManifest, StatsStoreError, load_stats, save_stats
from raymoe.testing.tiny import build_tiny_model

from conftest import TINY

pytestmark = pytest.mark.unit

CFG = CalibConfig(samples=4, seq_len=16, micro_batch=2, probe_tokens=8, clusters=2, local=True, seed=0)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """(model path, stats store path) of a tiny DeepSeek-V3 (group-limited routing: n_group=2)."""
    root = tmp_path_factory.mktemp("self_contained")
    path = build_tiny_model("deepseek_v3", root / "model", **TINY)
    data = calibration_data("tiny", load_tokenizer(path), CFG.samples, CFG.seq_len, CFG.seed)
    stats = calibrate(Prepared(path, CFG, data), progress=False)
    return path, save_stats(stats, root / "stats")


def _plan_json(plan) -> dict:
    return plan.model_dump(mode="json", exclude={"created"})


def test_manifest_records_the_model(calibrated):
    path, store = calibrated
    m = load_stats(store).manifest
    spec = MoeModelSpec.from_pretrained(path)
    assert isinstance(m, StatsManifest)
    assert m.model.config == json.loads((path / "config.json").read_text())
    assert (m.model.family, m.model.model_type) == ("deepseek_v3", "deepseek_v3")
    assert m.model.experts == spec.experts == {1: 8, 2: 8, 3: 8}
    assert (m.model.top_k, m.model.n_group, m.model.topk_group) == (2, 2, 1)
    assert m.model.path == str(path.resolve())
    # the stats id of a sweep is keyed by this hash, the data and the calibration config, as before
    assert m.model.hash == model_hash(path, SafetensorsCheckpoint(path))
    assert m.calibration == dict(CFG.manifest(), num_clusters=2, probe_tokens_per_batch=8,
                                 cluster_features="pooled final hidden states (pre-pass, k-means before the pass)")
    assert m.model.spec().min_kept == spec.min_kept and m.model.spec().experts == spec.experts


def test_manifest_round_trips(calibrated, tmp_path):
    _, store = calibrated
    stats = load_stats(store)
    again = StatsManifest.model_validate_json(json.dumps(stats.manifest.to_json()))
    assert again == stats.manifest
    save_stats(stats, tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "manifest.json").read_text()) == \
        json.loads((store / "manifest.json").read_text())


def test_manifest_refuses_facts_that_contradict_the_config(calibrated):
    raw = json.loads((calibrated[1] / "manifest.json").read_text())
    raw["model"]["experts"] = {"1": 8, "2": 6, "3": 8}
    with pytest.raises(ValueError, match="model.experts is .* but model.config gives"):
        StatsManifest.model_validate(raw)
    raw["model"].pop("experts")
    raw["model"]["config"] = {"model_type": "llama", "num_hidden_layers": 2}
    with pytest.raises(ValueError, match="not a usable MoE config"):
        StatsManifest.model_validate(raw)


def test_plans_without_the_model_directory(calibrated, tmp_path):
    """Every method that reads no weights makes the same plan from a store whose model was deleted;
    one that needs the weights says so."""
    path, store = calibrated
    model = shutil.copytree(path, tmp_path / "model")
    stats_dir = tmp_path / "stats"
    shutil.copytree(store, stats_dir)
    man = json.loads((stats_dir / "manifest.json").read_text())
    man["model"]["path"] = str(model)
    (stats_dir / "manifest.json").write_text(json.dumps(man))

    free = [n for n in METHODS if load_method(n).weights == "none"]
    assert {"frequency", "reap", "pathfinder"} <= set(free)
    with_model = load_stats(stats_dir)
    before = {n: _plan_json(make_plan(with_model, n, 0.5)) for n in free}
    shutil.rmtree(model)
    without = load_stats(stats_dir)
    for name in free:
        assert _plan_json(make_plan(without, name, 0.5)) == before[name], name
    assert without.manifest.model.path == str(model) and not model.exists()
    with pytest.raises(StatsError, match="needs the expert weights, but the stats' model .* does not exist"):
        make_plan(without, "naee", 0.5)


def test_store_without_model_config_is_upgraded_or_refused(calibrated, tmp_path):
    """A store of an older raymoe (no model.config): read from the model path while the model is there
    and unchanged; otherwise an error that says to calibrate again."""
    path, store = calibrated
    model = shutil.copytree(path, tmp_path / "model")
    old = tmp_path / "old"
    shutil.copytree(store, old)
    man = json.loads((old / "manifest.json").read_text())
    man["model"] = {k: man["model"][k] for k in ("path", "hash", "model_type", "family", "experts", "top_k")}
    man["model"]["path"] = str(model)
    (old / "manifest.json").write_text(json.dumps(man))

    upgraded = load_stats(old)
    assert upgraded.manifest.model == load_stats(store).manifest.model.model_copy(update={"path": str(model)})
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(cfg | {"rms_norm_eps": 1e-5}))
    with pytest.raises(StatsStoreError, match="changed since .*calibrate again"):
        load_stats(old)
    shutil.rmtree(model)
    with pytest.raises(StatsStoreError, match="holds no model config.*not there.*calibrate again"):
        load_stats(old)
