"""GPU check and benchmark of routing (top-k, expert sort, histograms, tile maps).

    python benchmarks/bench_routing.py --out bench_routing.json [--reps 300] [--dtype bfloat16]

1. Correctness first, on the same inputs that are timed: Triton `routing` against `routing_torch`
   (indices, hist, offsets, tile maps exact; gate weights within 1 float32 ulp), eagerly and
   through a CUDA graph replayed with fresh logits copied into the captured input.
2. Timings for T in {1, 64, 4096, 16384}, E in {32, 128}, k = 4:
   - eager: wall time per call of back-to-back `routing` calls (host work, allocation and
     launches included), CUDA events around a batch, median of several batches;
   - graphed: one `routing` captured in a CUDA graph, CUDA events around each replay, median
     over many replays, with the host ahead of the GPU (`time_graph_us`: the replays are queued
     behind a sleep kernel, so the host's submission time stays out); `graph_x16` also reports a
     graph of 16 calls / 16 (no per-replay graph launch), and the JSON keeps `graph_host_paced_us`
     (events around replays submitted one by one to an idle GPU, as tables before 2026-11-23);
   - torch: `routing_torch` eagerly, same method as eager.
   Targets (SPEC section 5): graphed <= 15 us, eager <= 40 us up to 16k tokens.
3. Per-kernel GPU time (torch.profiler) for the largest shape, to show where the time goes.
Prints a markdown table and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_common import commit  # noqa: E402

from triton_kernels import routing_details, target_info  # noqa: E402
from triton_kernels.routing import routing, routing_torch  # noqa: E402

TOKENS = (1, 64, 4096, 16384)
EXPERTS = (32, 128)
TOPK = 4


# ----------------------------------------------------------------------------- correctness


def mismatches(got, ref) -> list[str]:
    rd, gi, si = got
    rd_ref, gi_ref, si_ref = ref
    bad = []
    pairs = [("gather.src_indx", gi.src_indx, gi_ref.src_indx), ("gather.dst_indx", gi.dst_indx, gi_ref.dst_indx),
             ("scatter.src_indx", si.src_indx, si_ref.src_indx), ("scatter.dst_indx", si.dst_indx, si_ref.dst_indx),
             ("expt_hist", rd.expt_hist, rd_ref.expt_hist),
             ("token_offs_raw", rd.expt_data.token_offs_raw, rd_ref.expt_data.token_offs_raw)]
    for bm in (16, 32, 64, 128):
        pairs.append((f"token_offs_pad[{bm}]", rd.expt_data.token_offs_pad[bm], rd_ref.expt_data.token_offs_pad[bm]))
        pairs.append((f"block_pid_map[{bm}]", rd.expt_data.block_pid_map[bm], rd_ref.expt_data.block_pid_map[bm]))
    for name, a, b in pairs:
        if a.dtype != torch.int32 or a.shape != b.shape or not torch.equal(a, b):
            bad.append(name)
    a, b = rd.gate_scal, rd_ref.gate_scal
    ulp = torch.nextafter(b.abs(), torch.full_like(b, math.inf)) - b.abs()
    if a.dtype != torch.float32 or a.shape != b.shape or not bool(((a - b).abs() <= ulp).all()):
        bad.append("gate_scal")
    return bad


def check_shape(n_tokens, n_expts, k, dtype, seed) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(n_tokens, n_expts, device="cuda", generator=g).to(dtype)
    ties = (torch.randint(-3, 3, (n_tokens, n_expts), device="cuda", generator=g) * 0.5).to(dtype)
    problems = {}
    for name, x in (("random", logits), ("ties", ties)):
        bad = mismatches(routing(x, k), routing_torch(x, k))
        if bad:
            problems[f"eager/{name}"] = bad
    # graph replay with new logits copied in
    static = logits.clone()
    graph, out = capture(lambda: routing(static, k), 1)
    for trial in range(2):
        fresh = torch.randn(n_tokens, n_expts, device="cuda", generator=g).to(dtype)
        static.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        bad = mismatches(out[0], routing_torch(fresh, k))
        if bad:
            problems[f"graph/replay{trial}"] = bad
    return problems


# ----------------------------------------------------------------------------- timing


def capture(fn, n_calls):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [fn() for _ in range(n_calls)]
    return graph, outs


def time_eager_us(fn, reps: int, batches: int = 7) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(batches):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) * 1000 / reps)
    return statistics.median(per_call)


def time_graph_us(fn, reps: int, n_calls: int = 1, host_ahead: bool = True) -> float:
    """Median over `reps` replays of a graph of `n_calls` calls, CUDA events around each replay,
    per call. host_ahead: the GPU first runs a sleep kernel long enough for the host to queue all
    the replays (in chunks), so each replay's events measure the GPU work and the graph's launch on
    the GPU, not how fast the host submits it (a model's step replays its graph while the host is
    ahead). Without it the GPU idles between the start event and the replay's first kernel for as
    long as the host takes to submit, 3-15 us on the lent machine, varying from run to run."""
    graph, _ = capture(fn, n_calls)
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    chunk = 50 if host_ahead else reps
    for c0 in range(0, reps, chunk):
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(min(chunk, reps - c0))]
        if host_ahead:
            torch.cuda._sleep(40_000_000)  # ~20 ms at 2 GHz: more than queueing 50 replays takes
        for start, end in events:
            start.record()
            graph.replay()
            end.record()
        torch.cuda.synchronize()
        times += [s.elapsed_time(e) * 1000 for s, e in events]
    return statistics.median(times) / n_calls


def kernel_breakdown(n_tokens, n_expts, k, dtype) -> dict:
    from torch.profiler import ProfilerActivity, profile
    logits = torch.randn(n_tokens, n_expts, device="cuda").to(dtype)
    for _ in range(5):
        routing(logits, k)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            routing(logits, k)
        torch.cuda.synchronize()
    out = {}
    for evt in prof.key_averages():
        if evt.device_type is not None and "cuda" in str(evt.device_type).lower() and evt.count:
            out[evt.key] = round(evt.device_time_total / evt.count, 2) if hasattr(evt, "device_time_total") else None
    return out


def auto_plan(n_tokens, n_expts, k=TOPK, orig=None):
    """The plan `routing` takes for this shape (`orig`: make_routing_plan, where a sweep replaces it)."""
    orig = orig or routing_details.make_routing_plan
    return orig(n_tokens, n_expts, k, 1, False, routing_details._target_programs(), routing_details.FUSED_MAX_TILES,
                False, routing_details.ROWS_PATH, routing_details._one_launch_programs())


def plan_summary(n_tokens, n_expts, k) -> dict:
    plan = auto_plan(n_tokens, n_expts, k)
    return dict(fused=plan.fused, rows_q=plan.rows_q, one_launch=plan.one_launch, block_t=plan.block_t,
                n_iter=plan.n_iter, topk_programs=plan.n_parts, num_warps=plan.num_warps,
                place_programs=0 if plan.fused else plan.n_place_programs, place_warps=plan.place_warps, reg_softmax=plan.reg_softmax, workspace_int32=plan.total)


def sweep_rows_variants(tp: int) -> dict:
    """The rows path (`routing_rows_kernel`, 4 threads per row): rows per program x placement
    warps or one launch, and the old split plan."""
    orig = routing_details.make_routing_plan
    cases = {}
    for n_tokens, n_expts in ((16384, 128), (4096, 128), (1024, 128), (256, 128)):
        v = [("auto", auto_plan(n_tokens, n_expts, orig=orig)),
             ("old split", orig(n_tokens, n_expts, TOPK, 1, False, tp, routing_details.FUSED_MAX_TILES, False, False))]
        for rows in (16, 32, 64, 128):
            if n_tokens // rows > 4 * tp or n_tokens < rows:
                continue
            if -(-n_tokens // rows) <= routing_details._one_launch_programs():
                v.append((f"rows={rows} one launch", routing_details._rows_plan(
                    n_tokens, n_expts, TOPK, 1, rows, routing_details.ROWS_Q, one_launch=True)))
            for pw, ppp in ((4, 1), (8, 1), (4, 2)):
                plan = routing_details._rows_plan(n_tokens, n_expts, TOPK, 1, rows, routing_details.ROWS_Q, pw, ppp)
                v.append((f"rows={rows} place_warps={pw} parts_per_place={ppp} part_rows={plan.part_rows}", plan))
        cases[(n_tokens, n_expts)] = v
    for n_tokens in (8, 16, 32, 64, 128, 256):  # fused (one program) against split, small T
        for n_expts in (32, 128):
            v = [("auto", auto_plan(n_tokens, n_expts, orig=orig)),
                 ("fused", orig(n_tokens, n_expts, TOPK, 1, False, tp, 1 << 30)),
                 ("split", orig(n_tokens, n_expts, TOPK, 1, False, tp, 0))]
            cases[(n_tokens, n_expts)] = v
    return cases


def sweep_variants(tp: int, focused: bool = False) -> dict:
    """Plan variants per shape: the fused kernel's warps and softmax placement; the split path's
    top-k tiling (rows per tile, warps, tiles per program) and placement grouping and warps.
    focused: only the placement knobs around the default plan at E = 128."""
    import dataclasses
    R = dataclasses.replace
    split = routing_details._split_plan
    orig = routing_details.make_routing_plan
    cases = {}
    if focused:
        for n_tokens in (4096, 16384):
            auto = orig(n_tokens, 128, TOPK, 1, False, tp, routing_details.FUSED_MAX_TILES)
            v = [("auto", auto_plan(n_tokens, 128, orig=orig))]
            for ppp, pw in ((1, 4), (1, 8), (2, 8)):
                base = split(n_tokens, 128, TOPK, 1, auto.block_t, auto.n_iter, auto.num_warps, ppp, pw)
                for tb in (4, 8, 32):
                    v.append((f"split bt={auto.block_t} nw={auto.num_warps} it={auto.n_iter} place/{ppp} pw={pw} "
                              f"map_block={tb}", R(base, tile_block=tb)))
            cases[(n_tokens, 128)] = v
        return cases
    for n_tokens, n_expts in ((64, 32), (64, 128), (4096, 32), (4096, 128), (16384, 32), (16384, 128)):
        auto = orig(n_tokens, n_expts, TOPK, 1, False, tp, routing_details.FUSED_MAX_TILES)
        v = [("auto", auto_plan(n_tokens, n_expts, orig=orig))]
        if n_tokens <= 64:
            f = orig(n_tokens, n_expts, TOPK, 1, False, tp, 1 << 30)
            for nw in (4, 8, 16):
                for reg in (False, True):
                    v.append((f"fused nw={nw} reg_softmax={reg}", R(f, num_warps=nw, reg_softmax=reg,
                                                                    place_rows=min(64, 32 * nw))))
        else:
            for bt, nw in ((16, 2), (16, 4), (32, 4), (32, 8), (64, 8), (64, 16), (128, 16)):
                if bt * n_expts > 16384 or bt * n_expts < 1024:
                    continue
                tiles = -(-n_tokens // bt)
                for n_iter in sorted({1, 2, 4, 8}):
                    parts = -(-tiles // n_iter)
                    if parts > 2 * tp or parts < tp // 2:
                        continue
                    for ppp, pw in ((1, 4), (1, 8), (2, 8)):
                        if ppp > 1 and parts < 2 * tp:
                            continue
                        v.append((f"split bt={bt} nw={nw} it={n_iter} P={parts} place/{ppp} pw={pw}",
                                  split(n_tokens, n_expts, TOPK, 1, bt, n_iter, nw, ppp, pw)))
        cases[(n_tokens, n_expts)] = v
    return cases


def time_variant(logits, reps: int, kind: str, name: str) -> dict:
    """One sweep entry under whatever plan or switches are set now: checked against routing_torch,
    then timed graphed (1 and 16 calls per graph); a variant that fails is reported, not fatal."""
    try:
        bad = mismatches(routing(logits, TOPK), routing_torch(logits, TOPK))
        g1 = time_graph_us(lambda: routing(logits, TOPK), reps)
        g16 = time_graph_us(lambda: routing(logits, TOPK), max(20, reps // 8), 16)
    except Exception as exc:
        bad, g1, g16 = [f"{type(exc).__name__}: {str(exc)[:200]}"], float("nan"), float("nan")
    n_tokens, n_expts = logits.shape
    print(f"  {kind} T={n_tokens} E={n_expts} {name}: graph {g1:.1f} us, x16 {g16:.1f} us {bad or ''}", flush=True)
    return dict(T=n_tokens, E=n_expts, variant=name, bad=bad, graph_us=g1, graph_x16_us=g16)


def sweep_flags(dtype, reps: int) -> list[dict]:
    """The rows path's one launch against two (the placement a programmatic dependent launch or
    not), and the split path against the fused one at T = 64."""
    out = []
    flags = [dict(ONE_LAUNCH=True, ONE_LAUNCH_MAX_WARPS=16, PDL=True), dict(ONE_LAUNCH=False, PDL=True),
             dict(ONE_LAUNCH=False, PDL=False)]
    default = routing_details.FUSED_MAX_TILES
    shapes = [(n_tokens, n_expts, default) for n_tokens in (1024, 4096, 16384) for n_expts in (32, 128)]
    shapes += [(64, n_expts, fused_max) for n_expts in (32, 128) for fused_max in (default, 0)]
    saved = {name: getattr(routing_details, name)
             for name in ("ONE_LAUNCH", "ONE_LAUNCH_MAX_WARPS", "PDL", "FUSED_MAX_TILES")}
    for n_tokens, n_expts, fused_max in shapes:
        logits = torch.randn(n_tokens, n_expts, device="cuda").to(dtype)
        for f in flags if n_tokens > 64 or fused_max == 0 else flags[:1]:
            for name, value in dict(f, FUSED_MAX_TILES=fused_max).items():
                setattr(routing_details, name, value)
            routing_details.make_routing_plan.cache_clear()  # ONE_LAUNCH_MAX_WARPS is read when a plan is made
            try:
                name = " ".join(f"{k}={v}" for k, v in f.items()) + f" fused_max_tiles={fused_max}"
                out.append(time_variant(logits, reps, "flags", name))
            finally:
                for name, value in saved.items():
                    setattr(routing_details, name, value)
                routing_details.make_routing_plan.cache_clear()
    return out


def sweep(dtype, reps: int, focused: bool = False, rows: bool = False) -> list[dict]:
    """Each plan variant is checked against routing_torch, then timed graphed (1 and 16 calls per graph)."""
    orig = routing_details.make_routing_plan
    tp = routing_details._target_programs()
    out = []
    cases = sweep_rows_variants(tp) if rows else sweep_variants(tp, focused)
    for (n_tokens, n_expts), variants in cases.items():
        logits = torch.randn(n_tokens, n_expts, device="cuda").to(dtype)
        for name, plan in variants:
            routing_details.make_routing_plan = lambda *a, _p=plan, **kw: _p
            try:
                out.append(time_variant(logits, reps, "sweep", name))
            finally:
                routing_details.make_routing_plan = orig
    if rows:
        return out
    import cProfile
    import io
    import pstats
    logits = torch.randn(1, 128, device="cuda").to(dtype)
    for _ in range(20):
        routing(logits, TOPK)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        routing(logits, TOPK)
    prof.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
    print("\n".join(line[:150] for line in buf.getvalue().splitlines()[6:32]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_routing.json")
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--sweep", action="store_true", help="also time plan variants (tuning)")
    parser.add_argument("--sweep-only", action="store_true", help="only the variant sweep")
    parser.add_argument("--sweep-place", action="store_true", help="also time placement variants at E = 128")
    parser.add_argument("--sweep-rows", action="store_true", help="also time the rows path's tilings")
    parser.add_argument("--sweep-flags", action="store_true", help="also time the split path's launch switches")
    args = parser.parse_args()
    if args.sweep_only:
        swept = sweep(getattr(torch, args.dtype), 100)
        with open(args.out, "w") as f:
            json.dump(dict(sweep=swept), f, indent=2)
        return 0
    if not torch.cuda.is_available():
        print("bench_routing: needs a CUDA GPU", file=sys.stderr)
        return 2
    target = target_info.get_target()
    dtype = getattr(torch, args.dtype)
    import triton
    meta = dict(device=torch.cuda.get_device_name(), variant=target.variant, torch=torch.__version__,
                triton=triton.__version__, commit=commit(), dtype=args.dtype, k=TOPK, reps=args.reps)
    print(f"# routing on {meta['device']} (torch {meta['torch']}, triton {meta['triton']}, commit {meta['commit']}), "
          f"{args.dtype} logits, k={TOPK}")

    rows, all_ok = [], True
    for n_expts in EXPERTS:
        for n_tokens in TOKENS:
            problems = check_shape(n_tokens, n_expts, TOPK, dtype, seed=n_tokens * 131 + n_expts)
            all_ok &= not problems
            logits = torch.randn(n_tokens, n_expts, device="cuda").to(dtype)
            row = dict(T=n_tokens, E=n_expts, k=TOPK, correct=not problems, problems=problems,
                       eager_us=time_eager_us(lambda: routing(logits, TOPK), args.reps // 3),
                       graph_us=time_graph_us(lambda: routing(logits, TOPK), args.reps),
                       graph_x16_us=time_graph_us(lambda: routing(logits, TOPK), max(20, args.reps // 8), 16),
                       graph_host_paced_us=time_graph_us(lambda: routing(logits, TOPK), args.reps, host_ahead=False),
                       torch_us=time_eager_us(lambda: routing_torch(logits, TOPK), max(10, args.reps // 10), 5),
                       plan=plan_summary(n_tokens, n_expts, TOPK))
            rows.append(row)
            print(f"  T={n_tokens} E={n_expts}: ok={row['correct']} eager {row['eager_us']:.1f} us, "
                  f"graph {row['graph_us']:.1f} us ({row['graph_x16_us']:.1f} in a 16-call graph, "
                  f"{row['graph_host_paced_us']:.1f} host-paced), "
                  f"torch {row['torch_us']:.1f} us {problems or ''}", flush=True)

    breakdown = kernel_breakdown(max(TOKENS), max(EXPERTS), TOPK, dtype)
    swept = sweep(dtype, 100) if args.sweep else sweep(dtype, 100, focused=True) if args.sweep_place else []
    if args.sweep_rows:
        swept += sweep(dtype, 100, rows=True)
    if args.sweep_flags:
        swept += sweep_flags(dtype, 200)
    print("\n| T | E | k | check | eager (µs) | graphed (µs) | graphed, 16 per graph (µs) | routing_torch (µs) |"
          " eager ≤ 40 | graphed ≤ 15 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['T']} | {r['E']} | {r['k']} | {'ok' if r['correct'] else 'FAIL'} | {r['eager_us']:.1f} | "
              f"{r['graph_us']:.1f} | {r['graph_x16_us']:.1f} | {r['torch_us']:.1f} | "
              f"{'yes' if r['eager_us'] <= 40 else 'no'} | {'yes' if r['graph_us'] <= 15 else 'no'} |")
    print(f"\nper-kernel GPU time (us per call) at T={max(TOKENS)}, E={max(EXPERTS)}: {breakdown}")
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows, kernel_breakdown=breakdown, sweep=swept), f, indent=2)
    print(f"wrote {args.out}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
