"""routing: top-k experts per token, expert-sorted slot order, histograms and tile maps.

For logits [T, E] and k = `n_expts_act`:

* each row picks its k largest logits (ties go to the lower expert index; NaN ranks below
  every number) and keeps them sorted by expert id; slot `token * k + j` is the j-th of them;
* the weight of a slot is the softmax over the row's k picked logits, or, with `sm_first`,
  the softmax over the whole row evaluated at the pick (selection is on the logits either
  way: softmax is monotone, so this is the same choice minus rounding ties). Weights are
  computed in float64 and returned as float32 (`gate_scal`, what matmul_ogs takes as gammas);
* slots are stably sorted by expert: `topk_indx[p]` is the slot at sorted position p,
  `gate_indx[slot]` its position; `GatherIndx(src_indx=topk_indx, dst_indx=gate_indx)`,
  `ScatterIndx(src_indx=gate_indx, dst_indx=topk_indx)`; `gate_scal[p]` is the weight of the
  slot at position p;
* `expt_hist[e]` counts the slots routed to e, and `ExptData` holds the offsets and tile maps
  the ragged matmul walks (see `ExptData`).

Slots that route nowhere — rows at or beyond `n_rows` (a device scalar or int: the number of
valid rows; the rest is padding) and user indices outside [0, E) — read expert -1, weight 0,
`gate_indx` -1, and sit after all routed slots in the sorted order with `topk_indx` -1.

`simulated_ep = S` (S divides E) keeps only the first shard of experts, [0, E/S), as rank 0 of
S would, and mirrors transformers' `routing_torch_dist` for that rank: the sort is over all E
experts, so the local slots come first; slots of other experts keep their positions after them
(their `gate_scal` entries hold their weights) but read -1 in `topk_indx` and `gate_indx`;
`expt_hist`, `ExptData` and `n_expts_tot` describe the E/S local experts only.

A user `expt_indx` [T, k] (any integer dtype) replaces the top-k choice: slot j of a row is the
row's j-th given index, in the given order, and the logits give the weights at those indices.

Integer outputs are int32. Two implementations: `routing` (Triton, one launch for small T and two
above, no host synchronisation, capturable in a CUDA graph; torch reference where Triton cannot
run) and `routing_torch` (pure torch, the reference).
"""

from __future__ import annotations

import dataclasses
import operator

import torch

from . import target_info
from .routing_details import compute_expt_data_triton, max_tiles, routing_triton
from .topk_details._topk_kernel import MAX_EXPERTS

__all__ = [
    "ExptData", "GatherIndx", "RoutingData", "ScatterIndx", "compute_expt_data", "compute_expt_data_torch",
    "max_tiles", "routing", "routing_torch", "BLOCK_SIZES", "MAX_EXPERTS_ACT",
]

BLOCK_SIZES = (16, 32, 64, 128)
MAX_EXPERTS_ACT = 32
_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INDEX_DTYPES = (torch.int16, torch.int32, torch.int64)


@dataclasses.dataclass
class GatherIndx:
    """src_indx[p]: slot at sorted position p (row p of a gathered x is x[src_indx[p] // k]);
    dst_indx[slot]: the slot's sorted position. -1 where a slot is not computed here."""

    src_indx: torch.Tensor
    dst_indx: torch.Tensor


@dataclasses.dataclass
class ScatterIndx:
    """src_indx[slot]: the slot's sorted position; dst_indx[p]: slot at sorted position p."""

    src_indx: torch.Tensor
    dst_indx: torch.Tensor


@dataclasses.dataclass
class ExptData:
    """Per-expert layout of the sorted rows for the ragged matmul (all int32).

    hist[e]: rows of expert e (E entries); token_offs_raw: exclusive cumsum of hist (E+1);
    token_offs_pad[bm]: exclusive cumsum of ceil(hist / bm) (E+1), i.e. the first tile of each
    expert; block_pid_map[bm][t] = (tile index within its expert << 16) | expert for each tile t
    of the ragged matmul, -1 past the last used tile. len(block_pid_map[bm]) is the shape-only
    bound `max_tiles(n_gates, E, bm)` (= RoutingData.n_blocks(n_gates, bm)), bm in {16, 32, 64, 128}.
    """

    hist: torch.Tensor
    token_offs_raw: torch.Tensor
    token_offs_pad: dict
    block_pid_map: dict


