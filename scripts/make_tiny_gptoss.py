"""Make a small GPT-OSS checkpoint with MXFP4 experts, in the format transformers 5.x loads.

    python -m scripts.make_tiny_gptoss --out DIR [--hidden-size 128 --intermediate-size 64 --num-experts 4
        --top-k 2 --num-layers 2 --num-heads 4 --num-kv-heads 2 --head-dim 16 --vocab-size 64 --seed 0]
    python -m scripts.make_tiny_gptoss --out DIR --gpt-oss-dims [--num-experts 32 --top-k 4] [--quantize-device cuda]
    python -m scripts.make_tiny_gptoss --run-job JOB.json      (load and run a checkpoint: see run_job)

The model has gpt-oss's structure at a size a CPU runs in seconds: attention sinks, alternating
sliding/full attention layers, SwiGLU experts (alpha 1.702, limit 7) with biases, a router with a
bias, random weights (with routing and next-token codes, see make_state_dict). The experts are quantized to MXFP4 with our `downcast_to_mxfp_torch` and
stored as the released gpt-oss checkpoints store them, which is what transformers'
`Mxfp4Deserialize` / `convert_moe_packed_tensors` read:

    model.layers.L.mlp.experts.gate_up_proj_blocks  uint8 [E, 2*I, H/32, 16]   (N = 2*I outputs, K = H inputs)
    model.layers.L.mlp.experts.gate_up_proj_scales  uint8 [E, 2*I, H/32]       (E8M0, one per 32 inputs)
    model.layers.L.mlp.experts.down_proj_blocks     uint8 [E, H, I/32, 16]
    model.layers.L.mlp.experts.down_proj_scales     uint8 [E, H, I/32]
    model.layers.L.mlp.experts.{gate_up,down}_proj_bias  bf16

i.e. the weight as [E, N, K] (outputs, inputs) quantized along K: each row of 16 bytes holds one
block of 32 inputs, input 2i in the low nibble and 2i+1 in the high nibble. transformers'
dequantized `GptOssExperts` weight is the [E, K, N] transpose of that, and `gate_up_proj`'s N
columns interleave gate (even) and linear (odd). config.json carries
`quantization_config = {"quant_method": "mxfp4", ...}`. No tokenizer: feed input_ids.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
MXFP_BLOCK_SIZE = 32  # elements per E8M0 scale (OCP MX v1.0); checked against the package when quantizing


def _mxfp():
    """The checkout's numerics_details.mxfp, imported on first use only: a `--run-job` process must
    see no `triton_kernels` but the one transformers gets from `get_kernel`."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from triton_kernels.numerics_details import mxfp

    assert mxfp.MXFP_BLOCK_SIZE == MXFP_BLOCK_SIZE
    return mxfp


