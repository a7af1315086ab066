import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

from triton_kernels import routing as R
from triton_kernels import routing_details, target_info

POISON = 0x7FC0DEAD  # as int32 a value no index/offset takes; as float32 a NaN


def ulp32(x: torch.Tensor) -> torch.Tensor:
    x = x.abs().float()
    return torch.nextafter(x, torch.full_like(x, math.inf)) - x


def assert_weights_close(got, ref):
    """Within one float32 ulp of the reference (NaN where the reference is NaN)."""
    assert got.dtype == torch.float32 and got.shape == ref.shape
    got, ref = got.cpu(), ref.cpu()
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(got), nan), "NaN pattern differs"
    diff = (got - ref).abs()[~nan]
    assert bool((diff <= ulp32(ref)[~nan]).all()), f"max |diff| {diff.max().item()} exceeds 1 ulp"


def assert_routing_equal(got, ref):
    rd, gi, si = got
    rd_ref, gi_ref, si_ref = ref
    for name, a, b in [("gather.src_indx", gi.src_indx, gi_ref.src_indx), ("gather.dst_indx", gi.dst_indx, gi_ref.dst_indx),
                       ("scatter.src_indx", si.src_indx, si_ref.src_indx),
                       ("scatter.dst_indx", si.dst_indx, si_ref.dst_indx),
                       ("expt_hist", rd.expt_hist, rd_ref.expt_hist),
                       ("expt_data.hist", rd.expt_data.hist, rd_ref.expt_data.hist),
                       ("token_offs_raw", rd.expt_data.token_offs_raw, rd_ref.expt_data.token_offs_raw)]:
        assert a.dtype == torch.int32, f"{name}: dtype {a.dtype}"
        assert torch.equal(a.cpu(), b.cpu()), f"{name} differs:\n{a}\n{b}"
    for bm in (16, 32, 64, 128):
        for name, a, b in [("token_offs_pad", rd.expt_data.token_offs_pad[bm], rd_ref.expt_data.token_offs_pad[bm]),
                           ("block_pid_map", rd.expt_data.block_pid_map[bm], rd_ref.expt_data.block_pid_map[bm])]:
            assert a.dtype == torch.int32
            assert torch.equal(a.cpu(), b.cpu()), f"{name}[{bm}] differs:\n{a}\n{b}"
    assert (rd.n_expts_tot, rd.n_expts_act) == (rd_ref.n_expts_tot, rd_ref.n_expts_act)
    assert_weights_close(rd.gate_scal, rd_ref.gate_scal)


def run_both(logits, k, **kw):
    return R.routing(logits, k, **kw), R.routing_torch(logits, k, **kw)


@pytest.fixture(params=["auto", "split", "fused"])
def path(request, monkeypatch):
    """auto: the plan's choice; split: always the two-launch path (T > 1); fused: always the
    single-program path (several row tiles where T is large)."""
    if request.param == "split":
        monkeypatch.setattr(routing_details, "FUSED_MAX_TILES", 0)
    elif request.param == "fused":
        monkeypatch.setattr(routing_details, "FUSED_MAX_TILES", 1 << 30)
    return request.param


def plan_of(logits, k, sm_first=False, simulated_ep=1):
    return routing_details.make_routing_plan(*logits.shape, k, simulated_ep, sm_first,
                                             routing_details._target_programs(), routing_details.FUSED_MAX_TILES,
                                             False, routing_details.ROWS_PATH)


