"""Barrier counters of the one-launch routing path (`_kernels._grid_barrier`).

A counter must start at zero and serve one call at a time; each call leaves it a multiple of
GRID_BARRIER_STRIDE, so it is never reset. Counters come from one zeroed pool per device, made
outside any graph capture (zeroing it inside a capture would be recorded into the graph):

* eager calls use one counter per stream (calls on one stream run one after the other);
* a call being captured into a CUDA graph takes a counter of its own for good, since the graph
  may be replayed on any stream while other calls run (a graph's replays are ordered).

`barrier_counter` returns None when no counter can be had (a capture before any eager call on
that device, or the pool used up by captures); the caller then takes the two-launch path, which
needs none.
"""

from __future__ import annotations

import dataclasses

import torch

POOL_COUNTERS = 1 << 14
COUNTER_STRIDE = 4  # int32 per counter: every counter 16-byte aligned, as Triton specializes pointers on it


@dataclasses.dataclass
class _DevicePool:
    counters: torch.Tensor
    next_free: int = 0
    by_stream: dict = dataclasses.field(default_factory=dict)

    def take(self) -> torch.Tensor | None:
        if self.next_free >= POOL_COUNTERS:
            return None
        at = self.next_free * COUNTER_STRIDE
        self.next_free += 1
        return self.counters[at:at + 1]


_POOLS: dict[int, _DevicePool] = {}


def barrier_counter(device: torch.device, stream: int, capturing: bool) -> torch.Tensor | None:
    """A zero-based barrier counter for one call on `device` issued to `stream` (a CUDA stream
    handle), `capturing` whether that stream is being captured into a CUDA graph; or None (see
    the module docstring)."""
    pool = _POOLS.get(device.index)
    if pool is None:
        if capturing:
            return None
        pool = _POOLS[device.index] = _DevicePool(
            torch.zeros(POOL_COUNTERS * COUNTER_STRIDE, dtype=torch.int32, device=device))
        if device.type == "cuda":  # zeroed on this stream; other streams take counters from it too
            torch.cuda.synchronize(device)
    if capturing:
        return pool.take()
    counter = pool.by_stream.get(stream)
    if counter is None:
        counter = pool.by_stream[stream] = pool.take()
    return counter
