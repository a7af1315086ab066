"""Loading the built package through every loader path of the real `kernels` library, on CPU.

Each path imports the package and runs `swiglu.swiglu_torch`, compared with a direct computation
written here. Loads by repo id run in a subprocess with HF_HOME / HF_HUB_CACHE in tmp_path and
HF_HUB_OFFLINE=1, as a user on an air-gapped machine would run them; nothing reads ~/.cache and
nothing reaches the network (the one online-mode test points HF_ENDPOINT at a closed local port
and serves the Hub listing calls from a seeded cache).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernels import get_kernel, get_loaded_kernels, get_local_kernel
from kernels._rust import Backend

from scripts import publish
from scripts.build_variants import REPO_ROOT
from scripts.offline import offline_env

# What a machine without a GPU loads (the torch-cpu build, the CPU backend): on a GPU machine the
# loader rightly picks torch-cuda, so these assertions hold on CPU machines (CI) only.
cpu_machine_only = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the build a machine without a GPU "
                                      "loads; a GPU machine loads torch-cuda")

REPO_IDS = ("kernels-community/triton_kernels", "kernels-community/gpt-oss-triton-kernels")

# Runs the op through a loaded module and compares it with the formula, computed here.
CHECK_OP = '''
import json, sys
from pathlib import Path
import torch

def check(tk):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 16, generator=g) * 4  # beyond the limit, so both clamps act
    alpha, limit = 1.702, 7.0
    gate, lin = a[:, 0::2].clamp(max=limit), a[:, 1::2].clamp(min=-limit, max=limit)
    expected = gate * torch.sigmoid(alpha * gate) * (lin + 1)
    got = tk.swiglu.swiglu_torch(a, alpha, tk.swiglu.PrecisionConfig(limit=limit))
    return {"variant": Path(tk.__file__).parent.name, "module": tk.__name__, "file": tk.__file__,
            "shape": list(got.shape), "max_err": float((got - expected).abs().max())}

def report(**kw):
    print("RESULT:" + json.dumps(kw))
'''


def check_op(tk) -> dict:
    scope: dict = {}
    exec(CHECK_OP, scope)
    return scope["check"](tk)


def assert_ran_on_cpu_variant(res: dict, variant: str = "torch-cpu"):
    assert res["variant"] == variant, res
    assert res["shape"] == [5, 8]
    assert res["max_err"] < 1e-5, res


def run_python(code: str, env: dict) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", CHECK_OP + code], capture_output=True, text=True, env=env,
                          timeout=120, cwd=env["HF_HOME"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT:")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0][len("RESULT:"):]), proc.stderr


@pytest.fixture
def repo(built, tmp_path) -> Path:
    """A fresh copy per test: the loader caches modules by variant path."""
    root = tmp_path / "repo"
    shutil.copytree(built, root / "build")
    return root


# --------------------------------------------------------------------------- local paths (in process)


@cpu_machine_only
def test_get_local_kernel_picks_torch_cpu_and_runs_the_op(repo):
    tk = get_local_kernel(repo)
    assert_ran_on_cpu_variant(check_op(tk))
    assert Path(tk.__file__).parent == repo / "build" / "torch-cpu"
    loaded = next(k for k in get_loaded_kernels() if k.module is tk)
    assert loaded.metadata.backend.backend_type == Backend.CPU
    assert tk.__name__ == loaded.metadata.id and tk.__name__.startswith("_triton_kernels_cpu_")
    assert set(tk.__all__) >= {"swiglu", "matmul_ogs", "routing", "tensor", "numerics", "topk", "target_info"}


@cpu_machine_only
def test_local_kernels_override_with_get_kernel(repo, monkeypatch):
    monkeypatch.setenv("LOCAL_KERNELS", f"{REPO_IDS[1]}={repo}")
    tk = get_kernel(REPO_IDS[1], version=1)
    assert_ran_on_cpu_variant(check_op(tk))
    assert Path(tk.__file__).parent == repo / "build" / "torch-cpu"


@cpu_machine_only
def test_tree_without_torch_cpu_falls_back_to_universal(repo):
    shutil.rmtree(repo / "build" / "torch-cpu")
    tk = get_local_kernel(repo)
    assert_ran_on_cpu_variant(check_op(tk), "torch-universal")


@cpu_machine_only
def test_tree_without_a_variant_for_this_machine_is_refused_clearly(repo):
    shutil.rmtree(repo / "build" / "torch-cpu")
    shutil.rmtree(repo / "build" / "torch-universal")
    with pytest.raises(FileNotFoundError, match=r"Cannot find a build variant for this system") as info:
        get_local_kernel(repo)
    assert "torch-cuda: backend (cuda) does not match system backend (cpu)" in str(info.value)


def test_old_loader_entry_is_the_same_package(repo):
    """Loaders before kernels 0.11 import <variant>/triton_kernels/__init__.py under a name of their own."""
    init = repo / "build" / "torch-universal" / "triton_kernels" / "__init__.py"
    name = "old_loader_triton_kernels_test"
    spec = importlib.util.spec_from_file_location(name, init)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        res = check_op(module)
        assert res["variant"] == "triton_kernels" and res["shape"] == [5, 8] and res["max_err"] < 1e-5
        assert Path(module.swiglu.__file__).parent == repo / "build" / "torch-universal"
        # Submodules import through the entry, as the same objects (no second copy of the package).
        sub = importlib.import_module(f"{name}.swiglu")
        assert sub is module.swiglu
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_variant_dir_on_sys_path_imports_as_triton_kernels(repo, tmp_path):
    variant = repo / "build" / "torch-cuda"
    code = f"""