@pytest.fixture
def poisoned_workspace(monkeypatch):
    """Every torch.empty made during routing starts as POISON, so unwritten outputs show."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.dtype == torch.int32:
            t.fill_(POISON)
        return t

    monkeypatch.setattr(routing_details.torch, "empty", empty)


# ----------------------------------------------------------------------------- the reference itself


def naive_routing(logits, k, sm_first=False, expt_indx=None, simulated_ep=1, n_rows=None):
    """Plain-Python loops over float64 values: the routing spec written out literally."""
    T, E = logits.shape
    rows = logits.double().tolist()
    n_local = E // simulated_ep
    n_valid = T if n_rows is None else int(n_rows)
    experts, weights = [], []
    for t, row in enumerate(rows):
        if expt_indx is None:
            ranked = sorted(range(E), key=lambda e: (-row[e], e))
            chosen = sorted(ranked[:k])
        else:
            chosen = [int(v) for v in expt_indx[t].tolist()]
        ok = [t < n_valid and 0 <= e < E for e in chosen]
        if sm_first:
            m = max(row)
            s = sum(math.exp(v - m) for v in row)
            w = [math.exp(row[e] - m) / s if good else 0.0 for e, good in zip(chosen, ok)]
        else:
            vals = [row[e] for e, good in zip(chosen, ok) if good]
            m = max(vals) if vals else 0.0
            s = sum(math.exp(v - m) for v in vals)
            w = [math.exp(row[e] - m) / s if good else 0.0 for e, good in zip(chosen, ok)]
        experts += [e if good else -1 for e, good in zip(chosen, ok)]
        weights += w
    n = len(experts)
    key = [e if e >= 0 else E for e in experts]
    order = sorted(range(n), key=lambda s: (key[s], s))
    topk_indx = [s if key[s] < n_local else -1 for s in order]
    pos = [0] * n
    for p, s in enumerate(order):
        pos[s] = p
    gate_indx = [pos[s] if key[s] < n_local else -1 for s in range(n)]
    gate_scal = [weights[s] for s in order]
    hist = [sum(1 for e in experts if e == x) for x in range(n_local)]
    raw = [0]
    for h in hist:
        raw.append(raw[-1] + h)
    pads, maps = {}, {}
    for bm in (16, 32, 64, 128):
        pad = [0]
        for h in hist:
            pad.append(pad[-1] + (h + bm - 1) // bm)
        tiles = [(b << 16) | e for e in range(n_local) for b in range((hist[e] + bm - 1) // bm)]
        # the bound: every non-empty expert wastes at most one partial tile
        m = min(n, n_local)
        bound = m + (n - m) // bm
        assert len(tiles) <= bound
        pads[bm], maps[bm] = pad, tiles + [-1] * (bound - len(tiles))
    return dict(topk_indx=topk_indx, gate_indx=gate_indx, gate_scal=gate_scal, hist=hist, raw=raw, pads=pads,
                maps=maps)


@pytest.mark.parametrize("case", [
    dict(T=9, E=6, k=2), dict(T=7, E=5, k=5), dict(T=8, E=7, k=1), dict(T=10, E=8, k=3, sm_first=True),
    dict(T=9, E=8, k=2, simulated_ep=2), dict(T=9, E=6, k=3, n_rows=5), dict(T=6, E=9, k=3, user=True),
    dict(T=0, E=4, k=2),
])
def test_routing_torch_matches_naive_loops(case):
    g = torch.Generator().manual_seed(len(str(case)))
    T, E, k = case["T"], case["E"], case["k"]
    logits = torch.randint(-3, 3, (T, E), generator=g).float() + 0.25 * torch.rand(T, E, generator=g).round()
    kw = {key: case[key] for key in ("sm_first", "simulated_ep", "n_rows") if key in case}
    if case.get("user"):
        kw["expt_indx"] = torch.randint(-1, E + 1, (T, k), generator=g)
    rd, gi, si = R.routing_torch(logits, k, **kw)
    ref = naive_routing(logits, k, **kw)
    assert gi.src_indx.tolist() == ref["topk_indx"] and si.dst_indx.tolist() == ref["topk_indx"]
    assert gi.dst_indx.tolist() == ref["gate_indx"] and si.src_indx.tolist() == ref["gate_indx"]
    assert rd.expt_hist.tolist() == ref["hist"]
    assert rd.expt_data.token_offs_raw.tolist() == ref["raw"]
    for bm in (16, 32, 64, 128):
        assert rd.expt_data.token_offs_pad[bm].tolist() == ref["pads"][bm]
        assert rd.expt_data.block_pid_map[bm].tolist() == ref["maps"][bm]
        assert len(rd.expt_data.block_pid_map[bm]) == rd.n_blocks(T * k, bm)
    assert_weights_close(rd.gate_scal, torch.tensor(ref["gate_scal"], dtype=torch.float64).float())


def test_n_blocks_bound_is_tight_and_holds():
    rd = R.RoutingData(torch.zeros(4), torch.zeros(8, dtype=torch.int32), 8, 2)
    assert rd.n_blocks(0, 16) == 0 and rd.n_blocks(5, 16) == 5 and rd.n_blocks(8, 16) == 8
    assert rd.n_blocks(8 + 16 * 3 + 15, 16) == 8 + 3
    g = torch.Generator().manual_seed(0)
    for n in [1, 7, 8, 9, 40, 300]:
        for bm in (16, 32, 64, 128):
            worst = 0
            for _ in range(50):  # random splits of n rows over 8 experts, plus the extreme one
                cuts = sorted(torch.randint(0, n + 1, (7,), generator=g).tolist())
                h = [b - a for a, b in zip([0] + cuts, cuts + [n])]
                worst = max(worst, sum((x + bm - 1) // bm for x in h))
            extreme = [1] * min(7, n - 1) + [n - min(7, n - 1)]
            worst = max(worst, sum((x + bm - 1) // bm for x in extreme))
            assert worst <= rd.n_blocks(n, bm)
            assert sum((x + bm - 1) // bm for x in extreme) == rd.n_blocks(n, bm)  # tight


# ----------------------------------------------------------------------------- Triton == reference


def tie_heavy(T, E, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-4, 4, (T, E), generator=g).float() * 0.5).to(dtype)


CASES = [
    dict(T=37, E=8, k=2),
    dict(T=1, E=8, k=3),
    dict(T=0, E=16, k=4),
    dict(T=23, E=6, k=6),  # E == k
    dict(T=50, E=32, k=1),
    dict(T=45, E=40, k=4, dtype=torch.bfloat16),  # E not a power of two
    dict(T=30, E=64, k=8, dtype=torch.float16),
    dict(T=100, E=256, k=4),  # several row tiles per program
    dict(T=600, E=32, k=8),  # several slot blocks per program in the sort
    dict(T=90, E=128, k=1),  # rows path, 4 threads per row, one pick
    dict(T=70, E=64, k=3, dtype=torch.float16),  # rows path, 4 threads per row, k not a power of two
    dict(T=70, E=32, k=4, sm_first=True, dtype=torch.bfloat16),
    dict(T=40, E=24, k=3, sm_first=True, n_rows=29),
    dict(T=40, E=32, k=4, simulated_ep=4),
    dict(T=33, E=40, k=2, simulated_ep=8, n_rows=17, dtype=torch.bfloat16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()).replace("torch.", ""))
@pytest.mark.parametrize("ties", [False, True])
def test_routing_matches_reference(case, ties, path, device, poisoned_workspace):
    case = dict(case)
    T, E, k, dtype = case.pop("T"), case.pop("E"), case.pop("k"), case.pop("dtype", torch.float32)
    seed = T * 1000 + E * 10 + k
    if ties:
        logits = tie_heavy(T, E, dtype, seed)
    else:
        logits = torch.randn(T, E, generator=torch.Generator().manual_seed(seed)).to(dtype)
    logits = logits.to(device)
    plan = plan_of(logits, k, case.get("sm_first", False), case.get("simulated_ep", 1))
    assert plan.fused == (path == "fused" or T <= 1 or (path == "auto" and plan.fused))
    got, ref = run_both(logits, k, **case)
    assert_routing_equal(got, ref)


def test_every_path_is_exercised(monkeypatch):
    """The CASES above cover: one fused tile, several fused tiles, and the split path with
    several top-k programs of several tiles each, and the rows path (4 threads per row)."""
    seen = set()
    for fused_max, rows_path in [(routing_details.FUSED_MAX_TILES, True), (0, True), (0, False), (1 << 30, True)]:
        for c in CASES:
            plan = routing_details.make_routing_plan(c["T"], c["E"], c["k"], c.get("simulated_ep", 1),
                                                     c.get("sm_first", False), 4, fused_max, False, rows_path)
            if plan.fused:
                seen.add("fused-one-tile" if plan.block_t >= c["T"] else "fused-tiles")
            elif plan.rows_q:
                seen.add(f"rows-q{plan.rows_q}" + ("-multi-program" if plan.n_parts > 1 else ""))
            else:
                seen.add("split-multi-program" if plan.n_parts > 1 else "split-one-program")
                if plan.n_iter > 1:
                    seen.add("split-multi-tile")
                if plan.rows_per_part > plan.place_rows:
                    seen.add("split-multi-place-step")
    assert {"fused-one-tile", "fused-tiles", "split-multi-program", "split-multi-tile",
            "rows-q4-multi-program"} <= seen, seen


PLAN_CASES = [
    dict(T=70, E=24, k=3),
    dict(T=45, E=40, k=4, n_rows=31, simulated_ep=2, dtype=torch.bfloat16),
    dict(T=37, E=16, k=2, sm_first=True, dtype=torch.float16),
    dict(T=29, E=20, k=3, user=True),
]


@pytest.mark.parametrize("variant", ["grouped-place", "small-place-steps", "unpacked-scans", "fused-reg-softmax",
                                     "fused-scratch-softmax", "fused-tiles-small-steps"])
@pytest.mark.parametrize("case", PLAN_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()).replace("torch.", ""))
def test_routing_plan_variants(variant, case, device, poisoned_workspace, monkeypatch):
    """Plan knobs the heuristics may not pick for these shapes (the GPU sweep times them):
    placement programs that each place several top-k programs' rows, placement in steps smaller
    than a top-k program's rows, the placement's unpacked prefix sums, and the one-tile fused path
    with the softmax in registers or after the scratch round trip."""
    import dataclasses
    case = dict(case)
    T, E, k, dtype = case.pop("T"), case.pop("E"), case.pop("k"), case.pop("dtype", torch.float32)
    g = torch.Generator().manual_seed(T * 7 + E)
    logits = torch.randn(T, E, generator=g).to(dtype).to(device)
    if case.pop("user", False):
        idx = torch.randint(-1, E + 2, (T, k), generator=g)
        idx[4] = torch.tensor([5, 5, 1])
        case["expt_indx"] = idx.to(device)
    ep, smf = case.get("simulated_ep", 1), case.get("sm_first", False)
    if variant == "grouped-place":
        plan = routing_details._split_plan(T, E, k, ep, 4, 2, 2, 3, 1)
        assert plan.n_parts > 3 and plan.n_place_programs < plan.n_parts
    elif variant == "small-place-steps":
        plan = dataclasses.replace(routing_details._split_plan(T, E, k, ep, 8, 2, 2, 2, 1), place_rows=4)
    elif variant == "unpacked-scans":  # the placement's prefix sums one by one (packed wherever they fit)
        plan = routing_details.make_routing_plan(T, E, k, ep, smf, 4, 0, "expt_indx" in case)
        assert plan.packed_scans and not plan.fused
        plan = dataclasses.replace(plan, packed_scans=False)
    else:
        plan = routing_details.make_routing_plan(T, E, k, ep, smf, 4, 1 << 30)
        assert plan.fused
        if variant == "fused-tiles-small-steps":
            plan = dataclasses.replace(plan, block_t=8, place_rows=4)
        else:
            assert plan.block_t >= T
            plan = dataclasses.replace(plan, reg_softmax=variant == "fused-reg-softmax", place_rows=16)
    monkeypatch.setattr(routing_details, "make_routing_plan", lambda *a, **kw: plan)
    assert_routing_equal(*run_both(logits, k, **case))


@pytest.mark.parametrize("lanes", [True, False], ids=["lane-counts", "byte-counts"])
@pytest.mark.parametrize("case", [dict(T=70, E=64, k=3), dict(T=45, E=128, k=4, n_rows=31, simulated_ep=2)])
def test_routing_rows_path_grouped_placement(case, lanes, device, poisoned_workspace, monkeypatch):
    """The rows path with placement programs that each place several top-k programs' rows (the
    byte counts rows advanced part by part), with the counts prefix summed in 16-bit lanes (below
    2^16 tokens) or byte by byte."""
    import dataclasses
    case = dict(case)
    T, E, k = case.pop("T"), case.pop("E"), case.pop("k")
    plan = routing_details._rows_plan(T, E, k, case.get("simulated_ep", 1), 16, routing_details.ROWS_Q, 4, 2)
    assert plan.rows_q and plan.n_parts > 2 and plan.n_place_programs < plan.n_parts and plan.lane_counts
    plan = dataclasses.replace(plan, lane_counts=lanes)
    monkeypatch.setattr(routing_details, "make_routing_plan", lambda *a, **kw: plan)
    logits = torch.randn(T, E, generator=torch.Generator().manual_seed(T + E)).to(torch.bfloat16).to(device)
    assert_routing_equal(*run_both(logits, k, **case))


def test_rows_plan_lane_counts_only_below_2_16_tokens():
    """An expert's count summed in a 16-bit lane must stay below 2^16: at most one slot per token."""
    for T, lanes in [(65535, True), (65536, False)]:
        plan = routing_details.make_routing_plan(T, 128, 4, 1, False, 132)
        assert plan.rows_q and plan.lane_counts == lanes, (T, plan)


