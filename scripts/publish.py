"""Publish a build/ tree (from `python -m scripts.build_variants`) under any repo id.

    python -m scripts.publish hub    --repo-id ORG/NAME [--build build] [--dry-run] [--private] [--token T]
    python -m scripts.publish cache  --repo-id ORG/NAME [--build build] [--cache-dir DIR] [--layout both]
    python -m scripts.publish verify [--build build]
    python -m scripts.publish verify --cache --repo-id ORG/NAME [--revision v1] [--cache-dir DIR]

`hub` pushes README.md (CARD.md filled in) and build/ to the branches `main` and `v<version>` of a
Hub repository of type `kernel` through huggingface_hub; `--dry-run` lists every file and where it
would go, without touching the network. `cache` writes the same files into a Hugging Face cache
(blobs, snapshots, refs `main` and `v<version>`) so that, with HF_HUB_OFFLINE=1,
`get_kernel(repo_id, version=<version>)` loads the build on a machine without network access.
`verify` checks every variant's files against the digest in its metadata.json with the `kernels`
library; the `kernels` 0.17 loader does not do that itself when it loads a kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import os
import re
import sys
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

from kernels._rust import Metadata

from .build_variants import METADATA_FILE, REPO_ROOT, KernelConfig, check_variant_digest, read_config

CARD_TEMPLATE = REPO_ROOT / "CARD.md"
SIGNATURE_FILE = "metadata.json.sigstore"
# Cache layouts: `kernel` (kernels--org--name) is what kernels >= 0.17 downloads into and loads
# from; `model` (models--org--name) is what older loaders, which fetched kernels as model repos, read.
CACHE_LAYOUTS = ("kernel", "model")
_HF_LICENSE_IDS = {"MIT": "mit", "Apache-2.0": "apache-2.0", "BSD-3-Clause": "bsd-3-clause"}
_VARIANT_USE = {
    "torch-cuda": "NVIDIA GPUs (Triton kernels; compute capability 7.5 and newer), kernels >= 0.11",
    "torch-cpu": "CPU (torch reference implementations), kernels >= 0.11",
    "torch-universal": "loaders older than kernels 0.11 (same code)",
}


@dataclasses.dataclass(frozen=True)
class Release:
    """Everything one publish writes: repo path -> bytes, and the branches it goes to."""

    name: str
    version: int
    files: dict[str, bytes]
    variants: tuple[str, ...]

    @property
    def branches(self) -> tuple[str, ...]:
        return ("main", f"v{self.version}")


def check_repo_id(repo_id: object) -> str:
    """A Hub repo id `<org>/<name>`; the org is required (it is what `kernels` trusts or not)."""
    if not isinstance(repo_id, str):
        raise TypeError(f"publish: `repo_id` must be a string '<org>/<name>', got {type(repo_id).__name__}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"publish: `repo_id` {repo_id!r} is not a valid Hub repo id: {e}") from None
    if repo_id.count("/") != 1:
        raise ValueError(
            f"publish: `repo_id` must be '<org>/<name>' (e.g. kernels-community/triton_kernels), got {repo_id!r}"
        )
    return repo_id


def check_build_tree(build_dir: str | os.PathLike, config: KernelConfig) -> dict[str, Metadata]:
    """Validate a build tree before anything is published; ValueError names what is wrong."""
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise ValueError(f"publish: build tree {build_dir} does not exist; run `make build` first")
    present = sorted(p.name for p in build_dir.iterdir())
    missing = [v for v in config.variants if v not in present]
    if missing:
        raise ValueError(
            f"publish: build tree {build_dir} lacks the variant(s) {', '.join(missing)} "
            f"(expected {', '.join(config.variants)}); rebuild with `make build`"
        )
    unexpected = [p for p in present if p not in config.variants]
    if unexpected:
        raise ValueError(f"publish: build tree {build_dir} holds unexpected entries {', '.join(unexpected)}")
    metadata = {}
    for variant in config.variants:
        variant_dir = build_dir / variant
        try:
            meta = Metadata.read_from_file(variant_dir / METADATA_FILE)
        except ValueError as e:
            raise ValueError(f"publish: {variant_dir / METADATA_FILE} is not valid kernel metadata: {e}") from None
        if str(meta.name) != config.name:
            raise ValueError(f"publish: {variant} is kernel {meta.name!s}, build.toml says {config.name}")
        if meta.version != config.version:
            raise ValueError(f"publish: {variant} has version {meta.version}, build.toml says {config.version}")
        try:
            check_variant_digest(variant_dir)
        except ValueError as e:
            raise ValueError(f"publish: {e}; rebuild with `make build`") from None
        metadata[variant] = meta
    return metadata


def render_card(template: str, repo_id: str, config: KernelConfig) -> str:
    rows = "\n".join(f"| `{v}` | {_VARIANT_USE.get(v, v)} |" for v in config.variants)
    fields = {
        "repo_id": repo_id,
        "version": str(config.version),
        "license": config.license,
        "license_id": _HF_LICENSE_IDS.get(config.license, "other"),
        "python_name": config.python_name,
        "variants": rows,
    }
    text = re.sub(r"\{\{(\w+)\}\}", lambda m: fields[m.group(1)] if m.group(1) in fields else m.group(0), template)
    left = sorted(set(re.findall(r"\{\{(\w+)\}\}", text)))
    if left:
        raise ValueError(f"publish: the card template has unknown fields {', '.join(left)}")
    return text


def collect_release(
    repo_id: str,
    build_dir: str | os.PathLike | None = None,
    *,
    source_root: str | os.PathLike = REPO_ROOT,
    card_template: str | os.PathLike | None = None,
) -> Release:
    """The files to publish: README.md (the filled card) and, per variant, metadata.json and the digested files."""
    check_repo_id(repo_id)
    config = read_config(source_root)
    build_dir = Path(build_dir) if build_dir is not None else Path(source_root) / "build"
    metadata = check_build_tree(build_dir, config)
    template = Path(card_template) if card_template is not None else Path(source_root) / "CARD.md"
    files = {"README.md": render_card(template.read_text(), repo_id, config).encode()}
    for variant, meta in metadata.items():
        variant_dir = build_dir / variant
        names = sorted(meta.digest.files) + [METADATA_FILE]
        if (variant_dir / SIGNATURE_FILE).is_file():
            names.append(SIGNATURE_FILE)
        for rel in names:
            files[f"build/{variant}/{rel}"] = (variant_dir / rel).read_bytes()
    return Release(name=config.name, version=config.version, files=dict(sorted(files.items())), variants=config.variants)


# ---------------------------------------------------------------------------------------------
# (a) Hub


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    branch: str
    path_in_repo: str
    size: int
    sha256: str


def plan_hub_upload(release: Release) -> list[PlannedFile]:
    return [
        PlannedFile(branch, path, len(data), hashlib.sha256(data).hexdigest())
        for branch in release.branches
        for path, data in release.files.items()
    ]


@contextlib.contextmanager
def _commits_to_kernel_repos(repo_type: str):
    """huggingface_hub 1.33 reads, creates and branches `kernel` repos, but its create_commit still
    rejects that type before sending anything (it checks `constants.REPO_TYPES`, which lists only
    model/dataset/space). Allow it for the duration of our calls; the request goes to
    /api/kernels/<repo>/commit/<branch>, the endpoint family the library already uses for kernels."""
    if repo_type != "kernel" or "kernel" in hf_constants.REPO_TYPES:
        yield
        return
    hf_constants.REPO_TYPES.append("kernel")
    try:
        yield
    finally:
        hf_constants.REPO_TYPES.remove("kernel")


def publish_to_hub(
    release: Release,
    repo_id: str,
    *,
    repo_type: str = "kernel",
    token: str | None = None,
    private: bool | None = None,
    dry_run: bool = False,
    api=None,
    out=sys.stdout,
) -> list[PlannedFile]:
    """Push `release` to `main` and `v<version>` of `repo_id`. Each branch gets one commit that adds
    every file and deletes files under build/ that the new build no longer has."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token

    check_repo_id(repo_id)
    if repo_type not in ("kernel", "model"):
        raise ValueError(f"publish: `repo_type` must be 'kernel' (or 'model' for old loaders), got {repo_type!r}")
    plan = plan_hub_upload(release)
    if dry_run:
        has_token = (token or get_token()) is not None
        print(f"dry run: would push {len(release.files)} files to {repo_type} repo {repo_id} "
              f"on branches {', '.join(release.branches)} (token {'found' if has_token else 'NOT found'})", file=out)
        for item in plan:
            print(f"  {repo_id}@{item.branch}:{item.path_in_repo}  {item.size} B  sha256={item.sha256[:12]}", file=out)
        return plan

    api = api if api is not None else HfApi(token=token)
    with _commits_to_kernel_repos(repo_type):
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        for branch in release.branches:
            if branch != "main":
                api.create_branch(repo_id, repo_type=repo_type, branch=branch, exist_ok=True)
            existing = set(api.list_repo_files(repo_id, repo_type=repo_type, revision=branch))
            ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=d) for p, d in release.files.items()]
            ops += [CommitOperationDelete(path_in_repo=p) for p in sorted(existing)
                    if p.startswith("build/") and p not in release.files]
            api.create_commit(repo_id, ops, repo_type=repo_type, revision=branch,
                              commit_message=f"{release.name} v{release.version}: {len(release.files)} files")
            print(f"pushed {len(release.files)} files to {repo_id}@{branch}", file=out)
    return plan


