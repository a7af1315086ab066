"""topk: the k largest entries of each row, as routing picks experts.

`topk(x, k, apply_softmax=True, dim=1, return_bitmatrix=True, y_indx=None, n_rows=None)` ->
`(values, indices, bitmatrix)` for x [T, E] (float32 / bfloat16 / float16):

* indices [T, k] **int16** (as the previous generation of this package returned; E <= 1024 fits),
  each row's k picks sorted by expert id; ties go to the lower index, NaN ranks below every number.
  Callers that index with them cast (`.long()`); routing keeps its own int32 copies.
* values [T, k] in x's dtype: the softmax over the row's k picked entries when `apply_softmax`
  (computed in float64, rounded once to float32 and then to x's dtype), else the picked entries.
* bitmatrix: a plain torch.uint32 tensor [T, ceil(E / 32)] with bit (e % 32) of word e // 32 set
  when row t picked expert e (padding bits are zero); None when `return_bitmatrix=False`.
* `y_indx` [T, k] (any integer dtype): use these experts instead of choosing (kept in the given
  order; entries outside [0, E) pick nothing); `n_rows` (int or device scalar): rows at or beyond
  it are padding and read index -1, value 0, no bits.
* `dim` must be 1 (or -1): the experts are the columns.
"""

from __future__ import annotations

import torch

from . import target_info
from .routing import _check_indx, _check_k, _check_logits, _check_n_rows, _select_torch
from .topk_details import make_topk_config, topk_kernel

__all__ = ["topk", "topk_torch"]


def _check_topk_args(x, k, apply_softmax, dim, return_bitmatrix, y_indx, n_rows, op):
    _check_logits(x, op)
    if dim not in (1, -1) or isinstance(dim, bool):
        raise ValueError(f"{op}: `dim` must be 1 (the expert dimension of a [T, E] tensor), got {dim!r}")
    if not isinstance(apply_softmax, bool):
        raise TypeError(f"{op}: `apply_softmax` must be a bool, got {type(apply_softmax).__name__}")
    if not isinstance(return_bitmatrix, bool):
        raise TypeError(f"{op}: `return_bitmatrix` must be a bool, got {type(return_bitmatrix).__name__}")
    k = _check_k(k, x.shape[1], "k", op)
    _check_indx(y_indx, x, k, "y_indx", op)
    return k, _check_n_rows(n_rows, x, op)


def _bitmatrix_torch(picks: torch.Tensor, n_expts: int) -> torch.Tensor:
    n_tokens = picks.shape[0]
    n_words = (n_expts + 31) // 32
    hit = torch.zeros(n_tokens, n_words * 32, dtype=torch.int64, device=picks.device)
    ok = picks >= 0
    hit.scatter_(1, torch.where(ok, picks, torch.zeros_like(picks)), ok.to(torch.int64))
    weights = torch.ones(32, dtype=torch.int64, device=picks.device) << torch.arange(32, device=picks.device)
    words = (hit.view(n_tokens, n_words, 32) * weights).sum(-1)
    return _int64_words_to_uint32(words)


def _int64_words_to_uint32(words: torch.Tensor) -> torch.Tensor:
    # values are in [0, 2**32): keep the low 32 bits as the bit pattern of an int32, then view
    low = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return low.view(torch.uint32)


def topk_torch(x, k, apply_softmax=True, dim=1, return_bitmatrix=True, y_indx=None, n_rows=None):
    """Reference `topk` in plain torch (same arguments and results)."""
    k, n_rows = _check_topk_args(x, k, apply_softmax, dim, return_bitmatrix, y_indx, n_rows, "topk_torch")
    picks, w, _ = _select_torch(x, k, False, y_indx, n_rows, apply_softmax=apply_softmax)
    values = w.to(x.dtype)
    bitmatrix = _bitmatrix_torch(picks, x.shape[1]) if return_bitmatrix else None
    return values, picks.to(torch.int16), bitmatrix


def topk(x, k, apply_softmax=True, dim=1, return_bitmatrix=True, y_indx=None, n_rows=None):
    """Top-k per row (see the module docstring). Returns (values, indices int16, bitmatrix uint32 or None)."""
    k, n_rows_checked = _check_topk_args(x, k, apply_softmax, dim, return_bitmatrix, y_indx, n_rows, "topk")
    if not target_info.runs_triton(x.device):
        target_info.warn_fallback("topk")
        return topk_torch(x, k, apply_softmax, dim, return_bitmatrix, y_indx, n_rows)
    n_tokens, n_expts = x.shape
    values = torch.empty((n_tokens, k), dtype=x.dtype, device=x.device)
    indices = torch.empty((n_tokens, k), dtype=torch.int16, device=x.device)
    bitmatrix = None
    if return_bitmatrix:
        bitmatrix = torch.empty((n_tokens, (n_expts + 31) // 32), dtype=torch.uint32, device=x.device)
    sms = target_info.num_sms()
    cfg = make_topk_config(n_tokens, n_expts, k, False, 4 * sms if sms > 0 else 4)
    if cfg.n_programs == 0:
        return values, indices, bitmatrix
    from_ptr = isinstance(n_rows_checked, torch.Tensor)
    if y_indx is not None and y_indx.stride(1) != 1:
        y_indx = y_indx.contiguous()
    topk_kernel[(cfg.n_programs,)](
        x, x.stride(0), x.stride(1),
        y_indx, 0 if y_indx is None else y_indx.stride(0),
        values, indices,
        bitmatrix, 0 if bitmatrix is None else bitmatrix.stride(0),
        n_rows_checked if from_ptr else None,
        n_tokens, n_expts, n_tokens if n_rows_checked is None or from_ptr else n_rows_checked, cfg.n_iter,
        K=k, K_PAD=cfg.k_pad, E_PAD=cfg.e_pad, BLOCK_T=cfg.block_t,
        APPLY_SOFTMAX=apply_softmax, USER_INDX=y_indx is not None,
        N_ROWS_FROM_PTR=from_ptr, WRITE_BITS=return_bitmatrix, PACK32=x.dtype != torch.float32,
        num_warps=cfg.num_warps,
    )
    return values, indices, bitmatrix
