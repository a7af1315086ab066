"""_fast_launch: the key of a direct relaunch (CPU, pure Python), the relaunch mechanism with a
stand-in for Triton's JIT (CPU), and matmul_ogs through the fast path against the JIT path (GPU)."""

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from triton_kernels import _fast_launch as fl


def _kernel(X, n, scale, Y, BLOCK: tl.constexpr, FLAG: tl.constexpr = False):
    pass


KERNEL = JITFunction(_kernel)  # a real JITFunction (never compiled here): its parameters drive the key


def key_of(*args, fn=KERNEL, device=0, **kwargs):
    """The key within fn's cache (each kernel has its own: test_each_kernel_has_its_own_compiled_kernels)."""
    return fl._specialization_key(fn, fl._params_of(fn).bind(args, kwargs), device)


X = torch.zeros(64, dtype=torch.bfloat16)


def test_key_is_equal_for_the_same_specialization():
    base = key_of(X, 32, 1.0, X[8:], 64, num_warps=4)
    assert key_of(X[16:], 48, 2.5, X, 64, num_warps=4) == base  # other aligned pointers, other multiple of 16
    assert key_of(X, 32, 1.0, X[8:], BLOCK=64, num_warps=4) == base  # constexpr by name
    assert key_of(X, 32, 1.0, X[8:], 64, False, num_warps=4) == base  # a default given explicitly


def _apply_change(change: str, args: list, kwargs: dict) -> None:
    """Change one of KERNEL's launch values as `change` names (args[4]: BLOCK given positionally)."""
    if change == "misaligned pointer":
        args[3] = X[1:]
    elif change == "other dtype":
        args[3] = X[8:].view(torch.int16)
    elif change == "int 1":
        args[1] = 1
    elif change == "int not a multiple of 16":
        args[1] = 33
    elif change == "int64 range":
        args[1] = 2 ** 31 + 16
    elif change == "uint64 range":
        args[1] = 2 ** 63 + 16
    elif change == "None pointer":
        args[3] = None
    elif change == "int for a float":
        args[2] = 1
    elif change == "constexpr value":
        args[4] = 128
    elif change == "constexpr True vs 1":
        kwargs["FLAG"] = 1
    elif change == "num_warps":
        kwargs["num_warps"] = 8
    elif change == "launch_pdl":
        kwargs["launch_pdl"] = True


@pytest.mark.parametrize("change", [
    "misaligned pointer", "other dtype", "int 1", "int not a multiple of 16", "int64 range", "uint64 range",
    "None pointer", "int for a float", "constexpr value", "constexpr True vs 1", "num_warps", "launch_pdl",
    "device"])
def test_key_differs_where_triton_specializes(change):
    base = dict(args=(X, 32, 1.0, X[8:], 64), kwargs=dict(num_warps=4), device=0, fn=KERNEL)
    args, kwargs, device, fn = list(base["args"]), dict(base["kwargs"]), base["device"], base["fn"]
    if change == "device":
        device = 1
    else:
        _apply_change(change, args, kwargs)
    ref = key_of(*base["args"], fn=base["fn"], device=base["device"], **base["kwargs"])
    if change == "constexpr True vs 1":
        ref = key_of(*base["args"], fn=base["fn"], device=base["device"], FLAG=True, **base["kwargs"])
    assert key_of(*args, fn=fn, device=device, **kwargs) != ref


def test_arg_key_follows_triton_int_classes():
    assert fl.arg_key(1) != fl.arg_key(17) != fl.arg_key(16)
    assert fl.arg_key(0) == fl.arg_key(16) == fl.arg_key(-32)  # Triton: i32, divisible by 16
    assert fl.arg_key(2 ** 31 - 1) == fl.arg_key(3) and fl.arg_key(2 ** 31) != fl.arg_key(2 ** 31 - 16)
    assert fl.arg_key(-(2 ** 31)) == fl.arg_key(0) and fl.arg_key(-(2 ** 31) - 16) != fl.arg_key(0)
    assert fl.arg_key(True) != fl.arg_key(1) and fl.arg_key(True) != fl.arg_key(0)
    assert fl.arg_key(torch.nn.Parameter(X)) != fl.arg_key(X)  # a tensor subclass keeps its dtype and alignment
    assert fl.arg_key(torch.nn.Parameter(X))[1:] == (torch.bfloat16, True)


