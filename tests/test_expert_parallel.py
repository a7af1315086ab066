"""expert_parallel: EP routing (Triton and torch twin) against transformers' routing_torch_dist, weight
sharding, and the EP layer across 2 processes (gloo on CPU, interpreted Triton) against the
single-process full layer; bad input. GPU: gpt-oss sizes on one GPU (all ranks' partials summed)
and, with 2 GPUs, NCCL."""

import dataclasses
import datetime
import os
import time

import pytest
import torch
import torch.multiprocessing as mp

import triton_kernels
from triton_kernels import expert_parallel as ep
from triton_kernels.matmul_ogs import FnSpecs, FusedActivation, PrecisionConfig, matmul_ogs
from triton_kernels.numerics_details.mxfp import downcast_to_mxfp
from triton_kernels.routing import routing
from triton_kernels.swiglu import swiglu_fn
from triton_kernels.tensor import FP4, Tensor, convert_layout, wrap_torch_tensor
from triton_kernels.tensor_details import layout as L

ALPHA, LIMIT = 1.702, 7.0
SPAWN_TIMEOUT_S = 150


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------- inputs


def mx_weight(n_expts, k, n, seed, device, layout_name):
    """MXFP4 weight [E, K, N] quantized from random bf16 with downcast_to_mxfp along K, in a layout:
    'default' (the probe's choice), 'hopper' / 'blackwell' (swizzled values and scales), 'raw' (uint8 tensors)."""
    g = torch.Generator(device=device).manual_seed(seed)  # same seed, same device kind: same weights on every rank
    w = torch.randn(n_expts, k, n, generator=g, device=device, dtype=torch.bfloat16) / k ** 0.5
    codes, scales = downcast_to_mxfp(w, torch.uint8, axis=1)
    if layout_name == "raw":
        return codes, scales
    wt, st = wrap_torch_tensor(codes, dtype=FP4), wrap_torch_tensor(scales)
    if layout_name == "default":
        vcls, vopts = L.make_default_matmul_mxfp4_w_layout(mx_axis=1)
        scls, sopts = L.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=8)
    elif layout_name == "hopper":
        vcls, vopts = L.HopperMXValueLayout, {"mx_axis": 1}
        scls, sopts = L.HopperMXScaleLayout, {"mx_axis": 1, "num_warps": 8}
    elif layout_name == "blackwell":
        vcls, vopts = L.HopperMXValueLayout, {"mx_axis": 1}
        scls, sopts = L.BlackwellMXScaleLayout, {"mx_axis": 1}
    else:
        raise AssertionError(layout_name)
    return convert_layout(wt, vcls, **vopts), convert_layout(st, scls, **sopts)


def make_layer(n_expts, hidden, inter, device, layout_name="default", seed=0):
    w1, s1 = mx_weight(n_expts, hidden, 2 * inter, seed + 1, device, layout_name)
    w2, s2 = mx_weight(n_expts, inter, hidden, seed + 2, device, layout_name)
    g = torch.Generator(device=device).manual_seed(seed + 3)
    b1 = torch.randn(n_expts, 2 * inter, generator=g, device=device)
    b2 = torch.randn(n_expts, hidden, generator=g, device=device)
    return dict(w1=w1, w2=w2, b1=b1, b2=b2, pc1=PrecisionConfig(weight_scale=s1), pc2=PrecisionConfig(weight_scale=s2))


def make_inputs(n_tokens, n_expts, hidden, device, seed=0):
    g = torch.Generator(device=device).manual_seed(100 + seed)
    x = torch.randn(n_tokens, hidden, generator=g, device=device).bfloat16()
    logits = torch.randn(n_tokens, n_expts, generator=g, device=device)
    return x, logits


def shard_layer(layer, rank, world_size):
    return dict(w1=ep.shard_experts(layer["w1"], rank, world_size), w2=ep.shard_experts(layer["w2"], rank, world_size),
                b1=ep.shard_experts(layer["b1"], rank, world_size), b2=ep.shard_experts(layer["b2"], rank, world_size),
                pc1=ep.shard_precision_config(layer["pc1"], rank, world_size),
                pc2=ep.shard_precision_config(layer["pc2"], rank, world_size))


SWIGLU = FusedActivation(FnSpecs("swiglu", swiglu_fn, ("alpha", "limit")), (ALPHA, LIMIT), 2)


