"""The top-k / softmax tile helper and the `topk.topk` kernel (see the package docstring)."""

from __future__ import annotations

import dataclasses
import functools

import triton
import triton.language as tl

MAX_EXPERTS = 1024
# Order keys are int32 (`_float_order`); NaN gets a key below every other real key and `_GONE`
# (picked already, or a padding column) sits under every real key. _NAN_ORDER keeps its value
# through the packing below (its low 13 bits are zero) and decodes to a NaN.
_NAN_ORDER = tl.constexpr(-2147483648 + 8192)
_GONE = tl.constexpr(-2147483648)
_GONE64 = tl.constexpr(-9223372036854775808)
# Packed pick keys (`_pick_keys`): for 16-bit logits the fp32 order key has its low 13 bits free
# (bfloat16 and float16 values have at most 11 significant bits, and the order of a negative
# value is its bits ^ 0x7FFFFFFF plus one, which carries its all-ones low bits back to zeros), so
# they hold 8191 - column and one int32 max gives both the largest value and, among equal values,
# its lowest column. float32 logits use int64 keys: order << 16 | (65535 - column).
# (8191 - c == c ^ 8191 for c < 8192.)


@triton.jit
def _float_order(x):
    """fp32 -> int32 with the same order (as torch's sort sees it: -0 == +0, NaN lowest).
    Negative values get bits ^ 0x7FFFFFFF (reversed, below the positives) plus one, which puts
    -0 on +0: three integer ops, no compare."""
    bits = x.to(tl.int32, bitcast=True)
    sign = bits >> 31  # 0 or -1
    order = (bits ^ (sign & 0x7FFFFFFF)) - sign
    return tl.where(x != x, _NAN_ORDER, order)


