"""Step records: every finished sweep step leaves `steps/<kind>-<id>.json`, so a rerun skips it.

A step's id is a hash of its parameters (never parameters spelled into a
directory name); the record holds the parameters, the outputs (paths relative
to the run directory) and the wall time. A step counts as done only when its
record exists and every output it names exists.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from raymoe.atomic import atomic_write_text

__all__ = ["StepRecord", "StepLog", "step_id"]


def step_id(kind: str, params: dict[str, Any]) -> str:
    """`kind-<12 hex>` from the canonical JSON of the parameters."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return f"{kind}-{hashlib.sha256(blob).hexdigest()[:12]}"


class StepRecord(BaseModel):
    id: str
    kind: str
    params: dict[str, Any]
    outputs: dict[str, str] = Field(default_factory=dict)  # name -> path relative to the run dir
    info: dict[str, Any] = Field(default_factory=dict)
    wall_s: float = 0.0
    finished: float = Field(default_factory=time.time)


class StepLog:
    """The step records of one run directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, sid: str) -> Path:
        return self.dir / f"{sid}.json"

    def done(self, sid: str) -> StepRecord | None:
        p = self.path(sid)
        if not p.is_file():
            return None
        rec = StepRecord.model_validate_json(p.read_text())
        if not all((self.run_dir / out).exists() for out in rec.outputs.values()):
            return None
        return rec

    def record(self, rec: StepRecord) -> StepRecord:
        atomic_write_text(self.path(rec.id), rec.model_dump_json(indent=1) + "\n")
        return rec

    def all(self, kind: str | None = None) -> list[StepRecord]:
        recs = [StepRecord.model_validate_json(p.read_text()) for p in sorted(self.dir.glob("*.json"))]
        return [r for r in recs if kind is None or r.kind == kind]
