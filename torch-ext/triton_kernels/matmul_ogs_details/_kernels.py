"""Triton kernels of matmul_ogs: one grouped/ragged matmul kernel and a deterministic top-k reduce.

Weights are read through the addressing formula every layout exposes (see
tensor_details.layout.OperandAddressing): element (e, k, n) lives at
    e*stride_e + (k // G)*stride_k_group + (k % G)*stride_k_inner + n*stride_n
where k is the packed byte row (FP4 values), the MX block row (scales) or the element row (dense
weights), and G is a power of two (a constexpr, so the division is a shift).

MXFP4 is upcast in registers: the packed byte tile [BLOCK_K/2, BLOCK_N] is split into its low
nibbles (even K) and high nibbles (odd K); each nibble is decoded arithmetically (no table in
memory), scaled by 2^(scale-127) built from the exponent bits, and cast to the activation dtype.
Two main loops (a launch-config choice, `MatmulConfig.swap_xw`):
* _mainloop: acc = x @ w. The activation tile is de-interleaved like the weight bytes, so the dot
  runs as two half-K dots (even K against the low nibbles, odd K against the high nibbles).
* _swapped_mainloop: acc^T = w^T @ x^T. The decoded weight is the left operand (wgmma reads it
  from registers on Hopper), N fills the MMA's M dimension (few-row decode tiles still use a
  64-wide wgmma), the nibbles are joined back into K order (one dot per BLOCK_K, x as loaded),
  and E2M1 is decoded from bit patterns rather than an int->float conversion. Weights in
  HopperMXValueLayout's nibble-quads order are read as 16-bit words by the quads decoders, whose
  every op up to the MMA operand is elementwise (no register-layout conversion of the tile).
"""

from __future__ import annotations

import triton
import triton.language as tl

from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..tensor_details.layout_details.mx import E2M1_BF16_PAIR_MASK, QUADS_DECODE_RECIPES
from ._cast import cast_out

# 2 * |E2M1| for magnitude codes 0..7 (0, .5, 1, 1.5, 2, 3, 4, 6), four bits each, code 0 lowest:
# 0xC8643210 as a signed int32 (the arithmetic shift's sign bits are masked off after the shift).
_E2M1_TWICE_PACKED: tl.constexpr = tl.constexpr(0xC8643210 - (1 << 32))


@triton.jit
def _e2m1_twice(code):
    """Nibble (int32, 0..15) -> 2 * its E2M1 value, exactly, as float32. The unswapped main loop's
    decoder; `_e2m1_bits` gives the same products there but its sm_80 loop was 10-14 % longer and
    spilled at 64- and 128-row tiles (offline SASS, 2026-11-23), so each loop keeps its own."""
    mag = code & 7
    twice = (_E2M1_TWICE_PACKED >> (mag * 4)) & 15
    twice = tl.where(code >= 8, -twice, twice)
    return twice.to(tl.float32)


