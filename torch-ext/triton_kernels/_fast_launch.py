"""Direct relaunch of compiled Triton kernels for repeated eager calls.

`launch(fn, grid, *args, **kwargs)` does what `fn[grid](*args, **kwargs)` does. The first call of
a key goes through Triton's JIT (which compiles the kernel or finds it in its cache); later calls
hand the same arguments straight to the compiled kernel's launcher, skipping the JIT's per-call
binding, specialization and cache-key work (most of an eager call's launch cost on the host).
`launch_fixed(fn, grid, args, fixed)` does the same where the keyword arguments are a `FixedKwargs`
that the caller keeps (memoized): the key holds it whole, so only the positional values are keyed.

The key (`_specialization_key`, within a cache per kernel) is computed from the actual argument
values and holds everything Triton 3.6 specializes a compilation on (runtime/jit.py
`create_function_from_signature`, the backend's `get_int_specialization` /
`get_tensor_specialization`), more specifically where that is simpler:
  * the current device, the launch options (num_warps, num_stages, launch_pdl, ...) and the JIT's
    debug and instrumentation knobs;
  * constexpr parameters: value and type (True and 1 compile differently);
  * other parameters, per value (`arg_key`): an int by the type its value needs (i32 / i64 / u64),
    whether it is 1 (a constexpr for Triton) and whether it is divisible by 16; a tensor (anything
    with `data_ptr`) by class, dtype and whether its data_ptr is 16-byte aligned; a float, bool or
    None by class. Any other value (a tuple, a tl.constexpr) makes the call unkeyed: it goes
    through the JIT every time.
The direct path engages only for a JITFunction whose JIT call returned a compiled kernel with
`packed_metadata` (CUDA; not the interpreter), without pre-run hooks, and while none of the
globals the kernel reads has changed (the JIT raises then, so such a call is left to it).
"""

from __future__ import annotations

import dataclasses
import operator
import types

import torch
from triton import knobs
from triton.language import constexpr
from triton.runtime import driver
from triton.runtime.jit import JITFunction

_COMPILED: dict = {}  # id(kernel) -> {_specialization_key: compiled kernel} (see _PARAMS)
_REQUIRED = object()  # a parameter without a default
_MISSING = object()
_I32 = (-(1 << 31), 1 << 31)
_I64 = (-(1 << 63), 1 << 63)


def arg_key(value):
    """What Triton specializes on for the value of a non-constexpr parameter (see the module
    docstring); raises _Unkeyed for a value it does not describe. `_runtime_keys` inlines the int
    and torch.Tensor cases with the same results."""
    cls = value.__class__
    if cls is int:
        return 1 if value == 1 else (value & 15 == 0) + _int_width_code(value)
    if cls is torch.Tensor:
        return value.dtype, value.data_ptr() & 15 == 0
    if cls is float or cls is bool or value is None:
        return cls
    if hasattr(value, "data_ptr"):
        return cls, value.dtype, value.data_ptr() & 15 == 0
    raise _Unkeyed(cls.__name__)


def _int_width_code(value: int) -> int:
    """2, 4, 6: the value needs i32, i64, u64 (never 1, which is Triton's constexpr 1)."""
    return 2 if _I32[0] <= value < _I32[1] else 4 if _I64[0] <= value < _I64[1] else 6


def _runtime_keys(values: tuple) -> tuple:
    """tuple(map(arg_key, values)), the common classes inline (a call per value costs about as much
    as the JIT's own specialization)."""
    tensor, (i32_lo, i32_hi), (i64_lo, i64_hi) = torch.Tensor, _I32, _I64
    return tuple([(1 if v == 1 else (v & 15 == 0) + (2 if i32_lo <= v < i32_hi else 4 if i64_lo <= v < i64_hi else 6))
                  if v.__class__ is int else (v.dtype, v.data_ptr() & 15 == 0) if v.__class__ is tensor else arg_key(v)
                  for v in values])


class _Unkeyed(Exception):
    pass


def _picker(positions: tuple[int, ...]):
    """A function of a list giving the tuple of its items at `positions`."""
    if len(positions) >= 2:
        return operator.itemgetter(*positions)
    if positions:
        return lambda values: (values[positions[0]],)
    return lambda values: ()


