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
