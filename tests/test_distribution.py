"""The build tree and the two publish paths, checked with the real `kernels` / huggingface_hub libraries.

Hermetic: everything is built into tmp_path, caches live in tmp_path, nothing reads or writes
~/.cache, and nothing touches the network (the Hub path is exercised as a dry run and against a
recording stand-in for HfApi).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import scan_cache_dir
from kernels._rust import Backend, Build, Digest, DigestValidationError, DigestViolation, Metadata

import kernels.verify
from kernels.backends import _backend
from kernels.python_deps import validate_dependencies
from kernels.verify import VerificationResult, verify_variant
from scripts import publish
from scripts.build_variants import REPO_ROOT, build_variants, check_variant_digest, package_files, read_config

REPO_IDS = ("kernels-community/triton_kernels", "kernels-community/gpt-oss-triton-kernels")
VARIANTS = ("torch-cpu", "torch-cuda", "torch-universal")
PY = sys.executable


def tree_bytes(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: relative path -> (bytes, mode)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def hermetic_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KERNELS_", "LOCAL_KERNELS"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(REPO_ROOT), **extra)
    return env


@pytest.fixture
def build_copy(built, tmp_path) -> Path:
    dst = tmp_path / "repo" / "build"
    shutil.copytree(built, dst)
    return dst


# --------------------------------------------------------------------------- build.toml


def test_build_toml_is_accepted_by_kernels():
    build = Build.open(REPO_ROOT)
    assert set(build.general.backends) == {Backend.CUDA, Backend.CPU}
    assert build.all_kernel_depends(Backend.CUDA) == []
    raw = tomllib.loads((REPO_ROOT / "build.toml").read_text())
    assert raw["general"]["edition"] == 5
    assert raw["general"]["hub"]["repo-id"] == "kernels-community/triton_kernels"
    assert "torch-noarch" in raw
    config = read_config(REPO_ROOT)
    assert (config.name, config.python_name, config.version) == ("triton-kernels", "triton_kernels", 1)
    assert config.license == "MIT"
    assert config.variants == VARIANTS
    assert (REPO_ROOT / "torch-ext" / config.python_name / "__init__.py").is_file()


def test_declared_python_depends_are_ones_the_loader_accepts():
    config = read_config(REPO_ROOT)
    validate_dependencies(config.python_name, list(config.python_depends), _backend())
    # Why triton is not declared: the loader refuses names outside its python_depends.json.
    with pytest.raises(ValueError, match="unsupported kernel dependency: triton"):
        validate_dependencies(config.python_name, ["triton"], _backend())


def test_bad_build_toml_is_refused_with_the_reason(tmp_path):
    (tmp_path / "build.toml").write_text((REPO_ROOT / "build.toml").read_text().replace(
        'name = "triton-kernels"', 'name = "triton_kernels"'))
    with pytest.raises(ValueError, match="Invalid kernel name `triton_kernels`"):
        read_config(tmp_path)
    with pytest.raises(ValueError, match="must be a kernel repository with a build.toml"):
        read_config(tmp_path / "nowhere")


# --------------------------------------------------------------------------- build tree


def test_variants_hold_the_package_compat_entry_and_metadata(built):
    config = read_config(REPO_ROOT)
    source_files = package_files(REPO_ROOT / "torch-ext" / "triton_kernels")
    assert "swiglu.py" in source_files and "__init__.py" in source_files
    assert sorted(p.name for p in built.iterdir()) == list(VARIANTS)
    ids = set()
    for variant in VARIANTS:
        vdir = built / variant
        files = sorted(p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file())
        assert files == sorted(source_files + ["triton_kernels/__init__.py", "metadata.json"])
        assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
        meta = Metadata.read_from_file(vdir / "metadata.json")
        assert str(meta.name) == "triton-kernels" and meta.name.python_name == "triton_kernels"
        assert meta.version == 1 and meta.license == "MIT"
        assert meta.python_depends == list(config.python_depends)
        expected_backend = {"torch-cpu": Backend.CPU}.get(variant, Backend.CUDA)
        assert meta.backend.backend_type == expected_backend
        assert meta.backend.archs is None  # noarch: the loader's arch check does not apply
        assert sorted(meta.digest.files) == sorted(f for f in files if f != "metadata.json")
        ids.add(meta.id)
        # No timestamps or machine paths in metadata.
        text = (vdir / "metadata.json").read_text()
        assert str(REPO_ROOT) not in text and str(built) not in text
    assert len(ids) == 3, "each variant needs its own module name (metadata id)"


def test_every_variant_digest_verifies_and_one_changed_byte_fails(build_copy):
    for variant in VARIANTS:
        check_variant_digest(build_copy / variant)
    target = build_copy / "torch-cpu" / "swiglu.py"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    meta = Metadata.read_from_file(build_copy / "torch-cpu" / "metadata.json")
    with pytest.raises(DigestValidationError) as info:
        meta.digest.validate(Digest.hash_variant(meta.digest.algorithm, build_copy / "torch-cpu"))
    assert [type(v) for v in info.value.violations] == [DigestViolation.HashMismatch]
    assert info.value.violations[0].path == "swiglu.py"
    with pytest.raises(ValueError, match="swiglu.py"):
        check_variant_digest(build_copy / "torch-cpu")
    # Extra and missing files are caught too.
    (build_copy / "torch-cuda" / "extra.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="extra.py"):
        check_variant_digest(build_copy / "torch-cuda")
    (build_copy / "torch-universal" / "topk.py").unlink()
    with pytest.raises(ValueError, match="topk.py"):
        check_variant_digest(build_copy / "torch-universal")


class _AcceptingVerifier:
    """Stands in for Sigstore's production verifier: signing needs Sigstore OIDC on the
    kernels-community CI, which no local build has. Only the signature step is replaced."""

    @staticmethod
    def production():
        return _AcceptingVerifier()

    def verify_artifact(self, artifact, bundle, policy):
        return None


def test_verify_variant(build_copy, monkeypatch):
    cpu = build_copy / "torch-cpu"
    # Unsigned, as every build made outside kernels-community's CI: the library says so.
    assert isinstance(verify_variant(cpu), VerificationResult.SignatureBundleMissing)
    # With the signature step stood in for, the library's digest check accepts the tree...
    (cpu / "metadata.json.sigstore").write_text("{}")
    monkeypatch.setattr(kernels.verify.Bundle, "from_json", classmethod(lambda cls, data: object()))
    monkeypatch.setattr(kernels.verify, "Verifier", _AcceptingVerifier)
    assert isinstance(verify_variant(cpu), VerificationResult.Success)
    # ... and refuses it after one byte changes.
    target = cpu / "routing.py"
    target.write_bytes(target.read_bytes()[:-1] + bytes([target.read_bytes()[-1] ^ 0x20]))
    result = verify_variant(cpu)
    assert isinstance(result, VerificationResult.DigestVerificationFailure)
    assert [v.path for v in result.violations] == ["routing.py"]


def test_kernels_info_describes_the_tree(built):
    proc = subprocess.run([str(Path(PY).with_name("kernels")), "info", str(built.parent), "--json"],
                          capture_output=True, text=True, env=hermetic_env(built.parent), timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["name"] == "triton-kernels" and info["version"] == 1 and info["license"] == "MIT"
    assert sorted(info["backends"]) == ["cpu", "cuda", "universal"]


def test_two_builds_are_byte_identical(built, tmp_path):
    again = tmp_path / "again" / "build"
    build_variants(REPO_ROOT, again)
    assert tree_bytes(again) == tree_bytes(built)
    build_variants(REPO_ROOT, again)  # rebuilding in place replaces the tree with the same bytes
    assert tree_bytes(again) == tree_bytes(built)


def _fake_source(tmp_path: Path) -> Path:
    """A small kernel repository: our build.toml and a two-file package, plus junk."""
    src = tmp_path / "src"
    pkg = src / "torch-ext" / "triton_kernels"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "build.toml", src / "build.toml")
    (pkg / "__init__.py").write_text("from . import sub\n")
    (pkg / "sub" / "__init__.py").write_text("X = 1\n")
    for junk in ("sub/__pycache__/__init__.cpython-311.pyc", ".DS_Store", "sub/__init__.py~", "x.pyc", ".hidden.py"):
        (pkg / junk).write_bytes(b"junk")
    return src


def test_build_leaves_junk_out(tmp_path):
    src = _fake_source(tmp_path)
    out = build_variants(src, tmp_path / "out")
    for vdir in out.values():
        assert sorted(p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()) == [
            "__init__.py", "metadata.json", "sub/__init__.py", "triton_kernels/__init__.py"]


def test_build_refuses_bad_inputs(tmp_path):
    src = _fake_source(tmp_path)
    foreign = tmp_path / "notabuild"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to replace it"):
        build_variants(src, foreign)
    assert (foreign / "important.txt").read_text() == "keep me"
    (src / "torch-ext" / "triton_kernels" / "triton_kernels").mkdir()
    (src / "torch-ext" / "triton_kernels" / "triton_kernels" / "x.py").write_text("")
    with pytest.raises(ValueError, match="compatibility entry"):
        build_variants(src, tmp_path / "out")
    (src / "torch-ext" / "triton_kernels" / "__init__.py").unlink()
    with pytest.raises(ValueError, match="has no __init__.py"):
        build_variants(src, tmp_path / "out")


def test_make_build_command_line(tmp_path):
    out = tmp_path / "cli" / "build"
    proc = subprocess.run([PY, "-m", "scripts.build_variants", "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=hermetic_env(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == list(VARIANTS)
    assert "torch-cpu" in proc.stdout and "backend=cpu" in proc.stdout


# --------------------------------------------------------------------------- publish: inputs


@pytest.mark.parametrize("bad", ["triton_kernels", "a/b/c", "org/bad name", "org/-x-", ""])
def test_repo_id_is_validated(bad):
    with pytest.raises(ValueError, match="repo_id"):
        publish.check_repo_id(bad)


def test_repo_id_type_is_checked():
    with pytest.raises(TypeError, match="repo_id"):
        publish.check_repo_id(3)


def test_publish_refuses_a_tree_without_torch_cpu(build_copy):
    shutil.rmtree(build_copy / "torch-cpu")
    with pytest.raises(ValueError, match="lacks the variant.*torch-cpu"):
        publish.collect_release(REPO_IDS[0], build_copy)


def test_publish_refuses_a_modified_tree(build_copy):
    (build_copy / "torch-cuda" / "swiglu.py").write_text("# modified\n")
    with pytest.raises(ValueError, match="torch-cuda.*swiglu.py"):
        publish.collect_release(REPO_IDS[0], build_copy)


def test_publish_refuses_unexpected_entries_and_missing_trees(build_copy, tmp_path):
    (build_copy / "torch-rocm").mkdir()
    with pytest.raises(ValueError, match="unexpected entries torch-rocm"):
        publish.collect_release(REPO_IDS[0], build_copy)
    with pytest.raises(ValueError, match="does not exist; run `make build`"):
        publish.collect_release(REPO_IDS[0], tmp_path / "missing")


# --------------------------------------------------------------------------- publish: Hub


@pytest.mark.parametrize("repo_id", REPO_IDS)
def test_release_and_card_for_either_repo_id(built, repo_id):
    release = publish.collect_release(repo_id, built)
    card = release.files["README.md"].decode()
    assert f'get_kernel("{repo_id}", version=1)' in card and "trust_remote_code" in card
    assert "{{" not in card and card.startswith("---\nlicense: mit\n")
    assert release.branches == ("main", "v1")
    for variant in VARIANTS:
        for name in ("__init__.py", "swiglu.py", "metadata.json", "triton_kernels/__init__.py"):
            assert release.files[f"build/{variant}/{name}"] == (built / variant / name).read_bytes()
    assert not any("__pycache__" in p for p in release.files)


def test_hub_dry_run_lists_every_file_on_both_branches(built, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    release = publish.collect_release(REPO_IDS[1], built)
    out = io.StringIO()
    plan = publish.publish_to_hub(release, REPO_IDS[1], dry_run=True, out=out, api=object())
    lines = out.getvalue().splitlines()
    assert "kernel repo kernels-community/gpt-oss-triton-kernels" in lines[0] and "token found" in lines[0]
    assert "hf_not_a_real_token" not in out.getvalue()
    assert len(plan) == 2 * len(release.files) == len(lines) - 1
    for branch in ("main", "v1"):
        for path in release.files:
            assert any(line.strip().startswith(f"{REPO_IDS[1]}@{branch}:{path} ") for line in lines[1:])


def test_hub_dry_run_command_line(built, tmp_path):
    proc = subprocess.run(
        [PY, "-m", "scripts.publish", "hub", "--repo-id", REPO_IDS[0], "--build", str(built), "--dry-run"],
        cwd=REPO_ROOT, capture_output=True, text=True, env=hermetic_env(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{REPO_IDS[0]}@v1:build/torch-cpu/swiglu.py" in proc.stdout
    assert "token NOT found" in proc.stdout
    bad = subprocess.run([PY, "-m", "scripts.publish", "hub", "--repo-id", "triton_kernels", "--build", str(built),
                          "--dry-run"], cwd=REPO_ROOT, capture_output=True, text=True, env=hermetic_env(tmp_path),
                         timeout=60)
    assert bad.returncode == 2 and "must be '<org>/<name>'" in bad.stderr


class _RecordingApi:
    def __init__(self, existing):
        self.calls, self.existing = [], existing

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def list_repo_files(self, repo_id, **kw):
        return list(self.existing)

    def create_commit(self, repo_id, operations, **kw):
        self.calls.append(("create_commit", repo_id, kw, list(operations)))


def test_hub_push_commits_to_main_and_v1_and_drops_stale_build_files(built):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    release = publish.collect_release(REPO_IDS[0], built)
    api = _RecordingApi(existing=["README.md", "LICENSE", "build/torch-old/x.py", "build/torch-cpu/swiglu.py"])
    publish.publish_to_hub(release, REPO_IDS[0], api=api, out=io.StringIO())
    assert api.calls[0] == ("create_repo", REPO_IDS[0], {"repo_type": "kernel", "private": None, "exist_ok": True})
    assert api.calls[1][0] == "create_commit" and api.calls[1][2]["revision"] == "main"
    assert api.calls[2] == ("create_branch", REPO_IDS[0], {"repo_type": "kernel", "branch": "v1", "exist_ok": True})
    commits = [c for c in api.calls if c[0] == "create_commit"]
    assert [c[2]["revision"] for c in commits] == ["main", "v1"]
    for _, _, kw, ops in commits:
        assert kw["repo_type"] == "kernel"
        adds = {op.path_in_repo: op.path_or_fileobj for op in ops if isinstance(op, CommitOperationAdd)}
        assert adds == release.files
        assert [op.path_in_repo for op in ops if isinstance(op, CommitOperationDelete)] == ["build/torch-old/x.py"]
    assert "kernel" not in hf_constants.REPO_TYPES  # the workaround does not leak


def test_kernel_repo_commits_need_the_workaround_and_get_past_the_type_check(monkeypatch):
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    api = HfApi(token="hf_not_a_real_token")
    ops = [CommitOperationAdd(path_in_repo="a.txt", path_or_fileobj=b"a")]
    # huggingface_hub 1.33 refuses commits to kernel repos before sending anything; if a later
    # version accepts them, this fails and the workaround in publish.py can go.
    with pytest.raises(ValueError, match="Invalid repo type"):
        api.create_commit("org/name", ops, commit_message="m", repo_type="kernel")
    with publish._commits_to_kernel_repos("kernel"):
        with pytest.raises(OfflineModeIsEnabled):  # past the type check: it now wants the network
            api.create_commit("org/name", ops, commit_message="m", repo_type="kernel")
    assert "kernel" not in hf_constants.REPO_TYPES


# --------------------------------------------------------------------------- publish: offline cache


def test_seeded_cache_layout_refs_and_hf_cache_listing(built, tmp_path):
    release = publish.collect_release(REPO_IDS[0], built)
    cache = tmp_path / "hub"
    result = publish.seed_cache(release, REPO_IDS[0], cache_dir=cache)
    assert len(result.commit) == 40 and int(result.commit, 16) >= 0
    assert [f.name for f in result.repo_folders] == ["kernels--kernels-community--triton_kernels",
                                                      "models--kernels-community--triton_kernels"]
    for folder in result.repo_folders:
        for ref in ("main", "v1"):
            assert (folder / "refs" / ref).read_text() == result.commit
        snapshot = folder / "snapshots" / result.commit
        for path, data in release.files.items():
            link = snapshot / path
            assert link.is_symlink() and link.resolve().parent == (folder / "blobs").resolve()
            assert link.read_bytes() == data
    scanned = scan_cache_dir(cache)
    assert not scanned.warnings
    assert sorted((r.repo_type, r.repo_id, tuple(sorted(r.refs))) for r in scanned.repos) == [
        ("kernel", REPO_IDS[0], ("main", "v1")), ("model", REPO_IDS[0], ("main", "v1"))]
    proc = subprocess.run([str(Path(PY).with_name("hf")), "cache", "ls", "--format", "json"], capture_output=True,
                          text=True, env=hermetic_env(tmp_path, HF_HUB_CACHE=str(cache)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = {(r["repo_type"], r["repo_id"]): sorted(r["refs"]) for r in json.loads(proc.stdout)}
    assert listed == {("kernel", REPO_IDS[0]): ["main", "v1"], ("model", REPO_IDS[0]): ["main", "v1"]}


def test_seeding_is_deterministic_and_idempotent(built, tmp_path):
    release = publish.collect_release(REPO_IDS[1], built)
    a = publish.seed_cache(release, REPO_IDS[1], cache_dir=tmp_path / "a", layouts=("kernel",))
    b = publish.seed_cache(release, REPO_IDS[1], cache_dir=tmp_path / "b", layouts=("kernel",))
    again = publish.seed_cache(release, REPO_IDS[1], cache_dir=tmp_path / "a", layouts=("kernel",))
    assert a.commit == b.commit == again.commit
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_seed_cache_refuses_bad_arguments(built, tmp_path):
    release = publish.collect_release(REPO_IDS[0], built)
    with pytest.raises(ValueError, match="layouts"):
        publish.seed_cache(release, REPO_IDS[0], cache_dir=tmp_path, layouts=("dataset",))
    with pytest.raises(ValueError, match="repo_id"):
        publish.seed_cache(release, "no-org", cache_dir=tmp_path)


def test_cache_command_line_and_verify(built, tmp_path):
    cache = tmp_path / "hub"
    env = hermetic_env(tmp_path)
    proc = subprocess.run([PY, "-m", "scripts.publish", "cache", "--repo-id", REPO_IDS[1], "--build", str(built),
                           "--cache-dir", str(cache), "--layout", "kernel"],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (cache / "kernels--kernels-community--gpt-oss-triton-kernels" / "refs" / "v1").is_file()
    assert not (cache / "models--kernels-community--gpt-oss-triton-kernels").exists()
    ok = subprocess.run([PY, "-m", "scripts.publish", "verify", "--cache", "--repo-id", REPO_IDS[1],
                         "--cache-dir", str(cache)], cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0 and "torch-cpu, torch-cuda, torch-universal match" in ok.stdout, ok.stderr


def test_verify_cache_names_a_modified_or_missing_file(built, tmp_path):
    release = publish.collect_release(REPO_IDS[0], built)
    cache = tmp_path / "hub"
    result = publish.seed_cache(release, REPO_IDS[0], cache_dir=cache, layouts=("kernel",))
    assert publish.verify_cache(REPO_IDS[0], "v1", cache_dir=cache) == list(VARIANTS)
    snapshot = result.repo_folders[0] / "snapshots" / result.commit
    blob = (snapshot / "build/torch-cpu/tensor.py").resolve()
    blob.write_bytes(blob.read_bytes() + b"\n# tampered\n")
    with pytest.raises(ValueError, match="torch-cpu.*tensor.py"):
        publish.verify_cache(REPO_IDS[0], "main", cache_dir=cache)
    blob.unlink()
    with pytest.raises(FileNotFoundError, match="incomplete.*build/torch-cpu/tensor.py"):
        publish.verify_cache(REPO_IDS[0], "v1", cache_dir=cache)
    with pytest.raises(FileNotFoundError):
        publish.verify_cache(REPO_IDS[1], "v1", cache_dir=cache)
