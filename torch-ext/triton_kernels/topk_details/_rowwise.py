"""Row-wise top-k: the k-th largest pick key of each row, with each thread holding whole rows.

A [ROWS, Q] grid of threads: the Q threads of a row each walk 1/Q of its columns (loads of 16
bytes per thread and step, Q * 16 contiguous bytes per row and step) and keep a sorted list of
their K_PAD largest pick keys by insertion (2 * K_PAD - 1 integer max/min per key, all in
registers: no shuffle, no cross-lane reduction per key). The Q lists of a row are then merged
by a bitonic merge (a `tl.reduce` over the Q lanes). Keys are the packed (value, column) keys of
`_topk_kernel._pick_keys`, distinct within a row, so the row's picks are exactly the columns
whose key is >= the returned k-th key.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._topk_kernel import _GONE, _GONE64, _keys_of


@triton.jit
def _insert(t, x):
    """t: a tuple of tensors sorted descending (t[0] largest); the same list with x let in."""
    new = (tl.maximum(t[0], x),)
    for j in tl.static_range(1, len(t)):
        new = new + (tl.maximum(t[j], tl.minimum(t[j - 1], x)),)
    return new


@triton.jit
def _half_cleaner(c, S: tl.constexpr):
    """One bitonic stage: compare-exchange c[i] and c[i + S] (descending) for i with bit S clear."""
    d = ()
    for i in tl.static_range(len(c)):
        if (i & S) == 0:
            d = d + (tl.maximum(c[i], c[i + S]),)
        else:
            d = d + (tl.minimum(c[i - S], c[i]),)
    return d


@triton.jit
def _bitonic_top(a, b):
    """The len(a) largest of two descending lists (len a power of two <= 8), descending."""
    n: tl.constexpr = len(a)
    c = (tl.maximum(a[0], b[n - 1]),)
    for i in tl.static_range(1, n):
        c = c + (tl.maximum(a[i], b[n - 1 - i]),)
    if n >= 8:
        c = _half_cleaner(c, 4)
    if n >= 4:
        c = _half_cleaner(c, 2)
    if n >= 2:
        c = _half_cleaner(c, 1)
    return c


@triton.jit
def _merge1(a0, b0):
    return tl.maximum(a0, b0)


@triton.jit
def _merge2(a0, a1, b0, b1):
    return _bitonic_top((a0, a1), (b0, b1))


@triton.jit
def _merge4(a0, a1, a2, a3, b0, b1, b2, b3):
    return _bitonic_top((a0, a1, a2, a3), (b0, b1, b2, b3))


@triton.jit
def _merge8(a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7):
    return _bitonic_top((a0, a1, a2, a3, a4, a5, a6, a7), (b0, b1, b2, b3, b4, b5, b6, b7))


@triton.jit
def _halves(keys):
    """[R, Q, n] -> its even and odd entries, [R, Q, n / 2] each (in-thread: n is per thread)."""
    return tl.split(tl.reshape(keys, [keys.shape[0], keys.shape[1], keys.shape[2] // 2, 2]))


@triton.jit
def _insert_pair(t, keys):
    a, b = tl.split(keys)
    return _insert(_insert(t, a), b)


@triton.jit
def _insert_chunk(t, keys, CH: tl.constexpr):
    """Let the CH keys of every thread's chunk ([ROWS, Q, CH], CH in {4, 8}) into its list."""
    lo, hi = _halves(keys)
    if CH == 8:
        a, b = _halves(lo)
        t = _insert_pair(_insert_pair(t, a), b)
        a, b = _halves(hi)
        t = _insert_pair(_insert_pair(t, a), b)
    else:
        t = _insert_pair(_insert_pair(t, lo), hi)
    return t


@triton.jit
def row_topk(x_ptr, stride_xt, stride_xe, rows, n_tokens, n_expts,
             K_PAD: tl.constexpr, E_PAD: tl.constexpr, Q: tl.constexpr, PACK32: tl.constexpr,
             FULL_E: tl.constexpr):
    """Top-K_PAD pick keys of each row `rows` ([ROWS]; rows >= n_tokens read padding).

    Returns the K_PAD largest keys of each row, descending, as a tuple of [ROWS] tensors.
    FULL_E: n_expts == E_PAD (no column mask, so the loads stay 16-byte vectors)."""
    CH: tl.constexpr = 8 if PACK32 else 4  # 16 bytes of 16-bit / 32-bit logits per thread and step
    R: tl.constexpr = rows.shape[0]
    NB: tl.constexpr = Q * CH
    rows64 = rows.to(tl.int64)
    in_t = rows < n_tokens
    if PACK32:
        gone = tl.full([R, Q], _GONE, tl.int32)
    else:
        gone = tl.full([R, Q], _GONE64, tl.int64)
    if K_PAD == 1:
        t = (gone,)
    elif K_PAD == 2:
        t = (gone, gone)
    elif K_PAD == 4:
        t = (gone, gone, gone, gone)
    else:
        t = (gone, gone, gone, gone, gone, gone, gone, gone)
    for c0 in tl.static_range(0, E_PAD, NB):
        # a [R, NB] block: 16 contiguous bytes per thread, Q threads side by side per row
        cols = c0 + tl.arange(0, NB)
        col_ok = (cols < n_expts) | FULL_E
        x = tl.load(x_ptr + rows64[:, None] * stride_xt + cols[None, :] * stride_xe,
                    mask=in_t[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        keys = _keys_of(x, cols[None, :], col_ok[None, :], PACK32)
        t = _insert_chunk(t, tl.reshape(keys, [R, Q, CH]), CH)
    if Q > 1:
        if K_PAD == 1:
            t = (tl.reduce(t[0], 1, _merge1),)
        elif K_PAD == 2:
            t = tl.reduce(t, 1, _merge2)
        elif K_PAD == 4:
            t = tl.reduce(t, 1, _merge4)
        else:
            t = tl.reduce(t, 1, _merge8)
    else:
        t2 = ()
        for j in tl.static_range(K_PAD):
            t2 = t2 + (tl.reshape(t[j], [R]),)
        t = t2
    return t