def test_unkeyed_values_and_bad_bindings_give_no_key():
    assert key_of(X, (1, 2), 1.0, X, 64) is None  # a tuple argument
    assert key_of(X, tl.constexpr(3), 1.0, X, 64) is None
    params = fl._params_of(KERNEL)
    assert params.bind((X, 32, 1.0), {"BLOCK": 64}) is None  # Y missing
    assert params.bind((X, 32, 1.0, X, 64), {"X": X}) is None  # given twice
    assert params.bind((X, 32, 1.0, X, 64, True, 7), {}) is None  # too many


class FakeCompiled:
    """What the JIT returns on CUDA, recording the direct launches."""

    packed_metadata = ("meta",)
    function = 1234

    def __init__(self):
        self.launches = []

    def run(self, gx, gy, gz, stream, function, packed, meta, enter, leave, *values):
        self.launches.append(((gx, gy, gz), stream, function, packed, values))

    def launch_metadata(self, grid, stream, *values):
        return None


@pytest.fixture
def fake_jit(monkeypatch):
    """KERNEL's JIT replaced by a recorder that returns one FakeCompiled per call."""
    fl.clear()
    jit_calls = []

    def run(*args, grid, warmup, **kwargs):
        jit_calls.append((grid, args, kwargs))
        return FakeCompiled()

    monkeypatch.setattr(KERNEL, "run", run)
    monkeypatch.setattr(fl, "_current_device", lambda: 0)
    monkeypatch.setattr(fl, "_current_stream", lambda device: 77)
    yield jit_calls
    fl.clear()


def test_relaunch_after_the_first_call_with_every_value(fake_jit):
    first = fl.launch(KERNEL, (3,), X, 32, 1.0, X[8:], BLOCK=64, num_warps=4)
    assert len(fake_jit) == 1 and first.launches == []
    y = X[16:]
    again = fl.launch(KERNEL, (5, 2), X, 48, 0.5, y, BLOCK=64, num_warps=4)
    assert again is first and len(fake_jit) == 1  # the compiled kernel, directly
    (grid, stream, function, packed, values), = first.launches
    assert grid == (5, 2, 1) and stream == 77 and function == 1234 and packed == ("meta",)
    assert values[:4] == (X, 48, 0.5, y) and values[4:] == (64, False)  # signature order, defaults included


def test_changed_specialization_goes_through_the_jit_and_gets_its_own_entry(fake_jit):
    aligned = fl.launch(KERNEL, (1,), X, 32, 1.0, X[8:], BLOCK=64)
    misaligned = fl.launch(KERNEL, (1,), X, 32, 1.0, X[1:], BLOCK=64)
    assert misaligned is not aligned and len(fake_jit) == 2
    assert fl.launch(KERNEL, (1,), X, 32, 1.0, X[3:], BLOCK=64) is misaligned
    assert fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64) is aligned
    assert fl.launch(KERNEL, (1,), X, 1, 1.0, X, BLOCK=64) not in (aligned, misaligned)  # n == 1
    assert len(fake_jit) == 3 and len(aligned.launches) == 1 and len(misaligned.launches) == 1


def test_no_relaunch_without_a_compiled_kernel(fake_jit, monkeypatch):
    monkeypatch.delattr(FakeCompiled, "packed_metadata")
    fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    assert len(fake_jit) == 2  # nothing cached (no compiled kernel came back)


def test_no_relaunch_with_pre_run_hooks(fake_jit, monkeypatch):
    monkeypatch.setattr(KERNEL, "pre_run_hooks", [lambda *args, **kwargs: None])
    fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    assert len(fake_jit) == 2


