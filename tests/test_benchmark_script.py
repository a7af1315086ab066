"""benchmarks/benchmark.py runs under the real `kernels benchmark` command and its checks pass; the
benchmark scripts' arguments are checked."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_kernels_benchmark_runs_our_workloads(built, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(built, repo / "build")
    (repo / "benchmarks").mkdir()
    shutil.copy(REPO_ROOT / "benchmarks" / "benchmark.py", repo / "benchmarks" / "benchmark.py")
    out = tmp_path / "results.json"
    proc = subprocess.run([str(Path(sys.executable).with_name("kernels")), "benchmark", str(repo), "--iterations", "2",
                           "--warmup", "1", "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {r["workload"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {f"GptOssMoeBenchmark.{w}" for w in ("routing", "gate_up", "down", "layer")}
    assert all(r["verified"] is True for r in results.values()), results


def test_ab_switches_refuses_what_is_not_a_bool_switch():
    """ab_switches times module switches of the package: anything else is refused by name."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import ab_switches
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    (mod, name), = ab_switches._switches("matmul_ogs.K_TAIL_64_STEPS")
    assert name == "K_TAIL_64_STEPS" and mod.__name__ == "triton_kernels.matmul_ogs"
    for bad in ("matmul_ogs.matmul_ogs", "matmul_ogs.NO_SUCH", "no_such_module.FLAG", "K_TAIL_64_STEPS"):
        with pytest.raises(SystemExit, match="is not a bool switch of triton_kernels"):
            ab_switches._switches(bad)
