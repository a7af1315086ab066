"""Kernels behind `numerics`: microscaling (MX) conversions live in `mxfp`."""

from . import mxfp

__all__ = ["mxfp"]