ONE_LAUNCH_CASES = [dict(T=100, E=64, k=4), dict(T=45, E=128, k=4, n_rows=31, simulated_ep=2), dict(T=20, E=256, k=8),
                    dict(T=128, E=64, k=1, dtype=torch.float32), dict(T=70, E=100, k=3, n_rows="tensor")]


@pytest.mark.parametrize("case", ONE_LAUNCH_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_routing_one_launch_single_program(case, device, poisoned_workspace, monkeypatch, request):
    """The rows path's one-launch form (grid barrier, then each program places its own slots and
    shares ExptData) with one program: the interpreter runs programs one after the other, so
    several can only meet at a barrier on a GPU (the GPU tests below). The counter ends each
    call a multiple of the stride: it is never reset."""
    from triton_kernels.routing_details._kernels import GRID_BARRIER_STRIDE
    case = dict(case)
    T, E, k, dtype = case.pop("T"), case.pop("E"), case.pop("k"), case.pop("dtype", torch.bfloat16)
    counter = torch.zeros(4, dtype=torch.int32, device=device)
    monkeypatch.setattr(routing_details, "_target_programs", lambda: 1)
    monkeypatch.setattr(routing_details, "_one_launch_programs", lambda: 1)
    monkeypatch.setattr(routing_details, "ONE_LAUNCH_MAX_WARPS", 16)  # one program of up to 128 rows
    monkeypatch.setattr(routing_details, "barrier_counter", lambda *a: counter[:1])
    routing_details.make_routing_plan.cache_clear()  # plans made under the switches above stay here
    request.addfinalizer(routing_details.make_routing_plan.cache_clear)  # ... and go with them, pass or fail
    logits = torch.randn(T, E, generator=torch.Generator().manual_seed(T * E)).to(dtype).to(device)
    if case.get("n_rows") == "tensor":
        case["n_rows"] = torch.tensor(T - 20, device=device)
    plan = routing_details.make_routing_plan(T, E, k, case.get("simulated_ep", 1), False, 1,
                                             routing_details.FUSED_MAX_TILES, False, True, 1)
    assert plan.one_launch and plan.n_parts == 1 and plan.rows_q
    for calls in (1, 2):
        assert_routing_equal(*run_both(logits, k, **case))
        assert counter.tolist() == [calls * GRID_BARRIER_STRIDE.value, 0, 0, 0]


def test_routing_one_launch_falls_back_to_two_launches_without_a_counter(device, poisoned_workspace, monkeypatch):
    launched = []
    real_launch = routing_details._launch
    monkeypatch.setattr(routing_details, "_launch", lambda fn, *a, **kw: (launched.append(fn.__name__),
                                                                          real_launch(fn, *a, **kw)))
    monkeypatch.setattr(routing_details, "_target_programs", lambda: 1)
    monkeypatch.setattr(routing_details, "_one_launch_programs", lambda: 1)
    logits = torch.randn(20, 64, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).to(device)
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    for available, kernels in [(True, ["routing_rows_kernel"]), (False, ["routing_rows_kernel", "routing_place_kernel"])]:
        monkeypatch.setattr(routing_details, "barrier_counter", lambda *a: counter if available else None)
        launched.clear()
        assert_routing_equal(*run_both(logits, 4))
        assert launched == kernels


def test_routing_cooperative_launch_refused_falls_back_for_good(device, poisoned_workspace, monkeypatch):
    """Where the driver refuses the cooperative launch (what Triton's launcher raises for
    CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE), the call warns and is redone in two launches, with the
    right result; later calls take two launches without trying again. Other errors are raised."""
    from triton_kernels import target_info
    monkeypatch.setattr(routing_details, "_COOPERATIVE_REFUSED", False)
    monkeypatch.setattr(target_info, "cooperative_grid", lambda: True)
    monkeypatch.setattr(target_info, "num_sms", lambda: 1)
    monkeypatch.setattr(routing_details, "_target_programs", lambda: 1)
    launched = []
    real_launch = routing_details._launch

    def launch(fn, *args, cooperative=False, **kwargs):
        launched.append((fn.__name__, cooperative))
        if cooperative:
            raise RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch")
        return real_launch(fn, *args, cooperative=cooperative, **kwargs)

    monkeypatch.setattr(routing_details, "_launch", launch)
    logits = torch.randn(20, 64, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16).to(device)
    with pytest.warns(RuntimeWarning, match="refused a cooperative launch"):
        assert_routing_equal(*run_both(logits, 4))
    assert launched == [("routing_rows_kernel", True), ("routing_rows_kernel", False), ("routing_place_kernel", False)]
    launched.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert_routing_equal(*run_both(logits, 4))
    assert not [w for w in seen if "cooperative" in str(w.message)]
    assert launched == [("routing_rows_kernel", False), ("routing_place_kernel", False)]
    # any other error of the cooperative launch is raised as it is, and changes nothing
    monkeypatch.setattr(routing_details, "_COOPERATIVE_REFUSED", False)
    monkeypatch.setattr(routing_details, "_launch", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):
        routing_details.routing_triton(logits, 4, False, None, 1, None)
    assert not routing_details._COOPERATIVE_REFUSED


def test_routing_all_tokens_on_one_expert(path, device, poisoned_workspace):
    logits = torch.randn(150, 32, generator=torch.Generator().manual_seed(3))
    logits[:, 5] += 100.0
    logits = logits.to(device)
    got, ref = run_both(logits, 1)
    assert_routing_equal(got, ref)
    assert got[0].expt_hist.tolist() == [150 if e == 5 else 0 for e in range(32)]
    # 150 rows on expert 5 -> ceil(150 / 16) = 10 tiles, numbered 0..9, then -1
    m = got[0].expt_data.block_pid_map[16].cpu()
    assert m[:10].tolist() == [(b << 16) | 5 for b in range(10)] and bool((m[10:] == -1).all())


def test_routing_one_split_program_of_several_tiles(device, poisoned_workspace, monkeypatch):
    # the split path with one top-k program looping over several row tiles (and one placement program)
    monkeypatch.setattr(routing_details, "_target_programs", lambda: 1)
    monkeypatch.setattr(routing_details, "FUSED_MAX_TILES", 0)
    monkeypatch.setattr(routing_details, "ROWS_PATH", False)  # the rows path has one tile per program
    logits = torch.randn(150, 64, generator=torch.Generator().manual_seed(4)).to(device)
    plan = plan_of(logits, 4)
    assert not plan.fused and plan.n_parts == 1 and plan.n_iter > 1
    assert_routing_equal(*run_both(logits, 4))


def test_routing_strided_logits(device, poisoned_workspace):
    big = torch.randn(60, 50, generator=torch.Generator().manual_seed(8)).to(device)
    logits = big[::2, 1::2]  # row and column strides != (E, 1)
    assert not logits.is_contiguous()
    assert_routing_equal(*run_both(logits, 3))
    assert_routing_equal(*run_both(big.t(), 2, sm_first=True))


@pytest.mark.parametrize("shape", [(12, 10), (130, 64)])  # (130, 64): the rows path, split
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])  # int64 / packed int32 keys
@pytest.mark.parametrize("sm_first", [False, True])
def test_routing_nan_and_inf_rows_behave_like_torch(sm_first, dtype, shape, path, device, poisoned_workspace):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(9))
    logits[2] = float("-inf")  # all picks -inf: NaN weights, as torch.softmax gives
    logits[3, :8] = float("nan")  # NaN ranks last, so it is picked only when it must be
    logits[4, 5] = float("inf")
    logits[5, ::2] = -0.0
    logits[5, 1::2] = 0.0
    got, ref = run_both(logits.to(dtype).to(device), 3, sm_first=sm_first)
    assert_routing_equal(got, ref)
    assert torch.isnan(got[0].gate_scal).any()