def full_layer(x, logits, k, layer, n_rows=None, out_dtype=None):
    """The single-process layer on all experts: routing + gathered gate_up (SwiGLU) + scattered down.
    out_dtype=float32 keeps the down projection's slot rows and their top-k sum in float32."""
    rd, gi, si = routing(logits, k, n_rows=n_rows)
    h = matmul_ogs(x, layer["w1"], layer["b1"], rd, gather_indx=gi, precision_config=layer["pc1"],
                   fused_activation=SWIGLU)
    pc2 = dataclasses.replace(layer["pc2"], out_dtype=out_dtype)
    return matmul_ogs(h, layer["w2"], layer["b2"], rd, scatter_indx=si, precision_config=pc2, gammas=rd.gate_scal)


def assert_routing_equal(a, b):
    (rda, gia, sia), (rdb, gib, sib) = a, b
    assert torch.equal(gia.src_indx.cpu(), gib.src_indx.cpu()) and torch.equal(gia.dst_indx.cpu(), gib.dst_indx.cpu())
    assert torch.equal(sia.src_indx.cpu(), sib.src_indx.cpu()) and torch.equal(sia.dst_indx.cpu(), sib.dst_indx.cpu())
    assert rda.n_expts_tot == rdb.n_expts_tot and rda.n_expts_act == rdb.n_expts_act
    assert torch.equal(rda.expt_hist.int().cpu(), rdb.expt_hist.int().cpu())
    ea, eb = rda.expt_data, rdb.expt_data
    assert torch.equal(ea.token_offs_raw.cpu(), eb.token_offs_raw.cpu())
    for bm in (16, 32, 64, 128):
        assert torch.equal(ea.token_offs_pad[bm].cpu(), eb.token_offs_pad[bm].cpu())
        assert torch.equal(ea.block_pid_map[bm].cpu(), eb.block_pid_map[bm].cpu())
    n_local = int(rda.expt_hist.sum())
    wa, wb = rda.gate_scal[:n_local].float().cpu(), rdb.gate_scal[:n_local].float().cpu()
    # float64 softmax rounded to float32 (Triton and torch may differ by an ulp); transformers takes it in
    # the logits' dtype
    torch.testing.assert_close(wa, wb, rtol=1e-6, atol=1e-7)


def transformers_dist_routing(monkeypatch, logits, k, rank, world_size):
    """transformers' own routing_torch_dist for LOCAL_RANK=rank of world_size, on our package."""
    tm = pytest.importorskip("transformers.integrations.mxfp4")
    monkeypatch.setattr(tm, "triton_kernels_hub", triton_kernels, raising=False)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **kw: world_size)
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    if logits.device.type == "cpu":
        real_histc = torch.histc
        # CPU histc has no integer kernel (CUDA has): count in float, keep the integer dtype
        monkeypatch.setattr(torch, "histc", lambda t, *a, **kw: real_histc(t.double(), *a, **kw).to(t.dtype))
    return tm.routing_torch_dist(logits, k)


# ----------------------------------------------------------------------------- single process


@pytest.mark.parametrize("T,E,k,W", [(9, 8, 2, 2), (13, 8, 3, 4), (1, 4, 2, 2), (20, 6, 2, 3)])
def test_routing_ep_matches_torch_twin_and_transformers(T, E, k, W, device, monkeypatch):
    x, logits = make_inputs(T, E, 32, device, seed=T)
    if T > 4:
        logits[:, 1] = -1e4  # an expert without tokens
    union_src = []
    for rank in range(W):
        ours = ep.routing_ep(logits, k, rank, W)
        twin = ep.routing_ep_torch(logits, k, rank, W)
        assert_routing_equal(ours, twin)
        assert ours[0].n_expts_tot == E // W
        dist = transformers_dist_routing(monkeypatch, logits, k, rank, W)
        assert_routing_equal(ours, dist)
        n_local = int(ours[0].expt_hist.sum())
        assert (ours[1].src_indx[n_local:] == -1).all() and (ours[0].gate_scal[n_local:] == 0).all()
        union_src.append(ours[1].src_indx[:n_local].cpu())
    # every slot is computed on exactly one rank
    assert torch.equal(torch.cat(union_src).sort().values, torch.arange(T * k, dtype=torch.int32))
    # world size 1 is the plain routing
    assert_routing_equal(ep.routing_ep(logits, k, 0, 1), routing(logits, k))


def test_routing_ep_options_match_twin(device):
    T, E, k, W = 11, 8, 2, 2
    _, logits = make_inputs(T, E, 32, device, seed=5)
    expt_indx = torch.randint(0, E, (T, k), generator=torch.Generator().manual_seed(0)).to(device)
    for kw in (dict(n_rows=6), dict(sm_first=True), dict(expt_indx=expt_indx)):
        for rank in range(W):
            assert_routing_equal(ep.routing_ep(logits, k, rank, W, **kw), ep.routing_ep_torch(logits, k, rank, W, **kw))


