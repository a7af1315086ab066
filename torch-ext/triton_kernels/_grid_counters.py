"""Zero-based int32 counters for kernels whose programs count each other's arrival, from one
zeroed pool per device, made outside any graph capture (zeroing inside a capture would be recorded
into the graph). Two users, each keeping its counters in a state the next call can start from:

* routing's one-launch grid barrier (`routing_details._kernels._grid_barrier`): one counter per
  call, left a multiple of GRID_BARRIER_STRIDE, so it is never reset;
* matmul_ogs's sums in the matmul's own launch: the down projection's top-k sum
  (`_topk_sum_if_last`, one counter per column tile) and the K splits of a non-linear epilogue
  (FINISH_IN_LAUNCH, one counter per output tile); each set back to zero by the last program to
  arrive.

A counter serves one call at a time:

* eager calls use one block per stream and use (calls on one stream run one after the other);
* a call being captured into a CUDA graph takes counters of its own for good, since the graph
  may be replayed on any stream while other calls run (a graph's replays are ordered).

Both callers ask `current_stream` (the stream handle and whether it is being captured) and pass
its answer on. `barrier_counter` and `tile_counters` return None when no counters can be had (a capture before
any eager call on that device, more tiles than an eager block holds, or the pool used up by
captures, which is said once per device by a RuntimeWarning); the caller then takes a path that
needs none (one more launch).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from triton.runtime import driver

POOL_COUNTERS = 1 << 16  # units of COUNTER_STRIDE int32 (1 MiB per device)
COUNTER_STRIDE = 4  # int32 per unit: every block 16-byte aligned, as Triton specializes pointers on it
TILE_COUNTERS_PER_STREAM = 512  # tiles of one eager matmul_ogs call that can count arrivals in its launch


@dataclasses.dataclass
class _DevicePool:
    counters: torch.Tensor
    next_free: int = 0
    by_stream: dict = dataclasses.field(default_factory=dict)
    warned: bool = False

    def take(self, n: int = 1) -> torch.Tensor | None:
        units = -(-n // COUNTER_STRIDE)
        if self.next_free + units > POOL_COUNTERS:
            if not self.warned:  # many captures (e.g. a graph per batch size and layer): say why calls got slower
                self.warned = True
                warnings.warn(f"triton_kernels: the {POOL_COUNTERS * COUNTER_STRIDE * 4 >> 10} KiB counter pool of "
                              f"{self.counters.device} is used up (each CUDA-graph capture keeps its counters); "
                              "from now on calls that find none take one more launch (routing's placement, "
                              "matmul_ogs's top-k sum or split finish): same results, a little slower",
                              RuntimeWarning, stacklevel=4)
            return None
        at = self.next_free * COUNTER_STRIDE
        self.next_free += units
        return self.counters[at:at + n]


_POOLS: dict[int, _DevicePool] = {}


def current_stream(device: torch.device) -> tuple[int, bool]:
    """(the current CUDA stream's handle on `device`, whether that stream is being captured into a
    CUDA graph); (0, False) for a device that is not CUDA."""
    if device.type != "cuda":
        return 0, False
    return driver.active.get_current_stream(device.index), torch.cuda.is_current_stream_capturing()


def _counters(device: torch.device, stream: int, capturing: bool, use: str, n: int,
              n_per_stream: int) -> torch.Tensor | None:
    pool = _POOLS.get(device.index)
    if pool is None:
        if capturing:
            return None
        pool = _POOLS[device.index] = _DevicePool(
            torch.zeros(POOL_COUNTERS * COUNTER_STRIDE, dtype=torch.int32, device=device))
        if device.type == "cuda":  # zeroed on this stream; other streams take counters from it too
            torch.cuda.synchronize(device)
    if capturing:
        return pool.take(n)
    block = pool.by_stream.get((stream, use))
    if block is None:
        block = pool.by_stream[(stream, use)] = pool.take(n_per_stream)
    return None if block is None or n > block.numel() else block[:n]


def barrier_counter(device: torch.device, stream: int, capturing: bool) -> torch.Tensor | None:
    """A zero-based barrier counter for one call on `device` issued to `stream` (a CUDA stream
    handle), `capturing` whether that stream is being captured into a CUDA graph; or None (see
    the module docstring)."""
    return _counters(device, stream, capturing, "barrier", 1, 1)


def tile_counters(device: torch.device, stream: int, capturing: bool, n: int) -> torch.Tensor | None:
    """n zeroed counters (one per tile) for one matmul_ogs call, which leaves them zero; or
    None (see the module docstring)."""
    return _counters(device, stream, capturing, "tiles", n, TILE_COUNTERS_PER_STREAM)
