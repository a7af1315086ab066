"""SwiGLU on interleaved gate/linear columns, standalone and as a tile function matmul_ogs fuses.

For interleaved columns (gate = even, linear = odd):
    gate = min(gate, limit); linear = clamp(linear, -limit, limit)     (skipped when limit is None)
    out  = gate * sigmoid(alpha * gate) * (linear + 1)                   (N halves)

`swiglu_fn(tile, alpha, limit)` is a `@triton.jit` function with the matmul_ogs activation calling
convention (see matmul_ogs' docstring): pass it as
`FusedActivation(FnSpecs("swiglu", swiglu_fn, ("alpha", "limit")), (alpha, limit), 2)`.
"""

from __future__ import annotations

import dataclasses

import torch
import triton

from . import target_info
from .swiglu_details._swiglu import _swiglu_kernel, swiglu_tile

swiglu_fn = swiglu_tile


@dataclasses.dataclass(frozen=True)
class PrecisionConfig:
    limit: float | None = None


def _check_input(a: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"swiglu: `a` must be a torch.Tensor, got {type(a).__name__}")
    if not a.is_floating_point():
        raise TypeError(f"swiglu: `a` must be a floating-point tensor, got {a.dtype}")
    if a.dim() == 0 or a.shape[-1] % 2 != 0:
        raise ValueError(f"swiglu: the last dimension of `a` must be even (gate/linear pairs), got shape {tuple(a.shape)}")


def swiglu_fn_torch(tile: torch.Tensor, alpha: float, limit: float | None) -> torch.Tensor:
    """Torch twin of `swiglu_fn`: same arguments, computed in the tile's dtype (float32 / float64)."""
    gate = tile[..., 0::2]
    linear = tile[..., 1::2]
    if limit is not None:
        gate = gate.clamp(max=limit)
        linear = linear.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (linear + 1)


def _valid_rows(routing_data, a: torch.Tensor):
    """Device scalar: rows owned by an expert (token_offs_raw[-1]); None without routing data."""
    if routing_data is None:
        return None
    expt_data = getattr(routing_data, "expt_data", None)
    if expt_data is None or getattr(expt_data, "token_offs_raw", None) is None:
        raise ValueError("swiglu: `routing_data` must carry expt_data.token_offs_raw")
    offs = expt_data.token_offs_raw
    if offs.device != a.device:
        raise ValueError(f"swiglu: `routing_data` is on {offs.device}, `a` on {a.device}")
    return offs[-1:]


def swiglu_torch(a: torch.Tensor, alpha: float, precision_config: PrecisionConfig, routing_data=None) -> torch.Tensor:
    """Reference: columns 2i are the gate, 2i+1 the linear part; N halves. Computed in fp32 (fp64 for fp64).

    With `routing_data`, rows at or past expt_data.token_offs_raw[-1] (owned by no local expert) are zero.
    """
    _check_input(a)
    compute = torch.float64 if a.dtype == torch.float64 else torch.float32
    out = swiglu_fn_torch(a.to(compute), alpha, precision_config.limit).to(a.dtype)
    n_valid = _valid_rows(routing_data, a)
    if n_valid is not None and a.dim() >= 2:
        rows = torch.arange(a.shape[-2], device=a.device)
        out = torch.where((rows < n_valid)[:, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


def swiglu(a: torch.Tensor, alpha: float, precision_config: PrecisionConfig, routing_data=None) -> torch.Tensor:
    """SwiGLU of `a` [..., 2n] -> [..., n] in a's dtype (Triton; torch reference where Triton cannot run)."""
    _check_input(a)
    if not isinstance(precision_config, PrecisionConfig):
        raise TypeError(f"swiglu: `precision_config` must be a swiglu.PrecisionConfig, got {type(precision_config).__name__}")
    if not target_info.runs_triton(a.device):
        target_info.warn_fallback("swiglu")
        return swiglu_torch(a, alpha, precision_config, routing_data)
    n_valid = _valid_rows(routing_data, a)
    a2 = a.reshape(-1, a.shape[-1])
    n_rows, n_out = a2.shape[0], a2.shape[1] // 2
    out = torch.empty((n_rows, n_out), dtype=a.dtype, device=a.device)
    if n_rows and n_out:
        block_m = 16 if target_info.get_target().interpreter else 32
        block_n = 64 if target_info.get_target().interpreter else 256
        grid = (triton.cdiv(n_rows, block_m), triton.cdiv(2 * n_out, block_n))
        _swiglu_kernel[grid](out, out.stride(0), out.stride(1), a2, a2.stride(0), a2.stride(1),
                             out if n_valid is None else n_valid, n_rows, n_out, float(alpha),
                             None if precision_config.limit is None else float(precision_config.limit),
                             HAS_VALID_ROWS=n_valid is not None,
                             INTERPRETED=target_info.get_target().interpreter, BLOCK_M=block_m, BLOCK_N=block_n)
    return out.reshape(*a.shape[:-1], n_out)
