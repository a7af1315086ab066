"""Host (CPU) cost per eager call of routing and matmul_ogs on the gpt-oss MoE layer (GPU machine).

    python benchmarks/host_overhead.py [--experts 32] [--tokens 1] [--profile]

Eager callers (transformers' generate) pay the Python work and the Triton launches of every call;
when that exceeds the GPU time the GPU idles. This times back-to-back calls on the host clock
(no synchronisation inside a batch; the queue is drained before and after each) in several
batches and reports the fastest batch and the median (the GPU host's timings vary up to 2x from
run to run: the minimum is the figure to compare, the empty torch op shows how fast the host was),
and, with --profile, prints the cProfile entries of the gate_up and down call sites. gate_up and down are timed again with
matmul_ogs.FAST_LAUNCH off (every launch through Triton's JIT).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_matmul import HIDDEN, TOPK, Layer  # noqa: E402
from triton_kernels import matmul_ogs as matmul_ogs_module  # noqa: E402
from triton_kernels.routing import routing  # noqa: E402


def host_us(fn, batches: int = 15, n: int = 40) -> tuple[float, float]:
    """(fastest, median) host time per call over `batches` batches of n back-to-back calls, µs."""
    for _ in range(10):
        fn()
    per_call = []
    for _ in range(batches):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter() - t) / n * 1e6)
    torch.cuda.synchronize()
    return min(per_call), statistics.median(per_call)


def report(args, name: str, fn) -> None:
    fastest, median = host_us(fn)
    print(f"E={args.experts} T={args.tokens} {name:15s} host {fastest:8.1f} us per call (median of batches "
          f"{median:.1f})", flush=True)


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

    def layer_call():  # what transformers' eager forward runs per MoE layer
        rd_, gi_, si_ = routing(logits, TOPK)
        return layer.down(layer.gate_up(x, rd_, gi_), rd_, si_)

    rows["layer"] = layer_call
    for name, fn in rows.items():
        report(args, name, fn)
    matmul_ogs_module.FAST_LAUNCH = False  # A/B: every matmul_ogs launch through Triton's JIT
    for name in ("gate_up", "down"):
        report(args, name + " (JIT)", rows[name])
    matmul_ogs_module.FAST_LAUNCH = True
    if args.profile:
        for name in ("gate_up", "down"):
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(100):
                rows[name]()
            prof.disable()
            torch.cuda.synchronize()
            print(f"--- cProfile, 100 {name} calls")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
