"""Triton kernel behind `topk.topk` and the first half of `routing.routing`.

One kernel, `_topk_kernel`, reads a [T, E] logits tile per program and, per row:

1. turns every logit into an int32 order key: the fp32 bit pattern made monotone as a signed
   int (-0.0 is folded onto +0.0 and NaN onto the lowest key), so integer order is torch's
   sort order;
2. packs the column into the key's low bits (13 bits for 16-bit logits, whose fp32 keys leave
   them zero; int64 keys for float32 logits), so each of the k picks is ONE `tl.max` — the
   largest value at its lowest column, exactly `argsort(-x, stable=True)[:, :k]` — and the
   picked key (distinct within its row) is then marked as gone (below every real key);
3. decodes the picked logits from the keys, applies the softmax in float64 (over the k picks,
   or over the whole row for `sm_first`), and ranks the picks by expert id so every row's k
   choices come out sorted by expert;
4. optionally writes the row's bitmatrix words (bit e of the row is set when expert e is picked).

The per-tile work is `select_tile`, which routing's kernels reuse (they add ranks and counts).
`_rowwise.row_topk` is the other layout, used by routing's rows path: each row's columns are
walked by Q threads only, each keeping its k largest keys by insertion (no cross-lane work per
key), merged at the end by a bitonic merge over the Q lanes.

With user indices (`expt_indx` / `y_indx`) step 2 is replaced by a load of the given indices;
they keep their order within the row and anything outside [0, E) routes nowhere.
"""

from ._topk_kernel import MAX_EXPERTS, TopkConfig, make_topk_config, select_tile, topk_kernel

__all__ = ["MAX_EXPERTS", "select_tile", "TopkConfig", "make_topk_config", "topk_kernel"]
