"""Launch configurations for the matmul_ogs kernel, chosen from the probe's variant and the shape.

The tables are starting points written without per-shape autotuning; `benchmarks/bench_matmul.py
--sweep` times the alternatives on the GPU so that the tables can be re-tuned from measurements.
"""

from __future__ import annotations

import dataclasses
import functools

from .. import target_info

# Tile heights that routing precomputes an ExptData.block_pid_map for.
ROUTED_BLOCK_M = (16, 32, 64, 128)
DECODERS = ("bytes", "words", "ptx")  # index = the kernel's DECODE constexpr


@dataclasses.dataclass(frozen=True)
class MatmulConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int  # M tiles walked together before moving to the next N tile (L2 reuse of x)
    num_warps: int
    num_stages: int
    swap_xw: bool = False  # compute acc^T = w^T @ x^T (decoded weight as the MMA's left operand)
    # MXFP4 decoder of the swapped main loop: "bytes" (any layout), "words" (32-bit words of eight
    # nibbles; K-contiguous, 4-byte aligned weights), "ptx" (words decoded in bf16x2 pairs by inline
    # PTX; CUDA and bf16 activations). A preference: the launch falls back to the next decoder
    # ("ptx" -> "words" -> "bytes") where the operands or the backend do not allow it.
    decode: str = "bytes"
    # K split over this many programs per output tile (decode: too few tiles to fill the GPU); the
    # fp32 partial sums are added in a fixed order by the last split of each tile to finish, which
    # runs the epilogue (a second launch where no tile counters can be had), or, for a linear
    # epilogue under a scatter, by the top-k sum.
    # choose_config leaves 1; the launch picks a split for automatic configs (split_k_for).
    split_k: int = 1
    # Tiles sized per expert (routed calls; ignored otherwise): each expert's rows are cut into
    # chunks of block_m rows, and a chunk holding at most tail.block_m rows (an expert's last one)
    # is computed by a second launch with this config instead of a block_m-row tile. choose_config
    # picks it at 15-16, 65-160 and 257-1024 rows per expert (NOTES_matmul_perf.md sections 12, 15, 16).
    tail: MatmulConfig | None = None
    # Registers per thread the compiler may use (ptxas .maxnreg; None: its own choice). A lower cap
    # fits more programs on an SM where registers are what limits them (65536 per SM).
    max_registers: int | None = None

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k", "group_m"):
            value = getattr(self, name)
            if value <= 0 or value & (value - 1):
                raise ValueError(f"MatmulConfig: `{name}` must be a positive power of two, got {value}")
        if not isinstance(self.split_k, int) or not 1 <= self.split_k <= 64:
            raise ValueError(f"MatmulConfig: `split_k` must be an int in [1, 64], got {self.split_k!r}")
        if self.decode not in DECODERS:
            raise ValueError(f"MatmulConfig: `decode` must be one of {DECODERS}, got {self.decode!r}")
        if self.block_k < 32:
            raise ValueError(f"MatmulConfig: `block_k` must be at least 32 (one MX block), got {self.block_k}")
        if self.max_registers is not None and (not isinstance(self.max_registers, int)
                                               or not 24 <= self.max_registers <= 255):
            raise ValueError(f"MatmulConfig: `max_registers` must be None or an int in [24, 255], "
                             f"got {self.max_registers!r}")
        if self.tail is not None:
            if not isinstance(self.tail, MatmulConfig):
                raise TypeError(f"MatmulConfig: `tail` must be a MatmulConfig or None, got {type(self.tail).__name__}")
            if self.tail.tail is not None:
                raise ValueError("MatmulConfig: `tail` must not have a tail of its own")
            if self.tail.block_m >= self.block_m:
                raise ValueError(f"MatmulConfig: `tail.block_m` must be smaller than `block_m`={self.block_m}, "
                                 f"got {self.tail.block_m}")
            if self.split_k != 1 or self.tail.split_k != 1:
                raise ValueError("MatmulConfig: a config with a `tail` takes no K split (`split_k` 1 in both)")


def _block_m_for(rows_per_group: float) -> int:
    for bm in ROUTED_BLOCK_M:
        if rows_per_group <= bm:
            return bm
    return ROUTED_BLOCK_M[-1]


