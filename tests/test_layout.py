"""Layouts: exact round trips, the addressing formula matmul_ogs relies on, probe-driven defaults."""

import dataclasses
import itertools
import re
import types

import pytest
import torch
import triton
import triton.language as tl

from triton_kernels import target_info
from triton_kernels.numerics_details.mxfp import downcast_to_mxfp_torch, upcast_from_mxfp_torch
from triton_kernels.matmul_ogs_details import _kernels
from triton_kernels.tensor import FP4, Tensor, convert_layout, wrap_torch_tensor
from triton_kernels.tensor_details import layout as L
from triton_kernels.tensor_details.layout import (
    BlackwellMXScaleLayout,
    HopperMXScaleLayout,
    HopperMXValueLayout,
    Layout,
    OperandAddressing,
    StridedLayout,
    make_default_matmul_mxfp4_w_layout,
    make_default_matmul_mxfp4_w_scale_layout,
    operand_addressing,
)
from triton_kernels.tensor_details.layout_details.mx import QUADS_BLOCK_BYTES, quads_order, quads_order_inverse

MX_LAYOUTS = [HopperMXValueLayout, HopperMXScaleLayout, BlackwellMXScaleLayout]
ALL_LAYOUTS = [StridedLayout] + MX_LAYOUTS


def make_layout(cls, shape, mx_axis):
    if cls is StridedLayout:
        return StridedLayout(shape)
    return cls(shape, mx_axis=mx_axis)


def random_bytes(shape, seed=0, k_last_storage=False, mx_axis=None):
    """Random uint8 data of `shape`; optionally stored with stride 1 along mx_axis (transformers' form)."""
    g = torch.Generator().manual_seed(seed)
    if k_last_storage:
        moved = list(shape)
        moved.append(moved.pop(mx_axis))
        return torch.randint(0, 256, moved, generator=g, dtype=torch.uint8).movedim(-1, mx_axis)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


# (shape, mx_axis): 2-D and 3-D, K at dim -2 or -1, sizes that need padding and sizes that do not.
SHAPES = [((3, 24, 40), 1), ((2, 64, 128), 1), ((45, 17), 0), ((128, 256), 0), ((2, 40, 7), 2), ((9, 33), 1),
          ((1, 1, 1), 1), ((4, 90, 2880), 1)]


@pytest.mark.parametrize("cls", ALL_LAYOUTS)
@pytest.mark.parametrize("shape,mx_axis", SHAPES)
@pytest.mark.parametrize("k_contiguous", [False, True])
def test_round_trip_is_exact(cls, shape, mx_axis, k_contiguous):
    data = random_bytes(shape, seed=len(shape), k_last_storage=k_contiguous, mx_axis=mx_axis)
    layout = make_layout(cls, shape, mx_axis)
    swizzled = layout.swizzle_data(data)
    back = layout.unswizzle_data(swizzled)
    assert back.shape == data.shape and back.dtype == data.dtype
    assert torch.equal(back, data)
    if cls is StridedLayout:
        assert swizzled is data and back is data
    else:
        assert swizzled.is_contiguous() and tuple(swizzled.shape) == layout.swizzled_shape
        assert back.stride(mx_axis) == 1  # the form transformers passes in and saves back
        assert back.data_ptr() != swizzled.data_ptr()  # a fresh tensor, not a view of the padded storage
        # Everything outside the logical data is zero padding (value layouts move nibbles or bits,
        # never create or drop a set bit).
        assert _bit_count(swizzled) == _bit_count(data)


def _bit_count(t: torch.Tensor) -> int:
    t = t.to(torch.int64)
    return int(sum(((t >> b) & 1).sum() for b in range(8 * t.element_size())))


def _flat_storage(data: torch.Tensor, a: OperandAddressing, n_e, k, n):
    span = a.offset(max(n_e - 1, 0), k - 1, n - 1) + 1 if k and n else 1
    span = max(span, a.offset(max(n_e - 1, 0), 0, 0) + 1)
    assert span <= data.untyped_storage().nbytes() // data.element_size() - data.storage_offset()
    return torch.as_strided(data, (span,), (1,))


