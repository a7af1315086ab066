"""The gpt-oss MoE layer on one GPU, end to end, against the hardware floor (issue 6 / SPEC section 5).

    python benchmarks/bench_moe.py --out bench_moe.json [--quick | --tokens 512,16384] [--layouts default,strided_scales]

In ONE run: measures the two ceilings (device-to-device copy bandwidth, dense bf16 matmul rate),
re-checks correctness of the timed paths (benchmarks/bench_matmul.check: NaN-poisoned outputs,
float64 MoE reference), then for E in {32, 128} and T in {1, 8, 64, 512, 4096, 16384} times:
  routing     our routing, eager and captured in a CUDA graph
  gate_up     matmul_ogs, gathered, fused SwiGLU (graphed)
  down        matmul_ogs, scattered top-k sum with gammas (graphed)
  layer       routing + gate_up + down captured in one CUDA graph (the number the targets use)
At T = 1 the weights of one call (4 experts, 53 MB) are about the L2 size, so gate_up, down and layer are
timed there as COLD_SETS calls routed to different experts in one graph (weights from DRAM, as in a
model of many layers); the repeated-call times are kept in the JSON as *_warm_us.
  layer_eager the same three calls without a graph (how transformers' generate runs them)
  bf16_path   what a user runs otherwise: weights dequantized to bf16 once, tokens sorted by expert
              and multiplied with torch's grouped matmul (torch._grouped_mm), eager
Floor = max(bytes of the MXFP4 weights of the experts hit / copy bandwidth, flops / dense rate).
Prints a markdown table (the BENCHMARKS.md rows) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_matmul as bm  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

from triton_kernels.routing import routing, routing_torch  # noqa: E402

HIDDEN, INTER, TOPK = bm.HIDDEN, bm.INTER, bm.TOPK
TOKEN_COUNTS = [1, 8, 64, 512, 4096, 16384]
COLD_SETS = 8


def median_us(fn, graph: bool) -> float:
    if graph:
        return do_bench_cudagraph(fn, rep=200, return_mode="median") * 1e3
    return do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def dequantized_bf16(codes, scales):
    """[E, K, N] bf16 weights from MXFP4 codes [E, K/2, N] and scales [E, K/32, N], decoded one expert
    at a time by bench_matmul's float64 decode."""
    n_expts, half_k, n = codes.shape
    out = torch.empty(n_expts, 2 * half_k, n, dtype=torch.bfloat16, device="cuda")
    for e in range(n_expts):
        out[e] = bm.dequant64(codes, scales, [e])[e].bfloat16()
    return out


