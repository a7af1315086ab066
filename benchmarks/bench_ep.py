"""Expert-parallel MoE layer on torch.distributed (NCCL) against the single-GPU layer: correctness, then timings.

    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node=2 benchmarks/bench_ep.py --out bench_ep.json [--graph]
    python benchmarks/bench_ep.py --single --out bench_ep_single.json       (one GPU, no torchrun: smoke test)

Workload: one gpt-oss MoE layer (hidden 2880, intermediate 2880, top-4, bf16 activations, MXFP4
weights made with downcast_to_mxfp on random bf16 in the probe's default layouts, fp32 biases)
for E in {32, 128} and T in {1, 64, 4096} (change with --experts / --tokens).

Rank 0 makes the full weights and inputs and broadcasts them; every rank keeps its E / W experts
(expert_parallel.shard_experts on the swizzled tensors).
1. Correctness: the EP layer (routing_ep + the two matmul_ogs on the local experts + all-reduce of
   the bf16 partials) against the single-GPU layer (routing + matmul_ogs on all experts) computed on
   rank 0 on the same inputs: relative Frobenius error <= 1e-2; also with float32 partials
   (reduce_dtype=float32) against the single-GPU layer with a float32 down projection, where only
   the order of the float32 sums differs (<= 1e-5). Every rank must hold the same output.
2. Timings: CUDA events around each call, median over --iters calls after --warmup calls, the same
   fixed counts on every rank (the all-reduce keeps ranks in lockstep), eager; with --graph also
   CUDA-graphed (one layer call per replay). Columns: single-GPU layer (rank 0, other ranks wait),
   EP layer incl. all-reduce (slowest rank's median), EP without the all-reduce (local compute),
   the all-reduce alone, and the EP layer with float32 partials.
`--single` runs without torchrun (world size 1): the single-GPU layer, and two simulated ranks in
one process (each rank's partial via routing_ep + experts_forward_ep(reduce=False), summed) checked
against it and timed. Rank 0 prints a markdown table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_common import commit  # noqa: E402

os.environ["NCCL_NVLS_ENABLE"] = "0"  # no NVLink SHARP / multicast on the lent machines
if "--cpu-dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from triton_kernels import expert_parallel as ep  # noqa: E402
from triton_kernels.matmul_ogs import FnSpecs, FusedActivation, PrecisionConfig, matmul_ogs  # noqa: E402
from triton_kernels.numerics_details.mxfp import downcast_to_mxfp  # noqa: E402
from triton_kernels.routing import routing  # noqa: E402
from triton_kernels.swiglu import swiglu_fn  # noqa: E402
from triton_kernels.tensor import FP4, convert_layout, wrap_torch_tensor  # noqa: E402
from triton_kernels.tensor_details import layout as L  # noqa: E402

HIDDEN, INTER, TOPK = 2880, 2880, 4
DEVICE = "cuda"  # --cpu-dry-run: "cpu" (gloo, interpreted Triton, tiny sizes; checks this script itself)
ALPHA, LIMIT = 1.702, 7.0
SWIGLU = FusedActivation(FnSpecs("swiglu", swiglu_fn, ("alpha", "limit")), (ALPHA, LIMIT), 2)
TOL_BF16, TOL_FP32 = 1e-2, 1e-5


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def log(rank, *args):
    if rank == 0:
        print(*args, flush=True)


# ----------------------------------------------------------------------------- inputs


def broadcast_(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.broadcast(t, src=0)
    return t


def mx_weight(n_expts, k, n, seed, rank, world):
    """MXFP4 [E, K, N] from random bf16 (rank 0), broadcast; returns (values, scales) in the default layouts."""
    codes_nk = torch.empty((n_expts, n, k // 2), dtype=torch.uint8, device=DEVICE)
    scales_nk = torch.empty((n_expts, n, k // 32), dtype=torch.uint8, device=DEVICE)
    if rank == 0:
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        for e in range(n_expts):  # one expert at a time: no full bf16 copy of all experts
            w = torch.randn((k, n), generator=g, device=DEVICE, dtype=torch.bfloat16) / k ** 0.5
            q, s = downcast_to_mxfp(w, torch.uint8, axis=0)  # [K/2, N], [K/32, N], stride 1 along K
            codes_nk[e].copy_(q.t())
            scales_nk[e].copy_(s.t())
    broadcast_(codes_nk, world)
    broadcast_(scales_nk, world)
    codes, scales = codes_nk.transpose(1, 2), scales_nk.transpose(1, 2)  # [E, K/2, N], [E, K/32, N]
    vcls, vopts = L.make_default_matmul_mxfp4_w_layout(mx_axis=1)
    scls, sopts = L.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=8)
    w = convert_layout(wrap_torch_tensor(codes, dtype=FP4), vcls, **vopts)
    s = convert_layout(wrap_torch_tensor(scales), scls, **sopts)
    return w, s


def make_layer(n_expts, rank, world, seed=0):
    w1, s1 = mx_weight(n_expts, HIDDEN, 2 * INTER, seed + 1, rank, world)
    w2, s2 = mx_weight(n_expts, INTER, HIDDEN, seed + 2, rank, world)
    g = torch.Generator(device=DEVICE).manual_seed(seed + 3)
    b1 = broadcast_(torch.randn((n_expts, 2 * INTER), generator=g, device=DEVICE), world)
    b2 = broadcast_(torch.randn((n_expts, HIDDEN), generator=g, device=DEVICE), world)
    return dict(w1=w1, w2=w2, b1=b1, b2=b2, pc1=PrecisionConfig(weight_scale=s1), pc2=PrecisionConfig(weight_scale=s2))


def shard_layer(layer, rank, world):
    return dict(w1=ep.shard_experts(layer["w1"], rank, world), w2=ep.shard_experts(layer["w2"], rank, world),
                b1=ep.shard_experts(layer["b1"], rank, world), b2=ep.shard_experts(layer["b2"], rank, world),
                pc1=ep.shard_precision_config(layer["pc1"], rank, world),
                pc2=ep.shard_precision_config(layer["pc2"], rank, world))


def make_inputs(n_tokens, n_expts, world, seed):
    g = torch.Generator(device=DEVICE).manual_seed(1000 + seed)
    x = broadcast_(torch.randn((n_tokens, HIDDEN), generator=g, device=DEVICE).bfloat16(), world)
    logits = broadcast_(torch.randn((n_tokens, n_expts), generator=g, device=DEVICE), world)
    return x, logits


def single_layer(x, logits, layer, out_dtype=None):
    """The single-GPU layer: routing + gathered gate_up (fused SwiGLU) + scattered down (gammas), all experts."""
    rd, gi, si = routing(logits, TOPK)
    h = matmul_ogs(x, layer["w1"], layer["b1"], rd, gather_indx=gi, precision_config=layer["pc1"],
                   fused_activation=SWIGLU)
    pc2 = dataclasses.replace(layer["pc2"], out_dtype=out_dtype)
    return matmul_ogs(h, layer["w2"], layer["b2"], rd, scatter_indx=si, precision_config=pc2, gammas=rd.gate_scal)


# ----------------------------------------------------------------------------- timing


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_eager(fn, warmup, iters):
    """Median of per-call CUDA-event times (µs); fixed counts so every rank makes the same collectives."""
    for _ in range(warmup):
        fn()
    sync()
    if DEVICE != "cuda":  # dry run: wall clock
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e6
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3


def time_graph(fn, warmup, iters):
    """Capture one call in a CUDA graph and time its replays (µs); None if capture fails."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return time_eager(graph.replay, warmup, iters)


