"""Triton kernel: quantize to MXFP4 / MXFP8 along one axis.

The host (`mxfp.downcast_to_mxfp`) presents the input as a 2-D grid of R rows by L elements
along the quantized axis. Row r starts at (r // n_inner) * stride_outer + (r % n_inner) * stride_inner,
so any tensor whose non-axis dimensions fold into at most two strides is read in place (a contiguous
tensor quantized along a middle axis included). Outputs are written row-major: [R, ceil(L/2)]
bytes (MXFP4) or [R, L] fp8 bits, and [R, ceil(L/32)] scale bytes.

One program owns a BLOCK_R x BLOCK_L tile (BLOCK_L a multiple of 32, so it holds whole MX
blocks); Triton's coalescing follows whichever input stride is 1.
"""

import triton
import triton.language as tl

from ._common import e2m1_nearest, e2m1_stochastic, fp32_to_fp8_bits, program_tile, uniform_from_index

MXFP_BLOCK = tl.constexpr(32)


@triton.jit(do_not_specialize=["seed"])  # a seed of 1 must stay a tensor (it gets .to(uint32))
def _downcast_to_mxfp_kernel(
    src_ptr, q_ptr, scale_ptr,
    R, L, n_inner, stride_outer, stride_inner, stride_l,
    Lq, Ls, seed,
    MAX_Q: tl.constexpr,          # largest finite element magnitude: 6, 448 or 57344
    IS_FP4: tl.constexpr,
    FP8_MANT: tl.constexpr, FP8_BIAS: tl.constexpr,
    ROUND_UP: tl.constexpr,       # scale rounding: UP (no saturation) or DOWN (truncate)
    STOCHASTIC: tl.constexpr,     # element rounding (MXFP4 only)
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    NB: tl.constexpr = BLOCK_L // MXFP_BLOCK
    rows, pid_l = program_tile(L, BLOCK_R, BLOCK_L)
    cols = pid_l * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    row_ok = rows < R
    row_off = (rows // n_inner) * stride_outer + (rows % n_inner) * stride_inner
    mask = row_ok[:, None] & (cols < L)[None, :]
    x = tl.load(src_ptr + row_off[:, None] + cols[None, :] * stride_l, mask=mask, other=0.0)
    if src_ptr.dtype.element_ty == tl.bfloat16:
        # Widen by bits: exact for every value (the interpreter's bf16 -> fp32 cast mangles subnormals).
        x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        x = x.to(tl.float32)

    # Block amax on the bit patterns: |x| orders like its bits, and NaN > Inf > any finite value.
    xb = x.to(tl.int32, bitcast=True)
    amax_bits = tl.max(tl.reshape(xb & 0x7FFFFFFF, [BLOCK_R, NB, MXFP_BLOCK]), axis=2)
    nonfinite = amax_bits >= 0x7F800000
    amax = tl.where(nonfinite, 0, amax_bits).to(tl.float32, bitcast=True)
    dq_bits = tl.div_rn(amax, MAX_Q).to(tl.int32, bitcast=True)
    if ROUND_UP:
        e = (dq_bits + 0x7FFFFF) >> 23
    else:
        e = dq_bits >> 23
    # 1 / 2^(e - 127) built exactly; a zero or non-finite block quantizes to code 0.
    zero_block = (e == 0) | nonfinite
    quant_scale = tl.where(zero_block, 0, (254 - e) << 23).to(tl.float32, bitcast=True)
    scale = tl.where(nonfinite, 255, e)

    q = tl.reshape(tl.reshape(x, [BLOCK_R, NB, MXFP_BLOCK]) * quant_scale[:, :, None], [BLOCK_R, BLOCK_L])
    zero = tl.reshape(tl.broadcast_to(zero_block[:, :, None], [BLOCK_R, NB, MXFP_BLOCK]), [BLOCK_R, BLOCK_L])
    if IS_FP4:
        qb = q.to(tl.int32, bitcast=True)
        if STOCHASTIC:
            idx = rows[:, None] * L + cols[None, :]
            code = e2m1_stochastic(tl.abs(q), uniform_from_index(idx, seed))
        else:
            code = e2m1_nearest(qb & 0x7FFFFFFF)
        code = code | ((qb >> 28) & 8)
        code = tl.where(zero, 0, code).to(tl.uint8)
        lo, hi = tl.split(tl.reshape(code, [BLOCK_R, BLOCK_L // 2, 2]))
        packed = lo | (hi << 4)
        qcols = pid_l * (BLOCK_L // 2) + tl.arange(0, BLOCK_L // 2).to(tl.int64)
        qmask = row_ok[:, None] & (qcols < Lq)[None, :]
        tl.store(q_ptr + rows[:, None] * Lq + qcols[None, :], packed, mask=qmask)
    else:
        q = tl.minimum(tl.maximum(q, -MAX_Q), MAX_Q)
        bits = fp32_to_fp8_bits(q, FP8_MANT, FP8_BIAS)
        bits = tl.where(zero, 0, bits).to(tl.uint8)
        tl.store(q_ptr + rows[:, None] * Lq + cols[None, :], bits, mask=mask)

    scols = pid_l * NB + tl.arange(0, NB).to(tl.int64)
    smask = row_ok[:, None] & (scols < Ls)[None, :]
    tl.store(scale_ptr + rows[:, None] * Ls + scols[None, :], scale.to(tl.uint8), mask=smask)
