"""Microscaling (OCP MX v1.0) conversions: MXFP4 and MXFP8 along any axis.

Format: blocks of MXFP_BLOCK_SIZE = 32 consecutive elements along `axis` share one E8M0 scale
byte e (value 2^(e - 127); 255 is NaN). MXFP4 elements are E2M1 codes (sign << 3 | magnitude
index into 0, .5, 1, 1.5, 2, 3, 4, 6) packed two per byte along `axis`: element 2i in the low
nibble, 2i + 1 in the high nibble. MXFP8 elements are float8_e4m3fn or float8_e5m2.

Quantization of one block:
  * scale: amax / max_element (6, 448 or 57344; IEEE fp32 division) rounded to a power of two,
    UP by default (no element saturates) or DOWN (truncate the mantissa; elements may saturate);
  * a block with a NaN or +-Inf gets scale 255 (it decodes to NaN) and codes 0; a block whose
    scale is 0 (all zeros, or tiny with ROUND_DOWN) gets codes 0;
  * elements: x * 2^(127 - e) (exact), then E2M1 round-to-nearest with ties away from zero and
    saturation at +-6 (or, opt-in, unbiased stochastic rounding), or fp8 round-to-nearest-even
    after clamping to the finite fp8 range.
The axis length need not be a multiple of 32 (the tail block is padded with zeros for its scale
only) nor, for MXFP4, even: the packed axis holds ceil(L / 2) bytes and an odd tail leaves the
last high nibble 0. Dequantizing MXFP4 therefore returns 2 * bytes elements along `axis`.

Outputs are stride-1 along `axis` (allocated with `axis` innermost, then moved back), which is
the form `tensor.wrap_torch_tensor(q, dtype=FP4)` expects. The Triton kernels and the `_torch`
references agree bit for bit (tests/test_mxfp.py, and the golden vectors in ../shared/golden).
"""

from __future__ import annotations

import dataclasses
import enum
import math

import torch

from .. import target_info

try:  # Triton is optional: without it every op takes its torch reference.
    import triton
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None

MXFP_BLOCK_SIZE = 32

_FLOAT_INPUTS = (torch.float32, torch.bfloat16, torch.float16)
_MASK32 = 0xFFFFFFFF
# Rows per chunk in the torch references, so that huge weights do not need full fp32 copies.
_TORCH_CHUNK_ELEMENTS = 1 << 24


class DequantScaleRoundingMode(enum.Enum):
    """How amax / max_element becomes a power-of-two scale."""

    ROUND_UP = 0    # smallest power of two >= amax / max: no element saturates (default)
    ROUND_DOWN = 1  # OCP's rule: truncate the mantissa; the largest elements may saturate


@dataclasses.dataclass(frozen=True)
class _ElementFormat:
    name: str
    is_fp4: bool
    max_value: float
    mantissa_bits: int = 0
    bias: int = 0
    subnormal_step: float = 0.0


_FORMATS = {
    torch.uint8: _ElementFormat("MXFP4 (E2M1, packed in uint8)", True, 6.0),
    torch.float8_e4m3fn: _ElementFormat("MXFP8 e4m3fn", False, 448.0, 3, 7, 2.0 ** -9),
    torch.float8_e5m2: _ElementFormat("MXFP8 e5m2", False, 57344.0, 2, 15, 2.0 ** -16),
}

_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# |q| at or above threshold i rounds to magnitude index > i (ties away from zero).
_E2M1_NEAREST_THRESHOLDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


# ----------------------------------------------------------------------------------------------
# Argument checks (shared by the Triton entry points and the torch references)


def _normalize_axis(op: str, axis, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{op}: `axis` must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: `axis`={axis} is out of range for a tensor with {ndim} dimensions")
    return axis % ndim


def _check_downcast(op, src, out_quant_type, axis, mode, rounding, seed):
    if not isinstance(src, torch.Tensor):
        raise TypeError(f"{op}: `src` must be a torch.Tensor, got {type(src).__name__}")
    if src.dtype not in _FLOAT_INPUTS:
        raise TypeError(f"{op}: `src` must be float32, bfloat16 or float16, got {src.dtype}")
    if src.dim() == 0:
        raise ValueError(f"{op}: `src` must have at least one dimension")
    if out_quant_type not in _FORMATS:
        raise TypeError(
            f"{op}: `out_quant_type` must be torch.uint8 (MXFP4), torch.float8_e4m3fn or torch.float8_e5m2 "
            f"(MXFP8), got {out_quant_type}")
    if not isinstance(mode, DequantScaleRoundingMode):
        raise TypeError(f"{op}: `DEQUANT_SCALE_ROUNDING_MODE` must be a DequantScaleRoundingMode, got {mode!r}")
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"{op}: `rounding` must be 'nearest' or 'stochastic', got {rounding!r}")
    if rounding == "stochastic":
        if out_quant_type != torch.uint8:
            raise ValueError(f"{op}: `rounding`='stochastic' is implemented for MXFP4 (torch.uint8) only")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{op}: `seed` must be an int, got {type(seed).__name__}")
    return _normalize_axis(op, axis, src.dim()), _FORMATS[out_quant_type]


