"""Standalone SwiGLU kernel: the same tile function matmul_ogs fuses, applied to a stored matrix."""

from __future__ import annotations

import triton
import triton.language as tl

from ..matmul_ogs_details._cast import cast_out


@triton.jit
def swiglu_tile(tile, alpha, limit):
    """tile [BM, BN] with interleaved columns (gate = even, linear = odd) -> [BM, BN // 2], in float32."""
    gate, linear = tl.split(tl.reshape(tile, (tile.shape[0], tile.shape[1] // 2, 2)))
    gate = gate.to(tl.float32)
    linear = linear.to(tl.float32)
    if limit is not None:
        gate = tl.minimum(gate, limit, propagate_nan=tl.PropagateNan.ALL)
        linear = tl.clamp(linear, -limit, limit, propagate_nan=tl.PropagateNan.ALL)
    return gate * tl.sigmoid(alpha * gate) * (linear + 1.0)


@triton.jit
def _swiglu_kernel(
    Out, stride_o_m, stride_o_n,
    A, stride_a_m, stride_a_n,
    NValidRows, n_rows, n_out,
    alpha, limit,
    HAS_VALID_ROWS: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Rows at or past *NValidRows (routing: rows no expert owns) are written as zeros."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_a = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_o = tl.program_id(1) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    mask_m = offs_m < n_rows
    rows = offs_m.to(tl.int64)
    a = tl.load(A + rows[:, None] * stride_a_m + offs_a[None, :] * stride_a_n,
                mask=mask_m[:, None] & (offs_a < 2 * n_out)[None, :], other=0.0)
    out = swiglu_tile(a, alpha, limit)
    if HAS_VALID_ROWS:
        n_valid = tl.load(NValidRows)
        out = tl.where((offs_m < n_valid)[:, None], out, 0.0)
    tl.store(Out + rows[:, None] * stride_o_m + offs_o[None, :] * stride_o_n, cast_out(out, Out.dtype.element_ty, INTERPRETED),
             mask=mask_m[:, None] & (offs_o < n_out)[None, :])