def test_changed_global_leaves_the_call_to_the_jit(fake_jit, monkeypatch):
    namespace = {"SCALE": 1}
    monkeypatch.setattr(KERNEL, "used_global_vals", {("SCALE", id(namespace)): (1, namespace)})
    fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    assert len(fake_jit) == 1
    namespace["SCALE"] = 2  # the JIT raises here; the relaunch must not hide it
    fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    assert len(fake_jit) == 2


def test_constexpr_global_compared_by_value(fake_jit, monkeypatch):
    """A tl.constexpr global (what the JIT records for `X: tl.constexpr = ...` module globals) is
    compared by its value: an equal new constexpr object relaunches, another value goes to the JIT."""
    namespace = {"GONE": tl.constexpr(-1)}
    monkeypatch.setattr(KERNEL, "used_global_vals", {("GONE", id(namespace)): (tl.constexpr(-1), namespace)})
    fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    assert len(fake_jit) == 1
    namespace["GONE"] = tl.constexpr(-2)
    fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    assert len(fake_jit) == 2


def test_each_kernel_has_its_own_compiled_kernels(fake_jit, monkeypatch):
    """Two kernels with the same parameters and values never share a cached compiled kernel."""
    other = JITFunction(_kernel)
    monkeypatch.setattr(other, "run", KERNEL.run)  # the same recorder
    first = fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64)
    second = fl.launch(other, (1,), X, 32, 1.0, X, BLOCK=64)
    assert second is not first and len(fake_jit) == 2
    assert fl.launch(KERNEL, (1,), X, 32, 1.0, X, BLOCK=64) is first
    assert fl.launch(other, (1,), X, 32, 1.0, X, BLOCK=64) is second and len(fake_jit) == 2


def test_other_launchables_are_launched_as_they_are():
    """An interpreted kernel (TRITON_INTERPRET=1) or any other fn[grid](...) is called as such."""
    seen = []

    class Launchable:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append((grid, args, kwargs))

    fl.launch(Launchable(), (2,), 1, A=3)
    fl.launch(Launchable(), (2,), 1, A=3)
    assert seen == [((2,), (1,), {"A": 3})] * 2 and not fl._COMPILED


# ---------------------------------------------------------------------------------------------
# GPU: matmul_ogs through the fast path, bit for bit the JIT path


