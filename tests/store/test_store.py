"""Stats store: round trip, file formats (no pickle), atomic writes, errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

from raymoe.store import (MATRIX_FIELDS, STORE_FILES, VECTOR_FIELDS, CalibStats, LayerStats, StatsStoreError,
                          load_stats, save_stats)

pytestmark = pytest.mark.unit

H, K = 6, 3
#: a DeepSeek-V2 config with a dense layer 0 and per-layer expert counts 4, 6, 4
CONFIG = {"model_type": "deepseek_v2", "num_hidden_layers": 4, "first_k_dense_replace": 1, "n_routed_experts": 6,
          "raymoe_experts_per_layer": [0, 4, 6, 4], "num_experts_per_tok": 2, "hidden_size": H,
          "moe_intermediate_size": 8}


def random_stats(seed: int = 0) -> CalibStats:
    rng = np.random.default_rng(seed)
    counts = {1: 4, 2: 6, 3: 4}  # non-uniform expert counts; layer 0 dense
    layers = {}
    for l, E in counts.items():
        nxt = {1: 2, 2: 3}.get(l)
        st = LayerStats(layer=l, num_experts=E, top_k=2, tokens=100.0, probe_tokens=10.0)
        for name in VECTOR_FIELDS:
            setattr(st, name, rng.random(E))
        st.counts = rng.integers(0, 50, E).astype(np.float64)
        st.coact = rng.random((E, E))
        st.probe_cos_sum = rng.random((E, E))
        st.mean_output_sum = rng.standard_normal((E, H))
        st.probe_inputs = rng.standard_normal((10, H)).astype(np.float32)
        if nxt:
            E2 = counts[nxt]
            st.trans, st.trans_intensity = rng.random((E, E2)), rng.random((E, E2))
            st.trans_intensity_by_cluster = rng.random((K, E, E2))
            st.trans_routed, st.trans_routed_by_cluster = rng.random((E, E2)), rng.random((K, E, E2))
        st.pooled_inputs = rng.standard_normal((5, H)).astype(np.float32)
        layers[l] = st
    manifest = {"model": {"path": "/abs/model", "hash": "ab" * 32, "config": CONFIG},
                "data": {"source": "wiki", "seq_len": 16, "hash": "cd" * 32}, "calibration": {"samples": 5},
                "raymoe_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00"}
    traces = {"seq": np.array([0, 1]), "pos": np.array([3, 4]), "layer": np.array([1, 1]),
              "experts": np.array([[0, 2], [1, 3]], np.int32), "weights": np.array([[.6, .4], [.5, .5]], np.float32)}
    return CalibStats(manifest=manifest, layers=layers, num_clusters=K, seq_cluster=rng.integers(0, K, 5),
                      seq_pooled=rng.standard_normal((5, H)), extra={"traces": traces})


def test_round_trip(tmp_path):
    stats = random_stats()
    save_stats(stats, tmp_path / "s")
    back = load_stats(tmp_path / "s")
    assert back.moe_layers == [1, 2, 3] and back.experts() == {1: 4, 2: 6, 3: 4}
    for l, st in stats.layers.items():
        got = back.layers[l]
        assert (got.num_experts, got.top_k, got.tokens, got.probe_tokens) == (st.num_experts, 2, 100.0, 10.0)
        for name in VECTOR_FIELDS + tuple(MATRIX_FIELDS):
            a, b = getattr(st, name), getattr(got, name)
            if a is None:
                assert b is None, name
            else:
                np.testing.assert_array_equal(b, a, err_msg=name)
        for derived in ("usage", "reap", "act_norm", "funcsim", "mean_output", "loo_err", "entropy"):
            np.testing.assert_array_equal(getattr(got, derived), getattr(st, derived))
    assert back.layers[3].trans is None
    assert back.num_clusters == K
    np.testing.assert_array_equal(back.seq_cluster, stats.seq_cluster)
    np.testing.assert_array_equal(back.seq_pooled, stats.seq_pooled)
    for key, value in stats.extra["traces"].items():
        np.testing.assert_array_equal(back.extra["traces"][key], value)
    assert back.manifest.model == stats.manifest.model and back.manifest.num_clusters == K
    assert back.manifest.model.experts == {1: 4, 2: 6, 3: 4} and back.manifest.model.family == "deepseek_v2"


def test_other_schema_version_is_refused(tmp_path):
    from raymoe.store import SCHEMA_VERSION

    save_stats(random_stats(), tmp_path / "s")
    man_path = tmp_path / "s" / "manifest.json"
    man = json.loads(man_path.read_text())
    assert man["schema_version"] == SCHEMA_VERSION == 2
    del man["schema_version"]  # a store written before versions existed is version 1
    man_path.write_text(json.dumps(man))
    with pytest.raises(StatsStoreError, match="schema version 1; this raymoe reads version 2"):
        load_stats(tmp_path / "s")


def test_files_are_plain_formats(tmp_path):
    save_stats(random_stats(), tmp_path / "s")
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == sorted(STORE_FILES)
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert {"model", "data", "calibration", "raymoe_version", "created"} <= set(man)
    experts = pq.read_table(tmp_path / "s" / "experts.parquet").to_pydict()
    assert len(experts["layer"]) == 4 + 6 + 4
    assert {"layer", "expert", *VECTOR_FIELDS} <= set(experts)
    mats = load_file(str(tmp_path / "s" / "matrices.safetensors"))
    assert mats["L1.trans_intensity_by_cluster"].shape == (K, 4, 6) and "L3.trans" not in mats
    assert mats["L2.probe_inputs"].dtype == np.float32 and mats["L2.coact"].dtype == np.float64
    seqs = pq.read_table(tmp_path / "s" / "sequences.parquet").to_pydict()
    assert seqs["seq"] == [0, 1, 2, 3, 4] and seqs["n_tokens"] == [16] * 5 and len(seqs["pooled"][0]) == H
    for p in (tmp_path / "s").iterdir():
        assert not p.read_bytes().startswith(b"\x80"), f"{p.name} looks pickled"


def test_write_is_atomic(tmp_path, monkeypatch):
    import raymoe.store.stats_store as store_io

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store_io, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_stats(random_stats(), tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_errors(tmp_path):
    save_stats(random_stats(), tmp_path / "s")
    with pytest.raises(StatsStoreError, match="already exists"):
        save_stats(random_stats(1), tmp_path / "s")
    save_stats(random_stats(1), tmp_path / "s", overwrite=True)
    assert load_stats(tmp_path / "s").layers[1].coact[0, 0] == random_stats(1).layers[1].coact[0, 0]
    with pytest.raises(StatsStoreError, match="does not exist"):
        load_stats(tmp_path / "nothing")
    (tmp_path / "s" / "experts.parquet").unlink()
    with pytest.raises(StatsStoreError, match="missing experts.parquet"):
        load_stats(tmp_path / "s")


def test_store_without_traces_round_trips(tmp_path):
    """A store whose stats carry no routing traces (e.g. synthetic ones) loads back."""
    from raymoe.methods.synthetic import synthetic_stats
    from raymoe.store import load_stats, save_stats

    cfg = dict(model_type="mixtral", num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=2,
               hidden_size=16, intermediate_size=8, hidden_act="silu")
    stats = synthetic_stats(cfg, seed=0, sequences=4, seq_len=8, clusters=2, traced_sequences=0)
    stats.extra.pop("traces", None)
    save_stats(stats, tmp_path / "s")
    back = load_stats(tmp_path / "s")
    assert back.extra["traces"]["experts"].shape[0] == 0
    assert back.moe_layers == stats.moe_layers
