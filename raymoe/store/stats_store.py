"""The stats store: one directory per calibration, written atomically, never pickled.

  manifest.json          `StatsManifest` (raymoe/store/manifest.py): model {path, hash, config (config.json),
                         model_type, family, experts, top_k, n_group, ...}, data {..., hash},
                         calibration {config}, run, raymoe_version, created, num_clusters, files,
                         schema_version
  experts.parquet        one row per (layer, expert): layer, expert, num_experts, top_k, tokens,
                         probe_tokens and the [E] sums of `VECTOR_FIELDS`
  matrices.safetensors   "L{layer}.{field}" for the matrix fields (float64 sums; probe_inputs, pooled_inputs float32)
  sequences.parquet      per calibration sequence: seq, cluster, n_tokens, pooled (list<float64>, [H])
  traces.parquet         sampled routing traces: seq, pos, layer, experts (list<int32>), weights (list<float32>)

`save_stats` writes into a temporary sibling and renames it when complete
(`raymoe.atomic.atomic_dir`); `load_stats` checks that every file is there, that the
store's `schema_version` is this raymoe's `SCHEMA_VERSION` (a store without one is version 1),
and validates the manifest (a store without the model config is upgraded from its model path,
or refused: `raymoe.store.manifest`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError
from safetensors.numpy import load_file, save_file

from raymoe.atomic import atomic_dir
from raymoe.store.manifest import StatsManifest, StatsStoreError, upgrade_manifest
from raymoe.store.calib_stats import MATRIX_FIELDS, SCHEMA_VERSION, VECTOR_FIELDS, CalibStats, LayerStats

__all__ = ["StatsStoreError", "save_stats", "load_stats", "read_manifest", "STORE_FILES"]

STORE_FILES = ("manifest.json", "experts.parquet", "matrices.safetensors", "sequences.parquet", "traces.parquet")


def _experts_table(stats: CalibStats) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("layer", "expert", "num_experts", "top_k", "tokens", "probe_tokens")}
    cols |= {name: [] for name in VECTOR_FIELDS}
    for l in stats.moe_layers:
        st = stats.layers[l]
        for e in range(st.num_experts):
            for k, v in (("layer", l), ("expert", e), ("num_experts", st.num_experts), ("top_k", st.top_k),
                         ("tokens", st.tokens), ("probe_tokens", st.probe_tokens)):
                cols[k].append(v)
            for name in VECTOR_FIELDS:
                cols[name].append(float(getattr(st, name)[e]))
    types = {"layer": pa.int32(), "expert": pa.int32(), "num_experts": pa.int32(), "top_k": pa.int32()}
    return pa.table({k: pa.array(v, type=types.get(k, pa.float64())) for k, v in cols.items()})


def _sequences_table(stats: CalibStats, seq_len: int) -> pa.Table:
    n = 0 if stats.seq_cluster is None else len(stats.seq_cluster)
    pooled = stats.seq_pooled if stats.seq_pooled is not None else np.zeros((n, 0))
    return pa.table({
        "seq": pa.array(np.arange(n), pa.int64()),
        "cluster": pa.array(np.asarray(stats.seq_cluster if n else [], dtype=np.int64), pa.int64()),
        "n_tokens": pa.array(np.full(n, seq_len), pa.int64()),
        "pooled": pa.array([row.astype(np.float64) for row in pooled], pa.list_(pa.float64())),
    })


def _traces_table(traces: dict | None) -> pa.Table:
    t = traces or {"seq": [], "pos": [], "layer": [], "experts": np.zeros((0, 0)), "weights": np.zeros((0, 0))}
    return pa.table({
        "seq": pa.array(np.asarray(t["seq"], np.int64)), "pos": pa.array(np.asarray(t["pos"], np.int64)),
        "layer": pa.array(np.asarray(t["layer"], np.int64)),
        "experts": pa.array([r.astype(np.int32) for r in np.asarray(t["experts"])], pa.list_(pa.int32())),
        "weights": pa.array([r.astype(np.float32) for r in np.asarray(t["weights"])], pa.list_(pa.float32())),
    })


def save_stats(stats: CalibStats, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `stats` as a stats directory at `path` (atomically)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise StatsStoreError(f"{path} already exists (choose another --out, or overwrite)")
    matrices: dict[str, np.ndarray] = {}
    for l, st in stats.layers.items():
        for name in MATRIX_FIELDS:
            value = getattr(st, name)
            if value is not None:
                dtype = np.float32 if name in ("probe_inputs", "pooled_inputs") else np.float64
                matrices[f"L{l}.{name}"] = np.ascontiguousarray(value, dtype=dtype)
    seq_len = int(stats.manifest.data.get("seq_len", 0))
    manifest = stats.manifest.model_copy(update={"num_clusters": int(stats.num_clusters), "files": list(STORE_FILES),
                                                 "schema_version": SCHEMA_VERSION}).to_json()
    with atomic_dir(path, overwrite=overwrite) as tmp:
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        pq.write_table(_experts_table(stats), tmp / "experts.parquet")
        save_file(matrices, str(tmp / "matrices.safetensors"), metadata={"format": "raymoe-stats"})
        pq.write_table(_sequences_table(stats, seq_len), tmp / "sequences.parquet")
        pq.write_table(_traces_table(stats.extra.get("traces")), tmp / "traces.parquet")
    return path


def _read_traces(path: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(path)
    experts = t.column("experts").to_pylist()
    if not experts:  # a store written without traces
        return {"seq": np.zeros(0, np.int64), "pos": np.zeros(0, np.int64), "layer": np.zeros(0, np.int64),
                "experts": np.zeros((0, 0), np.int32), "weights": np.zeros((0, 0), np.float32)}
    return {"seq": t.column("seq").to_numpy(), "pos": t.column("pos").to_numpy(),
            "layer": t.column("layer").to_numpy(),
            "experts": np.asarray(experts, dtype=np.int32).reshape(len(experts), -1),
            "weights": np.asarray(t.column("weights").to_pylist(), dtype=np.float32).reshape(len(experts), -1)}


def read_manifest(path: str | Path) -> StatsManifest:
    """The validated manifest of the stats directory `path` (StatsStoreError saying what is wrong)."""
    path = Path(path)
    try:
        raw = json.loads((path / "manifest.json").read_text())
    except json.JSONDecodeError as err:
        raise StatsStoreError(f"{path}/manifest.json: invalid JSON ({err.msg})") from None
    version = raw.get("schema_version", 1) if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise StatsStoreError(f"{path} holds statistics of schema version {version}; this raymoe reads version "
                              f"{SCHEMA_VERSION} (calibrate again)")
    try:
        return StatsManifest.model_validate(upgrade_manifest(raw, path))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise StatsStoreError(f"{path}/manifest.json: {where}: {first['msg']}") from None


def load_stats(path: str | Path) -> CalibStats:
    """Read a stats directory written by `save_stats`."""
    path = Path(path)
    if not path.is_dir():
        raise StatsStoreError(f"stats directory {str(path)!r} does not exist")
    missing = [f for f in STORE_FILES[:4] if not (path / f).is_file()]
    if missing:
        raise StatsStoreError(f"{path} is not a complete stats directory (missing {', '.join(missing)})")
    manifest = read_manifest(path)
    rows = pq.read_table(path / "experts.parquet").to_pydict()
    matrices = load_file(str(path / "matrices.safetensors"))
    layers: dict[int, LayerStats] = {}
    for l in sorted(set(rows["layer"])):
        pick = [i for i, v in enumerate(rows["layer"]) if v == l]
        pick.sort(key=lambda i: rows["expert"][i])
        first = pick[0]
        st = LayerStats(layer=int(l), num_experts=int(rows["num_experts"][first]), top_k=int(rows["top_k"][first]),
                        tokens=float(rows["tokens"][first]), probe_tokens=float(rows["probe_tokens"][first]))
        for name in VECTOR_FIELDS:
            setattr(st, name, np.asarray([rows[name][i] for i in pick], dtype=np.float64))
        for name in MATRIX_FIELDS:
            setattr(st, name, matrices.get(f"L{l}.{name}"))
        layers[int(l)] = st
    seqs = pq.read_table(path / "sequences.parquet")
    pooled = seqs.column("pooled").to_pylist()
    seq_pooled = np.asarray(pooled, dtype=np.float64) if pooled and len(pooled[0]) else None
    extra = {}
    if (path / "traces.parquet").is_file():
        extra["traces"] = _read_traces(path / "traces.parquet")
    return CalibStats(manifest=manifest, layers=layers, num_clusters=manifest.num_clusters,
                      seq_cluster=seqs.column("cluster").to_numpy().astype(np.int64), seq_pooled=seq_pooled,
                      extra=extra)
