"""Calibration statistics: the in-memory contract (`calib_stats`), the typed manifest (`manifest`)
and the on-disk stats store (`stats_store`)."""

from raymoe.store.manifest import ModelFacts, StatsManifest, StatsStoreError
from raymoe.store.calib_stats import MATRIX_FIELDS, SCHEMA_VERSION, VECTOR_FIELDS, CalibStats, LayerStats

__all__ = ["CalibStats", "LayerStats", "VECTOR_FIELDS", "MATRIX_FIELDS", "save_stats", "load_stats",
           "read_manifest", "StatsManifest", "ModelFacts", "StatsStoreError", "STORE_FILES", "SCHEMA_VERSION"]


def __getattr__(name: str):
    """The stats store's reader and writer (`raymoe.store.stats_store`, which needs pyarrow) load on first use,
    so the in-memory contract imports with numpy and pydantic only."""
    if name in ("STORE_FILES", "load_stats", "read_manifest", "save_stats"):
        from raymoe.store import stats_store

        return getattr(stats_store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
