"""User-facing errors, all of them here: one clear line, non-zero exit (the CLI catches these).

Each module raises the subclass named for its contract and imports it from here."""

__all__ = ["RaymoeError", "NotMoEError", "PlanError", "CheckpointError", "ResourceError", "SpecError", "StatsError",
           "UnknownMethodError", "OptionError", "BudgetError", "UnknownNameError", "DataError", "FidelityError",
           "EvalError", "TaskError", "BackendError", "StatsStoreError", "CalibrationError", "TestbedConfigError"]


class RaymoeError(Exception):
    """An error caused by the user's input; the CLI prints `error: <message>` and exits 2."""


class NotMoEError(RaymoeError):
    """The model is not a supported Mixture-of-Experts architecture."""


class PlanError(RaymoeError):
    """A prune plan is invalid for the model it targets."""


class CheckpointError(RaymoeError):
    """A checkpoint directory is missing, corrupt, or would be overwritten."""


class ResourceError(RaymoeError):
    """An actor asks for more of a resource than any node of the Ray cluster has."""


class SpecError(RaymoeError):
    """A sweep spec is invalid; the message names the file and line."""


class StatsError(RaymoeError):
    """The statistics lack what a method needs, or do not describe a usable model."""


class UnknownMethodError(RaymoeError):
    """No method of that name is registered."""


class OptionError(RaymoeError):
    """A method option does not exist or has an invalid value."""


class BudgetError(RaymoeError):
    """The requested ratio cannot be met (out of range, or fewer than top_k experts would be left)."""


class UnknownNameError(RaymoeError):
    """A name no registry entry has (each registry may raise its own subclass)."""


class DataError(RaymoeError):
    """Calibration text is missing, empty, malformed, or too short."""


class FidelityError(RaymoeError):
    """A fidelity task that cannot run: unknown corpus, missing reference, mismatched vocabularies."""


class EvalError(RaymoeError):
    """A (variant, task) pair failed on a worker, or the pool ran out of workers."""


class TaskError(RaymoeError):
    """An unknown task, or task data that is missing."""


class BackendError(RaymoeError):
    """An unknown backend, a backend whose environment is missing, or one that cannot serve a variant."""


class StatsStoreError(RaymoeError):
    """A stats directory is missing, incomplete, or would be overwritten, or its manifest is unusable."""


class CalibrationError(RaymoeError):
    """Calibration cannot run as asked (bad stage count, infeasible placement, failing actors)."""


class TestbedConfigError(RaymoeError):
    """Testbed options that cannot build a model (E not dividing the width, K > E, ...)."""

    __test__ = False  # not a pytest class
