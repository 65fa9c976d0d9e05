"""Calibration statistics: the in-memory contract (`schema`), the typed manifest (`manifest`) and the
on-disk stats store (`io`)."""

from raymoe.store.manifest import ModelFacts, StatsManifest, StatsStoreError
from raymoe.store.schema import MATRIX_FIELDS, SCHEMA_VERSION, VECTOR_FIELDS, CalibStats, LayerStats

__all__ = ["CalibStats", "LayerStats", "VECTOR_FIELDS", "MATRIX_FIELDS", "save_stats", "load_stats",
           "read_manifest", "StatsManifest", "ModelFacts", "StatsStoreError", "STORE_FILES", "SCHEMA_VERSION"]


def __getattr__(name: str):
    """The stats store's reader and writer (`raymoe.store.io`, which needs pyarrow) load on first use,
    so the in-memory contract imports with numpy and pydantic only."""
    if name in ("STORE_FILES", "load_stats", "read_manifest", "save_stats"):
        from raymoe.store import io

        return getattr(io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
