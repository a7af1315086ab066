"""expert_parallel: an MoE layer whose experts are sharded across the ranks of a torch.distributed group.

Layout of the work (the baseline the issue asks for: replicated tokens, all-reduce of partial outputs)

* Rank r of W owns the E / W contiguous experts [r*E/W, (r+1)*E/W) (`local_expert_range`);
  `shard_experts` picks that slice out of full [E, K, N] weights, scales (any layout) and biases.
* Every rank holds all T tokens and the same router logits [T, E]. `routing_ep` routes over all
  E experts and keeps the local ones: local slots sit at sorted positions [0, n_local) in
  (expert, slot) order, every other position and every non-local slot reads -1 — exactly the
  objects transformers' `routing_torch_dist` builds for LOCAL_RANK r (its objects work here
  unchanged, see `experts_forward_ep`). Weights at non-local positions read 0 (matmul_ogs never
  reads them). `routing_ep` is the Triton routing (two launches) plus one localisation launch
  plus `compute_expt_data` for the local histogram: no host synchronisation, capturable in a
  CUDA graph. `routing_ep_torch` is its torch twin.
* The two matmul_ogs calls run on the local experts only: gate_up (gathered rows, fused SwiGLU)
  and down (scattered top-k sum with the routing weights as gammas). A token's rows on experts
  elsewhere are skipped, so each rank's output holds the token's partial sum over its own
  experts (bias included, once per slot, since biases are per expert).
* `torch.distributed.all_reduce` (SUM) over the group adds the partials: the result is the full
  layer. The partials are summed in `reduce_dtype`: x's dtype by default (bf16: half the bytes on
  the wire; each partial is rounded once more than the single-GPU layer, about 2^-9 relative per
  element), or float32 for a result that differs from the single-GPU layer only by the order of
  the fp32 sums.

Why all-reduce and not an all-to-all token dispatch: with replicated activations (what
transformers' EP and tensor-parallel plans give the MoE block) the all-reduce moves T x hidden
values per rank regardless of routing, needs no host-side counts (no synchronisation, graphable)
and no second permutation. An all-to-all would send each token only to the ranks that host its
experts (at most k of W), which pays only when activations are *not* replicated (data-parallel
attention) and W is large; at W = 2 with top-4 most tokens need both ranks anyway. Not built.

Rank and world size come from `group` (default: the default process group when torch.distributed
is initialised; a single process otherwise, where the layer is the plain single-GPU layer).
"""

from __future__ import annotations

import dataclasses
import inspect
import operator

import torch

from . import target_info
from .matmul_ogs import FnSpecs, FusedActivation, PrecisionConfig, matmul_ogs, matmul_ogs_torch
from .routing import (GatherIndx, RoutingData, ScatterIndx, compute_expt_data, compute_expt_data_torch,
                      routing, routing_torch)
from .swiglu import swiglu_fn
from .tensor import Storage, Tensor
from .tensor_details.layout import StridedLayout

__all__ = [
    "local_expert_range", "ep_rank_and_world_size", "routing_ep", "routing_ep_torch", "shard_experts",
    "shard_precision_config", "experts_forward_ep", "experts_forward_ep_torch", "moe_forward_ep",
    "moe_forward_ep_torch",
]

SWIGLU_ALPHA, SWIGLU_LIMIT = 1.702, 7.0  # gpt-oss


# ----------------------------------------------------------------------------- ranks and experts


def _as_int(v, name: str, op: str) -> int:
    if isinstance(v, bool):
        raise TypeError(f"{op}: `{name}` must be an int, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{op}: `{name}` must be an int, got {type(v).__name__}") from None


