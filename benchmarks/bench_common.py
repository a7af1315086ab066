"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit() -> str:
    """The COMMIT variable when set (the GPU machine's copy of the tree may carry a stale .git), else
    the checkout's short commit."""
    if os.environ.get("COMMIT"):
        return os.environ["COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return os.environ.get("COMMIT", "unknown")


def report_header() -> dict:
    """What every benchmark report starts with: device, probe variant, versions, commit, date."""
    import time

    import torch
    import triton

    from triton_kernels import target_info

    return {"device": torch.cuda.get_device_name(), "variant": target_info.get_target().variant,
            "triton": triton.__version__, "torch": torch.__version__, "commit": commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