@triton.jit
def _order_to_float(order):
    """Inverse of `_float_order` (-0.0 reads +0.0; NaN's order decodes to a NaN bit pattern)."""
    sign = order >> 31
    return ((order + sign) ^ (sign & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _pick_keys(x, cols, col_ok, PACK32: tl.constexpr):
    """One integer per element of x [rows, E] whose order is (value, then lower column first);
    padding columns get `_GONE` (below every real key). Keys are distinct within a row."""
    return _keys_of(x, cols[None, :], col_ok[None, :], PACK32)


@triton.jit
def _keys_of(x, cols, col_ok, PACK32: tl.constexpr):
    """`_pick_keys` with `cols` / `col_ok` already shaped to broadcast against x."""
    order = _float_order(x)
    if PACK32:
        key = (order & -8192) | (cols ^ 8191)
        return tl.where(col_ok, key, _GONE)
    else:
        key = (order.to(tl.int64) << 16) | (cols ^ 65535).to(tl.int64)
        return tl.where(col_ok, key, _GONE64)


@triton.jit
def _key_column(key, PACK32: tl.constexpr):
    if PACK32:
        return (key & 8191) ^ 8191
    else:
        return (key & 65535).to(tl.int32) ^ 65535


@triton.jit
def _key_value(key, PACK32: tl.constexpr):
    """The fp32 logit a key was made from (-0.0 reads +0.0; NaN reads a NaN)."""
    if PACK32:
        order = key & -8192
    else:
        order = (key >> 16).to(tl.int32)
    return _order_to_float(order)


@triton.jit
def select_tile(x_ptr, stride_xt, stride_xe, user_ptr, stride_ut, rows, n_tokens, n_expts, n_valid_rows,
                K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr,
                APPLY_SOFTMAX: tl.constexpr, SM_FIRST: tl.constexpr, USER_INDX: tl.constexpr,
                PACK32: tl.constexpr):
    """Top-k of the rows `rows` ([BLOCK_T]); returns, per (row, pick j) [BLOCK_T, K_PAD]:
    the expert `sel` (meaningful where `slot_ok`), the output column `out_col` (the pick's rank by
    expert id; j itself for user indices), the weight `w` (float32, 0 where not `slot_ok`; the
    picked logit itself when neither APPLY_SOFTMAX nor SM_FIRST), `slot_ok`; per element
    [BLOCK_T, E_PAD]: `counts` (slots of the row routed to that expert) and `tag` (the pick j that
    took the element, -1 if none; not filled for user indices); and per row `in_t` (row < n_tokens).
    PACK32: the logits are 16-bit floats (int32 pick keys instead of int64)."""
    cols = tl.arange(0, E_PAD)
    kk = tl.arange(0, K_PAD)
    col_ok = cols < n_expts
    in_t = rows < n_tokens
    row_ok = in_t & (rows < n_valid_rows)
    rows64 = rows.to(tl.int64)
    tag = tl.full([rows.shape[0], E_PAD], -1, tl.int32)
    if SM_FIRST or not USER_INDX:
        x = tl.load(x_ptr + rows64[:, None] * stride_xt + cols[None, :] * stride_xe,
                    mask=in_t[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    if USER_INDX:
        uidx = tl.load(user_ptr + rows64[:, None] * stride_ut + kk[None, :],
                       mask=in_t[:, None] & (kk[None, :] < K), other=-1)
        slot_ok = row_ok[:, None] & (kk[None, :] < K) & (uidx >= 0) & (uidx < n_expts)
        sel = tl.where(slot_ok, uidx, 0).to(tl.int32)
        picked = tl.load(x_ptr + rows64[:, None] * stride_xt + sel * stride_xe, mask=slot_ok,
                         other=0.0).to(tl.float32)
        counts = tl.zeros([rows.shape[0], E_PAD], dtype=tl.int32)
        for j in tl.static_range(K):  # column j again, as a vector (an L1 hit)
            e_j = tl.load(user_ptr + rows64 * stride_ut + j, mask=row_ok, other=-1)
            counts += ((cols[None, :] == e_j[:, None]) & col_ok[None, :]).to(tl.int32)
        out_col = kk[None, :] + tl.zeros([rows.shape[0], K_PAD], dtype=tl.int32)
    else:
        # one max per pick: keys are distinct, so the best one marks exactly one column
        keys = _pick_keys(x, cols, col_ok, PACK32)
        bests = tl.zeros([rows.shape[0], K_PAD], dtype=keys.dtype)
        for j in tl.static_range(K):
            best = tl.max(keys, axis=1)
            hit = keys == best[:, None]
            if PACK32:
                keys = tl.where(hit, _GONE, keys)
            else:
                keys = tl.where(hit, _GONE64, keys)
            tag = tl.where(hit, j, tag)
            bests = tl.where(kk[None, :] == j, best[:, None], bests)
        sel = _key_column(bests, PACK32)
        picked = _key_value(bests, PACK32)
        slot_ok = row_ok[:, None] & (kk[None, :] < K)
        counts = ((tag >= 0) & row_ok[:, None]).to(tl.int32)
        # rank of each pick among the row's picks by expert id -> its output column
        earlier = (sel[:, None, :] < sel[:, :, None]) & (kk[None, None, :] < K)
        out_col = tl.sum(earlier.to(tl.int32), axis=2)

    if SM_FIRST:
        xr = tl.where(col_ok[None, :], x, float("-inf")).to(tl.float64)
        row_max = tl.max(xr, axis=1)
        denom = tl.sum(tl.exp(xr - row_max[:, None]), axis=1)
        w = tl.exp(picked.to(tl.float64) - row_max[:, None]) / denom[:, None]
    elif APPLY_SOFTMAX:
        w = _softmax_picks(picked, slot_ok)
    else:
        w = picked
    w = tl.where(slot_ok, w.to(tl.float32), 0.0)
    return sel, out_col, w, slot_ok, counts, tag, in_t


@triton.jit
def _softmax_picks(picked, slot_ok):
    """Softmax along axis 1 over the `slot_ok` entries, in float64 (float32 out, 0 elsewhere)."""
    pv = tl.where(slot_ok, picked.to(tl.float64), float("-inf"))
    pmax = tl.max(pv, axis=1)
    # rows with no valid slot get weights 0, not NaN (-inf or +inf picks still give NaN, as in torch)
    any_ok = tl.sum(slot_ok.to(tl.int32), axis=1) > 0
    pmax = tl.where(any_ok, pmax, 0.0)
    num = tl.where(slot_ok, tl.exp(pv - pmax[:, None]), 0.0)
    denom = tl.sum(num, axis=1)
    w = num / tl.where(any_ok, denom, 1.0)[:, None]
    return tl.where(slot_ok, w.to(tl.float32), 0.0)


@triton.jit(do_not_specialize=["n_tokens", "n_rows_val", "n_iter"])
def topk_kernel(
    x_ptr, stride_xt, stride_xe,  # logits [T, E]
    user_ptr, stride_ut,  # user-chosen experts [T, K] (USER_INDX)
    vals_ptr,  # out: weights (or raw logits), [T, K] row-major
    indx_ptr,  # out: experts, [T, K]; -1 where a slot picks nothing
    bits_ptr, stride_bt,  # out: bitmatrix words [T, ceil(E / 32)] (WRITE_BITS)
    n_rows_ptr,  # valid-row count on the device (N_ROWS_FROM_PTR)
    n_tokens, n_expts, n_rows_val, n_iter,
    K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
    APPLY_SOFTMAX: tl.constexpr, USER_INDX: tl.constexpr,
    N_ROWS_FROM_PTR: tl.constexpr, WRITE_BITS: tl.constexpr, PACK32: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, E_PAD)
    kk = tl.arange(0, K_PAD)
    if N_ROWS_FROM_PTR:
        n_valid_rows = tl.load(n_rows_ptr).to(tl.int32)
    else:
        n_valid_rows = n_rows_val
    for it in range(n_iter):
        rows = (pid * n_iter + it) * BLOCK_T + tl.arange(0, BLOCK_T)
        sel, out_col, w, slot_ok, counts, _tag, in_t = select_tile(
            x_ptr, stride_xt, stride_xe, user_ptr, stride_ut, rows, n_tokens, n_expts, n_valid_rows,
            K, K_PAD, E_PAD, APPLY_SOFTMAX, False, USER_INDX, PACK32)
        rows64 = rows.to(tl.int64)
        out_at = rows64[:, None] * K + out_col
        out_mask = in_t[:, None] & (kk[None, :] < K)
        tl.store(indx_ptr + out_at, tl.where(slot_ok, sel, -1).to(indx_ptr.dtype.element_ty), mask=out_mask)
        tl.store(vals_ptr + out_at, w.to(vals_ptr.dtype.element_ty), mask=out_mask)
        if WRITE_BITS:
            bit = tl.where(counts > 0, 1, 0).to(tl.uint32) << (cols % 32).to(tl.uint32)[None, :]
            words = tl.sum(tl.reshape(bit, [BLOCK_T, E_PAD // 32, 32]), axis=2)
            widx = tl.arange(0, E_PAD // 32)
            tl.store(bits_ptr + rows64[:, None] * stride_bt + widx[None, :], words,
                     mask=in_t[:, None] & (widx[None, :] * 32 < n_expts))


@dataclasses.dataclass(frozen=True)
class TopkConfig:
    """Launch shape of `topk_kernel`: `n_programs` programs, each owning `n_iter * block_t` rows."""

    e_pad: int
    k_pad: int
    block_t: int
    n_iter: int
    n_programs: int
    num_warps: int = 8

    @property
    def rows_per_program(self) -> int:
        return self.block_t * self.n_iter


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=512)
def make_topk_config(n_tokens: int, n_expts: int, k: int, sm_first: bool, target_programs: int) -> TopkConfig:
    """Row tiles hold about 4096 keys (2048 with the float64 softmax over whole rows); programs
    own several tiles so that there are about `target_programs` of them."""
    e_pad = max(32, _next_pow2(n_expts))
    k_pad = _next_pow2(k)
    block_t = min(128, (2048 if sm_first else 4096) // e_pad, max(1, 8192 // (k_pad * k_pad)))
    block_t = max(1, block_t)
    n_tiles = triton.cdiv(n_tokens, block_t)
    n_iter = max(1, triton.cdiv(n_tiles, max(1, target_programs)))
    n_programs = triton.cdiv(n_tiles, n_iter)
    return TopkConfig(e_pad=e_pad, k_pad=k_pad, block_t=block_t, n_iter=n_iter, n_programs=n_programs)
