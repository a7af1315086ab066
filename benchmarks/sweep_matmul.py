"""Focused launch-config / main-loop sweep of matmul_ogs on the gpt-oss MoE shapes (one GPU run).

    python benchmarks/sweep_matmul.py --out sweep.json [--budget-s 300] [--shapes 32x1,32x4096] [--candidates fill]

For each shape (E experts, T tokens, top-4, default weight layouts) and each matmul (gate_up:
gathered + SwiGLU; down: scattered + gammas) it runs every candidate MatmulConfig once on a
NaN-poisoned output, checks that every element was written and that the result matches the
unswapped byte-decoder main loop's output on the same weights in raw strided form (checked
against float64 by the tests) to 1e-2, and
only then times it (medians of CUDA-graph replays at every T: eager timing measured the host where
the kernels are shorter than its work, see NOTES_matmul_perf.md section 15). It also records
each compiled kernel's registers, spills, shared memory and whether its PTX uses wgmma.
Prints a table of the best configs per shape last; writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

from bench_matmul import HIDDEN, INTER, TOPK, Layer, cold_logits, rel_err, routing, weight_bytes  # noqa: E402
from triton_kernels.matmul_ogs import MatmulConfig  # noqa: E402
from triton_kernels.matmul_ogs_details import _kernels  # noqa: E402
from triton_kernels.matmul_ogs_details.configs import choose_config  # noqa: E402

C = MatmulConfig


# The default (Hopper) value layout is read by the nibble-quads decoder alone (MatmulConfig.decode
# does not apply to it), so candidates differ in tiles, warps, stages and K splits.
DECODE = [C(16, 64, 128, 1, 4, 4, True), C(16, 64, 128, 1, 4, 3, True), C(16, 64, 256, 1, 4, 3, True),
          C(16, 64, 256, 1, 4, 4, True), C(16, 128, 128, 1, 4, 3, True), C(16, 128, 256, 1, 4, 3, True),
          C(16, 128, 256, 1, 8, 3, True), C(16, 64, 512, 1, 4, 3, True)] + [
    # deeper pipelines: more weight bytes in flight per SM when the weights come from DRAM (--cold)
    C(16, 64, 256, 1, 4, 5, True), C(16, 64, 256, 1, 4, 6, True), C(16, 64, 128, 1, 4, 6, True),
    C(16, 64, 128, 1, 4, 8, True), C(16, 128, 256, 1, 4, 4, True), C(16, 64, 512, 1, 4, 4, True)] + [
    C(16, 64, 256, 1, 4, 5, True, "ptx", split) for split in (2, 3)] + [
    C(16, 64, 128, 1, 4, 4, True, "ptx", split) for split in (2, 3, 4)] + [
    C(16, 64, 256, 1, 4, 3, True, "ptx", split) for split in (2, 3, 4)] + [
    C(16, 128, 256, 1, 4, 3, True, "ptx", split) for split in (2, 4, 8)] + [
    C(16, 128, 128, 1, 4, 4, True, "ptx", split) for split in (2, 4)]
PREFILL = [C(128, 256, 64, 8, 8, 3, True), C(128, 128, 64, 8, 4, 4, True), C(128, 128, 128, 8, 4, 3, True),
           C(128, 128, 128, 8, 8, 3, True), C(128, 256, 128, 8, 8, 3, True),
           C(256, 128, 64, 8, 8, 3, True), C(256, 128, 128, 8, 8, 3, True), C(256, 64, 128, 8, 4, 3, True),
           C(256, 128, 64, 8, 8, 4, True), C(256, 256, 64, 8, 8, 3, True)]
MID = [C(64, 64, 128, 8, 4, 3, True), C(64, 128, 128, 8, 4, 3, True), C(64, 128, 256, 8, 4, 3, True),
       C(64, 256, 64, 8, 8, 3, True), C(64, 128, 128, 8, 8, 3, True), C(64, 256, 128, 8, 8, 3, True),
       C(64, 64, 256, 8, 4, 3, True)]


# Tile heights against how full the row tiles are (NOTES_matmul_perf.md section 11): a tile decodes
# its whole weight slab whatever its row count, so one taller tile per expert, or tiles sized per
# expert (MatmulConfig.tail: chunks of block_m rows, short last chunks by a second launch), may beat
# the height that the mean rows per expert picks.
FILL_DECODE = [C(32, 64, 128, 4, 4, 3, True), C(32, 64, 256, 1, 4, 3, True),
               C(32, 64, 128, 4, 4, 3, True, tail=C(16, 64, 256, 1, 4, 3, True)),
               C(32, 64, 256, 1, 4, 3, True, tail=C(16, 64, 256, 1, 4, 3, True)),
               C(64, 64, 128, 8, 4, 3, True, tail=C(32, 64, 128, 4, 4, 3, True)),
               C(64, 64, 256, 8, 4, 3, True, tail=C(32, 64, 256, 1, 4, 3, True))]
FILL_MID = [C(128, 128, 64, 8, 4, 4, True), C(128, 128, 128, 8, 8, 3, True),
            C(128, 128, 64, 8, 4, 4, True, tail=C(64, 128, 128, 8, 4, 3, True)),
            C(128, 128, 64, 8, 4, 4, True, tail=C(64, 256, 64, 8, 8, 3, True)),
            # the shipped 64-row tiles with short tails: less padded MMA work where it is not hidden
            C(64, 128, 128, 8, 8, 3, True, tail=C(32, 64, 128, 4, 4, 3, True)),
            C(64, 128, 128, 8, 4, 3, True, tail=C(32, 64, 256, 1, 4, 3, True)),
            C(64, 128, 128, 8, 8, 3, True, tail=C(16, 64, 256, 1, 4, 3, True))]
FILL_PREFILL = [C(256, 128, 64, 8, 8, 3, True), C(256, 128, 64, 8, 8, 3, True, tail=C(128, 128, 64, 8, 4, 4, True)),
                C(256, 128, 64, 8, 8, 3, True, tail=C(64, 128, 128, 8, 4, 3, True)),
                C(128, 128, 64, 8, 4, 4, True, tail=C(64, 128, 128, 8, 4, 3, True)),
                C(128, 128, 64, 8, 4, 4, True, tail=C(32, 64, 128, 4, 4, 3, True)),
                C(128, 128, 64, 8, 4, 4, True, tail=C(32, 64, 256, 1, 4, 3, True))]

# Decode tiles on 1-2 warps: Triton then takes mma.sync instead of wgmma (no warp-group fences or
# descriptor work per MMA; offline 3.24-3.55 SASS per weight value against 3.73, NOTES section 17)
SMALL_WARPS = [C(16, 64, 256, 1, 2, 3, True), C(16, 64, 256, 1, 2, 4, True), C(16, 64, 128, 1, 2, 4, True),
               C(16, 128, 256, 1, 2, 3, True), C(16, 32, 256, 1, 1, 3, True), C(16, 32, 256, 1, 1, 4, True),
               C(16, 64, 256, 1, 1, 3, True), C(16, 64, 256, 1, 2, 3, True, "ptx", 2),
               C(16, 32, 256, 1, 1, 3, True, "ptx", 2), C(16, 64, 256, 1, 2, 4, True, "ptx", 2)]


# 128-row tiles on 8 warps: each warp group decodes its own 64 weight columns (no decode twice) and
# holds half the accumulator, so 126 registers let two programs (16 warps) share an SM, against 8
# warps for the 4-warp 128-row tile (238 registers) and the 8-warp 256-row tile (226, one per SM)
# (down's epilogue takes it to 152, one program per SM, unless capped at 128); at 64 rows per expert
# the 8-warp 64-row tile capped at 80 registers fits three programs per SM
OCCUPANCY = [C(128, 128, 64, 8, 8, 4, True), C(128, 128, 64, 8, 8, 3, True),
             C(128, 128, 64, 8, 8, 4, True, max_registers=128)] + [
    C(128, 128, 64, 8, 8, 4, True, max_registers=128, tail=tail)
    for tail in (C(32, 64, 128, 4, 4, 3, True), C(32, 64, 256, 1, 4, 3, True), C(64, 128, 128, 8, 4, 3, True))] + [
    C(64, 128, 128, 8, 8, 3, True, max_registers=80)]


# K splits of the shipped decode tile (and two neighbours): gate_up's splits are finished by their
# last split in the launch (FINISH_IN_LAUNCH), down's by the in-launch top-k sum (NOTES section 23)
SPLITS = [C(16, 64, 256, 1, 4, 3, True, "ptx", split) for split in (1, 2, 3, 4)] + [
    C(16, 64, 128, 1, 4, 4, True, "ptx", split) for split in (2, 4)] + [
    C(16, 128, 256, 1, 4, 3, True, "ptx", split) for split in (2, 4)]


# Register caps (MatmulConfig.max_registers): more programs per SM where registers limit them. The
# decode tile (128 registers: 4 programs of 4 warps per SM) fits 5 at 96 without spills (offline
# sm_90a: 95 registers, K loop 441 -> 446 instructions); the 16-row-per-expert gate_up tile
# (86: 5 per SM) fits 6 at 80 (258 -> 265). The decode down tile spills at 96, so it is left out.
REGS = [C(16, 64, 256, 1, 4, 3, True, max_registers=96),
        C(32, 64, 128, 4, 4, 3, True, max_registers=80, tail=C(16, 64, 256, 1, 4, 3, True, max_registers=96)),
        C(32, 64, 128, 4, 4, 3, True, tail=C(16, 64, 256, 1, 4, 3, True, max_registers=96))]


def candidates(rows_per_expt, which="all"):
    if which == "warps":
        return SMALL_WARPS
    if which == "regs":
        return REGS if rows_per_expt > 14 else REGS[:1]
    if which == "splits":
        return SPLITS
    if which == "occupancy":
        return OCCUPANCY
    if rows_per_expt <= 16:
        regime, fill = DECODE, FILL_DECODE
    elif rows_per_expt <= 32:  # between the regimes: the 32-row default against decode-style tiles and tails
        regime, fill = MID, FILL_DECODE
    elif rows_per_expt <= 64:
        regime, fill = MID, FILL_MID
    else:
        regime, fill = PREFILL, FILL_PREFILL
    return fill if which == "fill" else regime + [c for c in fill if c not in regime]


def _caches():
    fn = _kernels._matmul_ogs_kernel
    for dev_cache in getattr(fn, "device_caches", {}).values():
        yield dev_cache[0] if isinstance(dev_cache, tuple) else dev_cache


def kernel_keys():
    return {str(key) for cache in _caches() for key in cache}


def kernel_stats(keys):
    """Resources of the compiled _matmul_ogs_kernel entries named in `keys`."""
    out = {}
    for cache in _caches():
        for key, k in cache.items():
            if str(key) not in keys:
                continue
            try:
                ptx = k.asm.get("ptx", "")
                st = {"regs": k.n_regs, "spills": k.n_spills, "shared": k.metadata.shared,
                      "wgmma": ptx.count("wgmma.mma_async"), "mma_sync": ptx.count("mma.sync")}
                try:
                    sass = k.asm["sass"]
                    st.update(HGMMA=sass.count("HGMMA"), HMMA=sass.count("HMMA"), LDL=sass.count("LDL"),
                              LDS=sass.count("LDS"), STS=sass.count("STS"), LDGSTS=sass.count("LDGSTS"),
                              LDG=sass.count("LDG"))
                except Exception as exc:  # noqa: BLE001
                    st["sass"] = str(exc)[:60]
            except Exception as exc:  # noqa: BLE001
                st = {"error": str(exc)[:100]}
            out[str(key)] = st
    return out


def cold_routings(n_tokens, n_expts, n_sets):
    """n_sets routings whose experts change from one to the next (bench_matmul.cold_logits), so timing
    them back to back reads the weights from DRAM."""
    return [routing(cold_logits(n_tokens, n_expts, i), TOPK) for i in range(n_sets)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="sweep.json")
    ap.add_argument("--budget-s", type=float, default=300)
    ap.add_argument("--shapes", default="32x1,32x4096,32x64,128x64,128x4096,32x512")
    ap.add_argument("--cold-sets", type=int, default=8,
                    help="for T <= 8, time R calls in one graph, each routed to other experts (weights read "
                         "from DRAM as in a model of many layers, not from L2); 0: one repeated call")
    ap.add_argument("--candidates", choices=["all", "fill", "warps", "splits", "regs", "occupancy"], default="all",
                    help="fill: only the default config and the tile-height / tiles-per-expert candidates; "
                         "warps: the default and decode tiles on 1-2 warps (mma.sync); "
                         "splits: the decode tile with 1-4 K splits; regs: register caps (more programs per SM); "
                         "occupancy: 128-row tiles on 8 warps (two programs per SM)")
    args = ap.parse_args()
    t_start = time.time()
    buf = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(buf)
    bw = 2 * (1 << 30) / (do_bench(lambda: dst.copy_(buf), warmup=10, rep=50, return_mode="median") * 1e-3)
    del buf, dst
    rate = 700e12  # measured dense bf16 on this H100 (bench_matmul); floors below use it
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    report = {"bandwidth": bw, "rate": rate, "rows": []}
    summary = []
    layers = {}
    for shape in args.shapes.split(","):
        n_expts, n_tokens = map(int, shape.split("x"))
        if n_expts not in layers:
            layers.clear()
            torch.cuda.empty_cache()
            layers[n_expts] = (Layer(n_expts, "default"), Layer(n_expts, "raw"))  # same seed: same weights
            layers[n_expts][1].b1, layers[n_expts][1].b2 = layers[n_expts][0].b1, layers[n_expts][0].b2
        layer, raw_layer = layers[n_expts]
        torch.manual_seed(n_tokens)
        x = torch.randn(n_tokens, HIDDEN, device="cuda").bfloat16()
        rd, gi, si = routing(torch.randn(n_tokens, n_expts, device="cuda"), TOPK)
        n_hit = int((rd.expt_hist > 0).sum().item())
        rows = n_tokens * TOPK
        rpe = rows / n_expts
        # reference outputs: the unswapped byte-decoder main loop on the raw weights (checked vs float64 by the tests)
        bm = 16 if rpe <= 16 else 64 if rpe <= 64 else 128
        ref_cfg = {16: C(16, 64, 256, 1, 4, 4), 64: C(64, 128, 128, 8, 4, 3), 128: C(128, 128, 128, 8, 8, 3)}[bm]
        h_ref = raw_layer.gate_up(x, rd, gi, config=ref_cfg)
        out_ref = raw_layer.down(h_ref, rd, si, config=ref_cfg)
        h = torch.empty_like(h_ref)
        out = torch.empty_like(out_ref)
        cold = cold_routings(n_tokens, n_expts, args.cold_sets) if n_tokens <= 8 and args.cold_sets else []
        for name, k, n in (("gate_up", HIDDEN, 2 * INTER), ("down", INTER, HIDDEN)):
            floor = max(n_hit * weight_bytes(k, n) / bw, 2 * rows * k * n / rate)
            dflt = choose_config(rpe, n, k, True, 2 if name == "gate_up" else 1, nibble_quads=True)
            results = []
            for cfg in [dflt] + candidates(rpe, args.candidates):
                if time.time() - t_start > args.budget_s:
                    break
                if name == "gate_up":
                    fn = lambda c=cfg: layer.gate_up(x, rd, gi, y=h, config=c)  # noqa: E731
                    dst_, ref_ = h, h_ref
                else:
                    fn = lambda c=cfg: layer.down(h_ref, rd, si, y=out, config=c)  # noqa: E731
                    dst_, ref_ = out, out_ref
                before = kernel_keys()
                rec = {"E": n_expts, "T": n_tokens, "mm": name, "cfg": str(cfg), "floor_us": floor * 1e6}
                try:
                    dst_.fill_(float("nan"))
                    fn()
                    torch.cuda.synchronize()
                    written = not dst_.isnan().any().item()
                    err = rel_err(dst_, ref_)
                    rec.update(written=written, err=err, ok=written and err <= 1e-2)
                    new = kernel_stats(kernel_keys() - before)
                    if new:
                        rec["kernel"] = list(new.values())[0]
                    if rec["ok"]:
                        if cold:
                            if name == "gate_up":
                                calls = [lambda c=cfg, r=r: layer.gate_up(x, r[0], r[1], y=h, config=c) for r in cold]
                            else:
                                calls = [lambda c=cfg, r=r: layer.down(h_ref, r[0], r[2], y=out, config=c) for r in cold]
                            rec["us_warm"] = do_bench_cudagraph(fn, rep=30, return_mode="median") * 1e3
                            t = do_bench_cudagraph(lambda: [f() for f in calls], rep=30,
                                                   return_mode="median") * 1e-3 / len(calls)
                        else:
                            # graphed at every T: timed eagerly, a call whose kernels take less than
                            # its host work (~0.1-0.2 ms per matmul_ogs call, more with two launches)
                            # measured the host (down at E = 32, T = 512: 363 us eager, 150 graphed)
                            t = do_bench_cudagraph(fn, rep=30, return_mode="median") * 1e-3
                        rec["us"] = t * 1e6
                        rec["ratio"] = floor / t
                except Exception as exc:  # noqa: BLE001
                    rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
                results.append(rec)
                report["rows"].append(rec)
                print(json.dumps(rec), flush=True)
            timed = [r for r in results if "us" in r]
            if timed:
                best = min(timed, key=lambda r: r["us"])
                base = results[0].get("us", float("nan"))
                summary.append(f"E={n_expts:3d} T={n_tokens:5d} {name:7s} floor {floor * 1e6:7.1f} default {base:8.1f} "
                               f"best {best['us']:8.1f} ({best['ratio']:.2f}) {best['cfg']} {best.get('kernel', {})}")
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
    print("\n".join(summary))
    print(f"elapsed {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