@pytest.mark.parametrize("layout_name", ["default", "hopper", "blackwell", "raw"])
def test_shard_experts_keeps_each_rank_slice(layout_name):
    E, K, N, W = 4, 64, 32, 2
    w, s = mx_weight(E, K, N, 7, "cpu", layout_name)
    for rank in range(W):
        ws, ss = ep.shard_experts(w, rank, W), ep.shard_experts(s, rank, W)
        lo, hi = rank * E // W, (rank + 1) * E // W
        if layout_name == "raw":
            assert torch.equal(ws, w[lo:hi]) and ws.stride() == w[lo:hi].stride() and ws.data_ptr() != w.data_ptr()
            continue
        assert isinstance(ws, Tensor) and ws.dtype == FP4 and tuple(ws.shape) == (hi - lo, K, N)
        assert type(ws.storage.layout) is type(w.storage.layout)
        assert type(ss.storage.layout) is type(s.storage.layout)
        full_w = w.storage.layout.unswizzle_data(w.storage.data)
        assert torch.equal(ws.storage.layout.unswizzle_data(ws.storage.data), full_w[lo:hi])
        full_s = s.storage.layout.unswizzle_data(s.storage.data)
        assert torch.equal(ss.storage.layout.unswizzle_data(ss.storage.data), full_s[lo:hi])
    assert ep.shard_experts(None, 0, 2) is None
    pc = ep.shard_precision_config(PrecisionConfig(weight_scale=s, out_dtype=torch.float32), 1, W)
    assert pc.out_dtype == torch.float32


def test_partials_of_all_ranks_sum_to_full_layer(device):
    """Without a process group: each rank's partial (reduce=False) computed in turn, summed, is the layer."""
    E, k, hidden, inter, T, W = 8, 2, 64, 64, 9, 4
    layer = make_layer(E, hidden, inter, device, "default")
    x, logits = make_inputs(T, E, hidden, device, seed=1)
    ref = full_layer(x, logits, k, layer)
    ref32 = full_layer(x, logits, k, layer, out_dtype=torch.float32)
    total = torch.zeros(T, hidden, dtype=torch.float32, device=device)
    for rank in range(W):
        part = shard_layer(layer, rank, W)
        rd, gi, si = ep.routing_ep(logits, k, rank, W)
        total += ep.experts_forward_ep(x, rd, gi, si, **part, reduce=False, reduce_dtype=torch.float32)
    # float32 partials: only the order of the float32 sums differs from the single layer
    assert rel_err(total, ref32) <= 1e-6
    assert rel_err(total.bfloat16(), ref) <= 1e-2
    # world size 1: the layer itself
    assert torch.equal(ep.moe_forward_ep(x, logits, n_expts_act=k, **layer), ref)


def test_bad_input_is_named():
    logits = torch.randn(5, 6)
    with pytest.raises(ValueError, match=r"number of experts \(6\) must be a positive multiple of `world_size`=4"):
        ep.routing_ep(logits, 2, 0, 4)
    with pytest.raises(ValueError, match=r"`rank` must be in \[0, world_size=2\), got 2"):
        ep.routing_ep(logits, 2, 2, 2)
    with pytest.raises(ValueError, match=r"`rank` must be in \[0, world_size=2\), got -1"):
        ep.routing_ep_torch(logits, 2, -1, 2)
    with pytest.raises(ValueError, match="`world_size` must be >= 1"):
        ep.routing_ep(logits, 2, 0, 0)
    with pytest.raises(TypeError, match="`rank` must be an int"):
        ep.routing_ep(logits, 2, 0.5, 2)
    with pytest.raises(TypeError, match="`logits` must be a torch.Tensor"):
        ep.routing_ep([[1.0]], 1, 0, 1)
    with pytest.raises(ValueError, match="`logits` must be 2-D"):
        ep.routing_ep(torch.randn(6), 1, 0, 1)
    with pytest.raises(ValueError, match=r"number of experts \(5\) must be a positive multiple"):
        ep.shard_experts(torch.zeros(5, 3), 0, 2)
    with pytest.raises(TypeError, match="`t` must be a torch.Tensor, a triton_kernels Tensor or None"):
        ep.shard_experts([1, 2], 0, 2)
    with pytest.raises(TypeError, match="`pc` must be a matmul_ogs.PrecisionConfig"):
        ep.shard_precision_config("pc", 0, 2)
    with pytest.raises(ValueError, match="`group` was given but torch.distributed is not initialised"):
        ep.ep_rank_and_world_size(group=object())
    layer = make_layer(4, 64, 32, "cpu", "raw")
    x, logits = make_inputs(3, 4, 64, "cpu")
    half = shard_layer(layer, 0, 2)
    with pytest.raises(ValueError, match=r"`w1` must hold this rank's 4 experts"):
        ep.moe_forward_ep(x, logits, n_expts_act=2, **half)  # world size 1 needs all experts
    with pytest.raises(ValueError, match="`logits` must have one row per token of `x` \\(3\\)"):
        ep.moe_forward_ep(x, logits[:2], n_expts_act=2, **layer)
    with pytest.raises(TypeError, match="`reduce_dtype` must be None, torch.float32"):
        ep.moe_forward_ep(x, logits, n_expts_act=2, reduce_dtype=torch.float16, **layer)


