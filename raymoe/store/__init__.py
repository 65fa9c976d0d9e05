"""Calibration statistics: the in-memory contract (`schema`) and the on-disk stats store (`io`)."""

from raymoe.store.io import STORE_FILES, StatsStoreError, load_stats, save_stats
from raymoe.store.schema import MATRIX_FIELDS, SCHEMA_VERSION, VECTOR_FIELDS, CalibStats, LayerStats

__all__ = ["CalibStats", "LayerStats", "VECTOR_FIELDS", "MATRIX_FIELDS", "save_stats", "load_stats",
           "StatsStoreError", "STORE_FILES", "SCHEMA_VERSION"]