def all_ok(flag: bool, world: int) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=DEVICE, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def slowest(us, world):
    if world == 1 or us is None:
        return us
    t = torch.tensor([us], device=DEVICE, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def barrier(world):
    if world > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- runs


def run_shape(n_expts, n_tokens, layer, local, rank, world, args):
    x, logits = make_inputs(n_tokens, n_expts, world, seed=n_tokens + n_expts)
    row = dict(E=n_expts, T=n_tokens, world_size=world)

    # 1. correctness
    out = ep.moe_forward_ep(x, logits, n_expts_act=TOPK, **local)
    out32 = ep.moe_forward_ep(x, logits, n_expts_act=TOPK, reduce_dtype=torch.float32, reduce=False, **local)
    if world > 1:
        dist.all_reduce(out32)
    sync()
    same = True
    if world > 1:
        outs = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(outs, out)
        same = all(torch.equal(o, out) for o in outs)
    if rank == 0:
        ref = single_layer(x, logits, layer)
        ref32 = single_layer(x, logits, layer, out_dtype=torch.float32)
        row["err_bf16"] = rel_err(out, ref)
        row["err_fp32"] = rel_err(out32, ref32)
        row["nan"] = bool(out.isnan().any())
        row["ranks_agree"] = same
        row["ok"] = (row["err_bf16"] <= TOL_BF16 and row["err_fp32"] <= TOL_FP32 and not row["nan"] and same)
    if world == 1:
        # two simulated ranks in one process: their partials add up to the layer
        tot, tot16 = torch.zeros_like(out32), torch.zeros_like(out)
        for r in range(2):
            part = shard_layer(layer, r, 2)
            rd, gi, si = ep.routing_ep(logits, TOPK, r, 2)
            tot += ep.experts_forward_ep(x, rd, gi, si, **part, reduce=False, reduce_dtype=torch.float32)
            tot16 += ep.experts_forward_ep(x, rd, gi, si, **part, reduce=False)
            del part
        row["err_sim2_fp32"] = rel_err(tot, ref32)
        row["err_sim2_bf16"] = rel_err(tot16, ref)
        row["ok"] = row["ok"] and row["err_sim2_fp32"] <= TOL_FP32 and row["err_sim2_bf16"] <= TOL_BF16

    # 2. timings
    w, n = args.warmup, args.iters
    barrier(world)
    if rank == 0:
        row["single_us"] = time_eager(lambda: single_layer(x, logits, layer), w, n)
    barrier(world)
    row["ep_us"] = slowest(time_eager(lambda: ep.moe_forward_ep(x, logits, n_expts_act=TOPK, **local), w, n), world)
    row["ep_local_us"] = slowest(time_eager(
        lambda: ep.moe_forward_ep(x, logits, n_expts_act=TOPK, reduce=False, **local), w, n), world)
    buf = torch.zeros(n_tokens, HIDDEN, device=DEVICE, dtype=torch.bfloat16)
    row["allreduce_us"] = slowest(time_eager(lambda: dist.all_reduce(buf), w, n), world) if world > 1 else 0.0
    row["ep_fp32_us"] = slowest(time_eager(
        lambda: ep.moe_forward_ep(x, logits, n_expts_act=TOPK, reduce_dtype=torch.float32, **local), w, n), world)
    if world == 1:
        part = shard_layer(layer, 0, 2)
        row["sim2_rank0_local_us"] = time_eager(
            lambda: ep.experts_forward_ep(x, *ep.routing_ep(logits, TOPK, 0, 2), **part, reduce=False), w, n)
        del part
    if args.graph:
        barrier(world)
        if rank == 0:
            try:
                row["single_graph_us"] = time_graph(lambda: single_layer(x, logits, layer), w, n)
            except Exception as exc:  # noqa: BLE001
                print(f"  graph capture of the single-GPU layer failed: {exc}", flush=True)
                row["single_graph_us"] = None
        barrier(world)
        graph = None
        try:
            for _ in range(3):
                ep.moe_forward_ep(x, logits, n_expts_act=TOPK, **local)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                ep.moe_forward_ep(x, logits, n_expts_act=TOPK, **local)
            torch.cuda.synchronize()
            ok = True
        except Exception as exc:  # noqa: BLE001
            print(f"  [rank {rank}] graph capture of the EP layer failed: {exc}", flush=True)
            ok = False
        row["ep_graph_us"] = slowest(time_eager(graph.replay, w, n), world) if all_ok(ok, world) else None
    return row


def fmt(v, spec="8.1f"):
    return format(v, spec) if isinstance(v, (int, float)) else f"{'-':>8s}"


def table(rows, world, graph):
    cols = ["E", "T", "single us", f"EP({world}) us", "EP local us", "all-reduce us", "EP fp32-red us", "speedup",
            "err bf16", "err fp32"]
    if graph:
        cols[4:4] = ["single graph us", "EP graph us"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [str(r["E"]), str(r["T"]), fmt(r.get("single_us")), fmt(r.get("ep_us"))]
        if graph:
            vals += [fmt(r.get("single_graph_us")), fmt(r.get("ep_graph_us"))]
        speed = r["single_us"] / r["ep_us"] if r.get("single_us") and r.get("ep_us") else None
        vals += [fmt(r.get("ep_local_us")), fmt(r.get("allreduce_us")), fmt(r.get("ep_fp32_us")),
                 fmt(speed, "5.2f"), f"{r.get('err_bf16', float('nan')):.2e}", f"{r.get('err_fp32', float('nan')):.2e}"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_ep.json")
    ap.add_argument("--single", action="store_true", help="one GPU, no torchrun (world size 1; smoke test)")
    ap.add_argument("--experts", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 64, 4096])
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--graph", action="store_true", help="also time CUDA-graphed layers (NCCL inside a graph)")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="check this script on a CPU: gloo, interpreted Triton, hidden = intermediate = 64, top-2")
    args = ap.parse_args()
    global DEVICE, HIDDEN, INTER, TOPK
    if args.cpu_dry_run:
        DEVICE, HIDDEN, INTER, TOPK = "cpu", 64, 64, 2
        args.graph = False

    if args.single:
        rank, world, local_rank = 0, 1, 0
    else:
        if "RANK" not in os.environ:
            sys.exit("bench_ep.py: launch with torchrun --nproc_per_node=<GPUs> (or pass --single)")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if DEVICE == "cuda":
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=300),
                                    device_id=torch.device("cuda", local_rank))
        else:
            torch.set_num_threads(1)
            dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
        rank, world = dist.get_rank(), dist.get_world_size()
    if DEVICE == "cuda":
        torch.cuda.set_device(local_rank)
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if world > 1 and DEVICE == "cuda" else None
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)"
    log(rank, f"# bench_ep: world size {world}, {device_name}, torch {torch.__version__}, NCCL {nccl}, "
              f"commit {commit()}, NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE')}")
    assert ep.ep_rank_and_world_size() == (rank, world)

    rows = []
    t0 = time.time()
    for n_expts in args.experts:
        layer = make_layer(n_expts, rank, world)
        local = shard_layer(layer, rank, world) if world > 1 else layer
        if rank != 0:
            del layer  # only rank 0 runs the single-GPU layer
            layer = None
        sync()
        for n_tokens in args.tokens:
            row = run_shape(n_expts, n_tokens, layer, local, rank, world, args)
            rows.append(row)
            if rank == 0:
                extra = f" sim2 err bf16 {row['err_sim2_bf16']:.2e} fp32 {row['err_sim2_fp32']:.2e}" if "err_sim2_fp32" in row else ""
                print(f"E={n_expts:4d} T={n_tokens:5d}: ok={row['ok']} err bf16 {row['err_bf16']:.2e} fp32 "
                      f"{row['err_fp32']:.2e}{extra}; single {row['single_us']:.1f} us, EP {row['ep_us']:.1f} us "
                      f"(local {row['ep_local_us']:.1f}, all-reduce {row['allreduce_us']:.1f})  [{time.time() - t0:.0f} s]",
                      flush=True)
        del layer, local
        if DEVICE == "cuda":
            torch.cuda.empty_cache()

    failed = False
    if rank == 0:
        print()
        print(table(rows, world, args.graph))
        failed = not all(r["ok"] for r in rows)
        result = dict(bench="bench_ep", device=device_name, world_size=world,
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      commit=commit(), torch=torch.__version__, triton=__import__("triton").__version__,
                      nccl=nccl,
                      nccl_nvls_enable=os.environ.get("NCCL_NVLS_ENABLE"),
                      hidden=HIDDEN, intermediate=INTER, top_k=TOPK, warmup=args.warmup, iters=args.iters,
                      tolerances=dict(bf16=TOL_BF16, fp32=TOL_FP32), all_ok=not failed, rows=rows)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {args.out}; correctness {'FAILED' if failed else 'ok'}", flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