def choose_config(rows_per_group: float, n: int, k: int, weight_is_mx: bool, reduction_n: int = 1,
                  variant: str | None = None, interpreter: bool | None = None,
                  nibble_quads: bool = False) -> MatmulConfig:
    """Pick a config for `rows_per_group` rows sharing one weight matrix (tokens per expert, or M);
    `nibble_quads`: the weight is stored in HopperMXValueLayout's nibble-quads order.

    The decode end (few rows per expert) is weight-bandwidth bound: wide K steps, narrow N so that
    enough CTAs stream the weights. The prefill end is MMA bound: 128-row tiles (wgmma on Hopper)
    and grouped tile order so that gathered activations are re-read from L2.
    """
    target = target_info.get_target()
    variant = target.variant if variant is None else variant
    interpreter = target.interpreter if interpreter is None else interpreter
    return _choose(rows_per_group, n, k, bool(weight_is_mx), reduction_n, variant, bool(interpreter), bool(nibble_quads))


@functools.lru_cache(maxsize=4096)  # every eager call asks; the answer depends on these alone
def _choose(rows_per_group: float, n: int, k: int, weight_is_mx: bool, reduction_n: int, variant: str,
            interpreter: bool, nibble_quads: bool) -> MatmulConfig:
    block_m = _block_m_for(rows_per_group)
    min_n = 2 * reduction_n
    if interpreter:
        # Small tiles keep the interpreter (numpy per op) fast.
        return MatmulConfig(block_m=min(block_m, 16), block_n=max(16, min_n), block_k=64 if weight_is_mx else 32,
                            group_m=2, num_warps=4, num_stages=1)
    if variant == "hopper" and weight_is_mx and nibble_quads:
        # Swapped main loop (decoded weight as wgmma's register operand) with the nibble-quads decoder
        # of the default layout; measured on the H100 with benchmarks/sweep_matmul.py
        # (NOTES_matmul_perf.md section 7).
        if 14 < rows_per_group <= 32:
            # Around 16 rows per expert (NOTES section 16; graph-timed sweep, crossover between 12 and
            # 16): 16-row tiles give half the experts a second tile. gate_up takes 32-row tiles with
            # 16-row tails up to 16 rows; down takes 32 x 64 x 256 up to 32 rows.
            if n < 4096:
                return MatmulConfig(32, 64, 256, 1, 4, 3, swap_xw=True, decode="ptx")
            if rows_per_group <= 16:
                return MatmulConfig(32, 64, 128, 4, 4, 3, swap_xw=True, decode="ptx",
                                    tail=MatmulConfig(16, 64, 256, 1, 4, 3, swap_xw=True, decode="ptx"))
        if block_m <= 16:
            return MatmulConfig(block_m, 64, 256, 1, 4, 3, swap_xw=True, decode="ptx")
        if block_m <= 32:
            return MatmulConfig(block_m, 64, 128, 4, 4, 3, swap_xw=True, decode="ptx")
        if block_m <= 64:
            if n >= 4096:  # gate_up: wide N, 8 warps over 128 columns
                return MatmulConfig(block_m, 128, 128, 8, 8, 3, swap_xw=True, decode="ptx")
            return MatmulConfig(block_m, 128, 128, 8, 4, 3, swap_xw=True, decode="ptx")
        # prefill: 128 x 128 tiles with 4 warps around 128 rows per expert, an expert's last chunk of
        # at most 32 rows going to 32-row tiles; beyond, 256-row tiles (wgmma N = 256) decode each
        # weight tile once for twice the rows, and up to ~1k rows an expert's last chunk of at most
        # 64 rows goes to 64-row tiles (graph-timed sweeps, NOTES sections 15 and 16: at 128 rows per
        # expert the 32-row tails gave -5 to -13 %, at 192 they lost to uniform 256-row tiles by ~10 %)
        if rows_per_group > 1024:
            return MatmulConfig(256, 128, 64, 8, 8, 3, swap_xw=True, decode="ptx")
        if rows_per_group > 256:
            return MatmulConfig(256, 128, 64, 8, 8, 3, swap_xw=True, decode="ptx",
                                tail=MatmulConfig(64, 128, 128, 8, 4, 3, swap_xw=True, decode="ptx"))
        if rows_per_group > 160:
            return MatmulConfig(256, 128, 64, 8, 8, 3, swap_xw=True, decode="ptx")
        short = (MatmulConfig(32, 64, 128, 4, 4, 3, swap_xw=True, decode="ptx") if n >= 4096 else
                 MatmulConfig(32, 64, 256, 1, 4, 3, swap_xw=True, decode="ptx"))
        return MatmulConfig(128, 128, 64, 8, 4, 4, swap_xw=True, decode="ptx", tail=short)
    if variant == "hopper" and weight_is_mx:
        # other K-contiguous layouts (transformers' strided values): the inline-PTX word decoder
        if block_m <= 16:
            return MatmulConfig(block_m, 64, 128, 1, 4, 4, swap_xw=True, decode="ptx")
        if block_m <= 32:
            return MatmulConfig(block_m, 64, 128, 4, 4, 3, swap_xw=True, decode="ptx")
        if block_m <= 64:
            return MatmulConfig(block_m, 64, 128, 8, 4, 3, swap_xw=True, decode="ptx")
        if rows_per_group > 128:
            return MatmulConfig(256, 128, 64, 8, 8, 3, swap_xw=True, decode="ptx")
        return MatmulConfig(128, 256, 64, 8, 8, 3, swap_xw=True, decode="ptx")
    if variant in ("hopper", "blackwell"):
        if block_m <= 16:
            return MatmulConfig(block_m, 64, 256 if weight_is_mx else 128, 1, 4, 4)
        if block_m <= 32:
            return MatmulConfig(block_m, 64, 256 if weight_is_mx else 128, 4, 4, 4)
        if block_m <= 64:
            return MatmulConfig(block_m, 128, 128 if weight_is_mx else 64, 8, 4, 3)
        return MatmulConfig(128, 128, 128 if weight_is_mx else 64, 8, 8, 3)
    # Ampere / Ada / Turing: smaller shared memory, mma.sync.
    if block_m <= 32:
        return MatmulConfig(block_m, 64, 128, 4, 4, 3)
    return MatmulConfig(block_m, 128, 64, 8, 4, 3 if variant == "ampere" else 2)


