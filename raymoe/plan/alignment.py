"""Neuron permutations of a plan's merge members: a sidecar safetensors file next to plan.json.

Merging averages experts neuron by neuron, so each merged-away member is first
permuted to match its group's target (raymoe/methods/align.py). For member e of
layer l, tensor "L{l}.E{e}" [I] (int16, or int32 when I > 32767) is the
permutation pi: the aligned member's neuron i is its source neuron pi[i], i.e.
  gate'[i, :] = gate[pi[i], :],  up'[i, :] = up[pi[i], :],  down'[:, i] = down[:, pi[i]]
(the expert's function is unchanged: f'(x) = f(x)). Targets are never permuted.

plan.json names the file and records its SHA-256, the width I, the basis of the
assignment ("activations" or "weights") and the count; it never holds the data. In
memory (and between Ray processes) the plan carries the file's bytes as base64 in
`data`, so a plan is one JSON-able object; `PrunePlan.save` writes the sidecar,
`PrunePlan.load` reads it back and checks the hash. No pickles anywhere.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr

from raymoe.errors import PlanError

__all__ = ["Alignment", "ALIGN_FILE"]

ALIGN_FILE = "plan.align.safetensors"


def _name(layer: int, expert: int) -> str:
    return f"L{layer}.E{expert}"


def _parse(name: str) -> tuple[int, int]:
    layer, expert = name.split(".")
    return int(layer[1:]), int(expert[1:])


class Alignment(BaseModel):
    """The sidecar's description in plan.json (and its bytes, base64, while in memory)."""

    model_config = ConfigDict(extra="forbid")

    file: str = ALIGN_FILE
    sha256: str
    width: int  # I, neurons per routed expert
    basis: Literal["activations", "weights", "mixed"]  # what the assignment maximised
    count: int  # permutations in the file
    data: str | None = None  # base64 of the file's bytes; in memory only, never written to plan.json
    _perms: dict | None = PrivateAttr(None)

    # ---- build ---------------------------------------------------------------------------
    @classmethod
    def from_permutations(cls, perms: dict[int, dict[int, np.ndarray]], width: int, basis: str) -> "Alignment":
        """Encode layer -> member -> permutation [width] (each checked to be a permutation of range(width))."""
        from safetensors.numpy import save

        dtype = np.int16 if width <= np.iinfo(np.int16).max else np.int32
        tensors = {}
        for l, members in sorted(perms.items()):
            for e, p in sorted(members.items()):
                p = np.asarray(p)
                if p.shape != (width,) or not np.array_equal(np.sort(p), np.arange(width)):
                    raise ValueError(f"layer {l} expert {e}: not a permutation of {width} neurons")
                tensors[_name(l, e)] = np.ascontiguousarray(p, dtype=dtype)
        # one metadata key: safetensors writes a map's keys in no fixed order, and the bytes are hashed
        raw = save(tensors, metadata={"format": f"raymoe-alignment width={width}"})
        return cls(sha256=hashlib.sha256(raw).hexdigest(), width=int(width), basis=basis, count=len(tensors),
                   data=base64.b64encode(raw).decode("ascii"))

    # ---- bytes and files -----------------------------------------------------------------
    def raw(self) -> bytes:
        if self.data is None:
            raise PlanError(f"the plan's permutations ({self.file}) were not loaded: load the plan with "
                            f"PrunePlan.load from the directory holding both files")
        return base64.b64decode(self.data)

    def write(self, directory: Path) -> Path:
        """Write the sidecar into `directory` (temporary sibling, then rename)."""
        import os
        import tempfile

        path = Path(directory) / self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.raw())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def read(self, directory: Path, plan_name: str = "plan.json") -> "Alignment":
        """A copy carrying the sidecar's bytes, after checking that it exists and matches its hash."""
        path = Path(directory) / self.file
        if Path(self.file).name != self.file:
            raise PlanError(f"{plan_name}: permutation file {self.file!r} must be a file name beside the plan")
        if not path.is_file():
            raise PlanError(f"{plan_name} names the permutation file {self.file}, which does not exist in "
                            f"{str(directory)!r}")
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != self.sha256:
            raise PlanError(f"{path}: SHA-256 does not match the one recorded in {plan_name} (file changed or "
                            f"belongs to another plan)")
        return self.model_copy(update={"data": base64.b64encode(raw).decode("ascii")})

    # ---- content -------------------------------------------------------------------------
    def permutations(self) -> dict[int, dict[int, np.ndarray]]:
        """layer -> member -> permutation [I] int64 (decoded once, checked)."""
        if self._perms is None:
            from safetensors.numpy import load

            raw = self.raw()
            if hashlib.sha256(raw).hexdigest() != self.sha256:
                raise PlanError(f"{self.file}: bytes do not match the recorded SHA-256")
            try:
                tensors = load(raw)
            except Exception as err:  # noqa: BLE001  (safetensors raises its own error types)
                raise PlanError(f"{self.file}: not a safetensors file ({err})") from None
            out: dict[int, dict[int, np.ndarray]] = {}
            for name, p in tensors.items():
                l, e = _parse(name)
                if p.shape != (self.width,) or not np.array_equal(np.sort(p), np.arange(self.width)):
                    raise PlanError(f"{self.file}: {name} is not a permutation of {self.width} neurons "
                                    f"(shape {list(p.shape)})")
                out.setdefault(l, {})[e] = p.astype(np.int64)
            if sum(len(v) for v in out.values()) != self.count:
                raise PlanError(f"{self.file}: holds {sum(len(v) for v in out.values())} permutations, "
                                f"plan.json records {self.count}")
            self._perms = out
        return self._perms

    def check(self, width: int, merged: dict[int, list[int]]) -> None:
        """PlanError unless the permutations are over the model's expert width and cover exactly the
        merged-away members of the plan's merge groups."""
        if self.width != width:
            raise PlanError(f"the plan's permutations ({self.file}) are over {self.width} neurons, but the "
                            f"model's routed experts have {width}")
        perms = self.permutations()
        for l in sorted(set(perms) | set(merged)):
            have, want = sorted(perms.get(l, {})), sorted(merged.get(l, []))
            if have != want:
                raise PlanError(f"layer {l}: {self.file} permutes experts {have}, but the plan merges away "
                                f"{want}")
