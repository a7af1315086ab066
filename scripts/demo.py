"""The main job, end to end: build the Hub tree, load it the way users do (`kernels`), and run one
gpt-oss MoE layer (routing + gate_up with fused SwiGLU + down with top-k scatter) on this
machine's best variant, checked against a float64 reference.

    python -m scripts.demo [--tokens T] [--experts E] [--hidden H]

On a GPU the layer has gpt-oss widths (hidden = intermediate = 2880); on a CPU it is smaller and
runs the torch reference path (the `torch-cpu` variant), unless TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import importlib
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ALPHA, LIMIT = 1.702, 7.0


def quantized_weight(tk, n_expts: int, k: int, n: int, device: str):
    """Random bf16 [E, K, N] weights quantized to MXFP4 along K, in the probe's default layouts."""
    mx = tk.numerics_details.mxfp
    layout = tk.tensor_details.layout
    dense = torch.randn(n_expts, k, n, device=device, dtype=torch.bfloat16) / k ** 0.5
    codes, scales = mx.downcast_to_mxfp_torch(dense, torch.uint8, axis=1)
    value_cls, value_opts = layout.make_default_matmul_mxfp4_w_layout(mx_axis=1)
    scale_cls, scale_opts = layout.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1)
    w = tk.tensor.convert_layout(tk.tensor.wrap_torch_tensor(codes, dtype=tk.tensor.FP4), value_cls, **value_opts)
    ws = tk.tensor.convert_layout(tk.tensor.wrap_torch_tensor(scales), scale_cls, **scale_opts)
    dequantized = mx.upcast_from_mxfp_torch(codes, scales, torch.float32, axis=1).double()
    return w, tk.matmul_ogs.PrecisionConfig(weight_scale=ws), dequantized


def reference_layer(x, logits, k, w1, b1, w2, b2):
    """float64 MoE: sum over each token's top-k experts of gate * (swiglu(x W1 + b1) W2 + b2)."""
    vals, idx = torch.topk(logits.double(), k, dim=1)
    gates = torch.softmax(vals, dim=1)
    out = torch.zeros(x.shape[0], w2.shape[-1], dtype=torch.float64, device=x.device)
    for j in range(k):
        for e in idx[:, j].unique().tolist():
            rows = (idx[:, j] == e).nonzero().squeeze(1)
            h = x[rows].double() @ w1[e] + b1[e].double()
            gate, lin = h[:, 0::2].clamp(max=LIMIT), h[:, 1::2].clamp(-LIMIT, LIMIT)
            a = gate * torch.sigmoid(ALPHA * gate) * (lin + 1)
            out[rows] += gates[rows, j, None] * (a @ w2[e] + b2[e].double())
    return out


def main() -> None:
    on_gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64 if on_gpu else 16)
    ap.add_argument("--experts", type=int, default=32 if on_gpu else 8)
    ap.add_argument("--hidden", type=int, default=2880 if on_gpu else 256)
    ap.add_argument("--top-k", type=int, default=4)
    args = ap.parse_args()

    from kernels import get_local_kernel

    from scripts.build_variants import build_variants

    variants = build_variants(ROOT, ROOT / "build")
    print(f"built the Hub tree: {', '.join(str(p.relative_to(ROOT)) for p in variants.values())}")
    tk = get_local_kernel(ROOT)
    print(f"loaded {tk.__name__} from {Path(tk.__file__).parent.relative_to(ROOT)}")
    print(importlib.import_module(tk.__name__ + ".probe").report())

    device = "cuda" if on_gpu else "cpu"
    torch.manual_seed(0)
    n_tokens, n_expts, hidden, k = args.tokens, args.experts, args.hidden, args.top_k
    w1, pc1, w1_ref = quantized_weight(tk, n_expts, hidden, 2 * hidden, device)
    w2, pc2, w2_ref = quantized_weight(tk, n_expts, hidden, hidden, device)
    b1 = torch.randn(n_expts, 2 * hidden, device=device)
    b2 = torch.randn(n_expts, hidden, device=device)
    x = torch.randn(n_tokens, hidden, device=device, dtype=torch.bfloat16)
    logits = torch.randn(n_tokens, n_expts, device=device)
    swiglu = tk.matmul_ogs.FusedActivation(
        tk.matmul_ogs.FnSpecs("swiglu", tk.swiglu.swiglu_fn, ("alpha", "limit")), (ALPHA, LIMIT), 2)

    def layer():
        rd, gi, si = tk.routing.routing(logits, k)
        h = tk.matmul_ogs.matmul_ogs(x, w1, b1, rd, gather_indx=gi, precision_config=pc1, fused_activation=swiglu)
        return tk.matmul_ogs.matmul_ogs(h, w2, b2, rd, scatter_indx=si, precision_config=pc2, gammas=rd.gate_scal)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the CPU variant's one-time fallback notice
        y = layer()
        ref = reference_layer(x, logits, k, w1_ref, b1, w2_ref, b2)
        err = ((y.double() - ref).norm() / ref.norm()).item()
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        repeats = 20 if on_gpu else 3
        for _ in range(repeats):
            layer()
        if on_gpu:
            torch.cuda.synchronize()
        per_call = (time.perf_counter() - start) / repeats
    print(f"MoE layer: T={n_tokens} E={n_expts} top-{k} hidden={hidden} on {device}: "
          f"relative error vs float64 {err:.2e}, {per_call * 1e6:.0f} us per eager call")
    if not err <= 1e-2:
        raise SystemExit(f"demo: the layer differs from the float64 reference by {err:.2e} (> 1e-2)")


if __name__ == "__main__":
    main()