def split_k_for(n_tiles: int, k: int, block_k: int, num_sms: int) -> int:
    """K split for an automatic config: double it while the launch has fewer than two tiles per SM
    (each program's decode is a long dependent chain; more resident programs hide its latency)
    and every split still gets at least four BLOCK_K steps. 1 in the interpreter (num_sms 0).
    H100, gpt-oss decode (NOTES_matmul_perf.md): down 180 tiles -> 2 splits (23.4 -> 17.3 us);
    gate_up 360 tiles -> none (2 splits measured slower)."""
    if num_sms <= 0:
        return 1
    steps = -(-k // block_k)
    split = 1
    while n_tiles * split < 2 * num_sms and steps // (2 * split) >= 4 and split < 8:
        split *= 2
    return split


def prefetch_scales(cfg: MatmulConfig, nibble_quads: bool = False) -> bool:
    """Whether the swapped main loop loads each K step's MX scales one step ahead (byte loads; see
    `scale_words` for the other form). Not with the word decoders (`nibble_quads` False) on 8 warps
    over 256 columns: there the compiled loop (Triton 3.6, sm_90) gave NaN in the second warp
    group's columns (raw layout, 128 x 256 x 64, 3-4 stages, the down projection; cause not found),
    so those configs load in the step. The quads decoders were right with every such config tried
    on the H100 (64 and 128 rows, 2-4 stages, both projections; NOTES_matmul_perf.md section 14)."""
    return nibble_quads or not (cfg.block_n >= 256 and cfg.num_warps >= 8)


def scale_words(cfg: MatmulConfig, layout_allows: bool) -> bool:
    """Whether the swapped main loop reads the MX scales as whole 32-bit words (`_step_scale_words`),
    which the pipeliner multi-buffers like the weights. `layout_allows`: a K-grouped scale layout of
    4 scales per aligned word (the default HopperMXScaleLayout). Only K steps of whole words: with
    64-value steps half a word is picked by a shift per step, and the sm_90 loop grew by 4-24 %
    (offline SASS of the 64-deep configs), so those keep the byte loads."""
    return layout_allows and cfg.swap_xw and cfg.block_k % 128 == 0


def scale_loads(cfg: MatmulConfig, words_layout: bool, nibble_quads: bool) -> tuple[bool, bool]:
    """(S_WORDS, PREFETCH_S) of the swapped main loop for `cfg`: whole scale words where `scale_words`
    allows them (the pipeliner multi-buffers those, so they are not prefetched), else byte loads,
    one step ahead where `prefetch_scales` allows."""
    words = scale_words(cfg, words_layout)
    return words, not words and prefetch_scales(cfg, nibble_quads)


def tail_in_64_steps(cfg: MatmulConfig, k: int) -> bool:
    """Whether the swapped main loop runs the K tail (k % block_k values) as unmasked 64-deep steps
    (TAIL_64) instead of one masked block_k step: where k is whole 64-value blocks and that step
    would decode at least four times the values it uses (gpt-oss, K = 2880 at block_k 256: 64 of
    256). Offline sm_90a SASS per program: -3.7 to -4.2 % at 16 x 64 x 256 and for the down
    projection at 32 x 64 x 256; at block_k 128 (half the step used) -2 to +1 %, so not there."""
    tail = k % cfg.block_k
    return bool(cfg.swap_xw) and tail > 0 and k % 64 == 0 and cfg.block_k >= 4 * tail
