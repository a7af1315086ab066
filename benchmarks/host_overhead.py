"""Host (CPU) cost per eager call of routing and matmul_ogs on the gpt-oss MoE layer (GPU machine).

    python benchmarks/host_overhead.py [--experts 32] [--tokens 1] [--profile]

Eager callers (transformers' generate) pay the Python work and the Triton launches of every call;
when that exceeds the GPU time the GPU idles. This times back-to-back calls on the host clock
(no synchronisation inside the loop; the queue is drained before and after) and, with --profile,
prints the cProfile entries of one matmul_ogs call site. gate_up and down are timed again with
matmul_ogs.FAST_LAUNCH off (every launch through Triton's JIT).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_matmul import HIDDEN, TOPK, Layer  # noqa: E402
from triton_kernels import matmul_ogs as matmul_ogs_module  # noqa: E402
from triton_kernels.routing import routing  # noqa: E402


def host_us(fn, n=200) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return host


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    layer = Layer(args.experts, "default")
    x = torch.randn(args.tokens, HIDDEN, device="cuda").bfloat16()
    logits = torch.randn(args.tokens, args.experts, device="cuda").bfloat16()
    rd, gi, si = routing(logits, TOPK)
    h = layer.gate_up(x, rd, gi)
    out = layer.down(h, rd, si)
    rows = {
        "routing": lambda: routing(logits, TOPK),
        "gate_up": lambda: layer.gate_up(x, rd, gi, y=h),
        "down": lambda: layer.down(h, rd, si, y=out),
        "empty torch op": lambda: torch.empty(1, device="cuda"),
    }
    for name, fn in rows.items():
        print(f"E={args.experts} T={args.tokens} {name:15s} host {host_us(fn):8.1f} us per call", flush=True)
    matmul_ogs_module.FAST_LAUNCH = False  # A/B: every matmul_ogs launch through Triton's JIT
    for name in ("gate_up", "down"):
        print(f"E={args.experts} T={args.tokens} {name + ' (JIT)':15s} host {host_us(rows[name]):8.1f} us per call",
              flush=True)
    matmul_ogs_module.FAST_LAUNCH = True
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(100):
            layer.gate_up(x, rd, gi, y=h)
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
