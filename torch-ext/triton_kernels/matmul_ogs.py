"""matmul_ogs: the MoE matmul (optionally gathered rows, scattered top-k output) with MXFP4 or bf16 weights.

    y = matmul_ogs(x, w, bias, routing_data, gather_indx=..., scatter_indx=..., precision_config=...,
                   betas=..., gammas=..., out_alpha=..., y=..., fused_activation=...)

Modes
  plain     x [M, K] @ w [K, N] (w may also be [1, K, N]).
  batched   x [B, M, K] @ w [B, K, N] (or a shared w [K, N]); bias [B, N] / [N].
  routed    `routing_data` given: rows are in expert-sorted order. Row r of expert e's segment
            [off[e], off[e+1]) (off = routing_data.expt_data.token_offs_raw) reads
            x[gather_indx.src_indx[r] // k] when gathering, else x[r]; w is [E, K, N].
            With `scatter_indx`, output row t = sum over its k slots s = t*k + j of the row
            scatter_indx.src_indx[s] (skipping -1), i.e. the rows r with dst_indx[r] // k == t.
            The sum is deterministic: the matmul writes one row per slot (in sorted order) and a
            second small kernel adds the k rows of each token in a fixed order (no atomics); with
            few tokens the last program of each column tile adds them in the same launch, in the
            same order.

Per row r, in fp32:
    acc = x_r · W[e]  +  bias[e] * betas[r]      (betas default 1; bias None -> 0)
    acc = acc * gammas[r]                        (if given; gpt-oss passes the routing weights
                                                  `gate_scal` here on the down projection)
    acc = acc * out_alpha                        (if given)
    out = activation(acc, *fn_args)              (FusedActivation; N -> N / reduction_n)
(SPEC section 4: gammas scale the row before the activation.)
then cast to precision_config.out_dtype (default: x's dtype). Without routing, betas and gammas
are indexed by the row of a 2-D x.

Rows that belong to no expert (expert parallelism: slots routed to other ranks) are not computed:
without scatter those output rows are left as they were (zeros in matmul_ogs_torch); with scatter
a token whose k slots are all elsewhere gets zeros.

Weights: bf16/fp16 dense torch tensors, or MXFP4 (a wrapped FP4 Tensor in any layout from
tensor.convert_layout, or a raw uint8 tensor packed along K) with `precision_config.weight_scale`
(E8M0 bytes [E, K/32, N], any layout, StridedLayout included). The kernel reads every layout
through its addressing formula (tensor_details.layout) and upcasts MXFP4 in registers.

Fused activations (calling convention)
  A fused activation is a `@triton.jit` function `fn(tile, *fn_args)`: `tile` is the fp32
  accumulator [BLOCK_M, BLOCK_N] after bias and out_alpha; it returns [BLOCK_M, BLOCK_N //
  reduction_n] (any float dtype). Output column j of a tile comes from tile columns
  [j*reduction_n, (j+1)*reduction_n) of the same tile (tiles start at multiples of BLOCK_N, so
  groups of reduction_n adjacent columns never straddle tiles). Up to four fn_args, passed as
  kernel arguments (floats, ints, or None, which reaches the function as a constexpr None).
  Wrap it as FusedActivation(FnSpecs(name, fn, arg_names, torch_fn=...), fn_args, reduction_n).
  `torch_fn(tile, *fn_args)` is its torch twin, used by matmul_ogs_torch and the CPU fallback
  (swiglu_fn's twin is known and needs no torch_fn).

Epilogue: accepted for API compatibility as a container of FnSpecs; only the empty epilogue
(`Epilogue()` / specs.fn None) is supported, anything else raises ValueError.

Precision: flexpoint scales (FlexCtx with scales, act_scale, out_scale) are not supported: the
activations are bf16/fp16 and the weights carry their own MX scales; non-default values raise.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import torch
import triton

from . import _fast_launch, target_info
from ._grid_counters import current_stream, tile_counters
from .matmul_ogs_details import operands as _ops
from .matmul_ogs_details._kernels import _matmul_ogs_kernel, _topk_reduce_kernel, identity_fn
from .matmul_ogs_details.configs import (DECODERS, ROUTED_BLOCK_M, MatmulConfig, choose_config, scale_loads,
                                         split_k_for, tail_in_64_steps)
from .numerics import InFlexData, OutFlexData
from .swiglu import swiglu_fn, swiglu_fn_torch

__all__ = ["matmul_ogs", "matmul_ogs_torch", "PrecisionConfig", "FlexCtx", "InFlexData", "FnSpecs",
           "FusedActivation", "Epilogue", "MatmulConfig"]

_ACT_DTYPES = (torch.bfloat16, torch.float16)
_MAX_FN_ARGS = 4
try:  # under TRITON_INTERPRET=1, @triton.jit returns an InterpretedFunction
    from triton.runtime.interpreter import InterpretedFunction as _InterpretedFunction
    _JIT_TYPES = (triton.runtime.JITFunction, _InterpretedFunction)
except ImportError:
    _JIT_TYPES = (triton.runtime.JITFunction,)


@dataclasses.dataclass(frozen=True)
class FnSpecs:
    name: str
    fn: Any  # a triton.jit function, or None (identity)
    fn_arg_names: tuple = ()
    fn_arg_do_not_specialize: tuple = ()
    torch_fn: Callable | None = None  # torch twin for matmul_ogs_torch / the CPU fallback

    @staticmethod
    def default() -> "FnSpecs":
        return FnSpecs("dflt", None)


@dataclasses.dataclass(frozen=True)
class FusedActivation:
    specs: FnSpecs = dataclasses.field(default_factory=FnSpecs.default)
    fn_args: tuple = ()
    reduction_n: int = 1


@dataclasses.dataclass(frozen=True)
class Epilogue:
    specs: FnSpecs = dataclasses.field(default_factory=FnSpecs.default)
    fn_arg_values_matmul: tuple = ()
    fn_arg_values_finalize: tuple = ()
    effective_itemsize: float | None = None


@dataclasses.dataclass(frozen=True)
class FlexCtx:
    lhs_data: InFlexData = dataclasses.field(default_factory=InFlexData)
    rhs_data: InFlexData = dataclasses.field(default_factory=InFlexData)
    out_data: OutFlexData = dataclasses.field(default_factory=OutFlexData)


@dataclasses.dataclass
class PrecisionConfig:
    weight_scale: Any = None  # MX scales of the weight (Tensor or uint8 torch.Tensor [E, K/32, N])
    flex_ctx: FlexCtx = dataclasses.field(default_factory=FlexCtx)
    acc_scale: float = 1.0
    flexpoint_saturate_inf: bool = False
    report_quantization_err_ratio: bool = False
    act_scale: Any = None
    out_scale: Any = None
    out_dtype: torch.dtype | None = None
    allow_tf32: bool = True
    max_num_imprecise_acc: int | None = None
    enforce_bitwise_invariance: bool = False


# ----------------------------------------------------------------------------------------------
# argument checking


@dataclasses.dataclass
class _Problem:
    x: torch.Tensor
    w: _ops.Operand
    ws: _ops.Operand | None
    k: int
    n: int
    n_out: int
    batch: int  # grid dimension 1 (1 unless batched)
    rows: int  # M: rows per batch / sorted rows when routed
    routed: bool
    n_expts_act: int
    gather: torch.Tensor | None
    scatter: torch.Tensor | None  # slot -> sorted row (ScatterIndx.src_indx)
    n_tokens: int  # output rows with scatter
    out_dtype: torch.dtype
    out_shape: tuple
    act_fn: Any
    act_torch: Callable | None
    act_args: tuple
    reduction_n: int


def _device_of(t) -> torch.device:
    return t.device if isinstance(t, torch.Tensor) else t.storage.data.device


def _check_flex(pc: PrecisionConfig) -> None:
    flex = pc.flex_ctx
    if pc.act_scale is None and pc.out_scale is None and (flex is None or _flex_unscaled(flex)):
        return
    if flex is not None:
        for side, fields in (("lhs_data", ("scale",)), ("rhs_data", ("scale",)),
                             ("out_data", ("expected_scale", "actual_scale", "checksum_scale"))):
            data = getattr(flex, side, None)
            for field in fields:
                if data is not None and getattr(data, field, None) is not None:
                    raise ValueError(f"matmul_ogs: `precision_config.flex_ctx.{side}.{field}` is not supported "
                                     "(flexpoint scaling; activations are bf16/fp16)")
    for name in ("act_scale", "out_scale"):
        if getattr(pc, name) is not None:
            raise ValueError(f"matmul_ogs: `precision_config.{name}` is not supported (must be None)")


def _flex_unscaled(flex) -> bool:
    """The usual FlexCtx (no flexpoint scale anywhere), checked without `_check_flex`'s loops; False
    for anything else (a missing side or field: the loops look at it)."""
    try:
        lhs, rhs, out = flex.lhs_data, flex.rhs_data, flex.out_data
        return (lhs.scale is None and rhs.scale is None and out.expected_scale is None and out.actual_scale is None
                and out.checksum_scale is None)
    except AttributeError:
        return False


def _activation(fused_activation, epilogue):
    if epilogue is not None:
        if not isinstance(epilogue, Epilogue):
            raise TypeError(f"matmul_ogs: `epilogue` must be an Epilogue, got {type(epilogue).__name__}")
        if epilogue.specs is not None and epilogue.specs.fn is not None:
            raise ValueError("matmul_ogs: `epilogue` with a function is not supported; fuse it as `fused_activation`")
    if fused_activation is None:
        return identity_fn, (lambda t: t), (), 1
    if not isinstance(fused_activation, FusedActivation):
        raise TypeError(f"matmul_ogs: `fused_activation` must be a FusedActivation, got {type(fused_activation).__name__}")
    specs = fused_activation.specs
    args = tuple(fused_activation.fn_args)
    red = fused_activation.reduction_n
    if not isinstance(red, int) or red < 1 or red & (red - 1):
        raise ValueError(f"matmul_ogs: `fused_activation.reduction_n` must be a power of two >= 1, got {red!r}")
    if specs is None or specs.fn is None:
        if red != 1:
            raise ValueError("matmul_ogs: `fused_activation` without a function must have reduction_n == 1")
        return identity_fn, (lambda t: t), (), 1
    if not isinstance(specs.fn, _JIT_TYPES):
        raise TypeError(f"matmul_ogs: `fused_activation.specs.fn` must be a @triton.jit function, got {type(specs.fn).__name__}")
    if len(args) > _MAX_FN_ARGS:
        raise ValueError(f"matmul_ogs: `fused_activation.fn_args` takes at most {_MAX_FN_ARGS} values, got {len(args)}")
    if specs.fn_arg_names and len(specs.fn_arg_names) != len(args):
        raise ValueError(f"matmul_ogs: `fused_activation.fn_args` has {len(args)} values for names {specs.fn_arg_names}")
    torch_fn = specs.torch_fn
    if torch_fn is None and specs.fn is swiglu_fn:
        torch_fn = swiglu_fn_torch
    return specs.fn, torch_fn, args, red


def _check(x, w, bias, routing_data, gather_indx, scatter_indx, pc, betas, gammas, y, fused_activation,
           epilogue) -> _Problem:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"matmul_ogs: `x` must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _ACT_DTYPES:
        raise TypeError(f"matmul_ogs: `x` must be bfloat16 or float16, got {x.dtype}")
    if x.dim() not in (2, 3):
        raise ValueError(f"matmul_ogs: `x` must be 2-D [M, K] or 3-D [B, M, K], got shape {tuple(x.shape)}")
    if pc is None:
        pc = PrecisionConfig()
    if not isinstance(pc, PrecisionConfig):
        raise TypeError(f"matmul_ogs: `precision_config` must be a matmul_ogs.PrecisionConfig, got {type(pc).__name__}")
    _check_flex(pc)
    dev = x.device

    if isinstance(w, torch.Tensor):
        fp4 = w.dtype == torch.uint8
        if not fp4 and w.dtype not in _ACT_DTYPES:
            raise TypeError(f"matmul_ogs: `w` must be bfloat16/float16 (dense), uint8 (MXFP4 packed along K) "
                            f"or an FP4 Tensor, got {w.dtype}")
    else:
        wrapped = _ops.is_wrapped(w)
        fp4 = wrapped and _ops.is_fp4(w)
        if wrapped and not fp4:
            raise TypeError(f"matmul_ogs: `w` as a Tensor must have dtype FP4, got {w.dtype}")
    if _device_of(w) != dev:
        raise ValueError(f"matmul_ogs: `x` is on {dev} but `w` is on {_device_of(w)}; they must be on the same device")
    if isinstance(w, torch.Tensor):
        if not fp4 and w.dtype != x.dtype:
            raise TypeError(f"matmul_ogs: dense `w` must have x's dtype {x.dtype}, got {w.dtype}")
        wop = _ops.operand(w, "w", 1)
    else:
        wop = _ops.wrapped_operand(w, "w", 2) if wrapped else _ops.operand(w, "w", 1)
    k = x.shape[-1]
    n = wop.n
    if fp4:
        w_k = 2 * wop.rows
        if k % _ops.MX_BLOCK:
            raise ValueError(f"matmul_ogs: MXFP4 weights need K to be a multiple of {_ops.MX_BLOCK}, got K={k} (`x` last dim)")
        if pc.weight_scale is None:
            raise ValueError("matmul_ogs: `precision_config.weight_scale` is required for FP4 weights `w`")
        if _device_of(pc.weight_scale) != dev:
            raise ValueError(f"matmul_ogs: `precision_config.weight_scale` is on {_device_of(pc.weight_scale)}, `x` on {dev}")
        if isinstance(pc.weight_scale, torch.Tensor) and pc.weight_scale.dtype != torch.uint8:
            raise TypeError(f"matmul_ogs: `precision_config.weight_scale` must be uint8 (E8M0), got {pc.weight_scale.dtype}")
        ws = _ops.operand(pc.weight_scale, "precision_config.weight_scale", 1)
        if ws.n_experts != wop.n_experts or ws.rows != k // _ops.MX_BLOCK or ws.n != n:
            raise ValueError(f"matmul_ogs: `precision_config.weight_scale` must be "
                             f"[{'' if wop.n_experts is None else f'{wop.n_experts}, '}{k // _ops.MX_BLOCK}, {n}] "
                             f"(one scale per 32 values of K), got experts={ws.n_experts} rows={ws.rows} N={ws.n}")
    else:
        w_k = wop.rows
        ws = None
        if pc.weight_scale is not None:
            raise ValueError("matmul_ogs: `precision_config.weight_scale` is given but `w` is not FP4")
    if w_k != k:
        raise ValueError(f"matmul_ogs: `w` must have K={k} rows (x's last dim), got K={w_k}")

    act_fn, act_torch, act_args, red = _activation(fused_activation, epilogue)
    if n % red:
        raise ValueError(f"matmul_ogs: N={n} must be a multiple of `fused_activation.reduction_n`={red}")
    n_out = n // red

    routed = routing_data is not None
    n_expts_act = 1
    n_tokens = 0
    gather = scatter = None
    if routed:
        if x.dim() != 2:
            raise ValueError(f"matmul_ogs: routed `x` must be 2-D, got shape {tuple(x.shape)}")
        n_expts = routing_data.n_expts_tot
        n_expts_act = int(routing_data.n_expts_act)
        if wop.n_experts is None or wop.n_experts != n_expts:
            raise ValueError(f"matmul_ogs: `w` has {wop.n_experts} experts but `routing_data` has n_expts_tot={n_expts}")
        hist = routing_data.expt_hist
        if hist is not None and hist.numel() != n_expts:
            raise ValueError(f"matmul_ogs: `routing_data.expt_hist` has {hist.numel()} entries, expected {n_expts}")
        if gather_indx is not None:
            gather = gather_indx.src_indx
            if gather.device != dev:
                raise ValueError(f"matmul_ogs: `gather_indx` is on {gather.device}, `x` on {dev}")
            rows = gather.shape[0]
        else:
            rows = x.shape[0]
        if scatter_indx is not None:
            scatter = scatter_indx.src_indx
            if scatter.device != dev:
                raise ValueError(f"matmul_ogs: `scatter_indx` is on {scatter.device}, `x` on {dev}")
            if scatter.shape[0] % n_expts_act:
                raise ValueError(f"matmul_ogs: `scatter_indx` has {scatter.shape[0]} slots, not a multiple of k={n_expts_act}")
            n_tokens = scatter.shape[0] // n_expts_act
        batch = 1
        out_shape = (n_tokens, n_out) if scatter is not None else (rows, n_out)
    else:
        if gather_indx is not None or scatter_indx is not None:
            raise ValueError("matmul_ogs: `gather_indx` / `scatter_indx` need `routing_data`")
        rows = x.shape[-2]
        if x.dim() == 3:
            batch = x.shape[0]
            if wop.n_experts is not None and wop.n_experts not in (1, batch):
                raise ValueError(f"matmul_ogs: batched `x` has {batch} batches but `w` has {wop.n_experts}")
            out_shape = (batch, rows, n_out)
        else:
            batch = 1
            if wop.n_experts not in (None, 1):
                raise ValueError(f"matmul_ogs: 2-D `x` needs a 2-D `w` (or routing_data), got w with {wop.n_experts} experts")
            out_shape = (rows, n_out)
    groups = wop.n_experts if wop.n_experts is not None else 1

    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError("matmul_ogs: `bias` must be a floating-point torch.Tensor or None")
        if bias.device != dev:
            raise ValueError(f"matmul_ogs: `bias` is on {bias.device}, `x` on {dev}")
        ok = (bias.dim() == 2 and tuple(bias.shape) == (groups, n)) or (bias.dim() == 1 and bias.shape[0] == n
                                                                           and (groups == 1 or not routed))
        if not ok:
            raise ValueError(f"matmul_ogs: `bias` must be [{groups}, {n}]" + ("" if routed else f" or [{n}]")
                             + f", got {tuple(bias.shape)}")
    for name, v in (("betas", betas), ("gammas", gammas)):
        if v is None:
            continue
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(f"matmul_ogs: `{name}` must be a floating-point torch.Tensor or None")
        if v.device != dev:
            raise ValueError(f"matmul_ogs: `{name}` is on {v.device}, `x` on {dev}")
        if x.dim() == 3 and not routed:
            raise ValueError(f"matmul_ogs: `{name}` is not supported for batched x")
        if v.dim() != 1 or v.shape[0] != rows:
            raise ValueError(f"matmul_ogs: `{name}` must be 1-D with {rows} entries (one per row), got {tuple(v.shape)}")

    out_dtype = pc.out_dtype or x.dtype
    if y is not None:
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"matmul_ogs: `y` must be a torch.Tensor, got {type(y).__name__}")
        if y.device != dev:
            raise ValueError(f"matmul_ogs: `y` is on {y.device}, `x` on {dev}")
        if tuple(y.shape) != tuple(out_shape):
            raise ValueError(f"matmul_ogs: `y` must have shape {tuple(out_shape)}, got {tuple(y.shape)}")
        if not y.is_floating_point():
            raise TypeError(f"matmul_ogs: `y` must be floating point, got {y.dtype}")
        out_dtype = y.dtype
    return _Problem(x, wop, ws, k, n, n_out, batch, rows, routed, n_expts_act, gather, scatter, n_tokens,
                    out_dtype, tuple(out_shape), act_fn, act_torch, act_args, red)


# ----------------------------------------------------------------------------------------------
# Triton path


def _expt_data(routing_data, n_rows: int):
    expt_data = getattr(routing_data, "expt_data", None)
    if expt_data is None:
        from .routing import compute_expt_data
        expt_data = compute_expt_data(routing_data.expt_hist, routing_data.n_expts_tot, n_rows)
    return expt_data


def _block_pid_map(expt_data, block_m: int) -> torch.Tensor:
    """The tile map for block_m (routing tabulates 16..128; a taller tile reads the 128 map, see MAP_BLOCK_M)."""
    table = expt_data.block_pid_map
    try:
        return table[min(block_m, ROUTED_BLOCK_M[-1])]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"matmul_ogs: `routing_data.expt_data.block_pid_map` has no entry for block_m={block_m}") from None


_INT32_LIMIT = 2 ** 31 - 1


# triton.cdiv / triton.next_power_of_2 are constexpr functions: a few us per host call
def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, n - 1).bit_length()


def _span(shape, strides) -> int:
    """Largest element offset inside a tensor of this shape and these strides (plus one)."""
    span = 1
    for size, stride in zip(shape, strides):
        if size > 0:
            span += (size - 1) * abs(stride)
    return span


def _first_span(shape, strides) -> int:
    """_span of t[0] for a tensor t of this shape and these strides (0 if t is empty along dim 0)."""
    return _span(shape[1:], strides[1:]) if shape[0] else 0


def _batched(shape, strides) -> tuple[tuple, tuple]:
    """The shape and strides of t.unsqueeze(0) for a 2-D t (torch gives the new dim size * stride of
    dim 0), without making the view; those of t for a 3-D t."""
    if len(shape) == 3:
        return shape, strides
    return (1, *shape), (shape[0] * strides[0], *strides)


def _needs_int64(p: _Problem, out_span: int, x_span: int, partial_span: int) -> bool:
    """Whether per-tile offsets (within one batch / expert; the expert base is always 64-bit) can pass
    2^31, given the `_first_span` of the kernel's [B, M, N] output and [B, M, K] x and the `_span` of
    its partials."""
    return max(out_span, x_span, partial_span, p.w.expert_span,
               p.ws.expert_span if p.ws is not None else 0) > _INT32_LIMIT


def _decoder(cfg: MatmulConfig, p: _Problem) -> int:
    """The kernel's DECODE constexpr: the config's MXFP4 decoder where the operands and the backend
    allow it, else the next simpler one (same values bit for bit, only the speed differs)."""
    if not cfg.swap_xw or p.ws is None:
        return 0
    a = p.w.addressing
    if a.nibble_quads:  # the storage has one decoder; inline PTX where the backend and x allow it
        if not _ptx_ok(p):
            return 3
        return 5 if _scales_at_most_128(p.ws.data) else 4
    words = (a.k_group == 1 and a.stride_k_group == 1 and a.stride_n % 4 == 0 and a.stride_e % 4 == 0
             and p.w.data.data_ptr() % 4 == 0)
    if not words:
        return 0
    want = DECODERS.index(cfg.decode)
    return 1 if want == 2 and not _ptx_ok(p) else want


def _grouped_scale_words(p: _Problem) -> bool:
    """Whether the MX scales can be read as aligned 32-bit words of 4 consecutive scale blocks of one
    column (the K-grouped layouts with G = 4: HopperMXScaleLayout, BlackwellMXScaleLayout)."""
    if p.ws is None:
        return False
    a = p.ws.addressing
    return (a.k_group == 4 and a.stride_k_inner == 1 and a.stride_n == 4 and a.stride_k_group % 4 == 0
            and a.stride_e % 4 == 0 and p.ws.data.data_ptr() % 4 == 0)


def _ptx_ok(p: _Problem) -> bool:
    """Whether the inline-PTX decoders can run: CUDA (sm_80+, not the interpreter) and bf16 x."""
    target = target_info.get_target()
    return (not target.interpreter and target.capability is not None and target.capability >= (8, 0)
            and p.x.dtype == torch.bfloat16)


def _scales_at_most_128(scales: torch.Tensor) -> bool:
    """Whether every E8M0 byte of a weight's scale storage is <= 128 (then the PTX decoder folds
    2^126 into the scale: one multiply per pair). Weights are static: the answer is computed once
    (one device sync) and kept on the tensor, keyed by its version counter so that an in-place
    write recomputes it; while a CUDA graph is being captured an unknown answer is 'no' (the
    general decoder, same values)."""
    base = scales if scales._base is None else scales._base
    key = (scales.data_ptr(), tuple(scales.shape), scales.stride(), scales._version)
    cache = getattr(base, "_triton_kernels_scale_max", None)
    if cache is not None and cache[0] == key:
        return cache[1] <= 128
    if scales.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    top = int(scales.max()) if scales.numel() else 0
    base._triton_kernels_scale_max = (key, top)
    return top <= 128


def _pdl_ok() -> bool:
    """Programmatic dependent launch (griddepcontrol): CUDA sm_90+, not the interpreter."""
    target = target_info.get_target()
    return not target.interpreter and target.capability is not None and target.capability >= (9, 0)


K_TAIL_64_STEPS = True  # the K tail as 64-deep steps where `tail_in_64_steps` says (a switch for benchmarks)
TOPK_SUM_IN_LAUNCH = True  # few tokens: the top-k sum in the matmul's own launch (a switch for benchmarks)
TOPK_SUM_MAX_ROWS = 256  # rows (token slots x linear splits) the last program of a column tile adds
SPLIT_FINISH_IN_LAUNCH = True  # K splits of a non-linear epilogue finished by their last split (a switch for benchmarks)
FAST_LAUNCH = True  # repeated launches call the compiled kernel directly (`_fast_launch`; a switch for benchmarks)


def _jit_launch(kernel, grid: tuple, *args, **kwargs) -> None:
    kernel[grid](*args, **kwargs)


def _jit_launch_fixed(kernel, grid: tuple, args: tuple, fixed: _fast_launch.FixedKwargs) -> None:
    kernel[grid](*args, **fixed.kwargs)


@functools.lru_cache(maxsize=4096, typed=True)  # typed: True and 1 compile differently
def _matmul_kwargs(act_fn, n_act_args: int, reduction_n: int, w_mx: bool, w_k_group: int, ws_k_group: int,
                   routed: bool, gather: bool, has_bias: bool, has_betas: bool, has_gammas: bool, has_alpha: bool,
                   interpreter: bool, index_64: bool, split_k: int, pdl: bool, cfg: MatmulConfig, n_parts: int,
                   topk_sum: bool, sum_k: int, sum_block_t: int, part: MatmulConfig, decode: int, s_words: bool,
                   prefetch_s: bool, tail_64: bool, stage: str, linear_splits: bool,
                   finish_in_launch: bool) -> _fast_launch.FixedKwargs:
    """The keyword arguments (constexprs, launch options) of one `_matmul_ogs_kernel` launch of `part`,
    from values the launch decided (module switches included); `stage`: "whole" (no K split), "split"
    (the K splits) or "finish" (the FINISH_SPLIT launch)."""
    kwargs = dict(
        ACT_FN=act_fn, N_ACT_ARGS=n_act_args, REDUCTION_N=reduction_n,
        W_MX=w_mx, W_KG=w_k_group, WS_KG=ws_k_group,
        ROUTED=routed, GATHER=gather, HAS_BIAS=has_bias, HAS_BETAS=has_betas, HAS_GAMMAS=has_gammas,
        HAS_ALPHA=has_alpha, DOT_F32=interpreter, INDEX_64=index_64,
        SPLIT_K=split_k, PDL=pdl, MAP_BLOCK_M=min(cfg.block_m, ROUTED_BLOCK_M[-1]),
        CHUNK_M=cfg.block_m if n_parts > 1 else 0, TAIL_M=cfg.tail.block_m if n_parts > 1 else 0,
        TOPK_SUM=topk_sum, SUM_K=sum_k, SUM_BLOCK_T=sum_block_t,
        BLOCK_M=part.block_m, BLOCK_N=part.block_n, BLOCK_K=part.block_k, GROUP_M=part.group_m,
        SWAP_XW=bool(part.swap_xw), DECODE=decode, S_WORDS=s_words, PREFETCH_S=prefetch_s,
        TAIL_64=tail_64)
    if stage == "split":
        kwargs.update(FINISH_SPLIT=False, LINEAR_SPLITS=linear_splits, FINISH_IN_LAUNCH=finish_in_launch,
                      launch_pdl=pdl, num_warps=part.num_warps, num_stages=part.num_stages)
    elif stage == "finish":
        kwargs.update(FINISH_SPLIT=True, launch_pdl=pdl, num_warps=4, num_stages=1)
    else:
        kwargs.update(launch_pdl=pdl, num_warps=part.num_warps, num_stages=part.num_stages)
    if part.max_registers is not None and stage != "finish" and not interpreter:
        kwargs["maxnreg"] = part.max_registers
    return _fast_launch.FixedKwargs(kwargs)


def _call_counters(dev: torch.device, n: int) -> torch.Tensor | None:
    """n zeroed counters for this call from `_grid_counters` (this stream's block, or the captured
    call's own), or None where none can be had."""
    return tile_counters(dev, *current_stream(dev), n)


def _sum_counters(p: _Problem, cfg: MatmulConfig, n_parts: int, n_tiles_m: int, split_k: int, linear_splits: bool):
    """The column tiles' counters where the top-k sum can run in the matmul's launch (see
    `_topk_sum_if_last`), else None: a scatter with few token slots, every program of one launch
    arriving (tiles no taller than the routing's map, no second launch for tails or split sums)."""
    if not (TOPK_SUM_IN_LAUNCH and p.scatter is not None and n_parts == 1 and n_tiles_m and p.batch == 1
            and cfg.block_m <= ROUTED_BLOCK_M[-1] and (split_k == 1 or linear_splits)):
        return None
    if p.n_tokens * p.n_expts_act * (split_k if linear_splits else 1) > TOPK_SUM_MAX_ROWS:
        return None
    return _call_counters(p.x.device, _cdiv(p.n, cfg.block_n))


def _finish_counters(p: _Problem, n_tiles: int, split_k: int, linear_splits: bool):
    """The output tiles' counters where the last split of each tile finishes it in the launch (K split
    with a non-linear epilogue), else None (the FINISH_SPLIT launch)."""
    if not (SPLIT_FINISH_IN_LAUNCH and split_k > 1 and not linear_splits):
        return None
    return _call_counters(p.x.device, n_tiles)


def _fit_config(cfg: MatmulConfig, p: _Problem) -> MatmulConfig:
    """Nibble-quads weights (HopperMXValueLayout) are read only by the swapped main loop, in K steps
    of whole 64-value blocks: a config is run swapped, with block_k rounded up to a multiple of 64
    (the same result; a config is a speed choice)."""
    if p.ws is None or not p.w.addressing.nibble_quads:
        return cfg
    return _fit_quads(cfg)


@functools.lru_cache(maxsize=1024)
def _fit_quads(cfg: MatmulConfig) -> MatmulConfig:
    tail = _fit_quads(cfg.tail) if cfg.tail is not None else None
    return dataclasses.replace(cfg, swap_xw=True, block_k=max(64, cfg.block_k), tail=tail)


def _launch(p: _Problem, bias, routing_data, betas, gammas, out_alpha, y, config: MatmulConfig | None):
    x = p.x
    run_kernel = _fast_launch.launch_fixed if FAST_LAUNCH else _jit_launch_fixed
    routed_rows_per_group = p.rows / max(1, p.w.n_experts or 1) if p.routed else p.rows
    if routing_data is not None and getattr(routing_data, "expected_tokens_per_expt", None):
        routed_rows_per_group = routing_data.expected_tokens_per_expt
    cfg = config or choose_config(routed_rows_per_group, p.n, p.k, p.ws is not None, p.reduction_n,
                                  nibble_quads=p.w.addressing.nibble_quads)
    cfg = _fit_config(cfg, p)
    # tiles sized per expert: a second launch takes the experts' short last chunks (routed calls)
    parts = [cfg] if cfg.tail is None or not p.routed else [cfg, cfg.tail]
    for part in parts:
        if part.block_n % (2 * p.reduction_n):
            raise ValueError(f"matmul_ogs: block_n={part.block_n} must be a multiple of 2*reduction_n")

    if p.routed:
        expt_data = _expt_data(routing_data, p.rows)
        block_pid_map = _block_pid_map(expt_data, cfg.block_m)
        token_offs = expt_data.token_offs_raw
        n_tiles_m = block_pid_map.shape[0]
    else:
        n_tiles_m = _cdiv(p.rows, cfg.block_m)
    n_tiles_n = _cdiv(p.n, cfg.block_n)
    if not (n_tiles_m and n_tiles_n and p.batch) or len(parts) > 1:
        split_k = 1
    elif config is None:
        split_k = split_k_for(n_tiles_m * n_tiles_n * p.batch, p.k, cfg.block_k, target_info.num_sms())
    else:
        split_k = cfg.split_k
    partial = None
    if split_k > 1:
        partial = torch.empty((split_k, p.batch, p.rows, p.n), dtype=torch.float32, device=x.device)
    # split partials of a linear epilogue under a scatter are added by the top-k sum itself
    linear_splits = split_k > 1 and p.scatter is not None and p.act_fn is identity_fn and not p.act_args

    sum_counters = _sum_counters(p, cfg, len(parts), n_tiles_m, split_k, linear_splits) if n_tiles_n else None
    finish_counters = _finish_counters(p, n_tiles_m * n_tiles_n * p.batch, split_k, linear_splits)
    counters = sum_counters if sum_counters is not None else finish_counters
    y_out = None
    if p.scatter is not None:
        y_out = y if y is not None else torch.empty(p.out_shape, dtype=p.out_dtype, device=x.device)
    if linear_splits:
        out = partial  # the kernel writes only the partials (its output is the first split): no rows to allocate
    elif p.scatter is not None:
        out = torch.empty((p.rows, p.n_out), dtype=torch.float32 if p.out_dtype == torch.float32 else p.out_dtype,
                          device=x.device)
    else:
        out = y if y is not None else torch.empty(p.out_shape, dtype=p.out_dtype, device=x.device)
    if not p.routed:  # unused by the kernel: any tensor argument does
        block_pid_map = token_offs = out

    # the kernel reads out and x as [B, M, *]: a 2-D one with the strides unsqueeze(0) would give it
    if linear_splits:
        out_shape, out_strides = partial.shape[1:], partial.stride()[1:]
    else:
        out_shape, out_strides = _batched(out.shape, out.stride())
    x_shape, x_strides = _batched(x.shape, x.stride())
    if partial is None:
        partial, partial_shape, partial_strides = out, out_shape, out_strides
    else:
        partial_shape, partial_strides = partial.shape, partial.stride()
    wa, sa = p.w.addressing, (p.ws.addressing if p.ws is not None else None)
    if bias is not None:
        stride_bias_e = bias.stride(0) if bias.dim() == 2 and bias.shape[0] > 1 else 0
    args = list(p.act_args) + [None] * (_MAX_FN_ARGS - len(p.act_args))
    launch_args = (
        out, *out_strides,
        x, x_strides[0] if p.batch > 1 else 0, x_strides[1], x_strides[2],
        p.w.data, wa.stride_e if p.w.n_experts not in (None, 1) or p.routed else 0,
        wa.stride_k_group, wa.stride_k_inner, wa.stride_n,
        p.ws.data if p.ws is not None else x, sa.stride_e if sa is not None and (p.ws.n_experts not in (None, 1) or p.routed) else 0,
        sa.stride_k_group if sa else 0, sa.stride_k_inner if sa else 0, sa.stride_n if sa else 0,
        bias if bias is not None else x, stride_bias_e if bias is not None else 0,
        betas if betas is not None else x, gammas if gammas is not None else x,
        float(out_alpha) if out_alpha is not None else 1.0,
        p.gather if p.gather is not None else token_offs, token_offs, block_pid_map,
        partial, partial_strides[0], partial_strides[1] if split_k > 1 else 0, partial_strides[2] if split_k > 1 else 0,
        p.rows, p.n, p.k, p.n_expts_act, n_tiles_m,
        *((y_out, y_out.stride(0), y_out.stride(1), p.scatter, p.n_tokens) if sum_counters is not None
          else (out, 0, 0, out, 0)),
        counters if counters is not None else out,
        *args,
    )
    pdl = _pdl_ok()
    interpreter = target_info.get_target().interpreter
    index_64 = _needs_int64(p, _first_span(out_shape, out_strides), _first_span(x_shape, x_strides),
                            _span(partial_shape, partial_strides))
    shared = (p.act_fn, len(p.act_args), p.reduction_n, p.ws is not None, wa.k_group, sa.k_group if sa else 1,
              p.routed, p.gather is not None, bias is not None, betas is not None, gammas is not None,
              out_alpha is not None, interpreter, index_64, split_k, pdl, cfg, len(parts),
              sum_counters is not None, p.n_expts_act if sum_counters is not None else 1,
              # up to 64 tokens in one step of the in-launch sum (a constant where there is none: no recompiles)
              min(64, max(16, _next_pow2(p.n_tokens))) if sum_counters is not None else 16)
    words_layout = _grouped_scale_words(p)
    for part in parts if n_tiles_m and n_tiles_n and p.batch else ():
        part_args = (part, _decoder(part, p), *scale_loads(part, words_layout, wa.nibble_quads),
                     K_TAIL_64_STEPS and tail_in_64_steps(part, p.k))
        grid = (n_tiles_m * _cdiv(p.n, part.block_n), p.batch)
        if split_k > 1:
            run_kernel(_matmul_ogs_kernel, grid + (split_k,), launch_args,
                       _matmul_kwargs(*shared, *part_args, "split", linear_splits, finish_counters is not None))
            if not linear_splits and finish_counters is None:
                run_kernel(_matmul_ogs_kernel, grid, launch_args, _matmul_kwargs(*shared, *part_args, "finish", False, False))
        else:
            run_kernel(_matmul_ogs_kernel, grid, launch_args, _matmul_kwargs(*shared, *part_args, "whole", False, False))
    if p.scatter is None:
        return out
    if p.n_tokens and p.n_out and sum_counters is None:
        block_t, block_n = (16, 64) if interpreter else (8, 512)
        grid = (_cdiv(p.n_tokens, block_t), _cdiv(p.n_out, block_n))
        inter = partial[:, 0] if linear_splits else out.unsqueeze(0)  # [splits, rows, N]
        run_reduce = _fast_launch.launch if FAST_LAUNCH else _jit_launch
        run_reduce(_topk_reduce_kernel, grid, y_out, y_out.stride(0), y_out.stride(1), inter, inter.stride(1),
                   inter.stride(2), p.scatter, p.n_tokens, p.n_out, inter.stride(0), N_EXPTS_ACT=p.n_expts_act,
                   INTERPRETED=interpreter, BLOCK_T=block_t, BLOCK_N=block_n, N_SPLITS=inter.shape[0], PDL=pdl,
                   launch_pdl=pdl, num_warps=4)
    return y_out


def matmul_ogs(x, w, bias, routing_data=None, gather_indx=None, scatter_indx=None, precision_config=None,
               betas=None, gammas=None, out_alpha=None, y=None, fused_activation=None, epilogue=None,
               *, config: MatmulConfig | None = None):
    """See the module docstring. `config` (keyword only) overrides the launch config (benchmarks, tests)."""
    p = _check(x, w, bias, routing_data, gather_indx, scatter_indx, precision_config, betas, gammas, y,
               fused_activation, epilogue)
    if not target_info.runs_triton(x.device):
        target_info.warn_fallback("matmul_ogs")
        return _reference(p, bias, routing_data, betas, gammas, out_alpha, y, torch.float32)
    return _launch(p, bias, routing_data, betas, gammas, out_alpha, y, config)


# ----------------------------------------------------------------------------------------------
# torch reference


def _reference(p: _Problem, bias, routing_data, betas, gammas, out_alpha, y, accum_dtype):
    x = p.x
    dev = x.device
    if p.act_torch is None:
        raise ValueError("matmul_ogs_torch: `fused_activation.specs.torch_fn` is needed to run this activation in torch")

    def weight(e):
        return _ops.dequantize_expert(p.w, p.ws, e, accum_dtype)

    def finish(acc, rows_slice, e):
        if bias is not None:
            b = (bias[e] if bias.dim() == 2 and bias.shape[0] > 1 else bias.reshape(-1)).to(accum_dtype)
            acc = acc + b[None, :] * (betas[rows_slice].to(accum_dtype)[:, None] if betas is not None else 1)
        if gammas is not None:
            acc = acc * gammas[rows_slice].to(accum_dtype)[:, None]
        if out_alpha is not None:
            acc = acc * out_alpha
        return p.act_torch(acc, *p.act_args)

    if not p.routed:
        x3 = x if x.dim() == 3 else x.unsqueeze(0)
        outs = []
        for b in range(p.batch):
            e = b if p.w.n_experts not in (None, 1) else 0
            acc = x3[b].to(accum_dtype) @ weight(e)
            outs.append(finish(acc, slice(0, p.rows), b if bias is not None and bias.dim() == 2 and bias.shape[0] > 1 else 0))
        res = torch.stack(outs).reshape(p.out_shape)
    else:
        n_expts = routing_data.n_expts_tot
        hist = routing_data.expt_hist.to(torch.int64).cpu()
        offs = [0] + torch.cumsum(hist, 0).tolist()
        res = torch.zeros((p.rows, p.n_out), dtype=accum_dtype, device=dev)
        for e in range(n_expts):
            lo, hi = offs[e], offs[e + 1]
            if hi <= lo:
                continue
            if p.gather is not None:
                src = p.gather[lo:hi].to(torch.int64)
                xe = torch.where((src >= 0)[:, None], x[(src.clamp(min=0) // p.n_expts_act)], 0).to(accum_dtype)
            else:
                xe = x[lo:hi].to(accum_dtype)
            res[lo:hi] = finish(xe @ weight(e), slice(lo, hi), e)
        if p.scatter is not None:
            slot_rows = p.scatter.to(torch.int64).reshape(p.n_tokens, p.n_expts_act)
            valid = slot_rows >= 0
            picked = res[slot_rows.clamp(min=0)] * valid[..., None]
            res = picked.sum(dim=1)
    res = res.to(p.out_dtype)
    if y is not None:
        y.copy_(res)
        return y
    return res


def matmul_ogs_torch(x, w, bias, routing_data=None, gather_indx=None, scatter_indx=None, precision_config=None,
                     betas=None, gammas=None, out_alpha=None, y=None, fused_activation=None, epilogue=None,
                     *, accum_dtype: torch.dtype = torch.float32):
    """Reference of `matmul_ogs` (same arguments): loops over experts, dequantizing only the experts in use,
    and accumulates in `accum_dtype` (float32, or float64 for checks)."""
    p = _check(x, w, bias, routing_data, gather_indx, scatter_indx, precision_config, betas, gammas, y,
               fused_activation, epilogue)
    return _reference(p, bias, routing_data, betas, gammas, out_alpha, y, accum_dtype)
