"""benchmarks/benchmark.py runs under the real `kernels benchmark` command and its checks pass; the
benchmark scripts' arguments are checked."""

import argparse
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


def test_bench_moe_refuses_bad_lists_before_any_gpu_work():
    """bench_moe's --tokens / --experts take comma-separated positive ints and --layouts known layout
    names: anything else is an argparse error naming what was expected."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_moe.py"), "--tokens", "1,x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "argument --tokens: expected comma-separated positive ints, got '1,x'" in proc.stderr
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import bench_moe
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    assert bench_moe.positive_ints("1,8,64") == [1, 8, 64] and bench_moe.layout_names("default") == ["default"]
    for bad in ("0", "", "32,", "-1", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected comma-separated positive ints"):
            bench_moe.positive_ints(bad)
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown layouts \['foo'\]"):
        bench_moe.layout_names("default,foo")


@pytest.mark.parametrize("args,rc,message", [
    (["--k", "0"], 2, "expected --tokens >= 1, 1 <= --experts <= 256, 1 <= --k <= min(8, experts)"),
    (["--experts", "300"], 2, "expected --tokens >= 1"),
    (["--tokens", "0"], 2, "expected --tokens >= 1"),
    (["--experts", "32", "--tokens", "64"], 1, "64 x 32: not the rows path (fused or top-k kernel)")])
def test_sass_routing_refuses_what_it_cannot_compile(args, rc, message):
    """benchmarks/sass_routing.py names what it expected (argparse) or why the shape has no rows path,
    before compiling anything."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "sass_routing.py"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == rc and message in proc.stderr, proc.stderr[-2000:]
