"""Calibration statistics: the in-memory contract (`schema`), the typed manifest (`manifest`) and the
on-disk stats store (`io`)."""

from raymoe.store.io import STORE_FILES, load_stats, read_manifest, save_stats
from raymoe.store.manifest import ModelFacts, StatsManifest, StatsStoreError
from raymoe.store.schema import MATRIX_FIELDS, SCHEMA_VERSION, VECTOR_FIELDS, CalibStats, LayerStats

__all__ = ["CalibStats", "LayerStats", "VECTOR_FIELDS", "MATRIX_FIELDS", "save_stats", "load_stats",
           "read_manifest", "StatsManifest", "ModelFacts", "StatsStoreError", "STORE_FILES", "SCHEMA_VERSION"]
