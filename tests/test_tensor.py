"""tensor: FP4 logical shapes, the Tensor attributes consumers use, convert_layout, bad input."""

import pytest
import torch

from triton_kernels.tensor import FP4, Storage, Tensor, bitwidth, convert_layout, wrap_torch_tensor
from triton_kernels.tensor_details.layout import HopperMXScaleLayout, HopperMXValueLayout, StridedLayout


def test_fp4_logical_shape_counts_two_values_per_byte_along_the_stride_1_dim():
    packed_k = torch.zeros(3, 40, 24, dtype=torch.uint8).transpose(1, 2)  # [E, K/2, N], stride 1 along K/2
    assert wrap_torch_tensor(packed_k, dtype=FP4).shape == (3, 48, 40)
    packed_last = torch.zeros(40, 24, dtype=torch.uint8)                   # contiguous: packed along the last dim
    assert wrap_torch_tensor(packed_last, dtype=FP4).shape == (40, 48)
    size_one_last = torch.zeros(5, 1, dtype=torch.uint8)                   # stride-1 dim of size > 1 wins
    assert wrap_torch_tensor(size_one_last, dtype=FP4).shape == (10, 1)
    assert wrap_torch_tensor(packed_last).shape == (40, 24)                # uint8 without FP4: bytes
    assert bitwidth(FP4) == 4 and bitwidth(torch.bfloat16) == 16


def test_tensor_attributes_and_assignable_shape():
    data = torch.zeros(2, 8, 16, dtype=torch.uint8).transpose(1, 2)  # [E, K/2=16, N=8]
    t = wrap_torch_tensor(data, dtype=FP4)
    assert t.dtype is FP4 and t.device == data.device and t.ndim == 3 and t.dim() == 3
    assert t.size(1) == 32 and t.size() == (2, 32, 8) and t.numel() == 2 * 32 * 8
    assert t.shape_max == t.shape
    assert t.storage.data is data and isinstance(t.storage.layout, StridedLayout)
    t.shape = torch.Size([2, 30, 8])  # transformers overwrites it
    assert t.shape == (2, 30, 8) and t.size(1) == 30 and t.numel() == 480
    plain = Tensor(torch.ones(3, 4, dtype=torch.bfloat16))
    assert plain.dtype == torch.bfloat16 and plain.shape == (3, 4)
    explicit = Tensor(Storage(torch.zeros(4, 4)), dtype=torch.float32, shape=[2, 8], shape_max=[4, 8])
    assert explicit.shape == (2, 8) and explicit.shape_max == (4, 8)


def test_convert_layout_keeps_dtype_and_logical_shape():
    w = torch.randint(0, 256, (2, 72, 20), dtype=torch.uint8).transpose(1, 2)  # [E, K/2=20, N=72]
    t = wrap_torch_tensor(w, dtype=FP4)
    h = convert_layout(t, HopperMXValueLayout, mx_axis=1)
    assert h.dtype is FP4 and h.shape == (2, 40, 72)
    assert isinstance(h.storage.layout, HopperMXValueLayout) and h.storage.layout.shape == (2, 20, 72)
    # The logical shape can be recovered from a swizzled storage alone.
    assert Tensor(h.storage, dtype=FP4).shape == (2, 40, 72)
    back = convert_layout(h, StridedLayout)
    assert torch.equal(back.storage.data, w) and back.shape == (2, 40, 72)
    h.shape = torch.Size([2, 40, 72])
    assert convert_layout(h, StridedLayout).shape == (2, 40, 72)
    s = torch.randint(0, 256, (2, 72, 2), dtype=torch.uint8).transpose(1, 2)
    ts = convert_layout(wrap_torch_tensor(s), HopperMXScaleLayout, mx_axis=1, num_warps=4)
    assert ts.shape == (2, 2, 72) and ts.dtype == torch.uint8


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="wrap_torch_tensor: `t` must be a torch.Tensor"):
        wrap_torch_tensor([1, 2])
    with pytest.raises(TypeError, match="FP4 data in `t` must be torch.uint8"):
        wrap_torch_tensor(torch.zeros(4, 4), dtype=FP4)
    with pytest.raises(TypeError, match="`dtype` must be None, FP4 or t.dtype"):
        wrap_torch_tensor(torch.zeros(4, 4), dtype=torch.float16)
    with pytest.raises(TypeError, match="Storage: `data` must be a torch.Tensor"):
        Storage("data")
    with pytest.raises(TypeError, match="Storage: `layout` must be a Layout instance"):
        Storage(torch.zeros(2), layout=StridedLayout)
    with pytest.raises(TypeError, match="Tensor: `storage` must be a Storage"):
        Tensor([1.0])
    with pytest.raises(TypeError, match="Tensor: `dtype` must be a torch.dtype or a DataType"):
        Tensor(torch.zeros(2), dtype="fp4")
    with pytest.raises(TypeError, match="Tensor: FP4 data must be stored as torch.uint8"):
        Tensor(torch.zeros(2), dtype=FP4)
    with pytest.raises(TypeError, match="convert_layout: `tensor` must be a triton_kernels Tensor"):
        convert_layout(torch.zeros(2, 2), StridedLayout)
    with pytest.raises(TypeError, match="convert_layout: `layout_cls` must be a Layout subclass"):
        convert_layout(wrap_torch_tensor(torch.zeros(2, 2)), dict)
    with pytest.raises(ValueError, match="`mx_axis`=0 is the expert dim"):
        convert_layout(wrap_torch_tensor(torch.zeros(2, 4, 4, dtype=torch.uint8), dtype=FP4), HopperMXValueLayout, mx_axis=0)
