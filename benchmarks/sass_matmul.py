"""Compile matmul_ogs's kernel for sm_90a on any machine (no GPU needed) and count its SASS.

    python benchmarks/sass_matmul.py [--mode decode|prefill] [--decode bytes|words|ptx] [--dump file]

Triton ships ptxas and nvdisasm, so the Hopper code of a config can be inspected on a CPU-only
machine: this prints the instruction mix of the innermost loop (the K loop, found as the body of
the last backward branch) and per decoded weight value, which is what bounds the MXFP4 main loop
(see NOTES_matmul_perf.md). GPU time is then spent only on configs worth timing.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from triton_kernels.matmul_ogs_details import _kernels  # noqa: E402
from triton_kernels.matmul_ogs_details.configs import MatmulConfig, scale_loads, tail_in_64_steps  # noqa: E402
from triton_kernels.swiglu import swiglu_fn  # noqa: E402

_POINTERS = {"Y": "*bf16", "X": "*bf16", "W": "*u8", "WS": "*u8", "Bias": "*fp32", "Betas": "*fp32",
             "Gammas": "*fp32", "GatherIndx": "*i32", "TokenOffs": "*i32", "BlockPidMap": "*i32", "Partial": "*fp32",
             "YSum": "*bf16", "SlotToRow": "*i32", "TileCounters": "*i32"}
_FLOATS = {"out_alpha", "act_arg0", "act_arg1"}
_NONE = {"act_arg2", "act_arg3"}


def compile_matmul(block_m, block_n, block_k, num_warps, num_stages, decode="bytes", gate_up=True, arch=90,
                   split_k=1, chunk_m=0, tail_m=0, s_words=True, tail_64=None, topk_sum=False,
                   finish_in_launch=False):
    """chunk_m, tail_m: MatmulConfig.tail's two launches (0, 0: tiles of one size), see the kernel;
    topk_sum: the down projection's top-k sum in its own launch (few tokens); the down projection's splits are linear;
    finish_in_launch: gate_up's K splits added by the last split of each tile (no finishing launch);
    s_words: the scales read as whole words of the default (K-grouped) scale layout, as launched;
    tail_64: the K tail as 64-deep steps (default: as launched at gpt-oss's K = 2880, `tail_in_64_steps`)."""
    fn = _kernels._matmul_ogs_kernel
    names = fn.arg_names
    # the decoder preference a config names (the quads decoders come from the weight's layout)
    cfg = MatmulConfig(block_m, block_n, block_k, 1, num_warps, num_stages, swap_xw=True,
                       decode=decode if decode in ("bytes", "words", "ptx") else "ptx")
    words_on, prefetch_s = scale_loads(cfg, s_words, decode.startswith("quads"))
    constexprs = dict(
        ACT_FN=swiglu_fn if gate_up else _kernels.identity_fn, N_ACT_ARGS=2 if gate_up else 0,
        REDUCTION_N=2 if gate_up else 1, W_MX=True, W_KG=1, WS_KG=4, ROUTED=True, GATHER=gate_up,
        HAS_BIAS=True, HAS_BETAS=False, HAS_GAMMAS=not gate_up, HAS_ALPHA=False, DOT_F32=False,
        INDEX_64=False, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=1, SWAP_XW=True,
        DECODE={"bytes": 0, "words": 1, "ptx": 2, "quads": 3, "quads_ptx": 4, "quads_ptx_small": 5}[decode], SPLIT_K=split_k, FINISH_SPLIT=False,
        MAP_BLOCK_M=min(chunk_m or block_m, 128), LINEAR_SPLITS=not gate_up and split_k > 1, TOPK_SUM=topk_sum, SUM_K=4, FINISH_IN_LAUNCH=finish_in_launch, PDL=True, CHUNK_M=chunk_m, TAIL_M=tail_m,
        PREFETCH_S=prefetch_s, S_WORDS=words_on, TAIL_64=tail_in_64_steps(cfg, 2880) if tail_64 is None else tail_64,
    )
    if not gate_up:
        constexprs.update(act_arg0=None, act_arg1=None)
    # what Triton specialises at a real launch with the default layouts (integer arguments equal to 1)
    constexprs.update(stride_y_n=1, stride_x_k=1, stride_w_kg=1, stride_w_ki=1, stride_ws_ki=1)
    constexprs.update({n: None for n in _NONE})
    for param in fn.params:  # constexprs left at their defaults, as a launch leaves them
        if param.is_constexpr and param.name not in constexprs and param.has_default:
            constexprs[param.name] = param.default
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _POINTERS:
            signature[name] = _POINTERS[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in _FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name.startswith("stride") and name != "stride_ws_n" or name in ("K", "N"):  # gpt-oss sizes
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, signature, constexprs={k: v for k, v in constexprs.items() if k in names}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps,
                                                                             "num_stages": num_stages})