def local_expert_range(n_expts_tot: int, rank: int, world_size: int, op: str = "local_expert_range") -> tuple[int, int]:
    """[lo, hi) = [rank*E/W, (rank+1)*E/W): the experts rank `rank` of `world_size` owns."""
    n_expts_tot = _as_int(n_expts_tot, "n_expts_tot", op)
    world_size = _as_int(world_size, "world_size", op)
    rank = _as_int(rank, "rank", op)
    if world_size < 1:
        raise ValueError(f"{op}: `world_size` must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"{op}: `rank` must be in [0, world_size={world_size}), got {rank}")
    if n_expts_tot < 1 or n_expts_tot % world_size:
        raise ValueError(f"{op}: the number of experts ({n_expts_tot}) must be a positive multiple of "
                         f"`world_size`={world_size} (each rank owns E / world_size experts)")
    n_local = n_expts_tot // world_size
    return rank * n_local, (rank + 1) * n_local


def ep_rank_and_world_size(group=None) -> tuple[int, int]:
    """(rank in `group`, size of `group`); (0, 1) when torch.distributed is not initialised and no group is given."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("expert_parallel: `group` was given but torch.distributed is not initialised "
                             "(call torch.distributed.init_process_group first)")
        return 0, 1
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("expert_parallel: this process is not a member of `group`")
    return rank, dist.get_world_size(group)


# ----------------------------------------------------------------------------- routing


def _check_ep_routing_args(logits, rank, world_size, op):
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{op}: `logits` must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{op}: `logits` must be 2-D [n_tokens, n_experts], got shape {tuple(logits.shape)}")
    return local_expert_range(logits.shape[1], rank, world_size, op)


def _localized(rd: RoutingData, gi: GatherIndx, lo: int, hi: int, n_gates: int, use_triton: bool):
    offs = rd.expt_data.token_offs_raw
    if use_triton:
        from .expert_parallel_details import localize_routing_triton
        topk_indx, gate_indx, gate_scal = localize_routing_triton(
            gi.src_indx.contiguous(), gi.dst_indx.contiguous(), rd.gate_scal.contiguous(), offs, lo, hi)
        hist = rd.expt_hist[lo:hi].contiguous()
        expt_data = compute_expt_data(hist, hi - lo, n_gates)
    else:
        start, end = offs[lo].long(), offs[hi].long()
        n = gi.src_indx.numel()
        pos = torch.arange(n, device=offs.device)
        local_pos = pos < end - start
        src = (pos + start).clamp(max=max(n - 1, 0))
        topk_indx = torch.where(local_pos, gi.src_indx[src], -1).to(torch.int32)
        gate_scal = torch.where(local_pos, rd.gate_scal[src], 0.0).to(torch.float32)
        g = gi.dst_indx.long()
        gate_indx = torch.where((g >= start) & (g < end), g - start, -1).to(torch.int32)
        hist = rd.expt_hist[lo:hi].contiguous()
        expt_data = compute_expt_data_torch(hist, hi - lo, n_gates)
    local = RoutingData(gate_scal, hist, hi - lo, rd.n_expts_act, expt_data,
                        expected_tokens_per_expt=rd.expected_tokens_per_expt)
    return local, GatherIndx(topk_indx, gate_indx), ScatterIndx(gate_indx, topk_indx)


def routing_ep(logits, n_expts_act, rank, world_size, sm_first=False, expt_indx=None, n_rows=None):
    """Routing for rank `rank` of `world_size` (expert parallelism): the global routing of `logits`
    (see `routing.routing`; same arguments) restricted to the experts [lo, hi) of
    `local_expert_range`. Returns (RoutingData, GatherIndx, ScatterIndx) with n_expts_tot = E / W,
    local slots at sorted positions [0, n_local) and -1 elsewhere (transformers' `routing_torch_dist`
    layout). Triton where it runs: four launches, no host synchronisation, graph-capturable."""
    lo, hi = _check_ep_routing_args(logits, rank, world_size, "routing_ep")
    rd, gi, si = routing(logits, n_expts_act, sm_first=sm_first, expt_indx=expt_indx, n_rows=n_rows)
    if hi - lo == logits.shape[1]:
        return rd, gi, si
    use_triton = target_info.runs_triton(logits.device)
    if not use_triton:
        target_info.warn_fallback("routing_ep")
    return _localized(rd, gi, lo, hi, gi.src_indx.numel(), use_triton)


def routing_ep_torch(logits, n_expts_act, rank, world_size, sm_first=False, expt_indx=None, n_rows=None):
    """Reference of `routing_ep` in plain torch (`routing.routing_torch` plus the same restriction)."""
    lo, hi = _check_ep_routing_args(logits, rank, world_size, "routing_ep_torch")
    rd, gi, si = routing_torch(logits, n_expts_act, sm_first=sm_first, expt_indx=expt_indx, n_rows=n_rows)
    if hi - lo == logits.shape[1]:
        return rd, gi, si
    return _localized(rd, gi, lo, hi, gi.src_indx.numel(), False)


# ----------------------------------------------------------------------------- sharding weights


def _layout_options(layout) -> dict:
    """Constructor options of `layout` that it keeps as attributes (mx_axis, mma_version, num_warps, ...)."""
    params = inspect.signature(type(layout).__init__).parameters
    return {name: getattr(layout, name) for name in params
            if name not in ("self", "shape") and hasattr(layout, name)}


def shard_experts(t, rank: int, world_size: int):
    """The experts [lo, hi) of `local_expert_range` taken from a per-expert tensor with the expert dim first.

    `t` is a torch.Tensor (raw MXFP4 bytes [E, K/2, N], scales [E, K/32, N], biases [E, N], dense
    weights [E, K, N]; strides are kept, the slice is copied so the full tensor can be freed), a
    `tensor.Tensor` in any layout (unswizzled, sliced and swizzled again with a layout of the same
    class and options), or None (returned as is).
    """
    op = "shard_experts"
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        if t.dim() < 1:
            raise ValueError(f"{op}: `t` must have a leading expert dim, got a 0-d tensor")
        lo, hi = local_expert_range(t.shape[0], rank, world_size, op)
        return t[lo:hi].clone()
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: `t` must be a torch.Tensor, a triton_kernels Tensor or None, got {type(t).__name__}")
    if len(t.shape) != 3:
        raise ValueError(f"{op}: a triton_kernels Tensor must be 3-D [E, K, N], got shape {tuple(t.shape)}")
    lo, hi = local_expert_range(t.shape[0], rank, world_size, op)
    layout = t.storage.layout
    data = layout.unswizzle_data(t.storage.data)
    if data.dim() != 3 or data.shape[0] != t.shape[0]:
        raise ValueError(f"{op}: the storage of `t` must be [E, ., .] with E={t.shape[0]}, got {tuple(data.shape)}")
    part = data[lo:hi].clone()
    if isinstance(layout, StridedLayout):
        new_layout = StridedLayout(tuple(part.shape))
    else:
        new_layout = type(layout)(tuple(part.shape), **_layout_options(layout))
    shape = (hi - lo,) + tuple(t.shape[1:])
    shape_max = (hi - lo,) + tuple(t.shape_max[1:])
    return Tensor(Storage(new_layout.swizzle_data(part), new_layout), dtype=t.dtype, shape=shape,
                  shape_max=shape_max)


def shard_precision_config(pc, rank: int, world_size: int):
    """A copy of a matmul_ogs PrecisionConfig whose `weight_scale` holds only this rank's experts."""
    if pc is None:
        return None
    if not isinstance(pc, PrecisionConfig):
        raise TypeError(f"shard_precision_config: `pc` must be a matmul_ogs.PrecisionConfig or None, "
                        f"got {type(pc).__name__}")
    return dataclasses.replace(pc, weight_scale=shard_experts(pc.weight_scale, rank, world_size))


# ----------------------------------------------------------------------------- the layer


def _n_experts_of(w):
    shape = tuple(w.shape)
    return shape[0] if len(shape) == 3 else None


def _check_layer(x, w1, w2, n_local: int, op: str):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: `x` must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{op}: `x` must be 2-D [n_tokens, hidden], got shape {tuple(x.shape)}")
    for name, w in (("w1", w1), ("w2", w2)):
        if not isinstance(w, (torch.Tensor, Tensor)):
            raise TypeError(f"{op}: `{name}` must be a torch.Tensor or a triton_kernels Tensor, got {type(w).__name__}")
        e = _n_experts_of(w)
        if e != n_local:
            raise ValueError(f"{op}: `{name}` must hold this rank's {n_local} experts ([E / world_size, K, N]; "
                             f"see shard_experts), got shape {tuple(w.shape)}")


def _check_reduce_dtype(reduce_dtype, x, op):
    if reduce_dtype is None:
        return None
    if reduce_dtype not in (torch.float32, x.dtype):
        raise TypeError(f"{op}: `reduce_dtype` must be None, torch.float32 or x's dtype {x.dtype}, got {reduce_dtype!r}")
    return reduce_dtype


def _experts(matmul, x, routing_data, gather_indx, scatter_indx, w1, w2, b1, b2, pc1, pc2, swiglu_alpha,
             swiglu_limit, group, reduce, reduce_dtype, op):
    rank, world_size = ep_rank_and_world_size(group)
    if not isinstance(routing_data, RoutingData) and not hasattr(routing_data, "n_expts_tot"):
        raise TypeError(f"{op}: `routing_data` must be a routing.RoutingData, got {type(routing_data).__name__}")
    _check_layer(x, w1, w2, routing_data.n_expts_tot, op)
    reduce_dtype = _check_reduce_dtype(reduce_dtype, x, op)
    if pc2 is not None and not isinstance(pc2, PrecisionConfig):
        raise TypeError(f"{op}: `pc2` must be a matmul_ogs.PrecisionConfig or None, got {type(pc2).__name__}")
    out_dtype = (pc2.out_dtype if pc2 is not None else None) or x.dtype
    if reduce_dtype is not None:
        pc2 = dataclasses.replace(pc2 if pc2 is not None else PrecisionConfig(), out_dtype=reduce_dtype)
    act = FusedActivation(FnSpecs("swiglu", swiglu_fn, ("alpha", "limit")), (swiglu_alpha, swiglu_limit), 2)
    h = matmul(x, w1, b1, routing_data, gather_indx=gather_indx, precision_config=pc1, fused_activation=act)
    out = matmul(h, w2, b2, routing_data, scatter_indx=scatter_indx, precision_config=pc2,
                 gammas=routing_data.gate_scal)
    if reduce and world_size > 1:
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM, group=group)
    return out.to(out_dtype) if reduce else out