def _gpt_oss_like(n_tokens, n_expts=8, k=2, hidden=128, inter=128, seed=0):
    from triton_kernels.matmul_ogs import FnSpecs, FusedActivation, PrecisionConfig
    from triton_kernels.routing import routing
    from triton_kernels.swiglu import swiglu_fn
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n_tokens, hidden, device="cuda", generator=g).bfloat16()
    logits = torch.randn(n_tokens, n_expts, device="cuda", generator=g)
    rd, gi, si = routing(logits, k)
    codes1 = torch.randint(0, 256, (n_expts, hidden // 2, 2 * inter), device="cuda", dtype=torch.uint8, generator=g)
    scales1 = torch.randint(118, 125, (n_expts, hidden // 32, 2 * inter), device="cuda", dtype=torch.uint8, generator=g)
    codes2 = torch.randint(0, 256, (n_expts, inter // 2, hidden), device="cuda", dtype=torch.uint8, generator=g)
    scales2 = torch.randint(118, 125, (n_expts, inter // 32, hidden), device="cuda", dtype=torch.uint8, generator=g)
    b1 = torch.randn(n_expts, 2 * inter, device="cuda", generator=g)
    b2 = torch.randn(n_expts, hidden, device="cuda", generator=g)
    swiglu = FusedActivation(FnSpecs("swiglu", swiglu_fn, ("alpha", "limit")), (1.702, 7.0), 2)
    return dict(x=x, rd=rd, gi=gi, si=si, w1=codes1, pc1=PrecisionConfig(weight_scale=scales1), b1=b1,
                w2=codes2, pc2=PrecisionConfig(weight_scale=scales2), b2=b2, swiglu=swiglu, inter=inter, hidden=hidden)


def _layer(m, y_h=None, y_out=None, out_dtype=None):
    from triton_kernels.matmul_ogs import PrecisionConfig, matmul_ogs
    pc2 = m["pc2"] if out_dtype is None else PrecisionConfig(weight_scale=m["pc2"].weight_scale, out_dtype=out_dtype)
    h = matmul_ogs(m["x"], m["w1"], m["b1"], m["rd"], gather_indx=m["gi"], precision_config=m["pc1"],
                   fused_activation=m["swiglu"], y=y_h)
    out = matmul_ogs(h, m["w2"], m["b2"], m["rd"], scatter_indx=m["si"], precision_config=pc2,
                     gammas=m["rd"].gate_scal, y=y_out)
    return h.clone(), out.clone()


def _misaligned_like(t):
    """A view with t's shape and dtype whose data_ptr is not 16-byte aligned."""
    flat = torch.empty(t.numel() + 8, dtype=t.dtype, device=t.device)
    return flat[1:1 + t.numel()].view(t.shape)


def _variants(m):
    """Calls whose arguments change a Triton specialization: a column-major output (strides 1 and
    T swapped), outputs not 16-byte aligned, an output whose row stride is not a multiple of 16 (a
    padded view), a float32 output (the test's T = 1 makes more values 1)."""
    n_slots, n_tokens = m["gi"].src_indx.shape[0], m["x"].shape[0]
    padded = torch.empty(n_tokens, m["hidden"] + 8, device="cuda", dtype=torch.bfloat16)[:, :m["hidden"]]
    column_major = torch.empty(m["hidden"], n_tokens, device="cuda", dtype=torch.bfloat16).t()
    return [
        dict(),
        dict(y_out=column_major),
        dict(y_h=_misaligned_like(torch.empty(n_slots, m["inter"], device="cuda", dtype=torch.bfloat16)),
             y_out=_misaligned_like(torch.empty(n_tokens, m["hidden"], device="cuda", dtype=torch.bfloat16))),
        dict(y_out=padded),
        dict(out_dtype=torch.float32),
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("n_tokens", [1, 3, 40])
def test_gpu_fast_launch_is_bit_identical_to_the_jit(monkeypatch, n_tokens):
    import triton_kernels.matmul_ogs as mo
    m = _gpt_oss_like(n_tokens)
    for variant in _variants(m) * 2:  # each twice: the second round relaunches directly
        monkeypatch.setattr(mo, "FAST_LAUNCH", False)
        ref = _layer(m, **variant)
        monkeypatch.setattr(mo, "FAST_LAUNCH", True)
        for _ in range(3):
            got = _layer(m, **{k: (v.fill_(float("nan")) if isinstance(v, torch.Tensor) else v)
                               for k, v in variant.items()})
            torch.cuda.synchronize()
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


@pytest.mark.gpu
def test_gpu_changed_specialization_gets_its_own_compiled_kernel(monkeypatch):
    """The direct relaunch takes the cached kernel for calls like the first, and a call with a
    misaligned output goes through the JIT to a kernel compiled for it (its own cache entry)."""
    import triton_kernels.matmul_ogs as mo
    from triton_kernels.matmul_ogs_details._kernels import _matmul_ogs_kernel
    m = _gpt_oss_like(3)
    monkeypatch.setattr(mo, "FAST_LAUNCH", True)
    fl.clear()
    jit_results = []
    real_run = _matmul_ogs_kernel.run

    def recording_run(*args, **kwargs):
        jit_results.append(real_run(*args, **kwargs))
        return jit_results[-1]

    monkeypatch.setattr(_matmul_ogs_kernel, "run", recording_run)
    ref = _layer(m)
    n_jit = len(jit_results)
    assert n_jit >= 2  # gate_up and down went through the JIT once
    assert all(torch.equal(a, b) for a, b in zip(_layer(m), ref))
    assert len(jit_results) == n_jit  # relaunched directly
    h_bad = _misaligned_like(ref[0])
    got = _layer(m, y_h=h_bad)
    # the misaligned h is gate_up's output and down's input: each call through the JIT once more
    assert len(jit_results) == n_jit + 2
    new = jit_results[n_jit:]
    assert all(k is not old for k in new for old in jit_results[:n_jit])  # compiled for it, not the aligned ones
    assert new[0].src.attrs != jit_results[0].src.attrs  # gate_up's aligned kernel: other pointer attributes
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    _layer(m, y_h=_misaligned_like(ref[0]))
    assert len(jit_results) == n_jit + 2  # the misaligned kernels are cached too
    fl.clear()


def test_inline_keys_equal_arg_key():
    values = (0, 1, 2, 16, 17, -16, -1, 2 ** 31 - 1, 2 ** 31, -(2 ** 31), -(2 ** 31) - 16, 2 ** 63 - 16, 2 ** 63,
              X, X[1:], X[8:].view(torch.int16), torch.nn.Parameter(X), 1.5, True, False, None)
    assert fl._runtime_keys(values) == tuple(map(fl.arg_key, values))
    assert len(set(fl._runtime_keys((1, 2, 16, 2 ** 31, 2 ** 31 + 1, 2 ** 63, 2 ** 63 + 1)))) == 7


def test_launch_fixed_relaunches_like_launch(fake_jit):
    fixed = fl.FixedKwargs(dict(BLOCK=64, num_warps=4))
    first = fl.launch_fixed(KERNEL, (3,), (X, 32, 1.0, X[8:]), fixed)
    assert len(fake_jit) == 1 and fake_jit[0][2] == dict(BLOCK=64, num_warps=4) and first.launches == []
    y = X[16:]
    again = fl.launch_fixed(KERNEL, (5, 2), (X, 48, 0.5, y), fl.FixedKwargs(dict(BLOCK=64, num_warps=4)))
    assert again is first and len(fake_jit) == 1  # an equal FixedKwargs finds the same compiled kernel
    (grid, stream, _, _, values), = first.launches
    assert grid == (5, 2, 1) and stream == 77 and values == (X, 48, 0.5, y, 64, False)


@pytest.mark.parametrize("change", ["misaligned pointer", "int 1", "constexpr True vs 1", "num_warps",
                                    "positional constexpr"])
def test_launch_fixed_goes_to_the_jit_where_triton_specializes(fake_jit, change):
    args, kwargs = [X, 32, 1.0, X[8:]], dict(BLOCK=64, FLAG=True, num_warps=4)
    fl.launch_fixed(KERNEL, (1,), tuple(args), fl.FixedKwargs(kwargs))
    if change == "positional constexpr":  # BLOCK given positionally, keyed by value
        fl.launch_fixed(KERNEL, (1,), (*args, 64), fl.FixedKwargs(dict(num_warps=4)))
        args.append(128)
        kwargs = dict(num_warps=4)
    else:
        _apply_change(change, args, kwargs)
    n_jit = len(fake_jit)
    fl.launch_fixed(KERNEL, (1,), tuple(args), fl.FixedKwargs(kwargs))
    assert len(fake_jit) == n_jit + 1
    assert fl.FixedKwargs(dict(FLAG=True)) != fl.FixedKwargs(dict(FLAG=1))


def test_run_compiled_builds_launch_metadata_only_for_a_listening_hook():
    """Triton's launch hooks are a chain that is never None: the metadata (per launch work) is made
    only where a hook has been added, and then handed to the launcher."""
    calls = []

    class Compiled(FakeCompiled):
        def launch_metadata(self, grid, stream, *values):
            calls.append((grid, stream, values))
            return "meta-dict"

        def run(self, gx, gy, gz, stream, function, packed, meta, enter, leave, *values):
            self.launches.append((meta, values))

    compiled = Compiled()
    fl.run_compiled(compiled, (4,), (X, 3), 9)
    assert calls == [] and compiled.launches == [(None, (X, 3))]
    hook = triton.knobs.runtime.launch_enter_hook
    listener = lambda meta: None  # noqa: E731
    hook.add(listener)
    try:
        fl.run_compiled(compiled, (4, 2), (X, 3), 9)
    finally:
        hook.remove(listener)
    assert calls == [((4, 2, 1), 9, (X, 3))] and compiled.launches[-1] == ("meta-dict", (X, 3))