# What the released gpt-oss checkpoints keep unquantized (transformers reads this list from config.json).
MODULES_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
SAFETENSORS_FILE = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class TinyGptOss:
    """Sizes of the checkpoint. Defaults: the CPU test model. `gpt_oss_layer_dims()` gives real widths."""

    hidden_size: int = 128
    intermediate_size: int = 64
    num_experts: int = 4
    top_k: int = 2
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    vocab_size: int = 64
    sliding_window: int = 4
    seed: int = 0

    def __post_init__(self):
        for name in ("hidden_size", "intermediate_size", "num_experts", "top_k", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "vocab_size", "sliding_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"make_tiny_gptoss: `{name}` must be a positive int, got {value!r}")
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % MXFP_BLOCK_SIZE:
                raise ValueError(f"make_tiny_gptoss: `{name}` must be a multiple of {MXFP_BLOCK_SIZE} "
                                 f"(MXFP4 blocks along K), got {getattr(self, name)}")
        if self.top_k > self.num_experts:
            raise ValueError(f"make_tiny_gptoss: `top_k` ({self.top_k}) must be <= `num_experts` ({self.num_experts})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"make_tiny_gptoss: `num_heads` ({self.num_heads}) must be a multiple of "
                             f"`num_kv_heads` ({self.num_kv_heads})")
        if self.num_experts + self.vocab_size > self.hidden_size:
            raise ValueError(f"make_tiny_gptoss: `num_experts` + `vocab_size` ({self.num_experts} + {self.vocab_size}) "
                             f"must be <= `hidden_size` ({self.hidden_size}): each expert and token gets its own "
                             f"direction of the hidden space (see make_state_dict)")


def gpt_oss_layer_dims(num_experts: int = 32, top_k: int = 4, num_layers: int = 2, vocab_size: int = 1024,
                       seed: int = 0) -> TinyGptOss:
    """gpt-oss widths (hidden = intermediate = 2880, 64 query heads / 8 kv heads of 64, window 128), fewer layers
    and experts and a small vocabulary."""
    return TinyGptOss(hidden_size=2880, intermediate_size=2880, num_experts=num_experts, top_k=top_k,
                      num_layers=num_layers, num_heads=64, num_kv_heads=8, head_dim=64, vocab_size=vocab_size,
                      sliding_window=128, seed=seed)


def make_config(spec: TinyGptOss):
    """transformers' GptOssConfig for `spec`, with the mxfp4 quantization_config of a released checkpoint."""
    from transformers import GptOssConfig

    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(spec.num_layers)]
    config = GptOssConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        num_local_experts=spec.num_experts,
        num_experts_per_tok=spec.top_k,
        sliding_window=spec.sliding_window,
        layer_types=layer_types,
        swiglu_limit=7.0,  # swiglu_alpha stays at its default 1.702 (transformers 5.17 has no such field)
        max_position_embeddings=4096,
        attention_bias=True,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=None,  # greedy generation runs its full length
    )
    config.quantization_config = {"quant_method": "mxfp4", "modules_to_not_convert": list(MODULES_NOT_CONVERTED)}
    return config