@triton.jit
def _e8m0_half(s):
    """E8M0 scale byte (int32) -> 2^(s - 127) / 2 as float32 (the 1/2 undoes _e2m1_twice); 255 -> NaN."""
    bits = tl.where(s == 0, 0x00200000, (s - 1) << 23)  # s == 0: 2^-128 is a float32 subnormal
    bits = tl.where(s == 1, 0x00400000, bits)  # s == 1: 2^-127 likewise
    bits = tl.where(s == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _e2m1_bits(code):
    """Nibble (int32, 0..15) -> its E2M1 value, exactly, as float32, built from bits (no table, no
    int->float conversion): magnitudes 1..6 are the bfloat16 patterns 0x3F00 + 64*mag for mag >= 2,
    0x3F00 (0.5) for mag == 1, 0 for mag == 0; the sign is bit 3 moved to bit 15."""
    mag = code & 7
    bits = tl.where(mag >= 2, 0x3F00 + (mag << 6), tl.where(mag == 1, 0x3F00, 0))
    bits = (bits | ((code & 8) << 12)) << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _e8m0(s):
    """E8M0 scale byte (int32) -> 2^(s - 127) as float32; 255 -> NaN."""
    bits = tl.where(s == 0, 0x00400000, s << 23)  # s == 0: 2^-127 is a float32 subnormal
    bits = tl.where(s == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _k_offsets(k, stride_k_group, stride_k_inner, KG: tl.constexpr, INDEX_64: tl.constexpr):
    """(k // KG)*stride_k_group + (k % KG)*stride_k_inner; the plain product when KG == 1."""
    if INDEX_64:
        k = k.to(tl.int64)
    if KG == 1:
        return k * stride_k_group
    return (k // KG) * stride_k_group + (k % KG) * stride_k_inner


@triton.jit
def _swizzle_tile(pid, n_tiles_m, n_tiles_n, GROUP_M: tl.constexpr):
    """Walk GROUP_M row tiles across every column tile before moving on (rows re-read from L2)."""
    tiles_per_group = GROUP_M * n_tiles_n
    group = pid // tiles_per_group
    first_m = group * GROUP_M
    group_size = tl.minimum(n_tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % tiles_per_group) % group_size
    pid_n = (pid % tiles_per_group) // group_size
    return pid_m, pid_n


@triton.jit
def _mainloop(X, x_rows, mask_x, stride_x_m, stride_x_k,
              W, stride_w_kg, stride_w_ki, stride_w_n, WS, stride_ws_kg, stride_ws_ki, stride_ws_n,
              offs_n_safe, mask_n, k_start, K, W_MX: tl.constexpr, W_KG: tl.constexpr, WS_KG: tl.constexpr,
              DOT_F32: tl.constexpr, INDEX_64: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] = x tile @ w tile over k in [k_start, K): x de-interleaved into even/odd K,
    two half-K dots."""
    x_ptrs = X + x_rows[:, None] * stride_x_m
    w_base = W + offs_n_safe[None, :] * stride_w_n
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptrs + offs_k[None, :] * stride_x_k, mask=mask_x[:, None] & (offs_k < K)[None, :], other=0.0)
        if W_MX:
            offs_kp = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            w_off = _k_offsets(offs_kp, stride_w_kg, stride_w_ki, W_KG, INDEX_64)
            packed_w = tl.load(w_base + w_off[:, None], mask=(offs_kp < K // 2)[:, None] & mask_n[None, :], other=0)
            offs_ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
            s_off = _k_offsets(offs_ks, stride_ws_kg, stride_ws_ki, WS_KG, INDEX_64)
            s_ptrs = WS + s_off[:, None] + offs_n_safe[None, :] * stride_ws_n
            s = tl.load(s_ptrs, mask=(offs_ks < K // 32)[:, None] & mask_n[None, :], other=0).to(tl.int32)
            scale = _e8m0_half(s)[:, None, :]
            packed_w = packed_w.to(tl.int32)
            w_lo = tl.reshape(_e2m1_twice(packed_w & 15), (BLOCK_K // 32, 16, BLOCK_N))
            w_hi = tl.reshape(_e2m1_twice(packed_w >> 4), (BLOCK_K // 32, 16, BLOCK_N))
            w_lo = tl.reshape(w_lo * scale, (BLOCK_K // 2, BLOCK_N))
            w_hi = tl.reshape(w_hi * scale, (BLOCK_K // 2, BLOCK_N))
            x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 2, 2)))
            if DOT_F32:
                acc = tl.dot(x_even.to(tl.float32), w_lo, acc)
                acc = tl.dot(x_odd.to(tl.float32), w_hi, acc)
            else:
                acc = tl.dot(x_even, w_lo.to(x.dtype), acc)
                acc = tl.dot(x_odd, w_hi.to(x.dtype), acc)
        else:
            w_off = _k_offsets(offs_k, stride_w_kg, stride_w_ki, W_KG, INDEX_64)
            w = tl.load(w_base + w_off[:, None], mask=(offs_k < K)[:, None] & mask_n[None, :], other=0.0)
            if DOT_F32:
                acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc)
            else:
                acc = tl.dot(x, w.to(x.dtype), acc)

    return acc


# Decoders of the swapped main loop (MatmulConfig.decode): how packed FP4 becomes MMA operands.
DECODE_BYTES: tl.constexpr = tl.constexpr(0)  # byte tile, per-nibble bit patterns (any layout)
DECODE_WORDS: tl.constexpr = tl.constexpr(1)  # 32-bit words of 8 nibbles, float32 bit placement
DECODE_PTX: tl.constexpr = tl.constexpr(2)  # 32-bit words, bf16x2 pairs in inline PTX (CUDA, bf16 x)
# nibble-quads storage (HopperMXValueLayout, OperandAddressing.nibble_quads): 32-bit units (two 16-bit
# words) of four value pairs 16 apart, decoded elementwise into four MMA operands (Triton ops / PTX)
DECODE_QUADS: tl.constexpr = tl.constexpr(3)
DECODE_QUADS_PTX: tl.constexpr = tl.constexpr(4)
DECODE_QUADS_PTX_SMALL_SCALES: tl.constexpr = tl.constexpr(5)  # every scale byte <= 128: one FMA per pair

_TWO_POW_126: tl.constexpr = tl.constexpr(8.507059173023462e37)

_PAIR_MASK_HEX = f"0x{E2M1_BF16_PAIR_MASK:08X}"


def _decode_ptx(scale_regs: tuple[str, ...], one_multiply: bool = False) -> str:
    """Inline PTX for the bf16x2 decoders: a 32-bit register $4 -> four bf16x2 registers $0..$3,
    output q holding nibbles q of the two 16-bit lanes (q = 0, 1 from the low byte of each lane,
    2, 3 from its high byte), scaled by the bf16x2 pair in register scale_regs[q].
    A pair starts as its two nibbles alone in the low bits of the two 16-bit lanes (an AND, after
    shifting $4 down by 8 for q >= 2, or at bits 4..7 of each lane for odd q); one integer multiply
    by (1 << 6) + (1 << 12) (odd q: (1 << 2) + (1 << 8)) adds two shifted copies that cannot carry
    into each other, and the mask 0x81C0 per lane keeps the three magnitude bits at bf16 bits 6..8
    (exponent low bits + mantissa top bit) and the sign at bit 15: E2M1 * 2^-126 exactly (0.5 lands
    on a subnormal). Two bf16x2 FMAs (-0 addend) then multiply by 2^126 and by the scale, both
    exact; with `one_multiply` the scale pair already holds 2^(s-1) = 2^126 * 2^(s-127) (one FMA;
    the host asks for it only when every scale is <= 128, where 2^(s-1) is a bf16)."""
    lines = ["{", ".reg .b32 t, u, c, nz;", "mov.b32 c, 0x7E807E80;", "mov.b32 nz, 0x80008000;", "shr.u32 u, $4, 8;"]
    for q in range(4):
        src, mask, mul = ("$4", "u")[q // 2], ("0x000F000F", "0x00F000F0")[q % 2], ("0x1040", "0x104")[q % 2]
        lines += [f"and.b32 t, {src}, {mask};", f"mul.lo.u32 t, t, {mul};", f"and.b32 t, t, {_PAIR_MASK_HEX};"]
        if not one_multiply:
            lines.append("fma.rn.bf16x2 t, t, c, nz;")
        lines.append(f"fma.rn.bf16x2 ${q}, t, {scale_regs[q]}, nz;")
    return "\n".join(lines + ["}"])


# One 32-bit word of eight E2M1 nibbles (nibble i = K offset i) -> nibbles (j, j+4) for j = 0..3,
# all scaled by the pair $5.
_DECODE_PAIRS_PTX: tl.constexpr = tl.constexpr(_decode_ptx(("$5",) * 4))


def _decode_quads_ptx(one_multiply: bool = False, scale_pair: bool = False) -> str:
    """Inline PTX for the quads decoders: a 32-bit unit $4 (16-bit quads words j and j + 1 of a
    64-value block, j even) -> bf16x2 register $q holding the values at K offsets 16q + j and
    16q + j + 1, scaled by $5 (q = 0, 1: the block's first MX block) or $6 (q = 2, 3: its second);
    with `scale_pair`, by the low (q = 0, 1) or the high (q = 2, 3) bf16 of $5, copied to both lanes
    (ptxas folds the copy into the multiply's operand: no instruction).
    HopperMXValueLayout stores each pair's eight bits where one of these recipes finds them
    (`QUADS_DECODE_RECIPES` there; 10 integer operations for the four pairs instead of 13): a mask
    (bits already in place), a rotation and a mask, a mask, a multiply by 2^a + 2^b (two shifted
    copies that cannot carry into each other) and a mask, or a rotation first. The final mask keeps
    bf16 bits 6..8 (three magnitude bits: exponent low bits + mantissa top bit) and 15 (sign) of
    each lane: E2M1 * 2^-126 exactly; then the bf16x2 FMAs by 2^126 and by the scale, or one FMA
    by 2^(s-1) with `one_multiply` (every scale <= 128), as in `_decode_ptx`."""
    lines = ["{", ".reg .b32 t, c, nz;", "mov.b32 c, 0x7E807E80;", "mov.b32 nz, 0x80008000;"]
    scales = ("$5", "$5", "$6", "$6")
    if scale_pair:
        lines += [".reg .b16 s_lo, s_hi;", ".reg .b32 m_lo, m_hi;", "mov.b32 {s_lo, s_hi}, $5;",
                  "mov.b32 m_lo, {s_lo, s_lo};", "mov.b32 m_hi, {s_hi, s_hi};"]
        scales = ("m_lo", "m_lo", "m_hi", "m_hi")
    for q, (rotate, mask, multiply) in enumerate(QUADS_DECODE_RECIPES):
        src = "$4"
        if rotate:
            lines.append(f"shf.l.wrap.b32 t, $4, $4, {rotate};")
            src = "t"
        if multiply:
            lines += [f"and.b32 t, {src}, {mask:#010x};", f"mul.lo.u32 t, t, {multiply};"]
            src = "t"
        lines.append(f"and.b32 t, {src}, {_PAIR_MASK_HEX};")
        if not one_multiply:
            lines.append("fma.rn.bf16x2 t, t, c, nz;")
        lines.append(f"fma.rn.bf16x2 ${q}, t, {scales[q]}, nz;")
    return "\n".join(lines + ["}"])


def _small_scale_pairs_ptx() -> str:
    """Inline PTX: a 32-bit word $2 of four E8M0 scale bytes, each <= 128 -> $0 holding bytes 0 and
    1, $1 bytes 2 and 3, as bf16x2 2^(s - 1) (the lower byte in the low lane): a prmt moves the two
    bytes into the low bytes of the two 16-bit lanes (selector nibble 4: a zero byte of the second
    operand), and one multiply-add makes each lane (s + 126) << 7, below 2^16, so no carry crosses."""
    lines = []
    for o in range(2):
        lines += [f"prmt.b32 ${o}, $2, 0, {0x4140 + 0x0202 * o:#06x};", f"mad.lo.u32 ${o}, ${o}, 128, 0x3F003F00;"]
    return "\n".join(lines)


_DECODE_QUADS_PTX: tl.constexpr = tl.constexpr(_decode_quads_ptx())
_DECODE_QUADS_PTX_ONE_FMA: tl.constexpr = tl.constexpr(_decode_quads_ptx(one_multiply=True))
_DECODE_QUADS_PTX_SCALE_PAIR: tl.constexpr = tl.constexpr(_decode_quads_ptx(one_multiply=True, scale_pair=True))
_SMALL_SCALE_PAIRS_PTX: tl.constexpr = tl.constexpr(_small_scale_pairs_ptx())


@triton.jit
def _e2m1_word_f32(words, NIBBLE: tl.constexpr):
    """Nibble NIBBLE (0..7) of each uint32 word -> its E2M1 value * 2^-126 as float32, by placing
    the three magnitude bits at float32 bits 22..24 and the sign at bit 31 (0.5 becomes 2^-127,
    a subnormal): two shifts and two masks, no table, no int->float conversion."""
    SHIFT: tl.constexpr = 4 * NIBBLE
    if SHIFT <= 22:
        mag = (words << (22 - SHIFT)) & 0x01C00000
    else:
        mag = (words >> (SHIFT - 22)) & 0x01C00000
    sign = (words << (28 - SHIFT)) & 0x80000000
    return (mag | sign).to(tl.float32, bitcast=True)


@triton.jit
def _word_value(words, NIBBLE: tl.constexpr, scale, out_dtype):
    """Nibble NIBBLE of each word, decoded and scaled, in out_dtype. The 2^126 is its own multiply:
    folded into the scale it would be 2^(s-1), which overflows float32 for s > 128."""
    return ((_e2m1_word_f32(words, NIBBLE) * _TWO_POW_126) * scale).to(out_dtype)


@triton.jit
def _join8(v0, v1, v2, v3, v4, v5, v6, v7):
    """[..., 8] holding v0..v7 in order (nested joins put the innermost join's bit first)."""
    return tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))


@triton.jit
def _bf16_half(pairs, HIGH: tl.constexpr):
    """The low or high bf16 of int32 words holding bf16x2 pairs."""
    if HIGH:
        pairs = pairs >> 16
    return pairs.to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _bf16_scale_bits(s):
    """E8M0 scale bytes -> int32 holding the bf16 bits of 2^(s - 127) (0: the subnormal 2^-127; 255: NaN)."""
    s = s.to(tl.int32)
    return tl.where(s == 0, 0x40, tl.where(s == 255, 0x7FC0, s << 7))


@triton.jit
def _decode_words(words, s, out_dtype, DECODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K/8] int32 words (K order: word w, nibble i = K offset 8w + i) and
    [BLOCK_N, BLOCK_K/32] E8M0 scales -> the [BLOCK_N, BLOCK_K] weight tile in out_dtype."""
    words = tl.reshape(words, (BLOCK_N, BLOCK_K // 32, 4))
    if DECODE == DECODE_PTX:
        bits = _bf16_scale_bits(s)
        pair = tl.broadcast_to((bits | (bits << 16))[:, :, None], (BLOCK_N, BLOCK_K // 32, 4))
        p0, p1, p2, p3 = tl.inline_asm_elementwise(
            _DECODE_PAIRS_PTX, "=r,=r,=r,=r,r,r", [words, pair],
            dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
        w = _join8(_bf16_half(p0, False), _bf16_half(p1, False), _bf16_half(p2, False), _bf16_half(p3, False),
                   _bf16_half(p0, True), _bf16_half(p1, True), _bf16_half(p2, True), _bf16_half(p3, True))
    else:
        u = words.to(tl.uint32, bitcast=True)
        scale = _e8m0(s.to(tl.int32))[:, :, None]
        w = _join8(_word_value(u, 0, scale, out_dtype), _word_value(u, 1, scale, out_dtype),
                   _word_value(u, 2, scale, out_dtype), _word_value(u, 3, scale, out_dtype),
                   _word_value(u, 4, scale, out_dtype), _word_value(u, 5, scale, out_dtype),
                   _word_value(u, 6, scale, out_dtype), _word_value(u, 7, scale, out_dtype))
    return tl.reshape(w, (BLOCK_N, BLOCK_K))


def _signed32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


# QUADS_DECODE_RECIPES as int32 operands for their Triton twin, per pair q: (rotate, 32 - rotate,
# 2^rotate - 1 (the arithmetic shift's fill masked off), mask, multiply)
_QUADS_RECIPE_OPS: tl.constexpr = tl.constexpr(tuple(
    (rotate, 32 - rotate, (1 << rotate) - 1, _signed32(mask), multiply) for rotate, mask, multiply in QUADS_DECODE_RECIPES))
_BF16_PAIR_MASK: tl.constexpr = tl.constexpr(_signed32(E2M1_BF16_PAIR_MASK))


@triton.jit
def _quads_pair_bits(unit, Q: tl.constexpr):
    """Pair Q of int32 units (quads words j | j + 1 << 16) as bf16x2 bits holding E2M1 * 2^-126 in
    each lane: the PTX decoder's recipe (QUADS_DECODE_RECIPES) in Triton integer ops."""
    ROTATE: tl.constexpr = _QUADS_RECIPE_OPS[Q][0]
    MULTIPLY: tl.constexpr = _QUADS_RECIPE_OPS[Q][4]
    if ROTATE:
        unit = (unit << ROTATE) | ((unit >> _QUADS_RECIPE_OPS[Q][1]) & _QUADS_RECIPE_OPS[Q][2])
    if MULTIPLY:
        unit = (unit & _QUADS_RECIPE_OPS[Q][3]) * MULTIPLY
    return unit & _BF16_PAIR_MASK


@triton.jit
def _quads_value(unit, Q: tl.constexpr, scale, out_dtype, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Value Q of the two words of each unit, [BLOCK_N, BLOCK_K/4] in word order, scaled (float32
    scale per word; the 2^126 is its own multiply, as in `_word_value`), in out_dtype."""
    pair = _quads_pair_bits(unit, Q)
    lanes = tl.join(pair << 16, pair & -65536)  # each lane's bf16 bits as float32 bits
    lanes = tl.reshape(lanes.to(tl.float32, bitcast=True), (BLOCK_N, BLOCK_K // 4))
    return ((lanes * _TWO_POW_126) * scale).to(out_dtype)


@triton.jit
def _quads_scales(s, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K/32] scales -> each quads word's two: the first and the second MX block of
    its 64-value block, broadcast to [BLOCK_N, BLOCK_K/4]."""
    s_lo, s_hi = tl.split(tl.reshape(s, (BLOCK_N, BLOCK_K // 64, 2)))
    s_lo = tl.reshape(tl.broadcast_to(s_lo[:, :, None], (BLOCK_N, BLOCK_K // 64, 16)), (BLOCK_N, BLOCK_K // 4))
    s_hi = tl.reshape(tl.broadcast_to(s_hi[:, :, None], (BLOCK_N, BLOCK_K // 64, 16)), (BLOCK_N, BLOCK_K // 4))
    return s_lo, s_hi


@triton.jit
def _quads_scale_pairs(s_words, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K/128] scale words (every byte <= 128) -> each quads word's multipliers as
    int32 bf16x2 bits, 2^(s - 1) of its 64-value block's first MX block in the low lane and of the
    second in the high one, [BLOCK_N, BLOCK_K/4]: two instructions per 64-value block and column,
    where splitting the bytes and building each multiplier alone took 6.5 (offline sm_90a SASS at
    16 x 64 x 256: 477 -> 441 per K step)."""
    first, second = tl.inline_asm_elementwise(_SMALL_SCALE_PAIRS_PTX, "=r,=r,r", [s_words],
                                              dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
    pairs = tl.reshape(tl.join(first, second), (BLOCK_N, BLOCK_K // 64))  # block 2w + h: half h of word w
    return tl.reshape(tl.broadcast_to(pairs[:, :, None], (BLOCK_N, BLOCK_K // 64, 16)), (BLOCK_N, BLOCK_K // 4))


@triton.jit
def _decode_quads(words, s, out_dtype, DECODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  WHOLE_S_WORDS: tl.constexpr = False):
    """[BLOCK_N, BLOCK_K/4] 16-bit quads words and [BLOCK_N, BLOCK_K/32] E8M0 scales (WHOLE_S_WORDS,
    DECODE_QUADS_PTX_SMALL_SCALES only: [BLOCK_N, BLOCK_K/128] words of 4) -> the
    [BLOCK_N, BLOCK_K] weight tile in K order. Each unit of words j, j + 1 (j even) is decoded
    elementwise into its four pairs (pair q = K offsets 16q + j, 16q + j + 1 of its 64-value block,
    by the recipes of QUADS_DECODE_RECIPES: inline PTX on CUDA, the same integer ops in Triton
    otherwise); joining the four results and moving q above j is a relabelling that matches
    wgmma's register layout of the left operand,
    so Triton loads the words from shared memory straight into that layout (no conversion of the
    decoded tile; benchmarks/NOTES_matmul_perf.md section 7)."""
    if DECODE == DECODE_QUADS:
        low, high = tl.split(tl.reshape(words.to(tl.int32), (BLOCK_N, BLOCK_K // 8, 2)))
        unit = (low & 0xFFFF) | (high << 16)
        s_lo, s_hi = _quads_scales(_e8m0(s.to(tl.int32)), BLOCK_N, BLOCK_K)
        w0 = _quads_value(unit, 0, s_lo, out_dtype, BLOCK_N, BLOCK_K)
        w1 = _quads_value(unit, 1, s_lo, out_dtype, BLOCK_N, BLOCK_K)
        w2 = _quads_value(unit, 2, s_hi, out_dtype, BLOCK_N, BLOCK_K)
        w3 = _quads_value(unit, 3, s_hi, out_dtype, BLOCK_N, BLOCK_K)
    elif WHOLE_S_WORDS:
        tl.static_assert(DECODE == DECODE_QUADS_PTX_SMALL_SCALES)
        w0, w1, w2, w3 = tl.inline_asm_elementwise(
            _DECODE_QUADS_PTX_SCALE_PAIR, "=r,=r,=r,=r,r,r,r", [words, _quads_scale_pairs(s, BLOCK_N, BLOCK_K)],
            dtype=(tl.bfloat16,) * 4, is_pure=True, pack=2)
    else:  # inline PTX: the general form, or one multiply when every scale is <= 128
        if DECODE == DECODE_QUADS_PTX_SMALL_SCALES:
            asm: tl.constexpr = _DECODE_QUADS_PTX_ONE_FMA
            bits = (s.to(tl.int32) + 126) << 7  # bf16 2^(s - 1)
        else:
            asm: tl.constexpr = _DECODE_QUADS_PTX
            bits = _bf16_scale_bits(s)
        s_lo, s_hi = _quads_scales(bits, BLOCK_N, BLOCK_K)
        w0, w1, w2, w3 = tl.inline_asm_elementwise(
            asm, "=r,=r,=r,=r,r,r,r",
            [words, s_lo.to(tl.int16).to(tl.bfloat16, bitcast=True), s_hi.to(tl.int16).to(tl.bfloat16, bitcast=True)],
            dtype=(tl.bfloat16,) * 4, is_pure=True, pack=2)
    w = tl.join(tl.join(w0, w2), tl.join(w1, w3))  # [BLOCK_N, BLOCK_K/4, 2, 2]: [.., a, b] = w_(2a+b)
    w = tl.reshape(w, (BLOCK_N, BLOCK_K // 64, 16, 2, 2))  # [n, block, j, a, b]
    return tl.reshape(tl.permute(w, (0, 1, 3, 4, 2)), (BLOCK_N, BLOCK_K))  # K offset 64*block + 16*q + j


@triton.jit
def _load_k_tail(ptrs, offs_k, k_bound, MASK_K: tl.constexpr):
    """A [rows, len(offs_k)] tile; in the K tail step (MASK_K) columns at or past k_bound read 0."""
    if MASK_K:
        return tl.load(ptrs, mask=(offs_k < k_bound)[None, :], other=0)
    return tl.load(ptrs)


@triton.jit
def _step_scales(s_base, s32_base, k0, K, stride_ws_kg, stride_ws_ki, WS_KG: tl.constexpr, INDEX_64: tl.constexpr,
                 BLOCK_K: tl.constexpr, MASK_K: tl.constexpr, S_WORDS: tl.constexpr,
                 WHOLE_S_WORDS: tl.constexpr = False):
    """The [BLOCK_N, BLOCK_K/32] E8M0 scales of the K step at k0 (MASK_K: 0 at or past K): bytes, or
    with S_WORDS whole words split in registers (`_step_scale_words`), or with WHOLE_S_WORDS too
    (unmasked steps) the [BLOCK_N, BLOCK_K/128] words themselves."""
    if S_WORDS:
        s = _step_scale_words(s32_base, k0, K, stride_ws_kg, INDEX_64, BLOCK_K, MASK_K, WHOLE_S_WORDS)
    else:
        offs_ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        s_off = _k_offsets(offs_ks, stride_ws_kg, stride_ws_ki, WS_KG, INDEX_64)
        s = _load_k_tail(s_base + s_off[None, :], offs_ks, K // 32, MASK_K)
    return s


@triton.jit
def _step_scale_words(s32_base, k0, K, stride_ws_kg, INDEX_64: tl.constexpr, BLOCK_K: tl.constexpr,
                      MASK_K: tl.constexpr, WHOLE: tl.constexpr = False):
    """`_step_scales` for the K-grouped scale layouts (the 4 scales of a column and 128 K values in
    one aligned 32-bit word; s32_base: the columns' words) and BLOCK_K a multiple of 128: the
    step's words, split into its [BLOCK_N, BLOCK_K/32] bytes (int32). Whole words are wide enough
    for the pipeliner's async copies, so the scales are multi-buffered in shared memory like the
    weights (read as bytes they went straight to registers, and each step waited on global
    memory). MASK_K: 0 at or past K, also where the storage pads the last word. WHOLE: the words
    unsplit (for DECODE_QUADS_PTX_SMALL_SCALES; not with MASK_K)."""
    g = k0 // 128 + tl.arange(0, BLOCK_K // 128)
    off = g.to(tl.int64) * (stride_ws_kg // 4) if INDEX_64 else g * (stride_ws_kg // 4)
    if MASK_K:  # the tail step may start in the storage's last word
        words = tl.load(s32_base + off[None, :], mask=(g < tl.cdiv(K // 32, 4))[None, :], other=0)
    else:
        words = tl.load(s32_base + off[None, :])
    if WHOLE:
        tl.static_assert(not MASK_K)
        s = words
    else:
        b = tl.join(tl.join(words & 255, (words >> 16) & 255), tl.join((words >> 8) & 255, (words >> 24) & 255))
        s = tl.reshape(b, (words.shape[0], BLOCK_K // 32))  # [.., 4w + j]: byte j of word w
        if MASK_K:
            offs_ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
            s = tl.where((offs_ks < K // 32)[None, :], s, 0)
    return s


@triton.jit
def _swapped_step(acc, k0, xt_base, mask_x, stride_x_k, w_base, w32_base, s, stride_w_kg, stride_w_ki,
                  K, MASK_K: tl.constexpr, W_MX: tl.constexpr, W_KG: tl.constexpr,
                  DECODE: tl.constexpr, DOT_F32: tl.constexpr, INDEX_64: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WHOLE_S_WORDS: tl.constexpr = False):
    """One BLOCK_K step of `_swapped_mainloop` (`s`: its scales, from `_step_scales`). Weight loads
    need no N mask (the column offsets are clamped in range and the extra columns are never
    stored); K is masked only in the tail step."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    x_mask = mask_x[None, :]
    if MASK_K:
        x_mask = x_mask & (offs_k < K)[:, None]
    xt = tl.load(xt_base + offs_k[:, None] * stride_x_k, mask=x_mask, other=0.0)
    dot_dtype = tl.float32 if DOT_F32 else xt.dtype
    if W_MX:
        if DECODE >= DECODE_QUADS:
            offs_kw = k0 // 4 + tl.arange(0, BLOCK_K // 4)
            # the storage is padded to whole 64-value blocks: the tail step reads blocks starting below K
            words = _load_k_tail(w32_base.to(tl.pointer_type(tl.int16)) + offs_kw[None, :], offs_kw,
                                 tl.cdiv(K, 64) * 16, MASK_K)
            w = _decode_quads(words, s, dot_dtype, DECODE, BLOCK_N, BLOCK_K, WHOLE_S_WORDS)
        elif DECODE == DECODE_BYTES:
            offs_kp = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            w_off = _k_offsets(offs_kp, stride_w_kg, stride_w_ki, W_KG, INDEX_64)
            packed = _load_k_tail(w_base + w_off[None, :], offs_kp, K // 2, MASK_K)
            packed = packed.to(tl.int32)
            w = tl.join(_e2m1_bits(packed & 15), _e2m1_bits(packed >> 4))  # [BLOCK_N, BLOCK_K/2, 2]: K order
            w = tl.reshape(w, (BLOCK_N, BLOCK_K // 32, 32)) * _e8m0(s.to(tl.int32))[:, :, None]
            w = tl.reshape(w, (BLOCK_N, BLOCK_K)).to(dot_dtype)
        else:
            offs_kw = k0 // 8 + tl.arange(0, BLOCK_K // 8)
            words = _load_k_tail(w32_base + offs_kw[None, :], offs_kw, K // 8, MASK_K)
            w = _decode_words(words, s, dot_dtype, DECODE, BLOCK_N, BLOCK_K)
    else:
        w_off = _k_offsets(offs_k, stride_w_kg, stride_w_ki, W_KG, INDEX_64)
        w = _load_k_tail(w_base + w_off[None, :], offs_k, K, MASK_K)
        w = w.to(dot_dtype)
    return tl.dot(w, xt.to(dot_dtype), acc)


@triton.jit
def _swapped_mainloop(X, x_rows, mask_x, stride_x_m, stride_x_k,
                      W, stride_w_kg, stride_w_ki, stride_w_n, WS, stride_ws_kg, stride_ws_ki, stride_ws_n,
                      offs_n_safe, k_start, K, W_MX: tl.constexpr, W_KG: tl.constexpr,
                      WS_KG: tl.constexpr, DOT_F32: tl.constexpr, INDEX_64: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      DECODE: tl.constexpr = 0, PREFETCH_S: tl.constexpr = True, S_WORDS: tl.constexpr = False,
                      TAIL_64: tl.constexpr = False):
    """acc [BLOCK_M, BLOCK_N] over k in [k_start, K), computed transposed:
    acc^T = w^T [BLOCK_N, BLOCK_K] @ x^T [BLOCK_K, BLOCK_M].

    The upcast weight is the dot's left operand (on Hopper wgmma takes it from registers; Triton
    still moves the decoded tile through shared memory once to reach wgmma's register layout, see
    benchmarks/NOTES_matmul_perf.md) and N becomes the MMA's M dimension, which
    lets a tile with few rows (decode) still fill a 64-wide wgmma. The weight tile is read as
    [BLOCK_N, BLOCK_K/2] bytes (K contiguous), with DECODE_WORDS / DECODE_PTX as
    [BLOCK_N, BLOCK_K/8] 32-bit words (the host checks the layout allows it), or, for the
    nibble-quads storage of HopperMXValueLayout, as [BLOCK_N, BLOCK_K/4] 16-bit words (the quads
    decoders, which the host picks for that layout alone; no conversion of the tile); nibbles come out in
    K order, so x needs no de-interleave and one dot covers BLOCK_K. Full K steps run unmasked;
    a K that is not a multiple of BLOCK_K gets one masked tail step, or with TAIL_64 (the host's
    promise that K is a multiple of 64) unmasked 64-deep steps: gpt-oss's K = 2880 leaves 64
    after 11 steps of 256, and a masked 256-deep step decoded four times the weights it used.
    """
    xt_base = X + x_rows[None, :] * stride_x_m
    w_base = W + offs_n_safe[:, None] * stride_w_n
    # word addressing (DECODE_WORDS / DECODE_PTX): the host guarantees K-contiguous bytes, and
    # W and stride_w_n multiples of 4 bytes, so a row's bytes are whole aligned words
    w32_base = W.to(tl.pointer_type(tl.int32)) + offs_n_safe[:, None] * (stride_w_n // 4)
    s_base = WS + offs_n_safe[:, None] * stride_ws_n
    s32_base = WS.to(tl.pointer_type(tl.int32)) + offs_n_safe[:, None] * (stride_ws_n // 4)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    k_full = k_start + ((K - k_start) // BLOCK_K) * BLOCK_K
    # PREFETCH_S: the scales (1-2 bytes per row and step) are too narrow for the pipeliner's async
    # copies, so each step loads the next step's into registers and their global latency hides
    # behind one step (ncu: the first use of an in-step scale load held 23 % of the stall samples
    # at prefill). The last full step prefetches itself again (no mask in the loop); a K tail
    # loads its own. Off: each step loads its own (the host's choice, `configs.scale_loads`; it leaves
    # PREFETCH_S off with S_WORDS: whole words are multi-buffered by the pipeliner itself).
    # DECODE_QUADS_PTX_SMALL_SCALES takes the unmasked steps' scale words whole (`_quads_scale_pairs`);
    # the masked tail step and the prefetch's masked first load get bytes
    WHOLE_S_WORDS: tl.constexpr = S_WORDS and not PREFETCH_S and DECODE == DECODE_QUADS_PTX_SMALL_SCALES
    s = 0
    if W_MX and PREFETCH_S:
        s = _step_scales(s_base, s32_base, k_start, K, stride_ws_kg, stride_ws_ki, WS_KG, INDEX_64, BLOCK_K, True,
                         S_WORDS)
    for k0 in range(k_start, k_full, BLOCK_K):
        s_step = s
        if W_MX:
            if PREFETCH_S:
                k_next = tl.minimum(k0 + BLOCK_K, k_full - BLOCK_K)
                s = _step_scales(s_base, s32_base, k_next, K, stride_ws_kg, stride_ws_ki, WS_KG, INDEX_64, BLOCK_K,
                                 False, S_WORDS)
            else:
                s_step = _step_scales(s_base, s32_base, k0, K, stride_ws_kg, stride_ws_ki, WS_KG, INDEX_64, BLOCK_K,
                                      False, S_WORDS, WHOLE_S_WORDS)
        acc = _swapped_step(acc, k0, xt_base, mask_x, stride_x_k, w_base, w32_base, s_step, stride_w_kg,
                            stride_w_ki, K, False, W_MX, W_KG, DECODE, DOT_F32, INDEX_64, BLOCK_N, BLOCK_K,
                            WHOLE_S_WORDS)
    if k_full < K:
        if TAIL_64:
            for k0 in tl.range(k_full, K, 64, num_stages=1):  # at most BLOCK_K / 64 - 1 steps, not pipelined
                s_tail = 0
                if W_MX:  # 2 scales per column: bytes (a scale word spans 128 K values)
                    s_tail = _step_scales(s_base, s32_base, k0, K, stride_ws_kg, stride_ws_ki, WS_KG, INDEX_64, 64,
                                          False, False)
                acc = _swapped_step(acc, k0, xt_base, mask_x, stride_x_k, w_base, w32_base, s_tail, stride_w_kg,
                                    stride_w_ki, K, False, W_MX, W_KG, DECODE, DOT_F32, INDEX_64, BLOCK_N, 64)
        else:
            s_tail = 0
            if W_MX:
                s_tail = _step_scales(s_base, s32_base, k_full, K, stride_ws_kg, stride_ws_ki, WS_KG, INDEX_64,
                                      BLOCK_K, True, S_WORDS)
            acc = _swapped_step(acc, k_full, xt_base, mask_x, stride_x_k, w_base, w32_base, s_tail, stride_w_kg,
                                stride_w_ki, K, True, W_MX, W_KG, DECODE, DOT_F32, INDEX_64, BLOCK_N, BLOCK_K)
    return tl.trans(acc)


@triton.jit
def _linear_epilogue(acc, bias_ptr, Betas, Gammas, out_alpha, offs_m, mask_m, offs_n, mask_n, with_bias,
                     HAS_BIAS: tl.constexpr, HAS_BETAS: tl.constexpr, HAS_GAMMAS: tl.constexpr,
                     HAS_ALPHA: tl.constexpr):
    """acc + bias * betas (bias where `with_bias`), then * gammas, * out_alpha (module docstring order)."""
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n & with_bias, other=0.0).to(tl.float32)
        if HAS_BETAS:
            betas = tl.load(Betas + offs_m, mask=mask_m, other=0.0).to(tl.float32)
            acc += bias[None, :] * betas[:, None]
        else:
            acc += bias[None, :]
    if HAS_GAMMAS:
        gammas = tl.load(Gammas + offs_m, mask=mask_m, other=0.0).to(tl.float32)
        acc *= gammas[:, None]
    if HAS_ALPHA:
        acc *= out_alpha
    return acc


@triton.jit
def _matmul_ogs_kernel(
    Y, stride_y_b, stride_y_m, stride_y_n,
    X, stride_x_b, stride_x_m, stride_x_k,
    W, stride_w_e, stride_w_kg, stride_w_ki, stride_w_n,
    WS, stride_ws_e, stride_ws_kg, stride_ws_ki, stride_ws_n,
    Bias, stride_bias_e,
    Betas, Gammas, out_alpha,
    GatherIndx, TokenOffs, BlockPidMap,
    Partial, stride_p_s, stride_p_b, stride_p_m,
    M, N, K, n_expts_act, n_tiles_m,
    YSum, stride_ys_m, stride_ys_n, SlotToRow, n_tokens, TileCounters,
    act_arg0, act_arg1, act_arg2, act_arg3,
    ACT_FN: tl.constexpr, N_ACT_ARGS: tl.constexpr, REDUCTION_N: tl.constexpr,
    W_MX: tl.constexpr, W_KG: tl.constexpr, WS_KG: tl.constexpr,
    ROUTED: tl.constexpr, GATHER: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_BETAS: tl.constexpr, HAS_GAMMAS: tl.constexpr, HAS_ALPHA: tl.constexpr,
    DOT_F32: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SWAP_XW: tl.constexpr = False, DECODE: tl.constexpr = 0, SPLIT_K: tl.constexpr = 1,
    FINISH_SPLIT: tl.constexpr = False, MAP_BLOCK_M: tl.constexpr = 128, LINEAR_SPLITS: tl.constexpr = False,
    PDL: tl.constexpr = False, CHUNK_M: tl.constexpr = 0, TAIL_M: tl.constexpr = 0,
    PREFETCH_S: tl.constexpr = True, S_WORDS: tl.constexpr = False, TAIL_64: tl.constexpr = False,
    TOPK_SUM: tl.constexpr = False, SUM_K: tl.constexpr = 1, SUM_BLOCK_T: tl.constexpr = 16,
    FINISH_IN_LAUNCH: tl.constexpr = False,
):
    """One output tile. Split K (decode: too few tiles to keep every SM busy): SPLIT_K programs per
    tile (grid axis 2) each write the fp32 sum over their share of K into Partial[split]; then
    FINISH_SPLIT programs add the SPLIT_K partials in a fixed order (deterministic) and run the
    epilogue. With LINEAR_SPLITS (linear epilogue under a scatter) each split applies the epilogue
    itself and the top-k reduce adds the partials instead (no finishing launch).
    PDL (programmatic dependent launch, sm_90): the program may start while the previous kernel of
    the stream is finishing; it waits for that kernel before touching memory, and lets the next
    kernel start once its own main loop is done.
    CHUNK_M > 0 (routed, tiles sized per expert): each expert's rows are cut into chunks of CHUNK_M
    rows and two launches share them: the one with BLOCK_M == CHUNK_M takes the chunks holding more
    than TAIL_M rows, the one with BLOCK_M == TAIL_M the chunks holding at most TAIL_M rows (an
    expert's last chunk only), so a short tail does not pay for a tall tile's MMA nor a nearly
    full chunk for two tiles' weight decodes.
    TOPK_SUM (scatter, few tokens, one launch of tiles no taller than the routing's map): the
    top-k (SUM_K = k) sum into YSum [n_tokens, N_out] happens here instead of in `_topk_reduce_kernel`: the
    last program of each column tile (TileCounters, one per column tile) adds its rows, those of
    Partial's splits with LINEAR_SPLITS, else those of Y.
    FINISH_IN_LAUNCH (split K, non-linear epilogue): no FINISH_SPLIT launch; the last split of each
    output tile to arrive at its counter (TileCounters, one per tile) adds the partials and runs
    the epilogue."""
    if PDL:
        gdc_wait()
    OUT_N: tl.constexpr = BLOCK_N // REDUCTION_N
    # the counters see every program of the launch (TOPK_SUM), or every split of a tile (FINISH_IN_LAUNCH)
    tl.static_assert(not TOPK_SUM or (ROUTED and CHUNK_M == 0 and BLOCK_M == MAP_BLOCK_M))
    tl.static_assert(not TOPK_SUM or SPLIT_K == 1 or LINEAR_SPLITS)
    tl.static_assert(not FINISH_IN_LAUNCH or (SPLIT_K > 1 and not LINEAR_SPLITS and not FINISH_SPLIT and not TOPK_SUM))
    if LINEAR_SPLITS:  # what the fused top-k sum adds: the splits' partials, or the output rows
        sum_src, sum_stride_s, sum_stride_m, sum_stride_n = Partial, stride_p_s, stride_p_m, 1
    else:
        sum_src, sum_stride_s, sum_stride_m, sum_stride_n = Y, 0, stride_y_m, stride_y_n
    SUM_SPLITS: tl.constexpr = SPLIT_K if LINEAR_SPLITS else 1
    # where the sum goes, what it adds, and the column tiles' counters with their arrivals per tile
    topk_sum = (YSum, stride_ys_m, stride_ys_n, sum_src, sum_stride_s, sum_stride_m, sum_stride_n, SlotToRow, n_tokens,
                TileCounters, n_tiles_m * SPLIT_K, N // REDUCTION_N)
    n_tiles_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _swizzle_tile(tl.program_id(0), n_tiles_m, n_tiles_n, GROUP_M)
    pid_b = tl.program_id(1).to(tl.int64)

    if ROUTED:
        packed = tl.load(BlockPidMap + pid_m)
        if packed == -1:
            if TOPK_SUM:  # an unused map entry still arrives at its column tile's counter
                _topk_sum_if_last(topk_sum, pid_n, OUT_N, SUM_K, SUM_SPLITS, DOT_F32, SUM_BLOCK_T)
            return
        expt = packed & 0xFFFF
        block = packed >> 16
        # routing tabulates tiles of MAP_BLOCK_M rows; a taller tile (or chunk) is RATIO of them, so
        # only the program holding the first of each run works (the others leave at once)
        RATIO = (CHUNK_M if CHUNK_M > 0 else BLOCK_M) // MAP_BLOCK_M  # a constexpr
        if RATIO > 1:
            if block % RATIO != 0:
                return
            block = block // RATIO
        row_start = tl.load(TokenOffs + expt)
        row_end = tl.load(TokenOffs + expt + 1)
        if CHUNK_M > 0:
            row_start += block * CHUNK_M
            block = 0
            if BLOCK_M == TAIL_M:
                if row_end - row_start > TAIL_M:
                    return
            else:
                if row_end - row_start <= TAIL_M:
                    return
        offs_m = row_start + block * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < row_end
        expt = expt.to(tl.int64)
    else:
        expt = pid_b
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M

    if GATHER:
        src = tl.load(GatherIndx + offs_m, mask=mask_m, other=-1)
        mask_x = mask_m & (src >= 0)
        x_rows = tl.where(mask_x, src // n_expts_act, 0)
    else:
        mask_x = mask_m
        x_rows = tl.where(mask_m, offs_m, 0)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_n_safe = tl.where(mask_n, offs_n, 0)
    if INDEX_64:
        offs_n_safe = offs_n_safe.to(tl.int64)
        x_rows = x_rows.to(tl.int64)

    if INDEX_64:
        offs_m_p = offs_m.to(tl.int64)
    else:
        offs_m_p = offs_m
    p_ptrs = Partial + pid_b * stride_p_b + offs_m_p[:, None] * stride_p_m + offs_n[None, :]
    if FINISH_SPLIT:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for split in tl.static_range(SPLIT_K):
            acc += tl.load(p_ptrs + split * stride_p_s, mask=mask_m[:, None] & mask_n[None, :], other=0.0)
    else:
        if SPLIT_K > 1:
            # split s covers whole BLOCK_K steps [s*steps, (s+1)*steps); only the last can have a K tail
            steps = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)
            k_start = tl.program_id(2) * steps * BLOCK_K
            k_end = tl.minimum(K, k_start + steps * BLOCK_K)
        else:
            k_start = 0
            k_end = K
        if SWAP_XW:
            acc = _swapped_mainloop(X + pid_b * stride_x_b, x_rows, mask_x, stride_x_m, stride_x_k,
                                    W + expt * stride_w_e, stride_w_kg, stride_w_ki, stride_w_n,
                                    WS + expt * stride_ws_e, stride_ws_kg, stride_ws_ki, stride_ws_n,
                                    offs_n_safe, k_start, k_end, W_MX, W_KG, WS_KG, DOT_F32, INDEX_64,
                                    BLOCK_M, BLOCK_N, BLOCK_K, DECODE, PREFETCH_S, S_WORDS, TAIL_64)
        else:
            acc = _mainloop(X + pid_b * stride_x_b, x_rows, mask_x, stride_x_m, stride_x_k,
                            W + expt * stride_w_e, stride_w_kg, stride_w_ki, stride_w_n,
                            WS + expt * stride_ws_e, stride_ws_kg, stride_ws_ki, stride_ws_n,
                            offs_n_safe, mask_n, k_start, k_end, W_MX, W_KG, WS_KG, DOT_F32, INDEX_64,
                            BLOCK_M, BLOCK_N, BLOCK_K)
        if PDL:
            gdc_launch_dependents()
        if SPLIT_K > 1:
            if LINEAR_SPLITS:
                # the consumer adds the splits (the top-k reduce); the epilogue is linear, so every
                # split applies it to its own share, the bias counted once (split 0)
                acc = _linear_epilogue(acc, Bias + expt * stride_bias_e, Betas, Gammas, out_alpha, offs_m, mask_m,
                                       offs_n, mask_n, tl.program_id(2) == 0, HAS_BIAS, HAS_BETAS, HAS_GAMMAS,
                                       HAS_ALPHA)
            tl.store(p_ptrs + tl.program_id(2) * stride_p_s, acc, mask=mask_m[:, None] & mask_n[None, :])
            if TOPK_SUM:
                _topk_sum_if_last(topk_sum, pid_n, OUT_N, SUM_K, SUM_SPLITS, DOT_F32, SUM_BLOCK_T)
            if LINEAR_SPLITS or not FINISH_IN_LAUNCH:
                return
            # the last split of this tile to arrive adds the partials in split order (FINISH_SPLIT's
            # sum, bit for bit) and runs the epilogue; its counter goes back to zero for the next call
            if not _last_to_arrive(TileCounters + (pid_b * n_tiles_m + pid_m) * n_tiles_n + pid_n, SPLIT_K):
                return
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for split in tl.static_range(SPLIT_K):
                acc += tl.load(p_ptrs + split * stride_p_s, mask=mask_m[:, None] & mask_n[None, :], other=0.0,
                               cache_modifier=".cg")

    acc = _linear_epilogue(acc, Bias + expt * stride_bias_e, Betas, Gammas, out_alpha, offs_m, mask_m, offs_n, mask_n,
                           True, HAS_BIAS, HAS_BETAS, HAS_GAMMAS, HAS_ALPHA)
    if N_ACT_ARGS == 0:
        out = ACT_FN(acc)
    elif N_ACT_ARGS == 1:
        out = ACT_FN(acc, act_arg0)
    elif N_ACT_ARGS == 2:
        out = ACT_FN(acc, act_arg0, act_arg1)
    elif N_ACT_ARGS == 3:
        out = ACT_FN(acc, act_arg0, act_arg1, act_arg2)
    else:
        out = ACT_FN(acc, act_arg0, act_arg1, act_arg2, act_arg3)

    offs_yn = pid_n * OUT_N + tl.arange(0, OUT_N)
    if INDEX_64:
        offs_m = offs_m.to(tl.int64)
    y_ptrs = Y + pid_b * stride_y_b + offs_m[:, None] * stride_y_m + offs_yn[None, :] * stride_y_n
    tl.store(y_ptrs, cast_out(out, Y.dtype.element_ty, DOT_F32), mask=mask_m[:, None] & (offs_yn < N // REDUCTION_N)[None, :])
    if TOPK_SUM:
        _topk_sum_if_last(topk_sum, pid_n, OUT_N, SUM_K, SUM_SPLITS, DOT_F32, SUM_BLOCK_T)


@triton.jit
def identity_fn(x):
    return x


@triton.jit
def _topk_sum_tile(Y, stride_y_m, stride_y_n, Inter, stride_i_s, stride_i_m, stride_i_n, SlotToRow,
                   offs_t, mask_t, offs_n, mask_n, N_EXPTS_ACT: tl.constexpr, N_SPLITS: tl.constexpr,
                   INTERPRETED: tl.constexpr, FROM_L2: tl.constexpr = False):
    """y[t, n] = sum over j < k, then over the N_SPLITS K-split partials (stride_i_s apart), of
    inter[slot_to_row[t*k + j], n], skipping -1 (slot not computed here), for one [tokens, columns]
    tile, in that fixed order. FROM_L2: read the rows past L1 (other SMs wrote them in this launch)."""
    acc = tl.zeros([offs_t.shape[0], offs_n.shape[0]], dtype=tl.float32)
    for j in tl.static_range(N_EXPTS_ACT):
        row = tl.load(SlotToRow + offs_t.to(tl.int64) * N_EXPTS_ACT + j, mask=mask_t, other=-1)
        valid = row >= 0
        row = tl.where(valid, row, 0).to(tl.int64)
        for split in tl.static_range(N_SPLITS):
            ptrs = Inter + split * stride_i_s + row[:, None] * stride_i_m + offs_n[None, :] * stride_i_n
            if FROM_L2:
                v = tl.load(ptrs, mask=valid[:, None] & mask_n[None, :], other=0.0, cache_modifier=".cg")
            else:
                v = tl.load(ptrs, mask=valid[:, None] & mask_n[None, :], other=0.0)
            acc += v.to(tl.float32)
    y_ptrs = Y + offs_t.to(tl.int64)[:, None] * stride_y_m + offs_n[None, :] * stride_y_n
    tl.store(y_ptrs, cast_out(acc, Y.dtype.element_ty, INTERPRETED), mask=mask_t[:, None] & mask_n[None, :])


@triton.jit
def _last_to_arrive(counter, n_arrivals):
    """Adds this program's arrival to a zero-based counter once all its threads' stores are done;
    True for the last of n_arrivals, which sets the counter back to zero for the next call. The
    last one may then read the others' stores (past L1: they were made on other SMs)."""
    tl.debug_barrier()  # every thread's stores precede the release below
    last = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == n_arrivals - 1
    if last:
        tl.store(counter, 0)
    return last


@triton.jit
def _topk_sum_if_last(topk_sum, pid_n, OUT_N: tl.constexpr, N_EXPTS_ACT: tl.constexpr, N_SPLITS: tl.constexpr,
                      INTERPRETED: tl.constexpr, BLOCK_T: tl.constexpr):
    """The top-k sum inside the matmul (few tokens): every program of column tile pid_n arrives at
    that tile's counter once its rows are stored; the last of the n_arrivals sums all tokens' rows
    of the tile (`_topk_sum_tile`, the order of `_topk_reduce_kernel`: bit for bit the same).
    topk_sum: (YSum, its two strides, Inter, its three strides, SlotToRow, n_tokens, TileCounters,
    n_arrivals, n_out)."""
    (YSum, stride_ys_m, stride_ys_n, Inter, stride_i_s, stride_i_m, stride_i_n, SlotToRow, n_tokens, TileCounters,
     n_arrivals, n_out) = topk_sum
    if _last_to_arrive(TileCounters + pid_n, n_arrivals):
        offs_n = pid_n * OUT_N + tl.arange(0, OUT_N)
        mask_n = offs_n < n_out
        for t0 in range(0, n_tokens, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            _topk_sum_tile(YSum, stride_ys_m, stride_ys_n, Inter, stride_i_s, stride_i_m, stride_i_n, SlotToRow,
                           offs_t, offs_t < n_tokens, offs_n, mask_n, N_EXPTS_ACT, N_SPLITS, INTERPRETED,
                           FROM_L2=True)


@triton.jit
def _topk_reduce_kernel(
    Y, stride_y_m, stride_y_n,
    Inter, stride_i_m, stride_i_n,
    SlotToRow, n_tokens, N, stride_i_s,
    N_EXPTS_ACT: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    N_SPLITS: tl.constexpr = 1, PDL: tl.constexpr = False,
):
    """y[t] = sum over j < k (and over the N_SPLITS K-split partials, stride_i_s apart) of
    inter[slot_to_row[t*k + j]], skipping -1 (slot not computed here).

    Each output element is summed in a fixed order by one program: deterministic, unlike atomics.
    PDL: as in _matmul_ogs_kernel (waits for the matmul before reading its rows).
    """
    if PDL:
        gdc_wait()
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _topk_sum_tile(Y, stride_y_m, stride_y_n, Inter, stride_i_s, stride_i_m, stride_i_n, SlotToRow,
                   offs_t, offs_t < n_tokens, offs_n, offs_n < N, N_EXPTS_ACT, N_SPLITS, INTERPRETED)
