"""Output casts that round the same way interpreted as compiled."""

import triton
import triton.language as tl


@triton.jit
def cast_out(x, DTYPE: tl.constexpr, INTERPRETED: tl.constexpr):
    """float32 -> DTYPE, round to nearest even. Compiled Triton already rounds so; the interpreter (Triton
    3.6) truncates float32 -> bfloat16, so there the rounding is done on the bits first."""
    if INTERPRETED and DTYPE == tl.bfloat16:
        x = x.to(tl.float32)
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    return x.to(DTYPE)
