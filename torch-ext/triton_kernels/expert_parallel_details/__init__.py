"""Triton kernel of `expert_parallel.routing_ep`: turn global routing into this rank's routing."""

from ._localize import localize_routing_triton

__all__ = ["localize_routing_triton"]