@dataclasses.dataclass
class RoutingData:
    """What matmul_ogs needs to run the experts over expert-sorted rows.

    gate_scal: float32 weight per sorted position (the gammas of the second matmul);
    expt_hist: rows per (local) expert; n_expts_tot: number of (local) experts the matmul sees;
    n_expts_act: k; expt_data: ExptData; expected_tokens_per_expt: rows an expert gets under
    uniform routing (a tuning hint only; filled from the shapes when not given).
    """

    gate_scal: torch.Tensor
    expt_hist: torch.Tensor
    n_expts_tot: int
    n_expts_act: int
    expt_data: ExptData | None = None
    expected_tokens_per_expt: int | None = None

    def __post_init__(self):
        if self.expected_tokens_per_expt is None and self.gate_scal is not None and self.n_expts_tot:
            self.expected_tokens_per_expt = max(1, self.gate_scal.numel() // self.n_expts_tot)

    def n_blocks(self, n_rows: int, block_m: int) -> int:
        """Upper bound of the number of block_m-row tiles over all experts when n_rows rows are
        routed, whatever their distribution: min(n, E) + (n - min(n, E)) // block_m, where every
        non-empty expert wastes at most one partial tile (see `max_tiles`)."""
        return max_tiles(n_rows, self.n_expts_tot, block_m)


# ----------------------------------------------------------------------------- argument checks


def _check_logits(logits, op: str = "routing") -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{op}: `logits` must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{op}: `logits` must be 2-D [n_tokens, n_experts], got shape {tuple(logits.shape)}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"{op}: `logits` must be float32, bfloat16 or float16, got {logits.dtype}")
    if not 1 <= logits.shape[1] <= MAX_EXPERTS:
        raise ValueError(f"{op}: `logits` must have 1 to {MAX_EXPERTS} experts (columns), got {logits.shape[1]}")


