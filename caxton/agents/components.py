# -*- test-case-name: tests.test_components -*-
"""
WebAssembly component agents (SPEC 3.3): the WIT package
C{caxton:agent@0.1.0} in C{wit/}, world C{agent}, run with
C{wasmtime.component}.

A component exports C{handle} and C{init}, each
C{func(string) -> result<_, string>}, and imports the interface
C{caxton:agent/host@0.1.0} (C{send}, C{reply}, C{log}, C{now-ms}), which
means exactly what the core ABI's C{caxton.*} imports mean: the host
functions here are thin shims over L{caxton.agents.runtime}'s
(L{check_send}/L{accept_send} and friends), with the same thread-local
L{HostCall}, limits and error codes.

Toolchains that build components from interpreters (componentize-py) link
their language's C library against WASI 0.2, so they import WASI even when
the agent never uses it.  The node links WASI 0.2 with nothing opened: no
preopened directory, no environment, no arguments, an empty stdin, the
default socket policy of wasmtime's WASI (every address denied, name lookup
off) and no C{wasi:http}; stdout and stderr become the agent's log lines.
A component may import only the host interface and the WASI interfaces in
L{WASI_ALLOWED}; anything else is refused at deploy, naming the import.

Limits per instance (one Store each): the memory cap applies to each linear
memory and a component may have L{COMPONENT_MAX_MEMORIES}; a component is
several core instances wired together (componentize-py: 14), so the
instance count is capped at L{COMPONENT_MAX_INSTANCES} rather than 1;
tables at L{COMPONENT_MAX_TABLES}, each at the core limit of
L{MAX_TABLE_ELEMENTS} elements.  Fuel and the epoch deadline are the same
as for core modules.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, List, Optional

import attr
import wasmtime
from wasmtime import component as wc

# Private to wasmtime-py (pinned to one major in setup.cfg): where a host
# function's exception waits, process-wide, to be re-raised.
from wasmtime.component import _enter as _wasmtime_enter

from caxton.acl.message import ACLMessage
from caxton.agents import runtime as rt
from caxton.agents.runtime import (
    MAX_LOG_LINE,
    MAX_TABLE_ELEMENTS,
    HostCall,
    InvalidWasm,
    Limits,
    Outcome,
    SendError,
)

#: The preamble of a component binary: magic, then version 0x0d and layer 1
#: (a core module has version 1, layer 0).
COMPONENT_PREAMBLE = b"\0asm\x0d\x00\x01\x00"

#: The interface the node implements for components.
HOST_INTERFACE = "caxton:agent/host@0.1.0"

#: WASI 0.2 interfaces a component may import (any 0.2.x version): what
#: language runtimes link whether or not the agent uses them, all inert
#: in a WASI context with nothing opened.  C{wasi:sockets} is here because
#: componentize-py's CPython imports all of it unconditionally; with
#: wasmtime's default socket policy no address may be bound or connected
#: and names cannot be looked up, so it reaches no network.  Not here, so
#: refused: C{wasi:http/*}, C{wasi:keyvalue/*}, C{wasi:config/*}, anything
#: not WASI.
WASI_ALLOWED = frozenset(
    [
        "wasi:io/error",
        "wasi:io/poll",
        "wasi:io/streams",
        "wasi:clocks/monotonic-clock",
        "wasi:clocks/wall-clock",
        "wasi:random/random",
        "wasi:random/insecure",
        "wasi:random/insecure-seed",
        "wasi:cli/environment",
        "wasi:cli/exit",
        "wasi:cli/stdin",
        "wasi:cli/stdout",
        "wasi:cli/stderr",
        "wasi:cli/terminal-input",
        "wasi:cli/terminal-output",
        "wasi:cli/terminal-stdin",
        "wasi:cli/terminal-stdout",
        "wasi:cli/terminal-stderr",
        "wasi:filesystem/types",
        "wasi:filesystem/preopens",
        "wasi:sockets/network",
        "wasi:sockets/instance-network",
        "wasi:sockets/tcp",
        "wasi:sockets/tcp-create-socket",
        "wasi:sockets/udp",
        "wasi:sockets/udp-create-socket",
        "wasi:sockets/ip-name-lookup",
    ]
)

COMPONENT_MAX_INSTANCES = 64
COMPONENT_MAX_MEMORIES = 1
COMPONENT_MAX_TABLES = 16

#: Most bytes of stdout or stderr kept per guest call (the rest is dropped):
#: output is held in host memory, outside the agent's memory cap.
MAX_OUTPUT = 64 * 1024

_STDOUT_LEVEL = 1
_STDERR_LEVEL = 2


def is_component(wasm: bytes) -> bool:
    """
    Whether C{wasm} is a component binary rather than a core module.
    """
    return wasm[:8] == COMPONENT_PREAMBLE


@attr.s(frozen=True, slots=True, auto_attribs=True)
class CompiledComponent:
    """
    A validated, compiled agent component, shared by all its instances.
    """

    module_hash: str
    component: wc.Component
    has_init: bool = True
    kind: str = "component"


# Validation -----------------------------------------------------------------


def _interface(name: str) -> tuple:
    """
    C{("wasi:io/poll", "0.2.9")} from C{"wasi:io/poll@0.2.9"}.
    """
    base, _, version = name.partition("@")
    return base, version


def import_allowed(name: str) -> bool:
    """
    Whether a component may import the instance called C{name}.
    """
    if name == HOST_INTERFACE:
        return True
    base, version = _interface(name)
    if base == "wasi:clocks/monotonic-clock":
        # Only the versions whose waiting the node replaces (make_linker).
        return version in _CLOCK_VERSIONS
    return base in WASI_ALLOWED and version.startswith("0.2.")


def _is_string(ty: Any) -> bool:
    return isinstance(ty, wc.String)


def _is_entry(ty: Any) -> bool:
    """
    Whether C{ty} is C{func(string) -> result<_, string>}.
    """
    if not isinstance(ty, wc.FuncType):
        return False
    params = ty.params
    result = ty.result
    return (
        len(params) == 1
        and _is_string(params[0][1])
        and isinstance(result, wc.ResultType)
        and result.ok is None
        and _is_string(result.err)
    )


#: The host functions' shapes, as the WIT writes them: parameter type
#: names and result type name (None for no result).
_HOST_SHAPES = {
    "send": (("String",), "S32"),
    "reply": (("String", "String"), "S32"),
    "log": (("S32", "String"), None),
    "now-ms": ((), "S64"),
}


def _check_host_types(engine: wasmtime.Engine, host: Any) -> None:
    """
    The component must import the host functions with exactly the WIT's
    types: a mistyped import would make the host function raise on every
    call (in wasmtime-py, through a process-global slot other agents'
    traps could pick up).

    @raise InvalidWasm: naming the mistyped or unknown function.
    """
    if not isinstance(host, wc.ComponentInstanceType):
        raise InvalidWasm(f"imports {HOST_INTERFACE} as something other than an instance")
    for name, item in host.exports(engine).items():
        shape = _HOST_SHAPES.get(name)
        if shape is None:
            raise InvalidWasm(f"imports {HOST_INTERFACE}#{name}, which the host does not offer")
        fty = item.ty
        params = tuple(type(t).__name__ for _, t in getattr(fty, "params", ()))
        result = getattr(fty, "result", None)
        if not isinstance(fty, wc.FuncType) or (params, None if result is None else type(result).__name__) != shape:
            raise InvalidWasm(f"imports {HOST_INTERFACE}#{name} with the wrong type")


def validate_component(engine: wasmtime.Engine, component: wc.Component) -> None:
    """
    Check a compiled component against the agent world.

    @raise InvalidWasm: naming the first import outside the ABI and the
        harmless parts of WASI, or the missing or mistyped export.
    """
    ty = component.type
    imports = ty.imports(engine)
    for name in imports:
        if not import_allowed(name):
            raise InvalidWasm(
                f"imports {name}, which is outside the agent ABI (allowed: "
                f"{HOST_INTERFACE} and WASI 0.2's io, clocks, random, cli, "
                "filesystem and sockets, with nothing opened)"
            )
    if HOST_INTERFACE in imports:
        _check_host_types(engine, imports[HOST_INTERFACE].ty)
    exports = ty.exports(engine)
    for name in ("handle", "init"):
        item = exports.get(name)
        if item is None:
            raise InvalidWasm(f"does not export {name} (world caxton:agent/agent@0.1.0)")
        if not _is_entry(item.ty):
            raise InvalidWasm(f"exports {name} with the wrong type (want func(string) -> result<_, string>)")


# Traps --------------------------------------------------------------------

#: wasmtime's trap messages, by the trap kinds L{rt._trap_kind} names.
_TRAP_MESSAGES = (
    ("interrupt", "interrupt"),
    ("all fuel consumed", "out-of-fuel"),
    ("call stack exhausted", "stack-overflow"),
    ("unreachable", "unreachable"),
    ("out of bounds memory access", "memory-out-of-bounds"),
    ("undefined element", "table-out-of-bounds"),
    ("uninitialized element", "indirect-call-to-null"),
    ("indirect call type mismatch", "bad-signature"),
    ("integer overflow", "integer-overflow"),
    ("integer divide by zero", "integer-division-by-zero"),
    ("invalid conversion to integer", "bad-conversion-to-integer"),
    ("cannot enter component instance", "cannot-enter-component"),
)

_TRAP_LINE = re.compile(r"wasm trap: (.*)")


def trap_kind(error: Exception) -> str:
    """
    The kind of trap a component call's error reports (component calls
    raise L{wasmtime.WasmtimeError}, whose trap code is only in its text).
    """
    if isinstance(error, wasmtime.Trap):
        return rt._trap_kind(error)
    text = str(error)
    found = _TRAP_LINE.findall(text)
    cause = found[-1] if found else text
    for needle, kind in _TRAP_MESSAGES:
        if needle in cause:
            return kind
    return "trap"


def _first_line(error: Exception) -> str:
    """
    The line of a wasmtime error that says what happened: the trap, or
    else the last "Caused by" line (a host function's message).
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    found = [line for line in lines if line.startswith("wasm trap:")]
    if found:
        return found[-1]
    if "Caused by:" in lines:
        cause = lines[-1]
        return cause.split(":", 1)[1].strip() if cause[:1].isdigit() and ":" in cause else cause
    return lines[0] if lines else type(error).__name__


# Host functions -------------------------------------------------------------
#
# wasmtime-py calls them with the caller's StoreContext first.  They never
# raise: like the core ones they answer with the codes in SendError.


def _send(_store: Any, message: str) -> int:
    call = rt._current()
    if call is None:
        return int(SendError.NO_MESSAGE)
    try:
        raw = message.encode("utf-8")
        refused = rt.check_send(call, len(raw))
        if refused is not None:
            return int(refused)
        return int(rt.accept_send(call, raw))
    except Exception as e:  # pragma: no cover - defensive
        call.refused.append(f"send: {e}")
        return int(SendError.INVALID_MESSAGE)


def _reply(_store: Any, performative: str, content: str) -> int:
    call = rt._current()
    if call is None:
        return int(SendError.NO_MESSAGE)
    try:
        perf = performative.encode("utf-8")
        raw = content.encode("utf-8")
        refused = rt.check_reply(call, len(perf), len(raw))
        if refused is not None:
            return int(refused)
        return int(rt.accept_reply(call, perf, raw))
    except Exception as e:  # pragma: no cover - defensive
        call.refused.append(f"reply: {e}")
        return int(SendError.INVALID_MESSAGE)


def _log(_store: Any, level: int, text: str) -> None:
    call = rt._current()
    if call is None:
        return
    try:
        rt.accept_log(call, level, text[:MAX_LOG_LINE].encode("utf-8"))
    except Exception:  # pragma: no cover - defensive
        pass


def _now_ms(_store: Any) -> int:
    return int(time.time() * 1000)


def _forget_host_exception() -> None:
    """
    Clear wasmtime-py's process-global "last host exception", so that a
    failure of one agent cannot surface later as another agent's trap.
    """
    _wasmtime_enter.LAST_EXCEPTION = None


#: The WASI 0.2 monotonic-clock versions the node defines itself, in place
#: of wasmtime's: a guest that waits (sleep, a timed poll) would block its
#: worker thread in the host, where the wall-clock limit cannot reach it.
_CLOCK_VERSIONS = frozenset(f"0.2.{patch}" for patch in range(32))


def _monotonic_now(_store: Any) -> int:
    return time.monotonic_ns()


def _monotonic_resolution(_store: Any) -> int:
    return 1


def _no_waiting(_store: Any, *_args: Any) -> None:
    # A WasmtimeError becomes a trap directly, without wasmtime-py's
    # process-global exception slot.
    raise wasmtime.WasmtimeError(
        "agents cannot sleep or wait for a time: handle the message and return"
    )


def make_linker(engine: wasmtime.Engine) -> wc.Linker:
    """
    The component linker every component instance is made with: WASI 0.2
    and the host interface.
    """
    linker = wc.Linker(engine)
    linker.add_wasip2()
    linker.allow_shadowing = True
    for version in sorted(_CLOCK_VERSIONS):
        with linker.root() as root:
            with root.add_instance(f"wasi:clocks/monotonic-clock@{version}") as clock:
                clock.add_func("now", _monotonic_now)
                clock.add_func("resolution", _monotonic_resolution)
                clock.add_func("subscribe-duration", _no_waiting)
                clock.add_func("subscribe-instant", _no_waiting)
    linker.allow_shadowing = False
    with linker.root() as root:
        with root.add_instance(HOST_INTERFACE) as host:
            host.add_func("send", _send)
            host.add_func("reply", _reply)
            host.add_func("log", _log)
            host.add_func("now-ms", _now_ms)
    return linker


# stdout and stderr -------------------------------------------------------------


class _Output:
    """
    One instance's stdout and stderr, cut into log lines.

    wasmtime calls the WASI output callbacks from its own worker threads,
    not the thread running the guest, so lines go to the L{HostCall} the
    instance is running now (set by L{ComponentInstance}), under a lock.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.call: Optional[HostCall] = None
        self.partial = {_STDOUT_LEVEL: b"", _STDERR_LEVEL: b""}
        self.taken = 0

    def writer(self, level: int) -> Any:
        def write(data: bytes) -> None:
            try:
                self.write(level, data)
            except Exception:  # pragma: no cover - never raise into wasmtime
                pass

        return write

    def write(self, level: int, data: bytes) -> None:
        with self.lock:
            room = MAX_OUTPUT - self.taken
            if room <= 0:
                return
            data = data[:room]
            self.taken += len(data)
            buffered = self.partial[level] + data
            *lines, rest = buffered.split(b"\n")
            self.partial[level] = rest[: MAX_LOG_LINE * 2]
            for line in lines:
                self._line(level, line)

    def _line(self, level: int, line: bytes) -> None:
        call = self.call
        if call is not None:
            rt.accept_log(call, level, line.rstrip(b"\r"))

    def begin(self, call: HostCall) -> None:
        with self.lock:
            self.call = call
            self.taken = 0

    def end(self) -> None:
        """
        Flush unfinished lines into the call ending now.
        """
        with self.lock:
            for level, rest in self.partial.items():
                if rest:
                    self._line(level, rest)
                    self.partial[level] = b""
            self.call = None


class _NoMemory:
    """
    Stands in for a core instance's exported memory where the manager reads
    a memory figure: a component's memories are internal and wasmtime-py
    does not reach them, so it reports 0 (unknown).
    """

    def data_len(self, _store: Any) -> int:
        return 0


# Instances ----------------------------------------------------------------


def _fresh_wasi(output: _Output) -> wasmtime.WasiConfig:
    """
    WASI with nothing opened: no arguments, no environment, no preopened
    directory, empty stdin; stdout and stderr to the log.
    """
    wasi = wasmtime.WasiConfig()
    wasi.stdout_custom = output.writer(_STDOUT_LEVEL)
    wasi.stderr_custom = output.writer(_STDERR_LEVEL)
    return wasi


def instantiate(
    engine: wasmtime.Engine,
    linker: wc.Linker,
    compiled: CompiledComponent,
    agent: str,
    limits: Limits,
) -> "ComponentInstance":
    """
    A fresh instance of C{compiled} in a Store of its own.  Blocking.

    @raise InvalidWasm: if it cannot be instantiated within C{limits} or
        its imports cannot be satisfied (say, a newer WASI than the node's).
    """
    store = wasmtime.Store(engine)
    store.set_limits(
        memory_size=limits.memory,
        table_elements=MAX_TABLE_ELEMENTS,
        instances=COMPONENT_MAX_INSTANCES,
        tables=COMPONENT_MAX_TABLES,
        memories=COMPONENT_MAX_MEMORIES,
    )
    store.set_fuel(limits.fuel)
    store.set_epoch_deadline(rt._ticks(limits.wall_clock))
    output = _Output()
    store.set_wasi(_fresh_wasi(output))
    try:
        instance = linker.instantiate(store, compiled.component)
    except Exception as e:
        _forget_host_exception()
        raise InvalidWasm(f"cannot instantiate: {_first_line(e)}")
    handle = instance.get_func(store, "handle")
    init = instance.get_func(store, "init")
    if handle is None or init is None:  # pragma: no cover - validated at compile
        raise InvalidWasm("does not export handle and init")
    return ComponentInstance(
        agent=agent,
        limits=limits,
        store=store,
        memory=_NoMemory(),
        handle=handle,
        init=init,
        module_hash=compiled.module_hash,
        output=output,
    )


@attr.s(slots=True, auto_attribs=True)
class ComponentInstance:
    """
    One live instance of a component agent, used like
    L{caxton.agents.runtime.AgentInstance}: L{run_init}, L{deliver}, and
    C{memory.data_len(store)} for a memory figure (0: unknown).

    Only one thread at a time may use it (a Store is not thread-safe).
    """

    agent: str
    limits: Limits
    store: wasmtime.Store
    memory: Any
    handle: wc.Func
    init: wc.Func
    module_hash: str
    output: _Output
    kind: str = "component"

    def memory_bytes(self) -> int:
        """
        The instance's linear memory in bytes, or 0 when unknown (always,
        for components: see L{_NoMemory}).
        """
        return 0

    def run_init(self, config: bytes) -> Outcome:
        """
        Hand the agent its config JSON through C{init}.
        """
        return self._call(self.init, config, None)

    def deliver(self, raw: bytes, message: ACLMessage) -> Outcome:
        """
        Run C{handle} on one message.

        @param raw: the message's JSON, as the agent reads it.
        @param message: the same message, which C{reply} answers.
        """
        return self._call(self.handle, raw, message)

    def _call(self, entry: wc.Func, raw: bytes, current: Optional[ACLMessage]) -> Outcome:
        call = HostCall(self.agent, self.limits, None, current)  # type: ignore[arg-type]
        text = raw.decode("utf-8", "replace")
        self.output.begin(call)
        rt._local.call = call
        started = time.perf_counter()
        trapped, kind = False, None
        try:
            self.store.set_fuel(self.limits.fuel)
            self.store.set_epoch_deadline(rt._ticks(self.limits.wall_clock))
            result = entry(self.store, text)
            entry.post_return(self.store)
            if result is None:
                ok, detail = True, ""
            else:
                ok, detail = False, str(result)[:MAX_LOG_LINE]
        except wasmtime.ExitTrap as e:
            ok, trapped, kind = False, True, "exit"
            detail = f"exited with status {e.code}"
        except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
            kind = trap_kind(e)
            ok, trapped = False, True
            # An uncaught exception in a componentize-py agent is an
            # `unreachable` trap; its traceback is in the log (stderr).
            detail = (
                rt._trap_detail(kind, self.limits)
                if kind != "trap"
                else f"trapped: {_first_line(e)}"
            )
        except Exception as e:
            # A host function raised (it should not: imports are typed at
            # deploy).  Fail this message as a trap; the instance is
            # replaced, and the process-global slot is cleared.
            _forget_host_exception()
            ok, trapped, kind = False, True, "host-error"
            detail = f"trapped: host function failed: {e}"
        finally:
            rt._local.call = None
            self.output.end()
        return Outcome(
            ok=ok,
            trapped=trapped,
            detail=detail,
            trap=kind,
            sent=tuple(call.sent),
            refused=tuple(call.refused),
            logs=tuple(call.logs),
            elapsed=time.perf_counter() - started,
        )


def compile_component(engine: wasmtime.Engine, wasm: bytes) -> wc.Component:
    """
    Compile a component.  Blocking; seconds for an interpreter's component.

    @raise InvalidWasm: when it does not compile.
    """
    try:
        return wc.Component(engine, wasm)
    except wasmtime.WasmtimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid component"
        raise InvalidWasm(f"component does not compile: {first}")


def deserialize_component(engine: wasmtime.Engine, data: bytes) -> wc.Component:
    """
    A component from L{wc.Component.serialize}'s bytes (same wasmtime,
    same engine settings).
    """
    return wc.Component.deserialize(engine, data)


__all__: List[str] = [
    "COMPONENT_PREAMBLE",
    "HOST_INTERFACE",
    "WASI_ALLOWED",
    "CompiledComponent",
    "ComponentInstance",
    "import_allowed",
    "is_component",
    "validate_component",
]
