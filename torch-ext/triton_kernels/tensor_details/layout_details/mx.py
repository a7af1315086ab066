"""MX weight layouts: padded, N-major value storage and K-grouped scale storage.

Both families take the unswizzled storage `shape` ([K', N] or [E, K', N], or with K' last) and
`mx_axis`, the storage dim along which MX blocks (and FP4 packing) run: that is the matmul's K.
The other of the last two dims is N; a leading third dim is the expert dim E.
"""

from __future__ import annotations

import torch

from .base import Layout, OperandAddressing, check_tensor, round_up


class _MXLayout(Layout):
    def __init__(self, shape, mx_axis):
        super().__init__(shape)
        owner = type(self).__name__
        if self.shape is None:
            raise TypeError(f"{owner}: `shape` (of the unswizzled storage tensor) is required")
        ndim = len(self.shape)
        if ndim not in (2, 3):
            raise ValueError(f"{owner}: `shape` must be 2-D [K, N] or 3-D [E, K, N], got {self.shape}")
        if mx_axis is None:
            mx_axis = ndim - 2
        if isinstance(mx_axis, bool) or not isinstance(mx_axis, int) or not -ndim <= mx_axis < ndim:
            raise ValueError(f"{owner}: `mx_axis` must be an int in [-{ndim}, {ndim}), got {mx_axis!r}")
        mx_axis %= ndim
        if mx_axis < ndim - 2:
            raise ValueError(f"{owner}: `mx_axis`={mx_axis} is the expert dim of shape {self.shape}; "
                             f"it must be one of the last two dims (K)")
        self.mx_axis = mx_axis
        self.n_axis = 2 * ndim - 3 - mx_axis  # the other of the last two dims
        self.n_experts = self.shape[0] if ndim == 3 else None
        self.k = self.shape[mx_axis]
        self.n = self.shape[self.n_axis]

    def _check_unswizzled(self, data) -> torch.Tensor:
        check_tensor(type(self).__name__, "data", data)
        if tuple(data.shape) != self.shape:
            raise ValueError(f"{type(self).__name__}.swizzle_data: `data` must have shape {self.shape} "
                             f"(the layout's), got {tuple(data.shape)}")
        return data

    def _check_swizzled(self, data, method: str) -> torch.Tensor:
        check_tensor(type(self).__name__, "data", data)
        if tuple(data.shape) != self.swizzled_shape:
            raise ValueError(f"{type(self).__name__}.{method}: `data` must be the swizzled storage of shape "
                             f"{self.swizzled_shape}, got {tuple(data.shape)}")
        if not data.is_contiguous():
            raise ValueError(f"{type(self).__name__}.{method}: `data` must be contiguous (the swizzled storage), "
                             f"got strides {data.stride()}")
        return data

    def _lead(self) -> tuple[int, ...]:
        return () if self.n_experts is None else (self.n_experts,)

    def _k_last(self, data: torch.Tensor) -> torch.Tensor:
        """[.., N, K] view of unswizzled data."""
        return data.movedim(self.mx_axis, -1)

    def _from_k_last(self, nk: torch.Tensor) -> torch.Tensor:
        """Back to the unswizzled shape; fresh storage, stride 1 along mx_axis (as transformers passes it)."""
        return nk.clone(memory_format=torch.contiguous_format).movedim(-1, self.mx_axis)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, mx_axis={self.mx_axis})"


QUADS_BLOCK_BYTES = 32  # one 64-value K block of the nibble-quads order

# How the decoder of matmul_ogs (inline PTX) turns a 32-bit unit (quads words j, j + 1, j even)
# into the bf16x2 pair q (the units' values 16q + j, 16q + j + 1): (rotate left by, mask, multiply
# by) before the final mask E2M1_BF16_PAIR_MASK; 0 = that step is skipped. The storage puts every
# value's bits where its recipe finds them (`_unit_bit_sources`). Found by an exhaustive search over
# such recipes: 10 integer operations for the four pairs (13 with the nibbles in place).
QUADS_DECODE_RECIPES = ((0, 0, 0), (6, 0, 0), (0, 0x20382038, 36), (12, 0x05C005C0, 33))
# a bf16x2 pair's E2M1 bits: magnitude at bits 6..8 (mantissa top, exponent low bits), sign at 15
_BF16_PAIR_TARGETS = (6, 7, 8, 15, 22, 23, 24, 31)  # (lane 0: bits 0..3 of the nibble, lane 1: same)
E2M1_BF16_PAIR_MASK = sum(1 << t for t in _BF16_PAIR_TARGETS)  # 0x81C081C0


