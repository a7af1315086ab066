import math

import pytest
import torch

from triton_kernels import topk as TK


def naive_topk(x, k, apply_softmax=True):
    experts, values = [], []
    for row in x.double().tolist():
        chosen = sorted(sorted(range(len(row)), key=lambda e: (-row[e], e))[:k])
        vals = [row[e] for e in chosen]
        if apply_softmax:
            m = max(vals)
            s = sum(math.exp(v - m) for v in vals)
            vals = [math.exp(v - m) / s for v in vals]
        experts.append(chosen)
        values.append(vals)
    return experts, values


def bits_to_sets(bitmatrix, n_expts):
    words = bitmatrix.view(torch.int32).cpu().tolist()
    return [{e for e in range(n_expts) if (row[e // 32] >> (e % 32)) & 1} for row in words]


def assert_topk_equal(got, ref, dtype):
    (v, i, b), (v_ref, i_ref, b_ref) = got, ref
    assert i.dtype == torch.int16 and v.dtype == dtype
    assert torch.equal(i.cpu(), i_ref.cpu())
    if b_ref is None:
        assert b is None
    else:
        assert b.dtype == torch.uint32 and torch.equal(b.view(torch.int32).cpu(), b_ref.view(torch.int32).cpu())
    # one ulp of the output dtype (values are float64 results rounded to float32, then to dtype)
    torch.testing.assert_close(v.cpu().float(), v_ref.cpu().float(), rtol=torch.finfo(dtype).eps, atol=0,
                               equal_nan=True)


@pytest.mark.parametrize("T,E,k,apply_softmax", [(7, 6, 2, True), (5, 40, 5, False), (6, 4, 4, True)])
def test_topk_torch_matches_naive(T, E, k, apply_softmax):
    g = torch.Generator().manual_seed(T + E)
    x = (torch.randint(-3, 3, (T, E), generator=g) * 0.5).float()  # plenty of ties
    vals, indx, bits = TK.topk_torch(x, k, apply_softmax=apply_softmax)
    experts, values = naive_topk(x, k, apply_softmax)
    assert indx.tolist() == experts
    torch.testing.assert_close(vals, torch.tensor(values, dtype=torch.float64).float(), rtol=1.2e-7, atol=0)
    assert bits_to_sets(bits, E) == [set(r) for r in experts]
    assert bits.shape == (T, (E + 31) // 32)


@pytest.mark.parametrize("T,E,k", [(37, 8, 2), (1, 33, 4), (0, 16, 2), (20, 64, 8), (40, 256, 3), (9, 5, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("apply_softmax", [True, False])
def test_topk_matches_reference(T, E, k, dtype, apply_softmax, device):
    g = torch.Generator().manual_seed(T * 7 + E + k)
    x = torch.randn(T, E, generator=g)
    if T > 5:
        x[:5] = (torch.randint(-2, 2, (5, E), generator=g) * 0.5).float()  # ties
    x = x.to(dtype).to(device)
    got = TK.topk(x, k, apply_softmax=apply_softmax)
    assert_topk_equal(got, TK.topk_torch(x, k, apply_softmax=apply_softmax), dtype)


def test_topk_options(device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 40, generator=g).to(device)
    got = TK.topk(x, 4, return_bitmatrix=False)
    assert got[2] is None
    assert_topk_equal(got, TK.topk_torch(x, 4, return_bitmatrix=False), torch.float32)
    for n_rows in (12, torch.tensor(12, device=device)):
        got = TK.topk(x, 4, n_rows=n_rows)
        assert_topk_equal(got, TK.topk_torch(x, 4, n_rows=n_rows), torch.float32)
        assert bool((got[1][12:] == -1).all()) and bool((got[0][12:] == 0).all())
        assert bool((got[2][12:].view(torch.int32) == 0).all())
    y_indx = torch.randint(0, 40, (30, 4), generator=g)
    y_indx[0, 2] = -1
    y_indx = y_indx.to(torch.int16).to(device)
    got = TK.topk(x, 4, y_indx=y_indx)
    assert_topk_equal(got, TK.topk_torch(x, 4, y_indx=y_indx), torch.float32)
    assert got[1][1:].tolist() == y_indx[1:].tolist()  # given order is kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])  # int64 / packed int32 keys
def test_topk_nan_and_signed_zero_order(dtype, device):
    x = torch.tensor([[float("nan"), -0.0, 0.0, float("-inf"), -1.0],
                      [1.0, float("nan"), float("nan"), float("-inf"), float("-inf")],
                      [float("nan"), float("nan"), float("nan"), float("nan"), -2.0]], device=device).to(dtype)
    got = TK.topk(x, 4, apply_softmax=False)
    ref = TK.topk_torch(x, 4, apply_softmax=False)
    # NaN ranks last, -0 == +0 (lowest column first); picks are listed by expert
    assert got[1].tolist() == ref[1].tolist() == [[1, 2, 3, 4], [0, 1, 3, 4], [0, 1, 2, 4]]
    assert_topk_equal(got, ref, dtype)


@pytest.mark.parametrize("fn", [TK.topk, TK.topk_torch])
def test_topk_bad_input(fn):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="`dim` must be 1"):
        fn(x, 2, dim=0)
    with pytest.raises(ValueError, match="`k` must be between 1 and"):
        fn(x, 9)
    with pytest.raises(ValueError, match="`logits` must be 2-D"):
        fn(torch.randn(8), 2)
    with pytest.raises(TypeError, match="`logits` must be float32, bfloat16 or float16"):
        fn(x.to(torch.int32), 2)
    with pytest.raises(ValueError, match=r"`y_indx` must have shape \[n_tokens, k\]"):
        fn(x, 2, y_indx=torch.zeros(4, 1, dtype=torch.int16))
    with pytest.raises(TypeError, match="`apply_softmax` must be a bool"):
        fn(x, 2, apply_softmax="yes")


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 4096, 65536])
@pytest.mark.parametrize("E,k", [(32, 4), (128, 4), (256, 8)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_topk_gpu_full_sizes(T, E, k, dtype):
    x = torch.randn(T, E, device="cuda").to(dtype)
    assert_topk_equal(TK.topk(x, k), TK.topk_torch(x, k), dtype)
    assert_topk_equal(TK.topk(x, k, apply_softmax=False), TK.topk_torch(x, k, apply_softmax=False), dtype)