@dataclasses.dataclass(frozen=True)
class _Binding:
    """Where a call of one form (number of positional arguments, keyword names in order) puts its
    values: pickers over `args + tuple(kwargs.values()) + defaults`."""

    values: object  # every parameter's value, signature order
    constexprs: object  # the constexpr parameters' values
    runtime: object  # the other parameters' values
    option_names: tuple  # keywords that are launch options (num_warps, ...)
    options: object  # their values


@dataclasses.dataclass
class _Params:
    """A kernel's parameters in signature order."""

    index: dict  # name -> position
    defaults: tuple  # default value per position (_REQUIRED where none)
    constexpr: tuple  # whether each position is a constexpr
    bindings: dict = dataclasses.field(default_factory=dict)  # (n_args, keyword names) -> _Binding or None

    @staticmethod
    def of(fn: JITFunction) -> "_Params":
        params = fn.params
        return _Params({p.name: i for i, p in enumerate(params)},
                       tuple(p.default if p.has_default else _REQUIRED for p in params),
                       tuple(p.is_constexpr for p in params))

    def bind(self, args: tuple, kwargs: dict):
        """(every parameter's value in signature order, the constexprs' values, the others' values,
        the launch options as (name, value) pairs), or None where the JIT would have to complain
        (too many or missing arguments, one given twice)."""
        form = (len(args), tuple(kwargs))
        binding = self.bindings.get(form, _MISSING)
        if binding is _MISSING:
            binding = self.bindings[form] = self._binding(*form)
        if binding is None:
            return None
        flat = args + tuple(kwargs.values()) + self.defaults
        return (binding.values(flat), binding.constexprs(flat), binding.runtime(flat),
                tuple(zip(binding.option_names, binding.options(flat))))

    def _binding(self, n_args: int, names: tuple) -> _Binding | None:
        n_params = len(self.defaults)
        if n_args > n_params:
            return None
        source = list(range(n_args)) + [None] * (n_params - n_args)  # position -> index into `flat`
        option_names, option_at = [], []
        for i, name in enumerate(names):
            at = self.index.get(name)
            if at is None:
                option_names.append(name)
                option_at.append(n_args + i)
            elif source[at] is not None:
                return None
            else:
                source[at] = n_args + i
        base = n_args + len(names)
        for at, default in enumerate(self.defaults):
            if source[at] is None:
                if default is _REQUIRED:
                    return None
                source[at] = base + at
        return _Binding(_picker(tuple(source)),
                        _picker(tuple(src for src, const in zip(source, self.constexpr) if const)),
                        _picker(tuple(src for src, const in zip(source, self.constexpr) if not const)),
                        tuple(option_names), _picker(tuple(option_at)))


# id(kernel) -> (kernel, its _Params): a JITFunction hashes through its source hash (a lock and a
# property per lookup); the entries hold the kernels for good, so ids here and in _COMPILED stay theirs
_PARAMS: dict = {}


def _params_of(fn: JITFunction) -> _Params:
    entry = _PARAMS.get(id(fn))
    if entry is None or entry[0] is not fn:
        entry = _PARAMS[id(fn)] = (fn, _Params.of(fn))
    return entry[1]


def _specialization_key(fn: JITFunction, bound: tuple, device: int):
    """The cache key of a launch of `fn` with the values `bound` by `_Params.bind`, on `device`,
    within `fn`'s own cache (`_COMPILED` keeps one per kernel); None where a value is not
    described (see `arg_key`)."""
    _, consts, runtime, options = bound
    try:
        return _key(fn, device, options, consts, runtime)
    except _Unkeyed:
        return None


def _key(fn: JITFunction, device: int, form, consts: tuple, runtime: tuple) -> tuple:
    """What a compiled kernel of `fn` is kept under: the device, the call's `form` (its launch
    options, or its FixedKwargs whole), the JIT's debug and instrumentation knobs, the constexprs'
    values and types, and the other values' keys. Raises _Unkeyed (see `arg_key`)."""
    return (device, form, fn.debug, knobs.runtime.debug, knobs.compilation.instrumentation_mode, consts,
            tuple(map(type, consts)), _runtime_keys(runtime))


def _globals_changed(fn: JITFunction) -> bool:
    for (name, _), (value, namespace) in fn.used_global_vals.items():
        now = namespace.get(name, _MISSING)
        if now is value:
            continue
        if now.__class__ is constexpr and value.__class__ is constexpr:  # their != makes a constexpr (slow)
            now, value = now.value, value.value
        if now != value:
            return True
    return False


def _current_device() -> int:
    return driver.active.get_current_device()


