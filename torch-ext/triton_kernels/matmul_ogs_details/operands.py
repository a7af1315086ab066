"""Weight operands of matmul_ogs: recognise them, address them, and dequantize single experts.

A weight is one of
  * a dense torch.Tensor [K, N] or [E, K, N] (bf16 / fp16),
  * a wrapped FP4 Tensor (`tensor.wrap_torch_tensor(w, dtype=FP4)`, any layout from
    `convert_layout`), logical shape [E, K, N] / [K, N], two values per byte along K,
  * a raw torch uint8 tensor [E, K/2, N] / [K/2, N]: FP4 packed along dim -2 (the MX axis of a
    matmul weight is always K), whatever its strides.
MX scales (precision_config.weight_scale) are a wrapped Tensor in any layout or a raw uint8
torch.Tensor [E, K/32, N] / [K/32, N].
"""

from __future__ import annotations

import dataclasses
import functools

import torch

MX_BLOCK = 32


@dataclasses.dataclass(frozen=True)
class Addressing:
    """Element (e, k, n) sits at e*stride_e + (k // k_group)*stride_k_group + (k % k_group)*stride_k_inner
    + n*stride_n elements from data's first element (the same contract as tensor_details.layout;
    nibble_quads: FP4 nibbles permuted inside 64-value K blocks, see OperandAddressing)."""

    stride_e: int
    stride_k_group: int
    stride_k_inner: int
    k_group: int
    stride_n: int
    nibble_quads: bool = False


