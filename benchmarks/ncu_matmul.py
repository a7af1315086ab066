"""matmul_ogs calls of the gpt-oss MoE layer for a profiler to look at (no timing of its own).

    ncu --clock-control none --kernel-name regex:matmul_ogs --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section Occupancy --section SchedulerStats \
        python3 benchmarks/ncu_matmul.py --experts 32 --tokens 512 --mm gate_up

Runs one matmul (gate_up: gathered + SwiGLU; down: scattered + gammas) of bench_matmul's layer in the
default weight layout a few times with the config choose_config picks (the first call compiles).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_matmul import HIDDEN, INTER, TOPK, Layer, routing  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--mm", choices=["gate_up", "down"], default="gate_up")
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    layer = Layer(args.experts, "default")
    torch.manual_seed(args.tokens)
    x = torch.randn(args.tokens, HIDDEN, device="cuda").bfloat16()
    rd, gi, si = routing(torch.randn(args.tokens, args.experts, device="cuda"), TOPK)
    h = torch.randn(args.tokens * TOPK, INTER, device="cuda").bfloat16()
    for _ in range(args.calls):
        if args.mm == "gate_up":
            layer.gate_up(x, rd, gi)
        else:
            layer.down(h, rd, si)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
