"""The Layout base class, the addressing record every layout produces, and shared checks."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class OperandAddressing:
    """Where element (e, k, n) of a matmul operand lives in its (swizzled) storage tensor:

        e*stride_e + (k // k_group)*stride_k_group + (k % k_group)*stride_k_inner + n*stride_n

    elements from `data.data_ptr()`. k counts storage units along K: packed bytes for FP4
    values, scale blocks for MX scales. stride_e is 0 for 2-D operands.

    `nibble_quads`: FP4 values permuted inside each 64-value K block (32 bytes, read as 16
    little-endian 16-bit words; the unit of words j, j+1 (j even) holds K offsets 16*q + j and
    16*q + j + 1 of the block for q = 0..3, bits placed for the decoder; see
    layout_details.mx.quads_order). The formula then locates the block's bytes, and a kernel
    decodes each unit into four pairs of values 16 apart, which keeps the decode elementwise.
    """

    stride_e: int
    stride_k_group: int
    stride_k_inner: int
    k_group: int
    stride_n: int
    nibble_quads: bool = False

    def offset(self, e, k, n):
        """The formula itself (works on ints and on integer tensors)."""
        g = self.k_group
        return e * self.stride_e + (k // g) * self.stride_k_group + (k % g) * self.stride_k_inner + n * self.stride_n


class Layout:
    """How a strided tensor of `shape` is stored. Subclasses define swizzle/unswizzle/addressing.

    `shape` is the shape of the unswizzled, strided storage tensor, in storage elements (bytes
    for packed FP4, not the logical element count); `convert_layout` passes it.
    """

    name: str = "LAYOUT"

    def __init__(self, shape=None):
        self.shape = None if shape is None else _check_shape(type(self).__name__, shape)

    def swizzle_data(self, data: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unswizzle_data(self, data: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def addressing(self, data: torch.Tensor) -> OperandAddressing:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"


def _check_shape(owner: str, shape) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"{owner}: `shape` must be a sequence of ints, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"{owner}: `shape` must not have negative sizes, got {dims}")
    return dims


def check_tensor(owner: str, what: str, data) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"{owner}: `{what}` must be a torch.Tensor, got {type(data).__name__}")
    return data


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m
