"""Streaming safetensors writer: header first (shapes known in advance), then tensor bytes in order.

Every output byte is written by one background thread (`WriteBehind`): the caller queues verbatim copies
(kernel-side `copy_file_range` at explicit offsets; adjacent source ranges are coalesced into one call) and
computed blocks (`pwrite`), and goes on computing while earlier ones are written. A queued block is a view
of the caller's buffer: `WriteBehind.mark()` returns an event set once everything queued before it is
written, so the caller knows when it may reuse that buffer. Peak memory is the caller's buffers plus the
blocks in the (bounded) queue, never a whole shard.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from raymoe.moe.safetensors_files import DTYPE_SIZES, TORCH_DTYPES, TensorInfo

__all__ = ["OutTensor", "ShardWriter", "WriteBehind", "copy_phase", "PAGE"]

_COPY_CHUNK = 1 << 30  # bytes per copy_file_range call (a coalesced run may be longer)
_QUEUE = 16  # queued writes before submit blocks
PAGE = 4096  # copy_file_range is ~1.3x faster when source and destination offsets agree mod the page size


def copy_phase(copies: list[tuple[int, int, int]]) -> int:
    """The data-section phase (mod PAGE, a multiple of 8) that puts the most copied bytes at the same page
    offset as in their source; copies: (source byte offset, offset in the output data section, bytes)."""
    weight: dict[int, int] = {}
    for src, rel, n in copies:
        phase = (src - rel) % PAGE
        if phase % 8 == 0:
            weight[phase] = weight.get(phase, 0) + n
    return max(weight, key=lambda p: (weight[p], -p)) if weight else 0


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def _copy_range(src: Path, src_off: int, fd: int, dst_off: int, n: int) -> None:
    in_fd = os.open(src, os.O_RDONLY)
    try:
        while n:  # kernel-side copy: no user-space buffer
            done = os.copy_file_range(in_fd, fd, min(n, _COPY_CHUNK), src_off, dst_off)
            if done == 0:
                raise OSError(f"{src}: unexpected end of file")
            src_off, dst_off, n = src_off + done, dst_off + done, n - done
    finally:
        os.close(in_fd)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class WriteBehind:
    """One thread performing queued writes in order; errors surface at the next submit, mark or close."""

    def __init__(self):
        self._q: queue.Queue = queue.Queue(maxsize=_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="raymoe-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, args, always = item
            if self._error is None or always:  # after a failure, only closes and marks still run
                try:
                    fn(*args)
                except BaseException as exc:  # reported to the submitting thread
                    self._error = self._error or exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, fn, *args, always: bool = False) -> None:
        """Queue fn(*args); `always`: run it even after an earlier write failed (closes, marks)."""
        if not always:
            self._check()
        self._q.put((fn, args, always))

    def mark(self) -> threading.Event:
        """An event set once every write queued so far is done (or has failed)."""
        ev = threading.Event()
        self.submit(ev.set, always=True)
        return ev

    def close(self, *, check: bool = True) -> None:
        """Wait for every queued write and stop the thread; then raise the first write error (if `check`)."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
        if check:
            self._check()


class ShardWriter:
    """Write one safetensors file whose tensors are declared up front and then written in that order."""

    def __init__(self, path: Path, tensors: list[OutTensor], metadata: dict[str, str] | None = None,
                 io: WriteBehind | None = None, data_phase: int = 0):
        """`data_phase`: the data section starts at an offset = data_phase (mod PAGE) (a multiple of 8), by
        padding the header with spaces; see `copy_phase`."""
        assert data_phase % 8 == 0 and 0 <= data_phase < PAGE, data_phase
        self.path = path
        self.tensors = tensors
        header: dict = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for t in tensors:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((data_phase - 8 - len(raw)) % PAGE)  # data section at data_phase mod PAGE (8-aligned)
        self._own_io = io is None
        self._io = io or WriteBehind()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _pwrite_all(self._fd, memoryview(len(raw).to_bytes(8, "little") + raw), 0)
        self._pos = 8 + len(raw)  # file offset of the next byte to write
        self._next = 0
        self._left = 0  # bytes of the current computed tensor not yet written
        self._run: list | None = None  # pending coalesced copy [src file, src offset, dst offset, bytes]

    def _expect(self, name: str) -> OutTensor:
        assert self._left == 0, f"{self.tensors[self._next - 1].name}: {self._left} bytes unwritten"
        t = self.tensors[self._next]
        assert t.name == name, f"writing {name} out of order (expected {t.name})"
        self._next += 1
        return t

    def _flush_run(self) -> None:
        if self._run is not None:
            src, src_off, dst_off, n = self._run
            self._io.submit(_copy_range, src, src_off, self._fd, dst_off, n)
            self._run = None

    def copy_from(self, name: str, src: TensorInfo) -> None:
        """Copy a source tensor's bytes verbatim (same dtype and shape); runs of adjacent tensors are one copy."""
        t = self._expect(name)
        assert src.nbytes == t.nbytes, f"{name}: size mismatch"
        run = self._run
        if run is not None and run[0] == src.file and run[1] + run[3] == src.start:
            run[3] += src.nbytes
        else:
            self._flush_run()
            self._run = [src.file, src.start, self._pos, src.nbytes]
        self._pos += src.nbytes

    def begin(self, name: str) -> None:
        """Start a computed tensor, whose bytes follow through `write_block` in order."""
        t = self._expect(name)
        self._flush_run()
        self._left = t.nbytes

    def write_block(self, block: torch.Tensor) -> None:
        """Queue the next bytes of the current tensor. `block` must stay unchanged until a later `mark()`."""
        t = self.tensors[self._next - 1]
        assert block.dtype == TORCH_DTYPES[t.dtype], f"{t.name}: dtype"
        data = memoryview(block.contiguous().view(-1).view(torch.uint8).numpy())
        assert len(data) <= self._left, f"{t.name}: more bytes than its shape"
        self._io.submit(_pwrite_all, self._fd, data, self._pos)
        self._pos += len(data)
        self._left -= len(data)

    def write_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Queue a whole computed tensor (not to be changed until a later `mark()`)."""
        t = self.tensors[self._next]
        assert tuple(tensor.shape) == t.shape and tensor.dtype == TORCH_DTYPES[t.dtype], f"{name}: shape/dtype"
        self.begin(name)
        self.write_block(tensor)

    def mark(self) -> threading.Event:
        """An event set once everything queued so far (by any writer on this thread) is written."""
        self._flush_run()
        return self._io.mark()

    def close(self) -> None:
        """Queue the remaining copies and the file's close; with its own thread, wait for them."""
        assert self._next == len(self.tensors) and self._left == 0, \
            f"{self.path}: {len(self.tensors) - self._next} tensors unwritten"
        self._flush_run()
        self._release(check=True)

    def _release(self, check: bool) -> None:
        if self._fd is not None:
            self._io.submit(os.close, self._fd, always=True)
            self._fd = None
            if self._own_io:
                self._io.close(check=check)

    def abandon(self) -> None:
        """Stop writing this file (its content stays incomplete): queue its close, raise nothing."""
        self._run = None
        self._release(check=False)
