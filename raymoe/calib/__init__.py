"""Distributed calibration: stage actors stream micro-batches and accumulate mergeable statistics.

Light on import: `CalibConfig` needs pydantic only; the shard plan (`raymoe.calib.shard`,
which reads safetensors headers with torch) is imported on first use of its names, and Ray
actors and transformers on first use of `calibrate`.
"""

from __future__ import annotations

from raymoe.calib.config import CalibConfig

__all__ = ["CalibConfig", "CalibrationError", "StageRange", "plan_stages", "calibrate"]


def calibrate(*args, **kwargs):
    """See `raymoe.calib.calibration.calibrate`."""
    from raymoe.calib.calibration import calibrate as _calibrate

    return _calibrate(*args, **kwargs)


def __getattr__(name: str):
    if name in ("CalibrationError", "StageRange", "plan_stages"):
        from raymoe.calib import shard

        return getattr(shard, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
