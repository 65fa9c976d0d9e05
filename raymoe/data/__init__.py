"""Calibration text and data packages."""

from raymoe.data.packages import DATA_PACKAGES, NAMED_CORPORA, named_corpus_path, package_dir

__all__ = ["DATA_PACKAGES", "NAMED_CORPORA", "named_corpus_path", "package_dir"]