def resources(kernel) -> str:
    """Registers and spill bytes of the cubin, from the cuobjdump that Triton ships."""
    import subprocess
    import tempfile

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+).*?LOCAL:(\d+)", out)
    return f"regs {m.group(1)}, stack {m.group(2)}, local {m.group(3)}" if m else out.strip()[:200]


def loop_body(sass: str) -> list[str]:
    """Instructions of the largest loop: from a label to the backward BRA that jumps to it."""
    lines = sass.splitlines()
    labels = {}
    best = []
    for i, line in enumerate(lines):
        m = re.match(r"\s*(\.?L\w+):", line)
        if m:
            labels[m.group(1)] = i
        m = re.search(r"\bBRA\b.*?(\.?L\w+)", line)
        if m and m.group(1) in labels:
            body = [ln for ln in lines[labels[m.group(1)]:i + 1] if re.search(r"[A-Z]{2,}", ln) and ";" in ln]
            if len(body) > len(best):
                best = body
    return best


def opcode(line: str) -> str:
    text = line.split(";")[0].split("\t")[-1].strip()
    text = re.sub(r"^@!?U?P\w+\s+", "", text)
    return text.split()[0].split(".")[0] if text.split() else "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["decode", "prefill", "mid"], default="decode")
    ap.add_argument("--decode", default="bytes")
    ap.add_argument("--down", action="store_true", help="the down projection (no gather, no SwiGLU)")
    ap.add_argument("--cfg", default=None, help="block_m,block_n,block_k,num_warps,num_stages")
    ap.add_argument("--chunk-tail", default=None,
                    help="chunk_m,tail_m: compile one of MatmulConfig.tail's two launches "
                         "(block_m is the chunk or the tail)")
    ap.add_argument("--byte-scales", action="store_true",
                    help="scales read as bytes (strided scale layouts) instead of the default layout's words")
    ap.add_argument("--split-k", type=int, default=1)
    ap.add_argument("--topk-sum", action="store_true",
                    help="the down projection's top-k sum in its own launch (linear splits with --split-k > 1)")
    ap.add_argument("--finish-in-launch", action="store_true",
                    help="gate_up with --split-k > 1: the last split of each tile adds the partials")
    ap.add_argument("--dump", default=None)
    args = ap.parse_args()
    cfg = {"decode": (16, 64, 128, 4, 3), "mid": (64, 128, 128, 4, 3), "prefill": (128, 64, 128, 4, 3)}[args.mode]
    if args.cfg:
        cfg = tuple(int(v) for v in args.cfg.split(","))
    chunk_m, tail_m = (int(v) for v in args.chunk_tail.split(",")) if args.chunk_tail else (0, 0)
    k = compile_matmul(*cfg, decode=args.decode, gate_up=not args.down, chunk_m=chunk_m, tail_m=tail_m,
                       s_words=not args.byte_scales, split_k=args.split_k, topk_sum=args.topk_sum,
                       finish_in_launch=args.finish_in_launch)
    sass = k.asm["sass"]
    if args.dump:
        with open(args.dump, "w") as f:
            f.write(sass)
    body = loop_body(sass)
    ops = collections.Counter(opcode(ln) for ln in body)
    bm, bn, bk = cfg[:3]
    values_per_thread = bn * bk / (32 * cfg[3])
    print(f"cfg {cfg} decode={args.decode}: {resources(k)}, shared {k.metadata.shared} B")
    print(f"K-loop body: {len(body)} instructions per thread per K step, {values_per_thread:.0f} weight values "
          f"per thread -> {len(body) / values_per_thread:.2f} instructions per value")
    print("  " + ", ".join(f"{op} {n}" for op, n in ops.most_common(24)))


if __name__ == "__main__":
    main()
