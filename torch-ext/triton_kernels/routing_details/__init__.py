"""Triton implementation of `routing.routing` and `routing.compute_expt_data`.

No host synchronisation, every buffer sized from shapes alone (capturable in a CUDA graph and
replayable with new logits). All outputs and scratch live in one int32 workspace whose segment
offsets both sides derive from the shapes (`_layout` here, `_ws_layout` in the kernels), so a
launch takes one workspace pointer and a few sizes.

The sort is a stable counting sort without any sort network: a slot's sorted position is
`start[e] + (slots of e in earlier programs) + (its rank among the slots of e in its program)`,
and that rank is computed with the top-k itself: the prefix over the tile's rows of the per-row
one-hot counts (a small tensor-core matmul, lower-triangular ones @ counts), read at each pick,
plus the running counts of earlier tiles. The top-k takes one int32 max per pick (packed value +
column keys, see `topk_details`). The softmax over a row's picks is taken where the slots are
placed, on [rows, k] tiles that give each thread whole rows (on the rows path, in the top-k
kernel, whose threads hold whole rows' picks already). Rows at or beyond `n_rows` route
nowhere and sit at their own slot index (after every routed slot, in slot order); user indices
outside [0, E) route nowhere too and get the positions after every routed slot, in slot order.
With `simulated_ep = S`, slots of non-local experts keep their positions but read -1 in
`topk_indx` and `gate_indx`.

Two paths:

* fused (small T, up to `FUSED_MAX_TILES` row tiles): ONE launch, one program. Top-k and ranks
  per tile; with a single tile the positions come straight from registers (the softmax then runs
  in registers for tiles of a few rows per warp, else after a round trip through the scratch),
  otherwise the tile pass writes (expert, picked logit, rank) per slot to scratch and a placement
  pass reads them back; then hist, token_offs_raw/pad and the four block_pid_maps.
* split (larger T): launch 1 writes (expert, picked logit, rank within the program) per slot and
  a counts row per program; launch 2, `routing_place_kernel`, sums the P counts rows (totals, and
  the prefix before each program), stores every slot at its position with its softmax weight and
  shares the ExptData work among its programs. Launch 1 is `routing_rows_kernel` (the rows path)
  from E_pad = 64 on unless there are user indices, sm_first or k > 8: one row tile of ROWS rows
  per program, Q threads per row, each row's top-k by insertion in registers
  (`topk_details.row_topk`); the picks are the keys >= the k-th, and their ranks come from one
  matmul per block of up to RANK_BLOCK_MAX columns, (lower triangle with its diagonal) @ picks,
  whose accumulator holds the picks of each expert up to each row, stored as bytes at (row,
  expert) in a [T, E_PAD] scratch that the program reads back at its picks (rank = count - 1; the
  softmax weights are taken there too) and at its last token, whose row is its counts row (bytes,
  summed by the placement in 16-bit lanes below 2^16 tokens). Otherwise launch 1
  is `routing_topk_kernel` (P programs of `n_iter` tiles, `select_tile` and `_rank_tile`).
  With PDL on Hopper and newer, the placement is launched as a programmatic dependent of launch 1
  (its launch overlaps launch 1's run; it waits for launch 1's results before reading them).
* one launch (rows path, at most one program per SM of at most ONE_LAUNCH_MAX_WARPS warps, on a
  GPU): `routing_rows_kernel` launched as a cooperative grid; after its counts rows are stored,
  every program waits at a grid barrier, then does the placement's work for its own rows from
  registers and its share of ExptData. The barrier's counter comes from `_grid_counters` (never
  reset: each call adds a fixed stride); where none can be had, the call takes two launches. Where
  the driver refuses the cooperative launch (e.g. a process under MPS that sees fewer SMs than the
  probe counted), the call is redone in two launches, with a warning, and so are all later calls.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import torch
import triton

from .. import target_info
from .._fast_launch import run_compiled
from .._grid_counters import barrier_counter, current_stream
from ._kernels import (BLOCK_SIZES, expt_data_kernel, routing_fused_kernel, routing_place_kernel,
                       routing_rows_kernel, routing_topk_kernel)

__all__ = ["RoutingPlan", "make_routing_plan", "routing_triton", "compute_expt_data_triton", "max_tiles"]

# Fused (one launch) when all rows fit one tile of at most FUSED_MAX_KEYS keys (rows rounded up to a
# power of two x E_pad); FUSED_MAX_TILES > 1 fuses any single tile and up to that many tiles, 0 never.
# H100 sweep (bench_routing.py --sweep-rows): split was faster from 64 x 32 and 16 x 128 keys on
# (T = 64, E = 128: 8.7 vs 11.4 us), fused below (T = 16, E = 32: 4.4 vs 5.3; T = 8, E = 128: 7.1 vs 8.4).
FUSED_MAX_TILES = 1
FUSED_MAX_KEYS = 1024
ROWS_PATH = True  # split path: `routing_rows_kernel` where it applies (no user indices, no sm_first, k <= 8)
FAST_LAUNCH = True  # relaunch cached compiled kernels directly (see `_launch`)
PDL = True  # split path on Hopper and newer: the placement is a programmatic dependent launch of launch 1
ONE_LAUNCH = True  # rows path with at most one program per SM: one cooperative launch (see `_rows_plan`)
_COMPILED: dict = {}


def max_tiles(n_rows: int, n_expts: int, block_m: int) -> int:
    """Upper bound of sum_e ceil(h_e / block_m) over any h >= 0 with sum(h) <= n_rows, len(h) = n_expts.

    With m non-empty experts, sum_e ceil(h_e / bm) = m + sum_e floor((h_e - 1) / bm)
    <= m + floor((n - m) / bm), which grows with m, so the bound is reached at m = min(n, E):
    min(n, E) + floor((n - min(n, E)) / bm). It is tight (one row on E-1 experts, the rest on one).
    """
    n_rows = max(int(n_rows), 0)
    m = min(n_rows, int(n_expts))
    return m + (n_rows - m) // block_m


def _target_programs() -> int:
    sms = target_info.num_sms()
    return sms if sms > 0 else 4  # the interpreter: a few programs, so multi-program paths are exercised


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _layout(n_slots: int, n_local: int, n_parts: int, e_pad: int, rank_bytes: int = 0) -> tuple[int, ...]:
    """Split sizes of the workspace: the 13 outputs (topk, gate, scal, hist, raw, pad x4, map x4),
    then all the scratch as one segment (`rank_bytes`: the rows path's [T, E_PAD] byte ranks at
    its end). Host twin of `_kernels._ws_layout`."""
    maps = tuple(max_tiles(n_slots, n_local, bm) for bm in BLOCK_SIZES)
    outputs = (n_slots, n_slots, n_slots, n_local) + (n_local + 1,) * 5 + maps
    return outputs + (3 * n_slots + n_parts * e_pad + n_parts + (3 + triton.cdiv(rank_bytes, 4) if rank_bytes else 0),)


def _map_block(e_pad: int, num_warps: int) -> int:
    """Tile indices per step of the block_pid_map scatter ([E_PAD, this] stores): about 32 per
    thread, so few-warp programs at large E do not spill (measured: 1 warp, E = 128 with 32 went
    from 8 to 70 us)."""
    return max(4, min(32, 1024 * num_warps // e_pad))


@dataclasses.dataclass(frozen=True)
class RoutingPlan:
    """Everything about one routing call that depends on shapes only (cached per shape)."""

    fused: bool
    e_pad: int
    k_pad: int
    block_t: int  # rows per top-k tile
    n_iter: int  # split path: row tiles per top-k program
    n_parts: int  # split path: top-k programs (1 when fused)
    num_warps: int  # fused kernel, or the split path's top-k kernel
    rows_per_part: int  # rows of one top-k program (block_t * n_iter)
    parts_per_place: int  # split path: top-k programs' rows placed by one placement program
    n_place_programs: int
    place_rows: int  # rows per `_place_rows` step
    part_rows: int  # counts rows per load in the placement kernel
    tile_block: int
    reg_softmax: bool  # fused, one tile: softmax in registers (else after a scratch round trip)
    sizes: tuple[int, ...]
    total: int
    place_warps: int = 4
    rows_q: int = 0  # split path with `routing_rows_kernel`: threads per row (0: `routing_topk_kernel`)
    packed_scans: bool = False  # placement: the expert prefix sums as packed fields (`_kernels._expert_scans`)
    one_launch: bool = False  # rows path: `routing_rows_kernel` places the slots itself after a grid barrier
    lane_counts: bool = False  # rows path: byte counts rows summed in 16-bit lanes (no expert can reach 2^16 slots)


# Split path's top-k kernel: keys of the [block_t, E] logits tile per thread and the warp range,
# from the H100 sweep (bench_routing.py --sweep, 22f36dd): E = 128 was best with 32 keys per thread
# and 4-8 warps (T=16384: 64-row tiles, 2 per program, 24.0 us vs 27.6 with 16 keys per thread and
# 16 warps); E = 32 with 8-16 keys per thread and at least 4 warps.
def _split_keys_per_thread(e_pad: int) -> int:
    return 32 if e_pad >= 128 else 16


SPLIT_MIN_WARPS = 4
SPLIT_MAX_WARPS = 8
ROWS_Q = 4  # rows path: threads per row
# The rows path is taken from E_pad = 64 on: at E = 32 the H100 measured it no faster (16384 tokens:
# 10.3 vs 10.6 us) or slower (4096: 8.4 vs 6.9), and its one-thread-per-row form (k = 8, 128 rows
# per program) did not finish a GPU test within minutes (NOTES_routing_perf.md).
ROWS_MIN_E_PAD = 64


def _rows_plan(n_tokens: int, n_expts: int, k: int, simulated_ep: int, rows: int, q: int,
               place_warps: int = 4, parts_per_place: int = 1, one_launch: bool = False) -> RoutingPlan:
    """The split path with `routing_rows_kernel`: `rows` rows per top-k program (a power of two
    >= 16: the rank matmul), q threads per row. one_launch: no placement kernel; the rows
    kernel's programs (which must all be resident at once) place the slots after a grid barrier,
    with the placement's counts-row and block_pid_map steps sized for their own warps."""
    e_pad = max(32, _next_pow2(n_expts))
    num_warps = max(1, min(16, rows * q // 32))
    if one_launch:  # each program places its own rows with its own warps
        parts_per_place, place_warps = 1, num_warps
    plan = _split_plan(n_tokens, n_expts, k, simulated_ep, rows, 1, num_warps, parts_per_place, place_warps)
    sizes = _layout(n_tokens * k, n_expts // simulated_ep, plan.n_parts, e_pad, n_tokens * e_pad)
    return dataclasses.replace(plan, sizes=sizes, total=sum(sizes), rows_q=q, one_launch=one_launch,
                               lane_counts=n_tokens < 1 << 16)


ROWS_MAX = 128  # rows per program of the rows path (the [ROWS, ROWS] rank matmul operand)
# One launch only for rows programs of up to 4 warps (32 rows). H100 sweep (bench_routing.py
# --sweep-flags / --sweep-rows, 16-call graphs, E = 128): one launch vs two 8.4 vs 8.9 us at T = 4096
# (32 rows), 7.6 vs 7.9 at 1024 (16 rows), 6.3 vs 7.3 at 64; but 18.8 vs 15.6 at T = 16384 (128 rows,
# 16 warps: the placement steps after the barrier, run by 16 warps, cost more than the second launch).
ONE_LAUNCH_MAX_WARPS = 4
RANK_BLOCK_MAX = 128  # columns per rank matmul (one block up to E = 128: fewer barriers than blocks of 16)


@functools.lru_cache(maxsize=256)
def make_routing_plan(n_tokens: int, n_expts: int, k: int, simulated_ep: int, sm_first: bool,
                      target_programs: int, fused_max_tiles: int = FUSED_MAX_TILES, user: bool = False,
                      rows_path: bool = True, one_launch_programs: int = 0) -> RoutingPlan:
    """one_launch_programs: the rows path takes one cooperative launch where it has at most this
    many programs (the device's SMs: one program per SM always fits; 0: never)."""
    e_pad = max(32, _next_pow2(n_expts))
    k_pad = _next_pow2(k)
    n_slots = n_tokens * k
    n_local = n_expts // simulated_ep
    keys = 2048 if sm_first else 4096  # keys per row tile (the float64 softmax over whole rows is wider)
    block_t = max(1, min(128, keys // e_pad, 8192 // (k_pad * k_pad)))
    n_tiles = triton.cdiv(n_tokens, block_t)
    one_tile = _next_pow2(max(n_tokens, 1))
    single = one_tile * e_pad <= 2 * keys and one_tile * k_pad * k_pad <= 8192
    if n_tokens <= 1 or (fused_max_tiles == 1 and single and one_tile * e_pad <= FUSED_MAX_KEYS) or (
            fused_max_tiles > 1 and (single or n_tiles <= fused_max_tiles)):
        block_t = one_tile if single else block_t
        n_keys = block_t * e_pad
        num_warps = 1 if n_keys <= 256 else 4 if n_keys <= 1024 else 8
        place_rows = max(1, min(_next_pow2(max(n_tokens, 1)), 32 * num_warps))
        sizes = _layout(n_slots, n_local, 1, e_pad)
        return RoutingPlan(True, e_pad, k_pad, block_t, 1, 1, num_warps, block_t, 1, 1, place_rows, 1,
                           _map_block(e_pad, num_warps), block_t <= 2 * num_warps, sizes, sum(sizes))
    if rows_path and not user and not sm_first and k <= 8 and ROWS_MIN_E_PAD <= e_pad <= 256:
        rows = max(16, min(ROWS_MAX, _next_pow2(triton.cdiv(n_tokens, max(1, target_programs)))))
        one = triton.cdiv(n_tokens, rows) <= one_launch_programs and rows * ROWS_Q <= 32 * ONE_LAUNCH_MAX_WARPS
        return _rows_plan(n_tokens, n_expts, k, simulated_ep, rows, ROWS_Q, one_launch=one)
    # split: about target_programs top-k programs of at most SPLIT_MAX_WARPS warps, each tile
    # holding `_split_keys_per_thread` keys per thread
    per_thread = _split_keys_per_thread(e_pad) // (2 if sm_first else 1)
    rows_wanted = _next_pow2(triton.cdiv(n_tokens, max(1, target_programs)))
    max_rows = max(1, 32 * SPLIT_MAX_WARPS * per_thread // e_pad)
    block_t = max(1, min(rows_wanted, max_rows, 8192 // (k_pad * k_pad)))
    num_warps = max(SPLIT_MIN_WARPS, min(SPLIT_MAX_WARPS, block_t * e_pad // (32 * per_thread)))
    n_tiles = triton.cdiv(n_tokens, block_t)
    n_iter = max(1, triton.cdiv(n_tiles, max(1, target_programs)))
    return _split_plan(n_tokens, n_expts, k, simulated_ep, block_t, n_iter, num_warps, 1, 4)


def _split_plan(n_tokens: int, n_expts: int, k: int, simulated_ep: int, block_t: int, n_iter: int,
                num_warps: int, parts_per_place: int, place_warps: int) -> RoutingPlan:
    """The split path's plan for a given top-k tiling and placement grouping (also used to sweep)."""
    e_pad = max(32, _next_pow2(n_expts))
    k_pad = _next_pow2(k)
    n_local = n_expts // simulated_ep
    n_parts = triton.cdiv(triton.cdiv(n_tokens, block_t), n_iter)
    rows_per_part = block_t * n_iter
    n_place = triton.cdiv(n_parts, parts_per_place)
    place_rows = max(1, min(_next_pow2(rows_per_part), 32 * place_warps))
    part_rows = max(1, min(_next_pow2(n_parts), 64 * 32 * place_warps // e_pad))  # 64 counts per thread
    sizes = _layout(n_tokens * k, n_local, n_parts, e_pad)
    # block_pid_map step: with many placement programs a small one spreads the tiles over them
    # (measured, H100: 8 instead of 32 at E = 128 took 1.3-1.7 us off T = 4096 and 16384)
    tile_block = min(8, _map_block(e_pad, place_warps)) if n_place >= 16 else _map_block(e_pad, place_warps)
    n_slots = n_tokens * k
    packed = n_slots < 1 << 20 and all(max_tiles(n_slots, n_local, bm) < 1 << bits
                                       for bm, bits in zip(BLOCK_SIZES, (16, 15, 14, 13)))
    return RoutingPlan(False, e_pad, k_pad, block_t, n_iter, n_parts, num_warps, rows_per_part, parts_per_place,
                       n_place, place_rows, part_rows, tile_block, False, sizes, sum(sizes), place_warps,
                       packed_scans=packed)


def _aligned(t) -> bool:
    return t is None or t.data_ptr() % 16 == 0


def _launch(fn, n_programs: int, key, args: tuple, consts: tuple, num_warps: int, device,
            launch_pdl: bool = False, cooperative: bool = False, stream=None) -> None:
    """fn[(n_programs,)](*args, *consts): the first call of a key goes through Triton's JIT
    (compiling or finding the kernel); later calls hand the same arguments straight to the
    compiled kernel's launcher, skipping the JIT's per-call binding and cache-key work (most of
    an eager routing call's host time). `key` must hold everything Triton specializes on: the
    constexprs, dtypes, the pointer alignments and the specialized integer arguments (strides).
    launch_pdl: launch as a programmatic dependent of the previous kernel; cooperative: as a
    cooperative grid on CUDA (all programs resident at once; both are compile options, so the
    compiled kernel's launcher keeps them). stream: the current stream where the caller has it
    already. Kept instead of `_fast_launch.launch` (whose key is derived from the values): on the
    --stub harness that took routing from 21 to 28 us per call at T = 1 and from 24 to 33 us with
    two launches (its generic binding and per-value keys cost more than this hand-kept key)."""
    hit = _COMPILED.get(key) if FAST_LAUNCH else None
    if hit is None:
        kwargs = dict(zip(fn.arg_names[len(args):], consts))
        if launch_pdl:
            kwargs["launch_pdl"] = True
        if cooperative and device.type == "cuda":
            kwargs["launch_cooperative_grid"] = True
        compiled = fn[(n_programs,)](*args, **kwargs, num_warps=num_warps)
        if FAST_LAUNCH and device.type == "cuda" and hasattr(compiled, "packed_metadata"):
            _COMPILED[key] = compiled
        return
    if stream is None:
        stream = triton.runtime.driver.active.get_current_stream(device.index)
    run_compiled(hit, (n_programs,), args + consts, stream)


_COOPERATIVE_REFUSED = False  # the driver refused a cooperative launch in this process (e.g. under MPS)


def _one_launch_programs() -> int:
    usable = ONE_LAUNCH and not _COOPERATIVE_REFUSED and target_info.cooperative_grid()
    return target_info.num_sms() if usable else 0


def _refuse_one_launch(err: RuntimeError) -> None:
    """After the driver refused a cooperative launch: warn once, and take two launches from then on."""
    global _COOPERATIVE_REFUSED
    _COOPERATIVE_REFUSED = True
    warnings.warn(f"routing: the GPU refused a cooperative launch ({err}); routing takes two launches "
                  "from now on in this process", RuntimeWarning, stacklevel=3)


def rows_kernel_consts(plan: RoutingPlan, k: int, n_expts: int, from_ptr: bool, pack32: bool, pdl: bool) -> tuple:
    """`routing_rows_kernel`'s constexprs, in its signature's order, for a rows-path plan (also what
    benchmarks/sass_routing.py compiles)."""
    return (k, plan.k_pad, plan.e_pad, plan.block_t, plan.rows_q, from_ptr, pack32, n_expts == plan.e_pad,
            min(plan.e_pad, RANK_BLOCK_MAX), pdl and not plan.one_launch, plan.one_launch, plan.part_rows,
            plan.tile_block, plan.packed_scans, plan.lane_counts)


def place_kernel_consts(plan: RoutingPlan, k: int, sm_first: bool, user: bool, pdl: bool) -> tuple:
    """`routing_place_kernel`'s constexprs, in its signature's order. The softmax is taken in launch 1
    with sm_first (before the top-k) or on the rows path, else here; ONE_STEP where each program
    places one part in one step."""
    return (k, plan.k_pad, plan.e_pad, plan.part_rows, plan.place_rows, plan.tile_block,
            not sm_first and not plan.rows_q, user, plan.rows_q > 0, pdl, plan.packed_scans, plan.lane_counts,
            plan.parts_per_place == 1 and plan.place_rows >= plan.rows_per_part)


def routing_triton(logits: torch.Tensor, k: int, sm_first: bool, expt_indx, simulated_ep: int, n_rows):
    """Returns (gate_scal, topk_indx, gate_indx, hist, token_offs_raw, token_offs_pad, block_pid_map).

    Arguments are assumed checked (routing.routing does it)."""
    n_tokens, n_expts = logits.shape
    user = expt_indx is not None
    plan_args = (n_tokens, n_expts, k, simulated_ep, sm_first, _target_programs(), FUSED_MAX_TILES, user, ROWS_PATH)
    plan = make_routing_plan(*plan_args, _one_launch_programs())
    dev = logits.device
    counter = stream = None
    if plan.one_launch:
        stream, capturing = current_stream(dev)
        counter = barrier_counter(dev, stream, capturing)
        if counter is None:  # no barrier counter to be had: the two launches need none
            plan = make_routing_plan(*plan_args, 0)
    ws = torch.empty(plan.total, dtype=torch.int32, device=dev)
    from_ptr = isinstance(n_rows, torch.Tensor)
    n_rows_ptr = n_rows if from_ptr else None
    n_rows_val = n_tokens if n_rows is None or from_ptr else n_rows
    if user and expt_indx.stride(1) != 1:
        expt_indx = expt_indx.contiguous()
    n_local = n_expts // simulated_ep
    stride_ut = expt_indx.stride(0) if user else 0
    sx0, sx1 = logits.stride()
    # what Triton specializes on besides the constexprs (see `_launch`)
    spec = (dev.index, logits.dtype, sx0, sx1, _aligned(logits), expt_indx.dtype if user else None, stride_ut,
            _aligned(expt_indx), n_rows.dtype if from_ptr else None, _aligned(n_rows_ptr))
    pack32 = logits.dtype != torch.float32
    if plan.fused:
        consts = (k, plan.k_pad, plan.e_pad, plan.block_t, plan.place_rows, plan.tile_block, sm_first, user,
                  from_ptr, plan.block_t >= n_tokens, plan.reg_softmax, pack32)
        _launch(routing_fused_kernel, 1, ("fused", consts, plan.num_warps) + spec,
                (logits, sx0, sx1, expt_indx, stride_ut, ws, n_rows_ptr, n_tokens, n_expts, n_local, n_rows_val),
                consts, plan.num_warps, dev)
    else:
        pdl = PDL and target_info.programmatic_dependent_launch()
        if plan.rows_q:
            consts = rows_kernel_consts(plan, k, n_expts, from_ptr, pack32, pdl)
            try:
                _launch(routing_rows_kernel, plan.n_parts, ("rows", consts, plan.num_warps) + spec,
                        (logits, sx0, sx1, ws, n_rows_ptr, counter, n_tokens, n_expts, n_local, n_rows_val), consts,
                        plan.num_warps, dev, cooperative=plan.one_launch, stream=stream)
            except RuntimeError as err:
                if not plan.one_launch or not str(err).startswith("Triton Error [CUDA]"):  # the driver's refusal
                    raise
                _refuse_one_launch(err)  # e.g. fewer SMs than the probe saw (MPS): the same call in two launches
                return routing_triton(logits, k, sm_first, expt_indx, simulated_ep, n_rows)
            if plan.one_launch:
                return _outputs(ws, plan)
        else:
            consts = (k, plan.k_pad, plan.e_pad, plan.block_t, sm_first, user, from_ptr, pack32, pdl)
            _launch(routing_topk_kernel, plan.n_parts, ("topk", consts, plan.num_warps) + spec,
                    (logits, sx0, sx1, expt_indx, stride_ut, ws, n_rows_ptr, n_tokens, n_expts, n_local, n_rows_val,
                     plan.n_iter), consts, plan.num_warps, dev)
        consts = place_kernel_consts(plan, k, sm_first, user, pdl)
        _launch(routing_place_kernel, plan.n_place_programs, ("place", consts, plan.place_warps, dev.index),
                (ws, plan.n_parts, plan.rows_per_part, plan.parts_per_place, n_tokens, n_local), consts,
                plan.place_warps, dev, launch_pdl=pdl)
    return _outputs(ws, plan)


def _outputs(ws: torch.Tensor, plan: RoutingPlan):
    (topk_indx, gate_indx, gate_scal, hist, raw, p16, p32, p64, p128, m16, m32, m64, m128,
     _scratch) = ws.split_with_sizes(plan.sizes)
    return (gate_scal.view(torch.float32), topk_indx, gate_indx, hist, raw, {16: p16, 32: p32, 64: p64, 128: p128},
            {16: m16, 32: m32, 64: m64, 128: m128})


@functools.lru_cache(maxsize=256)
def _expt_data_plan(n_local: int, n_gates: int):
    e_pad = max(32, _next_pow2(n_local))
    map_lens = tuple(max_tiles(n_gates, n_local, bm) for bm in BLOCK_SIZES)
    sizes = (n_local, n_local + 1) + (n_local + 1,) * 4 + map_lens
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    tile_block = max(16, 4096 // e_pad)
    n_programs = max(1, triton.cdiv(map_lens[0], 8 * tile_block))
    return e_pad, sizes, offsets, tile_block, n_programs


def compute_expt_data_triton(hist: torch.Tensor, n_expts_tot: int, n_gates: int):
    """Returns (hist int32, token_offs_raw, token_offs_pad dict, block_pid_map dict)."""
    e_pad, sizes, offsets, tile_block, n_programs = _expt_data_plan(n_expts_tot, n_gates)
    ws = torch.empty(sum(sizes), dtype=torch.int32, device=hist.device)
    expt_data_kernel[(n_programs,)](
        hist, ws, offsets[1], offsets[2], offsets[6], offsets[7], offsets[8], offsets[9], n_expts_tot, n_gates,
        E_PAD=e_pad, TILE_BLOCK=tile_block, num_warps=4,
    )
    h, raw, p16, p32, p64, p128, m16, m32, m64, m128 = ws.split_with_sizes(sizes)
    return h, raw, {16: p16, 32: p32, 64: p64, 128: p128}, {16: m16, 32: m32, 64: m64, 128: m128}
