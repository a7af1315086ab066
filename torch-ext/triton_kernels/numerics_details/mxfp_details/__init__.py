"""Triton kernels for `numerics_details.mxfp` (one module per kernel)."""