def _check_upcast(op, q, scale, dtype, axis):
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"{op}: `q` must be a torch.Tensor, got {type(q).__name__}")
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{op}: `scale` must be a torch.Tensor, got {type(scale).__name__}")
    if q.dtype not in _FORMATS:
        raise TypeError(
            f"{op}: `q` must be torch.uint8 (packed MXFP4), torch.float8_e4m3fn or torch.float8_e5m2, got {q.dtype}")
    if scale.dtype != torch.uint8:
        raise TypeError(f"{op}: `scale` must be torch.uint8 (E8M0 bytes), got {scale.dtype}")
    if dtype not in _FLOAT_INPUTS:
        raise TypeError(f"{op}: `dtype` must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    if q.dim() == 0:
        raise ValueError(f"{op}: `q` must have at least one dimension")
    axis = _normalize_axis(op, axis, q.dim())
    fmt = _FORMATS[q.dtype]
    length = q.shape[axis] * (2 if fmt.is_fp4 else 1)
    expected = list(q.shape)
    expected[axis] = math.ceil(length / MXFP_BLOCK_SIZE)
    if list(scale.shape) != expected:
        raise ValueError(
            f"{op}: `scale` must have shape {tuple(expected)} (that of `q` with ceil({length}/32) blocks along axis "
            f"{axis}), got {tuple(scale.shape)}")
    if scale.device != q.device:
        raise ValueError(f"{op}: `scale` is on {scale.device} but `q` is on {q.device}")
    return axis, fmt, length


# ----------------------------------------------------------------------------------------------
# torch references


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2^32 for int64 tensors holding uint32 values, without int64 overflow."""
    lo = (h & 0xFFFF) * c
    hi = (((h >> 16) * c) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _fmix32_torch(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _uniform_from_index_torch(idx: torch.Tensor, seed: int) -> torch.Tensor:
    """Same bits as mxfp_details._common.uniform_from_index."""
    hi = (idx >> 32) & _MASK32
    h = _fmix32_torch((_mul32(hi, 0x9E3779B1) + (seed & _MASK32)) & _MASK32)
    h = _fmix32_torch((idx & _MASK32) ^ h)
    return (h >> 8).to(torch.float32) * (1.0 / 16777216.0)


def _e2m1_codes_torch(q: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    a = q.abs()
    lut = torch.tensor(_E2M1_VALUES, dtype=torch.float32, device=q.device)
    if u is None:
        code = torch.zeros(q.shape, dtype=torch.int32, device=q.device)
        for t in _E2M1_NEAREST_THRESHOLDS:
            code += (a >= t).to(torch.int32)
    else:
        code = torch.zeros(q.shape, dtype=torch.int32, device=q.device)
        for t in _E2M1_VALUES[1:]:
            code += (a >= t).to(torch.int32)
        inv_gap = torch.where(code >= 6, 0.5, torch.where(code >= 4, 1.0, 2.0))
        frac = (a - lut[code]) * inv_gap
        code = torch.clamp(code + (u < frac).to(torch.int32), max=7)
    sign = (q.view(torch.int32) >> 28) & 8
    return code | sign


def _scale_exponents_torch(xf_blocks: torch.Tensor, fmt: _ElementFormat, round_up: bool):
    """Per-block scale bytes and exact fp32 quantization multipliers (0 for zero/non-finite blocks)."""
    amax_bits = (xf_blocks.view(torch.int32) & 0x7FFFFFFF).amax(dim=-1)
    nonfinite = amax_bits >= 0x7F800000
    amax = torch.where(nonfinite, 0, amax_bits).view(torch.float32)
    # Divide by a tensor, not a Python scalar: torch turns division by a scalar into a multiplication
    # by its reciprocal on some devices, which rounds differently.
    dq_bits = (amax / torch.full_like(amax, fmt.max_value)).view(torch.int32)
    e = (dq_bits + 0x7FFFFF) >> 23 if round_up else dq_bits >> 23
    zero_block = (e == 0) | nonfinite
    quant_scale = torch.where(zero_block, 0, (254 - e) << 23).view(torch.float32)
    scale = torch.where(nonfinite, 255, e).to(torch.uint8)
    return scale, quant_scale, zero_block


def _downcast_rows_torch(x2: torch.Tensor, row0: int, fmt, round_up, stochastic, seed):
    """Quantize rows of a [r, L] block (row0 = index of its first row, for the stochastic hash)."""
    r, length = x2.shape
    nb = math.ceil(length / MXFP_BLOCK_SIZE)
    xf = torch.zeros((r, nb * MXFP_BLOCK_SIZE), dtype=torch.float32, device=x2.device)
    xf[:, :length] = x2
    xf_blocks = xf.view(r, nb, MXFP_BLOCK_SIZE)
    scale, quant_scale, zero_block = _scale_exponents_torch(xf_blocks, fmt, round_up)
    q = (xf_blocks * quant_scale[..., None]).view(r, -1)
    zero = zero_block[..., None].expand(r, nb, MXFP_BLOCK_SIZE).reshape(r, -1)
    if fmt.is_fp4:
        u = None
        if stochastic:
            rows = torch.arange(row0, row0 + r, dtype=torch.int64, device=x2.device)
            cols = torch.arange(nb * MXFP_BLOCK_SIZE, dtype=torch.int64, device=x2.device)
            u = _uniform_from_index_torch(rows[:, None] * length + cols[None, :], seed)
        codes = torch.where(zero, 0, _e2m1_codes_torch(q, u)).to(torch.uint8)
        codes = codes[:, : 2 * math.ceil(length / 2)].reshape(r, -1, 2)
        out = codes[..., 0] | (codes[..., 1] << 4)
    else:
        dtype = torch.float8_e4m3fn if fmt.mantissa_bits == 3 else torch.float8_e5m2
        bits = q.clamp(-fmt.max_value, fmt.max_value).to(dtype).view(torch.uint8)
        out = torch.where(zero, 0, bits)[:, :length].view(dtype)
    return out, scale


def _rows_view(t: torch.Tensor, axis: int) -> torch.Tensor:
    """`t` with `axis` moved last, as [R, L] (a view when possible)."""
    moved = t.movedim(axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _empty_moved(t: torch.Tensor, axis: int, length: int, dtype) -> torch.Tensor:
    """A tensor shaped like `t` with `length` along `axis`, stride 1 along `axis`, as [..., length]."""
    shape = list(t.movedim(axis, -1).shape[:-1]) + [length]
    return torch.empty(shape, dtype=dtype, device=t.device)


def downcast_to_mxfp_torch(src: torch.Tensor, out_quant_type: torch.dtype, axis: int,
                           DEQUANT_SCALE_ROUNDING_MODE: DequantScaleRoundingMode = DequantScaleRoundingMode.ROUND_UP,
                           *, rounding: str = "nearest", seed: int = 0):
    """Reference quantizer in plain torch; returns (quantized, scale) like `downcast_to_mxfp`."""
    op = "downcast_to_mxfp_torch"
    axis, fmt = _check_downcast(op, src, out_quant_type, axis, DEQUANT_SCALE_ROUNDING_MODE, rounding, seed)
    length = src.shape[axis]
    lq = math.ceil(length / 2) if fmt.is_fp4 else length
    ls = math.ceil(length / MXFP_BLOCK_SIZE)
    q_moved = _empty_moved(src, axis, lq, out_quant_type)
    s_moved = _empty_moved(src, axis, ls, torch.uint8)
    x2 = _rows_view(src, axis)
    q2, s2 = q_moved.view(-1, lq), s_moved.view(-1, ls)
    if length > 0 and x2.shape[0] > 0:
        step = max(1, _TORCH_CHUNK_ELEMENTS // max(length, 1))
        round_up = DEQUANT_SCALE_ROUNDING_MODE == DequantScaleRoundingMode.ROUND_UP
        for r0 in range(0, x2.shape[0], step):
            q_rows, s_rows = _downcast_rows_torch(x2[r0:r0 + step], r0, fmt, round_up, rounding == "stochastic", seed)
            q2[r0:r0 + step] = q_rows
            s2[r0:r0 + step] = s_rows
    return q_moved.movedim(-1, axis), s_moved.movedim(-1, axis)


def _decode_scale_torch(s: torch.Tensor) -> torch.Tensor:
    s = s.to(torch.int32)
    bits = torch.where(s == 255, 0x7FC00000, torch.where(s == 0, 0x400000, s << 23))
    return bits.view(torch.float32)


def upcast_from_mxfp_torch(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, axis: int) -> torch.Tensor:
    """Reference dequantizer in plain torch; same contract as `upcast_from_mxfp`."""
    op = "upcast_from_mxfp_torch"
    axis, fmt, length = _check_upcast(op, q, scale, dtype, axis)
    out_moved = _empty_moved(q, axis, length, dtype)
    q2, s2 = _rows_view(q, axis), _rows_view(scale, axis)
    o2 = out_moved.view(-1, length)
    nb = s2.shape[1]
    lut = torch.tensor(_E2M1_VALUES, dtype=torch.float32, device=q.device)
    if length > 0 and q2.shape[0] > 0:
        step = max(1, _TORCH_CHUNK_ELEMENTS // length)
        for r0 in range(0, q2.shape[0], step):
            qc = q2[r0:r0 + step]
            r = qc.shape[0]
            if fmt.is_fp4:
                codes = torch.stack([qc & 0xF, qc >> 4], dim=-1).reshape(r, -1).to(torch.int64)
                mag = lut[codes & 7]
                val = torch.where((codes & 8) != 0, -mag, mag)
            else:
                val = qc.to(torch.float32)
            padded = torch.zeros((r, nb * MXFP_BLOCK_SIZE), dtype=torch.float32, device=q.device)
            padded[:, :length] = val
            deq = padded.view(r, nb, MXFP_BLOCK_SIZE) * _decode_scale_torch(s2[r0:r0 + step])[..., None]
            o2[r0:r0 + step] = deq.view(r, -1)[:, :length].to(dtype)
    return out_moved.movedim(-1, axis)


# ----------------------------------------------------------------------------------------------
# Triton entry points


def _fold_rows(t: torch.Tensor):
    """Fold the leading dims of a [..., L] view into (sizes, strides) of at most two row dims.

    Returns None when more than two strides are needed (the caller then copies).
    """
    merged: list[list[int]] = []
    for size, stride in zip(t.shape[:-1], t.stride()[:-1]):
        if size == 1:
            continue
        if merged and merged[-1][1] == stride * size:
            merged[-1] = [merged[-1][0] * size, stride]
        else:
            merged.append([size, stride])
    if len(merged) > 2:
        return None
    while len(merged) < 2:
        merged.append([1, 0])  # n_inner == 1: Triton specializes it and the row split folds away
    return merged


def _row_params(folded):
    (n_outer, stride_outer), (n_inner, stride_inner) = folded
    return n_outer * n_inner, n_inner, stride_outer, stride_inner


def _tile(length: int, stride_l: int, rows: int):
    """(BLOCK_R, BLOCK_L, num_warps): ~8K elements per program, wide along L when L is contiguous."""
    if stride_l == 1:
        block_l = min(256, max(32, triton_next_pow2(length)))
    else:
        block_l = 32 if length <= 32 else 64
    block_r = max(1, min(8192 // block_l, triton_next_pow2(rows)))
    num_warps = 8 if block_r * block_l >= 8192 else 4
    return block_r, block_l, num_warps


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def downcast_to_mxfp(src: torch.Tensor, out_quant_type: torch.dtype, axis: int,
                     DEQUANT_SCALE_ROUNDING_MODE: DequantScaleRoundingMode = DequantScaleRoundingMode.ROUND_UP,
                     *, rounding: str = "nearest", seed: int = 0):
    """Quantize `src` to MXFP4 (`out_quant_type=torch.uint8`, packed) or MXFP8 along `axis`.

    Returns (quantized, scale): quantized has ceil(L/2) bytes (MXFP4) or L elements (MXFP8) along
    `axis`, scale (uint8 E8M0) has ceil(L/32); both are stride-1 along `axis`.
    `rounding="stochastic"` (MXFP4 only) rounds each element up with probability equal to its
    distance from the grid point below, from a counter-based hash of (seed, element index): the
    same seed gives the same bits here and in `downcast_to_mxfp_torch`. It is unbiased for
    elements that do not saturate, i.e. always with ROUND_UP scales.
    """
    op = "downcast_to_mxfp"
    axis, fmt = _check_downcast(op, src, out_quant_type, axis, DEQUANT_SCALE_ROUNDING_MODE, rounding, seed)
    if not target_info.runs_triton(src.device):
        target_info.warn_fallback("numerics_details.mxfp.downcast_to_mxfp")
        return downcast_to_mxfp_torch(src, out_quant_type, axis, DEQUANT_SCALE_ROUNDING_MODE,
                                      rounding=rounding, seed=seed)
    from .mxfp_details._downcast_to_mxfp import _downcast_to_mxfp_kernel

    length = src.shape[axis]
    lq = math.ceil(length / 2) if fmt.is_fp4 else length
    ls = math.ceil(length / MXFP_BLOCK_SIZE)
    q_moved = _empty_moved(src, axis, lq, torch.uint8)
    s_moved = _empty_moved(src, axis, ls, torch.uint8)
    moved = src.movedim(axis, -1)
    folded = _fold_rows(moved)
    if folded is None:
        moved = moved.contiguous()
        folded = _fold_rows(moved)
    n_rows, n_inner, stride_outer, stride_inner = _row_params(folded)
    if length > 0 and n_rows > 0:
        stride_l = moved.stride(-1)
        block_r, block_l, num_warps = _tile(length, stride_l, n_rows)
        grid = (triton.cdiv(n_rows, block_r) * triton.cdiv(length, block_l),)
        _downcast_to_mxfp_kernel[grid](
            moved, q_moved, s_moved,
            n_rows, length, n_inner, stride_outer, stride_inner, stride_l,
            lq, ls, seed & _MASK32,
            MAX_Q=fmt.max_value, IS_FP4=fmt.is_fp4, FP8_MANT=fmt.mantissa_bits, FP8_BIAS=fmt.bias,
            ROUND_UP=DEQUANT_SCALE_ROUNDING_MODE == DequantScaleRoundingMode.ROUND_UP,
            STOCHASTIC=rounding == "stochastic",
            BLOCK_R=block_r, BLOCK_L=block_l, num_warps=num_warps,
        )
    if not fmt.is_fp4:
        q_moved = q_moved.view(out_quant_type)
    return q_moved.movedim(-1, axis), s_moved.movedim(-1, axis)


def upcast_from_mxfp(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, axis: int) -> torch.Tensor:
    """Dequantize MXFP4 (uint8, packed along `axis`) or MXFP8 with E8M0 `scale` to `dtype`.

    The result has 2 * q.shape[axis] (MXFP4) or q.shape[axis] (MXFP8) elements along `axis` and
    is stride-1 along it. Scale 255 decodes to NaN, scale 0 to 2^-127.
    """
    op = "upcast_from_mxfp"
    axis, fmt, length = _check_upcast(op, q, scale, dtype, axis)
    if not target_info.runs_triton(q.device):
        target_info.warn_fallback("numerics_details.mxfp.upcast_from_mxfp")
        return upcast_from_mxfp_torch(q, scale, dtype, axis)
    from .mxfp_details._upcast_from_mxfp import _upcast_from_mxfp_kernel

    out_moved = _empty_moved(q, axis, length, dtype)
    q_m, s_m = q.movedim(axis, -1), scale.movedim(axis, -1)
    if not fmt.is_fp4:
        q_m = q_m.view(torch.uint8)
    fq, fs = _fold_rows(q_m), _fold_rows(s_m)
    if fq is None or fs is None or [d[0] for d in fq] != [d[0] for d in fs]:
        q_m, s_m = q_m.contiguous(), s_m.contiguous()
        fq, fs = _fold_rows(q_m), _fold_rows(s_m)
    n_rows, n_inner, q_so, q_si = _row_params(fq)
    _, _, s_so, s_si = _row_params(fs)
    if length > 0 and n_rows > 0:
        block_r, block_l, num_warps = _tile(length, q_m.stride(-1), n_rows)
        grid = (triton.cdiv(n_rows, block_r) * triton.cdiv(length, block_l),)
        _upcast_from_mxfp_kernel[grid](
            q_m, s_m, out_moved,
            n_rows, length, q_m.shape[-1], s_m.shape[-1],
            n_inner, q_so, q_si, q_m.stride(-1), s_so, s_si, s_m.stride(-1),
            IS_FP4=fmt.is_fp4, FP8_MANT=fmt.mantissa_bits, FP8_BIAS=fmt.bias,
            FP8_SUB_STEP=fmt.subnormal_step, IS_E4M3FN=q.dtype == torch.float8_e4m3fn,
            OUT_BF16=dtype == torch.bfloat16, INTERPRETED=target_info.get_target().interpreter,
            BLOCK_R=block_r, BLOCK_L=block_l, num_warps=num_warps,
        )
    return out_moved.movedim(-1, axis)
