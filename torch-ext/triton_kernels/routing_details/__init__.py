"""Triton implementation of `routing.routing` and `routing.compute_expt_data`.

Design: two launches, no host synchronisation, every buffer sized from shapes alone (so the
whole thing can be captured in a CUDA graph and replayed with new logits).

Launch 1 — `topk_details.topk_kernel`, P programs, each owning a contiguous run of rows:
top-k per row (ties to the lower expert), softmax in float64 (over the k picks, or over the row
for `sm_first`), the row's picks sorted by expert id; it writes the slot arrays `expt[T*k]`,
`weight[T*k]` (slot = token*k + j) and one histogram row per program, `part[P, E_PAD]`, plus the
number of slots of the program that route nowhere (`dead[P]`: padding rows beyond `n_rows`,
user indices outside [0, E)).

Launch 2 — `routing_sort_kernel`, max(P, a few) programs. Every program sums the P histogram
rows (totals) and those of the programs before it; the exclusive cumsum of the totals is where
each expert's segment starts. Program p < P then places its own slots: it sorts its slot block
by (expert, slot) with `tl.sort` on packed keys, so the position of a slot is
`start[e] + before_p[e] + (its rank among this block's slots of expert e)` — a stable counting
sort, so `topk_indx` is deterministic and equals torch's stable argsort. Slots that route nowhere
are placed after all routed ones (also stably). With `simulated_ep = S` only experts
[0, E/S) are local: slots of other experts keep their sorted positions (after the local ones, as
transformers' expert-parallel routing has them) but read −1 in `topk_indx` and `gate_indx`.
All programs then share the ExptData work: program 0 writes hist, token_offs_raw and
token_offs_pad for block_m in {16, 32, 64, 128}; each program fills a slice of every
block_pid_map by looking tile t up among the experts' tile ranges.

All int32 outputs and scratch live in one int32 allocation (the float32 ones are the same bytes
viewed as float32), carved with one `split`, so an eager call is one allocation and two launches.
Cost of launch 2 grows with P * E (every program reads the histogram rows), which is why P is
kept near the number of SMs by giving programs several row tiles each.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import triton

from .. import target_info
from ..topk_details import TopkConfig, make_topk_config, topk_kernel
from ._sort_kernel import BLOCK_SIZES, expt_data_kernel, routing_sort_kernel

__all__ = ["RoutingPlan", "make_routing_plan", "routing_triton", "compute_expt_data_triton", "max_tiles"]


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


@dataclasses.dataclass(frozen=True)
class RoutingPlan:
    """Everything about one routing call that depends on shapes only (cached per shape)."""

    topk: TopkConfig
    n_slots: int
    n_expts: int
    n_local: int
    slots_per_part: int
    slot_block: int
    part_rows: int
    tile_block: int
    n_sort_programs: int
    map_lens: tuple[int, ...]
    sizes: tuple[int, ...]  # split sizes of the workspace (see `_SEGMENTS`)
    offsets: dict  # segment name -> element offset in the workspace

    @property
    def total(self) -> int:
        return sum(self.sizes)


# Output segments first (they are what callers keep), then the scratch the kernels share.
_SEGMENTS = ("topk", "gate", "scal", "hist", "raw", "pad16", "pad32", "pad64", "pad128",
             "map16", "map32", "map64", "map128", "indx", "w", "part", "dead")


@functools.lru_cache(maxsize=256)
def make_routing_plan(n_tokens: int, n_expts: int, k: int, simulated_ep: int, sm_first: bool,
                      target_programs: int) -> RoutingPlan:
    cfg = make_topk_config(n_tokens, n_expts, k, sm_first, target_programs)
    n_parts = cfg.n_programs
    n_slots = n_tokens * k
    n_local = n_expts // simulated_ep
    slots_per_part = min(cfg.rows_per_program, n_tokens) * k  # one program owns all rows when T is small
    map_lens = tuple(max_tiles(n_slots, n_local, bm) for bm in BLOCK_SIZES)
    sizes = (n_slots, n_slots, n_slots, n_local) + (n_local + 1,) * 5 + map_lens + (
        n_slots, n_slots, n_parts * cfg.e_pad, n_parts)
    offsets, at = {}, 0
    for name, size in zip(_SEGMENTS, sizes):
        offsets[name] = at
        at += size
    tile_block = max(16, 4096 // cfg.e_pad)
    return RoutingPlan(
        topk=cfg, n_slots=n_slots, n_expts=n_expts, n_local=n_local, slots_per_part=slots_per_part,
        slot_block=max(16, min(1024, _next_pow2(slots_per_part))),
        part_rows=max(1, min(_next_pow2(max(n_parts, 1)), 4096 // cfg.e_pad)),
        tile_block=tile_block,
        n_sort_programs=max(n_parts, triton.cdiv(map_lens[0], 8 * tile_block), 1),
        map_lens=map_lens, sizes=sizes, offsets=offsets,
    )


def routing_triton(logits: torch.Tensor, k: int, sm_first: bool, expt_indx, simulated_ep: int, n_rows,
                   target_programs: int | None = None):
    """Returns (gate_scal, topk_indx, gate_indx, hist, token_offs_raw, token_offs_pad, block_pid_map).

    Arguments are assumed checked (routing.routing does it)."""
    n_tokens, n_expts = logits.shape
    plan = make_routing_plan(n_tokens, n_expts, k, simulated_ep, sm_first,
                             target_programs or _target_programs())
    cfg, off = plan.topk, plan.offsets
    ws = torch.empty(plan.total, dtype=torch.int32, device=logits.device)
    wsf = ws.view(torch.float32)
    if cfg.n_programs > 0 and n_tokens > 0:
        from_ptr = isinstance(n_rows, torch.Tensor)
        n_rows_val = n_tokens if n_rows is None or from_ptr else int(n_rows)
        if expt_indx is not None and expt_indx.stride(1) != 1:
            expt_indx = expt_indx.contiguous()
        topk_kernel[(cfg.n_programs,)](
            logits, logits.stride(0), logits.stride(1),
            expt_indx, 0 if expt_indx is None else expt_indx.stride(0),
            wsf, off["w"], ws, off["indx"], None, 0, ws, off["part"], off["dead"],
            n_rows if from_ptr else None,
            n_tokens, n_expts, n_rows_val, cfg.n_iter,
            K=k, K_PAD=cfg.k_pad, E_PAD=cfg.e_pad, BLOCK_T=cfg.block_t,
            APPLY_SOFTMAX=not sm_first, SM_FIRST=sm_first, USER_INDX=expt_indx is not None,
            N_ROWS_FROM_PTR=from_ptr, WRITE_BITS=False, WRITE_HIST=True, num_warps=cfg.num_warps,
        )
    routing_sort_kernel[(plan.n_sort_programs,)](
        ws, wsf, off["indx"], off["w"], off["part"], off["dead"], off["topk"], off["gate"], off["scal"],
        off["hist"], off["raw"], off["pad16"], plan.n_local + 1,
        off["map16"], off["map32"], off["map64"], off["map128"],
        cfg.n_programs, plan.slots_per_part, plan.n_slots, n_expts, plan.n_local,
        E_PAD=cfg.e_pad, PART_ROWS=plan.part_rows, SLOT_BLOCK=plan.slot_block, TILE_BLOCK=plan.tile_block,
        num_warps=4,
    )
    (topk_indx, gate_indx, gate_scal, hist, raw, p16, p32, p64, p128, m16, m32, m64, m128,
     _scratch_i, _scratch_w, _scratch_p, _scratch_d) = ws.split_with_sizes(plan.sizes)
    token_offs_pad = {16: p16, 32: p32, 64: p64, 128: p128}
    block_pid_map = {16: m16, 32: m32, 64: m64, 128: m128}
    return gate_scal.view(torch.float32), topk_indx, gate_indx, hist, raw, token_offs_pad, block_pid_map


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
        hist, ws, offsets[0], offsets[1], offsets[2], n_expts_tot + 1, offsets[6], offsets[7], offsets[8],
        offsets[9], n_expts_tot, n_gates, E_PAD=e_pad, TILE_BLOCK=tile_block, num_warps=4,
    )
    h, raw, p16, p32, p64, p128, m16, m32, m64, m128 = ws.split_with_sizes(sizes)
    return h, raw, {16: p16, 32: p32, 64: p64, 128: p128}, {16: m16, 32: m32, 64: m64, 128: m128}