import sys
sys.path.insert(0, {str(variant)!r})
import triton_kernels
from triton_kernels.swiglu import swiglu_torch
assert swiglu_torch is triton_kernels.swiglu.swiglu_torch
res = check(triton_kernels)
res["swiglu_file"] = triton_kernels.swiglu.__file__
report(**res)
"""
    res, _ = run_python(code, offline_env(tmp_path, tmp_path / "unused-cache"))
    assert Path(res["swiglu_file"]).parent == variant
    assert res["max_err"] < 1e-5 and res["shape"] == [5, 8]


# --------------------------------------------------------------------------- by repo id, offline cache


@cpu_machine_only
def test_offline_get_kernel_by_repo_id_version_1_and_main(built, tmp_path):
    cache = tmp_path / "hub"
    for repo_id in REPO_IDS:
        publish.seed_cache(publish.collect_release(repo_id, built), repo_id, cache_dir=cache)
    code = f"""
from kernels import get_kernel, get_loaded_kernels
out = {{}}
for repo_id in {list(REPO_IDS)!r}:
    v1 = get_kernel(repo_id, version=1)
    main = get_kernel(repo_id, revision="main")
    meta = next(k.metadata for k in get_loaded_kernels() if k.module is v1)
    out[repo_id] = {{"v1": check(v1), "main": check(main), "same": v1 is main,
                     "backend": str(meta.backend.backend_type), "version": meta.version}}
report(**out)
"""
    res, stderr = run_python(code, offline_env(tmp_path, cache))
    for repo_id in REPO_IDS:
        r = res[repo_id]
        assert_ran_on_cpu_variant(r["v1"])
        assert_ran_on_cpu_variant(r["main"])
        folder = "kernels--" + repo_id.replace("/", "--")
        assert f"{cache}/{folder}/snapshots/" in r["v1"]["file"]
        assert r["same"] and r["backend"] == "cpu" and r["version"] == 1
    # Offline, kernels cannot ask the Hub whether the publisher is trusted; it says so.
    assert f"Skipping publisher trust check for '{REPO_IDS[0]}'" in stderr


@cpu_machine_only
def test_offline_bad_use_gets_clear_errors(built, tmp_path):
    cache = tmp_path / "hub"
    publish.seed_cache(publish.collect_release(REPO_IDS[0], built), REPO_IDS[0], cache_dir=cache)
    code = f"""