def _unit_bit_sources() -> tuple[int, ...]:
    """For each bit of a unit in plain nibble order (bit 16h + 4q + b: nibble bit b of value q of
    word h), where the quads storage keeps it, derived from QUADS_DECODE_RECIPES."""
    sources = [0] * 32
    for q, (rotate, mask, multiply) in enumerate(QUADS_DECODE_RECIPES):
        shifts = [i for i in range(32) if multiply >> i & 1] or [0]
        for i, target in enumerate(_BF16_PAIR_TARGETS):
            if multiply:  # the masked bit that lands on the target; exactly one does (checked below)
                (pos,) = [target - a for a in shifts if target - a >= 0 and mask >> (target - a) & 1]
            else:
                pos = target
            sources[16 * (i // 4) + 4 * q + i % 4] = (pos - rotate) % 32
    if sorted(sources) != list(range(32)):
        raise AssertionError("QUADS_DECODE_RECIPES do not place every bit of a unit once")
    return tuple(sources)


_UNIT_BIT_SOURCES = _unit_bit_sources()
_UNIT_LUTS: dict = {}


def _permute_unit_bits(packed: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Bytes [..., K'] (K' a multiple of 4): the bits of every 4-byte little-endian unit moved from
    plain nibble order to the quads storage's places (or back), through one 256-entry table per
    byte of the unit."""
    key = (inverse, packed.device)
    if key not in _UNIT_LUTS:
        dest = [0] * 32
        for plain, stored in enumerate(_UNIT_BIT_SOURCES):
            dest[stored if inverse else plain] = plain if inverse else stored
        values = torch.arange(256)
        lut = torch.zeros(4, 256, dtype=torch.int64)
        for bit in range(32):
            lut[bit // 8] |= ((values >> (bit % 8)) & 1) << dest[bit]
        _UNIT_LUTS[key] = lut.to(packed.device)
    lut = _UNIT_LUTS[key]
    units = packed.reshape(packed.shape[:-1] + (-1, 4)).long()
    moved = lut[0][units[..., 0]] | lut[1][units[..., 1]] | lut[2][units[..., 2]] | lut[3][units[..., 3]]
    out = torch.stack([(moved >> (8 * i)) & 255 for i in range(4)], dim=-1)
    return out.to(packed.dtype).reshape(packed.shape)


def _transpose_nibbles(packed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Packed FP4 bytes [..., K'] (value 2b in the low nibble of byte b): every run of rows * cols
    values, read as a [rows, cols] matrix, transposed."""
    run = rows * cols // 2
    if packed.shape[-1] % run:
        raise ValueError(f"nibble-quads order: the last dim of the packed bytes must be a multiple of {run} "
                         f"(one 64-value block), got {packed.shape[-1]}")
    nib = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(packed.shape[:-1] + (-1, rows, cols))
    nib = nib.transpose(-1, -2).reshape(packed.shape[:-1] + (-1, 2))
    return (nib[..., 0] | (nib[..., 1] << 4)).to(packed.dtype)


def quads_order(nk: torch.Tensor) -> torch.Tensor:
    """Packed FP4 bytes [..., K'] (K' a multiple of 32; byte b = values 2b | 2b+1 << 4) -> the same
    values in nibble-quads order: in each 32-byte block, 16-bit little-endian word j holds the
    block's values j, 16 + j, 32 + j, 48 + j in its nibbles 0..3 (the block's 64 values as a
    [4, 16] matrix, transposed). A kernel that loads word j decodes four values that sit at the
    same position of four 16-value K slices, elementwise (see matmul_ogs_details._kernels). Then
    the bits of each 32-bit unit (words j, j + 1, j even) are moved to where the decoder's recipes
    take them from (QUADS_DECODE_RECIPES): the unit still holds the same eight values."""
    return _permute_unit_bits(_transpose_nibbles(nk, 4, 16), inverse=False)


def quads_order_inverse(quads: torch.Tensor) -> torch.Tensor:
    """Inverse of `quads_order`."""
    if quads.shape[-1] % QUADS_BLOCK_BYTES:
        raise ValueError(f"nibble-quads order: the last dim of the packed bytes must be a multiple of "
                         f"{QUADS_BLOCK_BYTES} (one 64-value block), got {quads.shape[-1]}")
    return _transpose_nibbles(_permute_unit_bits(quads, inverse=True), 16, 4)


class HopperMXValueLayout(_MXLayout):
    """Values N-major: storage [E, N_pad, K_pad] (or [N_pad, K_pad]), each column's K bytes contiguous,
    values in the quads order inside each 64-value K block (`quads_order`).

    K_pad = K rounded up to `k_align` storage units (64 bytes = 128 FP4 values: one BLOCK_K=128
    tile, four 16-byte loads per column; at least 32, one quads block), N_pad = N rounded up to
    `n_align` (128) columns; the padding is zeros. `mma_version` is accepted for drop-in
    compatibility and does not change the byte order.
    """

    name = "HOPPER_VALUE"
    K_ALIGN = 64
    N_ALIGN = 128

    def __init__(self, shape, mx_axis, mma_version: int = 3, k_align: int = K_ALIGN, n_align: int = N_ALIGN):
        super().__init__(shape, mx_axis)
        if mma_version not in (2, 3):
            raise ValueError(f"HopperMXValueLayout: `mma_version` must be 2 or 3, got {mma_version!r}")
        for what, v in (("k_align", k_align), ("n_align", n_align)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"HopperMXValueLayout: `{what}` must be a positive power of two, got {v!r}")
        if k_align < QUADS_BLOCK_BYTES:
            raise ValueError(f"HopperMXValueLayout: `k_align` must be at least {QUADS_BLOCK_BYTES} bytes "
                             f"(one 64-value block of the nibble-quads order), got {k_align}")
        self.mma_version = mma_version
        self.padded_k = round_up(self.k, k_align)
        self.padded_n = round_up(self.n, n_align)
        self.swizzled_shape = self._lead() + (self.padded_n, self.padded_k)

    def swizzle_data(self, data: torch.Tensor) -> torch.Tensor:
        nk = self._k_last(self._check_unswizzled(data))
        out = torch.zeros(self.swizzled_shape, dtype=data.dtype, device=data.device)
        out[..., : self.n, : self.k] = nk
        return quads_order(out)

    def unswizzle_data(self, data: torch.Tensor) -> torch.Tensor:
        self._check_swizzled(data, "unswizzle_data")
        return self._from_k_last(quads_order_inverse(data)[..., : self.n, : self.k])

    def addressing(self, data: torch.Tensor) -> OperandAddressing:
        self._check_swizzled(data, "addressing")
        stride_e = self.padded_n * self.padded_k if self.n_experts is not None else 0
        return OperandAddressing(stride_e=stride_e, stride_k_group=1, stride_k_inner=1, k_group=1,
                                 stride_n=self.padded_k, nibble_quads=True)


class _GroupedScaleLayout(_MXLayout):
    """Scales K-grouped: storage [E, K_groups, N_pad, G] (or without E).

    Scale block k of column n sits at (k // G)*N_pad*G + n*G + k % G: the G scales a column needs
    for one K tile are adjacent, and a tile's [G, BLOCK_N] scales are one run of G*BLOCK_N bytes.
    """

    K_GROUP = 4
    N_ALIGN = 128

    def __init__(self, shape, mx_axis):
        super().__init__(shape, mx_axis)
        g = self.K_GROUP
        self.k_groups = -(-self.k // g)
        self.padded_k = self.k_groups * g
        self.padded_n = round_up(self.n, self.N_ALIGN)
        self.swizzled_shape = self._lead() + (self.k_groups, self.padded_n, g)

    def swizzle_data(self, data: torch.Tensor) -> torch.Tensor:
        nk = self._k_last(self._check_unswizzled(data))
        padded = torch.zeros(self._lead() + (self.padded_n, self.padded_k), dtype=data.dtype, device=data.device)
        padded[..., : self.n, : self.k] = nk
        grouped = padded.view(self._lead() + (self.padded_n, self.k_groups, self.K_GROUP))
        return grouped.transpose(-3, -2).contiguous()

    def unswizzle_data(self, data: torch.Tensor) -> torch.Tensor:
        self._check_swizzled(data, "unswizzle_data")
        nk = data.transpose(-3, -2).reshape(self._lead() + (self.padded_n, self.padded_k))
        return self._from_k_last(nk[..., : self.n, : self.k])

    def addressing(self, data: torch.Tensor) -> OperandAddressing:
        self._check_swizzled(data, "addressing")
        g = self.K_GROUP
        group_stride = self.padded_n * g
        stride_e = self.k_groups * group_stride if self.n_experts is not None else 0
        return OperandAddressing(stride_e=stride_e, stride_k_group=group_stride, stride_k_inner=1, k_group=g,
                                 stride_n=g)


class HopperMXScaleLayout(_GroupedScaleLayout):
    """K-grouped scales with G = 4 for Hopper (see `_GroupedScaleLayout` and the `layout` docstring).

    `num_warps` is accepted (and checked) for drop-in compatibility: the byte order does not depend
    on the kernel's warp count, so one stored weight serves every config.
    """

    name = "HOPPER_SCALE"

    def __init__(self, shape, mx_axis, num_warps: int = 8):
        if isinstance(num_warps, bool) or not isinstance(num_warps, int) or num_warps < 1 or num_warps & (num_warps - 1):
            raise ValueError(f"HopperMXScaleLayout: `num_warps` must be a positive power of two, got {num_warps!r}")
        super().__init__(shape, mx_axis)
        self.num_warps = num_warps


class BlackwellMXScaleLayout(_GroupedScaleLayout):
    """K-grouped scales with G = 4 and N padded to 128 for Blackwell.

    Per K group and 128 columns this is the same 512-byte unit tcgen05's scale-factor tiles hold
    (128 rows x 4 blocks), stored row-major so the addressing stays linear in n; the kernel
    reorders inside the unit (the native 32x4x4 interleave is not linear in n). K is dim -2 by
    default (`mx_axis=None`).
    """

    name = "BLACKWELL_SCALE"

    def __init__(self, shape, mx_axis=None):
        super().__init__(shape, mx_axis)
