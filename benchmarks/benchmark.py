"""`kernels benchmark` workloads: one gpt-oss MoE layer through the loaded kernel.

    kernels benchmark ./                                   # a checkout with build/ (make build)
    kernels benchmark kernels-community/gpt-oss-triton-kernels@v1

The runner loads the kernel (`self.kernel`), calls `setup`, checks each `benchmark_<name>` output
(`self.out`) against `verify_<name>` and then times it. On a GPU the layer has gpt-oss widths
(hidden = intermediate = 2880, 32 experts, top-4, 64 tokens); on a CPU it is small. The references
are the package's own torch twins (`routing_torch`, `matmul_ogs_torch`) computed in float32.
Our MoE benchmark with the hardware floor is benchmarks/bench_moe.py.
"""

import torch

from kernels.benchmark import Benchmark

ALPHA, LIMIT = 1.702, 7.0


class GptOssMoeBenchmark(Benchmark):
    seed = 0

    def setup(self):
        tk = self.kernel
        on_gpu = self.device == "cuda"
        self.n_tokens, self.n_expts, self.hidden, self.k = (64, 32, 2880, 4) if on_gpu else (8, 4, 64, 2)
        mx, layout = tk.numerics_details.mxfp, tk.tensor_details.layout

        def weight(k, n):
            dense = torch.randn(self.n_expts, k, n, device=self.device, dtype=torch.bfloat16) / k ** 0.5
            codes, scales = mx.downcast_to_mxfp_torch(dense, torch.uint8, axis=1)
            vcls, vopts = layout.make_default_matmul_mxfp4_w_layout(mx_axis=1)
            scls, sopts = layout.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1)
            w = tk.tensor.convert_layout(tk.tensor.wrap_torch_tensor(codes, dtype=tk.tensor.FP4), vcls, **vopts)
            ws = tk.tensor.convert_layout(tk.tensor.wrap_torch_tensor(scales), scls, **sopts)
            return w, tk.matmul_ogs.PrecisionConfig(weight_scale=ws)

        self.w1, self.pc1 = weight(self.hidden, 2 * self.hidden)
        self.w2, self.pc2 = weight(self.hidden, self.hidden)
        self.b1 = torch.randn(self.n_expts, 2 * self.hidden, device=self.device) / 10
        self.b2 = torch.randn(self.n_expts, self.hidden, device=self.device) / 10
        self.x = torch.randn(self.n_tokens, self.hidden, device=self.device, dtype=torch.bfloat16)
        self.logits = torch.randn(self.n_tokens, self.n_expts, device=self.device)
        self.act = tk.matmul_ogs.FusedActivation(
            tk.matmul_ogs.FnSpecs("swiglu", tk.swiglu.swiglu_fn, ("alpha", "limit")), (ALPHA, LIMIT), 2)
        self.rd, self.gi, self.si = tk.routing.routing_torch(self.logits, self.k)
        self.h = tk.matmul_ogs.matmul_ogs_torch(self.x, self.w1, self.b1, self.rd, gather_indx=self.gi,
                                                precision_config=self.pc1, fused_activation=self.act)

    # routing: top-k, softmax, expert sort, histograms, tile maps
    def benchmark_routing(self):
        rd, _, _ = self.kernel.routing.routing(self.logits, self.k)
        self.out = rd.gate_scal

    def verify_routing(self):
        return self.kernel.routing.routing_torch(self.logits, self.k)[0].gate_scal

    # gate_up: gathered rows, fused SwiGLU
    def benchmark_gate_up(self):
        self.out = self.kernel.matmul_ogs.matmul_ogs(self.x, self.w1, self.b1, self.rd, gather_indx=self.gi,
                                                     precision_config=self.pc1, fused_activation=self.act)

    def verify_gate_up(self):
        return self.kernel.matmul_ogs.matmul_ogs_torch(self.x, self.w1, self.b1, self.rd, gather_indx=self.gi,
                                                       precision_config=self.pc1, fused_activation=self.act)

    # down: scattered top-k sum weighted by the routing gates
    def benchmark_down(self):
        self.out = self.kernel.matmul_ogs.matmul_ogs(self.h, self.w2, self.b2, self.rd, scatter_indx=self.si,
                                                     precision_config=self.pc2, gammas=self.rd.gate_scal)

    def verify_down(self):
        return self.kernel.matmul_ogs.matmul_ogs_torch(self.h, self.w2, self.b2, self.rd, scatter_indx=self.si,
                                                       precision_config=self.pc2, gammas=self.rd.gate_scal)

    # the whole layer, as transformers' Mxfp4GptOssExperts runs it
    def benchmark_layer(self):
        mm = self.kernel.matmul_ogs
        rd, gi, si = self.kernel.routing.routing(self.logits, self.k)
        h = mm.matmul_ogs(self.x, self.w1, self.b1, rd, gather_indx=gi, precision_config=self.pc1,
                          fused_activation=self.act)
        self.out = mm.matmul_ogs(h, self.w2, self.b2, rd, scatter_indx=si, precision_config=self.pc2,
                                 gammas=rd.gate_scal)

    def verify_layer(self):
        return self.kernel.matmul_ogs.matmul_ogs_torch(self.h, self.w2, self.b2, self.rd, scatter_indx=self.si,
                                                       precision_config=self.pc2, gammas=self.rd.gate_scal)
