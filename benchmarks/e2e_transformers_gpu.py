"""transformers' GPT-OSS MXFP4 path on CUDA, with our build as the kernel transformers fetches.

    python benchmarks/e2e_transformers_gpu.py --out /tmp/e2e.json [--work-dir DIR] [--experts 32 --top-k 4
                                              --layers 2 --prompt 16 --batch 2 --generate 32]

No network is needed. It
1. makes a random GPT-OSS checkpoint at gpt-oss widths (hidden = intermediate = 2880, 64 query /
   8 kv heads of 64, window 128), 32 experts, top-4, 2 layers (sliding + full), experts in MXFP4
   (scripts/make_tiny_gptoss.py);
2. builds our variants (scripts.build_variants) and seeds an offline Hugging Face cache with them as
   kernels-community/gpt-oss-triton-kernels (scripts.publish), the repo id transformers 5.x asks for;
3. in fresh processes (environment set before transformers/kernels import) loads the checkpoint with
   `from_pretrained(device_map="cuda")`:
     (a) HF_HUB_OFFLINE=1 with that cache: get_kernel by repo id, version=1;
     (b) LOCAL_KERNELS=<repo id>=<checkout with build/> and an empty cache;
   and transformers' own dequantized path (`Mxfp4Config(dequantize=True)`, bf16; also fp32);
4. checks: our module (torch-cuda variant of the build, Triton on the GPU, no torch fallback) ran
   every MoE layer; logits within 2e-2 (relative Frobenius) of the dequantized path; the experts
   matter at that tolerance (zeroing them moves the logits > 0.2); greedy generation of 32 tokens
   agrees with the dequantized path for at least the first 8 and the logits of its 1-token decode
   steps are within 2e-2 too (the checkpoint scripts its greedy continuation with a wide margin, see
   make_tiny_gptoss: random logits have near-ties that bf16 rounding flips); save_pretrained unswizzles our
   Hopper/Blackwell layouts back to the checkpoint's exact bytes and the reload gives the same logits.

It prints a summary and writes everything to --out (JSON); exit status 0 when every check passed,
1 when one failed, 2 when the environment cannot run the MXFP4 path at all (e.g. a transformers that
does not accept the installed `kernels`: transformers 5.17 wants kernels < 0.17, 5.20 wants 0.17.2).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from scripts import make_tiny_gptoss as tiny  # noqa: E402
from scripts import publish  # noqa: E402
from scripts.build_variants import build_variants  # noqa: E402
from scripts.offline import offline_env  # noqa: E402

REPO_ID = "kernels-community/gpt-oss-triton-kernels"
REL_TOL = 2e-2
MIN_IDENTICAL_TOKENS = 8
MOE_ABLATION_MIN = 0.2


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def first_difference(a: list[list[int]], b: list[list[int]]) -> int:
    """Smallest index, over the batch, where two greedy continuations differ (their length if never)."""
    firsts = []
    for row_a, row_b in zip(a, b, strict=True):
        diff = [i for i, (x, y) in enumerate(zip(row_a, row_b, strict=True)) if x != y]
        firsts.append(diff[0] if diff else len(row_a))
    return min(firsts)


def environment_problem(device: str) -> str | None:
    """Why transformers would not run MXFP4 through a kernel here (it would silently dequantize), or None."""
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    import transformers
    from transformers.utils import import_utils

    if not import_utils.is_kernels_available():
        try:
            import kernels
            have = kernels.__version__
        except ImportError:
            have = "not installed"
        return (f"transformers {transformers.__version__} accepts kernels >= {import_utils.KERNELS_MIN_VERSION}, "
                f"< {import_utils.KERNELS_MAX_VERSION}; installed: {have}. It would dequantize MXFP4 to bf16 instead "
                f"of calling the kernel. Bring a matching pair (transformers 5.20.0 with kernels 0.17.2).")
    if not import_utils.is_accelerate_available():
        return "transformers' MXFP4 path needs `accelerate`"
    if not import_utils.is_triton_available("3.4.0" if device == "cuda" else "3.5.0"):
        return "transformers' MXFP4 path needs Triton >= 3.4 on CUDA, >= 3.5 on CPU"
    return None


def run_job(work: Path, env: dict, name: str, **job) -> tuple[dict, dict]:
    job["tensors_out"] = str(work / f"{name}.pt")
    job_file = work / f"{name}.json"
    job_file.write_text(json.dumps(job))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "make_tiny_gptoss.py"), "--run-job",
                           str(job_file)], capture_output=True, text=True, env=env, cwd=env["HF_HOME"])
    (work / f"{name}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"job {name} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(tiny.RESULT_PREFIX)]
    result = json.loads(lines[-1][len(tiny.RESULT_PREFIX):])
    result["wall_s"] = time.perf_counter() - t0
    return result, torch.load(job["tensors_out"])


def read_experts(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(checkpoint_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            out.update({k: s.get_tensor(k) for k in s.keys() if k.endswith(("_blocks", "_scales"))})
    return out


def _follows_map(spec, prompt: list[list[int]], generated: list[list[int]]) -> bool:
    """Whether greedy decoding followed the next-token map written into the checkpoint."""
    nxt = tiny.next_token_map(spec).tolist()
    for row_prompt, row in zip(prompt, generated, strict=True):
        token = row_prompt[-1]
        for got in row:
            if got != nxt[token]:
                return False
            token = got
    return True


def kernel_checks(load: dict, variant_dir: Path, layers: int, n_forwards: int, device: str) -> dict[str, bool]:
    k = load.get("kernel", {})
    target = k.get("target", {})
    checks = {
        f"module is the build's {variant_dir.name} variant": Path(k.get("hub_file", "/")).parent == variant_dir,
        f"kernel metadata: triton-kernels v1, backend {device}": (k.get("kernel_name"), k.get("kernel_version"),
                                                                  k.get("backend")) == ("triton-kernels", 1, device),
        "experts are Mxfp4GptOssExperts holding our Tensors": load.get("experts") == ["Mxfp4GptOssExperts"] and all(
            layer.get("weight_is_hub_tensor") for layer in k.get("layers", [])),
        "every MoE layer ran our routing + 2 matmul_ogs": load.get("calls_after_forward") == {
            "routing": n_forwards * layers, "matmul_ogs": 2 * n_forwards * layers},
    }
    if device == "cuda":
        checks["Triton on the GPU (no interpreter)"] = bool(target.get("runs_triton")) and not target.get("interpreter")
        checks["no torch-reference fallback"] = not any("using the torch reference" in w for w in load.get("warnings", []))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--work-dir", default=None, help="keep checkpoints, caches and logs here (default: a temp dir)")
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--generate", type=int, default=32)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu only smoke-tests this script (use_kernels=True, USE_HUB_KERNELS=0, torch references)")
    args = parser.parse_args(argv)

    report: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "host": platform.node(), "args": vars(args), "checks": {}, "ok": False}
    try:
        report["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                          text=True).stdout.strip() or None
    except OSError:
        report["commit"] = None
    problem = environment_problem(args.device)
    if problem is None:
        report["device"] = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    out_path = Path(args.out)
    if problem is not None:
        report["error"] = problem
        out_path.write_text(json.dumps(report, indent=2))
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2

    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="e2e_transformers_")
        work = Path(tmp)
    try:
        return _run(args, report, work, out_path)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args, report: dict, work: Path, out_path: Path) -> int:
    checks = report["checks"]
    spec = tiny.gpt_oss_layer_dims(args.experts, args.top_k, args.layers, args.vocab)
    report["model"] = {k: getattr(spec, k) for k in ("hidden_size", "intermediate_size", "num_experts", "top_k",
                                                     "num_layers", "num_heads", "num_kv_heads", "head_dim",
                                                     "vocab_size", "sliding_window")}
    t0 = time.perf_counter()
    ckpt = tiny.make_tiny_gptoss(work / "checkpoint", spec, quantize_device=args.device)
    report["make_checkpoint_s"] = time.perf_counter() - t0

    repo = work / "repo"  # what LOCAL_KERNELS points at: a folder holding build/
    build_variants(REPO_ROOT, repo / "build")
    cache = work / "hub"
    seeded = publish.seed_cache(publish.collect_release(REPO_ID, repo / "build"), REPO_ID, cache_dir=cache)
    snapshot = seeded.repo_folders[0] / "snapshots" / seeded.commit

    ids = torch.randint(3, spec.vocab_size, (args.batch, args.prompt),
                        generator=torch.Generator().manual_seed(1)).tolist()
    common = dict(checkpoint=str(ckpt), input_ids=ids, generate=args.generate, device=args.device)
    # On CPU transformers needs use_kernels=True, which without USE_HUB_KERNELS=0 also asks for megablocks.
    extra = {"USE_HUB_KERNELS": "0"} if args.device == "cpu" else {}
    variant = "torch-cuda" if args.device == "cuda" else "torch-cpu"

    # (a) offline cache, by repo id; plus transformers' dequantized paths and the save round trip.
    env_a = offline_env(work, cache, TRITON_INTERPRET="0", **extra)
    res_a, t_a = run_job(work, env_a, "offline_cache", loads=["mxfp4", "dequant", "dequant_fp32"], ablate_moe=True,
                         save_to=str(work / "saved"), **common)
    # (b) LOCAL_KERNELS, empty cache.
    env_b = offline_env(work, work / "empty-cache", TRITON_INTERPRET="0", LOCAL_KERNELS=f"{REPO_ID}={repo}", **extra)
    res_b, t_b = run_job(work, env_b, "local_kernels", loads=["mxfp4"], **common)
    report["runs"] = {"offline_cache": res_a, "local_kernels": res_b}

    mx_a, mx_b = res_a["loads"]["mxfp4"], res_b["loads"]["mxfp4"]
    deq, f32 = t_a["dequant/logits"], t_a["dequant_fp32/logits"]
    for label, load, variant_dir in (("offline cache", mx_a, snapshot / "build" / variant),
                                     ("LOCAL_KERNELS", mx_b, repo / "build" / variant)):
        for name, ok in kernel_checks(load, variant_dir, spec.num_layers, 2, args.device).items():
            checks[f"{label}: {name}"] = ok
    checks["checkout package not imported by the workers"] = not (res_a["checkout_package_imported"] or
                                                                  res_b["checkout_package_imported"])
    checks["dequantized path used transformers' GptOssExperts"] = res_a["loads"]["dequant"]["experts"] == ["GptOssExperts"]

    numbers = {
        "rel_err_offline_vs_dequant_bf16": rel_err(t_a["mxfp4/logits"], deq),
        "rel_err_local_vs_dequant_bf16": rel_err(t_b["mxfp4/logits"], deq),
        "rel_err_offline_vs_dequant_fp32": rel_err(t_a["mxfp4/logits"], f32),
        "rel_err_dequant_bf16_vs_fp32": rel_err(deq, f32),
        "rel_err_moe_zeroed_vs_dequant_bf16": rel_err(t_a["mxfp4/logits_moe_zeroed"], deq),
        "max_abs_offline_vs_local": float((t_a["mxfp4/logits"] - t_b["mxfp4/logits"]).abs().max()),
        "first_token_diff_offline_vs_dequant": first_difference(mx_a["generated"], res_a["loads"]["dequant"]["generated"]),
        "first_token_diff_local_vs_dequant": first_difference(mx_b["generated"], res_a["loads"]["dequant"]["generated"]),
        "first_token_diff_dequant_bf16_vs_fp32": first_difference(res_a["loads"]["dequant"]["generated"],
                                                                  res_a["loads"]["dequant_fp32"]["generated"]),
        "rel_err_decode_logits_offline_vs_dequant_bf16": rel_err(t_a["mxfp4/generate_logits"],
                                                                 t_a["dequant/generate_logits"]),
        "rel_err_decode_logits_local_vs_dequant_bf16": rel_err(t_b["mxfp4/generate_logits"],
                                                               t_a["dequant/generate_logits"]),
        "tokens_routed_differently_offline_vs_dequant": int(
            (t_a["mxfp4/experts_chosen"] != t_a["dequant/experts_chosen"]).any(-1).sum()),
        "experts_hit": len(t_a["mxfp4/experts_chosen"].unique()),
        "greedy_follows_scripted_map": _follows_map(spec, ids, mx_a["generated"]),
    }
    report["numbers"] = numbers
    checks[f"logits (offline cache) within {REL_TOL} of dequantized"] = numbers["rel_err_offline_vs_dequant_bf16"] <= REL_TOL
    checks[f"logits (LOCAL_KERNELS) within {REL_TOL} of dequantized"] = numbers["rel_err_local_vs_dequant_bf16"] <= REL_TOL
    checks[f"experts matter: zeroing them moves logits > {MOE_ABLATION_MIN}"] = (
        numbers["rel_err_moe_zeroed_vs_dequant_bf16"] > MOE_ABLATION_MIN)
    for label in ("offline", "local"):
        checks[f"greedy tokens ({label}) equal dequantized for >= {MIN_IDENTICAL_TOKENS}"] = (
            numbers[f"first_token_diff_{label}_vs_dequant"] >= MIN_IDENTICAL_TOKENS)
        checks[f"decode-step logits ({label}) within {REL_TOL} of dequantized"] = (
            numbers[f"rel_err_decode_logits_{label}_vs_dequant_bf16"] <= REL_TOL)

    # save_pretrained round trip (transformers unswizzles with our layouts).
    checks["save_pretrained succeeded"] = "save_error" not in mx_a
    if "save_error" not in mx_a:
        before, after = read_experts(ckpt), read_experts(work / "saved")
        same = sorted(before) == sorted(after) and all(
            after[k].shape == v.shape and torch.equal(after[k], v) for k, v in before.items())
        checks["saved blocks/scales are the checkpoint's bytes"] = same
        checks["reloaded model gives the same logits"] = torch.equal(t_a["mxfp4/logits_reloaded"], t_a["mxfp4/logits"])
        layouts = {layer["weight_layout"] for layer in mx_a["kernel"]["layers"]}
        checks["save unswizzled every layout the weights are held in"] = layouts <= set(mx_a["unswizzle_calls"])
        numbers["weight_layouts"] = sorted(layouts)
        numbers["unswizzle_calls"] = mx_a["unswizzle_calls"]

    report["ok"] = all(checks.values())
    out_path.write_text(json.dumps(report, indent=2, default=str))
    _print_summary(report, mx_a, mx_b, res_a)
    return 0 if report["ok"] else 1


def _print_summary(report: dict, mx_a: dict, mx_b: dict, res_a: dict) -> None:
    n = report["numbers"]
    m = report["model"]
    versions = res_a["versions"]
    print(f"transformers {versions['transformers']}, kernels {versions['kernels']}, torch {versions['torch']}, "
          f"{report['device']}, commit {report.get('commit')}")
    print(f"model: hidden {m['hidden_size']}, intermediate {m['intermediate_size']}, {m['num_experts']} experts, "
          f"top-{m['top_k']}, {m['num_layers']} layers; checkpoint made in {report['make_checkpoint_s']:.1f} s")
    print(f"kernel (offline cache): {mx_a['kernel'].get('hub_file')}  target {mx_a['kernel'].get('target', {}).get('variant')}, "
          f"weight layout {n.get('weight_layouts')}")
    print(f"kernel (LOCAL_KERNELS): {mx_b['kernel'].get('hub_file')}")
    print(f"logits rel. err vs dequantized bf16: offline {n['rel_err_offline_vs_dequant_bf16']:.3e}, "
          f"LOCAL_KERNELS {n['rel_err_local_vs_dequant_bf16']:.3e} (tolerance {REL_TOL}); "
          f"vs fp32: ours {n['rel_err_offline_vs_dequant_fp32']:.3e}, transformers bf16 {n['rel_err_dequant_bf16_vs_fp32']:.3e}")
    print(f"experts zeroed: rel. change {n['rel_err_moe_zeroed_vs_dequant_bf16']:.3f}; experts hit "
          f"{n['experts_hit']}; tokens routed differently from the dequantized path: "
          f"{n['tokens_routed_differently_offline_vs_dequant']}")
    print(f"greedy {report['args']['generate']} tokens: first difference vs dequantized at "
          f"{n['first_token_diff_offline_vs_dequant']} (offline), {n['first_token_diff_local_vs_dequant']} (LOCAL_KERNELS); "
          f"bf16 vs fp32 dequantized: {n['first_token_diff_dequant_bf16_vs_fp32']}; follows the checkpoint's "
          f"next-token map: {n['greedy_follows_scripted_map']}; decode-step logits rel. err "
          f"{n['rel_err_decode_logits_offline_vs_dequant_bf16']:.3e}")
    for kind in ("mxfp4", "dequant", "dequant_fp32"):
        r = res_a["loads"][kind]
        per_token = 1e3 * r.get("generate_warm_s", 0) / max(1, report["args"]["generate"])
        print(f"  {kind:13s} load {r['load_s']:.1f} s, forward {1e3 * r['forward_s']:.1f} ms, "
              f"generate {r.get('generate_s', 0):.2f} s (eager, first), {per_token:.2f} ms per token (eager, warm)")
    for name, ok in report["checks"].items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    print("ALL CHECKS PASSED" if report["ok"] else "SOME CHECKS FAILED")


if __name__ == "__main__":
    sys.exit(main())
