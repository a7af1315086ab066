"""The routing kernels: fused single-program routing, the two-launch path (top-k with per-program
ranks, then placement), and the ExptData kernel. See the package docstring for the design."""

from __future__ import annotations

import triton
import triton.language as tl

from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..topk_details import select_tile
from ..topk_details._rowwise import row_topk
from ..topk_details._topk_kernel import _key_column, _key_value, _keys_of, _softmax_picks

BLOCK_SIZES = (16, 32, 64, 128)


@triton.jit
def _max_tiles(n_rows, n_expts, BLOCK_M: tl.constexpr):
    """Device twin of `routing.max_tiles`: min(n, E) + (n - min(n, E)) // BLOCK_M."""
    n_rows = tl.maximum(n_rows, 0)
    m = tl.minimum(n_rows, n_expts)
    return m + (n_rows - m) // BLOCK_M


@triton.jit
def _ws_layout(n_slots, n_local, n_parts, E_PAD: tl.constexpr):
    """Element offsets of the workspace segments; the host twin is `routing_details._layout`.

    Outputs: topk_indx, gate_indx, gate_scal [S]; hist [L]; token_offs_raw [L+1];
    token_offs_pad for block_m 16/32/64/128 [4, L+1]; block_pid_map 16/32/64/128 [max_tiles each].
    Scratch: experts, weights, ranks [S]; per-program counts [P, E_PAD]; dead-slot counts [P]."""
    gate = n_slots
    scal = 2 * n_slots
    hist = 3 * n_slots
    raw = hist + n_local
    pad = raw + n_local + 1
    map16 = pad + 4 * (n_local + 1)
    map32 = map16 + _max_tiles(n_slots, n_local, 16)
    map64 = map32 + _max_tiles(n_slots, n_local, 32)
    map128 = map64 + _max_tiles(n_slots, n_local, 64)
    expt = map128 + _max_tiles(n_slots, n_local, 128)
    w = expt + n_slots
    rank = w + n_slots
    part = rank + n_slots
    dead = part + n_parts * E_PAD
    return gate, scal, hist, raw, pad, map16, map32, map64, map128, expt, w, rank, part, dead


@triton.jit
def _rank_tile(sel, slot_ok, counts, tag, in_t, base, dead_base,
               K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, USER_INDX: tl.constexpr):
    """Rank of every slot of a row tile ([BLOCK_T, K_PAD], in pick order like `sel`) in the stable
    counting sort: for a routed slot of expert e, base[e] + (slots of e in earlier rows of the tile)
    (+ earlier slots of e in its own row: user indices may repeat an expert). Per pick j that is one
    masked row sum of the column prefix over the tile's rows (`tag` marks the column pick j took);
    the prefix is a [BLOCK_T, BLOCK_T] x [BLOCK_T, E_PAD] matmul on the tensor cores (exact: 0/1 and
    small counts in float16, sums below 2^24 in float32) where BLOCK_T >= 16, else a cumsum.
    Slots that route nowhere: with user indices, dead_base + (dead slots before it in slot order
    within the tile); otherwise whole rows are dead and their rank is unused (they stay at their
    own slot index). Also returns the tile's per-expert counts and its number of dead slots."""
    cols = tl.arange(0, E_PAD)
    kk = tl.arange(0, K_PAD)
    if sel.shape[0] >= 16:  # the column prefix as one small matmul: strictly-lower-triangular ones @ counts
        r = tl.arange(0, sel.shape[0])
        lower = (r[None, :] < r[:, None]).to(tl.float16)
        before = tl.dot(lower, counts.to(tl.float16), out_dtype=tl.float32).to(tl.int32) + base[None, :]
    else:
        before = tl.cumsum(counts, axis=0) - counts + base[None, :]
    rank = tl.zeros(sel.shape, dtype=tl.int32)
    if not USER_INDX:  # one tensor (one layout conversion after the matmul): prefix * 64 + pick + 1
        before = before * 64 + (tag + 1)
    for j in tl.static_range(K):
        if USER_INDX:
            e_j = tl.sum(tl.where(kk[None, :] == j, tl.where(slot_ok, sel, -1), 0), axis=1)
            r_j = tl.sum(tl.where(cols[None, :] == e_j[:, None], before, 0), axis=1)
        else:
            r_j = tl.sum(tl.where((before & 63) == j + 1, before, 0), axis=1) >> 6
        rank = tl.where(kk[None, :] == j, r_j[:, None], rank)
    if USER_INDX:
        same = (sel[:, None, :] == sel[:, :, None]) & slot_ok[:, None, :] & (kk[None, None, :] < kk[None, :, None])
        rank += tl.sum(same.to(tl.int32), axis=2)
        dead = (in_t[:, None] & (kk[None, :] < K) & ~slot_ok).to(tl.int32)
        in_row = tl.cumsum(dead, axis=1) - dead  # user slots keep their column j
        n_dead_row = tl.sum(dead, axis=1)
        dead_rank = dead_base + (tl.cumsum(n_dead_row, axis=0) - n_dead_row)[:, None] + in_row
        return tl.where(slot_ok, rank, dead_rank), tl.sum(counts, axis=0), tl.sum(n_dead_row, axis=0)
    else:
        return rank, tl.sum(counts, axis=0), dead_base * 0


