"""Flexpoint descriptors: how a matmul operand or output is stored and scaled.

`InFlexData(dtype, scale)` describes an input that is stored in `dtype` (e.g. an fp8 type) and
multiplied by a per-tensor `scale` on use; `InFlexData()` means "as stored, unscaled" (that is how
transformers describes MXFP4 weights, whose block scales travel separately in
`PrecisionConfig.weight_scale`). `OutFlexData` describes an output: the storage dtype, the scale
the producer divides by (`expected_scale`), and where it records the scale it actually saw.
MX block scaling itself lives in `numerics_details.mxfp`.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class BaseFlexData:
    dtype: torch.dtype | None = None

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """`x` reinterpreted as the storage dtype (same element size), or `x` when none is set."""
        if self.dtype is None or x.dtype == self.dtype:
            return x
        return x.view(self.dtype)

    def reinterpret(self, x):
        if self.dtype is None or not isinstance(x, torch.Tensor) or x.dtype == self.dtype:
            return x
        if x.element_size() != torch.empty((), dtype=self.dtype).element_size():
            raise ValueError(f"{type(self).__name__}.reinterpret: cannot view {x.dtype} as {self.dtype}")
        return x.view(self.dtype)


@dataclasses.dataclass(frozen=True)
class InFlexData(BaseFlexData):
    scale: torch.Tensor | None = None

    @property
    def is_per_batch(self) -> bool:
        return self.scale is not None and self.scale.numel() > 1


@dataclasses.dataclass(frozen=True)
class OutFlexData(BaseFlexData):
    expected_scale: torch.Tensor | None = None
    actual_scale: torch.Tensor | None = None
    checksum_scale: torch.Tensor | None = None

    @property
    def is_per_batch(self) -> bool:
        return self.expected_scale is not None and self.expected_scale.numel() > 1

    def __iter__(self):
        yield self.expected_scale
        yield self.actual_scale
        yield self.checksum_scale
