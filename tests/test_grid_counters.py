"""The zeroed counter pool shared by routing's grid barrier and matmul_ogs's in-launch top-k sum."""

import warnings

import pytest
import torch

from triton_kernels import _grid_counters as gc


def test_grid_counters_pool(monkeypatch):
    """Eager calls share one counter per stream; each captured call gets its own for good; none
    before the pool exists (it cannot be zeroed inside a capture) or once the pool is used up."""
    monkeypatch.setattr(gc, "_POOLS", {})
    monkeypatch.setattr(gc, "POOL_COUNTERS", 3)
    cpu = torch.device("cpu")
    assert gc.barrier_counter(cpu, 11, capturing=True) is None
    a = gc.barrier_counter(cpu, 11, capturing=False)
    assert a.tolist() == [0] and a.data_ptr() % 16 == 0
    assert gc.barrier_counter(cpu, 11, capturing=False).data_ptr() == a.data_ptr()
    b = gc.barrier_counter(cpu, 12, capturing=False)
    c = gc.barrier_counter(cpu, 11, capturing=True)
    assert len({a.data_ptr(), b.data_ptr(), c.data_ptr()}) == 3 and c.data_ptr() % 16 == 0
    with pytest.warns(RuntimeWarning, match="counter pool of cpu is used up"):
        assert gc.barrier_counter(cpu, 11, capturing=True) is None  # pool used up: the caller takes two launches
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per device
        assert gc.barrier_counter(cpu, 13, capturing=False) is None
    assert gc.barrier_counter(cpu, 12, capturing=False).data_ptr() == b.data_ptr()


def test_tile_counters_per_stream_block_and_captures(monkeypatch):
    """matmul_ogs's tile counters: one block of TILE_COUNTERS_PER_STREAM per stream for eager
    calls (any call of at most that many tiles gets its head), a block of its own per captured call,
    and none for more tiles than an eager block holds or once the pool is used up; a stream's
    barrier counter and its tile counters never overlap."""
    monkeypatch.setattr(gc, "_POOLS", {})
    monkeypatch.setattr(gc, "POOL_COUNTERS", 70)  # 280 int32
    monkeypatch.setattr(gc, "TILE_COUNTERS_PER_STREAM", 256)  # the sizes below assume 256-counter blocks
    cpu = torch.device("cpu")
    a = gc.tile_counters(cpu, 5, False, 45)
    assert a.numel() == 45 and not a.any() and a.data_ptr() % 16 == 0
    assert gc.tile_counters(cpu, 5, False, 256).data_ptr() == a.data_ptr()
    assert gc.tile_counters(cpu, 5, False, 257) is None
    bar = gc.barrier_counter(cpu, 5, capturing=False)
    assert bar.data_ptr() >= a.data_ptr() + 256 * 4
    c = gc.tile_counters(cpu, 5, True, 20)
    assert c.numel() == 20 and c.data_ptr() % 16 == 0 and c.data_ptr() >= bar.data_ptr() + 16
    with pytest.warns(RuntimeWarning, match="used up"):
        assert gc.tile_counters(cpu, 5, True, 8) is None  # 64 + 1 + 5 units taken: the pool is used up
    assert gc.tile_counters(cpu, 6, False, 1) is None


def test_current_stream_off_cuda():
    """The stream and capture lookup both counter users share: no stream and no capture off CUDA."""
    assert gc.current_stream(torch.device("cpu")) == (0, False)


@pytest.mark.gpu
def test_gpu_current_stream_follows_the_stream_and_capture():
    dev = torch.zeros(1, device="cuda").device  # as the callers pass it: a tensor's device, with its index
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert gc.current_stream(dev) == (side.cuda_stream, False)
    x = torch.zeros(1, device=dev)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x.add_(1)
        stream, capturing = gc.current_stream(dev)
        assert stream == torch.cuda.current_stream().cuda_stream  # torch.cuda.graph's own capture stream
    assert capturing
