"""MXFP4 / MXFP8 conversions: golden vectors, Triton kernels vs torch references, edge cases."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from triton_kernels import target_info
from triton_kernels.numerics_details import mxfp
from triton_kernels.numerics_details.mxfp import (
    MXFP_BLOCK_SIZE,
    DequantScaleRoundingMode,
    downcast_to_mxfp,
    downcast_to_mxfp_torch,
    upcast_from_mxfp,
    upcast_from_mxfp_torch,
)

# numpy warns about wrapping uint32 multiplies (the hash) and NaN * 0 when kernels are interpreted.
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "mxfp4_vectors.npz"
MODES = {"round_up": DequantScaleRoundingMode.ROUND_UP, "round_down": DequantScaleRoundingMode.ROUND_DOWN}
DTYPES = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}
FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns of t (any dtype), with every NaN mapped to one pattern: NaN payloads carry no meaning."""
    t = t.detach().cpu()
    if t.is_floating_point():
        nan = torch.isnan(t.float())
        t = t.float().view(torch.int32)
        return torch.where(nan, torch.full_like(t, 0x7FC00000), t)
    return t.to(torch.int64)


def assert_same_bits(a: torch.Tensor, b: torch.Tensor):
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = bits(a) != bits(b)
    assert not diff.any(), f"{int(diff.sum())} of {diff.numel()} elements differ; first at {diff.nonzero()[0].tolist()}"


def golden_cases():
    if not GOLDEN.exists():
        return ["golden-file-missing"]
    with np.load(GOLDEN) as data:
        return sorted({k.rsplit("__", 1)[0] for k in data.files})


@pytest.fixture(scope="module")
def golden():
    # Fails, never skips: the golden vectors are the definition of the element rounding.
    assert GOLDEN.exists(), f"golden vectors not found at {GOLDEN} (CI clones shared/ beside the repository)"
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def _golden_case(golden, case):
    x_dtype = DTYPES[str(golden[f"{case}__x_dtype"])]
    x = torch.from_numpy(golden[f"{case}__x_f32"]).to(x_dtype)
    assert torch.equal(x.float(), torch.from_numpy(golden[f"{case}__x_f32"])), "input not representable in its dtype"
    mode = MODES[case.rsplit("__", 1)[1]]
    return x, int(golden[f"{case}__axis"]), mode


@pytest.mark.parametrize("case", golden_cases())
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_golden_vectors_bit_exact(golden, case, impl, device):
    x, axis, mode = _golden_case(golden, case)
    down = downcast_to_mxfp_torch if impl == "torch" else downcast_to_mxfp
    up = upcast_from_mxfp_torch if impl == "torch" else upcast_from_mxfp
    dev = "cpu" if impl == "torch" else device
    q, scale = down(x.to(dev), torch.uint8, axis, mode)
    assert q.dtype == torch.uint8 and scale.dtype == torch.uint8
    assert_same_bits(q, torch.from_numpy(golden[f"{case}__q_u8"]))
    assert_same_bits(scale, torch.from_numpy(golden[f"{case}__scale_u8"]))
    for out_dtype in (torch.float32, torch.bfloat16):
        y = up(q, scale, out_dtype, axis)
        assert y.dtype == out_dtype and y.shape == x.shape
        expected = torch.from_numpy(golden[f"{case}__deq_{str(out_dtype).split('.')[1]}_f32"])
        assert_same_bits(y.float(), expected)


def test_golden_file_covers_what_the_spec_promises(golden):
    cases = golden_cases()
    assert {c.rsplit("__", 1)[1] for c in cases} == {"round_up", "round_down"}
    assert {str(golden[f"{c}__x_dtype"]) for c in cases} == set(DTYPES)
    assert any(golden[f"{c}__x_f32"].shape[int(golden[f"{c}__axis"])] % 32 for c in cases)