def experts_forward_ep(x, routing_data, gather_indx, scatter_indx, w1, w2, b1=None, b2=None, pc1=None, pc2=None, *,
                       swiglu_alpha=SWIGLU_ALPHA, swiglu_limit=SWIGLU_LIMIT, group=None, reduce=True,
                       reduce_dtype=None):
    """The experts of this rank on routed tokens, then the all-reduce over `group`.

    x [T, hidden] (replicated on every rank); (routing_data, gather_indx, scatter_indx) local to this
    rank (from `routing_ep`, or transformers' `routing_torch_dist`, used unchanged); w1 [E/W, hidden,
    2*inter] and w2 [E/W, inter, hidden] this rank's experts (MXFP4 Tensors / uint8 bytes with scales in
    pc1 / pc2, or dense), b1 [E/W, 2*inter], b2 [E/W, hidden]. gate_up: gathered, fused SwiGLU
    (alpha, limit); down: scattered top-k sum with gammas = routing_data.gate_scal. With `reduce`
    (default) the partial outputs are summed across the group (in `reduce_dtype`, default x's
    dtype) and every rank returns the full layer output [T, hidden]; without, this rank's partial.
    """
    return _experts(matmul_ogs, x, routing_data, gather_indx, scatter_indx, w1, w2, b1, b2, pc1, pc2, swiglu_alpha,
                    swiglu_limit, group, reduce, reduce_dtype, "experts_forward_ep")


