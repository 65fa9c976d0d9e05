"""Eval results: one Parquet row per (run, variant, task, metric), declared schema, atomic write.

Rows carry the value and its standard error (lm-eval's for accuracies; a
bootstrap over documents for perplexities and fidelity metrics), the number
of documents scored, the per-item sums behind the value where it is a ratio of
sums (so two variants scored on the same items can be compared pairwise), the backend and engine version, the
variant's provenance (path, source model, method, ratio, per-layer expert
counts, parameter counts and bytes, config/plan hashes) and the wall time of the (variant, task) job.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from raymoe.errors import RaymoeError
from raymoe.atomic import atomic_write_parquet

__all__ = ["SCHEMA", "KEY", "rows_frame", "write_results", "read_results", "conform"]

#: one row per KEY
KEY = ("run", "variant", "task", "metric")

SCHEMA = pl.Schema({
    "run": pl.String,
    "variant": pl.String,
    "task": pl.String,
    "metric": pl.String,
    "value": pl.Float64,
    "stderr": pl.Float64,
    "n": pl.Int64,  # documents scored
    "limit": pl.Int64,  # requested limit (null: the full set)
    "backend": pl.String,
    "engine": pl.String,  # e.g. "vllm 0.32.0"
    "worker": pl.String,
    "attempt": pl.Int32,  # 1, or more when the pair was re-run after a worker died
    "wall_s": pl.Float64,  # the (variant, task) job, engine load included
    "model_path": pl.String,
    "model_type": pl.String,
    "family": pl.String,
    "source_model": pl.String,
    "method": pl.String,
    "ratio": pl.Float64,
    "uniform": pl.Boolean,
    "experts_total": pl.Int64,
    "experts_per_layer": pl.List(pl.Int64),
    "params_routed": pl.Int64,  # parameters of the routed experts kept
    "params_total": pl.Int64,  # every parameter of the checkpoint
    "checkpoint_bytes": pl.Int64,  # tensor bytes of the checkpoint
    "reference": pl.String,  # fidelity tasks: the reference checkpoint
    "chance": pl.Float64,  # multiple-choice accuracy: mean over items of 1 / choices
    "transform": pl.String,  # value = f(sum item_num / sum item_den), f in raymoe.eval.uncertainty.TRANSFORMS
    "items": pl.List(pl.Int64),  # scored item (document) ids, for paired comparisons
    "item_num": pl.List(pl.Float64),
    "item_den": pl.List(pl.Float64),
    "config_sha256": pl.String,
    "plan_sha256": pl.String,
    "virtual": pl.Boolean,  # scored on the source model with the plan's experts masked (quality only)
    "plan_path": pl.String,  # the plan of a virtual variant
    "raymoe_version": pl.String,
    "created": pl.Datetime("us", "UTC"),
})


def rows_frame(rows: list[dict]) -> pl.DataFrame:
    """Rows -> DataFrame with exactly SCHEMA; duplicate keys are a bug and raise."""
    df = pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)
    dup = df.group_by(list(KEY)).len().filter(pl.col("len") > 1)
    if dup.height:
        raise RuntimeError(f"duplicate result rows for {dup.select(KEY).rows()[:3]}")
    return df.sort(list(KEY))


def write_results(path: str | Path, rows: list[dict], *, overwrite: bool = False) -> Path:
    """Write rows to `path` (a .parquet file) atomically: temp file in the same directory, then rename."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise RaymoeError(f"results file {path} already exists (choose another --out, or --overwrite)")
    return atomic_write_parquet(path, rows_frame(rows))


def read_results(path: str | Path) -> pl.DataFrame:
    """Read results written by `write_results`: a file, or every .parquet file in a directory."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise RaymoeError(f"no results in {path}")
    return pl.concat([conform(pl.read_parquet(f)) for f in files])


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """A frame with exactly SCHEMA: columns added since it was written come back null."""
    return df.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in SCHEMA.items() if c not in df.columns]) \
        .select(list(SCHEMA)).cast(dict(SCHEMA))
