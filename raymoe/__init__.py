"""raymoe: prune and merge the experts of Mixture-of-Experts models, distributed with Ray.

Importing raymoe registers its variable-expert architectures with transformers'
Auto classes, so non-uniform pruned checkpoints load without trust_remote_code.
"""

__version__ = "0.1.0"

from raymoe.errors import RaymoeError  # noqa: E402
from raymoe.moe import MoeModelSpec  # noqa: E402
from raymoe.moe.variable import register as _register_variable_archs  # noqa: E402

_register_variable_archs()

__all__ = ["__version__", "RaymoeError", "MoeModelSpec"]
