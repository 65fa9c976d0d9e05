"""Streaming safetensors writer: header first (shapes known in advance), then tensor bytes in order.

Peak memory is one tensor (computed tensors) or one copy buffer (tensors
copied byte for byte from a source shard), never a whole shard.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from raymoe.moe.safetensors_files import DTYPE_SIZES, TORCH_DTYPES, TensorInfo

__all__ = ["OutTensor", "ShardWriter"]

_COPY_CHUNK = 16 << 20  # bytes per step when copying a tensor verbatim


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
        self._fh.write(memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy()))

    def copy_from(self, name: str, src: TensorInfo) -> None:
        """Copy a source tensor's bytes verbatim (same dtype and shape)."""
        t = self._expect(name)
        assert src.nbytes == t.nbytes, f"{name}: size mismatch"
        self._fh.flush()
        out_fd = self._fh.fileno()
        with open(src.file, "rb") as fh:
            offset, left = src.start, src.nbytes
            while left:  # kernel-side copy: no user-space buffer
                n = os.copy_file_range(fh.fileno(), out_fd, min(left, _COPY_CHUNK), offset)
                if n == 0:
                    raise OSError(f"{src.file}: unexpected end of file")
                offset, left = offset + n, left - n

    def close(self) -> None:
        assert self._next == len(self.tensors), f"{self.path}: {len(self.tensors) - self._next} tensors unwritten"
        self._fh.close()
