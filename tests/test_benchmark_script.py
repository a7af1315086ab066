"""benchmarks/benchmark.py runs under the real `kernels benchmark` command and its checks pass."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