# ---------------------------------------------------------------------------------------------
# (b) Hugging Face cache for air-gapped machines


def default_cache_dir() -> Path:
    """Where `kernels` looks: $KERNELS_CACHE if set, else huggingface_hub's cache (HF_HUB_CACHE / HF_HOME)."""
    return Path(os.environ.get("KERNELS_CACHE") or hf_constants.HF_HUB_CACHE)


def git_blob_id(data: bytes) -> str:
    """The id the Hub gives a non-LFS file (git blob SHA-1); the cache names blobs by it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def release_commit(release: Release) -> str:
    """A deterministic 40-hex commit id for the seeded snapshot: SHA-1 of the sorted (path, blob id)
    list. It is not a Hub commit (there is none offline); the same build always gets the same id."""
    h = hashlib.sha1(b"triton_kernels cache seed\n")
    for path, data in release.files.items():
        h.update(f"{path}\0{git_blob_id(data)}\n".encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class SeedResult:
    commit: str
    refs: tuple[str, ...]
    repo_folders: tuple[Path, ...]


def _link_or_copy(blob: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    try:
        os.symlink(os.path.relpath(blob, dest.parent), dest)
    except OSError:  # file systems without symlinks: huggingface_hub copies too
        dest.write_bytes(blob.read_bytes())


def seed_cache(
    release: Release,
    repo_id: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    layouts: tuple[str, ...] = CACHE_LAYOUTS,
) -> SeedResult:
    """Write `release` into a Hugging Face cache as the snapshot of `main` and `v<version>` of `repo_id`."""
    check_repo_id(repo_id)
    if not layouts or any(layout not in CACHE_LAYOUTS for layout in layouts):
        raise ValueError(f"publish: `layouts` must be a non-empty subset of {CACHE_LAYOUTS}, got {layouts!r}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    commit = release_commit(release)
    folders = []
    for layout in layouts:
        repo_folder = cache_dir / repo_folder_name(repo_id=repo_id, repo_type=layout)
        snapshot = repo_folder / "snapshots" / commit
        for path, data in release.files.items():
            blob = repo_folder / "blobs" / git_blob_id(data)
            if not blob.is_file() or blob.read_bytes() != data:
                blob.parent.mkdir(parents=True, exist_ok=True)
                blob.write_bytes(data)
            _link_or_copy(blob, snapshot / path)
        for branch in release.branches:
            ref = repo_folder / "refs" / branch
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit)
        _write_tree_listing(repo_folder, commit, release)
        folders.append(repo_folder)
    return SeedResult(commit=commit, refs=release.branches, repo_folders=tuple(folders))


def _write_tree_listing(repo_folder: Path, commit: str, release: Release) -> None:
    """Record the snapshot's file list the way huggingface_hub caches a Hub tree listing, so that an
    offline snapshot_download notices a file missing from the snapshot instead of loading a partial one."""
    try:
        from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    except ImportError:  # older/newer huggingface_hub without the listing cache: nothing to record
        return
    entries = {path: TreeCacheEntry(size=len(data), blob_id=git_blob_id(data)) for path, data in release.files.items()}
    write_tree_cache(str(repo_folder), commit, entries)


# ---------------------------------------------------------------------------------------------
# verify


def verify_tree(build_dir: str | os.PathLike) -> list[str]:
    """Check every variant under `build_dir` against its metadata digest; returns the variants checked."""
    build_dir = Path(build_dir)
    variants = sorted(p.name for p in build_dir.iterdir() if p.is_dir() and p.name.startswith("torch")) \
        if build_dir.is_dir() else []
    if not variants:
        raise ValueError(f"verify: no build variants in {build_dir}")
    for variant in variants:
        check_variant_digest(build_dir / variant)
    return variants


def cached_snapshot(repo_id: str, revision: str, *, cache_dir: str | os.PathLike | None = None,
                    repo_type: str = "kernel") -> Path:
    """The snapshot folder the offline loader would use for `revision` (raises if missing or incomplete)."""
    from huggingface_hub import snapshot_download

    check_repo_id(repo_id)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=str(cache_dir),
                                  local_files_only=True, ignore_patterns=["*.pyc", "**/__pycache__/**"]))


def verify_cache(repo_id: str, revision: str = "v1", *, cache_dir: str | os.PathLike | None = None,
                 repo_type: str = "kernel") -> list[str]:
    return verify_tree(cached_snapshot(repo_id, revision, cache_dir=cache_dir, repo_type=repo_type) / "build")


# ---------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.publish", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--build", default=None, help="build tree (default: <repo>/build)")
        p.add_argument("--source", default=str(REPO_ROOT), help="kernel repository (build.toml, CARD.md)")

    hub = sub.add_parser("hub", help="push to a Hub repository (branches main and v<version>)")
    common(hub)
    hub.add_argument("--repo-id", required=True, help="e.g. kernels-community/triton_kernels")
    hub.add_argument("--repo-type", default="kernel", choices=["kernel", "model"])
    hub.add_argument("--token", default=None, help="default: HF_TOKEN or the token saved by `hf auth login`")
    hub.add_argument("--private", action="store_true")
    hub.add_argument("--dry-run", action="store_true", help="list what would be pushed; no network")

    cache = sub.add_parser("cache", help="seed a Hugging Face cache for offline use")
    common(cache)
    cache.add_argument("--repo-id", required=True)
    cache.add_argument("--cache-dir", default=None, help="default: $KERNELS_CACHE, else the HF hub cache")
    cache.add_argument("--layout", default="both", choices=["kernel", "model", "both"],
                       help="kernel: kernels>=0.17 (kernels--org--name); model: older loaders (models--org--name)")

    verify = sub.add_parser("verify", help="check digests of a build tree or of a seeded/downloaded cache")
    verify.add_argument("--build", default=str(REPO_ROOT / "build"))
    verify.add_argument("--cache", action="store_true", help="verify the cached snapshot of --repo-id instead")
    verify.add_argument("--repo-id", default=None)
    verify.add_argument("--revision", default="v1")
    verify.add_argument("--cache-dir", default=None)

    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            if args.cache:
                if args.repo_id is None:
                    raise ValueError("verify: --cache needs --repo-id")
                checked = verify_cache(args.repo_id, args.revision, cache_dir=args.cache_dir)
                where = f"{args.repo_id}@{args.revision} in {args.cache_dir or default_cache_dir()}"
            else:
                checked = verify_tree(args.build)
                where = args.build
            print(f"ok: {where}: {', '.join(checked)} match their metadata.json digests")
            return 0
        release = collect_release(args.repo_id, args.build, source_root=args.source)
        if args.command == "hub":
            publish_to_hub(release, args.repo_id, repo_type=args.repo_type, token=args.token,
                           private=args.private or None, dry_run=args.dry_run)
        else:
            layouts = CACHE_LAYOUTS if args.layout == "both" else (args.layout,)
            result = seed_cache(release, args.repo_id, cache_dir=args.cache_dir, layouts=layouts)
            for folder in result.repo_folders:
                print(f"seeded {folder} at commit {result.commit} (refs: {', '.join(result.refs)})")
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
