"""Second routing kernel (counting sort + ExptData) and the standalone ExptData kernel."""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK_SIZES = (16, 32, 64, 128)


@triton.jit
def _max_tiles(n_rows, n_expts, BLOCK_M: tl.constexpr):
    """Device twin of `routing.max_tiles`: min(n, E) + (n - min(n, E)) // BLOCK_M."""
    n_rows = tl.maximum(n_rows, 0)
    m = tl.minimum(n_rows, n_expts)
    return m + (n_rows - m) // BLOCK_M


@triton.jit
def _write_tiles(hist, n_local, n_gates, pad_ptr, map_ptr,
                 BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, TILE_BLOCK: tl.constexpr):
    """token_offs_pad[BLOCK_M] (program 0) and this program's share of block_pid_map[BLOCK_M]."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, E_PAD)
    tiles = (hist + BLOCK_M - 1) // BLOCK_M
    ends = tl.cumsum(tiles, axis=0)
    n_used = tl.sum(tiles, axis=0)
    if pid == 0:
        tl.store(pad_ptr + cols, ends - tiles, mask=cols < n_local)
        tl.store(pad_ptr + n_local, n_used)
    n_map = _max_tiles(n_gates, n_local, BLOCK_M)
    per_prog = tl.cdiv(n_map, n_prog)
    lanes = tl.arange(0, TILE_BLOCK)
    for c in range(0, per_prog, TILE_BLOCK):
        t = pid * per_prog + c + lanes
        done = ends[None, :] <= t[:, None]  # experts whose tiles all lie before tile t
        expt = tl.sum(done.to(tl.int32), axis=1)
        first = tl.max(tl.where(done, ends[None, :], 0), axis=1)
        val = tl.where(t < n_used, ((t - first) << 16) | expt, -1)
        tl.store(map_ptr + t, val, mask=(c + lanes < per_prog) & (t < n_map))


@triton.jit
def _write_expt_data(hist, n_local, n_gates, ws_ptr, hist_off, raw_off, pad_off, pad_stride,
                     map_off16, map_off32, map_off64, map_off128,
                     E_PAD: tl.constexpr, TILE_BLOCK: tl.constexpr):
    """hist: [E_PAD] int32 counts of the local experts (zero at and beyond n_local)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, E_PAD)
    if pid == 0:
        tl.store(ws_ptr + hist_off + cols, hist, mask=cols < n_local)
        tl.store(ws_ptr + raw_off + cols, tl.cumsum(hist, axis=0) - hist, mask=cols < n_local)
        tl.store(ws_ptr + raw_off + n_local, tl.sum(hist, axis=0))
    _write_tiles(hist, n_local, n_gates, ws_ptr + pad_off, ws_ptr + map_off16, 16, E_PAD, TILE_BLOCK)
    _write_tiles(hist, n_local, n_gates, ws_ptr + pad_off + pad_stride, ws_ptr + map_off32, 32, E_PAD, TILE_BLOCK)
    _write_tiles(hist, n_local, n_gates, ws_ptr + pad_off + 2 * pad_stride, ws_ptr + map_off64, 64, E_PAD,
                 TILE_BLOCK)
    _write_tiles(hist, n_local, n_gates, ws_ptr + pad_off + 3 * pad_stride, ws_ptr + map_off128, 128, E_PAD,
                 TILE_BLOCK)


_OFFSET_ARGS = ["indx_off", "w_off", "part_off", "inv_off", "topk_off", "gate_off", "scal_off", "hist_off", "raw_off",
                "pad_off", "pad_stride", "map_off16", "map_off32", "map_off64", "map_off128"]