def _current_stream(device: int):
    return driver.active.get_current_stream(device)


def launch(fn, grid: tuple, *args, **kwargs):
    """fn[grid](*args, **kwargs), relaunching the compiled kernel directly where it can (module
    docstring). Returns what the JIT returns (the compiled kernel on CUDA)."""
    if not isinstance(fn, JITFunction) or fn.pre_run_hooks:
        return fn[grid](*args, **kwargs)
    bound = _params_of(fn).bind(args, kwargs)
    key = device = None
    if bound is not None:
        device = _current_device()
        key = _specialization_key(fn, bound, device)
    return _relaunch_or_jit(fn, grid, args, kwargs, key, device, lambda: bound[0])


def _relaunch_or_jit(fn, grid: tuple, args: tuple, kwargs, key, device, values):
    """The compiled kernel kept under `key` run with `values()` (every parameter's value), or the
    JIT's call where none is kept (or a global changed): its compiled kernel is kept under `key`."""
    try:
        compiled = _COMPILED.get(id(fn), {}).get(key) if key is not None else None
    except TypeError:  # an unhashable constexpr or option
        key = compiled = None
    if compiled is None or _globals_changed(fn):
        compiled = fn[grid](*args, **kwargs)
        if key is not None and hasattr(compiled, "packed_metadata"):
            _COMPILED.setdefault(id(fn), {})[key] = compiled
        return compiled
    run_compiled(compiled, grid, values(), _current_stream(device))
    return compiled


class FixedKwargs:
    """Keyword arguments that many launches share (constexprs, launch options), frozen and hashed
    once, for `launch_fixed`. Two are equal when their items and the items' types are (True and 1
    compile differently). Raises TypeError for an unhashable value."""

    __slots__ = ("kwargs", "names", "values", "_key", "_hash")

    def __init__(self, kwargs: dict):
        items = tuple(kwargs.items())
        self.kwargs = types.MappingProxyType(dict(items))
        self.names = tuple(name for name, _ in items)
        self.values = tuple(value for _, value in items)
        self._key = (items, tuple(type(value) for value in self.values))
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (other.__class__ is FixedKwargs and self._hash == other._hash
                                 and self._key == other._key)

    def __repr__(self) -> str:
        return f"FixedKwargs({dict(self.kwargs)!r})"


def launch_fixed(fn, grid: tuple, args: tuple, fixed: FixedKwargs):
    """launch(fn, grid, *args, **fixed.kwargs), keyed on `fixed` whole: the per-call work is the
    positional arguments' keys."""
    if not isinstance(fn, JITFunction) or fn.pre_run_hooks:
        return fn[grid](*args, **fixed.kwargs)
    params = _params_of(fn)
    form = (len(args), fixed)
    entry = params.bindings.get(form, _MISSING)
    if entry is _MISSING:
        binding = params._binding(len(args), fixed.names)
        # constexprs given positionally are keyed by value (those in `fixed` are keyed with it)
        arg_consts = _picker(tuple(i for i in range(min(len(args), len(params.constexpr))) if params.constexpr[i]))
        entry = params.bindings[form] = None if binding is None else (binding, arg_consts)
    key = device = flat = None
    if entry is not None:
        binding, arg_consts = entry
        flat = args + fixed.values + params.defaults
        device = _current_device()
        try:
            key = _key(fn, device, form, arg_consts(args), binding.runtime(flat))
        except _Unkeyed:
            key = None
    return _relaunch_or_jit(fn, grid, args, fixed.kwargs, key, device, lambda: binding.values(flat))


def run_compiled(compiled, grid: tuple, values: tuple, stream) -> None:
    """What the JIT does with a kernel it found, given every parameter's value in signature order.
    The launch metadata is built only where a launch hook listens (a profiler): Triton's hooks are a
    chain that is never None, and the metadata goes nowhere else."""
    grid_x = grid[0]
    grid_y = grid[1] if len(grid) > 1 else 1
    grid_z = grid[2] if len(grid) > 2 else 1
    enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    meta = None
    if enter is not None and getattr(enter, "calls", True):
        meta = compiled.launch_metadata((grid_x, grid_y, grid_z), stream, *values)
    compiled.run(grid_x, grid_y, grid_z, stream, compiled.function, compiled.packed_metadata, meta, enter, leave,
                 *values)


def clear() -> None:
    """Forget every cached compiled kernel (tests)."""
    _COMPILED.clear()
