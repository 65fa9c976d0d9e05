"""Results: declared schema, one row per key, atomic write (nothing left behind on failure)."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from raymoe.errors import RaymoeError
from raymoe.eval import results as results_mod
from raymoe.eval.results import SCHEMA, read_results, rows_frame, write_results


def row(**kw):
    base = {"run": "r1", "variant": "v", "task": "arc_easy", "metric": "acc", "value": 0.5, "stderr": 0.1, "n": 10,
            "limit": None, "backend": "hf", "engine": "transformers 5.23.0", "worker": "hf-0", "attempt": 1,
            "wall_s": 1.5, "model_path": "/m", "model_type": "raymoe_mixtral", "family": "mixtral",
            "source_model": "/src", "method": "manual", "ratio": 0.25, "uniform": False, "experts_total": 21,
            "experts_per_layer": [4, 6, 8, 3], "config_sha256": "c", "plan_sha256": "p", "raymoe_version": "0.1.0",
            "created": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    return base | kw


def test_roundtrip_keeps_schema_and_values(tmp_path):
    rows = [row(), row(metric="acc_norm", value=0.25, stderr=None), row(variant="w", n=None)]
    path = write_results(tmp_path / "r1.parquet", rows)
    df = pl.read_parquet(path)
    assert df.schema == SCHEMA
    assert df.height == 3
    got = df.filter((pl.col("variant") == "v") & (pl.col("metric") == "acc_norm")).row(0, named=True)
    assert got["value"] == 0.25 and got["stderr"] is None and got["experts_per_layer"] == [4, 6, 8, 3]
    assert read_results(tmp_path).height == 3
    assert [p.name for p in tmp_path.iterdir()] == ["r1.parquet"]  # no temp files left


def test_duplicate_key_is_refused():
    with pytest.raises(RuntimeError, match="duplicate result rows"):
        rows_frame([row(), row(value=0.7)])


def test_existing_file_is_not_overwritten(tmp_path):
    write_results(tmp_path / "r.parquet", [row()])
    with pytest.raises(RaymoeError, match="already exists"):
        write_results(tmp_path / "r.parquet", [row(value=0.9)])
    assert pl.read_parquet(tmp_path / "r.parquet")["value"].to_list() == [0.5]
    write_results(tmp_path / "r.parquet", [row(value=0.9)], overwrite=True)
    assert pl.read_parquet(tmp_path / "r.parquet")["value"].to_list() == [0.9]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(self, path, *a, **kw):
        open(path, "wb").write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", boom)
    with pytest.raises(OSError, match="disk full"):
        results_mod.write_results(tmp_path / "r.parquet", [row()])
    assert list(tmp_path.iterdir()) == []
