"""transformers' GPT-OSS MXFP4 path running on our build, loaded the way transformers loads it.

transformers 5.x asks `kernels.get_kernel("kernels-community/gpt-oss-triton-kernels", version=1)` for
the MXFP4 MoE kernels. Here that repo id resolves to our build, either from an air-gapped Hugging
Face cache seeded by `scripts.publish` (HF_HUB_OFFLINE=1, caches in tmp_path) or through
LOCAL_KERNELS=<repo id>=<checkout>. A small random GPT-OSS checkpoint made by
`scripts.make_tiny_gptoss` (MXFP4 experts in the released checkpoint format) is loaded with
`from_pretrained` in a subprocess whose environment is set before transformers/kernels import,
and its logits are compared with the same checkpoint dequantized by transformers
(`Mxfp4Config(dequantize=True)`, its own bf16 experts), and with an fp32 dequantized run.

On CPU, transformers runs MXFP4 only with `use_kernels=True`; that also makes it `kernelize` the
model with other hub kernels (GptOssMLP -> kernels-community/megablocks on CPU), which an air-gapped
machine does not have, so these runs set USE_HUB_KERNELS=0 (see
test_cpu_use_kernels_also_asks_for_megablocks for what happens otherwise).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from scripts import publish
from scripts import make_tiny_gptoss as tiny
from scripts.build_variants import REPO_ROOT, build_variants
from scripts.offline import offline_env

# What a machine without a GPU loads (the torch-cpu build, the CPU backend): on a GPU machine the
# loader rightly picks torch-cuda, so these assertions hold on CPU machines (CI) only.
cpu_machine_only = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the build a machine without a GPU "
                                      "loads; a GPU machine loads torch-cuda")

REPO_ID = "kernels-community/gpt-oss-triton-kernels"  # what transformers 5.x asks for (version=1)
WORKER = REPO_ROOT / "scripts" / "make_tiny_gptoss.py"
REL_TOL = 2e-2
TINY = tiny.TinyGptOss()  # hidden 128, intermediate 64, 4 experts, top-2, 2 layers (sliding + full), vocab 64
# transformers' MXFP4 save path (Mxfp4HfQuantizer.get_state_dict_and_metadata) reshapes blocks with a
# hard-coded 90 = 2880 / 32, so a save round trip needs hidden = intermediate = 2880.
SAVABLE = tiny.TinyGptOss(hidden_size=2880, intermediate_size=2880, vocab_size=128)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def input_ids(vocab: int, batch: int = 2, seq: int = 12) -> list:
    return torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(1)).tolist()


def worker_env(tmp_path: Path, cache: Path, **extra: str) -> dict:
    # TRITON_INTERPRET=0: what a user's CPU process has (the ops take their torch references).
    return offline_env(tmp_path, cache, **{"USE_HUB_KERNELS": "0", "TRITON_INTERPRET": "0", **extra})


def require_accelerate():
    """transformers refuses to load MXFP4 weights (other than dequantized) without `accelerate`."""
    from transformers.utils import is_accelerate_available

    if not is_accelerate_available():
        pytest.fail("transformers' MXFP4 path needs `accelerate` (which needs `psutil`): "
                    "add accelerate==1.15.0 and psutil to requirements.txt", pytrace=False)


def run_job(tmp_path: Path, env: dict, name: str, **job) -> tuple[dict, dict]:
    require_accelerate()
    job.setdefault("device", "cpu")
    job["tensors_out"] = str(tmp_path / f"{name}.pt")
    job_file = tmp_path / f"{name}.json"
    job_file.write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, str(WORKER), "--run-job", str(job_file)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=env["HF_HOME"])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(tiny.RESULT_PREFIX)]
    assert len(lines) == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(lines[0][len(tiny.RESULT_PREFIX):]), torch.load(job["tensors_out"])


def read_experts(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(checkpoint_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            out.update({k: s.get_tensor(k) for k in s.keys() if ".mlp.experts." in k})
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A checkout-like folder holding build/ (what LOCAL_KERNELS points at)."""
    root = tmp_path_factory.mktemp("e2e_repo")
    build_variants(REPO_ROOT, root / "build")
    return root


