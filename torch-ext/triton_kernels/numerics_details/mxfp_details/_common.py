"""Element encodings shared by the MX kernels, written as bit arithmetic.

Everything here is integer or exactly-rounded float arithmetic, so the kernels give the same
bits on the GPU and in the interpreter, and the torch references in `mxfp.py` can mirror them.
"""

import triton
import triton.language as tl


@triton.jit
def fmix32(h):
    """The 32-bit finaliser of MurmurHash3 (a bijective avalanche mix); `h` is uint32."""
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h


@triton.jit
def uniform_from_index(idx, seed):
    """A uniform float in [0, 1) on a 2^-24 grid from the 64-bit element index and a seed.

    `mxfp._uniform_from_index_torch` computes the same bits.
    """
    lo = (idx & 0xFFFFFFFF).to(tl.uint32)
    hi = (idx >> 32).to(tl.uint32)
    h = fmix32(hi * 0x9E3779B1 + seed.to(tl.uint32))
    h = fmix32(lo ^ h)
    return (h >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def e2m1_value(c):
    """fp32 value of an E2M1 magnitude index c in 0..7 (0, .5, 1, 1.5, 2, 3, 4, 6).

    c << 22 puts E2M1's exponent and mantissa bits into fp32's fields; read as fp32 that is the
    E2M1 value times 2^-126 (E2M1 subnormals land on fp32 subnormals), hence the exact rescale.
    """
    return (c << 22).to(tl.float32, bitcast=True) * 8.507059173023462e37  # 2^126


@triton.jit
def e2m1_nearest(a_bits):
    """Magnitude index of |q| (given as its fp32 bits) rounded to the E2M1 grid, ties away from
    zero, saturating at 6: the same function as comparing with 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.

    From 1.0 up, E2M1 keeps one mantissa bit: adding half of it (bit 21) and shifting gives
    (exponent << 1 | mantissa), rounded half away; below 1.0 the grid is 0, 0.5, 1.0.
    """
    normal = tl.minimum((a_bits + ((1 << 21) - (252 << 22))) >> 22, 7)
    small = (a_bits >= 0x3E800000).to(tl.int32) + (a_bits >= 0x3F400000).to(tl.int32)
    return tl.where(a_bits >= 0x3F800000, normal, small)


@triton.jit
def e2m1_stochastic(a, u):
    """Magnitude index of a rounded up with probability (a - lo) / (hi - lo); u is uniform [0, 1)."""
    c = (a >= 0.5).to(tl.int32) + (a >= 1.0).to(tl.int32) + (a >= 1.5).to(tl.int32)
    c += (a >= 2.0).to(tl.int32) + (a >= 3.0).to(tl.int32) + (a >= 4.0).to(tl.int32)
    c += (a >= 6.0).to(tl.int32)
    # 1 / (gap to the next grid point): 0.5 below 2, 1 from 2 to 4, 2 from 4 to 6.
    inv_gap = tl.where(c >= 6, 0.5, tl.where(c >= 4, 1.0, 2.0))
    frac = (a - e2m1_value(c)) * inv_gap
    c += (u < frac).to(tl.int32)
    return tl.minimum(c, 7)


@triton.jit
def fp32_to_fp8_bits(q, MANT: tl.constexpr, BIAS: tl.constexpr):
    """Round-to-nearest-even fp32 -> fp8 (MANT mantissa bits, exponent BIAS) as int32 bits.

    The caller clamps q to the finite fp8 range first, so no overflow handling is needed.
    """
    qb = q.to(tl.int32, bitcast=True)
    sign = (qb >> 31) & 1
    ab = qb & 0x7FFFFFFF
    e_unb = (ab >> 23) - 127
    m = (ab & 0x7FFFFF) | 0x800000
    EMIN: tl.constexpr = 1 - BIAS
    # Shift that leaves MANT fraction bits (more for fp8 subnormals); 25 already gives 0.
    sh = tl.minimum(23 - MANT + tl.maximum(EMIN - e_unb, 0), 25)
    kept = m >> sh
    rem = m & ((1 << sh) - 1)
    half = 1 << (sh - 1)
    kept += ((rem > half) | ((rem == half) & ((kept & 1) == 1))).to(tl.int32)
    base = tl.maximum(e_unb + BIAS - 1, 0) << MANT
    return (sign << 7) | (base + kept)


@triton.jit
def fp8_bits_to_fp32(b, MANT: tl.constexpr, BIAS: tl.constexpr, SUB_STEP: tl.constexpr, IS_E4M3FN: tl.constexpr):
    """Exact fp8 (bits in an int32) -> fp32, including subnormals, NaN and (for e5m2) Inf.

    SUB_STEP is the fp8 subnormal step 2^(1 - BIAS - MANT).
    """
    e = (b >> MANT) & ((1 << (7 - MANT)) - 1)
    m = b & ((1 << MANT) - 1)
    normal = ((e - BIAS + 127) << 23) | (m << (23 - MANT))
    subnormal = (m.to(tl.float32) * SUB_STEP).to(tl.int32, bitcast=True)
    bits = tl.where(e == 0, subnormal, normal)
    if IS_E4M3FN:
        bits = tl.where((b & 0x7F) == 0x7F, 0x7FC00000, bits)
    else:
        bits = tl.where(e == 31, tl.where(m == 0, 0x7F800000, 0x7FC00000), bits)
    bits = bits | ((b & 0x80) << 24)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def e8m0_to_fp32(s):
    """E8M0 scale byte (int32) -> 2^(s-127); 0 gives 2^-127 (an fp32 subnormal), 255 gives NaN."""
    bits = tl.where(s == 255, 0x7FC00000, tl.where(s == 0, 0x400000, s << 23))
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def program_tile(L, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's (row indices [BLOCK_R], column-tile index) over a [R, L] grid, int64."""
    pid = tl.program_id(0).to(tl.int64)
    n_l_tiles = tl.cdiv(L, BLOCK_L)
    rows = (pid // n_l_tiles) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    return rows, pid % n_l_tiles