@triton.jit
def _fill_map(map_ptr, starts, tiles, cols, i, n_local, n_map):
    """Tiles i ([IB]) of every expert ([E_PAD] starts / tile counts): (i << 16) | e at starts[e] + i,
    within the map's n_map entries (compute_expt_data takes any hist, whose tiles may not fit)."""
    at = starts[:, None] + i[None, :]
    ok = (cols[:, None] < n_local) & (i[None, :] < tiles[:, None]) & (at < n_map)
    tl.store(map_ptr + at, (i[None, :] << 16) | cols[:, None], mask=ok)


@triton.jit
def _fill_map_blocks(map_ptr, starts, tiles, cols, n_local, n_map, q, nq, TILE_BLOCK: tl.constexpr):
    """`_fill_map` for tile blocks q, q + nq, ... of one map."""
    ib = tl.arange(0, TILE_BLOCK)
    for i0 in range(q * TILE_BLOCK, tl.max(tiles, axis=0), nq * TILE_BLOCK):
        _fill_map(map_ptr, starts, tiles, cols, i0 + ib, n_local, n_map)


@triton.jit
def _add2(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


@triton.jit
def _expert_scans(totals, n_local, PACKED: tl.constexpr):
    """totals: [E_PAD] int32 slots per expert (all experts). Returns the local experts' hist (zero at
    and beyond n_local), the exclusive prefix of totals over all experts (`start`), and for
    block_m 16/32/64/128 the local experts' tile counts, their exclusive prefixes and their sums.
    PACKED: two scans (and two sums) of packed fields instead of five: totals, t16, t32 in bits
    0-19, 20-35, 36-50 of an int64, t64 and t128 in bits 0-13 and 14-26 of an int32; the host
    sets it only where no prefix can overflow its field (sum of totals < 2^20, tiles within the
    widths), and a cross-warp scan costs far more than the packing."""
    cols = tl.arange(0, totals.shape[0])
    hist = tl.where(cols < n_local, totals, 0)
    t16 = (hist + 15) // 16
    t32 = (hist + 31) // 32
    t64 = (hist + 63) // 64
    t128 = (hist + 127) // 128
    if PACKED:
        a = totals.to(tl.int64) | (t16.to(tl.int64) << 20) | (t32.to(tl.int64) << 36)
        b = t64 | (t128 << 14)
        ia, ib = tl.associative_scan((a, b), 0, _add2)  # one pass for both
        ea = ia - a
        eb = ib - b
        ua, ub = tl.reduce((a, b), 0, _add2)
        start = (ea & 0xFFFFF).to(tl.int32)
        s16 = ((ea >> 20) & 0xFFFF).to(tl.int32)
        s32 = (ea >> 36).to(tl.int32)
        s64 = eb & 0x3FFF
        s128 = eb >> 14
        u16 = ((ua >> 20) & 0xFFFF).to(tl.int32)
        u32 = (ua >> 36).to(tl.int32)
        u64 = ub & 0x3FFF
        u128 = ub >> 14
    else:
        start = tl.cumsum(totals, axis=0) - totals
        s16 = tl.cumsum(t16, axis=0) - t16
        s32 = tl.cumsum(t32, axis=0) - t32
        s64 = tl.cumsum(t64, axis=0) - t64
        s128 = tl.cumsum(t128, axis=0) - t128
        u16 = tl.sum(t16, axis=0)
        u32 = tl.sum(t32, axis=0)
        u64 = tl.sum(t64, axis=0)
        u128 = tl.sum(t128, axis=0)
    return hist, start, (t16, t32, t64, t128), (s16, s32, s64, s128), (u16, u32, u64, u128)


@triton.jit
def _write_expt_data(totals, n_local, n_gates, hist_ptr, raw_ptr, pad_ptr, map16_ptr, map32_ptr, map64_ptr,
                     map128_ptr, pid, n_prog, E_PAD: tl.constexpr, TILE_BLOCK: tl.constexpr, scans=None):
    """totals: [E_PAD] int32 slots per expert (`_expert_scans`; or `scans`, its result). Program 0
    writes hist, token_offs_raw and the four token_offs_pad; the n_prog programs share the four
    block_pid_maps: expert e's tiles are written where they go (a [E_PAD, TILE_BLOCK] block of
    stores per step, no search), and every program fills its slice of the unused tail with -1."""
    if scans is None:
        scans = _expert_scans(totals, n_local, False)
    hist, start, tiles, starts, sums = scans
    t16, t32, t64, t128 = tiles
    s16, s32, s64, s128 = starts
    u16, u32, u64, u128 = sums
    cols = tl.arange(0, E_PAD)
    in_e = cols < n_local
    if pid == 0:
        tl.store(hist_ptr + cols, hist, mask=in_e)
        tl.store(raw_ptr + cols, start, mask=in_e)  # the local experts come first: their prefix is start
        tl.store(raw_ptr + n_local, tl.sum(hist, axis=0))
        stride = n_local + 1
        tl.store(pad_ptr + cols, s16, mask=in_e)
        tl.store(pad_ptr + stride + cols, s32, mask=in_e)
        tl.store(pad_ptr + 2 * stride + cols, s64, mask=in_e)
        tl.store(pad_ptr + 3 * stride + cols, s128, mask=in_e)
        tl.store(pad_ptr + n_local, u16)
        tl.store(pad_ptr + stride + n_local, u32)
        tl.store(pad_ptr + 2 * stride + n_local, u64)
        tl.store(pad_ptr + 3 * stride + n_local, u128)
    n16 = _max_tiles(n_gates, n_local, 16)  # the longest map; the others are masked to their length
    n32 = _max_tiles(n_gates, n_local, 32)
    n64 = _max_tiles(n_gates, n_local, 64)
    n128 = _max_tiles(n_gates, n_local, 128)
    if n_prog >= 4:  # each program fills one map (its slowest programs are the kernel's tail)
        nq = n_prog // 4
        q = pid // 4
        if q < nq:
            if pid % 4 == 0:
                _fill_map_blocks(map16_ptr, s16, t16, cols, n_local, n16, q, nq, TILE_BLOCK)
            elif pid % 4 == 1:
                _fill_map_blocks(map32_ptr, s32, t32, cols, n_local, n32, q, nq, TILE_BLOCK)
            elif pid % 4 == 2:
                _fill_map_blocks(map64_ptr, s64, t64, cols, n_local, n64, q, nq, TILE_BLOCK)
            else:
                _fill_map_blocks(map128_ptr, s128, t128, cols, n_local, n128, q, nq, TILE_BLOCK)
    else:
        ib = tl.arange(0, TILE_BLOCK)
        for i0 in range(pid * TILE_BLOCK, tl.max(t16, axis=0), n_prog * TILE_BLOCK):
            i = i0 + ib
            _fill_map(map16_ptr, s16, t16, cols, i, n_local, n16)
            _fill_map(map32_ptr, s32, t32, cols, i, n_local, n32)
            _fill_map(map64_ptr, s64, t64, cols, i, n_local, n64)
            _fill_map(map128_ptr, s128, t128, cols, i, n_local, n128)
    per_prog = tl.cdiv(n16, n_prog)
    lanes = tl.arange(0, 4 * TILE_BLOCK)
    for c in range(0, per_prog, 4 * TILE_BLOCK):
        t = pid * per_prog + c + lanes
        mine = c + lanes < per_prog
        tl.store(map16_ptr + t, tl.full(t.shape, -1, tl.int32), mask=mine & (t >= u16) & (t < n16))
        tl.store(map32_ptr + t, tl.full(t.shape, -1, tl.int32), mask=mine & (t >= u32) & (t < n32))
        tl.store(map64_ptr + t, tl.full(t.shape, -1, tl.int32), mask=mine & (t >= u64) & (t < n64))
        tl.store(map128_ptr + t, tl.full(t.shape, -1, tl.int32), mask=mine & (t >= u128) & (t < n128))


@triton.jit
def _add4(a0, b0, c0, d0, a1, b1, c1, d1):
    return a0 + a1, b0 + b1, c0 + c1, d0 + d1


@triton.jit
def _unpack_lanes(even, odd):
    """[W] words of 16-bit lanes -> [4 W] per expert: expert 4 j + i is lane i // 2 of word j of
    `even` (i = 0, 2) or of `odd` (i = 1, 3)."""
    even2 = tl.join(even & 0xFFFF, (even >> 16) & 0xFFFF)  # [W, 2]: experts 4 j, 4 j + 2
    odd2 = tl.join(odd & 0xFFFF, (odd >> 16) & 0xFFFF)
    return tl.reshape(tl.join(even2, odd2), [4 * even.shape[0]])  # [W, 2, 2]: [j, i // 2, i % 2]


@triton.jit
def _counts_prefix(part_ptr, n_parts, p0, PART_ROWS: tl.constexpr, E_PAD: tl.constexpr, BYTES: tl.constexpr,
                   LANES: tl.constexpr):
    """The P counts rows ([n_parts, E_PAD] from `part_ptr`, the workspace's counts segment: int32, or
    bytes with BYTES): per expert, the sum over all rows (totals) and over the rows before p0. Loads
    bypass L1: in the one-launch path other programs wrote the rows during this kernel.
    LANES (byte rows whose every sum is < 2^16: the host checks T): four experts per loaded word,
    summed as two words of 16-bit lanes (even and odd bytes), so the loads, adds and the cross-warp
    reduction handle a quarter of the elements."""
    counts = part_ptr.to(tl.pointer_type(tl.uint8)) if BYTES else part_ptr
    if LANES:
        W: tl.constexpr = E_PAD // 4
        words = tl.arange(0, W)
        zero = tl.zeros([PART_ROWS, W], dtype=tl.int32)
        even_all, odd_all, even_before, odd_before = zero, zero, zero, zero
        for r0 in range(0, n_parts, PART_ROWS):
            r = r0 + tl.arange(0, PART_ROWS)
            word = tl.load(part_ptr + r[:, None] * W + words[None, :], mask=r[:, None] < n_parts, other=0,
                           cache_modifier=".cg")
            even = word & 0x00FF00FF
            odd = (word >> 8) & 0x00FF00FF
            early = r[:, None] < p0
            even_all += even
            odd_all += odd
            even_before += tl.where(early, even, 0)
            odd_before += tl.where(early, odd, 0)
        even_all, odd_all, even_before, odd_before = tl.reduce((even_all, odd_all, even_before, odd_before), 0,
                                                               _add4)
        return _unpack_lanes(even_all, odd_all), _unpack_lanes(even_before, odd_before)
    cols = tl.arange(0, E_PAD)
    acc_all = tl.zeros([PART_ROWS, E_PAD], dtype=tl.int32)
    acc_before = tl.zeros([PART_ROWS, E_PAD], dtype=tl.int32)
    for r0 in range(0, n_parts, PART_ROWS):
        r = r0 + tl.arange(0, PART_ROWS)
        tile = tl.load(counts + r[:, None] * E_PAD + cols[None, :], mask=r[:, None] < n_parts, other=0,
                       cache_modifier=".cg").to(tl.int32)
        acc_all += tile
        acc_before += tl.where(r[:, None] < p0, tile, 0)
    return tl.reduce((acc_all, acc_before), 0, _add2)  # one pass for both


GRID_BARRIER_STRIDE = tl.constexpr(1 << 16)  # what one call adds to its counter (more than any grid)


@triton.jit
def _grid_barrier(bar_ptr):
    """Wait until every program of the (cooperatively launched, so co-resident) grid has got here;
    the stores before it are visible to the loads after it. `bar_ptr`: an int32 counter used by one
    call at a time and left a multiple of GRID_BARRIER_STRIDE by every call (zero to begin with):
    the programs add STRIDE in all (program 0 the rest after 1 each), so each knows the value at
    which all have arrived without the counter ever being reset (int32 wraparound is harmless)."""
    tl.debug_barrier()  # every thread's stores precede the release below
    n_prog = tl.num_programs(0)
    inc = tl.where(tl.program_id(0) == 0, GRID_BARRIER_STRIDE - n_prog + 1, 1)
    old = tl.atomic_add(bar_ptr, inc, sem="release", scope="gpu")
    done = (old & -GRID_BARRIER_STRIDE) + GRID_BARRIER_STRIDE
    seen = old + inc
    while done - seen > 0:
        seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _store_placed(ws_ptr, pos, slot, is_local, w, live, gate, scal):
    """Slots at their sorted positions: topk_indx[pos] = slot, gate_indx[slot] = pos (-1 for slots of
    other ranks' experts), gate_scal[pos] = the weight."""
    tl.store(ws_ptr + pos, tl.where(is_local, slot, -1), mask=live)
    tl.store(ws_ptr + gate + slot, tl.where(is_local, pos, -1), mask=live)
    tl.store(ws_ptr + scal + pos, w.to(tl.int32, bitcast=True), mask=live)


@triton.jit
def _place_rows(ws_ptr, row0, row_end, base, dead_base, expt_o, rank_o, w_o, gate, scal, n_local,
                ROWS: tl.constexpr, K: tl.constexpr, K_PAD: tl.constexpr, SOFTMAX: tl.constexpr,
                USER_INDX: tl.constexpr, RANK_IS_POS: tl.constexpr):
    """Rows [row0, min(row0 + ROWS, row_end)): read their slots' expert (-1: routes nowhere), rank
    and value back from the scratch as [ROWS, K_PAD] (a row's slots in one thread), take the
    softmax over each row's routed slots (SOFTMAX; float64, as `routing_torch`), and store every
    slot at its sorted position: base[e] + rank when routed, else dead_base + rank (user indices)
    or the slot itself (dead rows: they sort after all routed slots, in slot order). RANK_IS_POS:
    the rank already is the position."""
    loaded = _load_slots(ws_ptr, row0, row_end, expt_o, rank_o, w_o, ROWS, K, K_PAD)
    _place_loaded(ws_ptr, loaded, base, dead_base, gate, scal, n_local, ROWS, K_PAD, SOFTMAX, USER_INDX, RANK_IS_POS)


@triton.jit
def _load_slots(ws_ptr, row0, row_end, expt_o, rank_o, w_o, ROWS: tl.constexpr, K: tl.constexpr,
                K_PAD: tl.constexpr):
    """The first half of `_place_rows`: (slot, live, expert, rank, value) of the rows' slots."""
    rows = row0 + tl.arange(0, ROWS)
    kk = tl.arange(0, K_PAD)
    slot = rows[:, None] * K + kk[None, :]
    live = (rows < row_end)[:, None] & (kk[None, :] < K)
    expt = tl.load(ws_ptr + expt_o + slot, mask=live, other=-1)
    rank = tl.load(ws_ptr + rank_o + slot, mask=live, other=0)
    v = tl.load(ws_ptr + w_o + slot, mask=live, other=0).to(tl.float32, bitcast=True)
    return slot, live, expt, rank, v


@triton.jit
def _place_loaded(ws_ptr, loaded, base, dead_base, gate, scal, n_local, ROWS: tl.constexpr, K_PAD: tl.constexpr,
                  SOFTMAX: tl.constexpr, USER_INDX: tl.constexpr, RANK_IS_POS: tl.constexpr):
    """The second half of `_place_rows`, on `_load_slots`' result."""
    slot, live, expt, rank, v = loaded
    routed = expt >= 0
    if RANK_IS_POS:
        pos = rank
    else:
        start = tl.reshape(tl.gather(base, tl.reshape(tl.where(routed, expt, 0), [ROWS * K_PAD]), 0), [ROWS, K_PAD])
        if USER_INDX:
            pos = tl.where(routed, start + rank, dead_base + rank)
        else:
            pos = tl.where(routed, start + rank, slot)
    if SOFTMAX:
        w = _softmax_picks(v, routed)
    else:
        w = v
    _store_placed(ws_ptr, pos, slot, routed & (expt < n_local), w, live, gate, scal)


@triton.jit
def _store_slots(ws_ptr, expt_o, rank_o, w_o, rows, out_col, in_t, slot_ok, sel, rank, w,
                 K: tl.constexpr, K_PAD: tl.constexpr):
    """A row tile's slot arrays (slot = row*K + its output column): expert (-1 where the slot routes
    nowhere), rank, and the value's bits (weight, or the picked logit when the softmax is left to
    `_place_rows`)."""
    slot = rows[:, None] * K + out_col
    live = in_t[:, None] & (tl.arange(0, K_PAD)[None, :] < K)
    tl.store(ws_ptr + expt_o + slot, tl.where(slot_ok, sel, -1), mask=live)
    tl.store(ws_ptr + rank_o + slot, rank, mask=live)
    tl.store(ws_ptr + w_o + slot, w.to(tl.int32, bitcast=True), mask=live)


@triton.jit(do_not_specialize=["n_tokens", "n_expts", "n_local", "n_rows_val"])
def routing_fused_kernel(
    x_ptr, stride_xt, stride_xe, user_ptr, stride_ut, ws_ptr, n_rows_ptr,
    n_tokens, n_expts, n_local, n_rows_val,
    K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
    PLACE_ROWS: tl.constexpr, TILE_BLOCK: tl.constexpr,
    SM_FIRST: tl.constexpr, USER_INDX: tl.constexpr, N_ROWS_FROM_PTR: tl.constexpr, ONE_TILE: tl.constexpr,
    REG_SOFTMAX: tl.constexpr, PACK32: tl.constexpr,
):
    """Everything in one program (small T): top-k, ranks, placement, ExptData. REG_SOFTMAX (one
    tile only): the softmax on the [BLOCK_T, K_PAD] picks in registers (replicated over the lanes
    that share a row), else in `_place_rows` after a round trip through the scratch."""
    n_slots = n_tokens * K
    gate, scal, hist_o, raw_o, pad_o, m16, m32, m64, m128, expt_o, w_o, rank_o, part_o, dead_o = _ws_layout(
        n_slots, n_local, 1, E_PAD)
    if N_ROWS_FROM_PTR:
        n_valid_rows = tl.load(n_rows_ptr).to(tl.int32)
    else:
        n_valid_rows = n_rows_val
    kk = tl.arange(0, K_PAD)
    if ONE_TILE:  # all rows in one tile: positions straight from registers
        rows = tl.arange(0, BLOCK_T)
        sel, out_col, w, slot_ok, counts, tag, in_t = select_tile(
            x_ptr, stride_xt, stride_xe, user_ptr, stride_ut, rows, n_tokens, n_expts, n_valid_rows,
            K, K_PAD, E_PAD, REG_SOFTMAX, SM_FIRST, USER_INDX, PACK32)
        totals = tl.sum(counts, axis=0)
        n_routed = tl.sum(totals, axis=0)
        pos, _t, _d = _rank_tile(sel, slot_ok, counts, tag, in_t, tl.cumsum(totals, axis=0) - totals, n_routed,
                                 K, K_PAD, E_PAD, USER_INDX)
        slot = rows[:, None] * K + out_col
        if not USER_INDX:
            pos = tl.where(slot_ok, pos, slot)
        if REG_SOFTMAX or SM_FIRST:
            _store_placed(ws_ptr, pos, slot, slot_ok & (sel < n_local), w,
                          in_t[:, None] & (kk[None, :] < K), gate, scal)
        else:
            _store_slots(ws_ptr, expt_o, rank_o, w_o, rows, out_col, in_t, slot_ok, sel, pos, w, K, K_PAD)
            tl.debug_barrier()  # the scratch written above is read back by other threads of this program
            for r0 in range(0, n_tokens, PLACE_ROWS):
                _place_rows(ws_ptr, r0, n_tokens, totals, 0, expt_o, rank_o, w_o, gate, scal, n_local,
                            PLACE_ROWS, K, K_PAD, True, USER_INDX, True)
    else:  # several tiles: ranks to scratch, then a placement pass over all rows
        totals = tl.zeros([E_PAD], dtype=tl.int32)
        n_dead = n_tokens * 0
        for r0 in range(0, n_tokens, BLOCK_T):
            rows = r0 + tl.arange(0, BLOCK_T)
            sel, out_col, w, slot_ok, counts, tag, in_t = select_tile(
                x_ptr, stride_xt, stride_xe, user_ptr, stride_ut, rows, n_tokens, n_expts, n_valid_rows,
                K, K_PAD, E_PAD, False, SM_FIRST, USER_INDX, PACK32)
            rank, tile_counts, tile_dead = _rank_tile(sel, slot_ok, counts, tag, in_t, totals, n_dead,
                                                      K, K_PAD, E_PAD, USER_INDX)
            _store_slots(ws_ptr, expt_o, rank_o, w_o, rows, out_col, in_t, slot_ok, sel, rank, w, K, K_PAD)
            totals += tile_counts
            n_dead += tile_dead
        tl.debug_barrier()  # the scratch written above is read back by other threads of this program
        start = tl.cumsum(totals, axis=0) - totals
        n_routed = tl.sum(totals, axis=0)
        for r0 in range(0, n_tokens, PLACE_ROWS):
            _place_rows(ws_ptr, r0, n_tokens, start, n_routed, expt_o, rank_o, w_o, gate, scal, n_local,
                        PLACE_ROWS, K, K_PAD, not SM_FIRST, USER_INDX, False)
    _write_expt_data(totals, n_local, n_slots, ws_ptr + hist_o, ws_ptr + raw_o, ws_ptr + pad_o, ws_ptr + m16,
                     ws_ptr + m32, ws_ptr + m64, ws_ptr + m128, 0, 1, E_PAD, TILE_BLOCK)


@triton.jit(do_not_specialize=["n_tokens", "n_expts", "n_local", "n_rows_val", "n_iter"])
def routing_topk_kernel(
    x_ptr, stride_xt, stride_xe, user_ptr, stride_ut, ws_ptr, n_rows_ptr,
    n_tokens, n_expts, n_local, n_rows_val, n_iter,
    K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
    SM_FIRST: tl.constexpr, USER_INDX: tl.constexpr, N_ROWS_FROM_PTR: tl.constexpr, PACK32: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """Launch 1 of 2: program p takes n_iter row tiles; per slot it writes the expert (-1: nowhere),
    the picked logit (the weight with SM_FIRST) and the rank within the program; then its counts
    row (and, with user indices, its dead-slot count)."""
    pid = tl.program_id(0)
    n_parts = tl.num_programs(0)
    n_slots = n_tokens * K
    _g, _s, _h, _r, _p, _m16, _m32, _m64, _m128, expt_o, w_o, rank_o, part_o, dead_o = _ws_layout(
        n_slots, n_local, n_parts, E_PAD)
    if N_ROWS_FROM_PTR:
        n_valid_rows = tl.load(n_rows_ptr).to(tl.int32)
    else:
        n_valid_rows = n_rows_val
    totals = tl.zeros([E_PAD], dtype=tl.int32)
    n_dead = n_tokens * 0
    for it in range(n_iter):
        rows = (pid * n_iter + it) * BLOCK_T + tl.arange(0, BLOCK_T)
        sel, out_col, w, slot_ok, counts, tag, in_t = select_tile(
            x_ptr, stride_xt, stride_xe, user_ptr, stride_ut, rows, n_tokens, n_expts, n_valid_rows,
            K, K_PAD, E_PAD, False, SM_FIRST, USER_INDX, PACK32)
        rank, tile_counts, tile_dead = _rank_tile(sel, slot_ok, counts, tag, in_t, totals, n_dead,
                                                  K, K_PAD, E_PAD, USER_INDX)
        _store_slots(ws_ptr, expt_o, rank_o, w_o, rows, out_col, in_t, slot_ok, sel, rank, w, K, K_PAD)
        totals += tile_counts
        n_dead += tile_dead
    tl.store(ws_ptr + part_o + pid * E_PAD + tl.arange(0, E_PAD), totals)
    if USER_INDX:
        tl.store(ws_ptr + dead_o + pid, n_dead)
    if USE_PDL:  # this program's results are stored: the placement may be launched (it waits for the grid)
        gdc_launch_dependents()


@triton.jit(do_not_specialize=["n_tokens", "n_expts", "n_local", "n_rows_val"])
def routing_rows_kernel(
    x_ptr, stride_xt, stride_xe, ws_ptr, n_rows_ptr, bar_ptr, n_tokens, n_expts, n_local, n_rows_val,
    K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, ROWS: tl.constexpr, Q: tl.constexpr,
    N_ROWS_FROM_PTR: tl.constexpr, PACK32: tl.constexpr, FULL_E: tl.constexpr, RANK_BLOCK: tl.constexpr = 16,
    USE_PDL: tl.constexpr = False, ONE_LAUNCH: tl.constexpr = False, PART_ROWS: tl.constexpr = 1,
    TILE_BLOCK: tl.constexpr = 8, PACKED_SCANS: tl.constexpr = False, LANE_COUNTS: tl.constexpr = False,
):
    """Launch 1 of 2 (or the only one: ONE_LAUNCH) without user indices or sm_first (K <= 8):
    program p takes ROWS rows, Q threads per row. `row_topk` gives each row's K_PAD largest keys
    (in registers, no per-key shuffles) and keeps its keys; the picks are the keys >= the K-th.
    Per slot (in the [ROWS, K] slot domain) it stores the expert and the softmax weight of its
    row's picks (float64, as `routing_torch`) and the rank within the program. The ranks: one
    matmul per RANK_BLOCK columns (a reload of the logits) on the tensor cores, (lower triangle
    with its diagonal) @ picks = picks of that expert in this and earlier rows of the tile; those
    counts go to a byte array [T, E_PAD] at (row, expert), which the program reads back at its
    picks (rank = count - 1) into the slot domain, with the row of its last token: the program's
    counts row (bytes).

    ONE_LAUNCH (a cooperative grid, `bar_ptr` its barrier counter): instead of leaving the slots to
    `routing_place_kernel`, every program waits for all counts rows (`_grid_barrier`), takes the
    totals and the prefix before its own row from them, stores its slots at their positions from
    registers and shares the ExptData work, as the placement kernel does."""
    pid = tl.program_id(0)
    n_slots = n_tokens * K
    gate, scal, hist_o, raw_o, pad_o, m16, m32, m64, m128, expt_o, w_o, rank_o, part_o, dead_o = _ws_layout(
        n_slots, n_local, tl.num_programs(0), E_PAD)
    # 16-byte aligned (the workspace is, and the host reserves the 3 int32 of padding), so the byte
    # stores below can be vectors
    rank8 = (ws_ptr + tl.multiple_of((dead_o + tl.num_programs(0) + 3) // 4 * 4, 4)).to(tl.pointer_type(tl.uint8))
    counts8 = (ws_ptr + part_o).to(tl.pointer_type(tl.uint8))
    if N_ROWS_FROM_PTR:
        n_valid_rows = tl.load(n_rows_ptr).to(tl.int32)
    else:
        n_valid_rows = n_rows_val
    rows = pid * ROWS + tl.arange(0, ROWS)
    in_t = rows < n_tokens
    row_ok = in_t & (rows < n_valid_rows)
    best = row_topk(x_ptr, stride_xt, stride_xe, rows, n_tokens, n_expts, K_PAD, E_PAD, Q, PACK32, FULL_E)
    # the slot domain: expert and logit of each pick, in expert order within the row. Each pick's
    # place in that order is counted on the [ROWS] picks (whole rows in every thread of a row),
    # and the picks are put in their columns there, so the slots are contiguous per row (no
    # permuted addresses: their stores then need no layout change through shared memory)
    kk = tl.arange(0, K_PAD)
    bests = tl.zeros([ROWS, K_PAD], dtype=best[0].dtype)
    for j in tl.static_range(K_PAD):
        col_j = _key_column(best[j], PACK32)
        at = col_j * 0 + j  # the padding picks past K keep their own column
        if j < K:
            at = col_j * 0
            for i in tl.static_range(K):
                at += (_key_column(best[i], PACK32) < col_j).to(tl.int32)
        bests = tl.where(kk[None, :] == at[:, None], best[j][:, None], bests)
    sel = _key_column(bests, PACK32)
    slot = rows[:, None] * K + kk[None, :]
    live = in_t[:, None] & (kk[None, :] < K)
    if not ONE_LAUNCH:
        tl.store(ws_ptr + expt_o + slot, tl.where(row_ok[:, None], sel, -1), mask=live)
    # ranks: [ROWS, RANK_BLOCK] blocks of 0/1 picks through one matmul each
    kth = tl.where(row_ok, best[K - 1], 2147483647 if PACK32 else 9223372036854775807)  # dead rows: none
    r = tl.arange(0, ROWS)
    tri = tl.where(r[None, :] <= r[:, None], 1.0, 0.0).to(tl.float16)
    NB: tl.constexpr = RANK_BLOCK
    rows64 = rows.to(tl.int64)
    for c0 in tl.static_range(0, E_PAD, NB):
        cols = c0 + tl.arange(0, NB)
        col_ok = (cols < n_expts) | FULL_E
        x = tl.load(x_ptr + rows64[:, None] * stride_xt + cols[None, :] * stride_xe,
                    mask=in_t[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        hit = (_keys_of(x, cols[None, :], col_ok[None, :], PACK32) >= kth[:, None]).to(tl.float16)
        # picks of each expert in this and earlier rows of the tile (<= ROWS <= 128: a byte)
        v = tl.dot(tri, hit, out_dtype=tl.float32).to(tl.uint8)
        # every byte of the row block (unmasked columns let the stores be vectors); a masked store of
        # the last row alone would convert the whole accumulator's layout: that row is read back below
        tl.store(rank8 + rows64[:, None] * E_PAD + cols[None, :], v, mask=in_t[:, None])
    # the ranks at the picks, in the slot domain: read back by this program (the barrier orders its
    # threads' global stores before the loads), so the placement loads them with the slot's other
    # fields instead of after the expert
    tl.debug_barrier()
    rank = tl.load(rank8 + rows64[:, None] * E_PAD + sel, mask=live & row_ok[:, None], other=1).to(tl.int32) - 1
    # the counts row: the counts at the tile's last token
    last = tl.minimum(pid * ROWS + ROWS, n_tokens) - 1
    all_cols = tl.arange(0, E_PAD)
    tl.store(counts8 + pid * E_PAD + all_cols, tl.load(rank8 + last.to(tl.int64) * E_PAD + all_cols))
    # the weights (while those loads are in flight) here, not in the placement: a row's picks are in
    # its threads already, and the placement's chain of dependent steps is the shorter for it
    w = _softmax_picks(_key_value(bests, PACK32), row_ok[:, None] & (kk[None, :] < K))
    if ONE_LAUNCH:
        _grid_barrier(bar_ptr)
        totals, before = _counts_prefix(ws_ptr + part_o, tl.num_programs(0), pid, PART_ROWS, E_PAD, True, LANE_COUNTS)
        scans = _expert_scans(totals, n_local, PACKED_SCANS)
        routed = live & row_ok[:, None]
        at = tl.reshape(tl.where(routed, sel, 0), [ROWS * K_PAD])
        start = tl.reshape(tl.gather(scans[1] + before, at, 0), [ROWS, K_PAD])
        pos = tl.where(routed, start + rank.to(tl.int32), slot)  # dead rows sit at their own slot
        _store_placed(ws_ptr, pos, slot, routed & (sel < n_local), w, live, gate, scal)
        _write_expt_data(totals, n_local, n_slots, ws_ptr + hist_o, ws_ptr + raw_o, ws_ptr + pad_o, ws_ptr + m16,
                         ws_ptr + m32, ws_ptr + m64, ws_ptr + m128, pid, tl.num_programs(0), E_PAD, TILE_BLOCK,
                         scans)
    else:
        tl.store(ws_ptr + w_o + slot, w.to(tl.int32, bitcast=True), mask=live)
        tl.store(ws_ptr + rank_o + slot, rank, mask=live)
    if USE_PDL:  # this program's results are stored: the placement may be launched (it waits for the grid)
        gdc_launch_dependents()


@triton.jit(do_not_specialize=["n_parts", "rows_per_part", "parts_per_prog", "n_tokens", "n_local"])
def routing_place_kernel(
    ws_ptr, n_parts, rows_per_part, parts_per_prog, n_tokens, n_local,
    K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, PART_ROWS: tl.constexpr,
    PLACE_ROWS: tl.constexpr, TILE_BLOCK: tl.constexpr, SOFTMAX: tl.constexpr, USER_INDX: tl.constexpr,
    COUNTS8: tl.constexpr, USE_PDL: tl.constexpr = False, PACKED_SCANS: tl.constexpr = False,
    LANE_COUNTS: tl.constexpr = False, ONE_STEP: tl.constexpr = False,
):
    """Launch 2 of 2 (after `routing_topk_kernel`, or `routing_rows_kernel` with COUNTS8: byte
    counts rows): program q places the rows of top-k programs [q * parts_per_prog, ...): totals and the prefix before its
    first part from the counts rows, then every slot to its sorted position (no sort: the ranks
    are known) with the softmax of its row; then ExptData shared by all programs. USE_PDL: launched
    as a programmatic dependent of launch 1, it waits for launch 1's results first.
    ONE_STEP (the host's promise: one part per program, placed in one `_place_rows` step): the
    slots are loaded before the counts rows, so the two round trips overlap."""
    pid = tl.program_id(0)
    n_slots = n_tokens * K
    gate, scal, hist_o, raw_o, pad_o, m16, m32, m64, m128, expt_o, w_o, rank_o, part_o, dead_o = _ws_layout(
        n_slots, n_local, n_parts, E_PAD)
    cols = tl.arange(0, E_PAD)
    p0 = pid * parts_per_prog
    if USE_PDL:  # launched as a programmatic dependent of launch 1: wait for its results
        gdc_wait()
    if ONE_STEP:
        loaded = _load_slots(ws_ptr, pid * rows_per_part, tl.minimum(pid * rows_per_part + rows_per_part, n_tokens),
                             expt_o, rank_o, w_o, PLACE_ROWS, K, K_PAD)
    if COUNTS8:  # the rows path: counts rows are bytes
        counts = (ws_ptr + part_o).to(tl.pointer_type(tl.uint8))
    else:
        counts = ws_ptr + part_o
    totals, before = _counts_prefix(ws_ptr + part_o, n_parts, p0, PART_ROWS, E_PAD, COUNTS8, LANE_COUNTS)
    dead_before = n_parts * 0
    if USER_INDX:
        for r0 in range(0, p0, PART_ROWS):
            r = r0 + tl.arange(0, PART_ROWS)
            dead_before += tl.sum(tl.load(ws_ptr + dead_o + r, mask=r < p0, other=0), axis=0)
    scans = _expert_scans(totals, n_local, PACKED_SCANS)
    base = scans[1] + before
    if USER_INDX:
        dead_base = tl.sum(totals, axis=0) + dead_before
    else:
        dead_base = dead_before  # unused: dead rows sit at their own slot index
    if ONE_STEP:
        _place_loaded(ws_ptr, loaded, base, dead_base, gate, scal, n_local, PLACE_ROWS, K_PAD, SOFTMAX, USER_INDX,
                      False)
    else:
        for p in range(p0, tl.minimum(p0 + parts_per_prog, n_parts)):
            if p > p0:  # past the previous part (not after the last one: that load would only delay the exit)
                base += tl.load(counts + (p - 1) * E_PAD + cols).to(tl.int32)
                if USER_INDX:
                    dead_base += tl.load(ws_ptr + dead_o + p - 1)
            row_end = tl.minimum(p * rows_per_part + rows_per_part, n_tokens)
            for r0 in range(p * rows_per_part, row_end, PLACE_ROWS):
                _place_rows(ws_ptr, r0, row_end, base, dead_base, expt_o, rank_o, w_o, gate, scal, n_local,
                            PLACE_ROWS, K, K_PAD, SOFTMAX, USER_INDX, False)
    _write_expt_data(totals, n_local, n_slots, ws_ptr + hist_o, ws_ptr + raw_o, ws_ptr + pad_o, ws_ptr + m16,
                     ws_ptr + m32, ws_ptr + m64, ws_ptr + m128, pid, tl.num_programs(0), E_PAD, TILE_BLOCK, scans)


@triton.jit(do_not_specialize=["n_local", "n_gates", "raw_off", "pad_off", "map_off16", "map_off32",
                               "map_off64", "map_off128"])
def expt_data_kernel(
    hist_in_ptr, ws_ptr, raw_off, pad_off, map_off16, map_off32, map_off64, map_off128,
    n_local, n_gates, E_PAD: tl.constexpr, TILE_BLOCK: tl.constexpr,
):
    cols = tl.arange(0, E_PAD)
    hist = tl.load(hist_in_ptr + cols, mask=cols < n_local, other=0).to(tl.int32)
    _write_expt_data(hist, n_local, n_gates, ws_ptr, ws_ptr + raw_off, ws_ptr + pad_off, ws_ptr + map_off16,
                     ws_ptr + map_off32, ws_ptr + map_off64, ws_ptr + map_off128, tl.program_id(0),
                     tl.num_programs(0), E_PAD, TILE_BLOCK)