class Bf16Path:
    """The dense alternative: bf16 weights of all experts, torch grouped matmul over expert-sorted rows."""

    def __init__(self, layer: bm.Layer):
        self.w1 = dequantized_bf16(layer.c1, layer.s1)
        self.w2 = dequantized_bf16(layer.c2, layer.s2)
        self.b1, self.b2 = layer.b1, layer.b2
        self.n_expts = layer.n_expts

    def __call__(self, x, logits):
        vals, idx = torch.topk(logits, TOPK, dim=1)
        gates = torch.softmax(vals.float(), dim=1).reshape(-1)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        expt = flat[order]
        offs = torch.cumsum(torch.bincount(flat, minlength=self.n_expts), 0).to(torch.int32)
        xs = x[order // TOPK]
        h = torch._grouped_mm(xs, self.w1, offs=offs).float() + self.b1[expt]
        h = bm.swiglu64(h).bfloat16()
        y = torch._grouped_mm(h, self.w2, offs=offs).float() + self.b2[expt]
        out = torch.zeros(x.shape[0], HIDDEN, dtype=torch.float32, device="cuda")
        out.index_add_(0, order // TOPK, y * gates[order, None])
        return out.bfloat16()


def check_bf16_path(path: Bf16Path, layer: bm.Layer, n_tokens: int) -> float:
    torch.manual_seed(n_tokens + 7)
    x = torch.randn(n_tokens, HIDDEN, device="cuda").bfloat16()
    logits = torch.randn(n_tokens, layer.n_expts, device="cuda")
    rd, gi, si = routing(logits, TOPK)
    ours = layer.down(layer.gate_up(x, rd, gi), rd, si)
    return bm.rel_err(path(x, logits), ours)


def cold_inputs(layer, n_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """(x, logits) of COLD_SETS calls routed to different experts where the experts one call hits weigh
    about as much as the L2 cache (see bench_shape), else None (one call's weights do not stay in L2)."""
    if n_tokens * TOPK > 2 * layer.n_expts:
        return None
    return [(torch.randn(n_tokens, HIDDEN, device="cuda").bfloat16(),
             bm.cold_logits(n_tokens, layer.n_expts, i).bfloat16()) for i in range(COLD_SETS)]


def bench_shape(layer, bf16: Bf16Path | None, n_tokens, machine, layout_name) -> dict:
    torch.manual_seed(n_tokens)
    x = torch.randn(n_tokens, HIDDEN, device="cuda").bfloat16()
    logits = torch.randn(n_tokens, layer.n_expts, device="cuda").bfloat16()
    rd, gi, si = routing(logits, TOPK)
    h = layer.gate_up(x, rd, gi)
    out = layer.down(h, rd, si)
    n_hit = int((rd.expt_hist > 0).sum().item())
    bw, rate = machine["copy_bandwidth_GBps"] * 1e9, machine["dense_bf16_TFLOPs"] * 1e12
    weight_bytes = n_hit * (bm.weight_bytes(HIDDEN, 2 * INTER) + bm.weight_bytes(INTER, HIDDEN))
    flops = 2 * n_tokens * TOPK * (HIDDEN * 2 * INTER + INTER * HIDDEN)
    floor_us = max(weight_bytes / bw, flops / rate) * 1e6

    def layer_call():
        rd_, gi_, si_ = routing(logits, TOPK)
        layer.down(layer.gate_up(x, rd_, gi_, y=h), rd_, si_, y=out)

    row = {"layout": layout_name, "n_expts": layer.n_expts, "n_tokens": n_tokens, "experts_hit": n_hit,
           "floor_us": floor_us, "floor_bound": "memory" if weight_bytes / bw >= flops / rate else "compute"}
    row["routing_us"] = median_us(lambda: routing(logits, TOPK), graph=False)
    row["routing_graph_us"] = median_us(lambda: routing(logits, TOPK), graph=True)
    row["routing_torch_us"] = median_us(lambda: routing_torch(logits, TOPK), graph=False)
    row["gate_up_graph_us"] = median_us(lambda: layer.gate_up(x, rd, gi, y=h), graph=True)
    row["down_graph_us"] = median_us(lambda: layer.down(h, rd, si, y=out), graph=True)
    row["layer_graph_us"] = median_us(layer_call, graph=True)
    row["layer_eager_us"] = median_us(layer_call, graph=False)
    inputs = cold_inputs(layer, n_tokens)
    if inputs is not None:
        # The experts hit by one call weigh about as much as the L2 cache (4 experts: 53 MB at T = 1), so a
        # repeated call partly reads its weights from L2, which a model of many layers never does: time
        # COLD_SETS calls routed to different experts back to back instead (weights from DRAM), the
        # repeated-call numbers stay in the JSON as *_warm_us.
        for key in ("gate_up_graph_us", "down_graph_us", "layer_graph_us"):
            row[key.replace("graph_us", "graph_warm_us")] = row[key]
        sets = [(xi, li, *routing(li, TOPK), torch.empty_like(h), torch.empty_like(out)) for xi, li in inputs]

        def cold(call):
            return median_us(lambda: [call(*s_) for s_ in sets], graph=True) / len(sets)

        row["gate_up_graph_us"] = cold(lambda xi, li, rdi, gii, sii, hi, oi: layer.gate_up(xi, rdi, gii, y=hi))
        row["down_graph_us"] = cold(lambda xi, li, rdi, gii, sii, hi, oi: layer.down(hi, rdi, sii, y=oi))

        def layer_cold(xi, li, rdi, gii, sii, hi, oi):
            rd_, gi_, si_ = routing(li, TOPK)
            layer.down(layer.gate_up(xi, rd_, gi_, y=hi), rd_, si_, y=oi)

        row["layer_graph_us"] = cold(layer_cold)
        row["cold_sets"] = COLD_SETS
    row["ratio_to_floor"] = floor_us / row["layer_graph_us"]
    row["TFLOPs"] = flops / row["layer_graph_us"] / 1e6
    if bf16 is not None:
        row["bf16_path_us"] = median_us(lambda: bf16(x, logits), graph=False)
    return row


def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated positive ints."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return values


def layout_names(text: str) -> list[str]:
    """argparse type: comma-separated layout names of bench_matmul.as_layout."""
    names = text.split(",")
    unknown = [n for n in names if n not in ("default", "strided_scales", "raw")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown layouts {unknown}: expected default, strided_scales or raw")
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_moe.json")
    ap.add_argument("--quick", action="store_true", help="T in {1, 64, 4096} only")
    ap.add_argument("--tokens", type=positive_ints, default=None,
                    help="comma-separated T to time (default: all of the table's)")
    ap.add_argument("--layouts", type=layout_names, default="default,strided_scales")
    ap.add_argument("--experts", type=positive_ints, default="32,128")
    ap.add_argument("--no-bf16", action="store_true", help="skip the dequantized bf16 comparison path")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    report = {**bm.report_header(), "checks": [], "rows": []}
    report["machine"] = machine = bm.measure_machine()
    print(f"# {report['device']} ({report['variant']}), triton {triton.__version__}, torch {torch.__version__}, "
          f"commit {report['commit']}, {report['date']}")
    print(f"copy bandwidth {machine['copy_bandwidth_GBps']:.0f} GB/s, dense bf16 {machine['dense_bf16_TFLOPs']:.0f} TFLOP/s",
          flush=True)
    token_counts = [1, 64, 4096] if args.quick else TOKEN_COUNTS
    if args.tokens:
        token_counts = args.tokens
    ok = True
    rows = []
    for layout_name in args.layouts:
        for n_expts in args.experts:
            layer = bm.Layer(n_expts, layout_name)
            # correctness of the timed path, before any timing
            ok &= bm.run_checks(layer, (1, 4096), report, layout_name, seed_base=100, layout=layout_name)
            bf16 = None
            if not args.no_bf16 and layout_name == args.layouts[0]:
                bf16 = Bf16Path(layer)
                err = check_bf16_path(bf16, layer, 512)
                report["checks"].append({"bf16_path_vs_ours_rel_err": err, "n_expts": n_expts})
                print(f"check bf16 path vs ours E={n_expts}: {err:.2e}", flush=True)
                ok &= err <= 2e-2
            for n_tokens in token_counts:
                r = bench_shape(layer, bf16, n_tokens, machine, layout_name)
                rows.append(r)
                report["rows"] = rows
                print(f"  {layout_name} E={n_expts} T={n_tokens}: layer {r['layer_graph_us']:.1f} us graphed "
                      f"(floor {r['floor_us']:.1f}, ratio {r['ratio_to_floor']:.2f}), routing {r['routing_graph_us']:.1f} us",
                      flush=True)
                with open(args.out, "w") as f:
                    json.dump(report, f, indent=1)
            del layer, bf16
            torch.cuda.empty_cache()
    print()
    print("| layout | E | T | experts hit | floor µs | layer µs (graph) | ratio | layer µs (eager) | routing µs (graph / eager / torch) "
          "| gate_up µs | down µs | bf16 path µs | TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        bf = f"{r['bf16_path_us']:.1f}" if "bf16_path_us" in r else "–"
        print(f"| {r['layout']} | {r['n_expts']} | {r['n_tokens']} | {r['experts_hit']} | {r['floor_us']:.1f} "
              f"| {r['layer_graph_us']:.1f} | {r['ratio_to_floor']:.2f} | {r['layer_eager_us']:.1f} "
              f"| {r['routing_graph_us']:.1f} / {r['routing_us']:.1f} / {r['routing_torch_us']:.1f} "
              f"| {r['gate_up_graph_us']:.1f} | {r['down_graph_us']:.1f} | {bf} | {r['TFLOPs']:.0f} |")
    return bm.finish_report(report, ok, args.out)


if __name__ == "__main__":
    sys.exit(main())
