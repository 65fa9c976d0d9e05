"""Distributed calibration: stage actors stream micro-batches and accumulate mergeable statistics.

Heavy modules (Ray actors, transformers) are imported on first use of `calibrate`.
"""

from raymoe.calib.config import CalibConfig
from raymoe.calib.shard import CalibrationError, StageRange, plan_stages

__all__ = ["CalibConfig", "CalibrationError", "StageRange", "plan_stages", "calibrate"]


def calibrate(*args, **kwargs):
    """See `raymoe.calib.run.calibrate`."""
    from raymoe.calib.run import calibrate as _calibrate

    return _calibrate(*args, **kwargs)