# ----------------------------------------------------------------------------- 2 processes (gloo)


def _ep_worker(rank, world_size, init_file, backend, parent_interpret):
    os.environ["LOCAL_RANK"] = str(rank)  # transformers' routing_torch_dist reads it
    torch.set_num_threads(1)
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    else:
        assert os.environ.get("TRITON_INTERPRET") == parent_interpret, "children must run the kernels as the parent does"
    dist = torch.distributed
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        _ep_checks(rank, world_size, device)
    finally:
        dist.destroy_process_group()


def _ep_checks(rank, world_size, device):
    dist = torch.distributed
    assert ep.ep_rank_and_world_size() == (rank, world_size)
    big = device != "cpu"
    E, k, hidden, inter = (32, 4, 2880, 2880) if big else (8, 2, 64, 64)
    for layout_name, T in (("hopper", 1), ("default", 7)) if not big else (("default", 64),):
        layer = make_layer(E, hidden, inter, device, layout_name)  # same seed: the same full weights everywhere
        x, logits = make_inputs(T, E, hidden, device, seed=T)
        sums = torch.stack([t.sum(dtype=torch.float64) for t in (x, logits, layer["b1"], layer["w1"].storage.data,
                                                                 layer["pc2"].weight_scale.storage.data)])
        all_sums = [torch.empty_like(sums) for _ in range(world_size)]
        dist.all_gather(all_sums, sums)
        assert all(torch.equal(a, sums) for a in all_sums), "ranks must start from the same full layer and inputs"
        ref = full_layer(x, logits, k, layer)  # single-process layer, all experts, no collectives
        ref32 = full_layer(x, logits, k, layer, out_dtype=torch.float32)
        local = shard_layer(layer, rank, world_size)
        out = ep.moe_forward_ep(x, logits, n_expts_act=k, **local)
        assert out.dtype == torch.bfloat16 and out.shape == (T, hidden) and not out.isnan().any()
        err = rel_err(out, ref)
        assert err <= 1e-2, err
        out32 = ep.moe_forward_ep(x, logits, n_expts_act=k, reduce_dtype=torch.float32, **local)
        assert out32.dtype == torch.bfloat16 and rel_err(out32, ref32.bfloat16()) <= 1e-3
        part32 = ep.moe_forward_ep(x, logits, n_expts_act=k, reduce=False, reduce_dtype=torch.float32, **local)
        # every rank holds the same result
        outs = [torch.empty_like(out) for _ in range(world_size)]
        dist.all_gather(outs, out)
        assert all(torch.equal(o, out) for o in outs)
        # this rank's partial only covers its experts; the partials add up to the layer
        parts = [torch.empty_like(part32) for _ in range(world_size)]
        dist.all_gather(parts, part32)
        assert part32.dtype == torch.float32 and rel_err(sum(parts), ref32) <= 1e-6
        assert all(p.abs().sum() > 0 for p in parts)
        if not big:
            assert rel_err(ep.moe_forward_ep_torch(x, logits, n_expts_act=k, **local), ref) <= 1e-2
    if big:
        return
    # padding rows (n_rows) route nowhere on every rank
    out = ep.moe_forward_ep(x, logits, n_expts_act=k, n_rows=4, **local)
    assert rel_err(out, full_layer(x, logits, k, layer, n_rows=4)) <= 1e-2 and (out[4:] == 0).all()

    # transformers' routing_torch_dist (real world size from torch.distributed, LOCAL_RANK) feeds our layer unchanged
    import transformers.integrations.mxfp4 as tm
    tm.triton_kernels_hub = triton_kernels
    real_histc = torch.histc
    torch.histc = lambda t, *a, **kw: real_histc(t.double(), *a, **kw).to(t.dtype)  # CPU has no int histc
    try:
        dist_objs = tm.routing_torch_dist(logits, k)
    finally:
        torch.histc = real_histc
    assert isinstance(dist_objs[0], triton_kernels.routing.RoutingData)
    assert_routing_equal(ep.routing_ep(logits, k, rank, world_size), dist_objs)
    out_t = ep.experts_forward_ep(x, *dist_objs, **local)
    assert rel_err(out_t, ref) <= 1e-2
    # transformers' weights are the float32 softmax, ours the float64 one rounded: a few float32 ulps apart
    out_t32 = ep.experts_forward_ep(x, *dist_objs, **local, reduce_dtype=torch.float32, reduce=False)
    assert rel_err(out_t32, part32) <= 1e-5

    # bad input under a real group
    with pytest.raises(ValueError, match=r"number of experts \(5\) must be a positive multiple of `world_size`=2"):
        ep.moe_forward_ep(x, torch.randn(T, 5), n_expts_act=k, **local)
    with pytest.raises(ValueError, match=r"`w1` must hold this rank's 4 experts"):
        ep.moe_forward_ep(x, logits, n_expts_act=k, **layer)  # full weights given to a rank


