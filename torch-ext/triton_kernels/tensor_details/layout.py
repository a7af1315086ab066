"""Storage layouts for matmul weights and their MX scales.

A layout turns a plain strided tensor into the storage a kernel reads (`swizzle_data`) and back
(`unswizzle_data`, an exact inverse: same shape, same values; transformers saves models with it).
Constructors take `shape` = the shape of the unswizzled strided storage tensor, in storage
elements (bytes for packed FP4: [E, K/2, N], scale blocks for scales: [E, K/32, N]), never the
logical FP4 shape; `tensor.convert_layout` passes exactly that.

Addressing contract (what matmul_ogs reads)
-------------------------------------------
Every layout describes its swizzled storage with one formula, `Layout.addressing(data)`:

    element (e, k, n) is at  e*stride_e + (k // G)*stride_k_group + (k % G)*stride_k_inner + n*stride_n

elements from `data.data_ptr()`, where the logical weight is [E, K, N] (or [K, N]: stride_e = 0)
with MX blocks along K, and k counts storage units along K: packed bytes for FP4 values, scale
blocks for scales. Indices past the logical sizes may land in padding (zeros) but are never
needed. `operand_addressing(t)` gives it for a wrapped `tensor.Tensor`.

* StridedLayout: the tensor's own strides, K at dim -2, G = 1. transformers passes values
  [E, K/2, N] with stride 1 along K/2 and scales [E, K/32, N] with stride 1 along K/32; both are
  read as they are.
* HopperMXValueLayout: storage [E, N_pad, K_pad] bytes: the bytes of one column are contiguous
  along K, so a kernel streaming weights loads 16 bytes (32 FP4 values) per instruction and
  upcasts in registers. K_pad is K/2 rounded up to 64 bytes (one BLOCK_K = 128 tile: 4 x 16-byte
  loads per column) and N_pad is N rounded up to 128, so tiles with BLOCK_K <= 128 and
  BLOCK_N <= 128 need no masks on weight loads. G = 1, stride_k = 1, stride_n = K_pad,
  stride_e = N_pad*K_pad. (gpt-oss: K = 2880 -> 1440 bytes -> 1472, 2% padding.)
  Inside each 64-value K block (32 bytes) the nibbles are in the nibble-quads order
  (`layout_details.mx.quads_order`; addressing.nibble_quads): the 32-bit unit of 16-bit words
  j, j+1 (j even) holds the block's values j, j+1, 16+j, 17+j, 32+j, 33+j, 48+j, 49+j, each bit
  where the decoder's integer recipe takes it. A kernel decodes each unit elementwise into four
  bf16 pairs of MMA operand slices, which lets Triton load the words straight into wgmma's
  register layout.
* HopperMXScaleLayout and BlackwellMXScaleLayout: storage [E, ceil(K32/G), N_pad, G] bytes with
  G = 4 and N_pad = N rounded up to 128: stride_k_inner = 1, stride_n = G,
  stride_k_group = N_pad*G, stride_e = ceil(K32/G)*N_pad*G. The G scales one column needs for a
  K tile are adjacent, and a tile's [G, BLOCK_N] scales are one contiguous run of G*BLOCK_N bytes
  (a warp covering 32 columns reads 128 consecutive bytes: one coalesced load; one 32-bit load
  per column). G = 4 because 4 MX blocks are 128 K values, the natural BLOCK_K for bf16 x MXFP4
  on Hopper (wgmma K = 16, 8 steps) and exactly one 16-byte-aligned 64-byte column chunk of the
  value layout, so one K tile reads one scale group. G = 8 would suit only BLOCK_K = 256 (a
  BLOCK_K = 128 tile would read half of every 8-byte group, with gaps) and pads gpt-oss' 90 blocks
  to 96 instead of 92. Blackwell keeps G = 4 and N_pad = 128: per group and 128 columns
  that is tcgen05's 512-byte scale unit (128 rows x 4 blocks), stored row-major so it stays
  linear in n (the kernel reorders inside the unit).

Defaults come from the capability probe only (`target_info.get_target().variant`):
hopper -> HopperMXValueLayout + HopperMXScaleLayout; blackwell -> HopperMXValueLayout +
BlackwellMXScaleLayout; every other variant (ampere, turing, unsupported, cpu) -> StridedLayout.
"""

from __future__ import annotations

from .. import target_info
from .layout_details.base import Layout, OperandAddressing
from .layout_details.mx import BlackwellMXScaleLayout, HopperMXScaleLayout, HopperMXValueLayout
from .layout_details.strided import StridedLayout

__all__ = [
    "Layout", "OperandAddressing", "StridedLayout", "HopperMXValueLayout", "HopperMXScaleLayout",
    "BlackwellMXScaleLayout", "make_default_matmul_mxfp4_w_layout", "make_default_matmul_mxfp4_w_scale_layout",
    "operand_addressing",
]


def _check_mx_axis(op: str, mx_axis) -> None:
    if isinstance(mx_axis, bool) or not isinstance(mx_axis, int):
        raise TypeError(f"{op}: `mx_axis` must be an int, got {type(mx_axis).__name__}")


def make_default_matmul_mxfp4_w_layout(mx_axis: int):
    """(LayoutCls, kwargs) for MXFP4 weight values on this machine, chosen by the probe."""
    _check_mx_axis("make_default_matmul_mxfp4_w_layout", mx_axis)
    if target_info.get_target().variant in ("hopper", "blackwell"):
        return HopperMXValueLayout, {"mx_axis": mx_axis}
    return StridedLayout, {}


def make_default_matmul_mxfp4_w_scale_layout(mx_axis: int, num_warps: int = 8):
    """(LayoutCls, kwargs) for MXFP4 weight scales on this machine, chosen by the probe."""
    _check_mx_axis("make_default_matmul_mxfp4_w_scale_layout", mx_axis)
    variant = target_info.get_target().variant
    if variant == "hopper":
        return HopperMXScaleLayout, {"mx_axis": mx_axis, "num_warps": num_warps}
    if variant == "blackwell":
        return BlackwellMXScaleLayout, {"mx_axis": mx_axis}
    return StridedLayout, {}


def operand_addressing(t) -> OperandAddressing:
    """Addressing of a wrapped `tensor.Tensor` (or of a plain torch.Tensor, read as strided)."""
    import torch

    if isinstance(t, torch.Tensor):
        return StridedLayout().addressing(t)
    storage = getattr(t, "storage", None)
    if storage is None or not isinstance(getattr(storage, "layout", None), Layout):
        raise TypeError(f"operand_addressing: `t` must be a triton_kernels Tensor or a torch.Tensor, "
                        f"got {type(t).__name__}")
    return storage.layout.addressing(storage.data)
