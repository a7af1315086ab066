"""Routing calls for a profiler to look at (no timing of its own).

    ncu --clock-control none --kernel-name regex:routing --launch-skip 6 --launch-count 2 \
        --section SpeedOfLight --section WarpStateStats --section SourceCounters \
        python3 benchmarks/ncu_routing.py --tokens 16384 --experts 128

Runs `routing` eagerly a few times on random bf16 logits (the first calls compile).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from triton_kernels.routing import routing  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--one-launch-max-warps", type=int, default=None,
                        help="override routing_details.ONE_LAUNCH_MAX_WARPS (profile the one-launch path at large T)")
    args = parser.parse_args()
    if args.one_launch_max_warps is not None:
        from triton_kernels import routing_details
        routing_details.ONE_LAUNCH_MAX_WARPS = args.one_launch_max_warps
    logits = torch.randn(args.tokens, args.experts, device="cuda").to(torch.bfloat16)
    for _ in range(args.calls):
        routing(logits, args.k)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