from kernels import get_kernel
calls = {{
    "version2": lambda: get_kernel({REPO_IDS[0]!r}, version=2),
    "no_version": lambda: get_kernel({REPO_IDS[0]!r}),
    "unknown_repo": lambda: get_kernel("kernels-community/triton-kernels-typo", version=1),
    "malformed_repo": lambda: get_kernel("a/b/c", version=1),
}}
out = {{}}
for name, call in calls.items():
    try:
        call()
        out[name] = "no error"
    except Exception as e:
        out[name] = type(e).__name__ + ": " + str(e)
report(**out)
"""
    res, _ = run_python(code, offline_env(tmp_path, cache))
    assert res["version2"] == "ValueError: Version 2 not found, available versions: 1"
    assert res["no_version"].startswith("ValueError: A kernel version or revision must be specified")
    assert res["unknown_repo"].startswith(
        "ValueError: Version 1 of 'kernels-community/triton-kernels-typo' is not available in the local cache")
    assert "HFValidationError" in res["malformed_repo"] and "namespace/repo_name" in res["malformed_repo"]


@cpu_machine_only
def test_offline_corrupt_caches(built, tmp_path):
    """What kernels 0.17.2 does with a damaged cache. It refuses missing files, dangling refs and broken
    metadata; it does NOT check digests when it loads, so a modified file loads - which is why
    `scripts.publish verify --cache` exists, and it names the file."""
    cache = tmp_path / "hub"
    seeded = {}
    for repo_id in ("corrupt/missing-file", "corrupt/dangling-ref", "corrupt/bad-metadata", "corrupt/tampered"):
        release = publish.collect_release(repo_id, built)
        result = publish.seed_cache(release, repo_id, cache_dir=cache, layouts=("kernel",))
        seeded[repo_id] = (result.repo_folders[0], result.repo_folders[0] / "snapshots" / result.commit)
    publish.seed_cache(publish.collect_release("legacy/model-layout-only", built), "legacy/model-layout-only",
                       cache_dir=cache, layouts=("model",))

    (seeded["corrupt/missing-file"][1] / "build/torch-cpu/routing.py").unlink()
    (seeded["corrupt/dangling-ref"][0] / "refs" / "v1").write_text("f" * 40)
    bad_meta = seeded["corrupt/bad-metadata"][1] / "build/torch-cpu/metadata.json"
    bad_meta.unlink()
    bad_meta.write_text('{"name": "triton-kernels", "id"')
    tampered = seeded["corrupt/tampered"][1] / "build/torch-cpu/swiglu.py"
    data = tampered.read_bytes() + b"\nTAMPERED = True\n"
    tampered.unlink()
    tampered.write_bytes(data)

    code = """
from kernels import get_kernel
out = {}
for repo_id in ["corrupt/missing-file", "corrupt/dangling-ref", "corrupt/bad-metadata", "corrupt/tampered",
                "legacy/model-layout-only"]:
    try:
        tk = get_kernel(repo_id, version=1)
        out[repo_id] = {"loaded": True, "tampered": getattr(tk.swiglu, "TAMPERED", False)}
    except Exception as e:
        out[repo_id] = {"loaded": False, "error": type(e).__name__ + ": " + str(e),
                        "cause": repr(e.__cause__)}
