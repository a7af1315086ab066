"""A/B timing of module switches on the gpt-oss MoE layer, in one process (H100).

    python benchmarks/ab_switches.py --switch routing_details.ONE_LAUNCH,routing_details.PDL \
        [--experts 32,128] [--tokens 1,8,64] [--layout default] [--rounds 2] [--profile] [--out ab.json]

For every shape it times the graphed layer (routing + gate_up + down, bench_moe's method: at shapes
where one call's experts would stay in L2, COLD_SETS calls routed to different experts back to back)
once per variant, in rounds that alternate the variants so that drift between them shows: variant
"on" leaves the switches as the package ships them, "off" sets every listed switch to False, and
"only:<name>" keeps just that one on. The check before timing is bench_matmul.check (NaN-poisoned
outputs, float64 MoE) at T = 1 and 512 under every variant. --profile also prints each kernel's GPU
time per layer call under every variant (torch.profiler over replays of the captured layer).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_matmul as bm  # noqa: E402
import bench_moe  # noqa: E402

from triton_kernels.routing import routing  # noqa: E402


def _switches(spec: str) -> list[tuple[object, str]]:
    out = []
    for item in spec.split(","):
        module, _, name = item.rpartition(".")
        try:
            mod = importlib.import_module(f"triton_kernels.{module}")
        except ImportError:
            mod = None
        if not module or mod is None or not isinstance(getattr(mod, name, None), bool):
            raise SystemExit(f"ab_switches: --switch {item!r} is not a bool switch of triton_kernels "
                             "(module.NAME, e.g. matmul_ogs.K_TAIL_64_STEPS)")
        out.append((mod, name))
    return out


def _variants(switches) -> dict[str, dict]:
    shipped = {(m, n): getattr(m, n) for m, n in switches}
    variants = {"on": shipped, "off": {key: False for key in shipped}}
    if len(switches) > 1:
        for m, n in switches:
            variants[f"only:{n}"] = {key: key == (m, n) and shipped[key] for key in shipped}
    return variants


def _apply(setting: dict) -> None:
    for (mod, name), value in setting.items():
        setattr(mod, name, value)


def layer_call(layer: bm.Layer, n_tokens: int):
    """bench_moe.bench_shape's layer call (cold sets where it uses them) and its number of sets."""
    torch.manual_seed(n_tokens)
    h = torch.empty(n_tokens * bm.TOPK, bm.INTER, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(n_tokens, bm.HIDDEN, device="cuda", dtype=torch.bfloat16)
    sets = bench_moe.cold_inputs(layer, n_tokens) or [
        (torch.randn(n_tokens, bm.HIDDEN, device="cuda").bfloat16(),
         torch.randn(n_tokens, layer.n_expts, device="cuda").bfloat16())]
    n_sets = len(sets)

    def call():
        for x, logits in sets:
            rd, gi, si = routing(logits, bm.TOPK)
            layer.down(layer.gate_up(x, rd, gi, y=h), rd, si, y=out)

    return call, n_sets


def layer_us(layer: bm.Layer, n_tokens: int) -> float:
    call, n_sets = layer_call(layer, n_tokens)
    return bench_moe.median_us(call, graph=True) / n_sets


def kernel_us(layer: bm.Layer, n_tokens: int, replays: int = 20) -> dict[str, float]:
    """GPU time per layer call of each kernel in the graphed layer (torch.profiler over graph replays;
    with programmatic dependent launch a kernel's time includes its wait for the one before)."""
    from torch.profiler import ProfilerActivity, profile
    call, n_sets = layer_call(layer, n_tokens)
    call()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    out = {}
    for evt in prof.key_averages():
        total = getattr(evt, "device_time_total", 0)
        if total and "cuda" in str(evt.device_type).lower():
            out[evt.key[:60]] = round(total / (replays * n_sets), 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switch", required=True, help="comma-separated module.NAME bool switches of triton_kernels")
    ap.add_argument("--experts", default="32,128")
    ap.add_argument("--tokens", default="1,8,64")
    ap.add_argument("--layout", default="default")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="ab_switches.json")
    ap.add_argument("--profile", action="store_true", help="also print each kernel's GPU time per layer call")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    variants = _variants(_switches(args.switch))
    shipped = variants["on"]
    report = {**bm.report_header(), "switches": args.switch, "rows": [], "checks": []}
    print(f"# {report['device']}, commit {report['commit']}, {report['date']}; switches {args.switch}", flush=True)
    ok = True
    for n_expts in map(int, args.experts.split(",")):
        layer = bm.Layer(n_expts, args.layout)
        for name, setting in variants.items():
            _apply(setting)
            ok &= bm.run_checks(layer, (1, 512), report, name, seed_base=100, variant=name)
        for n_tokens in map(int, args.tokens.split(",")):
            row = {"n_expts": n_expts, "n_tokens": n_tokens, "layout": args.layout}
            for r in range(args.rounds):
                for name, setting in variants.items():
                    _apply(setting)
                    row.setdefault(name, []).append(layer_us(layer, n_tokens))
            if args.profile:
                for name, setting in variants.items():
                    _apply(setting)
                    row[f"kernels:{name}"] = kernel_us(layer, n_tokens)
                    print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in row[f"kernels:{name}"].items()))
            report["rows"].append(row)
            print(f"E={n_expts} T={n_tokens}: " + ", ".join(
                f"{name} {' / '.join(f'{v:.1f}' for v in row[name])}" for name in variants), flush=True)
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
        del layer
        torch.cuda.empty_cache()
    _apply(shipped)
    return bm.finish_report(report, ok, args.out)


if __name__ == "__main__":
    sys.exit(main())
