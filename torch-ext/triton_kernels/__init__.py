"""triton_kernels: Triton kernels for mixture-of-experts inference with MXFP4 weights.

Imports are relative on purpose: the `kernels` loader imports this package under its own
module name (the build's id), not as `triton_kernels`.
"""

from . import target_info
from . import tensor
from . import tensor_details
from . import numerics
from . import numerics_details
from . import topk
from . import routing
from . import swiglu
from . import matmul_ogs
from . import expert_parallel

__version__ = "1.0.0"

__all__ = ["target_info", "tensor", "tensor_details", "numerics", "numerics_details", "topk", "routing", "swiglu", "matmul_ogs", "expert_parallel"]
