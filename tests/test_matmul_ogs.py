"""matmul_ogs: Triton kernel (interpreted here, compiled on the GPU) against matmul_ogs_torch, and
matmul_ogs_torch against an independent float64 einsum on dequantized weights."""

import dataclasses
import itertools
import types
import warnings

import pytest
import torch
import triton
import triton.language as tl

from triton_kernels import target_info
from triton_kernels.matmul_ogs import (Epilogue, FnSpecs, FusedActivation, MatmulConfig, PrecisionConfig,
                                       matmul_ogs, matmul_ogs_torch)
from triton_kernels.swiglu import swiglu_fn

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                    dtype=torch.float64)
ALPHA, LIMIT = 1.702, 7.0


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def spy_on(monkeypatch, module, name: str) -> list:
    """Replace module.name by a wrapper that records every result it returns; returns that list."""
    results = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(module, name, wrapper)
    return results


# ---------------------------------------------------------------------------------------------
# inputs


def routing_for(n_tokens, n_expts, k, seed, local=None, device="cpu"):
    """(RoutingData, GatherIndx, ScatterIndx, expert ids [T, k]) with the SPEC section 4 semantics.

    `local=(lo, hi)`: expert parallelism, only experts lo..hi-1 live here (others get -1)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_tokens, n_expts, generator=g)
    if n_expts > 2:  # leave one expert without tokens
        logits[:, 1] = -1e4
    try:
        from triton_kernels import routing as R
        routing_torch = R.routing_torch
    except (ImportError, AttributeError):
        routing_torch = None
    if routing_torch is not None and local is None:
        rd, gi, si = routing_torch(logits.to(device), k)
        expts = torch.topk(logits, k, dim=1).indices.sort(dim=1).values
        return rd, gi, si, expts
    vals, expts = torch.topk(logits, k, dim=1)
    expts, order = expts.sort(dim=1)
    gates = torch.softmax(vals, dim=1).gather(1, order).reshape(-1)
    flat = expts.reshape(-1).clone()
    lo, hi = local if local is not None else (0, n_expts)
    key = torch.where((flat >= lo) & (flat < hi), flat - lo, hi - lo + 1)
    topk_indx = torch.argsort(key, stable=True)
    gate_indx = torch.argsort(topk_indx)
    n_local = hi - lo
    hist = torch.bincount(key[key <= n_local - 1], minlength=n_local)[:n_local]
    mine = key < n_local
    gate_indx = torch.where(mine, gate_indx, -1)
    topk_indx = torch.where(torch.arange(flat.numel()) < hist.sum(), topk_indx, -1)
    gate_scal = gates[topk_indx.clamp(min=0)]
    offs = torch.zeros(n_local + 1, dtype=torch.int32)
    offs[1:] = torch.cumsum(hist, 0)
    bpm = {}
    for bm in (16, 32, 64, 128):
        tiles = [(b << 16) | e for e in range(n_local) for b in range(-(-int(hist[e]) // bm))]
        bound = flat.numel() // bm + n_local
        bpm[bm] = torch.tensor(tiles + [-1] * (bound - len(tiles)), dtype=torch.int32)
    ed = types.SimpleNamespace(hist=hist.int(), token_offs_raw=offs, token_offs_pad=None, block_pid_map=bpm)
    rd = types.SimpleNamespace(gate_scal=gate_scal, expt_hist=hist.int(), n_expts_tot=n_local, n_expts_act=k,
                               expt_data=ed, expected_tokens_per_expt=None)
    gi = types.SimpleNamespace(src_indx=topk_indx.int(), dst_indx=gate_indx.int())
    si = types.SimpleNamespace(src_indx=gate_indx.int(), dst_indx=topk_indx.int())
    return (*to_device(rd, gi, si, device), expts)


def to_device(rd, gi, si, device):
    def mv(ns):
        out = types.SimpleNamespace(**vars(ns)) if isinstance(ns, types.SimpleNamespace) else ns
        if isinstance(ns, types.SimpleNamespace):
            for key, v in vars(ns).items():
                if isinstance(v, torch.Tensor):
                    setattr(out, key, v.to(device))
                elif isinstance(v, dict):
                    setattr(out, key, {kk: vv.to(device) for kk, vv in v.items()})
                elif isinstance(v, types.SimpleNamespace):
                    setattr(out, key, mv(v))
        return out
    if device == "cpu" or not isinstance(rd, types.SimpleNamespace):
        return rd, gi, si
    return mv(rd), mv(gi), mv(si)


def mx_weight(n_expts, k, n, seed, device):
    """Random MXFP4 weight: packed codes [E, K/2, N] (stride 1 along K/2, as transformers passes them) and
    scales [E, K/32, N] (stride 1 along K/32)."""
    g = torch.Generator(device=device).manual_seed(seed)  # drawn where they live: gpt-oss sizes are GBs
    codes = torch.randint(0, 256, (n_expts, n, k // 2), generator=g, dtype=torch.uint8, device=device).transpose(1, 2)
    scales = torch.randint(118, 125, (n_expts, n, k // 32), generator=g, dtype=torch.uint8, device=device)
    return codes, scales.transpose(1, 2)


def dequant_reference(codes, scales):
    """float64 [E, K, N] from packed codes [E, K/2, N] and scales [E, K/32, N]: the plain definition
    (computed on the codes' device)."""
    c = codes.long()
    lut = E2M1.to(c.device)
    w = torch.stack((lut[c & 15], lut[c >> 4]), dim=2).reshape(c.shape[0], 2 * c.shape[1], c.shape[2])
    s = torch.exp2(scales.double() - 127).repeat_interleave(32, dim=1)
    return w * s


def layouts_available():
    try:
        from triton_kernels.tensor import FP4, convert_layout, wrap_torch_tensor  # noqa: F401
        from triton_kernels.tensor_details import layout  # noqa: F401
    except ImportError:
        return False
    return True


def as_weight(codes, scales, layout_name):
    """The MXFP4 weight in the given layout: 'raw' (uint8 torch tensors), or wrapped via the tensor API."""
    if layout_name == "raw":
        return codes, scales
    if not layouts_available():
        pytest.skip("tensor / tensor_details.layout not available yet")
    from triton_kernels.tensor import FP4, convert_layout, wrap_torch_tensor
    from triton_kernels.tensor_details import layout
    w = wrap_torch_tensor(codes, dtype=FP4)
    s = convert_layout(wrap_torch_tensor(scales), layout.StridedLayout)
    if layout_name == "strided":
        w = convert_layout(w, layout.StridedLayout)
    elif layout_name == "default":
        cls, opts = layout.make_default_matmul_mxfp4_w_layout(mx_axis=1)
        w = convert_layout(w, cls, **opts)
    elif layout_name == "hopper":
        w = convert_layout(w, layout.HopperMXValueLayout, mx_axis=1)
        s = convert_layout(wrap_torch_tensor(scales), layout.HopperMXScaleLayout, mx_axis=1, num_warps=8)
    elif layout_name == "blackwell":
        s = convert_layout(wrap_torch_tensor(scales), layout.BlackwellMXScaleLayout)
    else:
        raise AssertionError(layout_name)
    return w, s


SWIGLU = FusedActivation(FnSpecs("swiglu", swiglu_fn, ("alpha", "limit")), (ALPHA, LIMIT), 2)


def swiglu64(a):
    gate = a[..., 0::2].clamp(max=LIMIT)
    lin = a[..., 1::2].clamp(-LIMIT, LIMIT)
    return gate * torch.sigmoid(ALPHA * gate) * (lin + 1)


def independent_routed(x, w64, bias, expts, gi, si, rd, gather, scatter, act, gammas):
    """float64 einsum over gathered per-row weights; no code shared with matmul_ogs_torch."""
    k = rd.n_expts_act
    hist = rd.expt_hist.cpu().long()
    row_expt = torch.repeat_interleave(torch.arange(hist.numel()), hist)
    n_rows = row_expt.numel()
    if gather:
        xr = x.cpu().double()[gi.src_indx.cpu().long()[:n_rows] // k]
    else:
        xr = x.cpu().double()[:n_rows]
    out = torch.einsum("rk,rkn->rn", xr, w64[row_expt])
    if bias is not None:
        out = out + bias.cpu().double()[row_expt]
    if gammas is not None:  # SPEC section 4: gammas scale the row before the activation
        out = out * gammas.cpu().double()[:n_rows, None]
    if act:
        out = swiglu64(out)
    if not scatter:
        return out
    slots = si.dst_indx.cpu().long()[:n_rows]
    y = torch.zeros(si.src_indx.numel() // k, out.shape[1], dtype=torch.float64)
    y.index_add_(0, slots // k, out)
    return y


# ---------------------------------------------------------------------------------------------
# the combination matrix (interpreted at small sizes on the CPU)


def run_routed(device, gather, scatter, epi, act, wdtype, layout_name, n_tokens=9, n_expts=4, k=2, kdim=64,
               n=64, local=None, seed=0, config=None):
    torch.manual_seed(seed)
    rd, gi, si, expts = routing_for(n_tokens, n_expts if local is None else local[2], k, seed,
                                    None if local is None else local[:2], device)
    n_local = rd.n_expts_tot
    n_rows = gi.src_indx.numel()
    x = torch.randn(n_tokens if gather else n_rows, kdim, device=device).bfloat16()
    if wdtype == "mxfp4":
        codes, scales = mx_weight(n_local, kdim, n, seed + 1, device)
        w, s = as_weight(codes, scales, layout_name)
        w64 = dequant_reference(codes, scales).cpu()
        pc = PrecisionConfig(weight_scale=s)
    else:
        w = (torch.randn(n_local, kdim, n, device=device) / kdim ** 0.5).bfloat16()
        w64 = w.cpu().double()
        pc = PrecisionConfig()
    bias = torch.randn(n_local, n, device=device) if epi else None
    gammas = rd.gate_scal.float() if epi else None
    fa = SWIGLU if act else None
    n_out = n // 2 if act else n
    out_rows = n_tokens if scatter else n_rows
    kwargs = dict(gather_indx=gi if gather else None, scatter_indx=si if scatter else None, precision_config=pc,
                  gammas=gammas, fused_activation=fa)
    y = torch.full((out_rows, n_out), float("nan"), dtype=torch.bfloat16, device=device)
    out = matmul_ogs(x, w, bias, rd, y=y, config=config, **kwargs)
    assert out is y
    ref = matmul_ogs_torch(x, w, bias, rd, **kwargs)
    return out, ref, (x, w, w64, bias, expts, gi, si, rd, gammas, pc, kwargs)


COMBOS = list(itertools.product([False, True], [False, True], [False, True], [False, True], ["bf16", "mxfp4"]))


@pytest.mark.parametrize("gather,scatter,epi,act,wdtype", COMBOS)
def test_routed_matches_reference(device, gather, scatter, epi, act, wdtype):
    out, ref, _ = run_routed(device, gather, scatter, epi, act, wdtype, "raw")
    assert not out.isnan().any(), "output not fully written"
    assert rel_err(out, ref) <= 1e-2


@pytest.mark.parametrize("layout_name", ["strided", "default", "hopper", "blackwell"])
@pytest.mark.parametrize("gather,scatter,act", [(True, False, True), (False, True, False)])
def test_routed_layouts_match_reference(device, layout_name, gather, scatter, act):
    out, ref, _ = run_routed(device, gather, scatter, True, act, "mxfp4", layout_name, kdim=128, n=64)
    assert not out.isnan().any()
    assert rel_err(out, ref) <= 1e-2


@pytest.mark.parametrize("gather,scatter,epi,act", [(True, False, True, True), (False, True, True, False),
                                                    (True, True, False, True), (False, False, True, False)])
def test_reference_matches_independent_float64(gather, scatter, epi, act):
    out, _, (x, w, w64, bias, expts, gi, si, rd, gammas, pc, kwargs) = run_routed(
        "cpu", gather, scatter, epi, act, "mxfp4", "raw")
    pc64 = PrecisionConfig(weight_scale=pc.weight_scale, out_dtype=torch.float64)
    ref = matmul_ogs_torch(x, w, bias, rd, **{**kwargs, "precision_config": pc64}, accum_dtype=torch.float64)
    ind = independent_routed(x, w64, bias, expts, gi, si, rd, gather, scatter, act, gammas)
    if not scatter:
        ref = ref[: ind.shape[0]]
    assert ref.dtype == torch.float64
    assert rel_err(ref, ind) <= 1e-12
    assert rel_err(out, ind) <= 1e-2


def test_expert_parallel_slots_elsewhere_are_skipped(device):
    # 8 experts in total, experts 2..5 live here: slots routed elsewhere are -1 in the indices.
    out, ref, (x, w, w64, bias, expts, gi, si, rd, gammas, pc, kwargs) = run_routed(
        device, True, True, True, False, "mxfp4", "raw", n_tokens=12, k=2, local=(2, 6, 8))
    assert (si.src_indx == -1).any()
    assert not out.isnan().any()
    assert rel_err(out, ref) <= 1e-2
    ind = independent_routed(x, w64, bias, expts, gi, si, rd, True, True, False, gammas)
    assert rel_err(out, ind) <= 1e-2


def test_out_alpha_betas_out_dtype(device):
    torch.manual_seed(3)
    rd, gi, si, _ = routing_for(8, 4, 2, 3, device=device)
    x = torch.randn(8, 64, device=device).bfloat16()
    codes, scales = mx_weight(4, 64, 32, 4, device)
    pc = PrecisionConfig(weight_scale=scales, out_dtype=torch.float32)
    bias = torch.randn(4, 32, device=device)
    betas = torch.rand(16, device=device)
    out = matmul_ogs(x, codes, bias, rd, gather_indx=gi, precision_config=pc, betas=betas, out_alpha=0.5)
    assert out.dtype == torch.float32
    ref = matmul_ogs_torch(x, codes, bias, rd, gather_indx=gi, precision_config=pc, betas=betas, out_alpha=0.5,
                           accum_dtype=torch.float64)
    assert rel_err(out, ref) <= 1e-4
    # the definition: out_alpha * (x·W + bias * betas)
    plain = matmul_ogs_torch(x, codes, None, rd, gather_indx=gi, precision_config=pc, accum_dtype=torch.float64)
    hist = rd.expt_hist.cpu().long()
    row_expt = torch.repeat_interleave(torch.arange(4), hist)
    expected = 0.5 * (plain.cpu().double() + bias.cpu().double()[row_expt] * betas.cpu().double()[:, None])
    assert rel_err(ref, expected) <= 1e-6  # ref is stored as float32 (out_dtype)


# ---------------------------------------------------------------------------------------------
# plain and batched


@pytest.mark.parametrize("wdtype", ["bf16", "mxfp4"])
@pytest.mark.parametrize("batched", [False, True])
def test_plain_and_batched(device, wdtype, batched):
    torch.manual_seed(5)
    b, m, k, n = 2, 19, 96, 48
    x = torch.randn(*((b,) if batched else ()), m, k, device=device).bfloat16()
    ne = b if batched else 1
    if wdtype == "mxfp4":
        codes, scales = mx_weight(ne, k, n, 6, device)
        w, s = (codes, scales) if batched else (codes[0], scales[0])
        w64 = dequant_reference(codes, scales).cpu()
        pc = PrecisionConfig(weight_scale=s)
    else:
        w64 = torch.randn(ne, k, n, dtype=torch.float64) / k ** 0.5
        w = w64.to(device=device, dtype=torch.bfloat16)
        w64 = w.cpu().double()
        w = w if batched else w[0]
        pc = PrecisionConfig()
    bias = torch.randn(*((b,) if batched else ()), n, device=device)
    y = torch.full((*((b,) if batched else ()), m, n), float("nan"), dtype=torch.bfloat16, device=device)
    out = matmul_ogs(x, w, bias, precision_config=pc, y=y)
    assert not out.isnan().any()
    ind = torch.einsum("bmk,bkn->bmn", x.cpu().double().reshape(ne, m, k), w64) + bias.cpu().double().reshape(ne, 1, n)
    ref = matmul_ogs_torch(x, w, bias, precision_config=pc)
    assert rel_err(out, ref) <= 1e-2
    assert rel_err(ref.reshape(ind.shape), ind) <= 1e-2


@triton.jit
def scaled_relu(tile, slope):
    return tl.where(tile > 0, tile, tile * slope)


def test_user_activation(device):
    torch.manual_seed(7)
    x = torch.randn(20, 64, device=device).half()
    w = (torch.randn(64, 32, device=device) / 8).half()
    act = FusedActivation(FnSpecs("leaky", scaled_relu, ("slope",),
                                  torch_fn=lambda t, slope: torch.where(t > 0, t, t * slope)), (0.25,), 1)
    out = matmul_ogs(x, w, None, fused_activation=act)
    assert out.dtype == torch.float16
    expected = x.double() @ w.double()
    expected = torch.where(expected > 0, expected, expected * 0.25)
    assert rel_err(out, expected) <= 1e-2
    assert rel_err(matmul_ogs_torch(x, w, None, fused_activation=act), expected) <= 1e-2
    assert (out.double() < 0).any()  # the activation ran: negative values scaled, not clipped


def test_config_override_and_k_tail(device):
    torch.manual_seed(8)
    # K = 96 is not a multiple of block_k = 64: the tail is masked
    x = torch.randn(5, 96, device=device).bfloat16()
    codes, scales = mx_weight(1, 96, 32, 9, device)
    pc = PrecisionConfig(weight_scale=scales[0])
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=64, group_m=1, num_warps=4, num_stages=1)
    out = matmul_ogs(x, codes[0], None, precision_config=pc, config=cfg)
    ref = torch.einsum("mk,kn->mn", x.cpu().double(), dequant_reference(codes, scales)[0].cpu())
    assert rel_err(out, ref) <= 1e-2


SWAPPED = MatmulConfig(block_m=16, block_n=32, block_k=64, group_m=1, num_warps=4, num_stages=1, swap_xw=True)


_SWAPPED_CASES = [(True, False, True, True, "mxfp4"), (False, True, True, False, "mxfp4"), (True, True, False, False, "bf16")]


# the word decoders change only MXFP4 weights stored K-contiguous (the default Hopper layout)
@pytest.mark.parametrize("layout_name,gather,scatter,epi,act,wdtype,decode", [
    (layout, *case, decode) for layout in ("raw", "default") for case in _SWAPPED_CASES
    for decode in (("bytes", "words", "ptx") if layout == "default" and case[-1] == "mxfp4" else ("bytes",))])
def test_swapped_mainloop_matches_reference(device, layout_name, gather, scatter, epi, act, wdtype, decode):
    """The acc^T = w^T @ x^T main loop (decode / wgmma path), with a K tail (96 = 64 + 32), in every
    decoder ("ptx" runs as "words" in the interpreter)."""
    out, ref, (x, w, w64, bias, expts, gi, si, rd, gammas, pc, kwargs) = run_routed(
        device, gather, scatter, epi, act, wdtype, layout_name if wdtype == "mxfp4" else "raw", kdim=96, n=64,
        config=dataclasses.replace(SWAPPED, decode=decode))
    assert not out.isnan().any(), "output not fully written"
    assert rel_err(out, ref) <= 1e-2
    indep = independent_routed(x, w64, bias, expts, gi, si, rd, gather, scatter, act, gammas)
    assert rel_err(out, indep) <= 1e-2


@pytest.mark.parametrize("swap_xw,decode", [(False, "bytes"), (True, "bytes"), (True, "words"), (True, "ptx")])
def test_every_fp4_code_and_scale_decodes_exactly(device, swap_xw, decode):
    """x = identity, so out = the dequantized weight: all 256 bytes (both nibbles) under scales from 2^-27
    to 2^33, in both main loops and every decoder, bit for bit; a 255 scale makes its column NaN.
    The codes are stored K-contiguous (as the Hopper layout and transformers store them), which the
    word decoders need; "ptx" runs as "words" where inline PTX cannot (the interpreter)."""
    kdim, n = 64, 256
    codes = torch.arange(n, dtype=torch.int32).to(torch.uint8).repeat(kdim // 2, 1)  # column j: byte j
    # vary the bytes down each column too, so a decoder that mixes up K positions cannot pass
    codes = (codes.to(torch.int32) + 37 * torch.arange(kdim // 2)[:, None]).remainder(256).to(torch.uint8)
    codes = codes.t().contiguous().t()
    scale_values = torch.tensor([100, 117, 120, 126, 127, 128, 131, 160], dtype=torch.int32)
    scales = scale_values[torch.arange(2 * n) % 8].reshape(n, 2).t().contiguous().to(torch.uint8)
    scales[1, 7] = 255
    x = torch.eye(kdim).bfloat16()
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=64, group_m=1, num_warps=4, num_stages=1, swap_xw=swap_xw,
                       decode=decode)
    out = matmul_ogs(x.to(device), codes.to(device), None, config=cfg,
                     precision_config=PrecisionConfig(weight_scale=scales.to(device), out_dtype=torch.float32))
    ref = dequant_reference(codes[None], scales[None])[0]
    keep = torch.arange(n) != 7  # column 7 has a NaN block: every row of it is NaN (0 * NaN in the dot)
    torch.testing.assert_close(out.cpu().double()[:, keep], ref[:, keep], rtol=0, atol=0)
    assert out[:, 7].isnan().all()


@pytest.mark.parametrize("scale_values", [(0, 1, 100, 120, 126, 127, 128, 128), (100, 117, 120, 126, 127, 128, 131, 160)])
@pytest.mark.parametrize("kdim", [128, 96])
def test_quads_layout_decodes_every_code_exactly(device, scale_values, kdim):
    """HopperMXValueLayout (nibble-quads order): every byte of every column under scales that are all
    <= 128 (the PTX decoder's one-multiply form on a GPU) or reach 160 (its general form), with a
    K tail (96 = one and a half 64-value blocks), bit for bit; x = identity, so out = the weight."""
    from triton_kernels.tensor import FP4, convert_layout, wrap_torch_tensor
    from triton_kernels.tensor_details import layout

    n = 256
    codes = torch.arange(n, dtype=torch.int32)[None, :] + 41 * torch.arange(kdim // 2)[:, None]
    codes = codes.remainder(256).to(torch.uint8).t().contiguous().t()  # [K/2, N], K-contiguous
    scales = torch.tensor(scale_values, dtype=torch.int32)[torch.arange(kdim // 32 * n) % 8]
    scales = scales.reshape(n, kdim // 32).t().contiguous().to(torch.uint8)
    w = convert_layout(wrap_torch_tensor(codes.to(device), dtype=FP4), layout.HopperMXValueLayout, mx_axis=0)
    ws = convert_layout(wrap_torch_tensor(scales.to(device)), layout.HopperMXScaleLayout, mx_axis=0, num_warps=8)
    x = torch.eye(kdim).bfloat16().to(device)
    out = matmul_ogs(x, w, None, precision_config=PrecisionConfig(weight_scale=ws, out_dtype=torch.float32))
    ref = dequant_reference(codes[None], scales[None])[0]
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)


@pytest.mark.parametrize("quads", [False, True])
@pytest.mark.parametrize("split_k", [1, 2])
def test_k_tail_in_64_deep_steps_decodes_exactly(device, monkeypatch, quads, split_k):
    """K = 320 at block_k 256: the 64-value tail runs as an unmasked 64-deep step (TAIL_64) with
    byte scales, alone in the second split when split 2; x = identity, so out = the weight, bit
    for bit, in the nibble-quads layout (scale words in the full step) and K-contiguous bytes
    (word decoders). A spy checks the launch took that tail."""
    import triton_kernels.matmul_ogs as mo
    from triton_kernels.tensor import FP4, convert_layout, wrap_torch_tensor
    from triton_kernels.tensor_details import layout

    kdim, n = 320, 64
    codes = torch.arange(n, dtype=torch.int32)[None, :] + 29 * torch.arange(kdim // 2)[:, None]
    codes = codes.remainder(256).to(torch.uint8).t().contiguous().t()  # [K/2, N], K-contiguous
    scales = torch.tensor([100, 117, 120, 126, 127, 128, 131, 160], dtype=torch.int32)[torch.arange(kdim // 32 * n) % 8]
    scales = scales.reshape(n, kdim // 32).t().contiguous().to(torch.uint8)
    if quads:
        w = convert_layout(wrap_torch_tensor(codes.to(device), dtype=FP4), layout.HopperMXValueLayout, mx_axis=0)
        ws = convert_layout(wrap_torch_tensor(scales.to(device)), layout.HopperMXScaleLayout, mx_axis=0, num_warps=8)
    else:
        w, ws = codes.to(device), scales.to(device)
    taken = spy_on(monkeypatch, mo, "tail_in_64_steps")
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=256, group_m=1, num_warps=4, num_stages=2, swap_xw=True,
                       decode="words", split_k=split_k)
    x = torch.eye(kdim).bfloat16().to(device)
    out = matmul_ogs(x, w, None, config=cfg, precision_config=PrecisionConfig(weight_scale=ws, out_dtype=torch.float32))
    assert taken and all(taken)
    torch.testing.assert_close(out.cpu().double(), dequant_reference(codes[None], scales[None])[0], rtol=0, atol=0)


def test_k_tail_in_64_deep_steps_dense_weight(device, monkeypatch):
    """The same tail with a dense bf16 weight (no scales): x = identity gives the weight bit for bit."""
    import triton_kernels.matmul_ogs as mo
    taken = spy_on(monkeypatch, mo, "tail_in_64_steps")
    w = torch.randn(320, 64, generator=torch.Generator().manual_seed(2)).bfloat16()
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=256, group_m=1, num_warps=4, num_stages=2, swap_xw=True)
    out = matmul_ogs(torch.eye(320).bfloat16().to(device), w.to(device), None, config=cfg,
                     precision_config=PrecisionConfig(out_dtype=torch.float32))
    assert taken and all(taken)
    torch.testing.assert_close(out.cpu(), w.float(), rtol=0, atol=0)


def test_launch_kwargs_follow_a_flipped_switch(device, monkeypatch):
    """The memoized launch keywords (`_matmul_kwargs`) take the module switches as arguments: the same
    call with K_TAIL_64_STEPS flipped launches with the other TAIL_64, and flipped back, the first."""
    import triton_kernels.matmul_ogs as mo
    seen = []

    class Recorder:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                seen.append(kwargs["TAIL_64"])
                return kernel[grid](*args, **kwargs)
            return run

    kernel = mo._matmul_ogs_kernel
    monkeypatch.setattr(mo, "_matmul_ogs_kernel", Recorder())
    w = torch.randn(320, 64, generator=torch.Generator().manual_seed(3)).bfloat16().to(device)
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=256, group_m=1, num_warps=4, num_stages=2, swap_xw=True)
    x = torch.eye(320).bfloat16().to(device)
    outs = []
    for on in (True, False, True):
        monkeypatch.setattr(mo, "K_TAIL_64_STEPS", on)
        outs.append(matmul_ogs(x, w, None, config=cfg, precision_config=PrecisionConfig(out_dtype=torch.float32)))
    assert seen == [True, False, True]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0].cpu(), w.float().cpu())


@pytest.mark.parametrize("bad", [0, 16, 256, 96.0, "96"])
def test_config_max_registers_checked(bad):
    with pytest.raises(ValueError, match="`max_registers` must be None or an int in \\[24, 255\\]"):
        MatmulConfig(16, 64, 256, 1, 4, 3, True, max_registers=bad)


def test_max_registers_reaches_the_launch_options():
    """A config's register cap becomes the launch's `maxnreg` on the GPU (its tail's own cap for the tail
    launch), never for the FINISH_SPLIT launch, and not under the interpreter, which has no such option."""
    import triton_kernels.matmul_ogs as mo
    capped = MatmulConfig(16, 64, 256, 1, 4, 3, True, max_registers=96)
    plain = dataclasses.replace(capped, max_registers=None)

    def kwargs(part, stage="whole", interpreter=False):
        return mo._matmul_kwargs(mo.identity_fn, 0, 1, True, 1, 4, True, False, False, False, False, False,
                                 interpreter, False, 1, False, part, 1, False, 1, 16, part, 4, True, False, True,
                                 stage, False, False).kwargs

    assert kwargs(capped)["maxnreg"] == 96 and kwargs(capped, "split")["maxnreg"] == 96
    assert "maxnreg" not in kwargs(plain)
    assert "maxnreg" not in kwargs(capped, "finish")
    assert "maxnreg" not in kwargs(capped, interpreter=True)


@pytest.mark.gpu
@pytest.mark.parametrize("n_expts,n_tokens", [(32, 64), (128, 512)])
def test_gpu_register_cap_is_bit_identical(n_expts, n_tokens):
    """A register cap changes the compiled code's registers, not its result: gate_up and down of the
    gpt-oss layer bit for bit equal with and without MatmulConfig.max_registers, and the capped kernel
    uses at most the cap."""
    from triton_kernels.routing import routing
    device, hidden, inter, k = "cuda", 2880, 2880, 4
    torch.manual_seed(n_tokens)
    x = torch.randn(n_tokens, hidden, device=device).bfloat16()
    rd, gi, si = routing(torch.randn(n_tokens, n_expts, device=device), k)
    c1, s1 = mx_weight(n_expts, hidden, 2 * inter, 1, device)
    c2, s2 = mx_weight(n_expts, inter, hidden, 2, device)
    w1, ws1 = as_weight(c1, s1, "hopper")
    w2, ws2 = as_weight(c2, s2, "hopper")
    b1 = torch.randn(n_expts, 2 * inter, device=device)
    b2 = torch.randn(n_expts, hidden, device=device)
    gate_up = dict(gather_indx=gi, precision_config=PrecisionConfig(weight_scale=ws1), fused_activation=SWIGLU)
    down = dict(scatter_indx=si, precision_config=PrecisionConfig(weight_scale=ws2), gammas=rd.gate_scal)
    tail = MatmulConfig(16, 64, 256, 1, 4, 3, True, "ptx", max_registers=96)
    capped = (MatmulConfig(32, 64, 128, 4, 4, 3, True, "ptx", max_registers=80, tail=tail) if n_tokens * k / n_expts > 14
              else tail)
    plain = dataclasses.replace(capped, max_registers=None,
                                tail=dataclasses.replace(tail, max_registers=None) if capped.tail else None)
    h_plain = matmul_ogs(x, w1, b1, rd, config=plain, **gate_up)
    h_capped = matmul_ogs(x, w1, b1, rd, config=capped, **gate_up)
    assert torch.equal(h_plain, h_capped)
    assert torch.equal(matmul_ogs(h_plain, w2, b2, rd, config=plain, **down),
                       matmul_ogs(h_plain, w2, b2, rd, config=capped, **down))
    assert rel_err(h_capped, matmul_ogs_torch(x, w1, b1, rd, **gate_up)) <= 1e-2
    from triton_kernels.matmul_ogs_details._kernels import _matmul_ogs_kernel
    capped_kernels = [kern for cache in _matmul_ogs_kernel.device_caches.values()
                      for kern in (cache[0] if isinstance(cache, tuple) else cache).values()
                      if getattr(kern.metadata, "maxnreg", None)]
    assert capped_kernels and all(kern.n_regs <= kern.metadata.maxnreg for kern in capped_kernels)


@pytest.mark.parametrize("swap_xw,block_k", [(False, 32), (True, 128)])
def test_quads_layout_runs_any_config_swapped(device, swap_xw, block_k):
    """HopperMXValueLayout weights are read only by the swapped loop in 64-value K steps: a config
    without swap_xw or with block_k 32 still gives the right result (run swapped, block_k 64)."""
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=block_k, group_m=1, num_warps=4, num_stages=1,
                       swap_xw=swap_xw)
    out, ref, (x, w, w64, bias, expts, gi, si, rd, gammas, pc, kwargs) = run_routed(
        device, True, False, True, True, "mxfp4", "hopper", kdim=192, n=64, config=cfg)
    assert not out.isnan().any()
    assert rel_err(out, ref) <= 1e-2
    indep = independent_routed(x, w64, bias, expts, gi, si, rd, True, False, True, gammas)
    assert rel_err(out, indep) <= 1e-2


def test_weight_description_is_kept_while_the_wrapper_is_unchanged(device):
    """matmul_ogs keeps a wrapped weight's addressing on the wrapper between calls, and describes it
    again when its data tensor or its shape is replaced (the result follows the new data; a wrong
    shape is refused by name)."""
    if not layouts_available():
        pytest.skip("tensor API not available yet")
    torch.manual_seed(3)
    x = torch.randn(8, 128, device=device).bfloat16()
    codes, scales = mx_weight(1, 128, 64, 4, device)
    other, _ = mx_weight(1, 128, 64, 5, device)
    w, s = as_weight(codes, scales, "hopper")
    w_other, _ = as_weight(other, scales, "hopper")
    pc = PrecisionConfig(weight_scale=s)

    def expected(c):
        return x.double() @ dequant_reference(c, scales)[0]

    assert rel_err(matmul_ogs(x, w, None, precision_config=pc), expected(codes)) <= 1e-2
    kept = w._triton_kernels_operand
    assert rel_err(matmul_ogs(x, w, None, precision_config=pc), expected(codes)) <= 1e-2
    assert w._triton_kernels_operand is kept  # the second call reused the description
    w.storage.data = w_other.storage.data
    assert rel_err(matmul_ogs(x, w, None, precision_config=pc), expected(other)) <= 1e-2
    w.shape = [1, 256, 64]  # K no longer matches the storage
    with pytest.raises(ValueError, match="`w` storage holds"):
        matmul_ogs(torch.randn(8, 256, device=device).bfloat16(), w, None, precision_config=pc)


def test_small_scale_check_is_cached_and_sees_in_place_writes():
    from triton_kernels.matmul_ogs import _scales_at_most_128

    scales = torch.full((4, 8), 127, dtype=torch.uint8)
    assert _scales_at_most_128(scales) and _scales_at_most_128(scales[1:])  # a view is checked on its own
    scales[2, 3] = 129  # an in-place write bumps the version counter: recomputed, not served from the cache
    assert not _scales_at_most_128(scales)
    scales[2, 3] = 128
    assert _scales_at_most_128(scales)
    assert _scales_at_most_128(torch.empty((0, 8), dtype=torch.uint8))


def test_scale_255_gives_nan_and_zero_block(device):
    x = torch.ones(2, 64, device=device).bfloat16()
    codes = torch.full((32, 4), 0x22, dtype=torch.uint8, device=device)  # both nibbles 1.0
    scales = torch.full((2, 4), 127, dtype=torch.uint8, device=device)
    scales[1, 0] = 255
    out = matmul_ogs(x, codes, None, precision_config=PrecisionConfig(weight_scale=scales))
    assert out[:, 0].isnan().all()
    torch.testing.assert_close(out[:, 1:].float(), torch.full((2, 3), 64.0, device=device))


def test_cpu_fallback_warns_and_matches(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TRITON_KERNELS_VARIANT", "cpu")
    target_info.reset()
    try:
        out, ref, _ = (None, None, None)
        x = torch.randn(6, 64).bfloat16()
        codes, scales = mx_weight(1, 64, 32, 1, "cpu")
        pc = PrecisionConfig(weight_scale=scales[0])
        with pytest.warns(RuntimeWarning, match="matmul_ogs: using the torch reference"):
            out = matmul_ogs(x, codes[0], None, precision_config=pc)
        assert rel_err(out, matmul_ogs_torch(x, codes[0], None, precision_config=pc)) == 0
    finally:
        target_info.reset()


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs():
    x = torch.randn(4, 64).bfloat16()
    codes, scales = mx_weight(2, 64, 32, 0, "cpu")
    pc = PrecisionConfig(weight_scale=scales)
    rd, gi, si, _ = routing_for(2, 2, 2, 0)
    with pytest.raises(ValueError, match="K to be a multiple of 32"):
        matmul_ogs(torch.randn(4, 48).bfloat16(), torch.zeros(2, 24, 32, dtype=torch.uint8), None, rd,
                   precision_config=PrecisionConfig(weight_scale=torch.zeros(2, 1, 32, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="`w` has 2 experts but `routing_data` has n_expts_tot=3"):
        bad = types.SimpleNamespace(**{**vars(rd), "n_expts_tot": 3})
        matmul_ogs(x, codes, None, bad, precision_config=pc)
    with pytest.raises(TypeError, match="`x` must be bfloat16 or float16"):
        matmul_ogs(x.float(), codes, None, rd, precision_config=pc)
    with pytest.raises(TypeError, match="`w` must be bfloat16/float16"):
        matmul_ogs(x, torch.randn(2, 64, 32), None, rd)
    with pytest.raises(ValueError, match="`x` is on cpu but `w` is on meta"):
        matmul_ogs(x, torch.empty(2, 32, 32, dtype=torch.uint8, device="meta"), None, rd, precision_config=pc)
    with pytest.raises(ValueError, match="`bias` is on meta"):
        matmul_ogs(x, codes, torch.empty(2, 32, device="meta"), rd, precision_config=pc)
    with pytest.raises(ValueError, match="weight_scale` is required for FP4"):
        matmul_ogs(x, codes, None, rd)
    with pytest.raises(ValueError, match="`w` must have K=64"):
        matmul_ogs(x, torch.randn(2, 32, 32).bfloat16(), None, rd)
    with pytest.raises(ValueError, match="weight_scale` must be"):
        matmul_ogs(x, codes, None, rd, precision_config=PrecisionConfig(weight_scale=scales[:, :1]))
    with pytest.raises(ValueError, match="`bias` must be \\[2, 32\\]"):
        matmul_ogs(x, codes, torch.zeros(3, 32), rd, precision_config=pc)
    with pytest.raises(ValueError, match="`gammas` must be 1-D with 4 entries"):
        matmul_ogs(x, codes, None, rd, precision_config=pc, gammas=torch.ones(5))
    with pytest.raises(ValueError, match="`y` must have shape"):
        matmul_ogs(x, codes, None, rd, precision_config=pc, y=torch.empty(4, 33))
    with pytest.raises(ValueError, match="reduction_n"):
        matmul_ogs(x, codes, None, rd, precision_config=pc,
                   fused_activation=FusedActivation(FnSpecs("s", swiglu_fn, ("a", "l")), (1.0, 1.0), 3))
    with pytest.raises(TypeError, match="`fused_activation.specs.fn` must be a @triton.jit"):
        matmul_ogs(x, codes, None, rd, precision_config=pc,
                   fused_activation=FusedActivation(FnSpecs("s", lambda t: t), (), 1))
    with pytest.raises(ValueError, match="`epilogue` with a function"):
        matmul_ogs(x, codes, None, rd, precision_config=pc, epilogue=Epilogue(FnSpecs("e", swiglu_fn)))
    with pytest.raises(ValueError, match="`gather_indx` / `scatter_indx` need `routing_data`"):
        matmul_ogs(x, codes[0], None, gather_indx=gi, precision_config=PrecisionConfig(weight_scale=scales[0]))


def test_missing_tile_map_entry_is_named(device):
    """The Triton path reads the tile map of its block_m; a routing_data without it gets a clear error."""
    x = torch.randn(4, 64, device=device).bfloat16()
    codes, scales = mx_weight(2, 64, 32, 0, device)
    rd, _, _, _ = routing_for(2, 2, 2, 0, device=device)
    rd = types.SimpleNamespace(**{**vars(rd), "expt_data": types.SimpleNamespace(**{**vars(rd.expt_data), "block_pid_map": {}})})
    with pytest.raises(ValueError, match="`routing_data.expt_data.block_pid_map` has no entry"):
        matmul_ogs(x, codes, None, rd, precision_config=PrecisionConfig(weight_scale=scales))


# ---------------------------------------------------------------------------------------------
# GPU, gpt-oss sizes


def moe_float64(x, logits, k, w1, b1, w2, b2):
    """The MoE layer computed per token from the logits: sum_j g_j * (swiglu(x W1[e_j] + b1) W2[e_j] + b2)."""
    vals, idx = torch.topk(logits.double(), k, dim=1)
    gates = torch.softmax(vals, dim=1)
    xd = x.double()
    out = torch.zeros(x.shape[0], w2.shape[-1], dtype=torch.float64, device=x.device)
    for j in range(k):
        for e in idx[:, j].unique().tolist():
            rows = (idx[:, j] == e).nonzero().squeeze(1)
            h = swiglu64(xd[rows] @ w1[e] + b1[e].double())
            h = h.to(torch.bfloat16).double()  # the kernel keeps the intermediate in bf16
            out[rows] += gates[rows, j, None] * (h @ w2[e] + b2[e].double())
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("n_expts", [32, 128])
@pytest.mark.parametrize("n_tokens", [1, 7, 64, 512, 4096, 16384])
@pytest.mark.parametrize("layout_name", ["raw", "default", "hopper"])
def test_gpu_moe_layer_gpt_oss(n_expts, n_tokens, layout_name):
    """The gpt-oss MoE layer at full size against matmul_ogs_torch and float64. Layouts: raw uint8
    (word decoders), 'default' (nibble-quads values, strided scales: transformers' setting) and
    'hopper' (nibble-quads values and K-grouped scales: the benchmarks' default)."""
    from triton_kernels.routing import routing
    device, hidden, inter, k = "cuda", 2880, 2880, 4
    torch.manual_seed(n_tokens + n_expts)
    x = torch.randn(n_tokens, hidden, device=device).bfloat16()
    logits = torch.randn(n_tokens, n_expts, device=device)
    logits[:, 3] = -1e4  # an expert without tokens
    c1, s1 = mx_weight(n_expts, hidden, 2 * inter, 1, device)
    c2, s2 = mx_weight(n_expts, inter, hidden, 2, device)
    b1 = torch.randn(n_expts, 2 * inter, device=device)
    b2 = torch.randn(n_expts, hidden, device=device)
    w1, ws1 = as_weight(c1, s1, layout_name)
    w2, ws2 = as_weight(c2, s2, layout_name)
    rd, gi, si = routing(logits, k)
    pc1, pc2 = PrecisionConfig(weight_scale=ws1), PrecisionConfig(weight_scale=ws2)
    h = torch.full((n_tokens * k, inter), float("nan"), device=device, dtype=torch.bfloat16)
    matmul_ogs(x, w1, b1, rd, gather_indx=gi, precision_config=pc1, fused_activation=SWIGLU, y=h)
    assert not h.isnan().any()
    h_ref = matmul_ogs_torch(x, w1, b1, rd, gather_indx=gi, precision_config=pc1, fused_activation=SWIGLU)
    assert rel_err(h, h_ref) <= 1e-2
    out = torch.full((n_tokens, hidden), float("nan"), device=device, dtype=torch.bfloat16)
    matmul_ogs(h, w2, b2, rd, scatter_indx=si, precision_config=pc2, gammas=rd.gate_scal, y=out)
    assert not out.isnan().any()
    out_ref = matmul_ogs_torch(h, w2, b2, rd, scatter_indx=si, precision_config=pc2, gammas=rd.gate_scal)
    assert rel_err(out, out_ref) <= 1e-2
    if n_tokens <= 4096:
        used = torch.topk(logits, k, dim=1).indices.unique()
        w1d = torch.zeros(n_expts, hidden, 2 * inter, dtype=torch.float64, device=device)
        w2d = torch.zeros(n_expts, inter, hidden, dtype=torch.float64, device=device)
        for e in used.tolist():
            w1d[e] = dequant_reference(c1[e:e + 1], s1[e:e + 1])[0].to(device)
            w2d[e] = dequant_reference(c2[e:e + 1], s2[e:e + 1])[0].to(device)
        assert rel_err(out, moe_float64(x, logits, k, w1d, b1, w2d, b2)) <= 1e-2


_TAIL_256 = MatmulConfig(256, 128, 64, 8, 8, 3, True, tail=MatmulConfig(128, 128, 64, 8, 4, 4, True))
_TAIL_128 = MatmulConfig(128, 128, 64, 8, 4, 4, True, tail=MatmulConfig(64, 128, 128, 8, 4, 3, True))
_TAIL_32 = MatmulConfig(32, 64, 128, 4, 4, 3, True, tail=MatmulConfig(16, 64, 256, 1, 4, 3, True))


@pytest.mark.gpu
@pytest.mark.parametrize("n_expts,n_tokens,cfg", [(128, 4096, _TAIL_256), (32, 4096, _TAIL_256), (32, 512, _TAIL_128),
                                                  (128, 512, _TAIL_32), (32, 7, _TAIL_32)])
@pytest.mark.parametrize("layout_name", ["raw", "default"])
def test_gpu_tiles_sized_per_expert_gpt_oss(n_expts, n_tokens, cfg, layout_name):
    """MatmulConfig.tail (two launches, tiles sized per expert) compiled for the GPU at gpt-oss sizes:
    gate_up (gathered, SwiGLU) and down (scattered, gammas) against the reference."""
    from triton_kernels.routing import routing
    device, hidden, inter, k = "cuda", 2880, 2880, 4
    torch.manual_seed(n_tokens + n_expts)
    x = torch.randn(n_tokens, hidden, device=device).bfloat16()
    rd, gi, si = routing(torch.randn(n_tokens, n_expts, device=device), k)
    c1, s1 = mx_weight(n_expts, hidden, 2 * inter, 1, device)
    c2, s2 = mx_weight(n_expts, inter, hidden, 2, device)
    w1, ws1 = as_weight(c1, s1, layout_name)
    w2, ws2 = as_weight(c2, s2, layout_name)
    b1 = torch.randn(n_expts, 2 * inter, device=device)
    b2 = torch.randn(n_expts, hidden, device=device)
    gate_up = dict(gather_indx=gi, precision_config=PrecisionConfig(weight_scale=ws1), fused_activation=SWIGLU)
    down = dict(scatter_indx=si, precision_config=PrecisionConfig(weight_scale=ws2), gammas=rd.gate_scal)
    h = torch.full((n_tokens * k, inter), float("nan"), device=device, dtype=torch.bfloat16)
    matmul_ogs(x, w1, b1, rd, y=h, config=cfg, **gate_up)
    assert not h.isnan().any(), "gate_up output not fully written"
    assert rel_err(h, matmul_ogs_torch(x, w1, b1, rd, **gate_up)) <= 1e-2
    out = matmul_ogs(h, w2, b2, rd, config=cfg, **down)
    assert rel_err(out, matmul_ogs_torch(h, w2, b2, rd, **down)) <= 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [MatmulConfig(128, 256, 64, 8, 8, s, True, d) for s in (2, 3, 4) for d in ("ptx", "words")]
                         + [MatmulConfig(128, 256, 64, 8, 4, 3, True, "ptx"), MatmulConfig(64, 256, 64, 8, 8, 3, True)])
def test_gpu_wide_tiles_over_two_warp_groups(cfg):
    """Configs of 256 columns (8 warps: two warp groups along N). With the MX scales loaded one step
    ahead, 128 x 256 x 64 / 8 warps at 3-4 stages gave NaN in the second warp group's columns
    (E = 128, T = 4096, down, raw layout: the word decoders); there the scales load in the step.
    The quads decoders ('default', 'hopper') load them ahead at these widths too."""
    from triton_kernels.routing import routing
    n_expts, n_tokens, k, hidden = 128, 4096, 4, 2880
    torch.manual_seed(0)
    rd, gi, si = routing(torch.randn(n_tokens, n_expts, device="cuda"), k)
    codes, scales = mx_weight(n_expts, hidden, hidden, 2, "cuda")
    for layout_name in ("raw", "default", "hopper"):
        w, s = as_weight(codes, scales, layout_name)
        h = torch.randn(n_tokens * k, hidden, device="cuda").bfloat16()
        kwargs = dict(scatter_indx=si, precision_config=PrecisionConfig(weight_scale=s), gammas=rd.gate_scal)
        bias = torch.randn(n_expts, hidden, device="cuda")
        out = matmul_ogs(h, w, bias, rd, config=cfg, **kwargs)
        assert not out.isnan().any(), layout_name
        assert rel_err(out, matmul_ogs_torch(h, w, bias, rd, **kwargs)) <= 1e-2, layout_name


@pytest.mark.gpu
@pytest.mark.parametrize("gather,scatter,epi,act,wdtype", COMBOS)
def test_gpu_combinations_medium(gather, scatter, epi, act, wdtype):
    out, ref, _ = run_routed("cuda", gather, scatter, epi, act, wdtype, "raw", n_tokens=300, n_expts=32, k=4,
                             kdim=2880, n=5760 if act else 2880)
    assert not out.isnan().any()
    assert rel_err(out, ref) <= 1e-2


def test_flex_scales_are_refused_and_defaults_accepted():
    from triton_kernels.matmul_ogs import FlexCtx, InFlexData
    x = torch.randn(4, 64).bfloat16()
    codes, scales = mx_weight(1, 64, 32, 0, "cpu")
    pc = PrecisionConfig(weight_scale=scales[0], flex_ctx=FlexCtx(rhs_data=InFlexData()))  # what transformers passes
    assert matmul_ogs(x, codes[0], None, precision_config=pc).shape == (4, 32)
    bad = PrecisionConfig(weight_scale=scales[0], flex_ctx=FlexCtx(lhs_data=InFlexData(scale=torch.ones(1))))
    with pytest.raises(ValueError, match="flex_ctx.lhs_data.scale` is not supported"):
        matmul_ogs(x, codes[0], None, precision_config=bad)


def test_fp4_packed_along_n_is_refused():
    if not layouts_available():
        pytest.skip("tensor API not available yet")
    from triton_kernels.tensor import FP4, wrap_torch_tensor
    x = torch.randn(4, 64).bfloat16()
    packed_along_n = wrap_torch_tensor(torch.zeros(64, 16, dtype=torch.uint8), dtype=FP4)  # logical [64, 32]
    with pytest.raises(ValueError, match="packed two per byte along K"):
        matmul_ogs(x, packed_along_n, None, precision_config=PrecisionConfig(weight_scale=torch.zeros(2, 32, dtype=torch.uint8)))


@pytest.mark.parametrize("split_k", [1, 2])
def test_int64_index_path(device, monkeypatch, split_k):
    """The 64-bit offset variant (taken when a tile's offsets can pass 2^31) computes the same result,
    with and without a K split (whose fp32 partials are addressed 64-bit too)."""
    import triton_kernels.matmul_ogs as mo
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=32, group_m=1, num_warps=4, num_stages=1, split_k=split_k)
    out32, ref, (x, w, w64, bias, expts, gi, si, rd, gammas, pc, kwargs) = run_routed(
        device, True, True, True, True, "mxfp4", "raw", config=cfg)
    monkeypatch.setattr(mo, "_INT32_LIMIT", 16)
    x_span = mo._span(x.shape, x.stride())
    assert mo._needs_int64(mo._check(x, w, bias, rd, gi, si, pc, None, gammas, None, SWIGLU, None), x_span, x_span, x_span)
    out64 = matmul_ogs(x, w, bias, rd, config=cfg, **kwargs)
    assert torch.equal(out64, out32)


@pytest.mark.gpu
def test_gpu_rows_times_k_past_int32():
    m, k, n = (2 ** 31) // 5760 + 1024, 5760, 64
    x = torch.empty(m, k, device="cuda", dtype=torch.bfloat16)
    x[:-1024].zero_()
    x[-1024:] = torch.randn(1024, k, device="cuda").bfloat16()
    w = (torch.randn(k, n, device="cuda") / 64).bfloat16()
    out = matmul_ogs(x, w, None)
    assert out[: m - 1024].abs().max().item() == 0
    assert rel_err(out[-1024:], x[-1024:].double() @ w.double()) <= 1e-2


def test_transformers_gpt_oss_experts_forward_runs_unchanged(device, monkeypatch):
    """transformers' own Mxfp4GptOssExperts: swizzle_mxfp4 (wrap + convert_layout + StridedLayout scales,
    shapes overwritten) then forward (routing, gathered gate_up with fused swiglu_fn, scattered down with
    gammas) equals a float64 MoE computed from the checkpoint blocks with transformers' own dequantizer."""
    tm = pytest.importorskip("transformers.integrations.mxfp4")
    if not layouts_available():
        pytest.skip("tensor API not available yet")
    import triton_kernels as hub
    monkeypatch.setattr(tm, "triton_kernels_hub", hub, raising=False)
    n_expts, hidden, inter, k, n_tokens = 4, 64, 64, 2, 7
    cfg = types.SimpleNamespace(num_local_experts=n_expts, intermediate_size=inter, hidden_size=hidden, swiglu_limit=LIMIT)
    with torch.device("meta"):
        mod = tm.Mxfp4GptOssExperts(cfg)
    g = torch.Generator().manual_seed(0)
    gu_blocks = torch.randint(0, 256, (n_expts, 2 * inter, hidden // 32, 16), generator=g, dtype=torch.uint8)
    gu_scales = torch.randint(118, 125, (n_expts, 2 * inter, hidden // 32), generator=g, dtype=torch.uint8)
    dn_blocks = torch.randint(0, 256, (n_expts, hidden, inter // 32, 16), generator=g, dtype=torch.uint8)
    dn_scales = torch.randint(118, 125, (n_expts, hidden, inter // 32), generator=g, dtype=torch.uint8)
    dev = torch.device(device)
    tm.swizzle_mxfp4_convertops(gu_blocks.to(dev), gu_scales.to(dev), mod, "gate_up_proj", dev, hub)
    tm.swizzle_mxfp4_convertops(dn_blocks.to(dev), dn_scales.to(dev), mod, "down_proj", dev, hub)
    b1, b2 = torch.randn(n_expts, 2 * inter), torch.randn(n_expts, hidden)
    mod.gate_up_proj_bias = torch.nn.Parameter(b1.to(dev), requires_grad=False)
    mod.down_proj_bias = torch.nn.Parameter(b2.to(dev), requires_grad=False)
    x = torch.randn(n_tokens, hidden).bfloat16()
    logits = torch.randn(n_tokens, n_expts)
    rd, gi, si = hub.routing.routing(logits.to(dev), k)
    out = mod.forward(x.to(dev), rd, gi, si)
    assert out.shape == (n_tokens, hidden) and out.dtype == torch.bfloat16 and not out.isnan().any()
    w1 = tm.convert_moe_packed_tensors(gu_blocks, gu_scales, dtype=torch.float32).double()  # [E, H, 2I]
    w2 = tm.convert_moe_packed_tensors(dn_blocks, dn_scales, dtype=torch.float32).double()  # [E, I, H]
    assert rel_err(out.cpu(), moe_float64(x, logits, k, w1, b1, w2, b2)) <= 1e-2


def test_decoder_choice_falls_back_where_operands_or_backend_do_not_allow():
    """MatmulConfig.decode is a preference: word decoders need K-contiguous, 4-byte aligned FP4 bytes,
    inline PTX needs CUDA and bf16 activations; a bad name is refused."""
    from triton_kernels import matmul_ogs as mm

    x = torch.randn(4, 64).bfloat16()
    k_contig = torch.zeros(32, 8, dtype=torch.uint8).t().contiguous().t()  # [K/2, N], K-contiguous
    n_contig = torch.zeros(32, 8, dtype=torch.uint8)
    scales = torch.full((2, 8), 127, dtype=torch.uint8)
    cfg = dataclasses.replace(SWAPPED, decode="ptx")

    def chosen(w, config):
        p = mm._check(x, w, None, None, None, None, PrecisionConfig(weight_scale=scales), None, None, None, None, None)
        return mm._decoder(config, p)

    interpreted = target_info.get_target().interpreter
    assert chosen(k_contig, cfg) == (1 if interpreted else 2)
    assert chosen(k_contig, dataclasses.replace(cfg, decode="words")) == 1
    assert chosen(n_contig, cfg) == 0
    assert chosen(k_contig, dataclasses.replace(cfg, swap_xw=False)) == 0
    with pytest.raises(ValueError, match="decode"):
        MatmulConfig(16, 32, 64, 1, 4, 1, swap_xw=True, decode="nibbles")


@pytest.mark.parametrize("swap_xw,decode,split_k", [(False, "bytes", 2), (True, "words", 3), (True, "bytes", 4)])
@pytest.mark.parametrize("gather,scatter,epi,act", [(True, False, True, True), (False, True, True, False)])
def test_split_k_matches_reference(device, swap_xw, decode, split_k, gather, scatter, epi, act):
    """K split over programs (fp32 partials summed by a second launch, then the epilogue): K = 160 is
    five 32-wide steps, so splits get unequal shares (3 splits: 2 + 2 + 1 steps; 4 splits: the last
    gets none past K) and the epilogue (bias, gammas, SwiGLU, scatter) runs once on the full sum."""
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=32, group_m=1, num_warps=4, num_stages=1, swap_xw=swap_xw,
                       decode=decode, split_k=split_k)
    out, ref, (x, w, w64, bias, expts, gi, si, rd, gammas, pc, kwargs) = run_routed(
        device, gather, scatter, epi, act, "mxfp4", "default", kdim=160, n=64, config=cfg)
    assert not out.isnan().any(), "output not fully written"
    assert rel_err(out, ref) <= 1e-2
    unsplit = dataclasses.replace(cfg, split_k=1)
    out1, _, _ = run_routed(device, gather, scatter, epi, act, "mxfp4", "default", kdim=160, n=64, config=unsplit)
    # the same sums in another order; with a scatter the split partials stay fp32 up to the top-k sum,
    # where the unsplit path rounds each slot's row to bf16 first
    assert rel_err(out, out1) <= 5e-3
    indep = independent_routed(x, w64, bias, expts, gi, si, rd, gather, scatter, act, gammas)
    assert rel_err(out, indep) <= 1e-2


class _GridRecorder:
    """Stands in for a @triton.jit kernel: records the grid of every `kernel[grid](...)` launch."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


def _all_zero(counter_blocks):
    """Whether the column-tile counters the calls took are all back at zero (the pool also holds
    routing's barrier counters, which are never reset)."""
    return all(not c.any() for c in counter_blocks if c is not None)


def _switch_ab(monkeypatch, switch: str, kernel: str, counters_fn: str, call) -> dict:
    """`call()` -> (out, ref) with matmul_ogs's bool `switch` on and off: each output fully written and
    right, the counters the calls took (`counters_fn`'s results) back at zero, the two outputs equal
    bit for bit. Returns {setting: (grids of the `kernel` launches, counters taken)}."""
    from triton_kernels import matmul_ogs as M
    seen, outs = {}, {}
    for on in (True, False):
        monkeypatch.setattr(M, switch, on)
        recorder = _GridRecorder(getattr(M, kernel))
        monkeypatch.setattr(M, kernel, recorder)
        counters = spy_on(monkeypatch, M, counters_fn)
        out, ref = call()
        assert not out.isnan().any(), "output not fully written"
        assert rel_err(out, ref) <= 1e-2
        assert _all_zero(counters)
        seen[on], outs[on] = (list(recorder.grids), list(counters)), out  # copies: the next round wraps these spies
    assert torch.equal(outs[True], outs[False])
    return seen


@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("n_tokens", [1, 9, 100, 130])
def test_topk_sum_in_launch_equals_the_reduce_kernel(device, monkeypatch, split_k, n_tokens):
    """With few token slots (n_tokens x k x linear splits <= TOPK_SUM_MAX_ROWS) the last program of
    each column tile adds the top-k rows in the matmul's own launch: bit for bit the separate reduce
    kernel's result, no reduce launch, every counter back at zero (unused tile-map entries arrive
    too: expert 1 gets no tokens). 100 tokens are two steps of 64; 100 x 2 with 2 splits and 130 x 2
    are past the bound: the reduce kernel."""
    from triton_kernels import matmul_ogs as M
    cfg = MatmulConfig(16, 32, 32, 1, 4, 1, swap_xw=True, decode="words", split_k=split_k)
    seen = _switch_ab(monkeypatch, "TOPK_SUM_IN_LAUNCH", "_topk_reduce_kernel", "_sum_counters", lambda: run_routed(
        device, False, True, True, False, "mxfp4", "default", n_tokens=n_tokens, n_expts=6, kdim=160, n=96,
        config=cfg)[:2])
    for in_launch, (reduce_grids, counters) in seen.items():
        fused = in_launch and n_tokens * 2 * split_k <= M.TOPK_SUM_MAX_ROWS
        assert (counters[-1] is not None) == fused
        assert len(reduce_grids) == (0 if fused else 1)


def test_topk_sum_in_launch_without_counters_takes_the_reduce_kernel(device, monkeypatch):
    """No counters to be had (pool used up by captures, too many column tiles): the separate reduce."""
    from triton_kernels import matmul_ogs as M
    monkeypatch.setattr(M, "tile_counters", lambda *a: None)
    reduce = _GridRecorder(M._topk_reduce_kernel)
    monkeypatch.setattr(M, "_topk_reduce_kernel", reduce)
    out, ref, _ = run_routed(device, False, True, True, False, "mxfp4", "default", n_tokens=3, kdim=64, n=64)
    assert not out.isnan().any() and rel_err(out, ref) <= 1e-2
    assert len(reduce.grids) == 1


@pytest.mark.gpu
def test_gpu_topk_sum_in_launch_in_a_cuda_graph(monkeypatch):
    """The down projection of gpt-oss at decode (2 linear splits, its top-k sum in its launch),
    captured in a CUDA graph beside an eager call on the same stream: replays with new inputs equal
    eager calls bit for bit, and the eager calls' counters and the graph's are left at zero."""
    from triton_kernels.routing import routing
    device, inter, hidden, k, n_expts = "cuda", 2880, 2880, 4, 32
    c2, s2 = mx_weight(n_expts, inter, hidden, 2, device)
    w2, ws2 = as_weight(c2, s2, "hopper")
    b2 = torch.randn(n_expts, hidden, device=device)
    pc2 = PrecisionConfig(weight_scale=ws2)
    h = torch.randn(k, inter, device=device).bfloat16()
    logits = torch.randn(1, n_expts, device=device)

    from triton_kernels import matmul_ogs as M
    counters = spy_on(monkeypatch, M, "_sum_counters")

    def down(y=None):
        rd, _, si = routing(logits, k)
        return matmul_ogs(h, w2, b2, rd, scatter_indx=si, precision_config=pc2, gammas=rd.gate_scal, y=y)

    out = down()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        down(out)
    for seed in range(3):
        torch.manual_seed(seed)
        h.copy_(torch.randn_like(h, dtype=torch.float32))
        logits.copy_(torch.randn_like(logits))
        graph.replay()
        eager = down()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)
        rd, _, si = routing(logits, k)
        ref = matmul_ogs_torch(h, w2, b2, rd, scatter_indx=si, precision_config=pc2, gammas=rd.gate_scal)
        assert rel_err(out, ref) <= 1e-2
    assert len(counters) == 5 and all(c is not None for c in counters)  # 4 eager calls, 1 captured
    assert counters[1].data_ptr() != counters[0].data_ptr()  # the captured call's counters are its own
    assert _all_zero(counters)


def test_split_k_for_fills_the_gpu_and_keeps_steps():
    from triton_kernels.matmul_ogs_details.configs import split_k_for

    assert split_k_for(180, 2880, 128, 132) == 2  # down at T = 1: 180 tiles -> 360 programs
    assert split_k_for(360, 2880, 128, 132) == 1  # gate_up at T = 1
    assert split_k_for(20, 2880, 128, 132) == 4  # stops where a split would get fewer than 4 steps
    assert split_k_for(6000, 2880, 128, 132) == 1  # enough tiles already
    assert split_k_for(4, 256, 128, 132) == 1  # two steps: nothing to split
    assert split_k_for(4, 2880, 128, 0) == 1  # the interpreter
    with pytest.raises(ValueError, match="split_k"):
        MatmulConfig(16, 32, 64, 1, 4, 1, split_k=0)


@pytest.mark.parametrize("swap_xw", [False, True])
def test_block_m_256_reads_the_128_tile_map(device, swap_xw):
    """Tiles taller than routing's largest map (128 rows) take every other 128-row entry: experts with
    0, 1 to 128, 129 to 256 and more than 256 rows all come out complete and right."""
    from triton_kernels.routing import routing_torch

    torch.manual_seed(3)
    n_tokens, n_expts, k = 300, 5, 2
    logits = torch.randn(n_tokens, n_expts)
    logits[:, 0] += 8.0  # every token: more than 256 rows
    logits[:, 1] = -1e4  # none
    logits[:40, 2] += 20.0  # 40 rows
    logits[40:200, 3] += 4.0  # 160 rows
    logits[200:, 4] += 4.0  # 100 rows
    rd, gi, si = routing_torch(logits.to(device), k)
    hist = sorted(rd.expt_hist.tolist())
    assert hist[0] == 0 and any(0 < h <= 128 for h in hist) and any(128 < h <= 256 for h in hist) and hist[-1] > 256
    codes, scales = mx_weight(n_expts, 64, 32, 4, device)
    w, s = as_weight(codes, scales, "default")
    x = torch.randn(n_tokens, 64, device=device).bfloat16()
    cfg = MatmulConfig(block_m=256, block_n=32, block_k=64, group_m=4, num_warps=4, num_stages=1, swap_xw=swap_xw,
                       decode="words" if swap_xw else "bytes")
    kwargs = dict(gather_indx=gi, precision_config=PrecisionConfig(weight_scale=s))
    y = torch.full((n_tokens * k, 32), float("nan"), dtype=torch.bfloat16, device=device)
    out = matmul_ogs(x, w, None, rd, y=y, config=cfg, **kwargs)
    assert not out.isnan().any(), "output not fully written"
    assert rel_err(out, matmul_ogs_torch(x, w, None, rd, **kwargs)) <= 1e-2


def _rows_per_expert_logits(n_tokens, counts, seed):
    """Top-2 router logits over len(counts) + 1 experts that give expert e exactly counts[e] rows:
    tokens are dealt to experts by a fixed plan and the last expert takes every token's second slot."""
    assert sum(counts) == n_tokens
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_tokens, len(counts) + 1, generator=g)
    logits[:, -1] += 20.0
    owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    logits[torch.arange(n_tokens), owner[torch.randperm(n_tokens, generator=g)]] += 40.0
    return logits


class _LaunchRecorder:
    """Stands in for _matmul_ogs_kernel: each launch writes a fresh NaN copy of the output, so the
    rows every launch wrote are known, then those rows are copied into the real output."""

    def __init__(self, kernel):
        self.kernel, self.written = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            y = args[0]
            fresh = torch.full_like(y, float("nan"))
            self.kernel[grid](fresh, *args[1:], **kwargs)
            rows = ~fresh.isnan().all(dim=-1)
            y[rows] = fresh[rows]
            self.written.append((kwargs["BLOCK_M"], rows.nonzero()[:, -1].tolist()))  # rows of [M, N] or [B, M, N]
        return launch


@pytest.mark.parametrize("chunk,tail,counts", [
    (32, 16, [0, 1, 16, 17, 32, 33, 48, 49, 81]),
    (256, 128, [0, 40, 128, 129, 256, 257, 390]),
])
@pytest.mark.parametrize("swap_xw", [False, True])
def test_tiles_sized_per_expert_cover_every_row_once(device, monkeypatch, chunk, tail, counts, swap_xw):
    """MatmulConfig.tail: chunks of `chunk` rows per expert, the short last ones (<= tail rows) by a
    second launch of tail-row tiles. Experts with 0 rows, 1 row, exactly tail, tail + 1, exactly a
    chunk, a chunk + 1 and several chunks: the two launches write disjoint rows that together are
    every routed row, each launch only the chunks it owns, and the result equals the reference."""
    from triton_kernels import matmul_ogs as M
    from triton_kernels.routing import routing_torch

    n_tokens = sum(counts)
    rd, gi, si = routing_torch(_rows_per_expert_logits(n_tokens, counts, 5).to(device), 2)
    assert rd.expt_hist.tolist()[:-1] == counts
    codes, scales = mx_weight(len(counts) + 1, 64, 32, 6, device)
    w, s = as_weight(codes, scales, "default" if swap_xw else "raw")
    x = torch.randn(n_tokens, 64, device=device).bfloat16()
    tail_cfg = MatmulConfig(tail, 32, 64, 2, 4, 1, swap_xw=swap_xw)
    cfg = MatmulConfig(chunk, 32, 64, 2, 4, 1, swap_xw=swap_xw, tail=tail_cfg)
    kwargs = dict(gather_indx=gi, precision_config=PrecisionConfig(weight_scale=s), fused_activation=SWIGLU)
    recorder = _LaunchRecorder(M._matmul_ogs_kernel)
    monkeypatch.setattr(M, "_matmul_ogs_kernel", recorder)
    y = torch.full((n_tokens * 2, 16), float("nan"), dtype=torch.bfloat16, device=device)
    out = matmul_ogs(x, w, None, rd, y=y, config=cfg, **kwargs)
    assert [bm for bm, _ in recorder.written] == [chunk, tail]
    offs = [0] + torch.cumsum(rd.expt_hist.cpu(), 0).tolist()
    want_big, want_tail = set(), set()
    for e in range(len(counts) + 1):
        for start in range(offs[e], offs[e + 1], chunk):
            rows = range(start, min(start + chunk, offs[e + 1]))
            (want_tail if len(rows) <= tail else want_big).update(rows)
    assert want_tail and want_big
    assert set(recorder.written[0][1]) == want_big
    assert set(recorder.written[1][1]) == want_tail
    assert not out.isnan().any(), "output not fully written"
    assert rel_err(out, matmul_ogs_torch(x, w, None, rd, **kwargs)) <= 1e-2


def test_tiles_sized_per_expert_scatter_and_plain(device):
    """A tail config on the scattered down projection matches the reference; on an unrouted call the
    tail does not apply (one launch of the main config)."""
    from triton_kernels.routing import routing_torch

    counts = [3, 20, 40, 17]
    rd, gi, si = routing_torch(_rows_per_expert_logits(sum(counts), counts, 7).to(device), 2)
    codes, scales = mx_weight(len(counts) + 1, 64, 32, 8, device)
    h = torch.randn(sum(counts) * 2, 64, device=device).bfloat16()
    cfg = MatmulConfig(32, 32, 64, 2, 4, 1, tail=MatmulConfig(16, 32, 64, 2, 4, 1))
    kwargs = dict(scatter_indx=si, precision_config=PrecisionConfig(weight_scale=scales),
                  gammas=rd.gate_scal, betas=torch.rand(sum(counts) * 2, device=device))
    bias = torch.randn(len(counts) + 1, 32, device=device)
    out = matmul_ogs(h, codes, bias, rd, config=cfg, **kwargs)
    assert rel_err(out, matmul_ogs_torch(h, codes, bias, rd, **kwargs)) <= 1e-2
    x = torch.randn(40, 64, device=device).bfloat16()
    pc = PrecisionConfig(weight_scale=scales[0])
    plain = matmul_ogs(x, codes[0], None, precision_config=pc, config=cfg)
    assert rel_err(plain, matmul_ogs_torch(x, codes[0], None, precision_config=pc)) <= 1e-2


@pytest.mark.parametrize("split_k", [1, 2])
def test_scales_prefetched_or_loaded_in_step_agree(device, split_k):
    """The swapped main loop loads byte scales one K step ahead, except for the word decoders' configs
    of 256 columns on 8 warps (`prefetch_scales`), which load them in the step: both, with a K tail
    (224 = 3 x 64 + 32) and K splits, equal the reference."""
    from triton_kernels.matmul_ogs_details.configs import prefetch_scales

    ahead = MatmulConfig(16, 64, 64, 1, 4, 1, swap_xw=True, decode="words", split_k=split_k)
    in_step = MatmulConfig(16, 256, 64, 1, 8, 1, swap_xw=True, decode="words", split_k=split_k)
    assert prefetch_scales(ahead) and not prefetch_scales(in_step)
    assert prefetch_scales(in_step, nibble_quads=True)  # the quads decoders prefetch at any width
    for cfg in (ahead, in_step):
        out, ref, _ = run_routed(device, True, True, True, False, "mxfp4", "raw", kdim=224, n=64, config=cfg)
        assert not out.isnan().any()
        assert rel_err(out, ref) <= 1e-2


@pytest.mark.parametrize("kdim,block_k,split_k", [(96, 256, 1), (224, 128, 1), (736, 256, 2), (640, 128, 3)])
def test_scale_words_equal_scale_bytes(device, monkeypatch, kdim, block_k, split_k):
    """HopperMXScaleLayout's scales are read as whole 32-bit words (4 scale blocks) where BLOCK_K is a
    multiple of 128 (`scale_words`); strided scales are read byte by byte. The same weight with its
    scales in either layout gives bit-identical outputs, also where a K tail or a K split starts
    inside the storage's last word (96, 224, 736: K/32 not a multiple of 4), with the padding bytes
    and columns of the word storage set to 255 (an E8M0 NaN) to show that they are never used."""
    if not layouts_available():
        pytest.skip("tensor / tensor_details.layout not available yet")
    import triton_kernels.matmul_ogs as mo
    from triton_kernels.tensor import convert_layout, wrap_torch_tensor
    from triton_kernels.tensor_details import layout

    forms = spy_on(monkeypatch, mo, "scale_loads")  # (S_WORDS, PREFETCH_S) of each launch
    codes, scales = mx_weight(3, kdim, 48, 5, device)
    w, _ = as_weight(codes, scales, "hopper")
    s_words = convert_layout(wrap_torch_tensor(scales), layout.HopperMXScaleLayout, mx_axis=1, num_warps=8)
    words = s_words.storage.data  # [E, K groups, N padded, 4]
    blocks = torch.arange(words.shape[1] * 4, device=device).view(1, -1, 1, 4)
    words.masked_fill_(blocks >= kdim // 32, 255)
    words[:, :, 48:] = 255
    s_bytes = convert_layout(wrap_torch_tensor(scales), layout.StridedLayout)
    rd, gi, _, _ = routing_for(11, 3, 2, 0, device=device)
    x = torch.randn(11, kdim, device=device).bfloat16()
    cfg = MatmulConfig(16, 32, block_k, 1, 4, 1, swap_xw=True, split_k=split_k)
    outs = []
    for s in (s_words, s_bytes):
        pc = PrecisionConfig(weight_scale=s)
        outs.append(matmul_ogs(x, w, None, rd, gather_indx=gi, precision_config=pc, config=cfg))
    assert [words_taken for words_taken, _prefetch in forms] == [True, False]
    assert not outs[0].isnan().any()
    assert torch.equal(outs[0], outs[1])
    ref = matmul_ogs_torch(x, w, None, rd, gather_indx=gi, precision_config=PrecisionConfig(weight_scale=s_bytes))
    assert rel_err(outs[0], ref) <= 1e-2


def test_tail_config_is_checked():
    tail = MatmulConfig(64, 64, 64, 1, 4, 1)
    with pytest.raises(ValueError, match="`tail.block_m` must be smaller than `block_m`=64"):
        MatmulConfig(64, 64, 64, 1, 4, 1, tail=tail)
    with pytest.raises(ValueError, match="`tail` must not have a tail"):
        MatmulConfig(256, 64, 64, 1, 4, 1, tail=MatmulConfig(128, 64, 64, 1, 4, 1, tail=tail))
    with pytest.raises(ValueError, match="takes no K split"):
        MatmulConfig(128, 64, 64, 1, 4, 1, split_k=2, tail=tail)
    with pytest.raises(ValueError, match="takes no K split"):
        MatmulConfig(128, 64, 64, 1, 4, 1, tail=dataclasses.replace(tail, split_k=2))
    with pytest.raises(TypeError, match="`tail` must be a MatmulConfig or None, got dict"):
        MatmulConfig(128, 64, 64, 1, 4, 1, tail={"block_m": 64})
    assert MatmulConfig(128, 64, 64, 1, 4, 1, tail=tail).tail is tail


@pytest.mark.parametrize("variant", ["blackwell", "hopper", "ampere", "turing"])
@pytest.mark.parametrize("nibble_quads", [False, True])
def test_choose_config_gives_launchable_configs(variant, nibble_quads):
    """Every config that choose_config returns across the rows-per-expert range, for both gpt-oss
    projections and a dense weight, is one the launch takes as it is: N tiles hold whole SwiGLU
    pairs, row tiles read a map routing tabulates (taller ones the 128-row map), a tail's tiles are
    tabulated and take no K split, and nibble-quads weights get the swapped loop in whole 64-value K
    blocks (on Hopper; elsewhere `_fit_config` adapts the config)."""
    from triton_kernels.matmul_ogs_details.configs import ROUTED_BLOCK_M, choose_config
    rows = [0.03, 0.25, 1, 2, 8, 12, 14, 14.5, 15, 16, 17, 24, 32, 33, 64, 65, 128, 160, 161, 192, 256, 257,
            512, 1024, 1025, 2048, 65536]
    seen = set()
    for r in rows:
        for n, reduction_n, mx in ((5760, 2, True), (2880, 1, True), (2880, 1, False)):
            quads = nibble_quads and mx
            cfg = choose_config(r, n, 2880, mx, reduction_n, variant=variant, interpreter=False, nibble_quads=quads)
            seen.add(cfg)
            for part in (cfg,) if cfg.tail is None else (cfg, cfg.tail):
                assert part.block_n % (2 * reduction_n) == 0, (r, n, part)
                assert part.block_m in ROUTED_BLOCK_M or part.block_m % ROUTED_BLOCK_M[-1] == 0, (r, n, part)
                if quads and variant == "hopper":
                    assert part.swap_xw and part.block_k % 64 == 0, (r, n, part)
            if cfg.tail is not None:
                assert cfg.tail.block_m in ROUTED_BLOCK_M and cfg.split_k == cfg.tail.split_k == 1, (r, n, cfg)
    assert len(seen) > 3  # the range spans several regimes


_SASS_SCRIPT = r"""
import json, sys
sys.path.insert(0, "benchmarks")
from sass_matmul import compile_matmul, loop_body
out = {}
for gate_up in (True, False):
    for decode in ("bytes", "words", "ptx", "quads_ptx", "quads_ptx_small"):
        body = loop_body(compile_matmul(16, 64, 128, 4, 3, decode=decode, gate_up=gate_up).asm["sass"])
        out[f"{gate_up}-{decode}"] = [len(body) / 64, sum("HGMMA" in line for line in body)]
print(json.dumps(out))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the kernels themselves")
def test_hopper_build_of_every_decoder_compiles_and_quads_ptx_is_leanest():
    """The interpreter cannot run inline PTX: build matmul_ogs for sm_90a (ptxas included, through
    benchmarks/sass_matmul.py, outside the interpreter) with each decoder, gathered + SwiGLU and
    plain, and check that wgmma is used and the K loop's instructions per weight value order as
    designed: quads PTX with one multiply per pair < quads PTX < ptx < words < bytes (the quads
    decoders read the nibble-quads order of HopperMXValueLayout)."""
    import json
    import os
    import subprocess
    import sys

    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:  # pragma: no cover - triton without the NVIDIA backend
        pytest.skip("triton has no NVIDIA backend here")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _SASS_SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for gate_up in ("True", "False"):
        per_value = {d: res[f"{gate_up}-{d}"][0] for d in ("bytes", "words", "ptx", "quads_ptx", "quads_ptx_small")}
        assert all(res[f"{gate_up}-{d}"][1] > 0 for d in per_value), res
        assert (per_value["quads_ptx_small"] < per_value["quads_ptx"] < per_value["ptx"] < per_value["words"]
                < per_value["bytes"]), per_value


def test_host_spans_are_those_of_the_views():
    """_first_span / _span (the int32 check's spans, computed without making views) equal the
    spans of t[0] and t from the views' own shapes and strides, empty and transposed ones included;
    _batched gives the shape and strides of t.unsqueeze(0) (what the kernel receives for 2-D x and out)."""
    import triton_kernels.matmul_ogs as mo

    def view_span(t):
        return 1 + sum((d - 1) * abs(s) for d, s in zip(t.shape, t.stride()) if d > 0)

    base = torch.zeros(6, 10, 12)
    for t in (base, base.transpose(1, 2), base[:, ::3], base[:0], base[:, :0], base[2:].unsqueeze(0),
              base.transpose(0, 2)[1:], torch.zeros(0, 5), base[1], base[1].t(), base[1, ::2], base[:, 3], torch.zeros(3, 0)):
        assert mo._span(t.shape, t.stride()) == view_span(t)
        assert mo._first_span(t.shape, t.stride()) == (view_span(t[0]) if t.shape[0] else 0)
        if t.dim() == 2:
            assert mo._batched(t.shape, t.stride()) == (tuple(t.unsqueeze(0).shape), t.unsqueeze(0).stride())


def test_host_integer_helpers_match_triton():
    import triton_kernels.matmul_ogs as mo
    for a in range(0, 300, 7):
        for b in (1, 16, 64, 128):
            assert mo._cdiv(a, b) == triton.cdiv(a, b)
    for n in range(1, 200):
        assert mo._next_pow2(n) == triton.next_power_of_2(n)
    assert min(64, max(16, mo._next_pow2(0))) == min(64, max(16, triton.next_power_of_2(0)))  # SUM_BLOCK_T at n = 0


def test_weight_span_follows_a_replaced_description(monkeypatch):
    """The per-expert span of a wrapped weight is kept with its description: replacing the data by a
    view whose expert spans past the int32 limit (lowered here) switches the launch to 64-bit
    offsets (the kept span of the old data is not served), and back."""
    if not layouts_available():
        pytest.skip("tensor API not available yet")
    import triton_kernels.matmul_ogs as mo
    monkeypatch.setattr(mo, "_INT32_LIMIT", 10000)
    codes, scales = mx_weight(1, 128, 64, 4, "cpu")
    w, s = as_weight(codes, scales, "strided")
    x = torch.randn(8, 128).bfloat16()
    pc = PrecisionConfig(weight_scale=s)

    def needs_int64():
        p = mo._check(x, w, None, None, None, None, pc, None, None, None, None, None)
        x_span = mo._span(x.shape, x.stride())
        return mo._needs_int64(p, x_span, x_span, x_span)

    assert not needs_int64()
    assert not needs_int64()  # from the kept description
    data = w.storage.data  # [1, K/2 = 64, N = 64], K contiguous: span 64 + 64 * 64
    assert data.stride()[1:] == (1, 64)
    w.storage.data = torch.zeros(1, 64, 256, dtype=torch.uint8).transpose(1, 2)[:, :64]  # span 64 + 64 * 256
    assert needs_int64()
    w.storage.data = data
    assert not needs_int64()


@pytest.mark.parametrize("split_k", [2, 3])
@pytest.mark.parametrize("gather,scatter,act", [(True, False, True), (False, False, False)])
def test_split_finish_in_launch_equals_the_finishing_launch(device, monkeypatch, split_k, gather, scatter, act):
    """K splits of a non-linear (or unscattered) epilogue: the last split of each output tile to
    arrive adds the partials and runs the epilogue in the same launch, bit for bit what the
    FINISH_SPLIT launch gives; one launch instead of two, the tile counters back at zero."""
    cfg = MatmulConfig(16, 32, 32, 1, 4, 1, swap_xw=True, decode="words", split_k=split_k)
    seen = _switch_ab(monkeypatch, "SPLIT_FINISH_IN_LAUNCH", "_matmul_ogs_kernel", "_finish_counters", lambda: run_routed(
        device, gather, scatter, True, act, "mxfp4", "default", n_tokens=9, n_expts=6, kdim=160, n=64, config=cfg)[:2])
    for in_launch, (matmul_grids, counters) in seen.items():
        assert (counters[-1] is not None) == in_launch
        assert len(matmul_grids) == (1 if in_launch else 2)


def test_split_finish_in_launch_batched(device, monkeypatch):
    """Batched (unrouted) matmul with a forced K split: the tile counters cover every batch's tiles."""
    from triton_kernels import matmul_ogs as M
    counters = spy_on(monkeypatch, M, "_finish_counters")
    torch.manual_seed(5)
    x = torch.randn(3, 20, 96, device=device).bfloat16()
    w = (torch.randn(3, 96, 48, device=device) / 10).bfloat16()
    cfg = MatmulConfig(16, 32, 32, 1, 4, 1, swap_xw=True, split_k=2)
    fa = FusedActivation(FnSpecs("scaled_relu", scaled_relu, ("slope",), torch_fn=lambda t, s: torch.where(t > 0, t, t * s)),
                         (0.25,), 1)
    out = matmul_ogs(x, w, None, fused_activation=fa, config=cfg)
    ref = matmul_ogs_torch(x, w, None, fused_activation=fa)
    assert counters[-1] is not None and counters[-1].numel() == 3 * 2 * 2
    assert rel_err(out, ref) <= 1e-2 and _all_zero(counters)
