"""Triton kernels, launch configs and torch reference helpers behind `matmul_ogs`."""
