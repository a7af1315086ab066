import subprocess
import sys

import pytest
import torch

from triton_kernels import target_info


@pytest.fixture
def fresh_probe(monkeypatch):
    target_info.reset()
    yield monkeypatch
    target_info.reset()


@pytest.mark.skipif(torch.cuda.is_available(), reason="reports the CPU variant")
def test_cpu_machine_reports_cpu_and_why(fresh_probe):
    fresh_probe.delenv("TRITON_KERNELS_VARIANT", raising=False)
    target = target_info.get_target()
    assert target.variant == "cpu"
    assert "no CUDA device" in target.reason
    assert not target.is_gpu and target.capability is None


def test_interpreter_flag_decides_triton_on_cpu(fresh_probe):
    fresh_probe.setenv("TRITON_KERNELS_VARIANT", "cpu")
    fresh_probe.setenv("TRITON_INTERPRET", "1")
    assert target_info.get_target().runs_triton
    assert target_info.runs_triton("cpu")
    target_info.reset()
    fresh_probe.setenv("TRITON_INTERPRET", "0")
    assert not target_info.get_target().runs_triton
    assert not target_info.runs_triton("cpu")


@pytest.mark.parametrize("capability,variant", [((12, 0), "blackwell"), ((10, 0), "blackwell"), ((9, 0), "hopper"),
                                                 ((8, 9), "ampere"), ((8, 0), "ampere"), ((7, 5), "turing"),
                                                 ((7, 0), "unsupported"), ((6, 1), "unsupported")])
def test_capability_to_variant(capability, variant):
    assert target_info._variant_for_capability(capability) == variant


def test_override_forces_cpu_and_says_so(fresh_probe):
    fresh_probe.setenv("TRITON_KERNELS_VARIANT", "cpu")
    target = target_info.get_target()
    assert target.variant == "cpu" and "forced by TRITON_KERNELS_VARIANT=cpu" in target.reason


def test_override_rejects_unknown_variant(fresh_probe):
    fresh_probe.setenv("TRITON_KERNELS_VARIANT", "volta")
    with pytest.raises(ValueError, match="TRITON_KERNELS_VARIANT='volta'.*expected one of"):
        target_info.get_target()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_override_to_gpu_variant_without_gpu_is_an_error(fresh_probe):
    fresh_probe.setenv("TRITON_KERNELS_VARIANT", "hopper")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        target_info.get_target()


def test_fallback_warning_is_issued_once(fresh_probe):
    with pytest.warns(RuntimeWarning, match="triton_kernels.some_op: using the torch reference"):
        target_info.warn_fallback("some_op")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target_info.warn_fallback("some_op")


def test_report_command_runs():
    out = subprocess.run([sys.executable, "-m", "triton_kernels.probe"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("variant: ")
    assert "why: " in out.stdout and "triton_version: " in out.stdout


@pytest.mark.gpu
def test_gpu_probe_matches_device(fresh_probe):
    fresh_probe.delenv("TRITON_KERNELS_VARIANT", raising=False)
    target = target_info.get_target()
    assert target.capability == torch.cuda.get_device_capability()
    assert target.is_gpu and target.num_sms == torch.cuda.get_device_properties(0).multi_processor_count