@pytest.fixture(scope="module")
def hub_cache(built, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("e2e_hub")
    publish.seed_cache(publish.collect_release(REPO_ID, built / "build"), REPO_ID, cache_dir=cache)
    return cache


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return tiny.make_tiny_gptoss(tmp_path_factory.mktemp("tiny_gptoss"), TINY)


def assert_our_kernel_ran(load: dict, variant_dir: Path, n_forwards: int, layers: int):
    kernel = load["kernel"]
    assert Path(kernel["hub_file"]).parent == variant_dir, kernel["hub_file"]
    assert kernel["kernel_name"] == "triton-kernels" and kernel["kernel_version"] == 1
    assert kernel["backend"] == "cpu" and kernel["hub_module"] == kernel["kernel_id"]
    assert load["experts"] == ["Mxfp4GptOssExperts"]
    for layer in kernel["layers"]:
        assert layer["experts"] == "Mxfp4GptOssExperts" and layer["weight_is_hub_tensor"], layer
    # transformers' MoE forward went through our routing and both matmuls of every layer, each forward.
    assert load["calls_after_forward"] == {"routing": n_forwards * layers, "matmul_ogs": 2 * n_forwards * layers}


# --------------------------------------------------------------------------- checkpoint format


def test_checkpoint_layout_matches_transformers_dequantizer():
    """Blocks/scales written by quantize_expert_weight decode, through transformers' own
    convert_moe_packed_tensors, to the [E, K, N] weight GptOssExperts uses (nibble order, block axis)."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    g = torch.Generator().manual_seed(3)
    e, k, n = 3, 96, 40
    values = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    codes = values[torch.randint(0, 8, (e, k, n), generator=g)] * torch.where(torch.rand(e, k, n, generator=g) < 0.5, -1, 1)
    # One power-of-two scale per 32 consecutive K, with a 6 in each block so the scale is exactly that power.
    exps = torch.randint(-4, 4, (e, k // 32, n), generator=g).float()
    codes.view(e, k // 32, 32, n)[:, :, 0, :] = 6.0
    w = codes * torch.pow(2.0, exps).repeat_interleave(32, dim=1)
    blocks, scales = tiny.quantize_expert_weight(w)
    assert blocks.dtype == scales.dtype == torch.uint8
    assert blocks.shape == (e, n, k // 32, 16) and scales.shape == (e, n, k // 32)
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    assert theirs.shape == (e, k, n)
    assert torch.equal(theirs, w)
    assert torch.equal(tiny.dequantize_expert_weight(blocks, scales), w)


def test_tiny_checkpoint_files(tiny_ckpt):
    config = json.loads((tiny_ckpt / "config.json").read_text())
    assert config["model_type"] == "gpt_oss" and config["quantization_config"]["quant_method"] == "mxfp4"
    assert config["layer_types"] == ["sliding_attention", "full_attention"]
    assert config["num_local_experts"] == 4 and config["num_experts_per_tok"] == 2 and config["swiglu_limit"] == 7.0
    experts = read_experts(tiny_ckpt)
    h, i, e = TINY.hidden_size, TINY.intermediate_size, TINY.num_experts
    for layer in range(TINY.num_layers):
        p = f"model.layers.{layer}.mlp.experts."
        assert experts[p + "gate_up_proj_blocks"].shape == (e, 2 * i, h // 32, 16)
        assert experts[p + "gate_up_proj_scales"].shape == (e, 2 * i, h // 32)
        assert experts[p + "down_proj_blocks"].shape == (e, h, i // 32, 16)
        assert experts[p + "down_proj_scales"].shape == (e, h, i // 32)
        assert experts[p + "gate_up_proj_bias"].shape == (e, 2 * i)
        assert experts[p + "down_proj_bias"].shape == (e, h)
    with safe_open(str(tiny_ckpt / tiny.SAFETENSORS_FILE), "pt") as s:
        keys = set(s.keys())
    assert {"model.layers.0.self_attn.sinks", "model.layers.0.mlp.router.bias", "lm_head.weight"} <= keys


def test_bad_sizes_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="`hidden_size` must be a multiple of 32"):
        tiny.TinyGptOss(hidden_size=48)
    with pytest.raises(ValueError, match=r"`top_k` \(5\) must be <= `num_experts` \(4\)"):
        tiny.TinyGptOss(top_k=5)
    with pytest.raises(ValueError, match="`num_layers` must be a positive int"):
        tiny.TinyGptOss(num_layers=0)
    with pytest.raises(ValueError, match="`num_heads` \\(4\\) must be a multiple of `num_kv_heads` \\(3\\)"):
        tiny.TinyGptOss(num_kv_heads=3)
    with pytest.raises(ValueError, match=r"`num_experts` \+ `vocab_size` \(4 \+ 128\) must be <= `hidden_size` \(128\)"):
        tiny.TinyGptOss(vocab_size=128)
    with pytest.raises(TypeError, match="`w_kn` must be a floating tensor"):
        tiny.quantize_expert_weight(torch.zeros(4, 32))
    with pytest.raises(ValueError, match="K=40 must be a multiple of 32"):
        tiny.quantize_expert_weight(torch.zeros(1, 40, 8))
    with pytest.raises(TypeError, match="either `spec` or size keywords"):
        tiny.make_tiny_gptoss(tmp_path, TINY, hidden_size=64)
    assert tiny.main(["--out", str(tmp_path / "x"), "--hidden-size", "33"]) == 2
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- CPU, through get_kernel


@cpu_machine_only
def test_offline_cache_by_repo_id_matches_dequantized(hub_cache, tiny_ckpt, tmp_path):
    """The user's CPU path: HF_HUB_OFFLINE=1, use_kernels=True, the kernel from the seeded cache."""
    res, t = run_job(tmp_path, worker_env(tmp_path, hub_cache), "offline", checkpoint=str(tiny_ckpt),
                     input_ids=input_ids(TINY.vocab_size), loads=["mxfp4", "dequant", "dequant_fp32"],
                     ablate_moe=True, generate=8)
    snapshots = hub_cache / "kernels--kernels-community--gpt-oss-triton-kernels" / "snapshots"
    (commit,) = [p.name for p in snapshots.iterdir()]
    mx = res["loads"]["mxfp4"]
    assert_our_kernel_ran(mx, snapshots / commit / "build" / "torch-cpu", n_forwards=2, layers=TINY.num_layers)
    assert mx["kernel"]["loaded_kernel_ids"] == [mx["kernel"]["kernel_id"]]  # nothing else was fetched
    assert mx["kernel"]["target"]["variant"] == "cpu" and not mx["kernel"]["target"]["runs_triton"]
    assert {layer["weight_layout"] for layer in mx["kernel"]["layers"]} == {"StridedLayout"}
    # The ops ran as our torch references (no Triton on a user's CPU) and said so once each.
    assert any(w.startswith("triton_kernels.matmul_ogs: using the torch reference") for w in mx["warnings"])
    assert res["checkout_package_imported"] is False
    for kind in ("dequant", "dequant_fp32"):
        assert res["loads"][kind]["experts"] == ["GptOssExperts"]
        assert res["loads"][kind]["warnings"] == []

    ours, deq, f32 = t["mxfp4/logits"], t["dequant/logits"], t["dequant_fp32/logits"]
    assert ours.shape == (2, 12, TINY.vocab_size) and torch.isfinite(ours).all()
    assert rel_err(ours, deq) <= REL_TOL
    # Against fp32 (same MXFP4 weights, no bf16 rounding) ours is no worse than transformers' bf16 path.
    assert rel_err(ours, f32) <= 1.25 * rel_err(deq, f32) + 1e-3
    # ... and the experts matter at that tolerance: without their output the logits move far more.
    assert rel_err(t["mxfp4/logits_moe_zeroed"], deq) > 10 * REL_TOL
    # Both paths route every token to the same experts (the checkpoint's routing margins are far above
    # bf16 noise), and the prompts reach every expert.
    assert torch.equal(t["mxfp4/experts_chosen"], t["dequant/experts_chosen"])
    assert set(t["mxfp4/experts_chosen"].unique().tolist()) == set(range(TINY.num_experts))
    # Greedy generation: same tokens (the continuation the checkpoint scripts with a wide margin), and
    # the 1-token decode steps' logits agree like the prefill's.
    gen_ours, gen_deq = mx["generated"], res["loads"]["dequant"]["generated"]
    assert len(gen_ours) == 2 and all(len(row) == 8 for row in gen_ours)
    assert gen_ours == gen_deq, (gen_ours, gen_deq)
    nxt = tiny.next_token_map(TINY).tolist()
    for prompt, row in zip(input_ids(TINY.vocab_size), gen_ours):
        assert row == [nxt[prompt[-1]]] + [nxt[t] for t in row[:-1]], row
    assert rel_err(t["mxfp4/generate_logits"], t["dequant/generate_logits"]) <= REL_TOL


@cpu_machine_only
def test_local_kernels_override_runs_the_triton_kernels(built, tiny_ckpt, tmp_path):
    """LOCAL_KERNELS=<repo id>=<checkout> with an empty cache; TRITON_INTERPRET=1 so transformers'
    forward runs our Triton routing and matmul_ogs kernels (interpreted) instead of the references.
    Also pins transformers' save limit at these dims (its hard-coded 2880)."""
    env = worker_env(tmp_path, tmp_path / "empty-cache", LOCAL_KERNELS=f"{REPO_ID}={built}", TRITON_INTERPRET="1")
    res, t = run_job(tmp_path, env, "local", checkpoint=str(tiny_ckpt), input_ids=input_ids(TINY.vocab_size, 1, 6),
                     loads=["mxfp4", "dequant"], save_to=str(tmp_path / "saved"))
    mx = res["loads"]["mxfp4"]
    assert_our_kernel_ran(mx, built / "build" / "torch-cpu", n_forwards=2, layers=TINY.num_layers)
    assert mx["kernel"]["target"]["runs_triton"] and mx["kernel"]["target"]["interpreter"]
    assert not any("matmul_ogs: using the torch reference" in w or "routing: using the torch reference" in w
                   for w in mx["warnings"]), mx["warnings"]
    assert rel_err(t["mxfp4/logits"], t["dequant/logits"]) <= REL_TOL
    assert "shape '[4, -1, 90, 16]' is invalid" in mx["save_error"], mx.get("save_error")


@cpu_machine_only
def test_save_pretrained_round_trip(hub_cache, tmp_path):
    """save_pretrained of the model loaded through our kernel unswizzles with our layouts and writes
    the checkpoint's bytes back; reloading it gives the same logits."""
    ckpt = tiny.make_tiny_gptoss(tmp_path / "ckpt", SAVABLE)
    saved = tmp_path / "saved"
    res, t = run_job(tmp_path, worker_env(tmp_path, hub_cache), "roundtrip", checkpoint=str(ckpt),
                     input_ids=input_ids(SAVABLE.vocab_size, 1, 6), loads=["mxfp4"], save_to=str(saved))
    mx = res["loads"]["mxfp4"]
    assert "save_error" not in mx, mx["save_error"]
    # transformers unswizzled values and scales of both projections of every layer with our layout.
    assert set(mx["unswizzle_calls"]) == {"StridedLayout"}
    assert mx["unswizzle_calls"]["StridedLayout"] >= 4 * SAVABLE.num_layers
    assert mx["reloaded_kernel"]["layers"] == mx["kernel"]["layers"]
    assert json.loads((saved / "config.json").read_text())["quantization_config"]["quant_method"] == "mxfp4"
    before, after = read_experts(ckpt), read_experts(saved)
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        if name.endswith(("_blocks", "_scales")):
            assert after[name].dtype == torch.uint8 and after[name].shape == tensor.shape, name
            assert torch.equal(after[name], tensor), name
        else:  # biases come back as the fp32 the MXFP4 experts hold
            assert torch.equal(after[name].to(tensor.dtype), tensor), name
    assert torch.equal(t["mxfp4/logits_reloaded"], t["mxfp4/logits"])


def test_cpu_use_kernels_also_asks_for_megablocks(hub_cache, tiny_ckpt, tmp_path):
    """Without USE_HUB_KERNELS=0, transformers' use_kernels=True also kernelizes GptOssMLP with
    kernels-community/megablocks; offline, kernels 0.17.2 then fails although transformers asked it
    to fall back. Our kernel was fetched by then. (Documents why the README says USE_HUB_KERNELS=0.)"""
    require_accelerate()
    env = offline_env(tmp_path, hub_cache, TRITON_INTERPRET="0")
    env.pop("USE_HUB_KERNELS", None)
    code = f"""
import torch
from transformers import AutoModelForCausalLM

try:
    AutoModelForCausalLM.from_pretrained({str(tiny_ckpt)!r}, dtype=torch.bfloat16, use_kernels=True)
    print("RESULT:loaded")
except ValueError as e:
    print("RESULT:" + str(e))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=env["HF_HOME"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT:")]
    assert "'kernels-community/megablocks' is not available in the local cache" in line, line


# --------------------------------------------------------------------------- GPU (the lead runs these)


@pytest.mark.gpu
def test_gpu_gpt_oss_dims_end_to_end(tmp_path):
    """benchmarks/e2e_transformers_gpu.py at hidden 2880, 32 experts, top-4, 2 layers, on CUDA."""
    out = tmp_path / "e2e.json"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "e2e_transformers_gpu.py"),
                           "--out", str(out), "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=1200, env={**os.environ})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    report = json.loads(out.read_text())
    assert report["ok"], report["checks"]