def experts_forward_ep_torch(x, routing_data, gather_indx, scatter_indx, w1, w2, b1=None, b2=None, pc1=None, pc2=None,
                             *, swiglu_alpha=SWIGLU_ALPHA, swiglu_limit=SWIGLU_LIMIT, group=None, reduce=True,
                             reduce_dtype=None):
    """Reference of `experts_forward_ep` (matmul_ogs_torch for the matmuls; the same collective)."""
    return _experts(matmul_ogs_torch, x, routing_data, gather_indx, scatter_indx, w1, w2, b1, b2, pc1, pc2,
                    swiglu_alpha, swiglu_limit, group, reduce, reduce_dtype, "experts_forward_ep_torch")


def _layer(route, experts, x, logits, w1, w2, n_expts_act, b1, b2, pc1, pc2, swiglu_alpha, swiglu_limit, sm_first,
           n_rows, group, reduce, reduce_dtype, op):
    rank, world_size = ep_rank_and_world_size(group)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{op}: `logits` must be a torch.Tensor, got {type(logits).__name__}")
    if isinstance(x, torch.Tensor) and logits.dim() == 2 and x.dim() == 2 and logits.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: `logits` must have one row per token of `x` ({x.shape[0]}), got {logits.shape[0]}")
    if logits.dim() == 2:
        lo, hi = local_expert_range(logits.shape[1], rank, world_size, op)
        _check_layer(x, w1, w2, hi - lo, op)
    rd, gi, si = route(logits, n_expts_act, rank, world_size, sm_first=sm_first, n_rows=n_rows)
    return experts(x, rd, gi, si, w1, w2, b1, b2, pc1, pc2, swiglu_alpha=swiglu_alpha, swiglu_limit=swiglu_limit,
                   group=group, reduce=reduce, reduce_dtype=reduce_dtype)