@triton.jit(do_not_specialize=["n_parts", "slots_per_part", "n_slots", "n_expts", "n_local"] + _OFFSET_ARGS)
def routing_sort_kernel(
    ws_ptr, wsf_ptr,  # the int32 workspace and the same bytes seen as float32
    indx_off, w_off, part_off, inv_off,  # inputs from topk_kernel: experts, weights [T*K]; counts [P, E_PAD], [P]
    topk_off, gate_off, scal_off,  # out: topk_indx, gate_indx (int32), gate_scal (float32), [T*K] each
    hist_off, raw_off, pad_off, pad_stride, map_off16, map_off32, map_off64, map_off128,  # out: ExptData
    n_parts, slots_per_part, n_slots, n_expts, n_local,
    E_PAD: tl.constexpr, PART_ROWS: tl.constexpr, SLOT_BLOCK: tl.constexpr, TILE_BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, E_PAD)

    # Totals over all parts, and what the parts before this one hold, per expert.
    totals = tl.zeros([E_PAD], dtype=tl.int32)
    before = tl.zeros([E_PAD], dtype=tl.int32)
    inv_before = tl.sum(tl.zeros([PART_ROWS], dtype=tl.int32), axis=0)
    for r0 in range(0, n_parts, PART_ROWS):
        r = r0 + tl.arange(0, PART_ROWS)
        tile = tl.load(ws_ptr + part_off + r[:, None] * E_PAD + cols[None, :], mask=r[:, None] < n_parts, other=0)
        totals += tl.sum(tile, axis=0)
        before += tl.sum(tl.where(r[:, None] < pid, tile, 0), axis=0)
        inv = tl.load(ws_ptr + inv_off + r, mask=r < n_parts, other=0)
        inv_before += tl.sum(tl.where(r < pid, inv, 0), axis=0)
    starts = tl.cumsum(totals, axis=0) - totals
    n_routed = tl.sum(totals, axis=0)

    if pid < n_parts:
        # Stable counting sort of this part's slots: experts in order, slots in order within an
        # expert; slots that route nowhere go after every routed slot, also in slot order.
        run = starts + before
        inv_run = n_routed + inv_before
        lanes = tl.arange(0, SLOT_BLOCK)
        slot0 = pid * slots_per_part
        for c0 in range(0, slots_per_part, SLOT_BLOCK):
            slot = slot0 + c0 + lanes
            live = (c0 + lanes < slots_per_part) & (slot < n_slots)
            expt = tl.load(ws_ptr + indx_off + slot, mask=live, other=-1)
            routed = live & (expt >= 0) & (expt < n_expts)
            n_routed_here = tl.sum(routed.to(tl.int32), axis=0)
            n_dead_here = tl.sum((live & ~routed).to(tl.int32), axis=0)
            key = tl.where(routed, expt, E_PAD) * SLOT_BLOCK + lanes
            key = tl.sort(key)
            s_expt = key // SLOT_BLOCK
            s_lane = key % SLOT_BLOCK
            s_slot = slot0 + c0 + s_lane
            s_live = (c0 + s_lane < slots_per_part) & (s_slot < n_slots)
            s_routed = s_expt < E_PAD
            counts = tl.histogram(tl.where(routed, expt, 0), E_PAD)
            counts = tl.where(cols == 0, counts - (SLOT_BLOCK - n_routed_here), counts)
            # sorted lane p of expert e lands at run[e] + (p - first lane of e in this block)
            shift = run - (tl.cumsum(counts, axis=0) - counts)
            pos = tl.where(s_routed, tl.gather(shift, tl.where(s_routed, s_expt, 0), 0) + lanes,
                           inv_run + lanes - n_routed_here)
            is_local = s_routed & (s_expt < n_local)
            tl.store(ws_ptr + topk_off + pos, tl.where(is_local, s_slot, -1), mask=s_live)
            tl.store(ws_ptr + gate_off + s_slot, tl.where(is_local, pos, -1), mask=s_live)
            w = tl.load(wsf_ptr + w_off + s_slot, mask=s_live, other=0.0)
            tl.store(wsf_ptr + scal_off + pos, w, mask=s_live)
            run += counts
            inv_run += n_dead_here

    local_hist = tl.where(cols < n_local, totals, 0)
    _write_expt_data(local_hist, n_local, n_slots, ws_ptr, hist_off, raw_off, pad_off, pad_stride,
                     map_off16, map_off32, map_off64, map_off128, E_PAD, TILE_BLOCK)


@triton.jit(do_not_specialize=["n_local", "n_gates"] + _OFFSET_ARGS[7:])
def expt_data_kernel(
    hist_in_ptr, ws_ptr, hist_off, raw_off, pad_off, pad_stride, map_off16, map_off32, map_off64, map_off128,
    n_local, n_gates, E_PAD: tl.constexpr, TILE_BLOCK: tl.constexpr,
):
    cols = tl.arange(0, E_PAD)
    hist = tl.load(hist_in_ptr + cols, mask=cols < n_local, other=0).to(tl.int32)
    _write_expt_data(hist, n_local, n_gates, ws_ptr, hist_off, raw_off, pad_off, pad_stride,
                     map_off16, map_off32, map_off64, map_off128, E_PAD, TILE_BLOCK)
