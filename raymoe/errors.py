"""User-facing errors: one clear line, non-zero exit (the CLI catches these)."""

__all__ = ["RaymoeError", "NotMoEError", "PlanError", "CheckpointError"]


class RaymoeError(Exception):
    """An error caused by the user's input; the CLI prints `error: <message>` and exits 2."""


class NotMoEError(RaymoeError):
    """The model is not a supported Mixture-of-Experts architecture."""


class PlanError(RaymoeError):
    """A prune plan is invalid for the model it targets."""


class CheckpointError(RaymoeError):
    """A checkpoint directory is missing, corrupt, or would be overwritten."""