def moe_forward_ep(x, logits, w1, w2, n_expts_act, b1=None, b2=None, pc1=None, pc2=None, *,
                   swiglu_alpha=SWIGLU_ALPHA, swiglu_limit=SWIGLU_LIMIT, sm_first=False, n_rows=None, group=None,
                   reduce=True, reduce_dtype=None):
    """The expert-parallel MoE layer: `routing_ep` for this rank of `group`, then `experts_forward_ep`.

    logits [T, E] and x [T, hidden] are the same on every rank; w1, w2, b1, b2, pc1, pc2 hold this
    rank's E / W experts (see `shard_experts`, `shard_precision_config`). Returns the full layer
    output [T, hidden] on every rank (this rank's partial with reduce=False)."""
    return _layer(routing_ep, experts_forward_ep, x, logits, w1, w2, n_expts_act, b1, b2, pc1, pc2, swiglu_alpha,
                  swiglu_limit, sm_first, n_rows, group, reduce, reduce_dtype, "moe_forward_ep")


def moe_forward_ep_torch(x, logits, w1, w2, n_expts_act, b1=None, b2=None, pc1=None, pc2=None, *,
                         swiglu_alpha=SWIGLU_ALPHA, swiglu_limit=SWIGLU_LIMIT, sm_first=False, n_rows=None,
                         group=None, reduce=True, reduce_dtype=None):
    """Reference of `moe_forward_ep` (routing_ep_torch and matmul_ogs_torch; the same collective)."""
    return _layer(routing_ep_torch, experts_forward_ep_torch, x, logits, w1, w2, n_expts_act, b1, b2, pc1, pc2,
                  swiglu_alpha, swiglu_limit, sm_first, n_rows, group, reduce, reduce_dtype, "moe_forward_ep_torch")