def test_routing_all_equal_logits(device, poisoned_workspace):
    logits = torch.zeros(20, 12, device=device)
    got, ref = run_both(logits, 3)
    assert_routing_equal(got, ref)
    assert got[0].expt_hist.tolist() == [20, 20, 20] + [0] * 9  # ties -> lowest experts
    assert_weights_close(got[0].gate_scal, torch.full((60,), 1 / 3))


def test_routing_n_rows_as_device_scalar(path, device, poisoned_workspace):
    logits = torch.randn(40, 16, generator=torch.Generator().manual_seed(5)).to(device)
    n_rows = torch.tensor([25], dtype=torch.int32, device=device)
    got, ref = run_both(logits, 4, n_rows=n_rows)
    assert_routing_equal(got, ref)
    assert int(got[0].expt_hist.sum()) == 25 * 4
    assert bool((got[1].dst_indx[25 * 4:] == -1).all()) and bool((got[1].src_indx[25 * 4:] == -1).all())
    assert bool((got[0].gate_scal[25 * 4:] == 0).all())
    got0, ref0 = run_both(logits, 4, n_rows=0)
    assert_routing_equal(got0, ref0)
    assert int(got0[0].expt_hist.sum()) == 0


@pytest.mark.parametrize("sm_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16])
def test_routing_user_expt_indx(sm_first, dtype, path, device, poisoned_workspace):
    g = torch.Generator().manual_seed(11)
    T, E, k = 30, 20, 3
    logits = torch.randn(T, E, generator=g).to(device)
    expt_indx = torch.randint(0, E, (T, k), generator=g)
    expt_indx[3, 1] = -1  # routes nowhere
    expt_indx[4, 0] = E + 5  # out of range: routes nowhere
    expt_indx[5] = torch.tensor([7, 7, 2])  # duplicates count twice, order is kept
    expt_indx = expt_indx.to(dtype).to(device)
    got, ref = run_both(logits, k, expt_indx=expt_indx, sm_first=sm_first)
    assert_routing_equal(got, ref)
    rd, gi, _ = got
    assert int(rd.expt_hist.sum()) == T * k - 2
    assert gi.dst_indx[3 * k + 1].item() == -1 and gi.dst_indx[4 * k].item() == -1
    # slot j of a row is the row's j-th given index: check through the sorted order
    sorted_expts = torch.repeat_interleave(torch.arange(E), rd.expt_hist.cpu())
    assert torch.equal(expt_indx.long().cpu().reshape(-1)[gi.src_indx[: T * k - 2].long().cpu()], sorted_expts)


def test_routing_simulated_ep_mirrors_transformers_dist(monkeypatch):
    """transformers' expert-parallel routing (rank 0 of S) builds the same objects as simulated_ep=S."""
    mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    import triton_kernels

    S, T, E, k = 4, 30, 32, 4
    logits = torch.randn(T, E, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(mxfp4, "triton_kernels_hub", triton_kernels, raising=False)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **kw: S)
    monkeypatch.setenv("LOCAL_RANK", "0")
    real_histc = torch.histc
    # CPU histc has no integer kernel (CUDA has); count in float and keep the integer dtype
    monkeypatch.setattr(torch, "histc", lambda x, *a, **kw: real_histc(x.double(), *a, **kw).to(x.dtype))
    dist = mxfp4.routing_torch_dist(logits, k)
    ours = R.routing_torch(logits, k, simulated_ep=S)
    assert isinstance(dist[0], R.RoutingData) and isinstance(dist[0].expt_data, R.ExptData)
    rd_d, gi_d, si_d = dist
    rd_o, gi_o, si_o = ours
    assert torch.equal(gi_o.src_indx, gi_d.src_indx) and torch.equal(gi_o.dst_indx, gi_d.dst_indx)
    assert torch.equal(si_o.src_indx, si_d.src_indx) and torch.equal(si_o.dst_indx, si_d.dst_indx)
    assert torch.equal(rd_o.expt_hist, rd_d.expt_hist.int()) and rd_o.n_expts_tot == rd_d.n_expts_tot == E // S
    for bm in (16, 32, 64, 128):
        assert torch.equal(rd_o.expt_data.token_offs_pad[bm], rd_d.expt_data.token_offs_pad[bm])
        assert torch.equal(rd_o.expt_data.block_pid_map[bm], rd_d.expt_data.block_pid_map[bm])
        assert rd_d.n_blocks(T * k, bm) == len(rd_d.expt_data.block_pid_map[bm])
    assert torch.equal(rd_o.expt_data.token_offs_raw, rd_d.expt_data.token_offs_raw)
    torch.testing.assert_close(rd_o.gate_scal, rd_d.gate_scal.float(), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- compute_expt_data


@pytest.mark.parametrize("n_expts,n_gates,dtype", [(8, 100000, torch.int32), (40, 500, torch.float32),
                                                   (5, 0, torch.int64), (300, 1000, torch.int32),
                                                   (16, 50, torch.int32)])  # hist sums past n_gates
def test_compute_expt_data_matches_torch(n_expts, n_gates, dtype, device, poisoned_workspace):
    g = torch.Generator().manual_seed(n_expts)
    if n_gates == 50:  # more rows than the maps are sized for: they hold the first tiles, no overflow
        # (interpreted, one program rewrites what an overflow clobbered; the GPU tests race it)
        hist = torch.randint(0, 90, (n_expts,), generator=g)
    elif n_gates:
        hist = torch.bincount(torch.randint(0, n_expts, (n_gates,), generator=g) ** 2 % n_expts, minlength=n_expts)
    else:
        hist = torch.zeros(n_expts, dtype=torch.int64)
    hist = hist.to(dtype).to(device)
    got = R.compute_expt_data(hist, n_expts, n_gates)
    ref = R.compute_expt_data_torch(hist, n_expts, n_gates)
    assert torch.equal(got.hist.cpu(), ref.hist.cpu()) and got.hist.dtype == torch.int32
    assert torch.equal(got.token_offs_raw.cpu(), ref.token_offs_raw.cpu())
    for bm in (16, 32, 64, 128):
        assert torch.equal(got.token_offs_pad[bm].cpu(), ref.token_offs_pad[bm].cpu())
        assert torch.equal(got.block_pid_map[bm].cpu(), ref.block_pid_map[bm].cpu()), bm


def test_fallback_warns_and_uses_reference(monkeypatch):
    monkeypatch.setenv("TRITON_KERNELS_VARIANT", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    target_info.reset()
    try:
        logits = torch.randn(10, 8)
        with pytest.warns(RuntimeWarning, match="triton_kernels.routing: using the torch reference"):
            got = R.routing(logits, 2)
        assert_routing_equal(got, R.routing_torch(logits, 2))
    finally:
        target_info.reset()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [R.routing, R.routing_torch])
def test_bad_input_is_named(fn):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="`n_expts_act` must be between 1 and"):
        fn(x, 9)
    with pytest.raises(ValueError, match="`n_expts_act` must be between 1 and"):
        fn(x, 0)
    with pytest.raises(TypeError, match="`n_expts_act` must be an int"):
        fn(x, 2.0)
    with pytest.raises(ValueError, match="`logits` must be 2-D"):
        fn(torch.randn(2, 4, 8), 2)
    with pytest.raises(TypeError, match="`logits` must be float32, bfloat16 or float16"):
        fn(torch.randint(0, 5, (4, 8)), 2)
    with pytest.raises(TypeError, match="`logits` must be a torch.Tensor"):
        fn([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match=r"`expt_indx` must have shape \[n_tokens, k\]"):
        fn(x, 2, expt_indx=torch.zeros(4, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match="`expt_indx` must be int16, int32 or int64"):
        fn(x, 2, expt_indx=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="`simulated_ep` must be >= 1 and divide"):
        fn(x, 2, simulated_ep=3)
    with pytest.raises(TypeError, match="`n_rows` must be an int or a one-element integer tensor"):
        fn(x, 2, n_rows=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="`n_rows` must be >= 0"):
        fn(x, 2, n_rows=-1)
    with pytest.raises(TypeError, match="`sm_first` must be a bool"):
        fn(x, 2, sm_first=1)


def test_compute_expt_data_bad_input():
    with pytest.raises(ValueError, match="`hist` must be 1-D with n_expts_tot=4"):
        R.compute_expt_data_torch(torch.zeros(5, dtype=torch.int32), 4, 10)
    with pytest.raises(ValueError, match="`n_gates` must be a non-negative int"):
        R.compute_expt_data(torch.zeros(4, dtype=torch.int32), 4, -1)
    with pytest.raises(TypeError, match="`hist` must be a torch.Tensor"):
        R.compute_expt_data([1, 2], 2, 3)


# ----------------------------------------------------------------------------- compiled for a real GPU

_COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton_kernels.topk_details import topk_kernel
from triton_kernels.routing_details._kernels import (routing_fused_kernel, routing_topk_kernel,
                                                     routing_place_kernel, routing_rows_kernel, expt_data_kernel)

def build(fn, types, consts, num_warps):
    sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in fn.arg_names}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": num_warps})

ptrs = {"x_ptr": "*bf16", "user_ptr": "*i32", "ws_ptr": "*i32", "n_rows_ptr": "*i64"}
for user, smf in [(False, False), (True, True)]:
    consts = dict(K=4, K_PAD=4, E_PAD=128, SM_FIRST=smf, USER_INDX=user, N_ROWS_FROM_PTR=True, PACK32=not user)
    if not user:
        consts["user_ptr"] = None
    build(routing_topk_kernel, ptrs, dict(consts, BLOCK_T=32), 8)
    for one, bt, nw, reg in [(True, 1, 1, True), (True, 64, 8, False), (True, 64, 8, True), (False, 16, 2, False)]:
        build(routing_fused_kernel, ptrs, dict(consts, BLOCK_T=bt, PLACE_ROWS=64, TILE_BLOCK=32, ONE_TILE=one,
                                               REG_SOFTMAX=reg), nw)
    tk = dict(K=4, K_PAD=4, E_PAD=128, BLOCK_T=16, APPLY_SOFTMAX=True, USER_INDX=user, N_ROWS_FROM_PTR=True,
              WRITE_BITS=user, PACK32=user)
    if not user:
        tk["user_ptr"] = None
        tk["bits_ptr"] = None
    build(topk_kernel, {"x_ptr": "*bf16", "user_ptr": "*i32", "vals_ptr": "*bf16", "indx_ptr": "*i16",
                        "bits_ptr": "*u32", "n_rows_ptr": "*i64"}, tk, 8)
    build(routing_place_kernel, {"ws_ptr": "*i32"}, dict(K=4, K_PAD=4, E_PAD=128, PART_ROWS=32, PLACE_ROWS=128,
                                                         TILE_BLOCK=32, SOFTMAX=not smf, USER_INDX=user,
                                                         COUNTS8=not user, USE_PDL=not user,
                                                         PACKED_SCANS=not user, LANE_COUNTS=not user,
                                                         ONE_STEP=not user), 4)
for dt, e, k, rows, q, one in [("*bf16", 128, 4, 128, 4, True), ("*fp32", 40, 3, 16, 1, False),
                               ("*fp16", 256, 8, 32, 4, True), ("*bf16", 128, 4, 128, 4, False)]:
    build(routing_rows_kernel, {"x_ptr": dt, "ws_ptr": "*i32", "n_rows_ptr": "*i64", "bar_ptr": "*i32"},
          dict(K=k, K_PAD=1 << (k - 1).bit_length(), E_PAD=max(32, 1 << (e - 1).bit_length()), ROWS=rows, Q=q,
               N_ROWS_FROM_PTR=True, PACK32=dt != "*fp32", FULL_E=e == 128, RANK_BLOCK=16 if e == 40 else 128,
               USE_PDL=q == 4 and not one, ONE_LAUNCH=one, PART_ROWS=64 if one else 1, TILE_BLOCK=8,
               PACKED_SCANS=one, LANE_COUNTS=one),
          max(1, rows * q // 32))
build(expt_data_kernel, {"hist_in_ptr": "*i32", "ws_ptr": "*i32"}, dict(E_PAD=32, TILE_BLOCK=128), 4)
print("compiled")
"""


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_without_interpreter(args: list[str]) -> subprocess.CompletedProcess:
    """`python <args>` with the repository on the path and TRITON_INTERPRET unset, so Triton compiles
    for real (sm_90a with the ptxas it ships; skipped where Triton has no NVIDIA backend)."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:  # pragma: no cover - triton without the NVIDIA backend
        pytest.skip("triton has no NVIDIA backend here")
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the kernels themselves")
def test_kernels_compile_for_hopper():
    """The interpreter accepts things the compiler does not: build the kernels for sm_90 (ptxas included)."""
    out = _run_without_interpreter(["-c", _COMPILE_SCRIPT])
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]


def test_rows_path_hopper_build_keeps_its_layouts():
    """benchmarks/sass_routing.py on the 16384 x 128 rows path (sm_90a, the launch's specialization):
    no spills in either kernel, and the rows kernel's slot stores keep the slot domain's layout
    (8 CTA barriers; permuted slot addresses made Triton move each store's pointers and values
    through shared memory: 16, measured 0.2-0.3 us slower on the H100)."""
    import re

    out = _run_without_interpreter([os.path.join(_ROOT, "benchmarks", "sass_routing.py"), "--lines", "0"])
    assert out.returncode == 0, out.stderr[-3000:]
    found = dict(re.findall(r"^(routing_\w+): .*? (\d+) CTA barriers, regs \d+, stack 0, local 0$", out.stdout, re.M))
    assert set(found) == {"routing_rows_kernel", "routing_place_kernel"}, out.stdout  # both built, no spills
    assert int(found["routing_rows_kernel"]) <= 8, out.stdout


# ----------------------------------------------------------------------------- GPU, full sizes


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 7, 4096, 16384, 65536])
@pytest.mark.parametrize("E,k", [(32, 4), (128, 4), (256, 8), (128, 1), (8, 8)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_routing_gpu_full_sizes(T, E, k, dtype):
    logits = torch.randn(T, E, device="cuda", dtype=torch.float32).to(dtype)
    assert_routing_equal(*run_both(logits, k))
    ties = (torch.randint(-3, 3, (T, E), device="cuda").float() * 0.5).to(dtype)
    assert_routing_equal(*run_both(ties, k))


@pytest.mark.gpu
@pytest.mark.parametrize("T,E,k", [(65536, 256, 8), (16384, 128, 4), (3000, 40, 3)])
def test_routing_gpu_options(T, E, k):
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(T, E, device="cuda", generator=g).to(torch.bfloat16)
    assert_routing_equal(*run_both(logits, k, sm_first=True))
    assert_routing_equal(*run_both(logits, k, simulated_ep=4 if E % 4 == 0 else 2))
    n_rows = torch.tensor(T // 3, device="cuda")
    assert_routing_equal(*run_both(logits, k, n_rows=n_rows))
    assert_routing_equal(*run_both(logits, k, n_rows=T // 2, simulated_ep=2, sm_first=True))
    idx = torch.randint(-1, E, (T, k), device="cuda", generator=g, dtype=torch.int32)
    assert_routing_equal(*run_both(logits, k, expt_indx=idx))
    hot = logits.clone()
    hot[:, 3] = 1000
    assert_routing_equal(*run_both(hot, k))
    hist = torch.randint(0, 9000, (E,), device="cuda", generator=g, dtype=torch.int32)
    got, ref = R.compute_expt_data(hist, E, T * k), R.compute_expt_data_torch(hist, E, T * k)
    for bm in (16, 32, 64, 128):
        assert torch.equal(got.block_pid_map[bm], ref.block_pid_map[bm])
        assert torch.equal(got.token_offs_pad[bm], ref.token_offs_pad[bm])


@pytest.mark.gpu
@pytest.mark.parametrize("T", [65535, 65536])
def test_routing_gpu_one_expert_in_every_row(T):
    """Every token routed to expert 5: its count is T, the most a 16-bit lane of the counts prefix
    holds at T = 65535 (the byte counts are summed in bytes from T = 65536 on)."""
    logits = torch.randn(T, 128, device="cuda").to(torch.bfloat16)
    logits[:, 5] = 100
    got, ref = run_both(logits, 4)
    assert_routing_equal(got, ref)
    assert int(ref[0].expt_hist[5]) == T


@pytest.mark.gpu
def test_routing_gpu_one_launch_where_the_grid_fits():
    """The full-size tests above run the one-launch path where the rows path has at most one program
    per SM of at most ONE_LAUNCH_MAX_WARPS warps, and two launches beyond."""
    for T, E, one in [(4096, 128, True), (4096, 256, True), (16384, 128, False), (65536, 128, False)]:
        plan = routing_details.make_routing_plan(T, E, 4, 1, False, routing_details._target_programs(),
                                                 routing_details.FUSED_MAX_TILES, False, True,
                                                 routing_details._one_launch_programs())
        assert plan.rows_q and plan.one_launch == one, (T, E, plan)


@pytest.mark.gpu
def test_routing_gpu_one_launch_concurrent_streams():
    """Eager one-launch calls on two streams at once: each stream has its own barrier counter."""
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    logits = [torch.randn(4096, 128, device="cuda").to(torch.bfloat16) for _ in streams]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    outs = [[], []]
    for _ in range(10):
        for i, s in enumerate(streams):
            with torch.cuda.stream(s):
                outs[i].append(R.routing(logits[i], 4))
    torch.cuda.synchronize()
    for i in range(2):
        ref = R.routing_torch(logits[i], 4)
        for out in outs[i]:
            assert_routing_equal(out, ref)


@pytest.mark.gpu
def test_routing_gpu_capture_before_any_eager_call_takes_two_launches(monkeypatch):
    """A capture on a device whose counter pool does not exist yet cannot zero one: that call
    takes two launches and replays right."""
    from triton_kernels import _grid_counters as gc
    monkeypatch.setattr(gc, "_POOLS", {})  # as in a fresh process
    static = torch.randn(4096, 128, device="cuda").to(torch.bfloat16)
    with monkeypatch.context() as m:  # compile the two launches outside the capture, without making the pool
        m.setattr(routing_details, "barrier_counter", lambda *a: None)
        R.routing(static, 4)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = R.routing(static, 4)
    assert gc._POOLS == {}
    fresh = torch.randn(4096, 128, device="cuda").to(torch.bfloat16)
    static.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    assert_routing_equal(out, R.routing_torch(fresh, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("T,E,k,dtype", [(16384, 128, 4, torch.bfloat16), (4096, 128, 4, torch.bfloat16),
                                         (64, 32, 4, torch.float32),
                                         (65536, 256, 8, torch.bfloat16)])
def test_routing_cuda_graph_replays_with_new_logits(T, E, k, dtype):
    static = torch.randn(T, E, device="cuda").to(dtype)
    n_rows = torch.tensor(T, device="cuda", dtype=torch.int32)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile and warm up outside the capture
        for _ in range(2):
            R.routing(static, k)
            R.routing(static, k, n_rows=n_rows)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = R.routing(static, k)
        out_rows = R.routing(static, k, n_rows=n_rows)
    for trial in range(3):
        fresh = torch.randn(T, E, device="cuda").to(dtype)
        if trial == 2:
            fresh[:, 1] = 50  # a very different distribution
        static.copy_(fresh)
        n_rows.fill_(T - 17 * trial)
        graph.replay()
        torch.cuda.synchronize()
        assert_routing_equal(out, R.routing_torch(fresh, k))
        assert_routing_equal(out_rows, R.routing_torch(fresh, k, n_rows=T - 17 * trial))
