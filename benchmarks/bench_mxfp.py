"""MXFP conversion check + throughput on a GPU: `python benchmarks/bench_mxfp.py --out mxfp.json`.

1. Checks the Triton downcast/upcast against the torch references (run on the same GPU) bit for
   bit on a large random bf16 tensor, for MXFP4 and MXFP8 e4m3, both scale rounding modes, along
   the contiguous axis and along a strided one. Output memory is poisoned first (a freed block of
   the same size filled with 0xAB, which the caching allocator hands out again), so an element the
   kernel fails to write shows up as a mismatch.
2. Times each conversion with triton.testing.do_bench (median) and reports GB/s moved (bytes read
   + bytes written) next to a device-to-device copy of the input measured in the same run.
Prints a markdown table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import commit  # noqa: E402

import triton  # noqa: E402
import triton.testing  # noqa: E402

from triton_kernels.numerics_details.mxfp import (  # noqa: E402
    DequantScaleRoundingMode,
    downcast_to_mxfp,
    downcast_to_mxfp_torch,
    upcast_from_mxfp,
    upcast_from_mxfp_torch,
)

QUANTS = {"mxfp4": torch.uint8, "mxfp8_e4m3": torch.float8_e4m3fn}


def poison_allocator(nbytes: int, device) -> None:
    block = torch.empty(nbytes, dtype=torch.uint8, device=device)
    block.fill_(0xAB)
    del block


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() and a.element_size() > 1:
        nan = torch.isnan(a) & torch.isnan(b)
        a_bits = a.view(torch.int16 if a.element_size() == 2 else torch.int32)
        b_bits = b.view(torch.int16 if b.element_size() == 2 else torch.int32)
        return bool(((a_bits == b_bits) | nan).all())
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")  # milliseconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=8192, help="rows x cols bf16 elements (default 64M)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_mxfp: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.manual_seed(0)
    n = args.rows * args.cols
    x = (torch.randn(args.rows, args.cols, device=dev) * torch.exp2(
        torch.randint(-8, 8, (args.rows, 1), device=dev).float())).to(torch.bfloat16)
    x[1, 5] = float("nan")    # NaN, all-zero and subnormal blocks ride along in the checks
    x[2, 64:96] = 0.0
    x[3, :32] = (torch.randn(32, device=dev) * 1e-39).to(torch.bfloat16)  # subnormal block: no flush to zero

    # Reference bandwidth: device-to-device copy of the input.
    dst = torch.empty_like(x)
    copy_ms = bench(lambda: dst.copy_(x))
    copy_gbs = 2 * x.numel() * x.element_size() / copy_ms / 1e6
    del dst

    rows, failures = [], []
    for qname, qtype in QUANTS.items():
        elem_bytes = 0.5 if qtype == torch.uint8 else 1.0
        for mode in DequantScaleRoundingMode:
            for axis_name, src, axis in (("contiguous", x, 1), ("strided", x.t(), 0)):
                tag = f"{qname} {mode.name} {axis_name}"
                poison_allocator(int(n * elem_bytes) + n // 32 + 4096, dev)
                q, s = downcast_to_mxfp(src, qtype, axis, mode)
                q_ref, s_ref = downcast_to_mxfp_torch(src, qtype, axis, mode)
                ok_down = same_bits(q, q_ref) and same_bits(s, s_ref)
                del q_ref, s_ref
                poison_allocator(2 * n, dev)
                y = upcast_from_mxfp(q, s, torch.bfloat16, axis)
                y_ref = upcast_from_mxfp_torch(q, s, torch.bfloat16, axis)
                ok_up = same_bits(y, y_ref)
                del y, y_ref
                if not (ok_down and ok_up):
                    failures.append(f"{tag}: downcast {'ok' if ok_down else 'MISMATCH'}, "
                                    f"upcast {'ok' if ok_up else 'MISMATCH'}")
                moved_down = n * 2 + n * elem_bytes + n / 32
                moved_up = n * elem_bytes + n / 32 + n * 2
                down_ms = bench(lambda: downcast_to_mxfp(src, qtype, axis, mode))
                up_ms = bench(lambda: upcast_from_mxfp(q, s, torch.bfloat16, axis))
                for op, ms, moved, ok in (("downcast", down_ms, moved_down, ok_down), ("upcast", up_ms, moved_up, ok_up)):
                    gbs = moved / ms / 1e6
                    rows.append({"op": op, "format": qname, "scale_rounding": mode.name, "axis": axis_name,
                                 "elements": n, "ms": ms, "gb_per_s": gbs, "fraction_of_copy": gbs / copy_gbs,
                                 "bit_exact_vs_torch": ok})
                del q, s

    print(f"device: {torch.cuda.get_device_name()}  triton {triton.__version__}  torch {torch.__version__}  "
          f"commit {commit()}")
    print(f"elements: {n} bf16; device-to-device copy: {copy_gbs:.0f} GB/s ({copy_ms * 1e3:.1f} us)\n")
    print("| op | format | scale rounding | axis | time (us) | GB/s moved | of copy | bit-exact |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['op']} | {r['format']} | {r['scale_rounding']} | {r['axis']} | {r['ms'] * 1e3:.1f} | "
              f"{r['gb_per_s']:.0f} | {r['fraction_of_copy']:.2f} | {'yes' if r['bit_exact_vs_torch'] else 'NO'} |")
    result = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "torch": torch.__version__,
              "commit": commit(), "elements": n, "copy_gb_per_s": copy_gbs, "copy_ms": copy_ms, "rows": rows,
              "failures": failures}
    Path(args.out).write_text(json.dumps(result, indent=2))
    if failures:
        print("\nFAILURES:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
