"""Triton kernel: dequantize MXFP4 / MXFP8 along one axis.

Same 2-D view as the downcast kernel: R rows; row r of the quantized input starts at
(r // n_inner) * stride_outer + (r % n_inner) * stride_inner with stride_l along the axis, and the
scales likewise with their own strides. The output is written row-major [R, L].
"""

import triton
import triton.language as tl

from ._common import e8m0_to_fp32, fp8_bits_to_fp32, program_tile

MXFP_BLOCK = tl.constexpr(32)


@triton.jit
def _upcast_from_mxfp_kernel(
    q_ptr, scale_ptr, out_ptr,
    R, L, Lq, Ls,
    n_inner, q_stride_outer, q_stride_inner, q_stride_l,
    s_stride_outer, s_stride_inner, s_stride_l,
    IS_FP4: tl.constexpr,
    FP8_MANT: tl.constexpr, FP8_BIAS: tl.constexpr, FP8_SUB_STEP: tl.constexpr, IS_E4M3FN: tl.constexpr,
    OUT_BF16: tl.constexpr, INTERPRETED: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    NB: tl.constexpr = BLOCK_L // MXFP_BLOCK
    rows, pid_l = program_tile(L, BLOCK_R, BLOCK_L)
    row_ok = rows < R
    outer = rows // n_inner
    inner = rows % n_inner

    if IS_FP4:
        qcols = pid_l * (BLOCK_L // 2) + tl.arange(0, BLOCK_L // 2).to(tl.int64)
        q_off = (outer * q_stride_outer + inner * q_stride_inner)[:, None] + qcols[None, :] * q_stride_l
        packed = tl.load(q_ptr + q_off, mask=row_ok[:, None] & (qcols < Lq)[None, :], other=0).to(tl.int32)
        codes = tl.reshape(tl.join(packed & 0xF, packed >> 4), [BLOCK_R, BLOCK_L])
        # Sign bit to bit 31, exponent and mantissa bits to fp32's top fields (see e2m1_value): the
        # float read from those bits is the signed E2M1 value times 2^-126. (A sign bit, not a negation:
        # 0 - x would lose the -0 of code 8.)
        fbits = ((codes & 8) << 28) | ((codes & 7) << 22)
        val = fbits.to(tl.float32, bitcast=True) * 8.507059173023462e37  # 2^126
    else:
        cols = pid_l * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
        q_off = (outer * q_stride_outer + inner * q_stride_inner)[:, None] + cols[None, :] * q_stride_l
        bits = tl.load(q_ptr + q_off, mask=row_ok[:, None] & (cols < Lq)[None, :], other=0).to(tl.int32)
        val = fp8_bits_to_fp32(bits, FP8_MANT, FP8_BIAS, FP8_SUB_STEP, IS_E4M3FN)

    scols = pid_l * NB + tl.arange(0, NB).to(tl.int64)
    s_off = (outer * s_stride_outer + inner * s_stride_inner)[:, None] + scols[None, :] * s_stride_l
    s = tl.load(scale_ptr + s_off, mask=row_ok[:, None] & (scols < Ls)[None, :], other=127).to(tl.int32)
    out = tl.reshape(tl.reshape(val, [BLOCK_R, NB, MXFP_BLOCK]) * e8m0_to_fp32(s)[:, :, None], [BLOCK_R, BLOCK_L])

    cols = pid_l * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    omask = row_ok[:, None] & (cols < L)[None, :]
    if OUT_BF16 and INTERPRETED:
        # Round to nearest even by hand: the interpreter's own fp32 -> bf16 cast rounds ties up.
        ob = out.to(tl.uint32, bitcast=True)
        ob = (ob + 0x7FFF + ((ob >> 16) & 1)) >> 16
        res = ob.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        res = out.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * L + cols[None, :], res, mask=omask)
