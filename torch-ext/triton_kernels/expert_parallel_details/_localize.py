"""One launch that restricts a global routing (all E experts) to the experts [lo, hi) of one rank.

The global sort orders slots by (expert, slot), so the slots of experts [lo, hi) are the
contiguous run of sorted positions [start, end) = [token_offs_raw[lo], token_offs_raw[hi]).
Locally they move to positions [0, end - start) in the same order (exactly where transformers'
`routing_torch_dist` puts them); the other positions read -1 (weight 0), and each slot's position
is shifted by -start when it is local, -1 otherwise. start and end are read on the device: no
host synchronisation, every size comes from shapes, so the launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _localize_kernel(topk_out, gate_out, scal_out, topk_in, gate_in, scal_in, offs_ptr, lo, hi, n_slots,
                     BLOCK: tl.constexpr):
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = p < n_slots
    start = tl.load(offs_ptr + lo)
    end = tl.load(offs_ptr + hi)
    local_pos = inside & (p < end - start)
    src = tl.load(topk_in + start + p, mask=local_pos, other=-1)
    tl.store(topk_out + p, src, mask=inside)
    w = tl.load(scal_in + start + p, mask=local_pos, other=0.0)
    tl.store(scal_out + p, w, mask=inside)
    g = tl.load(gate_in + p, mask=inside, other=-1)
    mine = (g >= start) & (g < end)
    tl.store(gate_out + p, tl.where(mine, g - start, -1), mask=inside)


def localize_routing_triton(topk_indx: torch.Tensor, gate_indx: torch.Tensor, gate_scal: torch.Tensor,
                            token_offs_raw: torch.Tensor, lo: int, hi: int):
    """(topk_indx, gate_indx, gate_scal) of the local experts [lo, hi); inputs are the global ones
    (int32, int32, float32, all T*k long; token_offs_raw int32 [E + 1])."""
    n = topk_indx.numel()
    buf = torch.empty((3, n), dtype=torch.int32, device=topk_indx.device)
    topk_out, gate_out, scal_out = buf[0], buf[1], buf[2].view(torch.float32)
    if n:
        block = 1024 if n >= 1024 else max(16, triton.next_power_of_2(n))
        _localize_kernel[(triton.cdiv(n, block),)](
            topk_out, gate_out, scal_out, topk_indx, gate_indx, gate_scal, token_offs_raw, lo, hi, n,
            BLOCK=block, num_warps=4)
    return topk_out, gate_out, scal_out