def _check_k(k, n_expts: int, name: str, op: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        try:
            k = operator.index(k)
        except TypeError:
            raise TypeError(f"{op}: `{name}` must be an int, got {type(k).__name__}") from None
    if not 1 <= k <= min(n_expts, MAX_EXPERTS_ACT):
        raise ValueError(f"{op}: `{name}` must be between 1 and min(n_experts={n_expts}, {MAX_EXPERTS_ACT}), got {k}")
    return k


def _check_indx(indx, logits: torch.Tensor, k: int, name: str, op: str) -> None:
    if indx is None:
        return
    if not isinstance(indx, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor or None, got {type(indx).__name__}")
    if indx.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{op}: `{name}` must be int16, int32 or int64, got {indx.dtype}")
    if tuple(indx.shape) != (logits.shape[0], k):
        raise ValueError(f"{op}: `{name}` must have shape [n_tokens, k] = {(logits.shape[0], k)}, "
                         f"got {tuple(indx.shape)}")
    if indx.device != logits.device:
        raise ValueError(f"{op}: `{name}` must be on {logits.device} like `logits`, got {indx.device}")


def _check_n_rows(n_rows, logits: torch.Tensor, op: str):
    if n_rows is None:
        return None
    if isinstance(n_rows, torch.Tensor):
        if n_rows.numel() != 1 or n_rows.dtype.is_floating_point or n_rows.dtype.is_complex or \
                n_rows.dtype == torch.bool:
            raise TypeError(f"{op}: `n_rows` must be an int or a one-element integer tensor, "
                            f"got a {n_rows.dtype} tensor of shape {tuple(n_rows.shape)}")
        if n_rows.device != logits.device:
            raise ValueError(f"{op}: `n_rows` must be on {logits.device} like `logits`, got {n_rows.device}")
        return n_rows.reshape(())
    if isinstance(n_rows, bool):
        raise TypeError(f"{op}: `n_rows` must be an int or a one-element integer tensor, got bool")
    try:
        n_rows = operator.index(n_rows)
    except TypeError:
        raise TypeError(f"{op}: `n_rows` must be an int or a one-element integer tensor, "
                        f"got {type(n_rows).__name__}") from None
    if n_rows < 0:
        raise ValueError(f"{op}: `n_rows` must be >= 0, got {n_rows}")
    return n_rows


def _check_routing_args(logits, n_expts_act, sm_first, expt_indx, simulated_ep, n_rows):
    _check_logits(logits)
    n_expts = logits.shape[1]
    k = _check_k(n_expts_act, n_expts, "n_expts_act", "routing")
    if not isinstance(sm_first, bool):
        raise TypeError(f"routing: `sm_first` must be a bool, got {type(sm_first).__name__}")
    _check_indx(expt_indx, logits, k, "expt_indx", "routing")
    if isinstance(simulated_ep, bool) or not isinstance(simulated_ep, int):
        raise TypeError(f"routing: `simulated_ep` must be an int, got {type(simulated_ep).__name__}")
    if simulated_ep < 1 or n_expts % simulated_ep != 0:
        raise ValueError(f"routing: `simulated_ep` must be >= 1 and divide n_experts={n_expts}, got {simulated_ep}")
    return k, _check_n_rows(n_rows, logits, "routing")


def _check_hist(hist, n_expts_tot, n_gates, op):
    if not isinstance(hist, torch.Tensor):
        raise TypeError(f"{op}: `hist` must be a torch.Tensor, got {type(hist).__name__}")
    if isinstance(n_expts_tot, bool) or not isinstance(n_expts_tot, int) or n_expts_tot < 1:
        raise ValueError(f"{op}: `n_expts_tot` must be a positive int, got {n_expts_tot!r}")
    if isinstance(n_gates, bool) or not isinstance(n_gates, int) or n_gates < 0:
        raise ValueError(f"{op}: `n_gates` must be a non-negative int, got {n_gates!r}")
    if hist.dim() != 1 or hist.shape[0] != n_expts_tot:
        raise ValueError(f"{op}: `hist` must be 1-D with n_expts_tot={n_expts_tot} entries, got shape {tuple(hist.shape)}")
    if hist.dtype == torch.bool or hist.dtype.is_complex:
        raise TypeError(f"{op}: `hist` must hold integer or float counts, got {hist.dtype}")


# ----------------------------------------------------------------------------- ExptData


def compute_expt_data_torch(hist: torch.Tensor, n_expts_tot: int, n_gates: int) -> ExptData:
    """ExptData for `hist` (n_expts_tot counts, any integer or float dtype) when `n_gates` rows
    in all are routed; pure torch, no host synchronisation."""
    _check_hist(hist, n_expts_tot, n_gates, "compute_expt_data_torch")
    dev = hist.device
    hist = hist.to(torch.int32)
    zero = torch.zeros(1, dtype=torch.int32, device=dev)
    token_offs_raw = torch.cat([zero, torch.cumsum(hist, 0, dtype=torch.int32)])
    token_offs_pad, block_pid_map = {}, {}
    for bm in BLOCK_SIZES:
        tiles = torch.div(hist + (bm - 1), bm, rounding_mode="floor")
        offs = torch.cat([zero, torch.cumsum(tiles, 0, dtype=torch.int32)])
        t = torch.arange(max_tiles(n_gates, n_expts_tot, bm), dtype=torch.int32, device=dev)
        expt = torch.searchsorted(offs[1:].contiguous(), t, right=True).to(torch.int32)
        first = offs[expt.long()]
        used = t < offs[-1]
        block_pid_map[bm] = torch.where(used, ((t - first) << 16) | expt, torch.full_like(t, -1))
        token_offs_pad[bm] = offs
    return ExptData(hist, token_offs_raw, token_offs_pad, block_pid_map)


def compute_expt_data(hist: torch.Tensor, n_expts_tot: int, n_gates: int) -> ExptData:
    """Same as `compute_expt_data_torch`, in one Triton launch where Triton runs."""
    _check_hist(hist, n_expts_tot, n_gates, "compute_expt_data")
    if n_expts_tot > MAX_EXPERTS or not target_info.runs_triton(hist.device):
        if n_expts_tot <= MAX_EXPERTS:
            target_info.warn_fallback("compute_expt_data")
        return compute_expt_data_torch(hist, n_expts_tot, n_gates)
    h, raw, pad, pid_map = compute_expt_data_triton(hist.contiguous(), n_expts_tot, n_gates)
    return ExptData(h, raw, pad, pid_map)


# ----------------------------------------------------------------------------- routing


def _select_torch(logits, k, sm_first, expt_indx, n_rows, apply_softmax=True):
    """Per-row choice and weights: (experts [T, k] int64, -1 where nowhere; weights [T, k] float32; ok mask)."""
    n_tokens, n_expts = logits.shape
    dev = logits.device
    x = logits.to(torch.float64)
    row_ok = torch.ones(n_tokens, dtype=torch.bool, device=dev)
    if n_rows is not None:
        row_ok = torch.arange(n_tokens, device=dev) < n_rows
    if expt_indx is None:
        # stable ascending sort of -x: larger first, ties by index, NaN last, -0 == +0
        picks = torch.argsort(-x, dim=1, stable=True)[:, :k]
        picks = torch.sort(picks, dim=1).values
        ok = row_ok[:, None].expand(n_tokens, k)
    else:
        picks = expt_indx.to(torch.int64)
        ok = row_ok[:, None] & (picks >= 0) & (picks < n_expts)
        picks = torch.where(ok, picks, torch.zeros_like(picks))
    picked = torch.gather(x, 1, picks)
    if sm_first:
        w = torch.gather(torch.softmax(x, dim=1), 1, picks)
    elif apply_softmax:
        w = torch.softmax(picked.masked_fill(~ok, float("-inf")), dim=1)
    else:
        w = picked
    w = torch.where(ok, w, torch.zeros_like(w)).to(torch.float32)
    picks = torch.where(ok, picks, torch.full_like(picks, -1))
    return picks, w, ok


def routing_torch(logits, n_expts_act, sm_first=False, expt_indx=None, simulated_ep=1, n_rows=None):
    """Reference routing in plain torch (same arguments and results as `routing`)."""
    k, n_rows = _check_routing_args(logits, n_expts_act, sm_first, expt_indx, simulated_ep, n_rows)
    n_tokens, n_expts = logits.shape
    n_local = n_expts // simulated_ep
    dev = logits.device
    picks, w, ok = _select_torch(logits, k, sm_first, expt_indx, n_rows)
    key = torch.where(ok, picks, torch.full_like(picks, n_expts)).reshape(-1)  # nowhere sorts last
    order = torch.argsort(key, stable=True)
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=dev)
    local = key < n_local
    topk_indx = torch.where(local[order], order, torch.full_like(order, -1)).to(torch.int32)
    gate_indx = torch.where(local, position, torch.full_like(position, -1)).to(torch.int32)
    gate_scal = w.reshape(-1)[order]
    counts = torch.zeros(n_expts + 1, dtype=torch.int32, device=dev)
    counts.scatter_add_(0, key, torch.ones_like(key, dtype=torch.int32))
    hist = counts[:n_local].contiguous()
    expt_data = compute_expt_data_torch(hist, n_local, n_tokens * k)
    routing_data = RoutingData(gate_scal, hist, n_local, k, expt_data,
                               expected_tokens_per_expt=max(1, n_tokens * k // n_expts))
    return routing_data, GatherIndx(topk_indx, gate_indx), ScatterIndx(gate_indx, topk_indx)


def routing(logits, n_expts_act, sm_first=False, expt_indx=None, simulated_ep=1, n_rows=None):
    """Route tokens to experts (see the module docstring). Returns (RoutingData, GatherIndx, ScatterIndx)."""
    k, n_rows_checked = _check_routing_args(logits, n_expts_act, sm_first, expt_indx, simulated_ep, n_rows)
    if not target_info.runs_triton(logits.device):
        target_info.warn_fallback("routing")
        return routing_torch(logits, k, sm_first, expt_indx, simulated_ep, n_rows)
    n_tokens, n_expts = logits.shape
    gate_scal, topk_indx, gate_indx, hist, raw, pad, pid_map = routing_triton(
        logits, k, sm_first, expt_indx, simulated_ep, n_rows_checked)
    expt_data = ExptData(hist, raw, pad, pid_map)
    routing_data = RoutingData(gate_scal, hist, n_expts // simulated_ep, k, expt_data,
                               expected_tokens_per_expt=max(1, n_tokens * k // n_expts))
    return routing_data, GatherIndx(topk_indx, gate_indx), ScatterIndx(gate_indx, topk_indx)