def quantize_expert_weight(w_kn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An expert weight as transformers' GptOssExperts holds it, [E, K, N], to the checkpoint's
    (blocks [E, N, K/32, 16], scales [E, N, K/32])."""
    if not isinstance(w_kn, torch.Tensor) or w_kn.dim() != 3 or not w_kn.is_floating_point():
        raise TypeError("quantize_expert_weight: `w_kn` must be a floating tensor [E, K, N]")
    e, k, n = w_kn.shape
    if k % MXFP_BLOCK_SIZE:
        raise ValueError(f"quantize_expert_weight: K={k} must be a multiple of {MXFP_BLOCK_SIZE}")
    q, scales = _mxfp().downcast_to_mxfp_torch(w_kn.transpose(1, 2).contiguous(), torch.uint8, axis=-1)
    return q.contiguous().view(e, n, k // MXFP_BLOCK_SIZE, MXFP_BLOCK_SIZE // 2), scales.contiguous()


def dequantize_expert_weight(blocks: torch.Tensor, scales: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Inverse layout of `quantize_expert_weight`: checkpoint blocks/scales to [E, K, N] (our upcast)."""
    e, n, kb, _ = blocks.shape
    w_nk = _mxfp().upcast_from_mxfp_torch(blocks.reshape(e, n, kb * MXFP_BLOCK_SIZE // 2), scales, dtype, axis=-1)
    return w_nk.transpose(1, 2)


# Decisions with margins far above bf16 noise. With plain random weights, near-ties are common: a
# router whose k-th and (k+1)-th experts differ by less than rounding sends a token elsewhere in one
# bf16 path and not in the other (transformers' own bf16 and fp32 paths disagree on a few tokens per
# 32 at gpt-oss widths), and that one token dominates any logits comparison; the same holds for
# greedy argmaxes. So the hidden space keeps orthonormal directions u_e (one per expert) and s_v
# (one per token) that only the embeddings write (attention and expert outputs are projected off
# them; MXFP4 rounding leaks a little back), and each token's embedding carries:
#   - a routing code: ROUTE_CODE along u_e for top_k experts chosen at random per token; router row e
#     reads u_e, so in every layer a token's k experts beat the others by many logits;
#   - a next-token code: TOKEN_CODE along s_v; lm_head row next[v] reads s_v, scaled so the scripted
#     next token leads the random, input-dependent part of the logits (std ~1.5) by ~NEXT_TOKEN_LEAD.
# Everything else (attention, experts, the rest of the router and lm_head) is random, and the logits
# depend on the experts far beyond the test tolerances (the tests zero the MoE output to show it).
ROUTE_CODE = 16.0
TOKEN_CODE = 16.0
NEXT_TOKEN_LEAD = 12.0
# Per-element rms that each layer's attention + experts add to the residual stream (measured: ~2.5).
_LAYER_RMS = 2.5


def next_token_map(spec: TinyGptOss) -> torch.Tensor:
    """The greedy continuation written into the checkpoint: next[v] follows token v."""
    return torch.randperm(spec.vocab_size, generator=torch.Generator().manual_seed(spec.seed + 1))


def make_state_dict(spec: TinyGptOss, quantize_device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Random weights at scales that keep activations O(1), plus the routing and next-token codes
    described above; experts as MXFP4 blocks/scales, everything else bf16. The weights come from a
    CPU generator (the same on every machine); `quantize_device` only says where they are quantized."""
    g = torch.Generator().manual_seed(spec.seed)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    def bf16(t):
        return t.to(torch.bfloat16)

    h, inter, e, vocab = spec.hidden_size, spec.intermediate_size, spec.num_experts, spec.vocab_size
    q_dim, kv_dim = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    basis = torch.linalg.qr(randn(h, e + vocab)).Q.T  # e + vocab orthonormal directions
    expert_dirs, token_dirs = basis[:e], basis[e:]
    chosen = torch.stack([torch.randperm(e, generator=g)[:spec.top_k] for _ in range(vocab)])
    routing_code = torch.zeros(vocab, e).scatter_(1, chosen, 1.0)
    embed = randn(vocab, h) + ROUTE_CODE * routing_code @ expert_dirs + TOKEN_CODE * token_dirs
    # Per-element rms of the last hidden state, which the final norm divides by.
    rms = ((h + spec.top_k * ROUTE_CODE ** 2 + TOKEN_CODE ** 2) / h + spec.num_layers * _LAYER_RMS ** 2) ** 0.5
    lm_head = randn(vocab, h, std=h ** -0.5)

    def off_codes(w_out_last: torch.Tensor) -> torch.Tensor:
        """`w` with its last (output, hidden-size) dimension projected off the code directions."""
        return w_out_last - (w_out_last @ basis.T.to(w_out_last.device)) @ basis.to(w_out_last.device)

    lm_head[next_token_map(spec)] += (NEXT_TOKEN_LEAD * rms / TOKEN_CODE) * token_dirs
    sd = {
        "model.embed_tokens.weight": bf16(embed),
        "model.norm.weight": bf16(1 + 0.1 * randn(h)),
        "lm_head.weight": bf16(lm_head),
    }
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        sd[p + "input_layernorm.weight"] = bf16(1 + 0.1 * randn(h))
        sd[p + "post_attention_layernorm.weight"] = bf16(1 + 0.1 * randn(h))
        for name, out_dim in (("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)):
            sd[p + f"self_attn.{name}.weight"] = bf16(randn(out_dim, h, std=h ** -0.5))
            sd[p + f"self_attn.{name}.bias"] = bf16(randn(out_dim, std=0.1))
        sd[p + "self_attn.o_proj.weight"] = bf16(off_codes(randn(h, q_dim, std=q_dim ** -0.5).T).T)
        sd[p + "self_attn.o_proj.bias"] = bf16(off_codes(randn(h, std=0.1)))
        sd[p + "self_attn.sinks"] = bf16(randn(spec.num_heads))
        sd[p + "mlp.router.weight"] = bf16(expert_dirs + randn(e, h, std=0.1 * h ** -0.5))
        sd[p + "mlp.router.bias"] = bf16(randn(e, std=0.1))
        # Expert weights in GptOssExperts' [E, K, N] orientation; gate_up at std 2/sqrt(K) so the clamp at 7 acts now and then.
        for name, k, n, std in (("gate_up_proj", h, 2 * inter, 2 * h ** -0.5), ("down_proj", inter, h, inter ** -0.5)):
            w = (torch.randn(e, k, n, generator=g) * std).to(quantize_device)
            if name == "down_proj":
                w = off_codes(w)
            blocks, scales = (t.cpu() for t in quantize_expert_weight(w))
            sd[p + f"mlp.experts.{name}_blocks"] = blocks
            sd[p + f"mlp.experts.{name}_scales"] = scales
        sd[p + "mlp.experts.gate_up_proj_bias"] = bf16(randn(e, 2 * inter, std=0.5))
        sd[p + "mlp.experts.down_proj_bias"] = bf16(off_codes(randn(e, h, std=0.5)))
    return sd


def make_tiny_gptoss(out_dir: str | Path, spec: TinyGptOss | None = None, *, quantize_device: str = "cpu",
                     **sizes) -> Path:
    """Write config.json and model.safetensors of a random MXFP4 GPT-OSS model into `out_dir`; returns it.

    Pass a `TinyGptOss` or its fields as keyword arguments (`make_tiny_gptoss(d, hidden_size=128)`);
    `quantize_device="cuda"` projects and quantizes the experts there (faster at gpt-oss widths; the
    random draws are the CPU generator's either way, the last bits of the projection may differ)."""
    from safetensors.torch import save_file

    if spec is not None and sizes:
        raise TypeError("make_tiny_gptoss: pass either `spec` or size keywords, not both")
    if spec is None:
        spec = TinyGptOss(**sizes)
    elif not isinstance(spec, TinyGptOss):
        raise TypeError(f"make_tiny_gptoss: `spec` must be a TinyGptOss, got {type(spec).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = make_config(spec)
    config.save_pretrained(out_dir)
    # save_pretrained writes a dict quantization_config as given; check it is what transformers will read.
    saved = json.loads((out_dir / "config.json").read_text())
    if saved.get("quantization_config", {}).get("quant_method") != "mxfp4":
        raise RuntimeError(f"make_tiny_gptoss: config.json lost its quantization_config: {saved.get('quantization_config')}")
    state_dict = make_state_dict(spec, quantize_device)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(out_dir / SAFETENSORS_FILE),
              metadata={"format": "pt"})
    return out_dir


# ---------------------------------------------------------------------------------------------
# Running a checkpoint through transformers (the CPU tests and the GPU benchmark use this).
#
# A job runs in a fresh process whose environment (HF_HUB_OFFLINE, HF_HUB_CACHE, LOCAL_KERNELS,
# USE_HUB_KERNELS, TRITON_INTERPRET) was set before transformers and kernels were imported:
#     python -m scripts.make_tiny_gptoss --run-job job.json      (prints one line "RESULT:<json>")

LOAD_KINDS = ("mxfp4", "dequant", "dequant_fp32")
RESULT_PREFIX = "RESULT:"


def _load(kind: str, checkpoint: str, device: str):
    from transformers import AutoModelForCausalLM, Mxfp4Config

    kwargs = {"dtype": torch.float32 if kind == "dequant_fp32" else torch.bfloat16}
    if device != "cpu":
        kwargs["device_map"] = device
    if kind == "mxfp4":
        # transformers runs MXFP4 on CPU only with use_kernels=True (else it dequantizes); on CUDA
        # use_kernels=True would dequantize instead, so it is left off there.
        kwargs["use_kernels"] = device == "cpu"
    else:
        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs)
    if kind == "dequant_fp32":
        # On CUDA, Mxfp4Config(dequantize=True) leaves the experts in bf16 even with dtype=float32,
        # and transformers' batched_mm experts then refuse float32 activations: make it all float32.
        model = model.float()
    model.eval()
    return model


def _spy(obj, name: str, counter: dict, key: str):
    original = getattr(obj, name)

    def counted(*args, **kwargs):
        counter[key] = counter.get(key, 0) + 1
        return original(*args, **kwargs)

    setattr(obj, name, counted)


def _kernel_report(model) -> dict:
    """Which module transformers' MXFP4 integration runs, and what the experts hold."""
    import transformers.integrations.mxfp4 as tmx
    from kernels import get_loaded_kernels

    hub = tmx.triton_kernels_hub
    info = {"hub_module": getattr(hub, "__name__", None), "hub_file": getattr(hub, "__file__", None)}
    loaded = [k for k in get_loaded_kernels() if k.module is hub]
    if loaded:
        meta = loaded[0].metadata
        info.update(kernel_name=str(meta.name), kernel_id=str(meta.id), kernel_version=meta.version,
                    backend=str(meta.backend.backend_type), n_loaded_kernels=len(get_loaded_kernels()),
                    loaded_kernel_ids=sorted(str(k.metadata.id) for k in get_loaded_kernels()))
    if hub is not None:
        target = hub.target_info.get_target()
        info["target"] = {"variant": target.variant, "reason": target.reason, "interpreter": target.interpreter,
                          "runs_triton": target.runs_triton}
    layers = []
    for layer in model.model.layers:
        experts = layer.mlp.experts
        entry = {"experts": type(experts).__name__}
        w = getattr(experts, "gate_up_proj", None)
        if hub is not None and isinstance(w, hub.tensor.Tensor):
            pc = experts.gate_up_proj_precision_config
            entry.update(weight_is_hub_tensor=True, weight_layout=type(w.storage.layout).__name__,
                         weight_shape=list(w.shape), weight_storage_device=str(w.storage.data.device),
                         scale_layout=type(pc.weight_scale.storage.layout).__name__)
        else:
            entry["weight_is_hub_tensor"] = False
        layers.append(entry)
    info["layers"] = layers
    return info


def _record_routing(store: list):
    """Pre-hook on a GptOssMLP: the experts its router picks (recomputed in fp32 from its input)."""

    def hook(module, args):
        h = args[0].reshape(-1, args[0].shape[-1]).float()
        logits = torch.nn.functional.linear(h, module.router.weight.float(), module.router.bias.float())
        store.append(torch.sort(logits.topk(module.router.top_k, dim=-1).indices, dim=-1).values.cpu())

    return hook


def _zero_moe(module, inputs, output):
    out, router_logits = output
    return torch.zeros_like(out), router_logits


def run_job(job: dict) -> dict:
    """Load `job["checkpoint"]` once per entry of `job["loads"]` and run it; tensors go to `job["tensors_out"]`.

    job: checkpoint, device, input_ids (list of lists), loads (names from LOAD_KINDS),
    generate (new tokens, 0 for none), ablate_moe (bool: also run the mxfp4 model with every MoE output
    zeroed), save_to (dir: save the mxfp4 model there, reload it, run it again), tensors_out (a .pt path)."""
    import cProfile
    import io
    import pstats
    import time
    import warnings

    import transformers
    import kernels

    device = job["device"]
    ids = torch.tensor(job["input_ids"], dtype=torch.long, device=device)
    result = {"versions": {"transformers": transformers.__version__, "kernels": kernels.__version__,
                           "torch": torch.__version__}, "loads": {}}
    tensors = {}

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    for kind in job["loads"]:
        if kind not in LOAD_KINDS:
            raise ValueError(f"run_job: unknown load kind {kind!r}; expected one of {LOAD_KINDS}")
        res = {}
        calls: dict = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            model = _load(kind, job["checkpoint"], device)
            res["load_s"] = time.perf_counter() - t0
            res["experts"] = sorted({type(layer.mlp.experts).__name__ for layer in model.model.layers})
            if kind == "mxfp4":
                res["kernel"] = _kernel_report(model)
                import transformers.integrations.mxfp4 as tmx
                hub = tmx.triton_kernels_hub
                _spy(hub.matmul_ogs, "matmul_ogs", calls, "matmul_ogs")
                _spy(hub.routing, "routing", calls, "routing")
            with torch.no_grad():
                model(input_ids=ids)  # warm-up (Triton compiles on first use)
                experts_chosen = []
                hooks = [layer.mlp.register_forward_pre_hook(_record_routing(experts_chosen))
                         for layer in model.model.layers]
                sync()
                t0 = time.perf_counter()
                logits = model(input_ids=ids).logits
                sync()
                res["forward_s"] = time.perf_counter() - t0
                for hook in hooks:
                    hook.remove()
                res["calls_after_forward"] = dict(calls)
                res["forward_repeat_s"] = []  # without the routing hooks, and where the time goes in the last
                for repeat in range(3):
                    profiler = cProfile.Profile() if repeat == 2 else None
                    t0 = time.perf_counter()
                    if profiler:
                        profiler.enable()
                    model(input_ids=ids)
                    sync()
                    if profiler:
                        profiler.disable()
                    res["forward_repeat_s"].append(time.perf_counter() - t0)
                report = io.StringIO()
                pstats.Stats(profiler, stream=report).sort_stats("cumulative").print_stats(30)
                res["forward_profile"] = report.getvalue()
            tensors[f"{kind}/logits"] = logits.float().cpu()
            tensors[f"{kind}/experts_chosen"] = torch.stack(experts_chosen)  # [layers, tokens, top_k]
            if kind == "mxfp4" and job.get("ablate_moe"):
                hooks = [layer.mlp.register_forward_hook(_zero_moe) for layer in model.model.layers]
                with torch.no_grad():
                    tensors["mxfp4/logits_moe_zeroed"] = model(input_ids=ids).logits.float().cpu()
                for h in hooks:
                    h.remove()
            n_new = int(job.get("generate", 0))
            if n_new:
                sync()
                t0 = time.perf_counter()
                with torch.no_grad():
                    out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                         pad_token_id=0, output_logits=True, return_dict_in_generate=True)
                sync()
                res["generate_s"] = time.perf_counter() - t0
                res["generated"] = out.sequences[:, ids.shape[1]:].tolist()
                # again, warm (the first run compiles the decode shapes' kernels): the eager cost per token
                t0 = time.perf_counter()
                with torch.no_grad():
                    model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0)
                sync()
                res["generate_warm_s"] = time.perf_counter() - t0
                tensors[f"{kind}/generate_logits"] = torch.stack(out.logits, dim=1).float().cpu()  # [B, n_new, V]
            if kind == "mxfp4" and job.get("save_to"):
                unswizzled: dict = {}
                experts = model.model.layers[0].mlp.experts
                for obj in (experts.gate_up_proj, experts.gate_up_proj_precision_config.weight_scale):
                    cls = type(obj.storage.layout)
                    if cls.__name__ not in unswizzled:
                        unswizzled[cls.__name__] = 0
                        _spy(cls, "unswizzle_data", unswizzled, cls.__name__)
                try:
                    model.save_pretrained(job["save_to"])
                except Exception as e:  # reported: transformers' MXFP4 save assumes gpt-oss widths
                    res["save_error"] = f"{type(e).__name__}: {e}"
                res["unswizzle_calls"] = unswizzled
                if "save_error" not in res:
                    del model
                    model = _load(kind, job["save_to"], device)
                    res["reloaded_kernel"] = _kernel_report(model)
                    with torch.no_grad():
                        tensors["mxfp4/logits_reloaded"] = model(input_ids=ids).logits.float().cpu()
            res["calls"] = dict(calls)
            del model
        res["warnings"] = sorted({str(w.message) for w in caught if "triton_kernels" in str(w.message)})
        result["loads"][kind] = res
    # The checkout's package must not be what ran: only the module get_kernel returned.
    result["checkout_package_imported"] = "triton_kernels" in sys.modules
    torch.save(tensors, job["tensors_out"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.make_tiny_gptoss", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", help="directory for config.json and model.safetensors")
    mode.add_argument("--run-job", metavar="JOB_JSON", help="run a checkpoint through transformers (see run_job)")
    defaults = TinyGptOss()
    for field in dataclasses.fields(TinyGptOss):
        parser.add_argument("--" + field.name.replace("_", "-"), type=int, default=getattr(defaults, field.name))
    parser.add_argument("--quantize-device", default="cpu", help="where to quantize the experts (cpu, cuda)")
    parser.add_argument("--gpt-oss-dims", action="store_true",
                        help="hidden/intermediate 2880 and gpt-oss heads (keeps --num-experts, --top-k, --num-layers)")
    args = parser.parse_args(argv)
    if args.run_job:
        result = run_job(json.loads(Path(args.run_job).read_text()))
        print(RESULT_PREFIX + json.dumps(result))
        return 0
    try:
        if args.gpt_oss_dims:
            spec = gpt_oss_layer_dims(args.num_experts, args.top_k, args.num_layers, args.vocab_size, args.seed)
        else:
            spec = TinyGptOss(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TinyGptOss)})
        out = make_tiny_gptoss(args.out, spec, quantize_device=args.quantize_device)
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'config.json'} and {out / SAFETENSORS_FILE} ({spec})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
