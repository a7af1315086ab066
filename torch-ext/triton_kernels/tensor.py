"""Tensors whose storage may be swizzled: `Storage(data, layout)` plus a logical dtype and shape.

A `Tensor` is what matmul_ogs takes for weights and scales. Its `.shape` is the logical shape
(for FP4, two values per byte along the packed dim) and is a plain attribute: consumers such as
transformers overwrite it with a torch.Size. `.storage.data` is the torch tensor the kernels
read, in the byte order `.storage.layout` describes (see `tensor_details.layout`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .tensor_details.layout import Layout, StridedLayout

__all__ = ["DataType", "FP4", "Storage", "Tensor", "wrap_torch_tensor", "convert_layout", "bitwidth"]


@dataclasses.dataclass(frozen=True)
class DataType:
    """A dtype torch has no name for. Stored packed in uint8."""

    name: str
    bitwidth: int

    def __repr__(self) -> str:
        return self.name


FP4 = DataType("FP4", 4)  # E2M1, two values per uint8 (element 2i low nibble, 2i+1 high nibble)


def bitwidth(dtype) -> int:
    if isinstance(dtype, DataType):
        return dtype.bitwidth
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size() * 8
    raise TypeError(f"bitwidth: `dtype` must be a torch.dtype or a DataType, got {dtype!r}")


class Storage:
    """The torch tensor holding the data and the layout it is stored in (StridedLayout by default)."""

    def __init__(self, data: torch.Tensor, layout: Layout | None = None):
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"Storage: `data` must be a torch.Tensor, got {type(data).__name__}")
        if layout is None:
            layout = StridedLayout(data.shape)
        if not isinstance(layout, Layout):
            raise TypeError(f"Storage: `layout` must be a Layout instance, got {type(layout).__name__}")
        self.data = data
        self.layout = layout

    @property
    def device(self) -> torch.device:
        return self.data.device

    def __repr__(self) -> str:
        return f"Storage(data={tuple(self.data.shape)} {self.data.dtype}, layout={self.layout!r})"


def _packed_dim(data: torch.Tensor) -> int:
    """The stride-1 dim FP4 pairs are packed along (the last one of size > 1; else the last dim)."""
    candidates = [d for d in range(data.dim()) if data.stride(d) == 1 and data.shape[d] > 1]
    return candidates[-1] if candidates else data.dim() - 1


def _logical_shape(storage: Storage, dtype) -> torch.Size:
    layout = storage.layout
    data = storage.data
    if isinstance(layout, StridedLayout):
        shape = list(data.shape)
        packed = _packed_dim(data) if data.dim() else None
    else:
        if layout.shape is None:
            raise ValueError(f"Tensor: cannot infer the logical shape of {layout!r}; pass `shape`")
        shape = list(layout.shape)
        packed = getattr(layout, "mx_axis", len(shape) - 1)
    if bitwidth(dtype) < 8 and packed is not None:
        shape[packed] *= 8 // bitwidth(dtype)
    return torch.Size(shape)


class Tensor:
    """Logical tensor over a `Storage`: `Tensor(storage, dtype=None, shape=None, shape_max=None)`.

    `storage` may also be a torch.Tensor (wrapped in a strided Storage). `dtype` defaults to the
    data's dtype; `shape` to the logical shape of the storage; `shape_max` (an upper bound on the
    shape, for ragged uses) to `shape`.
    """

    def __init__(self, storage, dtype=None, shape=None, shape_max=None):
        if isinstance(storage, torch.Tensor):
            storage = Storage(storage)
        if not isinstance(storage, Storage):
            raise TypeError(f"Tensor: `storage` must be a Storage or a torch.Tensor, got {type(storage).__name__}")
        if dtype is None:
            dtype = storage.data.dtype
        if not isinstance(dtype, (torch.dtype, DataType)):
            raise TypeError(f"Tensor: `dtype` must be a torch.dtype or a DataType such as FP4, got {dtype!r}")
        if isinstance(dtype, DataType) and storage.data.dtype != torch.uint8:
            raise TypeError(f"Tensor: {dtype} data must be stored as torch.uint8, got {storage.data.dtype}")
        self.storage = storage
        self.dtype = dtype
        self.shape = torch.Size(shape) if shape is not None else _logical_shape(storage, dtype)
        self.shape_max = torch.Size(shape_max) if shape_max is not None else self.shape

    @property
    def device(self) -> torch.device:
        return self.storage.data.device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, i: int | None = None):
        if i is None:
            return self.shape
        return self.shape[i]

    def numel(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"Tensor(shape={tuple(self.shape)}, dtype={self.dtype}, storage={self.storage!r})"


def wrap_torch_tensor(t: torch.Tensor, dtype=None) -> Tensor:
    """Wrap a strided torch tensor. With dtype=FP4, `t` is uint8 and its stride-1 dim counts 2 values per byte."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"wrap_torch_tensor: `t` must be a torch.Tensor, got {type(t).__name__}")
    if dtype is None:
        dtype = t.dtype
    if isinstance(dtype, DataType):
        if t.dtype != torch.uint8:
            raise TypeError(f"wrap_torch_tensor: {dtype} data in `t` must be torch.uint8 (packed), got {t.dtype}")
    elif dtype != t.dtype:
        raise TypeError(f"wrap_torch_tensor: `dtype` must be None, FP4 or t.dtype ({t.dtype}), got {dtype!r}")
    return Tensor(Storage(t, StridedLayout(t.shape)), dtype=dtype)


def convert_layout(tensor: Tensor, layout_cls, **layout_kwargs) -> Tensor:
    """Re-store `tensor` in `layout_cls(shape, **layout_kwargs)`: unswizzle with the old layout, swizzle with the new.

    `shape` is the unswizzled storage shape (see tensor_details.layout); dtype and logical shape carry over.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"convert_layout: `tensor` must be a triton_kernels Tensor (see wrap_torch_tensor), "
                        f"got {type(tensor).__name__}")
    if not (isinstance(layout_cls, type) and issubclass(layout_cls, Layout)):
        raise TypeError(f"convert_layout: `layout_cls` must be a Layout subclass, got {layout_cls!r}")
    data = tensor.storage.layout.unswizzle_data(tensor.storage.data)
    layout = layout_cls(tuple(data.shape), **layout_kwargs)
    return Tensor(Storage(layout.swizzle_data(data), layout), dtype=tensor.dtype, shape=tensor.shape,
                  shape_max=tensor.shape_max)