def _logical(unswizzled: torch.Tensor, layout) -> torch.Tensor:
    """Unswizzled storage as [E, K, N] (K = the MX axis), E = 1 for 2-D."""
    mx_axis = getattr(layout, "mx_axis", unswizzled.dim() - 2)
    t = unswizzled if unswizzled.dim() == 3 else unswizzled[None]
    mx = mx_axis + (3 - unswizzled.dim())
    return t if mx == 1 else t.transpose(1, 2)


@pytest.mark.parametrize("cls", ALL_LAYOUTS)
@pytest.mark.parametrize("shape,mx_axis", SHAPES)
def test_addressing_formula_reads_every_element(cls, shape, mx_axis):
    if cls is StridedLayout and mx_axis != len(shape) - 2:
        pytest.skip("strided operands have K at dim -2")
    data = random_bytes(shape, seed=3, k_last_storage=True, mx_axis=mx_axis)
    layout = make_layout(cls, shape, mx_axis)
    swizzled = layout.swizzle_data(data)
    a = layout.addressing(swizzled)
    assert a.k_group >= 1 and a.k_group & (a.k_group - 1) == 0
    if len(shape) == 2:
        assert a.stride_e == 0
    ref = _logical(data, layout)
    n_e, k, n = ref.shape
    if a.nibble_quads:  # the formula finds each 64-value block's bytes, which hold its nibbles permuted
        padded = torch.zeros(n_e, n, -(-k // QUADS_BLOCK_BYTES) * QUADS_BLOCK_BYTES, dtype=torch.uint8)
        padded[:, :, :k] = ref.transpose(1, 2)
        ref = quads_order(padded).transpose(1, 2)[:, :k]
    flat = _flat_storage(swizzled, a, n_e, k, n)
    e_i, k_i, n_i = torch.meshgrid(torch.arange(n_e), torch.arange(k), torch.arange(n), indexing="ij")
    if ref.numel() > 20000:  # large shapes: random indices
        g = torch.Generator().manual_seed(0)
        pick = torch.randint(0, ref.numel(), (20000,), generator=g)
        e_i, k_i, n_i = e_i.reshape(-1)[pick], k_i.reshape(-1)[pick], n_i.reshape(-1)[pick]
    offsets = a.offset(e_i, k_i, n_i)
    assert torch.equal(flat[offsets], ref[e_i, k_i, n_i])


def test_addressing_of_transformers_strided_operands():
    values = random_bytes((2, 40, 48)).transpose(1, 2)  # [E, K/2, N] with stride 1 along K/2
    a = operand_addressing(wrap_torch_tensor(values, dtype=FP4))
    assert a == OperandAddressing(stride_e=40 * 48, stride_k_group=1, stride_k_inner=1, k_group=1, stride_n=48)
    scales = random_bytes((40, 3))  # 2-D [K/32, N]... here contiguous
    assert operand_addressing(wrap_torch_tensor(scales)) == OperandAddressing(0, 3, 3, 1, 1)
    assert operand_addressing(scales) == OperandAddressing(0, 3, 3, 1, 1)


def test_hopper_value_layout_design():
    layout = HopperMXValueLayout((4, 1440, 2880), mx_axis=1)  # gpt-oss down_proj: K = 2880 -> 1440 bytes
    assert layout.swizzled_shape == (4, 2944, 1472)
    a = layout.addressing(torch.zeros(layout.swizzled_shape, dtype=torch.uint8))
    assert (a.stride_k_group, a.k_group, a.stride_n, a.stride_e) == (1, 1, 1472, 2944 * 1472)
    assert 1472 % 64 == 0 and 2944 % 128 == 0  # BLOCK_K=128 values / BLOCK_N=128 tiles need no masks
    assert HopperMXValueLayout((2, 64, 256), mx_axis=1).swizzled_shape == (2, 256, 64)  # no padding needed


@pytest.mark.parametrize("cls", [HopperMXScaleLayout, BlackwellMXScaleLayout])
def test_scale_tile_is_one_contiguous_run(cls):
    layout = cls((2, 90, 5760), mx_axis=1)  # gpt-oss gate_up scales: 90 blocks along K
    data = random_bytes((2, 90, 5760))
    a = layout.addressing(layout.swizzle_data(data))
    assert a.k_group == 4 and a.stride_k_inner == 1 and a.stride_n == 4
    block_n, n0, kg, e = 64, 128, 5, 1
    offs = sorted(a.offset(e, kg * 4 + j, n0 + i) for i in range(block_n) for j in range(4))
    assert offs == list(range(offs[0], offs[0] + 4 * block_n))  # [G, BLOCK_N] scales: G*BLOCK_N consecutive bytes
    assert offs[0] % 16 == 0


@pytest.mark.parametrize("layout_in,layout_out", list(itertools.permutations(ALL_LAYOUTS, 2)))
def test_convert_layout_between_layouts(layout_in, layout_out):
    w = random_bytes((3, 48, 72), seed=5, k_last_storage=True, mx_axis=1)
    t = wrap_torch_tensor(w, dtype=FP4)
    opts_in = {} if layout_in is StridedLayout else {"mx_axis": 1}
    opts_out = {} if layout_out is StridedLayout else {"mx_axis": 1}
    a = convert_layout(t, layout_in, **opts_in)
    b = convert_layout(a, layout_out, **opts_out)
    assert isinstance(b.storage.layout, layout_out) and b.dtype is FP4 and b.shape == (3, 96, 72)
    assert torch.equal(b.storage.layout.unswizzle_data(b.storage.data), w)
    assert torch.equal(convert_layout(b, StridedLayout).storage.data, w)


@pytest.fixture
def forced_variant(monkeypatch):
    real = target_info.get_target()

    def force(variant):
        monkeypatch.setattr(target_info, "get_target", lambda: dataclasses.replace(real, variant=variant))

    return force


@pytest.mark.parametrize("variant,value_cls,scale_cls", [
    ("hopper", HopperMXValueLayout, HopperMXScaleLayout),
    ("blackwell", HopperMXValueLayout, BlackwellMXScaleLayout),
    ("ampere", StridedLayout, StridedLayout),
    ("turing", StridedLayout, StridedLayout),
    ("unsupported", StridedLayout, StridedLayout),
    ("cpu", StridedLayout, StridedLayout),
])
def test_defaults_follow_the_probe(forced_variant, variant, value_cls, scale_cls):
    forced_variant(variant)
    cls, opts = make_default_matmul_mxfp4_w_layout(mx_axis=1)
    assert cls is value_cls
    s_cls, s_opts = make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=4)
    assert s_cls is scale_cls
    if variant == "hopper":
        assert s_opts == {"mx_axis": 1, "num_warps": 4}
    # The kwargs are what convert_layout needs to build them.
    w = random_bytes((2, 32, 40), k_last_storage=True, mx_axis=1)
    s = random_bytes((2, 2, 40), k_last_storage=True, mx_axis=1)
    tw = convert_layout(wrap_torch_tensor(w, dtype=FP4), cls, **opts)
    ts = convert_layout(wrap_torch_tensor(s), s_cls, **s_opts)
    assert torch.equal(tw.storage.layout.unswizzle_data(tw.storage.data), w)
    assert torch.equal(ts.storage.layout.unswizzle_data(ts.storage.data), s)


@pytest.mark.parametrize("variant", ["hopper", "blackwell", "cpu"])
def test_transformers_load_and_save_flow(forced_variant, variant):
    """What transformers 5.20 does: quantize [E, K, N] along K, swizzle values with the default layout
    and scales as strided, overwrite .shape, later unswizzle and reshape into checkpoint blocks."""
    forced_variant(variant)
    E, K, N = 2, 64, 48
    weight = torch.randn(E, N, K, dtype=torch.bfloat16)  # checkpoint [E, out, in]
    w, w_scale = downcast_to_mxfp_torch(weight.transpose(-1, -2), torch.uint8, axis=1)
    assert w.shape == (E, K // 2, N) and w.stride(1) == 1
    cls, opts = make_default_matmul_mxfp4_w_layout(mx_axis=1)
    tw = convert_layout(wrap_torch_tensor(w, dtype=FP4), cls, **opts)
    ts = convert_layout(wrap_torch_tensor(w_scale), StridedLayout)
    assert tw.shape == (E, K, N)
    tw.shape = torch.Size([E, K, N])
    blocks = tw.storage.layout.unswizzle_data(tw.storage.data)
    assert blocks.shape == w.shape and torch.equal(blocks, w)
    saved = blocks.transpose(-1, -2).reshape(E, N, K // 32, 16)
    assert torch.equal(saved.reshape(E, N, K // 2), w.transpose(-1, -2))
    scales = ts.storage.layout.unswizzle_data(ts.storage.data)
    assert torch.equal(scales, w_scale)
    deq = upcast_from_mxfp_torch(blocks, scales, torch.bfloat16, axis=1)
    assert (deq.float() - weight.transpose(-1, -2).float()).abs().max() < 1.0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="`mx_axis`=0 is the expert dim"):
        HopperMXValueLayout((2, 8, 8), mx_axis=0)
    with pytest.raises(ValueError, match="`mx_axis` must be an int in"):
        HopperMXScaleLayout((2, 8, 8), mx_axis=3)
    with pytest.raises(ValueError, match="`shape` must be 2-D"):
        HopperMXValueLayout((2, 2, 8, 8), mx_axis=2)
    with pytest.raises(TypeError, match="`shape` .* is required"):
        BlackwellMXScaleLayout(None)
    with pytest.raises(ValueError, match="`num_warps` must be a positive power of two"):
        HopperMXScaleLayout((8, 8), mx_axis=0, num_warps=3)
    layout = HopperMXValueLayout((2, 8, 8), mx_axis=1)
    with pytest.raises(ValueError, match=r"swizzle_data: `data` must have shape \(2, 8, 8\)"):
        layout.swizzle_data(torch.zeros(2, 8, 9, dtype=torch.uint8))
    with pytest.raises(TypeError, match="`data` must be a torch.Tensor"):
        layout.swizzle_data([1, 2])
    swizzled = layout.swizzle_data(torch.zeros(2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unswizzle_data: `data` must be the swizzled storage of shape"):
        layout.unswizzle_data(swizzled[:, :, :8])
    with pytest.raises(ValueError, match="addressing: `data` must be contiguous"):
        layout.addressing(swizzled.transpose(1, 2).contiguous().transpose(1, 2))
    with pytest.raises(ValueError, match="StridedLayout.addressing: `data` must be 2-D"):
        StridedLayout().addressing(torch.zeros(2, 2, 2, 2))
    with pytest.raises(TypeError, match="operand_addressing: `t` must be"):
        operand_addressing("w")
    with pytest.raises(TypeError, match="`mx_axis` must be an int"):
        make_default_matmul_mxfp4_w_layout(mx_axis="1")


def test_layout_is_exported_as_a_base_class():
    assert all(issubclass(cls, Layout) for cls in ALL_LAYOUTS)
    assert L.Layout is Layout and isinstance(StridedLayout(), Layout)
    t = Tensor(torch.zeros(4, 4))
    assert isinstance(t.storage.layout, StridedLayout)


def _emulate_ptx(ptx: str, regs: dict) -> tuple[dict, dict]:
    """The integer instructions and moves of matmul_ogs's inline PTX, run on int64 tensors of 32-bit
    registers (`regs`: the inputs by name, e.g. "$4"; filled in place) -> (regs, {q: (t, scale)}, the
    two bf16x2 operands of the FMA that writes output $q). FMAs are not computed: the general
    decoder's multiply by 2^126 leaves its t as it was."""
    full, fmas = (1 << 32) - 1, {}

    def val(r):
        return regs[r] if r in regs else int(r, 0)

    def halves(operand):  # "{lo, hi}" -> ("lo", "hi")
        return tuple(x.strip() for x in operand[1:-1].split(","))

    for line in ptx.splitlines():
        op, _, args = line.strip().rstrip(";").partition(" ")
        a = re.findall(r"\{[^}]*\}|[^\s,]+", args)
        if op == "shf.l.wrap.b32":
            x, r = val(a[1]), int(a[3])
            regs[a[0]] = ((x << r) | (x >> (32 - r))) & full
        elif op == "and.b32":
            regs[a[0]] = val(a[1]) & val(a[2])
        elif op == "mul.lo.u32":
            regs[a[0]] = (val(a[1]) * val(a[2])) & full
        elif op == "mad.lo.u32":
            regs[a[0]] = (val(a[1]) * val(a[2]) + val(a[3])) & full
        elif op == "prmt.b32":  # byte i of d = byte (nibble i of c) of the 8 bytes b:a; nibble bit 3: sign fill
            src, sel, d = val(a[1]) | val(a[2]) << 32, val(a[3]), 0
            for i in range(4):
                byte = (src >> 8 * (sel >> 4 * i & 7)) & 255
                if sel >> 4 * i & 8:
                    byte = (byte >> 7) * 255
                d = d | byte << 8 * i
            regs[a[0]] = d
        elif op == "mov.b32" and a[0].startswith("{"):
            lo, hi = halves(a[0])
            regs[lo], regs[hi] = val(a[1]) & 0xFFFF, val(a[1]) >> 16
        elif op == "mov.b32" and a[1].startswith("{"):
            lo, hi = halves(a[1])
            regs[a[0]] = val(lo) | val(hi) << 16
        elif op == "mov.b32":
            regs[a[0]] = val(a[1])
        elif op == "fma.rn.bf16x2":
            if a[0].startswith("$"):
                fmas[int(a[0][1:])] = (val(a[1]), val(a[2]))
        elif op not in ("{", "}", ".reg"):
            raise AssertionError(f"unexpected PTX: {line}")
    return regs, fmas


@pytest.mark.parametrize("one_multiply", [False, True])
def test_hopper_value_layout_units_decode_with_the_ptx_recipes(one_multiply):
    """Inside each 64-value K block, the 32-bit unit t (16-bit words 2t, 2t+1, little endian) holds
    values 16q + 2t and 16q + 2t + 1 for q = 0..3, where matmul_ogs's inline PTX decoder finds them:
    its integer instructions (emulated here from the PTX text) give, for output q, value 16q + 2t in
    the low bf16 lane and 16q + 2t + 1 in the high one as magnitude bits 6..8 and sign bit 15
    (checked from the definition, not through quads_order)."""
    k_bytes, n = 96, 5  # K = 192 values: three blocks (padded storage adds a fourth of zeros)
    data = random_bytes((k_bytes, n), seed=11)  # [K/2, N], value 2b in the low nibble of byte b
    layout = HopperMXValueLayout((k_bytes, n), mx_axis=0)
    swizzled = layout.swizzle_data(data)[:n].to(torch.int64)  # [N, K_pad/2] bytes
    units = swizzled[:, 0::4] | swizzled[:, 1::4] << 8 | swizzled[:, 2::4] << 16 | swizzled[:, 3::4] << 24
    values = torch.stack((data & 15, data >> 4), dim=1).reshape(2 * k_bytes, n).to(torch.int64)  # [K, N]
    ptx = (_kernels._DECODE_QUADS_PTX_ONE_FMA if one_multiply else _kernels._DECODE_QUADS_PTX).value
    _, fmas = _emulate_ptx(ptx, {"$4": units, "$5": 0x11111111, "$6": 0x22222222})
    assert sorted(fmas) == [0, 1, 2, 3]
    assert [fmas[q][1] for q in range(4)] == [0x11111111, 0x11111111, 0x22222222, 0x22222222]
    pairs = {q: fmas[q][0] for q in fmas}

    def bf16_bits(v):
        return ((v & 7) << 6) | ((v >> 3) << 15)

    for kv in range(0, 2 * k_bytes, 2):
        block, q, j = kv // 64, (kv % 64) // 16, kv % 16
        want = bf16_bits(values[kv]) | bf16_bits(values[kv + 1]) << 16
        assert torch.equal(pairs[q][:, 8 * block + j // 2], want), kv
    assert int(units[:, 24:].abs().sum()) == 0  # the padding block
    assert torch.equal(quads_order_inverse(quads_order(data.t().contiguous())), data.t())


def _bf16_two_to_the(e: torch.Tensor) -> torch.Tensor:
    """bf16 bits of 2^e (int64, exact for -126 <= e <= 127)."""
    return torch.ldexp(torch.ones(e.shape), e).to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF


def test_small_scale_words_give_the_decoders_bf16_multipliers():
    """DECODE_QUADS_PTX_SMALL_SCALES with whole scale words (emulated from the PTX text): the pair PTX
    turns a word of MX blocks 4w..4w+3 (one per byte) into output h for the 64-value block 2w + h,
    and the decoder, given it as $5, multiplies pairs q = 0, 1 by 2^(s - 1) of MX block 4w + 2h and
    q = 2, 3 by that of 4w + 2h + 1, the same in both lanes; every s in 0..128 in every byte."""
    s = torch.arange(129)
    scale_bytes = torch.stack([(s + 37 * j) % 129 for j in range(4)], dim=1)  # [word, byte]
    words = sum(scale_bytes[:, j] << 8 * j for j in range(4))
    pairs, _ = _emulate_ptx(_kernels._SMALL_SCALE_PAIRS_PTX.value, {"$2": words})
    want = _bf16_two_to_the(scale_bytes - 1)
    for h in range(2):
        # $6 (the pack's second word, the same pair) must not be read: it holds a wrong value
        _, fmas = _emulate_ptx(_kernels._DECODE_QUADS_PTX_SCALE_PAIR.value,
                               {"$4": torch.zeros_like(words), "$5": pairs[f"${h}"], "$6": 0})
        for q in range(4):
            lane = want[:, 2 * h + q // 2]
            assert torch.equal(fmas[q][1], lane | lane << 16), (h, q)


def _emulated_inline_asm(self, asm, constraints, values, result_types, is_pure, pack):
    """The interpreter's create_inline_asm for integer PTX on 32-bit operands, one element each."""
    import numpy as np
    from triton.runtime.interpreter import TensorHandle

    assert pack == 1 and all(v.data.dtype == np.int32 for v in values)
    n_out = len(result_types)
    inputs = {f"${n_out + i}": torch.from_numpy(v.data.astype(np.int64)) & 0xFFFFFFFF for i, v in enumerate(values)}
    regs, _ = _emulate_ptx(asm, inputs)
    results = [TensorHandle(regs[f"${i}"].numpy().astype(np.uint32).view(np.int32), tl.int32) for i in range(n_out)]
    return types.SimpleNamespace(get_result=results.__getitem__)


def test_small_scale_pairs_reach_each_quads_word(device, monkeypatch):
    """_quads_scale_pairs (interpreted, its PTX emulated; on a GPU compiled): quads word i of a column
    (64-value block b = i // 16) gets 2^(s - 1) of MX blocks 2b and 2b + 1 in its low and high lane."""
    if target_info.get_target().interpreter:
        from triton.runtime.interpreter import InterpreterBuilder
        monkeypatch.setattr(InterpreterBuilder, "create_inline_asm", _emulated_inline_asm)
    n, block_k = 4, 256
    scales = torch.randint(0, 129, (n, block_k // 32), generator=torch.Generator().manual_seed(3))
    words = sum(scales[:, j::4] << 8 * j for j in range(4))  # [n, block_k / 128]: MX block 4w + j in byte j
    out = torch.full((n, block_k // 4), -1, dtype=torch.int32, device=device)  # no multiplier has these bits
    _scale_pairs_kernel[(1,)](words.to(torch.int32).to(device), out, BLOCK_N=n, BLOCK_K=block_k)
    want = _bf16_two_to_the(scales - 1).reshape(n, block_k // 64, 2)
    want = (want[..., 0] | want[..., 1] << 16).repeat_interleave(16, dim=1)
    assert torch.equal(out.cpu().to(torch.int64) & 0xFFFFFFFF, want)


@triton.jit
def _scale_pairs_kernel(S, P, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.arange(0, BLOCK_N)[:, None]
    words = tl.load(S + rows * (BLOCK_K // 128) + tl.arange(0, BLOCK_K // 128)[None, :])
    tl.store(P + rows * (BLOCK_K // 4) + tl.arange(0, BLOCK_K // 4)[None, :],
             _kernels._quads_scale_pairs(words, BLOCK_N, BLOCK_K))


def test_nibble_quads_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="`k_align` must be at least 32 bytes"):
        HopperMXValueLayout((64, 8), mx_axis=0, k_align=16)
    with pytest.raises(ValueError, match="must be a multiple of 32"):
        quads_order(torch.zeros(4, 48, dtype=torch.uint8))
    with pytest.raises(ValueError, match="must be a multiple of 32"):
        quads_order_inverse(torch.zeros(4, 20, dtype=torch.uint8))
