"""StridedLayout: the data is stored as the torch tensor it is, whatever its strides."""

from __future__ import annotations

import torch

from .base import Layout, OperandAddressing, check_tensor


class StridedLayout(Layout):
    """Identity layout: swizzle and unswizzle return the tensor itself (no copy).

    As a matmul operand the tensor is [K, N] or [E, K, N] with K at dim -2 (e.g. transformers'
    FP4 values [E, K/2, N] with stride 1 along K/2, scales [E, K/32, N] with stride 1 along K/32),
    and the addressing is just its strides (k_group 1).
    """

    name = "STRIDED"

    def __init__(self, shape=None):
        super().__init__(shape)

    def _check(self, data: torch.Tensor, what: str) -> torch.Tensor:
        check_tensor("StridedLayout", what, data)
        if self.shape is not None and tuple(data.shape) != self.shape:
            raise ValueError(f"StridedLayout: `{what}` must have shape {self.shape}, got {tuple(data.shape)}")
        return data

    def swizzle_data(self, data: torch.Tensor) -> torch.Tensor:
        return self._check(data, "data")

    def unswizzle_data(self, data: torch.Tensor) -> torch.Tensor:
        return self._check(data, "data")

    def addressing(self, data: torch.Tensor) -> OperandAddressing:
        self._check(data, "data")
        if data.dim() == 2:
            return OperandAddressing(0, data.stride(0), data.stride(0), 1, data.stride(1))
        if data.dim() == 3:
            return OperandAddressing(data.stride(0), data.stride(1), data.stride(1), 1, data.stride(2))
        raise ValueError(f"StridedLayout.addressing: `data` must be 2-D [K, N] or 3-D [E, K, N], got {data.dim()}-D")