report(**out)
"""
    res, _ = run_python(code, offline_env(tmp_path, cache))
    missing = res["corrupt/missing-file"]
    assert not missing["loaded"] and missing["error"].startswith("FileNotFoundError: Cannot find a local snapshot")
    assert "IncompleteSnapshotError" in missing["cause"] and "build/torch-cpu/routing.py" in missing["cause"]
    dangling = res["corrupt/dangling-ref"]
    assert not dangling["loaded"] and f"revision: {'f' * 40}" in dangling["error"]
    meta = res["corrupt/bad-metadata"]
    assert not meta["loaded"] and "Cannot parse metadata" in meta["error"] and "torch-cpu/metadata.json" in meta["error"]
    # Seeded only as models--org--name (old loaders): kernels 0.17 finds the version there but loads
    # snapshots from kernels--org--name only, hence `publish cache` writes both layouts by default.
    legacy = res["legacy/model-layout-only"]
    assert not legacy["loaded"] and "Cannot find a local snapshot" in legacy["error"]
    assert res["corrupt/tampered"] == {"loaded": True, "tampered": True}
    with pytest.raises(ValueError, match="torch-cpu.*swiglu.py"):
        publish.verify_cache("corrupt/tampered", "v1", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="routing.py"):
        publish.verify_cache("corrupt/missing-file", "v1", cache_dir=cache)


# --------------------------------------------------------------------------- trust (online mode, no network)

FAKE_HUB = '''
import json, os
from pathlib import Path
from huggingface_hub import HfApi
from huggingface_hub.hf_api import GitRefInfo, GitRefs, RepoFolder

SNAPSHOTS = {repo: Path(p) for repo, p in json.loads(os.environ["FAKE_HUB_SNAPSHOTS"]).items()}

class _Org:
    def __init__(self, trusted):
        self.trustedKernelPublisher = trusted

# The Hub's answers, served from a seeded snapshot. Only kernels-community is a trusted publisher here.
HfApi.get_organization_overview = lambda self, org, **kw: _Org(org == "kernels-community")
HfApi.list_repo_refs = lambda self, repo_id, **kw: GitRefs(
    branches=[GitRefInfo(name=b, ref=f"refs/heads/{b}", target_commit=SNAPSHOTS[repo_id].name) for b in ("main", "v1")],
    converts=[], tags=[])
HfApi.list_repo_tree = lambda self, repo_id, path_in_repo=None, **kw: [
    RepoFolder(path=f"build/{p.name}", oid="0" * 40) for p in sorted((SNAPSHOTS[repo_id] / "build").iterdir())]
HfApi.hf_hub_download = lambda self, repo_id, filename, **kw: str(SNAPSHOTS[repo_id] / filename)
HfApi.snapshot_download = lambda self, repo_id, **kw: str(SNAPSHOTS[repo_id])
'''


def test_untrusted_publisher_is_refused_unless_trust_remote_code(built, tmp_path):
    repo_id = "some-org/triton_kernels"
    snapshots = {}
    for rid in (repo_id, REPO_IDS[0]):
        result = publish.seed_cache(publish.collect_release(rid, built), rid, cache_dir=tmp_path / "seed",
                                    layouts=("kernel",))
        snapshots[rid] = str(result.repo_folders[0] / "snapshots" / result.commit)
    env = offline_env(tmp_path, tmp_path / "empty-cache", HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9",
                      FAKE_HUB_SNAPSHOTS=json.dumps(snapshots))
    code = FAKE_HUB + f"""
from kernels import get_kernel, get_loaded_kernels

out = {{}}
def attempt(name, repo_id, **kw):
    try:
        tk = get_kernel(repo_id, version=1, **kw)
        out[name] = check(tk)
        info = next(k.repo_info for k in get_loaded_kernels() if k.module is tk)
        out[name]["repo_info"] = [info.repo_id, info.revision]
    except ValueError as e:
        out[name] = {{"error": str(e)}}
attempt("default", {repo_id!r})
attempt("other_repo_allowed", {repo_id!r}, trust_remote_code=["some-org/other"])
attempt("trusted", {repo_id!r}, trust_remote_code=True)
attempt("allowlisted", {repo_id!r}, trust_remote_code=[{repo_id!r}])
attempt("trusted_org", {REPO_IDS[0]!r})
report(**out)
"""
    res, _ = run_python(code, env)
    for refused in ("default", "other_repo_allowed"):
        assert res[refused]["error"].startswith(
            f"Kernel repository '{repo_id}' is not from a trusted publisher. Set trust_remote_code=True")
    for accepted in ("trusted", "allowlisted", "trusted_org"):
        assert_ran_on_cpu_variant(res[accepted])
    assert res["trusted"]["repo_info"] == [repo_id, Path(snapshots[repo_id]).name]
    assert res["trusted_org"]["repo_info"] == [REPO_IDS[0], Path(snapshots[REPO_IDS[0]]).name]
    assert "/kernels--some-org--triton_kernels/" in res["trusted"]["file"]
    assert "/kernels--kernels-community--triton_kernels/" in res["trusted_org"]["file"]
