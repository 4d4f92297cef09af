"""expert_linear: routed linear layers (CogVLM's visual expert, small MoE-style expert sets).

`expert_linear` is the public function and `Routing` its token-to-expert grouping; backends
live in reference.py (PyTorch) and triton.py, imported only when used.
"""

from haic_kernels.ops.expert_linear.api import expert_linear
from haic_kernels.ops.expert_linear.routing import MAX_EXPERTS, Routing

__all__ = ["MAX_EXPERTS", "Routing", "expert_linear"]
