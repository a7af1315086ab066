import pytest
import torch

from triton_kernels.swiglu import PrecisionConfig, swiglu_torch


def test_swiglu_torch_formula_on_random_input():
    a = torch.randn(5, 12, dtype=torch.float64) * 4
    alpha, limit = 1.702, 3.0
    out = swiglu_torch(a, alpha, PrecisionConfig(limit))
    gate = a[:, 0::2].clamp(max=limit)
    lin = a[:, 1::2].clamp(-limit, limit)
    expected = gate * torch.sigmoid(alpha * gate) * (lin + 1)
    assert out.shape == (5, 6)
    torch.testing.assert_close(out, expected.to(out.dtype))


def test_swiglu_torch_rejects_odd_width():
    with pytest.raises(ValueError, match="last dimension of `a` must be even"):
        swiglu_torch(torch.randn(2, 3), 1.0, PrecisionConfig(None))


# --- Triton standalone swiglu (interpreted here) and the fused tile function ---------------------

import types  # noqa: E402

from triton_kernels.swiglu import swiglu, swiglu_fn_torch  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("limit", [None, 2.5])
def test_swiglu_triton_matches_torch(device, dtype, limit):
    torch.manual_seed(0)
    a = (torch.randn(37, 70, device=device) * 4).to(dtype)
    out = swiglu(a, 1.702, PrecisionConfig(limit))
    ref = swiglu_torch(a, 1.702, PrecisionConfig(limit))
    assert out.shape == (37, 35) and out.dtype == dtype
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)
    a64 = a.double()
    g = a64[:, 0::2] if limit is None else a64[:, 0::2].clamp(max=limit)
    lin = a64[:, 1::2] if limit is None else a64[:, 1::2].clamp(-limit, limit)
    exact = g * torch.sigmoid(1.702 * g) * (lin + 1)
    assert ((out.double() - exact).norm() / exact.norm()).item() < 1e-2


def test_swiglu_triton_3d_and_nan_propagates(device):
    a = torch.randn(2, 5, 8, device=device)
    a[0, 0, 0] = float("nan")
    out = swiglu(a, 1.0, PrecisionConfig(1.0))
    assert out.shape == (2, 5, 4)
    assert out[0, 0, 0].isnan() and not out.flatten()[1:].isnan().any()
    torch.testing.assert_close(out[1], swiglu_torch(a[1], 1.0, PrecisionConfig(1.0)))


def test_swiglu_routing_rows_past_the_experts_are_zero(device):
    a = torch.randn(10, 6, device=device)
    ed = types.SimpleNamespace(token_offs_raw=torch.tensor([0, 3, 7], dtype=torch.int32, device=device))
    rd = types.SimpleNamespace(expt_data=ed)
    out = swiglu(a, 1.702, PrecisionConfig(7.0), routing_data=rd)
    ref = swiglu_torch(a, 1.702, PrecisionConfig(7.0), routing_data=rd)
    assert (out[7:] == 0).all() and (ref[7:] == 0).all()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out[:7], swiglu_torch(a[:7], 1.702, PrecisionConfig(7.0)))


def test_swiglu_fn_torch_is_the_tile_formula():
    t = torch.randn(4, 8, dtype=torch.float64) * 5
    torch.testing.assert_close(swiglu_fn_torch(t, 1.702, 7.0), swiglu_torch(t, 1.702, PrecisionConfig(7.0)))


def test_swiglu_rejects_bad_input(device):
    with pytest.raises(TypeError, match="`a` must be a floating-point"):
        swiglu(torch.ones(2, 4, dtype=torch.int32, device=device), 1.0, PrecisionConfig(None))
    with pytest.raises(TypeError, match="`precision_config` must be a swiglu.PrecisionConfig"):
        swiglu(torch.ones(2, 4, device=device), 1.0, None)
    with pytest.raises(ValueError, match="last dimension of `a` must be even"):
        swiglu(torch.ones(2, 5, device=device), 1.0, PrecisionConfig(None))
