"""Read a safetensors checkpoint by tensor name without loading the model.

Headers of every shard are parsed up front (cheap), so a truncated or corrupt
shard fails before any work, and a caller can load exactly the tensors of the
layers it owns.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from raymoe.errors import CheckpointError

__all__ = ["SafetensorsCheckpoint", "TensorInfo", "model_hash", "INDEX_FILE", "SINGLE_FILE", "DTYPE_SIZES", "TORCH_DTYPES"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype code ("F32", "BF16", ...)
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(file: Path) -> tuple[dict, int]:
    """Return (header dict, data offset) of one safetensors file, validated against its size."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file}: not a safetensors file (truncated header)")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size:
            raise CheckpointError(f"{file}: corrupt or truncated safetensors header")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{file}: corrupt safetensors header") from None
    data_start = 8 + n
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if ends and data_start + max(ends) > size:
        raise CheckpointError(
            f"{file}: truncated safetensors file ({size} bytes, header needs {data_start + max(ends)})"
        )
    return header, data_start


class SafetensorsCheckpoint:
    """Name-addressed, lazily read view of a (possibly sharded) safetensors checkpoint."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index = self.path / INDEX_FILE
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (self.path / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
        else:
            raise CheckpointError(f"{str(self.path)!r} holds no safetensors weights")
        self.infos: dict[str, TensorInfo] = {}
        self.files: list[Path] = []
        for fname in files:
            file = self.path / fname
            if not file.is_file():
                raise CheckpointError(f"{file}: shard named in the index is missing")
            header, data_start = read_header(file)
            self.files.append(file)
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                a, b = meta["data_offsets"]
                self.infos[name] = TensorInfo(name, meta["dtype"], tuple(meta["shape"]), file,
                                              data_start + a, data_start + b)

    @property
    def names(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def infos_in(self, file: Path) -> list[TensorInfo]:
        """Tensors of one shard in on-disk order."""
        return sorted((i for i in self.infos.values() if i.file == file), key=lambda i: i.start)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into its own memory (a plain read, no mmap: nothing stays resident after)."""
        info = self.infos.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        buf = bytearray(info.nbytes)
        with open(info.file, "rb") as fh:
            fh.seek(info.start)
            if fh.readinto(buf) != info.nbytes:
                raise CheckpointError(f"{info.file}: truncated while reading {name}")
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=TORCH_DTYPES[info.dtype])
        return torch.frombuffer(buf, dtype=TORCH_DTYPES[info.dtype]).reshape(info.shape)

    def load(self, names) -> dict[str, torch.Tensor]:
        return {n: self.get(n) for n in names}

    def read_bytes(self, name: str) -> bytes:
        info = self.infos[name]
        with open(info.file, "rb") as fh:
            fh.seek(info.start)
            return fh.read(info.nbytes)

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())


def model_hash(path: str | Path, ckpt: SafetensorsCheckpoint) -> str:
    """SHA-256 of config.json and every tensor's name, dtype, shape and byte range (not the bytes)."""
    h = hashlib.sha256((Path(path) / "config.json").read_bytes())
    for name in sorted(ckpt.infos):
        i = ckpt.infos[name]
        h.update(json.dumps([name, i.dtype, list(i.shape), i.file.name, i.start, i.end]).encode())
    return h.hexdigest()
