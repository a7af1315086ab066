"""Test set-up: without a GPU the Triton kernels run in the interpreter, on CPU tensors."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one (run them on the device)")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device():
    """The device the Triton kernels run on here: cuda on a GPU box, cpu (interpreted) otherwise."""
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One build of the real package (the Hub tree) per test run; tests that change it work on a copy."""
    from scripts.build_variants import REPO_ROOT, build_variants
    out = tmp_path_factory.mktemp("built") / "build"
    build_variants(REPO_ROOT, out)
    return out
