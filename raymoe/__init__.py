"""raymoe: prune and merge the experts of Mixture-of-Experts models, distributed with Ray.

`import raymoe` is light: it imports neither torch nor transformers. Code that
loads a pruned non-uniform checkpoint with transformers' Auto classes calls
`raymoe.ensure_registered()` first (raymoe's own loaders do), which registers
the variable-expert architectures (`raymoe.moe.variable`) once, so no
`trust_remote_code` is needed.
"""

from __future__ import annotations

__version__ = "0.1.0"

from raymoe.errors import RaymoeError  # noqa: E402

__all__ = ["__version__", "RaymoeError", "MoeModelSpec", "ensure_registered"]


def ensure_registered() -> None:
    """Register raymoe's variable-expert architectures with transformers' Auto classes (idempotent)."""
    from raymoe.moe.variable import ensure_registered as _ensure

    _ensure()


def __getattr__(name: str):
    if name == "MoeModelSpec":  # config-only (no torch), imported on first use
        from raymoe.moe.model_spec import MoeModelSpec

        return MoeModelSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
