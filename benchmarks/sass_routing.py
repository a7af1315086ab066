"""Compile the rows path's two routing kernels for sm_90a on any machine (no GPU needed) and count
their SASS: instructions, registers, CTA barriers, and the source lines that cost the most.

    python benchmarks/sass_routing.py [--tokens 16384] [--experts 128] [--k 4] [--lines 12]

The constexprs are those `routing` launches for the shape (from `make_routing_plan`, two launches),
with the specialization a real launch gets (16-byte aligned pointers, the logits' row stride a
multiple of 16, unit column stride): without them Triton does not vectorise the byte stores and
the counts are off. NOTES_routing_perf.md (round 7) says what these counts did and did not predict.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sass_matmul import opcode, resources  # noqa: E402
from triton_kernels import routing_details  # noqa: E402
from triton_kernels.routing_details._kernels import routing_place_kernel, routing_rows_kernel  # noqa: E402

_ALIGNED = ("x_ptr", "ws_ptr", "bar_ptr", "stride_xt")


def compile_kernel(fn, constexprs: dict, pointers: dict, num_warps: int):
    """fn for sm_90a: every constexpr given (a missing one would become a runtime argument)."""
    missing = [p.name for p in fn.params if p.is_constexpr and p.name not in constexprs]
    if missing:
        raise ValueError(f"constexprs missing for {fn.__name__}: {missing}")
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if n in _ALIGNED and n not in constexprs}
    src = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def _named(fn, n_args: int, consts: tuple) -> dict:
    """A launch's constexpr values by parameter name: `_launch` passes them after its n_args arguments."""
    return dict(zip(fn.arg_names[n_args:], consts))


def rows_path_kernels(n_tokens: int, n_expts: int, k: int):
    """The two kernels `routing` launches for a bf16 [n_tokens, n_expts] call without options."""
    plan = routing_details.make_routing_plan(n_tokens, n_expts, k, 1, False, routing_details._target_programs(),
                                             routing_details.FUSED_MAX_TILES, False, True, 0)
    if not plan.rows_q:
        raise SystemExit(f"{n_tokens} x {n_expts}: not the rows path (fused or top-k kernel)")
    # bf16 logits, no n_rows tensor, PDL (Hopper), as `routing_triton` passes them
    rows_consts = routing_details.rows_kernel_consts(plan, k, n_expts, False, True, True)
    place_consts = routing_details.place_kernel_consts(plan, k, False, False, True)
    rows = compile_kernel(routing_rows_kernel, dict(_named(routing_rows_kernel, 10, rows_consts), stride_xe=1,
                                                    n_rows_ptr=None, bar_ptr=None),
                          {"x_ptr": "*bf16", "ws_ptr": "*i32"}, plan.num_warps)
    place = compile_kernel(routing_place_kernel, _named(routing_place_kernel, 6, place_consts), {"ws_ptr": "*i32"},
                           plan.place_warps)
    return plan, rows, place


def disassemble(kernel) -> list[tuple[str, str]]:
    """(source file:line, instruction) per SASS instruction, from nvdisasm's line info."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([tool, "-g", "-c", f.name], capture_output=True, text=True, check=True).stdout
    out, line = [], "?"
    for text in sass.splitlines():
        m = re.search(r'//## File "([^"]+)", line (\d+)', text)
        if m:
            line = f"{os.path.basename(m.group(1))}:{m.group(2)}"
        elif re.search(r"/\*[0-9a-f]{4}\*/", text):
            out.append((line, text.split("*/", 1)[1]))
    return out


def report(name: str, kernel, n_lines: int) -> None:
    body = disassemble(kernel)
    ops = collections.Counter(opcode(ins) for _, ins in body)
    print(f"{name}: {len(body)} instructions per thread, {ops['BAR']} CTA barriers, {resources(kernel)}")
    print("  " + ", ".join(f"{op} {n}" for op, n in ops.most_common(12)))
    for line, n in collections.Counter(line for line, _ in body).most_common(n_lines):
        print(f"    {n:5d}  {line}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--lines", type=int, default=12, help="source lines to list per kernel")
    args = ap.parse_args()
    if args.tokens < 1 or not 1 <= args.experts <= 256 or not 1 <= args.k <= min(8, args.experts) or args.lines < 0:
        ap.error(f"expected --tokens >= 1, 1 <= --experts <= 256, 1 <= --k <= min(8, experts) and --lines >= 0, "
                 f"got {args.tokens}, {args.experts}, {args.k}, {args.lines}")
    plan, rows, place = rows_path_kernels(args.tokens, args.experts, args.k)
    print(f"{args.tokens} x {args.experts}, k = {args.k}: {plan.n_parts} rows programs of {plan.block_t} rows "
          f"({plan.num_warps} warps), {plan.n_place_programs} placement programs ({plan.place_warps} warps)")
    report("routing_rows_kernel", rows, args.lines)
    report("routing_place_kernel", place, args.lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
