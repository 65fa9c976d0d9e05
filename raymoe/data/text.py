"""Calibration text: named corpora or files, tokenised into N samples of L tokens.

A source is a named corpus (`wiki`, `c4`, `code`, `tiny`, ... from the
exllamav2 package data, or `wiki_calib` / `wiki_heldout`, the article split of
`raymoe.data.splits`), a UTF-8 `.txt` file, or a `.jsonl` file (one JSON
object per line with a `text` field, or one JSON string per line). The whole
text is tokenised once (no special tokens), cut into consecutive windows of
L tokens, and N windows are drawn without replacement by a seeded permutation;
the windows keep their corpus order. The data hash is the SHA-256 of the
resulting token ids (int32, little endian) plus the sampling parameters, so it
changes with the text, the tokenizer, N, L or the seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raymoe.data.packages import NAMED_CORPORA, named_corpus_path
from raymoe.data.splits import SPLIT_CORPORA, split_corpus_text
from raymoe.errors import DataError

__all__ = ["DataError", "TextSource", "CalibData", "load_text", "sample_windows", "calibration_data"]


@dataclass(frozen=True)
class TextSource:
    name: str  # what the user gave: a corpus name or a path
    kind: str  # "named" | "txt" | "jsonl"
    path: str  # resolved file
    text: str = field(repr=False)


@dataclass(frozen=True)
class CalibData:
    ids: np.ndarray = field(repr=False)  # [N, L] int64 token ids
    hash: str
    info: dict  # source, kind, samples, seq_len, seed, corpus_tokens

    @property
    def samples(self) -> int:
        return int(self.ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])


def _read_jsonl(path: Path) -> str:
    parts: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if isinstance(obj, str):
            parts.append(obj)
        elif isinstance(obj, dict) and isinstance(obj.get("text"), str):
            parts.append(obj["text"])
        else:
            raise DataError(f"{path}:{lineno}: expected a JSON string or an object with a string 'text' field")
    return "\n\n".join(parts)


def load_text(source: str | Path) -> TextSource:
    """Read calibration text from a corpus name, a .txt or a .jsonl file."""
    src = str(source)
    if src in NAMED_CORPORA:
        path, kind = named_corpus_path(src), "named"
        text = path.read_text(encoding="utf-8")
    elif src in SPLIT_CORPORA:
        path, kind = named_corpus_path(SPLIT_CORPORA[src][0]), "named"
        text = split_corpus_text(src)
    else:
        path = Path(src)
        if not path.is_file():
            known = ", ".join([*NAMED_CORPORA, *SPLIT_CORPORA])
            raise DataError(f"calibration data {src!r} is neither a corpus name ({known}) nor an existing file")
        kind = "jsonl" if path.suffix.lower() == ".jsonl" else "txt"
        try:
            text = _read_jsonl(path) if kind == "jsonl" else path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise DataError(f"calibration text {src!r} is empty")
    return TextSource(name=src, kind=kind, path=str(Path(path).resolve()), text=text)


def sample_windows(ids: np.ndarray, samples: int, seq_len: int, seed: int) -> np.ndarray:
    """Draw `samples` distinct windows of `seq_len` consecutive tokens -> [N, L] int64."""
    if samples < 1 or seq_len < 1:
        raise DataError(f"samples and seq_len must be >= 1 (got {samples}, {seq_len})")
    n_tokens = int(ids.shape[0])
    if n_tokens < seq_len:
        raise DataError(f"calibration text is too short: {n_tokens} tokens, fewer than seq_len {seq_len}")
    windows = n_tokens // seq_len
    if windows < samples:
        raise DataError(
            f"calibration text is too short: {n_tokens} tokens give {windows} windows of {seq_len}, "
            f"{samples} samples asked (use fewer samples or a shorter seq_len)"
        )
    pick = np.sort(np.random.default_rng(seed).permutation(windows)[:samples])  # [N]
    starts = pick * seq_len
    return np.stack([ids[s : s + seq_len] for s in starts]).astype(np.int64)  # [N, L]


def data_hash(ids: np.ndarray, seed: int) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(ids, dtype="<i4").tobytes())
    h.update(json.dumps({"shape": list(ids.shape), "seed": seed}).encode())
    return h.hexdigest()


def calibration_data(source: str | Path, tokenizer, samples: int, seq_len: int, seed: int = 0) -> CalibData:
    """Tokenise a source with `tokenizer` (a transformers tokenizer) into N x L samples."""
    text = load_text(source)
    ids = np.asarray(tokenizer(text.text, add_special_tokens=False)["input_ids"], dtype=np.int64)  # [n_tokens]
    windows = sample_windows(ids, samples, seq_len, seed)
    info = {"source": text.name, "kind": text.kind, "path": text.path, "samples": samples, "seq_len": seq_len,
            "seed": seed, "corpus_tokens": int(ids.shape[0])}
    return CalibData(ids=windows, hash=data_hash(windows, seed), info=info)
