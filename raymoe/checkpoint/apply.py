"""Apply a prune plan to a safetensors checkpoint, streaming tensor by tensor.

Pruned layer l keeps experts keep[0..n-1] (source indices) as new experts
0..n-1. Expert tensors are renamed (bytes copied verbatim), router rows and
the correction bias are sliced; a merge group's target becomes
W = sum_i w_i P_i(W_{m_i}) for expert weights, P_i the member's neuron
permutation from the plan's alignment (raymoe/plan/alignment.py: rows of
gate/up, columns of down; identity for the target and without an alignment),
and r = sum_i w_i r_{m_i} for router rows and correction bias (never permuted),
all computed in float32. Members are read into one reused buffer and added to one
reused float32 sum in blocks of rows (a permuted member gathered block by block,
acc[i] += w W_m[pi[i]]), so a merge holds the sum, one member's bytes and a block
at a time, and touches no fresh pages. The torch ops run on one thread: on the shared 2-core machine a
4.7 MB float32 add took 14 ms on 2 threads and 0.9 ms on 1. Output I/O runs behind on its own thread
(writer.WriteBehind): verbatim copies and the final blocks of a merged tensor are queued as soon as they
are known (each block while the next is being summed), and the sum's buffer is reused only once its
blocks are written; the next tensor's first member is read meanwhile. Uniform results get the stock
config with the new count; mixed counts get raymoe's variable-expert
architecture (raymoe/moe/variable.py). Output is written to a temporary
directory and renamed when complete; every check (plan, permutations, shard
headers, output path) runs before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import contextlib
import math
import os
import threading

import torch
from tqdm.auto import tqdm

from raymoe.checkpoint.writer import OutTensor, ShardWriter, WriteBehind, copy_phase
from raymoe.errors import CheckpointError
from raymoe.atomic import atomic_dir
from raymoe.moe.safetensors_files import INDEX_FILE, SINGLE_FILE, TORCH_DTYPES, SafetensorsCheckpoint, TensorInfo
from raymoe.moe.model_spec import MoeModelSpec, TensorRole
from raymoe.moe.variable import ensure_registered, stock_config_dict, variable_config_dict
from raymoe.plan.prune_plan import LayerPlan, PrunePlan

__all__ = ["apply_plan", "pruned_config"]

_WEIGHT_FILES = (INDEX_FILE, "config.json")
_BLOCK = 1 << 20  # bytes of one gathered block when adding a permuted member
_EMIT = 4 << 20  # bytes of float32 sum per queued write: fewer, larger writes hand the GIL over less often


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _write_behind():
    """A WriteBehind thread, closed (every queued write done) on leaving; write errors raise there."""
    io = WriteBehind()
    try:
        yield io
    except BaseException:
        io.close(check=False)
        raise
    io.close()


def pruned_config(cfg: dict, spec: MoeModelSpec, counts: dict[int, int]) -> dict:
    """Config dict of the pruned model: stock when all MoE layers share one count, else variable."""
    if len(set(counts.values())) == 1:
        out = stock_config_dict(cfg)
        n = next(iter(counts.values()))
        for key in spec.arch.count_keys:
            if key in out or key == spec.arch.count_keys[0]:
                out[key] = n
        return out
    return variable_config_dict(cfg, counts)


class _LayerMap:
    """Source -> pruned index mapping of one layer (and the inverse permutations of its merge members)."""

    def __init__(self, lp: LayerPlan, perms: dict | None = None):
        self.new_index = {e: j for j, e in enumerate(lp.keep)}
        self.merge = {g.target: g for g in lp.merges}
        self.keep = lp.keep
        self.perm = {e: torch.as_tensor(p) for e, p in (perms or {}).items()}  # pi [I]

    def sources(self, j: int) -> list[tuple[int, float]]:
        """(source expert, weight) pairs that make pruned expert j."""
        e = self.keep[j]
        g = self.merge.get(e)
        return [(e, 1.0)] if g is None else list(zip(g.members, g.weights))


class _Scratch:
    """Buffers reused from one merged tensor to the next (one member's bytes, the float32 sum, one gathered
    block): no allocation, so no fresh pages, inside a merge. `acc_busy`: set once the queued writes of the
    last sum are done (None: the sum's buffer is free)."""

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}
        self.acc_busy: threading.Event | None = None

    def _buf(self, key: str, nbytes: int) -> torch.Tensor:
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < nbytes:
            buf = self._bufs[key] = torch.empty(nbytes, dtype=torch.uint8)
        return buf[:nbytes]

    def read(self, info: TensorInfo, key: str = "raw") -> torch.Tensor:
        """The tensor read into the reused buffer `key` (valid until the next read into it)."""
        view = self._buf(key, info.nbytes)
        fd = os.open(info.file, os.O_RDONLY)
        try:
            if os.preadv(fd, [memoryview(view.numpy())], info.start) != info.nbytes:
                raise CheckpointError(f"{info.file}: truncated while reading {info.name}")
        finally:
            os.close(fd)
        return view.view(TORCH_DTYPES[info.dtype]).view(info.shape)

    def tensor(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        return self._buf(key, n * dtype.itemsize).view(dtype).view(shape)

    def acc(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The float32 sum's buffer, once the writes queued from its last use are done."""
        if self.acc_busy is not None:
            self.acc_busy.wait()
            self.acc_busy = None
        return self.tensor("acc", shape, torch.float32)


def _accumulate(scratch: _Scratch, acc: torch.Tensor, x: torch.Tensor, perm: torch.Tensor | None, axis: int | None,
                w: float, emit=None) -> None:
    """acc += w P(x): acc[i] += w x[pi[i]] (axis 0) or acc[:, i] += w x[:, pi[i]] (axis 1), gathered in row
    blocks of about _BLOCK bytes into a reused buffer; P = identity without perm. emit(acc[a:b]) is called
    once rows a..b-1 are summed, every ~_EMIT bytes (with emit, an unpermuted add runs in the same blocks; the sums are elementwise, so
    the result is the same)."""
    if (perm is None or axis is None) and emit is None:
        acc.add_(x, alpha=w)
        return
    row = x[0].numel() if x.dim() > 1 else 1
    rows = max(1, _BLOCK // max(1, row * x.element_size()))
    done = 0  # rows emitted so far
    for r in range(0, x.shape[0], rows):
        n = min(rows, x.shape[0] - r)
        if perm is None or axis is None:
            acc[r:r + n].add_(x[r:r + n], alpha=w)
        elif axis == 0:
            blk = scratch.tensor("block", (n, *x.shape[1:]), x.dtype)
            torch.index_select(x, 0, perm[r:r + n], out=blk)
            acc[r:r + n].add_(blk, alpha=w)
        else:
            blk = scratch.tensor("block", (n, x.shape[1]), x.dtype)
            torch.index_select(x[r:r + n], 1, perm, out=blk)
            acc[r:r + n].add_(blk, alpha=w)
        if emit is not None and ((r + n - done) * row * 4 >= _EMIT or r + n == x.shape[0]):
            emit(acc[done:r + n])
            done = r + n


def _combine(ckpt: SafetensorsCheckpoint, scratch: _Scratch, parts: list[tuple[str, float, torch.Tensor | None]],
             dtype: str, axis: int | None, sink: ShardWriter | None = None) -> torch.Tensor | None:
    """sum_i w_i P_i(W_i) in float32; parts (tensor name, weight, permutation pi or None). Without `sink`,
    return it (in a reused buffer); with one (begun on this tensor), queue its bytes there block by block
    as the last member's pass finishes each block, and return None."""
    parts = sorted(parts, key=lambda p: p[2] is not None)  # an unpermuted member (the target) starts the sum
    (name0, w0, perm0), first = parts[0], ckpt.infos[parts[0][0]]
    out_dtype = TORCH_DTYPES[dtype]
    emit = None if sink is None else (
        lambda blk: sink.write_block(blk if dtype == "F32" else blk.to(out_dtype)))  # [n, ...] final rows
    if perm0 is None or axis is None:  # the sum starts as w0 W0
        x0 = scratch.read(first)  # into the member buffer: may overlap the last sum's queued writes
        acc = scratch.acc(first.shape)
        if first.dtype == "F32":
            torch.mul(x0, w0, out=acc)
        else:
            acc.copy_(x0).mul_(w0)
        rest = parts[1:]
    else:
        acc, rest = scratch.acc(first.shape).zero_(), parts
    for i, (name, w, perm) in enumerate(rest):
        last = emit if i == len(rest) - 1 else None
        _accumulate(scratch, acc, scratch.read(ckpt.infos[name]), perm, axis, w, last)
    if sink is None:
        return acc if dtype == "F32" else acc.to(out_dtype)
    if not rest:
        emit(acc)
    scratch.acc_busy = sink.mark()
    return None


def _perm_axis(proj: str, suffix: str) -> int | None:
    """The neuron axis of an expert tensor: rows of gate/up (weight [I, H], bias [I]), columns of down."""
    if proj in ("gate", "up"):
        return 0
    return 1 if suffix == "weight" else None  # down bias [H] has no neuron axis


class _Job:
    """What to write for one output tensor: a verbatim copy, or compute(writer), which writes it."""

    def __init__(self, out: OutTensor, copy: TensorInfo | None = None, compute=None):
        self.out, self.copy, self.compute = out, copy, compute


def _plan_tensor(ckpt, spec: MoeModelSpec, maps: dict[int, _LayerMap], info: TensorInfo,
                 scratch: _Scratch) -> list[_Job]:
    role: TensorRole = spec.role(info.name)
    lm = maps.get(role.layer) if role.layer is not None else None
    if role.kind == "other" or lm is None:
        return [_Job(OutTensor(info.name, info.dtype, info.shape), copy=info)]
    if role.kind == "expert":
        if role.expert not in lm.new_index:
            return []
        j = lm.new_index[role.expert]
        new_name = spec.expert_name(role.layer, j, role.proj, role.suffix)
        out = OutTensor(new_name, info.dtype, info.shape)
        srcs = lm.sources(j)
        if len(srcs) == 1:
            return [_Job(out, copy=info)]
        parts = [(spec.expert_name(role.layer, e, role.proj, role.suffix), w, lm.perm.get(e)) for e, w in srcs]
        axis = _perm_axis(role.proj, role.suffix)

        def merged(writer: ShardWriter) -> None:
            writer.begin(new_name)
            _combine(ckpt, scratch, parts, info.dtype, axis, sink=writer)

        return [_Job(out, compute=merged)]
    # router weight [E, H] or correction bias [E]: rows per pruned expert
    n = len(lm.keep)
    out = OutTensor(info.name, info.dtype, (n, *info.shape[1:]))

    def rows(writer: ShardWriter) -> None:
        src = ckpt.get(info.name).float()  # [E, ...]
        new = torch.stack([sum(src[e] * w for e, w in lm.sources(j)) for j in range(n)])  # [n, ...]
        writer.write_tensor(info.name, new.to(TORCH_DTYPES[info.dtype]))  # a fresh tensor: safe to queue

    return [_Job(out, compute=rows)]


def _phase(jobs: list[_Job]) -> int:
    """The output shard's data phase that page-aligns its verbatim copies with their sources (writer.copy_phase)."""
    copies, rel = [], 0
    for job in jobs:
        if job.copy is not None:
            copies.append((job.copy.start, rel, job.out.nbytes))
        rel += job.out.nbytes
    return copy_phase(copies)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise CheckpointError(f"output path {str(out)!r} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise CheckpointError(f"output directory {str(out)!r} already holds files; choose another --out")
        if not any(out.iterdir()):
            out.rmdir()


def apply_plan(source: str | Path, plan: PrunePlan, out: str | Path, *, overwrite: bool = False,
               progress: bool = True) -> Path:
    """Write the pruned checkpoint of `source` under `plan` to `out`; return `out`."""
    source, out = Path(source), Path(out)
    spec = MoeModelSpec.from_pretrained(source)
    plan.validate_for(spec)
    ckpt = SafetensorsCheckpoint(source)  # parses and validates every shard header
    _check_out(out, overwrite)
    perms = plan.permutations()  # checked against the model's width and merge groups by validate_for
    maps = {lp.layer: _LayerMap(lp, perms.get(lp.layer)) for lp in plan.layers}
    counts = {l: len(maps[l].keep) if l in maps else e for l, e in spec.experts.items()}

    scratch = _Scratch()
    shards = [(f, [job for info in ckpt.infos_in(f) for job in _plan_tensor(ckpt, spec, maps, info, scratch)])
              for f in ckpt.files]
    total = sum(job.out.nbytes for _, jobs in shards for job in jobs)
    with atomic_dir(out, overwrite=overwrite) as tmp, _one_thread(), _write_behind() as io:
        weight_map: dict[str, str] = {}
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="apply", disable=not progress)
        for src_file, jobs in shards:
            if not jobs:
                continue
            writer = ShardWriter(tmp / src_file.name, [j.out for j in jobs], io=io, data_phase=_phase(jobs))
            try:
                for job in jobs:
                    if job.copy is not None:
                        writer.copy_from(job.out.name, job.copy)
                    else:
                        job.compute(writer)
                    weight_map[job.out.name] = src_file.name
                    bar.update(job.out.nbytes)
            except BaseException:
                writer.abandon()
                raise
            writer.close()
        bar.close()
        if (source / INDEX_FILE).is_file() or plan.alignment is not None:
            # with the alignment sidecar (plan.align.safetensors) beside the weights, an index is what tells
            # loaders that read every *.safetensors of a directory (vLLM) which files hold weights
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        cfg = pruned_config(spec.config, spec, counts)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        for f in source.iterdir():  # tokenizer, generation config, chat template ...
            if f.is_file() and f.name not in _WEIGHT_FILES and f.suffix != ".safetensors" \
                    and f.name != SINGLE_FILE and f.name != "plan.json":
                shutil.copy2(f, tmp / f.name)
        plan.save(tmp / "plan.json")
    if len(set(counts.values())) > 1:
        ensure_registered()  # the variable-expert checkpoint loads with AutoModelForCausalLM in this process
    return out
