"""Triton kernel behind the standalone `swiglu`."""
