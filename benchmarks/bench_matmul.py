"""GPU check and benchmark of the gpt-oss MoE matmuls: gate_up (gathered, fused SwiGLU) and down
(scattered top-k sum, gammas), MXFP4 weights, bf16 activations, fp32 bias.

    python benchmarks/bench_matmul.py --out bench_matmul.json [--quick] [--sweep]

1. Correctness at gpt-oss sizes (hidden = intermediate = 2880, top-4, E = 32 / 128): outputs
   poisoned with NaN, checked fully written, and compared with a float64 reference on the
   dequantized weights (relative Frobenius error <= 1e-2), for each weight layout.
2. Timings (triton.testing.do_bench medians, eager and CUDA-graphed) for E in {32, 128} and
   T in {1, 8, 64, 512, 4096, 16384}, with the default layouts and with strided scales (what
   transformers passes). The floor per matmul is max(weight bytes of the experts hit / measured
   copy bandwidth, flops / measured dense bf16 rate), both measured in this run.
3. `--sweep`: also time a list of alternative launch configs per shape (to re-tune configs.py).
Prints a table and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_common import report_header  # noqa: E402

from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

from triton_kernels.matmul_ogs import (FnSpecs, FusedActivation, MatmulConfig, PrecisionConfig,  # noqa: E402
                                       matmul_ogs, matmul_ogs_torch)
from triton_kernels.swiglu import swiglu_fn  # noqa: E402

HIDDEN, INTER, TOPK = 2880, 2880, 4
ALPHA, LIMIT = 1.702, 7.0
SWIGLU = FusedActivation(FnSpecs("swiglu", swiglu_fn, ("alpha", "limit")), (ALPHA, LIMIT), 2)
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]




def routing(logits, k):
    from triton_kernels.routing import routing as route
    return route(logits, k)


def cold_logits(n_tokens, n_expts, index):
    """Router logits for the index-th of several calls timed back to back with weights from DRAM: fresh
    random logits, and at T = 1 a bonus on experts TOPK*index .. TOPK*index + TOPK-1 (mod E) so that
    consecutive calls hit disjoint experts (one call's 4 experts would otherwise partly stay in L2)."""
    logits = torch.randn(n_tokens, n_expts, device="cuda")
    if n_tokens == 1:
        first = (index * TOPK) % n_expts
        logits[:, first:first + TOPK] += 10 + torch.arange(TOPK, device="cuda")
    return logits


def mx_weight(n_expts, k, n, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    codes = torch.randint(0, 256, (n_expts, n, k // 2), generator=g, dtype=torch.uint8, device="cuda").transpose(1, 2)
    scales = torch.randint(118, 125, (n_expts, n, k // 32), generator=g, dtype=torch.uint8,
                           device="cuda").transpose(1, 2)
    return codes, scales


def as_layout(codes, scales, layout_name):
    """'raw': uint8 torch tensors (strided); 'default': default value + default scale layouts;
    'strided_scales': default value layout, StridedLayout scales (transformers)."""
    if layout_name == "raw":
        return codes, scales
    from triton_kernels.tensor import FP4, convert_layout, wrap_torch_tensor
    from triton_kernels.tensor_details import layout
    vcls, vopts = layout.make_default_matmul_mxfp4_w_layout(mx_axis=1)
    w = convert_layout(wrap_torch_tensor(codes, dtype=FP4), vcls, **vopts)
    if layout_name == "default":
        scls, sopts = layout.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=8)
        s = convert_layout(wrap_torch_tensor(scales), scls, **sopts)
    else:
        s = convert_layout(wrap_torch_tensor(scales), layout.StridedLayout)
    return w, s


def layouts_to_run():
    try:
        from triton_kernels.tensor_details import layout  # noqa: F401
        layout.make_default_matmul_mxfp4_w_layout
        return ["default", "strided_scales"]
    except (ImportError, AttributeError) as exc:
        print(f"tensor layouts unavailable ({exc}); timing raw strided weights only")
        return ["raw"]


def dequant64(codes, scales, experts):
    lut = torch.tensor(E2M1, dtype=torch.float64, device="cuda")
    out = {}
    for e in experts:
        c = codes[e].long()
        w = torch.stack((lut[c & 15], lut[c >> 4]), dim=1).reshape(2 * c.shape[0], c.shape[1])
        out[e] = w * torch.exp2(scales[e].double() - 127).repeat_interleave(32, dim=0)
    return out


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


class Layer:
    def __init__(self, n_expts, layout_name, seed=0):
        self.n_expts = n_expts
        self.c1, self.s1 = mx_weight(n_expts, HIDDEN, 2 * INTER, seed + 1)
        self.c2, self.s2 = mx_weight(n_expts, INTER, HIDDEN, seed + 2)
        self.b1 = torch.randn(n_expts, 2 * INTER, device="cuda")
        self.b2 = torch.randn(n_expts, HIDDEN, device="cuda")
        w1, ws1 = as_layout(self.c1, self.s1, layout_name)
        w2, ws2 = as_layout(self.c2, self.s2, layout_name)
        self.w1, self.w2 = w1, w2
        self.pc1, self.pc2 = PrecisionConfig(weight_scale=ws1), PrecisionConfig(weight_scale=ws2)

    def gate_up(self, x, rd, gi, y=None, config=None):
        return matmul_ogs(x, self.w1, self.b1, rd, gather_indx=gi, precision_config=self.pc1,
                          fused_activation=SWIGLU, y=y, config=config)

    def down(self, h, rd, si, y=None, config=None):
        return matmul_ogs(h, self.w2, self.b2, rd, scatter_indx=si, precision_config=self.pc2,
                          gammas=rd.gate_scal, y=y, config=config)


def swiglu64(a):
    gate = a[..., 0::2].clamp(max=LIMIT)
    lin = a[..., 1::2].clamp(-LIMIT, LIMIT)
    return gate * torch.sigmoid(ALPHA * gate) * (lin + 1)


def check(layer: Layer, n_tokens: int, seed: int) -> dict:
    torch.manual_seed(seed)
    x = torch.randn(n_tokens, HIDDEN, device="cuda").bfloat16()
    logits = torch.randn(n_tokens, layer.n_expts, device="cuda")
    logits[:, 5] = -1e4  # an expert with no tokens
    rd, gi, si = routing(logits, TOPK)
    h = torch.full((n_tokens * TOPK, INTER), float("nan"), device="cuda", dtype=torch.bfloat16)
    layer.gate_up(x, rd, gi, y=h)
    out = torch.full((n_tokens, HIDDEN), float("nan"), device="cuda", dtype=torch.bfloat16)
    layer.down(h, rd, si, y=out)
    torch.cuda.synchronize()
    res = {"n_tokens": n_tokens, "n_expts": layer.n_expts, "h_written": not h.isnan().any().item(),
           "out_written": not out.isnan().any().item()}
    # float64 MoE computed per token from the logits (independent of the routing indices)
    vals, idx = torch.topk(logits.double(), TOPK, dim=1)
    gates = torch.softmax(vals, dim=1)
    used = idx.unique().tolist()
    w1, w2 = dequant64(layer.c1, layer.s1, used), dequant64(layer.c2, layer.s2, used)
    xd = x.double()
    ref = torch.zeros(n_tokens, HIDDEN, dtype=torch.float64, device="cuda")
    for j in range(TOPK):
        for e in idx[:, j].unique().tolist():
            rows = (idx[:, j] == e).nonzero().squeeze(1)
            a = swiglu64(xd[rows] @ w1[e] + layer.b1[e].double()).to(torch.bfloat16).double()
            ref[rows] += gates[rows, j, None] * (a @ w2[e] + layer.b2[e].double())
    res["layer_rel_err_vs_float64"] = rel_err(out, ref)
    h_ref = matmul_ogs_torch(x, layer.w1, layer.b1, rd, gather_indx=gi, precision_config=layer.pc1,
                             fused_activation=SWIGLU, accum_dtype=torch.float64)
    res["gate_up_rel_err_vs_reference"] = rel_err(h, h_ref)
    out_ref = matmul_ogs_torch(h, layer.w2, layer.b2, rd, scatter_indx=si, precision_config=layer.pc2,
                               gammas=rd.gate_scal, accum_dtype=torch.float64)
    res["down_rel_err_vs_reference"] = rel_err(out, out_ref)
    res["ok"] = (res["h_written"] and res["out_written"] and res["layer_rel_err_vs_float64"] <= 1e-2
                 and res["gate_up_rel_err_vs_reference"] <= 1e-2 and res["down_rel_err_vs_reference"] <= 1e-2)
    return res


def run_checks(layer: Layer, token_counts, report: dict, label: str, seed_base: int = 0, **tags) -> bool:
    """`check` at each T (seed seed_base + T), kept in report["checks"] with `tags`, one line printed
    per check; True when all pass."""
    ok = True
    for n_tokens in token_counts:
        res = check(layer, n_tokens, seed=seed_base + n_tokens)
        res.update(tags)
        report["checks"].append(res)
        ok &= res["ok"]
        print(f"check {label} E={layer.n_expts} T={n_tokens}: layer err {res['layer_rel_err_vs_float64']:.2e}, "
              f"gate_up err {res['gate_up_rel_err_vs_reference']:.2e}, down err {res['down_rel_err_vs_reference']:.2e}, "
              f"written {res['h_written'] and res['out_written']}: {'OK' if res['ok'] else 'FAIL'}", flush=True)
    return ok


def finish_report(report: dict, ok: bool, path: str) -> int:
    """Write the report with its verdict; the exit status: 0 when every check passed."""
    report["all_checks_ok"] = ok
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"checks {'all OK' if ok else 'FAILED'}; wrote {path}")
    return 0 if ok else 1


def measure_machine() -> dict:
    buf = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(buf)
    t_copy = do_bench(lambda: dst.copy_(buf), warmup=10, rep=100, return_mode="median") * 1e-3
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t_mm = do_bench(lambda: a @ b, warmup=10, rep=100, return_mode="median") * 1e-3
    del buf, dst
    return {"copy_bandwidth_GBps": 2 * (1 << 30) / t_copy / 1e9, "dense_bf16_TFLOPs": 2 * 8192 ** 3 / t_mm / 1e12}


def weight_bytes(k, n):
    return k * n // 2 + (k // 32) * n


SWEEP = [MatmulConfig(16, 64, 256, 1, 4, 4), MatmulConfig(16, 128, 256, 1, 4, 4), MatmulConfig(16, 64, 512, 1, 4, 3),
         MatmulConfig(32, 64, 256, 4, 4, 4), MatmulConfig(64, 128, 128, 8, 4, 3), MatmulConfig(64, 256, 128, 8, 8, 3),
         MatmulConfig(128, 128, 128, 8, 8, 3), MatmulConfig(128, 256, 64, 8, 8, 3), MatmulConfig(128, 128, 64, 8, 4, 4)]


def bench(layer: Layer, layout_name: str, n_tokens: int, machine: dict, sweep: bool) -> dict:
    torch.manual_seed(n_tokens)
    x = torch.randn(n_tokens, HIDDEN, device="cuda").bfloat16()
    logits = torch.randn(n_tokens, layer.n_expts, device="cuda")
    rd, gi, si = routing(logits, TOPK)
    h = layer.gate_up(x, rd, gi)
    out = layer.down(h, rd, si)
    n_hit = int((rd.expt_hist > 0).sum().item())
    rows = n_tokens * TOPK
    row = {"layout": layout_name, "n_expts": layer.n_expts, "n_tokens": n_tokens, "experts_hit": n_hit}
    bw, rate = machine["copy_bandwidth_GBps"] * 1e9, machine["dense_bf16_TFLOPs"] * 1e12
    for name, fn, k, n in (("gate_up", lambda: layer.gate_up(x, rd, gi, y=h), HIDDEN, 2 * INTER),
                           ("down", lambda: layer.down(h, rd, si, y=out), INTER, HIDDEN)):
        floor = max(n_hit * weight_bytes(k, n) / bw, 2 * rows * k * n / rate)
        t = do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e-3
        try:
            tg = do_bench_cudagraph(fn, rep=200, return_mode="median") * 1e-3
        except Exception as exc:  # report, keep going
            print(f"  cuda graph capture failed for {name}: {exc}")
            tg = float("nan")
        row[f"{name}_floor_us"] = floor * 1e6
        row[f"{name}_us"] = t * 1e6
        row[f"{name}_graph_us"] = tg * 1e6
        row[f"{name}_ratio"] = floor / min(t, tg if tg == tg else t)
        row[f"{name}_TFLOPs"] = 2 * rows * k * n / min(t, tg if tg == tg else t) / 1e12
        if sweep:
            best = {}
            for cfg in SWEEP:
                f = (lambda c=cfg: layer.gate_up(x, rd, gi, y=h, config=c)) if name == "gate_up" else \
                    (lambda c=cfg: layer.down(h, rd, si, y=out, config=c))
                try:
                    best[str(cfg)] = do_bench(f, warmup=10, rep=50, return_mode="median") * 1e3
                except Exception as exc:
                    best[str(cfg)] = f"error: {type(exc).__name__}: {exc}"[:200]
            row[f"{name}_sweep_us"] = best
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_matmul.json")
    ap.add_argument("--quick", action="store_true", help="fewer shapes (smoke run)")
    ap.add_argument("--sweep", action="store_true", help="also time alternative launch configs")
    ap.add_argument("--skip-check", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    report = {**report_header(), "checks": [], "timings": []}
    layouts = layouts_to_run()
    token_counts = [1, 64, 4096] if args.quick else [1, 8, 64, 512, 4096, 16384]
    ok = True
    if not args.skip_check:
        for layout_name in layouts:
            for n_expts in (32, 128):
                layer = Layer(n_expts, layout_name)
                ok &= run_checks(layer, [1, 4096] if args.quick else [1, 7, 64, 512, 4096, 16384], report, layout_name,
                                 layout=layout_name)
                del layer
                torch.cuda.empty_cache()
    report["machine"] = machine = measure_machine()
    print(f"copy bandwidth {machine['copy_bandwidth_GBps']:.0f} GB/s, dense bf16 {machine['dense_bf16_TFLOPs']:.0f} TFLOP/s")
    header = (f"{'layout':15s} {'E':>4s} {'T':>6s} | {'gate_up us':>10s} {'graph':>8s} {'floor':>8s} {'ratio':>6s} "
              f"{'TFLOP/s':>7s} | {'down us':>9s} {'graph':>8s} {'floor':>8s} {'ratio':>6s} {'TFLOP/s':>7s}")
    print(header)
    for layout_name in layouts:
        for n_expts in (32, 128):
            layer = Layer(n_expts, layout_name)
            for n_tokens in token_counts:
                r = bench(layer, layout_name, n_tokens, machine, args.sweep)
                report["timings"].append(r)
                print(f"{layout_name:15s} {n_expts:4d} {n_tokens:6d} | {r['gate_up_us']:10.1f} {r['gate_up_graph_us']:8.1f} "
                      f"{r['gate_up_floor_us']:8.1f} {r['gate_up_ratio']:6.2f} {r['gate_up_TFLOPs']:7.1f} | "
                      f"{r['down_us']:9.1f} {r['down_graph_us']:8.1f} {r['down_floor_us']:8.1f} {r['down_ratio']:6.2f} "
                      f"{r['down_TFLOPs']:7.1f}", flush=True)
                with open(args.out, "w") as f:
                    json.dump(report, f, indent=1)
            del layer
            torch.cuda.empty_cache()
    return finish_report(report, ok, args.out)


if __name__ == "__main__":
    sys.exit(main())