@dataclasses.dataclass(frozen=True)
class Operand:
    data: torch.Tensor  # the storage the kernel reads (swizzled as the layout says)
    addressing: Addressing
    n_experts: int | None  # None: a 2-D operand shared by every batch / expert
    rows: int  # K (dense), K/2 (FP4 bytes) or K/32 (scales) along the addressed k index
    n: int

    @functools.cached_property
    def expert_span(self) -> int:
        """Bound of the element offsets inside one expert's matrix (the kernel's int32 check)."""
        a = self.addressing
        groups = -(-self.rows // a.k_group)
        return groups * abs(a.stride_k_group) + a.k_group * abs(a.stride_k_inner) + self.n * abs(a.stride_n)


def is_wrapped(t) -> bool:
    return hasattr(t, "storage") and hasattr(getattr(t, "storage"), "data") and not isinstance(t, torch.Tensor)


@functools.lru_cache(maxsize=1)
def fp4_marker():
    try:
        from ..tensor import FP4
    except ImportError:
        return None
    return FP4


def is_fp4(t) -> bool:
    if isinstance(t, torch.Tensor):
        return t.dtype == torch.uint8
    marker = fp4_marker()
    return marker is not None and is_wrapped(t) and t.dtype == marker


def _strided(data: torch.Tensor) -> Addressing:
    if data.dim() == 3:
        return Addressing(data.stride(0), data.stride(1), 0, 1, data.stride(2))
    return Addressing(0, data.stride(0), 0, 1, data.stride(1))


def _layout_addressing(t) -> Addressing:
    """Addressing of a wrapped Tensor, from the layout's own description."""
    try:
        from ..tensor_details import layout as layout_module
    except ImportError:
        layout_module = None
    helper = getattr(layout_module, "operand_addressing", None)
    if helper is not None:
        a = helper(t)
        return Addressing(int(a.stride_e), int(a.stride_k_group), int(a.stride_k_inner), int(a.k_group), int(a.stride_n),
                          bool(getattr(a, "nibble_quads", False)))
    strided = getattr(layout_module, "StridedLayout", None)
    if strided is not None and isinstance(t.storage.layout, strided):
        return _strided(t.storage.data)
    raise TypeError(f"matmul_ogs: cannot address a weight stored in {type(t.storage.layout).__name__}")


def operand(t, what: str, logical_rows_per_row: int) -> Operand:
    """Describe `t` (a weight or a scale) for the kernel. `logical_rows_per_row`: 2 for FP4 bytes, else 1."""
    if isinstance(t, torch.Tensor):
        if t.dim() not in (2, 3):
            raise ValueError(f"matmul_ogs: `{what}` must be 2-D [K, N] or 3-D [E, K, N], got shape {tuple(t.shape)}")
        return Operand(t, _strided(t), t.shape[0] if t.dim() == 3 else None, t.shape[-2], t.shape[-1])
    if not is_wrapped(t):
        raise TypeError(f"matmul_ogs: `{what}` must be a torch.Tensor or a triton_kernels Tensor, got {type(t).__name__}")
    return wrapped_operand(t, what, logical_rows_per_row)


def wrapped_operand(t, what: str, logical_rows_per_row: int) -> Operand:
    """`operand` of a `t` known to be wrapped (`is_wrapped`)."""
    # weights are static: the description is kept on the wrapper, for as long as its storage, layout,
    # data and shape are the ones it was made from (transformers overwrites a wrapper's shape); the
    # kept entry holds those objects, so their ids cannot be reused by others meanwhile
    storage = t.storage
    key = (what, logical_rows_per_row, id(storage), id(storage.layout), id(storage.data), storage.data.data_ptr(),
           tuple(t.shape))
    kept = getattr(t, "_triton_kernels_operand", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    op = _wrapped_operand(t, what, logical_rows_per_row)
    try:
        t._triton_kernels_operand = (key, op, storage, storage.layout)
    except AttributeError:  # a wrapper that takes no new attributes is described on every call
        pass
    return op


def _wrapped_operand(t, what: str, logical_rows_per_row: int) -> Operand:
    shape = tuple(t.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"matmul_ogs: `{what}` must be 2-D [K, N] or 3-D [E, K, N], got shape {shape}")
    if shape[-2] % logical_rows_per_row:
        raise ValueError(f"matmul_ogs: `{what}` has K={shape[-2]}, not a multiple of {logical_rows_per_row}")
    rows = shape[-2] // logical_rows_per_row
    _check_storage_matches(t, what, rows, shape[-1])
    return Operand(t.storage.data, _layout_addressing(t), shape[0] if len(shape) == 3 else None, rows, shape[-1])


def _check_storage_matches(t, what: str, rows: int, n: int) -> None:
    """The storage must hold [.., rows, n] units along (K, N): FP4 packed along K, not N."""
    layout = t.storage.layout
    if hasattr(layout, "k") and hasattr(layout, "n"):  # MX layouts record the unswizzled (K, N) sizes
        got = (layout.k, layout.n)
    else:
        data = t.storage.data
        got = (data.shape[-2], data.shape[-1]) if data.dim() >= 2 else None
    if got != (rows, n):
        raise ValueError(f"matmul_ogs: `{what}` storage holds {got} units along (K, N), expected {(rows, n)} "
                         f"(FP4 must be packed two per byte along K, dim -2)")


def _read_rows(op: Operand, expert: int) -> torch.Tensor:
    """The [rows, N] matrix of one expert, read through the addressing formula (no whole-tensor copy)."""
    a = op.addressing
    data = op.data
    g = a.k_group
    rows = op.rows
    if a.nibble_quads:  # whole 64-value blocks (the storage is padded to them), nibbles put back in order
        from ..tensor_details.layout_details.mx import QUADS_BLOCK_BYTES, quads_order_inverse
        rows = -(-rows // QUADS_BLOCK_BYTES) * QUADS_BLOCK_BYTES
    groups = -(-rows // g)
    offset = data.storage_offset() + expert * a.stride_e
    view = torch.as_strided(data, (groups, g, op.n), (a.stride_k_group, a.stride_k_inner, a.stride_n), offset)
    view = view.reshape(groups * g, op.n)[:rows]
    if a.nibble_quads:
        view = quads_order_inverse(view.t()).t()
    return view[: op.rows]


_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def dequantize_expert(values: Operand, scales: Operand | None, expert: int, dtype: torch.dtype) -> torch.Tensor:
    """One expert's weight [K, N] in `dtype` (float32 / float64): FP4 decoded and scaled, or dense cast."""
    raw = _read_rows(values, expert)
    if scales is None:
        return raw.to(dtype)
    table = torch.tensor(_E2M1, dtype=dtype, device=raw.device)
    codes = raw.to(torch.int64)
    lo, hi = table[codes & 15], table[codes >> 4]
    w = torch.stack((lo, hi), dim=1).reshape(2 * values.rows, values.n)  # element 2i low nibble, 2i+1 high
    s = _read_rows(scales, expert).to(dtype)
    s = torch.where(s == 255, torch.full_like(s, float("nan")), torch.exp2(s - 127))
    return w * s.repeat_interleave(MX_BLOCK, dim=0)[: w.shape[0]]
