"""Streaming safetensors writer: header first (shapes known in advance), then tensor bytes in order.

Peak memory is one tensor (computed tensors) or one copy buffer (tensors
copied byte for byte from a source shard), never a whole shard.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from raymoe.moe.safetensors_files import DTYPE_SIZES, TensorInfo

__all__ = ["OutTensor", "ShardWriter", "TORCH_DTYPES"]

TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}

_COPY_CHUNK = 64 << 20  # bytes per read when copying a tensor verbatim


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


class ShardWriter:
    """Write one safetensors file whose tensors are declared up front and then written in that order."""

    def __init__(self, path: Path, tensors: list[OutTensor], metadata: dict[str, str] | None = None):
        self.path = path
        self.tensors = tensors
        header: dict = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for t in tensors:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes
        self._fh = open(path, "wb")
        self._fh.write(len(raw).to_bytes(8, "little"))
        self._fh.write(raw)
        self._next = 0

    def _expect(self, name: str) -> OutTensor:
        t = self.tensors[self._next]
        assert t.name == name, f"writing {name} out of order (expected {t.name})"
        self._next += 1
        return t

    def write_tensor(self, name: str, tensor: torch.Tensor) -> None:
        t = self._expect(name)
        assert tuple(tensor.shape) == t.shape and tensor.dtype == TORCH_DTYPES[t.dtype], f"{name}: shape/dtype"
        self._fh.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())

    def copy_from(self, name: str, src: TensorInfo) -> None:
        """Copy a source tensor's bytes verbatim (same dtype and shape)."""
        t = self._expect(name)
        assert src.nbytes == t.nbytes, f"{name}: size mismatch"
        with open(src.file, "rb") as fh:
            fh.seek(src.start)
            left = src.nbytes
            while left:
                chunk = fh.read(min(left, _COPY_CHUNK))
                assert chunk, f"{src.file}: unexpected end of file"
                self._fh.write(chunk)
                left -= len(chunk)

    def close(self) -> None:
        assert self._next == len(self.tensors), f"{self.path}: {len(self.tensors) - self._next} tensors unwritten"
        self._fh.close()
