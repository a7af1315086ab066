"""Capability probe: the one module that reads the device.

It decides once per process which code path the package takes, and everything else (layout
defaults, kernel configs, fallbacks) asks it instead of asking torch or Triton directly.

Variants, best first:
  blackwell   CUDA compute capability 10.x / 12.x
  hopper      9.x
  ampere      8.x (Ampere and Ada)
  turing      7.5
  unsupported a CUDA GPU older than 7.5: ops use the torch references
  cpu         no GPU: ops use the torch references, or the Triton kernels themselves when
              TRITON_INTERPRET=1 is set (that is how the test suite runs them on a CPU)

`TRITON_KERNELS_VARIANT=<variant>` forces a variant (for tests and for pinning a path);
`python -m triton_kernels.probe` prints the decision and why.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import torch

VARIANTS = ("blackwell", "hopper", "ampere", "turing", "unsupported", "cpu")
GPU_VARIANTS = ("blackwell", "hopper", "ampere", "turing")
OVERRIDE_ENV = "TRITON_KERNELS_VARIANT"
MIN_TRITON = (3, 4)
# First Triton release whose `tl.dot_scaled` lowers to the native Blackwell MX instruction.
NATIVE_MX_DOT_TRITON = (3, 5)


@dataclasses.dataclass(frozen=True)
class Target:
    variant: str
    reason: str
    device_name: str | None
    capability: tuple[int, int] | None
    num_sms: int
    triton_version: str | None
    interpreter: bool
    native_mx_dot: bool

    @property
    def is_gpu(self) -> bool:
        return self.variant in GPU_VARIANTS

    @property
    def runs_triton(self) -> bool:
        """Whether ops launch their Triton kernels (on the GPU, or interpreted on the CPU)."""
        if self.triton_version is None:
            return False
        return self.is_gpu or (self.variant == "cpu" and self.interpreter)


def _parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _variant_for_capability(capability: tuple[int, int]) -> str:
    major, minor = capability
    if major in (10, 12):
        return "blackwell"
    if major == 9:
        return "hopper"
    if major == 8:
        return "ampere"
    if (major, minor) >= (7, 5):
        return "turing"
    return "unsupported"


def _probe() -> Target:
    triton_version = _triton_version()
    interpreter = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    name = capability = None
    num_sms = 0
    if torch.cuda.is_available() and getattr(torch.version, "hip", None) is None:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        name, capability, num_sms = props.name, (props.major, props.minor), props.multi_processor_count
        variant = _variant_for_capability(capability)
        reason = f"CUDA device {name} with compute capability {capability[0]}.{capability[1]}"
        if variant == "unsupported":
            reason += " is older than 7.5 (Turing), the oldest Triton supports"
        elif triton_version is None:
            variant, reason = "unsupported", reason + ", but Triton is not installed"
        elif _parse_version(triton_version) < MIN_TRITON:
            variant = "unsupported"
            reason += f", but Triton {triton_version} is older than {'.'.join(map(str, MIN_TRITON))}"
    else:
        variant = "cpu"
        reason = "no CUDA device is visible to torch"
        if getattr(torch.version, "hip", None) is not None:
            reason = "ROCm devices are not supported yet"
        if interpreter and triton_version is not None:
            reason += "; TRITON_INTERPRET=1, so Triton kernels run in the interpreter"
        else:
            reason += "; ops use the torch references"

    forced = os.environ.get(OVERRIDE_ENV)
    if forced:
        if forced not in VARIANTS:
            raise ValueError(f"{OVERRIDE_ENV}={forced!r}: expected one of {', '.join(VARIANTS)}")
        if forced in GPU_VARIANTS and capability is None:
            raise ValueError(f"{OVERRIDE_ENV}={forced!r} needs a CUDA device, and none is visible")
        reason = f"forced by {OVERRIDE_ENV}={forced} (probe said {variant}: {reason})"
        variant = forced

    native_mx_dot = (
        variant == "blackwell"
        and triton_version is not None
        and _parse_version(triton_version) >= NATIVE_MX_DOT_TRITON
    )
    return Target(
        variant=variant,
        reason=reason,
        device_name=name,
        capability=capability,
        num_sms=num_sms,
        triton_version=triton_version,
        interpreter=interpreter,
        native_mx_dot=native_mx_dot,
    )


@functools.lru_cache(maxsize=1)
def get_target() -> Target:
    return _probe()


def reset() -> None:
    """Forget the cached decision (tests that change the environment call this)."""
    get_target.cache_clear()
    _warned.clear()


def runs_triton(device: torch.device | str | None = None) -> bool:
    """Whether an op on tensors of `device` should launch Triton kernels."""
    target = get_target()
    if not target.runs_triton:
        return False
    if device is None:
        return True
    device_type = torch.device(device).type
    return device_type == "cuda" if target.is_gpu else device_type == "cpu"


def programmatic_dependent_launch() -> bool:
    """Whether a kernel may be launched as a programmatic dependent of the one before it (Hopper and
    newer, compiled kernels: the interpreter has no grid dependency control)."""
    target = get_target()
    return target.variant in ("hopper", "blackwell") and not target.interpreter


def cooperative_grid() -> bool:
    """Whether a kernel may be launched as a cooperative grid (all its programs resident at once, so
    they may wait for each other): every GPU variant; not the interpreter, which runs programs one
    after the other."""
    target = get_target()
    return target.is_gpu and not target.interpreter


_warned: set[str] = set()


def warn_fallback(op: str) -> None:
    """One warning per op and process when an op takes the torch reference path."""
    if op in _warned:
        return
    _warned.add(op)
    target = get_target()
    warnings.warn(
        f"triton_kernels.{op}: using the torch reference implementation ({target.variant}: {target.reason})",
        RuntimeWarning,
        stacklevel=3,
    )


# Names the consumers of the previous generation of this package call.
def is_cuda() -> bool:
    return get_target().is_gpu


def is_hip() -> bool:
    return False


def is_hip_cdna3() -> bool:
    return False


def is_hip_cdna4() -> bool:
    return False


def is_xpu() -> bool:
    return False


def get_cdna_version() -> int:
    return -1


def cuda_capability_geq(major: int, minor: int = 0) -> bool:
    capability = get_target().capability
    return capability is not None and capability >= (major, minor)


def num_sms() -> int:
    return get_target().num_sms


def has_native_mxfp() -> bool:
    return get_target().native_mx_dot


def has_tma_gather() -> bool:
    return cuda_capability_geq(10, 0)
