"""Demo: print the capability probe's decision and run SwiGLU through the package."""

import torch

import triton_kernels
from triton_kernels.probe import report

print(report())
a = torch.randn(4, 8)
print(triton_kernels.swiglu.swiglu(a, 1.702, triton_kernels.swiglu.PrecisionConfig(7.0)))
