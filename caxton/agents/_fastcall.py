# -*- test-case-name: tests.test_fastcall -*-
"""
The fast road into wasm: wasmtime's unchecked C call, bound directly.

C{wasmtime.Func.__call__} looks up the function's type, converts every
argument through C{Val} and unroots it again: about 30 microseconds for a
call with two i32s.  The C API's C{wasmtime_func_call_unchecked} takes raw
values in one array and costs about 2 microseconds
(shared/notes/agents.md, section 6).  wasmtime-py binds it but does not wrap
it, so this module does, for the only signatures the agent ABI needs:
C{(i32) -> i32} and C{(i32, i32) -> i32}.

It reaches into wasmtime-py's private C{_bindings} and C{Func._func}, which
may change in any monthly major; C{setup.cfg} pins one major, and
C{tests/test_fastcall.py} checks that both roads agree.  If the symbols are
missing, L{raw_calls_available} is C{False} and callers use the checked
road.
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable

import wasmtime

try:
    from wasmtime import _bindings as _ffi
    from wasmtime._trap import Trap as _Trap

    # The ctypes function itself, skipping the wrapper that only forwards.
    _call_unchecked = getattr(_ffi, "_wasmtime_func_call_unchecked", _ffi.wasmtime_func_call_unchecked)
    _ValRaw = _ffi.wasmtime_val_raw_t
    _TrapPtr = ctypes.POINTER(_ffi.wasm_trap_t)
    raw_calls_available = True
except (ImportError, AttributeError):  # pragma: no cover - depends on wasmtime
    raw_calls_available = False


def _checked(store: wasmtime.Store, func: wasmtime.Func) -> Callable[..., int]:
    def call(*args: int) -> int:
        return func(store, *args)

    return call


def _raw(store: wasmtime.Store, func: wasmtime.Func, nargs: int) -> Callable[..., int]:
    # One buffer per function, reused: a Store (and so each of its
    # functions) is only ever used by one thread at a time.
    values = (_ValRaw * max(nargs, 1))()
    values_ptr = ctypes.cast(values, ctypes.POINTER(_ValRaw))
    func_ref = ctypes.byref(func._func)
    context = store._context()

    def call(*args: int, _store: wasmtime.Store = store) -> int:
        # _store keeps the Store (and so context) alive as long as this is.
        for i, arg in enumerate(args):
            values[i].i32 = arg
        trap = _TrapPtr()
        error = _call_unchecked(context, func_ref, values_ptr, nargs, ctypes.byref(trap))
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        if trap:
            raise _Trap._from_ptr(trap)
        return values[0].i32

    return call


def bind_i32(store: wasmtime.Store, func: Any, nargs: int, fast: bool = True) -> Callable[..., int]:
    """
    A Python callable for a wasm function taking C{nargs} i32s and
    returning one i32.

    The caller must have checked the function's type: the raw road trusts
    it.  A trap raises L{wasmtime.Trap} on both roads.

    @param fast: use the raw C call when it is available.
    """
    if fast and raw_calls_available:
        return _raw(store, func, nargs)
    return _checked(store, func)


if raw_calls_available:
    _HostCallback = _ffi.wasmtime_func_unchecked_callback_t
    _Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    _no_finalizer = _Finalizer(lambda _data: None)

#: ctypes callbacks must outlive every store that may call them.
_keep_alive: list = []


def _raw_host(fn: Callable[..., Any], nargs: int, result: str | None) -> Any:
    def callback(_env: Any, _caller: Any, values: Any, _count: int) -> int:
        try:
            out = fn(*[values[i].i32 for i in range(nargs)])
            if result == "i32":
                values[0].i32 = out
            elif result == "i64":
                values[0].i64 = out
            return 0
        except BaseException:
            # Host functions are written not to raise; if one does anyway,
            # trap this guest rather than corrupt its results.
            return ctypes.cast(wasmtime.Trap("host function failed")._consume(), ctypes.c_void_p).value

    return _HostCallback(callback)


def define_host(
    linker: wasmtime.Linker,
    module: str,
    name: str,
    ty: wasmtime.FuncType,
    fn: Callable[..., Any],
    fast: bool = True,
) -> None:
    """
    Define host function C{fn} as import C{module.name} of type C{ty},
    whose parameters are all i32 and whose result is one i32, one i64 or
    nothing.

    C{fn} receives and returns plain ints; on the raw road it costs well
    under a microsecond per call instead of about ten.
    """
    if not (fast and raw_calls_available):
        linker.define_func(module, name, ty, fn)
        return
    results = [str(t) for t in ty.results]
    callback = _raw_host(fn, len(ty.params), results[0] if results else None)
    _keep_alive.append(callback)
    module_bytes, name_bytes = module.encode(), name.encode()
    error = _ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(),
        ctypes.create_string_buffer(module_bytes),
        len(module_bytes),
        ctypes.create_string_buffer(name_bytes),
        len(name_bytes),
        ty.ptr(),
        callback,
        None,
        _no_finalizer,
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


if raw_calls_available:
    # Our own prototypes (dll[name] makes a fresh function object), so the
    # memory base comes back as a plain int, not a ctypes pointer.
    _set_fuel = _ffi.dll["wasmtime_context_set_fuel"]
    _set_fuel.restype = ctypes.c_void_p
    _set_fuel.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    _set_deadline = _ffi.dll["wasmtime_context_set_epoch_deadline"]
    _set_deadline.restype = None
    _set_deadline.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    _memory_base = _ffi.dll["wasmtime_memory_data"]
    _memory_base.restype = ctypes.c_void_p
    _memory_base.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    _memory_size = _ffi.dll["wasmtime_memory_data_size"]
    _memory_size.restype = ctypes.c_size_t
    _memory_size.argtypes = [ctypes.c_void_p, ctypes.c_void_p]


class StoreControl:
    """
    One Store's fuel, epoch deadline and memory, set and read once per guest
    call: through the raw C API when available (about a microsecond for all
    of it), else through wasmtime-py.
    """

    def __init__(self, store: wasmtime.Store, memory: Any, fast: bool = True) -> None:
        self._store = store
        self._memory = memory
        self._raw = fast and raw_calls_available
        if self._raw:
            self._context = ctypes.cast(store._context(), ctypes.c_void_p).value
            self._memory_ref = ctypes.addressof(memory._memory)

    def arm(self, fuel: int, ticks: int) -> None:
        """
        Fill the fuel tank and set the epoch deadline C{ticks} from now.
        """
        if self._raw:
            error = _set_fuel(self._context, fuel)
            if error:
                raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, ctypes.POINTER(_ffi.wasmtime_error_t)))
            _set_deadline(self._context, ticks)
        else:
            self._store.set_fuel(fuel)
            self._store.set_epoch_deadline(ticks)

    def memory(self) -> tuple:
        """
        The linear memory's base address and size in bytes, now (it moves
        and grows while the guest runs).
        """
        if self._raw:
            return _memory_base(self._context, self._memory_ref), _memory_size(self._context, self._memory_ref)
        base = ctypes.addressof(self._memory.data_ptr(self._store).contents)
        return base, self._memory.data_len(self._store)