def random_input(shape, dtype, seed=0):
    """Random values over a wide exponent range, so blocks get very different scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-30, 30, shape, generator=g).float())
    return x.to(dtype)


def poisoned_like(t):
    return torch.full_like(t, float("nan")) if t.is_floating_point() else torch.full_like(t, 0xAB)


CASES = [((6, 77), 1), ((5, 40, 7), 1), ((70, 9), 0), ((3, 4, 66), -1), ((2, 33, 3, 5), -3), ((96,), 0)]


@pytest.mark.parametrize("quant", [torch.uint8] + FP8, ids=["mxfp4", "e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", list(DequantScaleRoundingMode))
def test_triton_matches_torch_on_random_inputs(quant, dtype, mode, device):
    for i, (shape, axis) in enumerate(CASES):
        x = random_input(shape, dtype, seed=i)
        q_ref, s_ref = downcast_to_mxfp_torch(x, quant, axis, mode)
        q, s = downcast_to_mxfp(x.to(device), quant, axis, mode)
        assert q.dtype == quant and q.shape == q_ref.shape and s.shape == s_ref.shape
        assert_same_bits(q.view(torch.uint8), q_ref.view(torch.uint8))
        assert_same_bits(s, s_ref)
        for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
            y_ref = upcast_from_mxfp_torch(q_ref, s_ref, out_dtype, axis)
            assert_same_bits(upcast_from_mxfp(q, s, out_dtype, axis), y_ref)


def test_shapes_strides_and_odd_lengths(device):
    x = random_input((4, 69, 3), torch.bfloat16)
    for impl in (downcast_to_mxfp_torch, downcast_to_mxfp):
        q, s = impl(x.to(device), torch.uint8, 1)
        assert q.shape == (4, 35, 3) and s.shape == (4, 3, 3)
        assert q.stride(1) == 1 and s.stride(1) == 1  # stride 1 along the packed axis
        assert (q[:, -1].cpu() >> 4 == 0).all()     # the odd tail's high nibble is padding
        y = upcast_from_mxfp(q, s, torch.float32, 1)
        assert y.shape == (4, 70, 3) and (y[:, 69] == 0).all()
        q8, s8 = impl(x.to(device), torch.float8_e4m3fn, -2)
        assert q8.shape == (4, 69, 3) and s8.shape == (4, 3, 3)


def test_non_contiguous_inputs_are_read_in_place(device):
    base = random_input((3, 64, 40), torch.bfloat16, seed=3).to(device)
    for view, axis in [(base.transpose(1, 2), 2), (base[:, ::2, :], 1), (base.permute(2, 0, 1), 2)]:
        q, s = downcast_to_mxfp(view, torch.uint8, axis)
        q_ref, s_ref = downcast_to_mxfp_torch(view.cpu().contiguous(), torch.uint8, axis)
        assert_same_bits(q, q_ref)
        assert_same_bits(s, s_ref)
        assert_same_bits(upcast_from_mxfp(q.transpose(0, -1).contiguous().transpose(0, -1), s, torch.float32, axis),
                         upcast_from_mxfp_torch(q_ref, s_ref, torch.float32, axis))


@pytest.mark.parametrize("quant", [torch.uint8] + FP8, ids=["mxfp4", "e4m3", "e5m2"])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_nan_inf_and_zero_blocks(quant, impl, device):
    down = downcast_to_mxfp_torch if impl == "torch" else downcast_to_mxfp
    up = upcast_from_mxfp_torch if impl == "torch" else upcast_from_mxfp
    dev = "cpu" if impl == "torch" else device
    x = torch.randn(5, 64)
    x[0, 5] = float("nan")
    x[1, 40] = float("inf")
    x[2, 0] = float("-inf")
    x[3] = 0.0
    x[3, 33] = -0.0
    x[4, :32] = -0.0
    for mode in DequantScaleRoundingMode:
        q, s = down(x.to(dev), quant, 1, mode)
        q, s = q.cpu().view(torch.uint8), s.cpu()
        assert s[0, 0] == 255 and s[1, 1] == 255 and s[2, 0] == 255
        assert s[3].tolist() == [0, 0] and s[4, 0] == 0
        per_block = 16 if quant == torch.uint8 else 32
        for r, b in [(0, 0), (1, 1), (2, 0), (3, 0), (3, 1), (4, 0)]:
            assert (q[r, b * per_block:(b + 1) * per_block] == 0).all(), (r, b)
        assert 0 < s[0, 1] < 255 and (q[0, per_block:] != 0).any()
        for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
            y = up(q.view(quant).to(dev), s.to(dev), out_dtype, 1).cpu().float()
            assert torch.isnan(y[0, :32]).all() and torch.isnan(y[1, 32:]).all() and torch.isnan(y[2, :32]).all()
            assert not torch.isnan(y[0, 32:]).any()
            assert (y[3] == 0).all() and (y[4, :32] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_subnormal_blocks_match(dtype, device):
    """Blocks of subnormals (and normal blocks whose amax / 6 is subnormal) must not flush to zero."""
    g = torch.Generator().manual_seed(5)
    mags = torch.tensor([[1e-39], [1e-37], [1e-44], [3e-38], [6e-8], [1e-5]])
    x = (torch.randn(6, 64, generator=g) * mags).to(dtype)
    for quant in [torch.uint8] + FP8:
        for mode in DequantScaleRoundingMode:
            q_ref, s_ref = downcast_to_mxfp_torch(x, quant, 1, mode)
            q, s = downcast_to_mxfp(x.to(device), quant, 1, mode)
            assert_same_bits(q.view(torch.uint8), q_ref.view(torch.uint8))
            assert_same_bits(s, s_ref)
            for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
                assert_same_bits(upcast_from_mxfp(q, s, out_dtype, 1), upcast_from_mxfp_torch(q_ref, s_ref, out_dtype, 1))
    if dtype != torch.float16:
        q, s = downcast_to_mxfp_torch(x, torch.uint8, 1)
        assert (s[0] > 0).all() and (q[0] != 0).any()  # the subnormal row is quantized, not flushed


def test_upcast_decodes_extreme_scales(device):
    q = torch.full((3, 16), 0x7F, dtype=torch.uint8)  # low nibble 0xF = -6.0, high nibble 7 = 6.0
    q[:, ::2] = 0x1D                                   # low nibble 0xD = -3.0, high nibble 1 = 0.5
    s = torch.tensor([[0], [1], [254]], dtype=torch.uint8)
    for impl, dev in ((upcast_from_mxfp_torch, "cpu"), (upcast_from_mxfp, device)):
        y = impl(q.to(dev), s.to(dev), torch.float32, 1).cpu()
        assert y[0, 0] == -3.0 * 2.0 ** -127 and y[0, 1] == 0.5 * 2.0 ** -127  # scale 0 is 2^-127, not 0
        assert y[1, 2] == -6.0 * 2.0 ** -126 and y[1, 3] == 6.0 * 2.0 ** -126
        assert y[2, 3] == math.inf and y[2, 2] == -math.inf                   # 6 * 2^127 overflows fp32
    ref = upcast_from_mxfp_torch(q, s, torch.bfloat16, 1)
    assert_same_bits(upcast_from_mxfp(q.to(device), s.to(device), torch.bfloat16, 1), ref)
    assert_same_bits(upcast_from_mxfp(q.to(device), s.to(device), torch.float16, 1),
                     upcast_from_mxfp_torch(q, s, torch.float16, 1))


@pytest.mark.parametrize("quant", [torch.uint8] + FP8, ids=["mxfp4", "e4m3", "e5m2"])
def test_values_on_the_grid_survive_a_round_trip(quant, device):
    """Elements already on the element grid times a power of two come back exactly."""
    g = torch.Generator().manual_seed(7)
    if quant == torch.uint8:
        grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    else:
        grid = torch.arange(256, dtype=torch.uint8).view(quant).float()
        grid = grid[torch.isfinite(grid)]
    top = float(grid.abs().max())
    vals = grid[torch.randint(0, grid.numel(), (8, 64), generator=g)]
    vals *= torch.where(torch.rand(8, 64, generator=g) < 0.5, -1.0, 1.0)
    vals[:, ::32] = top  # every block holds the largest element, so the scale is exactly its exponent
    x = vals * torch.exp2(torch.randint(-10, 10, (8, 1), generator=g).float())
    for down, up, dev in ((downcast_to_mxfp_torch, upcast_from_mxfp_torch, "cpu"),
                          (downcast_to_mxfp, upcast_from_mxfp, device)):
        q, s = down(x.to(dev), quant, 1, DequantScaleRoundingMode.ROUND_DOWN)
        assert_same_bits(up(q, s, torch.float32, 1), x)


def test_e2m1_rounding_near_every_tie_and_grid_point(device):
    """The kernels round with bit arithmetic, the reference with comparisons: check them against each
    other on every fp32 pattern within 2000 ulps of each E2M1 grid point and midpoint, plus random ones."""
    points = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0])
    near = (points.view(torch.int32)[:, None] + torch.arange(-2000, 2001, dtype=torch.int32)[None, :]).reshape(-1)
    near = near[near >= 0]
    rand = torch.randint(0, 0x40C00001, (100_000,), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    vals = torch.cat([near, rand]).view(torch.float32)
    vals = vals[(vals >= 0) & (vals <= 6.0)]
    for top, mode in ((6.0, DequantScaleRoundingMode.ROUND_UP), (7.99, DequantScaleRoundingMode.ROUND_DOWN)):
        n = -(-vals.numel() // 31) * 31
        body = torch.cat([vals, torch.zeros(n - vals.numel())]).view(-1, 31)
        body = torch.where(torch.arange(body.shape[0])[:, None] % 2 == 0, body, -body)
        x = torch.cat([torch.full((body.shape[0], 1), top), body], dim=1)  # scale pinned to 1: q == x
        if top > 6:
            x[:, 1] = 6.0 + (7.99 - 6.0) * torch.rand(x.shape[0], generator=torch.Generator().manual_seed(2))
        q_ref, s_ref = downcast_to_mxfp_torch(x, torch.uint8, 1, mode)
        assert (s_ref == 127).all()
        q, s = downcast_to_mxfp(x.to(device), torch.uint8, 1, mode)
        assert_same_bits(q, q_ref)
        assert_same_bits(s, s_ref)


def test_round_up_never_saturates_and_round_down_can():
    x = torch.full((1, 32), 1.0)
    x[0, 0] = 7.0  # amax / 6 = 1.1667: UP -> scale 2, DOWN -> scale 1 and 7 saturates to 6
    up_q, up_s = downcast_to_mxfp_torch(x, torch.uint8, 1, DequantScaleRoundingMode.ROUND_UP)
    dn_q, dn_s = downcast_to_mxfp_torch(x, torch.uint8, 1, DequantScaleRoundingMode.ROUND_DOWN)
    assert up_s.item() == 128 and dn_s.item() == 127
    assert upcast_from_mxfp_torch(up_q, up_s, torch.float32, 1)[0, 0] == 8.0
    assert upcast_from_mxfp_torch(dn_q, dn_s, torch.float32, 1)[0, 0] == 6.0


def test_fp8_elements_round_to_nearest_even(device):
    # 1 + 1/16 lies halfway between e4m3 1.0 and 1.125: ties go to the even mantissa (1.0).
    x = torch.tensor([[448.0, 1.0625, 1.1875, -1.0625, 2.0 ** -10, 3 * 2.0 ** -10] + [0.0] * 26])
    q, s = downcast_to_mxfp(x.to(device), torch.float8_e4m3fn, 1)
    assert s.item() == 127
    assert q.cpu().float()[0, :6].tolist() == [448.0, 1.0, 1.25, -1.0, 0.0, 2.0 ** -8]


def test_stochastic_rounding_matches_between_implementations(device):
    x = random_input((6, 80), torch.bfloat16, seed=11)
    q_ref, s_ref = downcast_to_mxfp_torch(x, torch.uint8, 1, rounding="stochastic", seed=1234)
    q, s = downcast_to_mxfp(x.to(device), torch.uint8, 1, rounding="stochastic", seed=1234)
    assert_same_bits(q, q_ref)
    assert_same_bits(s, s_ref)
    q2, _ = downcast_to_mxfp_torch(x, torch.uint8, 1, rounding="stochastic", seed=1234)
    q3, _ = downcast_to_mxfp_torch(x, torch.uint8, 1, rounding="stochastic", seed=1235)
    assert torch.equal(q2, q_ref) and not torch.equal(q3, q_ref)


def test_stochastic_rounding_is_unbiased():
    """Each block holds 6 * 2^k (fixing the scale to 2^k) and 31 copies of one value v; over many
    blocks the mean dequantized v must match v within 5 standard errors, where round-to-nearest
    is off by much more."""
    vs = torch.tensor([0.1, 0.3, 0.74, 1.2, 1.9, 2.4, 3.3, 4.5, 5.9])
    n_blocks = 2048
    x = vs.repeat_interleave(n_blocks)[:, None].expand(-1, 32).clone()
    x[:, 0] = 6.0
    q, s = downcast_to_mxfp_torch(x, torch.uint8, 1, rounding="stochastic", seed=99)
    assert (s == 127).all()
    y = upcast_from_mxfp_torch(q, s, torch.float32, 1)[:, 1:].reshape(len(vs), -1).double()
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)
    for v, samples in zip(vs.double(), y):
        lo = grid[grid <= v].max()
        hi = grid[grid > v].min()
        assert set(samples.unique().tolist()) <= {lo.item(), hi.item()}
        p = (v - lo) / (hi - lo)
        stderr = (hi - lo) * math.sqrt(p * (1 - p) / samples.numel())
        assert abs(samples.mean() - v) < 5 * stderr, (v.item(), samples.mean().item(), stderr)
    nearest_q, nearest_s = downcast_to_mxfp_torch(x, torch.uint8, 1)
    biased = upcast_from_mxfp_torch(nearest_q, nearest_s, torch.float32, 1)[:n_blocks, 1:]
    assert (biased == 0.0).all()  # 0.1 always rounds to 0 without stochastic rounding


def test_fallback_to_torch_warns_once(monkeypatch):
    target_info.reset()
    monkeypatch.setenv("TRITON_KERNELS_VARIANT", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    try:
        x = random_input((4, 64), torch.float32)
        with pytest.warns(RuntimeWarning, match="downcast_to_mxfp: using the torch reference"):
            q, s = downcast_to_mxfp(x, torch.uint8, 1)
        q_ref, s_ref = downcast_to_mxfp_torch(x, torch.uint8, 1)
        assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
        with pytest.warns(RuntimeWarning, match="upcast_from_mxfp: using the torch reference"):
            y = upcast_from_mxfp(q, s, torch.bfloat16, 1)
        assert torch.equal(y, upcast_from_mxfp_torch(q, s, torch.bfloat16, 1))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            downcast_to_mxfp(x, torch.uint8, 1)
    finally:
        monkeypatch.undo()
        target_info.reset()


@pytest.mark.parametrize("down", [downcast_to_mxfp, downcast_to_mxfp_torch])
def test_downcast_rejects_bad_input(down):
    x = torch.randn(4, 64)
    with pytest.raises(TypeError, match="`src` must be float32, bfloat16 or float16"):
        down(x.to(torch.int32), torch.uint8, 1)
    with pytest.raises(TypeError, match="`src` must be a torch.Tensor"):
        down(x.numpy(), torch.uint8, 1)
    with pytest.raises(TypeError, match="`out_quant_type` must be torch.uint8"):
        down(x, torch.int8, 1)
    with pytest.raises(ValueError, match="`axis`=2 is out of range"):
        down(x, torch.uint8, 2)
    with pytest.raises(ValueError, match="`axis`=-3 is out of range"):
        down(x, torch.uint8, -3)
    with pytest.raises(TypeError, match="`axis` must be an int"):
        down(x, torch.uint8, 1.0)
    with pytest.raises(TypeError, match="`DEQUANT_SCALE_ROUNDING_MODE` must be a DequantScaleRoundingMode"):
        down(x, torch.uint8, 1, "up")
    with pytest.raises(ValueError, match="`rounding` must be 'nearest' or 'stochastic'"):
        down(x, torch.uint8, 1, rounding="even")
    with pytest.raises(ValueError, match="'stochastic' is implemented for MXFP4"):
        down(x, torch.float8_e4m3fn, 1, rounding="stochastic")
    with pytest.raises(ValueError, match="`src` must have at least one dimension"):
        down(torch.tensor(1.0), torch.uint8, 0)


@pytest.mark.parametrize("up", [upcast_from_mxfp, upcast_from_mxfp_torch])
def test_upcast_rejects_bad_input(up):
    q, s = downcast_to_mxfp_torch(torch.randn(4, 64), torch.uint8, 1)
    assert q.shape == (4, 32) and s.shape == (4, 2)
    with pytest.raises(ValueError, match=r"`scale` must have shape \(4, 2\).*ceil\(64/32\).*got \(4, 1\)"):
        up(q, s[:, :1], torch.float32, 1)  # scales for 32 elements, but 32 packed bytes hold 64
    with pytest.raises(ValueError, match=r"`scale` must have shape \(4, 2\)"):
        up(q, s[:3], torch.float32, 1)
    with pytest.raises(ValueError, match=r"`scale` must have shape \(4, 2\)"):
        up(q, s[:, :, None], torch.float32, 1)
    q_odd = q[:, :31]  # 62 elements need 2 blocks
    assert up(q_odd, s, torch.float32, 1).shape == (4, 62)
    with pytest.raises(ValueError, match=r"`scale` must have shape \(2, 4\)"):
        up(q.t(), s, torch.float32, 0)
    with pytest.raises(TypeError, match="`scale` must be torch.uint8"):
        up(q, s.to(torch.int32), torch.float32, 1)
    with pytest.raises(TypeError, match="`q` must be torch.uint8"):
        up(q.to(torch.int16), s, torch.float32, 1)
    with pytest.raises(TypeError, match="`dtype` must be torch.float32"):
        up(q, s, torch.int32, 1)
    with pytest.raises(ValueError, match="`axis`=5 is out of range"):
        up(q, s, torch.float32, 5)
    with pytest.raises(TypeError, match="`q` must be a torch.Tensor"):
        up(q.numpy(), s, torch.float32, 1)


def test_block_size_constant():
    assert MXFP_BLOCK_SIZE == 32 and mxfp.MXFP_BLOCK_SIZE == 32


@pytest.mark.gpu
@pytest.mark.parametrize("quant", [torch.uint8] + FP8, ids=["mxfp4", "e4m3", "e5m2"])
@pytest.mark.parametrize("mode", list(DequantScaleRoundingMode))
def test_gpu_full_size_matches_torch(quant, mode):
    x = random_input((4096, 2880), torch.bfloat16).cuda()
    x[7, 100] = float("nan")
    x[9, :64] = 0
    x[11, :32] = torch.randn(32, device="cuda") * 1e-39  # an all-subnormal block (no flush to zero allowed)
    x[12, :32] = torch.randn(32, device="cuda") * 1e-37  # normal amax, subnormal amax / 6
    q_ref, s_ref = downcast_to_mxfp_torch(x, quant, 1, mode)  # the torch reference on the GPU
    q, s = downcast_to_mxfp(x, quant, 1, mode)
    assert_same_bits(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert_same_bits(s, s_ref)
    for axis_view in (x.t(),):  # quantizing along the strided axis
        q_ref, s_ref = downcast_to_mxfp_torch(axis_view, quant, 0, mode)
        q, s = downcast_to_mxfp(axis_view, quant, 0, mode)
        assert_same_bits(q.view(torch.uint8), q_ref.view(torch.uint8))
        assert_same_bits(s, s_ref)
    for out_dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert_same_bits(upcast_from_mxfp(q, s, out_dtype, 0), upcast_from_mxfp_torch(q_ref, s_ref, out_dtype, 0))
