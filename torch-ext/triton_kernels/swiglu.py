"""SwiGLU on interleaved gate/linear columns, standalone (matmul_ogs can also fuse it)."""

from __future__ import annotations

import dataclasses

import torch


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


def swiglu_torch(a: torch.Tensor, alpha: float, precision_config: PrecisionConfig) -> torch.Tensor:
    """Reference: columns 2i are the gate, 2i+1 the linear part; N halves. Computed in fp32."""
    _check_input(a)
    limit = precision_config.limit
    gate = a[..., 0::2].float()
    linear = a[..., 1::2].float()
    if limit is not None:
        gate = gate.clamp(max=limit)
        linear = linear.clamp(min=-limit, max=limit)
    out = gate * torch.sigmoid(alpha * gate) * (linear + 1)
    return out.to(a.dtype)


def swiglu(a: torch.Tensor, alpha: float, precision_config: PrecisionConfig, routing_data=None) -> torch.Tensor:
    return swiglu_torch(a, alpha, precision_config)
