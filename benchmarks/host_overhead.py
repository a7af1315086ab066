"""Host (CPU) cost per eager call of routing and matmul_ogs on the gpt-oss MoE layer (GPU machine).

    python benchmarks/host_overhead.py [--experts 32] [--tokens 1] [--profile] [--stub]

Eager callers (transformers' generate) pay the Python work and the Triton launches of every call;
when that exceeds the GPU time the GPU idles. This times back-to-back calls on the host clock
(no synchronisation inside a batch; the queue is drained before and after each) in several
batches and reports the fastest batch and the median (the GPU host's timings vary up to 2x from
run to run: the minimum is the figure to compare, the empty torch op shows how fast the host was),
and, with --profile, prints the cProfile entries of the gate_up and down call sites. gate_up and
down are timed again with matmul_ogs.FAST_LAUNCH off (every launch through Triton's JIT).

--stub: the same calls on a machine without a GPU (TRITON_INTERPRET unset), to measure the host
work of the CUDA path anywhere. The probe says Hopper (132 SMs) and ops run "Triton" on CPU tensors;
Triton's JIT returns a compiled-kernel stand-in whose launcher does nothing, so the direct relaunch
(`_fast_launch`), the counters, configs, layouts (Hopper's) and checks run as on the GPU. It
cannot see: the CUDA caching allocator (torch.empty on CPU costs less), the stream and capture
queries (the stub driver answers 0 at once, and CPU tensors skip the capture query), the C
launcher's argument parsing and the driver's launch, and the JIT's own per-call work (its rows are
not measured). Compare stub numbers only with stub numbers.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import os
import pstats
import statistics
import sys
import time
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_matmul import HIDDEN, INTER, TOPK, Layer, as_layout  # noqa: E402
from triton_kernels import matmul_ogs as matmul_ogs_module  # noqa: E402
from triton_kernels import target_info  # noqa: E402
from triton_kernels.routing import routing  # noqa: E402

sync = torch.cuda.synchronize  # a no-op under --stub


def host_us(fn, batches: int = 15, n: int = 40) -> tuple[float, float]:
    """(fastest, median) host time per call over `batches` batches of n back-to-back calls, µs."""
    for _ in range(10):
        fn()
    per_call = []
    for _ in range(batches):
        sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter() - t) / n * 1e6)
    sync()
    return min(per_call), statistics.median(per_call)


class _StubCompiled:
    """What Triton's JIT returns for a compiled CUDA kernel, with a launcher that does nothing."""

    packed_metadata = ()
    function = 0

    def run(self, *launch_args):
        pass

    def launch_metadata(self, grid, stream, *values):
        return None


class _StubDriver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 0


def stub_cuda() -> None:
    """Make this CPU-only process take the CUDA path of the ops (see the module docstring)."""
    import functools

    from triton.runtime import driver
    from triton.runtime.jit import JITFunction
    global sync
    if torch.cuda.is_available() or target_info.get_target().interpreter:
        raise SystemExit("--stub runs on a machine without a GPU, with TRITON_INTERPRET unset")
    hopper = dataclasses.replace(target_info.get_target(), variant="hopper", capability=(9, 0), num_sms=132)
    target_info.get_target = functools.lru_cache(maxsize=1)(lambda: hopper)
    target_info.runs_triton = lambda device=None: device is None or torch.device(device).type == "cpu"
    driver.set_active(_StubDriver())
    compiled = _StubCompiled()
    JITFunction.run = lambda self, *args, grid, warmup, **kwargs: compiled
    sync = _no_sync
    from triton_kernels import routing_details
    own_launch = routing_details._launch  # routing's own relaunch caches only for a CUDA device

    def routing_launch(fn, n_programs, key, args, consts, num_warps, device, **kwargs):
        own_launch(fn, n_programs, key, args, consts, num_warps, types.SimpleNamespace(type="cuda", index=0), **kwargs)

    routing_details._launch = routing_launch


def _no_sync():
    pass


def stub_layer(n_expts: int) -> Layer:
    """bench_matmul.Layer's weights (the default layouts: Hopper's under --stub) on the CPU."""
    layer = Layer.__new__(Layer)
    layer.n_expts = n_expts
    g = torch.Generator().manual_seed(0)
    weights = []
    for k, n in ((HIDDEN, 2 * INTER), (INTER, HIDDEN)):
        codes = torch.randint(0, 256, (n_expts, n, k // 2), generator=g, dtype=torch.uint8).transpose(1, 2)
        scales = torch.randint(118, 125, (n_expts, n, k // 32), generator=g, dtype=torch.uint8).transpose(1, 2)
        weights.append(as_layout(codes, scales, "default"))
    (layer.w1, ws1), (layer.w2, ws2) = weights
    layer.b1, layer.b2 = torch.randn(n_expts, 2 * INTER), torch.randn(n_expts, HIDDEN)
    layer.pc1, layer.pc2 = (matmul_ogs_module.PrecisionConfig(weight_scale=ws1),
                            matmul_ogs_module.PrecisionConfig(weight_scale=ws2))
    return layer


def report(args, name: str, fn) -> None:
    fastest, median = host_us(fn)
    print(f"E={args.experts} T={args.tokens} {name:15s} host {fastest:8.1f} us per call (median of batches "
          f"{median:.1f})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--stub", action="store_true", help="CPU-only machine: Triton launches stubbed (docstring)")
    args = ap.parse_args()
    if args.stub:
        stub_cuda()
    dev = "cpu" if args.stub else "cuda"
    layer = stub_layer(args.experts) if args.stub else Layer(args.experts, "default")
    x = torch.randn(args.tokens, HIDDEN, device=dev).bfloat16()
    logits = torch.randn(args.tokens, args.experts, device=dev).bfloat16()
    rd, gi, si = routing(logits, TOPK)
    h = layer.gate_up(x, rd, gi)
    out = layer.down(h, rd, si)
    rows = {
        "routing": lambda: routing(logits, TOPK),
        "gate_up": lambda: layer.gate_up(x, rd, gi, y=h),
        "down": lambda: layer.down(h, rd, si, y=out),
        "empty torch op": lambda: torch.empty(1, device=dev),
    }

    def layer_call():  # what transformers' eager forward runs per MoE layer
        rd_, gi_, si_ = routing(logits, TOPK)
        return layer.down(layer.gate_up(x, rd_, gi_), rd_, si_)

    rows["layer"] = layer_call
    for name, fn in rows.items():
        report(args, name, fn)
    matmul_ogs_module.FAST_LAUNCH = False  # A/B: every matmul_ogs launch through Triton's JIT
    for name in ("gate_up", "down") if not args.stub else ():  # the stub's JIT does nothing
        report(args, name + " (JIT)", rows[name])
    matmul_ogs_module.FAST_LAUNCH = True
    if args.profile:
        for name in ("gate_up", "down"):
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(100):
                rows[name]()
            prof.disable()
            sync()
            print(f"--- cProfile, 100 {name} calls")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