def run_spawned(tmp_path, world_size, backend):
    init_file = tmp_path / "rendezvous"
    ctx = mp.spawn(_ep_worker, args=(world_size, str(init_file), backend, os.environ.get("TRITON_INTERPRET")),
                   nprocs=world_size, join=False)
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"expert-parallel workers did not finish within {SPAWN_TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)


def test_two_processes_gloo(tmp_path):
    """2 processes, gloo: EP layer (all-reduce of partials) == single-process layer; transformers'
    routing_torch_dist objects drive it unchanged; bad input under a group."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    run_spawned(tmp_path, 2, "gloo")


# ----------------------------------------------------------------------------- GPU


_GPU_LAYERS = {}


@pytest.mark.gpu
@pytest.mark.parametrize("E", [32, 128])
@pytest.mark.parametrize("T", [1, 64, 4096])
def test_gpu_gpt_oss_partials_sum_to_layer(E, T):
    """gpt-oss sizes on one GPU: the partials of 2 simulated ranks sum to the full layer; routing_ep == twin."""
    k, hidden, inter, W = 4, 2880, 2880, 2
    if E not in _GPU_LAYERS:
        _GPU_LAYERS.clear()
        _GPU_LAYERS[E] = make_layer(E, hidden, inter, "cuda", "default")
    layer = _GPU_LAYERS[E]
    x, logits = make_inputs(T, E, hidden, "cuda", seed=T)
    ref = full_layer(x, logits, k, layer)
    ref32 = full_layer(x, logits, k, layer, out_dtype=torch.float32)
    total = torch.zeros(T, hidden, dtype=torch.float32, device="cuda")
    total16 = torch.zeros(T, hidden, dtype=torch.bfloat16, device="cuda")
    for rank in range(W):
        assert_routing_equal(ep.routing_ep(logits, k, rank, W), ep.routing_ep_torch(logits, k, rank, W))
        part = shard_layer(layer, rank, W)
        rd, gi, si = ep.routing_ep(logits, k, rank, W)
        total += ep.experts_forward_ep(x, rd, gi, si, **part, reduce=False, reduce_dtype=torch.float32)
        total16 += ep.experts_forward_ep(x, rd, gi, si, **part, reduce=False)
    assert rel_err(total, ref32) <= 1e-5
    assert rel_err(total16, ref) <= 1e-2


@pytest.mark.gpu
def test_gpu_routing_ep_graph_capture():
    T, E, k, W = 64, 128, 4, 2
    _, logits = make_inputs(T, E, 64, "cuda")
    ep.routing_ep(logits, k, 1, W)  # compile
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        captured = ep.routing_ep(logits, k, 1, W)
    logits.copy_(torch.randn_like(logits))
    g.replay()
    torch.cuda.synchronize()
    assert_routing_equal(captured, ep.routing_ep_torch(logits, k, 1, W))


@pytest.mark.gpu
def test_two_gpus_nccl(tmp_path):
    if torch.cuda.device_count() < 2 or not torch.distributed.is_nccl_available():
        pytest.skip("needs 2 GPUs and NCCL")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    run_spawned(tmp_path, 2, "nccl")
