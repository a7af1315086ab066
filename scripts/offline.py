"""The environment of an air-gapped machine, for subprocesses that load the kernel from a seeded cache."""

from __future__ import annotations

import os
from pathlib import Path


def offline_env(work_dir: Path, cache: Path, **extra: str) -> dict:
    """os.environ without HF_*/KERNELS_*/LOCAL_KERNELS settings, pointed at `cache` with the Hub offline.

    `work_dir/hf_home` becomes HF_HOME (created); TRITON_INTERPRET=1 unless `extra` says otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KERNELS_", "LOCAL_KERNELS"))}
    home = Path(work_dir) / "hf_home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(HF_HOME=str(home), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TRITON_INTERPRET="1")
    env.update(extra)
    return env
