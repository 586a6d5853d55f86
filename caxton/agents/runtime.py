# -*- test-case-name: tests.test_agents_runtime -*-
"""
The WebAssembly runtime: one shared wasmtime C{Engine}, compiled modules,
and one C{Store} per agent instance, speaking the agent ABI of SPEC 3.3.

Everything here is blocking and thread-agnostic: compiling takes
milliseconds to seconds and a guest call runs until it returns or hits its
limits, so the node calls into this module from worker threads
(L{caxton.agents.executor}), never from the reactor thread.

Host functions find the agent that is calling them through a thread-local
L{HostCall}: a worker thread runs one guest call at a time, so the calling
thread identifies the call.  Host functions never raise (wasmtime-py keeps
a host function's exception in a process-global, which worker threads would
race on); they answer the guest with the error codes in L{SendError}.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import importlib.metadata
import os
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import attr
import wasmtime
from twisted.logger import Logger

from caxton.acl.message import (
    PERFORMATIVES,
    ACLMessage,
    InvalidMessage,
    decode_message,
    make_reply,
    strict_json,
)
from caxton.agents import _fastcall

log = Logger()

_WASMTIME_VERSION = importlib.metadata.version("wasmtime")

ABI_VERSION = 1

#: How often the epoch advances: the granularity of wall-clock limits.
EPOCH_TICK = 0.01

#: The longest wall-clock limit an agent may have, in seconds.
MAX_WALL_CLOCK = 300.0

#: The imports a core module may use, all from module C{caxton}, by name:
#: C{(parameter types, result types)}.  FuncTypes are made per engine
#: (L{_func_type}): wasmtime ties a FuncType to the first engine that uses it.
ABI_IMPORTS = {
    "send": (("i32", "i32"), ("i32",)),
    "reply": (("i32", "i32", "i32", "i32"), ("i32",)),
    "log": (("i32", "i32", "i32"), ()),
    "now_ms": ((), ("i64",)),
}

_ALLOC_TYPE = (("i32",), ("i32",))
_HANDLE_TYPE = (("i32", "i32"), ("i32",))

_VALTYPES = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}


def _func_type(signature: tuple) -> wasmtime.FuncType:
    params, results = signature
    return wasmtime.FuncType([_VALTYPES[t]() for t in params], [_VALTYPES[t]() for t in results])


#: Table limits: tables hold function references (C function pointers),
#: which real agents have in the hundreds; unbounded, a table.grow is a
#: memory bomb outside the memory cap.
MAX_TABLE_ELEMENTS = 100_000
MAX_TABLES = 4

#: Most bytes of messages one guest call may send, whatever max_sends is:
#: what a handler sends is held in memory until the node routes it.
SEND_BUDGET = 8 * 1024 * 1024

#: Longest log line an agent may write; the rest is cut.
MAX_LOG_LINE = 4096


class InvalidWasm(Exception):
    """
    A module that cannot be an agent; C{str()} says why.
    """


class SendError(enum.IntEnum):
    """
    What C{send} and C{reply} return to the guest when they refuse.
    """

    OK = 0
    INVALID_MESSAGE = -1
    TOO_LARGE = -2
    SEND_LIMIT = -3
    NO_MESSAGE = -4
    BAD_POINTER = -5


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Limits:
    """
    One agent's sandbox limits (SPEC 3.2).

    @ivar memory: the most linear memory, in bytes.
    @ivar fuel: the most wasm instructions (roughly) per message.
    @ivar wall_clock: the most seconds per message, by epoch interruption.
    @ivar max_message: the largest message in or out, in bytes.
    @ivar max_sends: the most messages sent while handling one.
    """

    memory: int
    fuel: int
    wall_clock: float
    max_message: int
    max_sends: int


@attr.s(frozen=True, slots=True, auto_attribs=True)
class LogLine:
    """
    A line an agent logged.
    """

    level: int
    text: str


@attr.s(slots=True, auto_attribs=True)
class HostCall:
    """
    The state of one guest call, seen by the host functions.

    @ivar agent: the calling agent's name, made the sender of what it sends.
    @ivar current: the message being handled, which C{reply} answers.
    @ivar sent: the messages the guest sent, in order.
    @ivar refused: why each refused C{send} or C{reply} was refused, for
        the C{not-understood} the node answers with.
    """

    agent: str
    limits: Limits
    control: Optional[_fastcall.StoreControl]
    current: Optional[ACLMessage] = None
    sent: List[ACLMessage] = attr.ib(factory=list)
    sent_bytes: int = 0
    refused: List[str] = attr.ib(factory=list)
    logs: List[LogLine] = attr.ib(factory=list)
    sends: int = 0


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Outcome:
    """
    What one guest call came to.

    @ivar ok: the guest returned 0.
    @ivar trapped: the guest trapped; its instance must be replaced.
    @ivar detail: why it failed, for the sender's C{failure} and the logs.
    @ivar trap: the trap's kind (C{interrupt}, C{out-of-fuel}, ...) when
        it trapped.
    """

    ok: bool
    trapped: bool
    detail: str
    trap: Optional[str]
    sent: Tuple[ACLMessage, ...]
    refused: Tuple[str, ...]
    logs: Tuple[LogLine, ...]
    elapsed: float


_local = threading.local()


def _current() -> Optional[HostCall]:
    return getattr(_local, "call", None)


def _read(call: HostCall, ptr: int, length: int) -> Optional[bytes]:
    """
    Copy guest memory, or C{None} if the range is outside it.
    """
    if ptr < 0 or length < 0:
        return None
    base, size = call.control.memory()
    if ptr + length > size:
        return None
    return ctypes.string_at(base + ptr, length)


def _host_send(ptr: int, length: int) -> int:
    call = _current()
    if call is None:
        return SendError.NO_MESSAGE
    refused = check_send(call, length)
    if refused is not None:
        return refused
    raw = _read(call, ptr, length)
    if raw is None:
        return SendError.BAD_POINTER
    return accept_send(call, raw)


def check_send(call: HostCall, length: int) -> Optional[SendError]:
    """
    Whether C{send} of C{length} bytes is refused before reading it: the
    message size (first: a message too large is TOO_LARGE whatever the
    budget), then the send limit and the send budget.
    """
    if length > call.limits.max_message:
        return SendError.TOO_LARGE
    if call.sends >= call.limits.max_sends or call.sent_bytes + length > SEND_BUDGET:
        return SendError.SEND_LIMIT
    return None


def accept_send(call: HostCall, raw: bytes) -> int:
    """
    Take a whole ACL message the guest sends (its JSON, already within
    L{check_send}'s limits), with the caller as its sender.
    """
    try:
        message = decode_message(raw)
    except InvalidMessage as e:
        call.refused.append(f"send: {e}")
        return SendError.INVALID_MESSAGE
    call.sends += 1
    call.sent_bytes += len(raw)
    call.sent.append(message.evolve(sender=call.agent, message_id=None))
    return SendError.OK


def _host_reply(perf_ptr: int, perf_len: int, content_ptr: int, content_len: int) -> int:
    call = _current()
    if call is None or call.current is None:
        return SendError.NO_MESSAGE
    refused = check_reply(call, perf_len, content_len)
    if refused is not None:
        return refused
    performative = _read(call, perf_ptr, perf_len)
    content = _read(call, content_ptr, content_len)
    if performative is None or content is None:
        return SendError.BAD_POINTER
    return accept_reply(call, performative, content)


def check_reply(call: HostCall, perf_len: int, content_len: int) -> Optional[SendError]:
    """
    Whether C{reply} is refused before reading its arguments.
    """
    if call.current is None:
        return SendError.NO_MESSAGE
    if call.sends >= call.limits.max_sends or call.sent_bytes + content_len > SEND_BUDGET:
        return SendError.SEND_LIMIT
    if content_len > call.limits.max_message or perf_len > 64:
        return SendError.TOO_LARGE
    return None


def accept_reply(call: HostCall, performative: bytes, content: bytes) -> int:
    """
    Answer the message being handled (L{check_reply} passed) with this
    performative and JSON content (empty for none).
    """
    assert call.current is not None
    try:
        text = performative.decode("utf-8").lower()
        if text not in PERFORMATIVES:
            raise InvalidMessage(f"unknown performative {text!r}")
        value = strict_json(content) if content else None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        call.refused.append(f"reply: {e}")
        return SendError.INVALID_MESSAGE
    call.sends += 1
    call.sent_bytes += len(content)
    call.sent.append(make_reply(call.current, text, value, call.agent))
    return SendError.OK


def _host_log(level: int, ptr: int, length: int) -> None:
    call = _current()
    if call is None:
        return
    raw = _read(call, ptr, min(length, MAX_LOG_LINE))
    if raw is not None:
        accept_log(call, level, raw)


def accept_log(call: HostCall, level: int, raw: bytes) -> None:
    """
    Keep a line the guest logged, cut to L{MAX_LOG_LINE} bytes; a call keeps
    at most C{max_sends} lines.
    """
    if len(call.logs) < call.limits.max_sends:
        call.logs.append(LogLine(level, raw[:MAX_LOG_LINE].decode("utf-8", "replace")))


def _host_now_ms() -> int:
    return int(time.time() * 1000)


_HOST_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "send": _host_send,
    "reply": _host_reply,
    "log": _host_log,
    "now_ms": _host_now_ms,
}


def _trap_kind(trap: wasmtime.Trap) -> str:
    code = trap.trap_code
    if code is None:
        return "trap"
    return code.name.lower().replace("_", "-")


def _trap_detail(kind: str, limits: Limits) -> str:
    if kind == "interrupt":
        return f"wall-clock limit of {limits.wall_clock:g}s exceeded"
    if kind == "out-of-fuel":
        return f"fuel limit of {limits.fuel} exceeded"
    if kind == "stack-overflow":
        return "stack overflow"
    return f"trapped: {kind}"


def _signature(ty: wasmtime.FuncType) -> tuple:
    return (
        tuple(str(t) for t in ty.params),
        tuple(str(t) for t in ty.results),
    )


@attr.s(frozen=True, slots=True, auto_attribs=True)
class CompiledModule:
    """
    A validated, compiled agent module, shared by all its instances.
    """

    module_hash: str
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    has_init: bool


def module_hash(wasm: bytes) -> str:
    """
    The content address of a module: its SHA-256, in hex.
    """
    return hashlib.sha256(wasm).hexdigest()


class WasmRuntime:
    """
    The node's one wasmtime engine, its compiled modules and the ticker
    that drives wall-clock limits.

    @param cache_dir: where compiled artifacts are kept between runs, or
        C{None} to compile every time.
    @param fast: take the raw C call road for guest calls when available.
    """

    def __init__(self, cache_dir: Optional[str] = None, fast: bool = True) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        # The memory cap (Store.set_limits) bounds each linear memory; these
        # proposals would let a guest allocate outside it: more memories,
        # GC heaps, shared memories, 64-bit memories.
        config.wasm_multi_memory = False
        config.wasm_gc = False
        config.wasm_threads = False
        config.wasm_memory64 = False
        # Agents are small: a smaller address-space reservation per memory
        # lets thousands of them share one process (notes/agents.md, 6).
        config.memory_reservation = 64 * 1024 * 1024
        config.memory_guard_size = 64 * 1024
        # Components (caxton.agents.components) share the engine and these
        # settings; componentize-py's output needs none of the proposals
        # turned off above.
        config.wasm_component_model = True
        self.engine = wasmtime.Engine(config)
        self.fast = fast
        self.cache_dir = cache_dir
        #: How many compiles were served by the artifact cache on disk, and
        #: how many compiled afresh (modules and components).
        self.artifacts_loaded = 0
        self.artifacts_compiled = 0
        self._component_linker: Any = None
        self._modules: dict[str, CompiledModule] = {}
        self._lock = threading.Lock()
        self._linker = wasmtime.Linker(self.engine)
        for name, signature in ABI_IMPORTS.items():
            _fastcall.define_host(
                self._linker, "caxton", name, _func_type(signature), _HOST_FUNCTIONS[name], fast
            )
        self._ticker: Optional[threading.Thread] = None
        self._ticking = threading.Event()

    # The epoch ticker -------------------------------------------------

    def start(self) -> None:
        """
        Start the thread that advances the epoch every L{EPOCH_TICK}.
        """
        if self._ticker is not None:
            return
        self._ticking.set()
        self._ticker = threading.Thread(
            target=self._tick, name="caxton-epoch", daemon=True
        )
        self._ticker.start()

    def stop(self) -> None:
        """
        Stop the epoch ticker.
        """
        self._ticking.clear()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def interrupt_all(self) -> None:
        """
        End every guest call running now, whatever its deadline: advance
        the epoch past the longest wall-clock limit (at shutdown).
        """
        for _ in range(_ticks(MAX_WALL_CLOCK) + 1):
            self.engine.increment_epoch()

    def _tick(self) -> None:
        while self._ticking.is_set():
            time.sleep(EPOCH_TICK)
            self.engine.increment_epoch()

    # Compiling ----------------------------------------------------------

    def _artifact_path(self, digest: str, kind: str = "module") -> Optional[str]:
        """
        Where the compiled artifact of a module (or component) goes: keyed
        by its hash, the wasmtime version and the engine's settings.
        """
        if self.cache_dir is None:
            return None
        engine_key = hashlib.sha256(
            f"wasmtime-{_WASMTIME_VERSION}-fuel-epoch-64MiB-abi{ABI_VERSION}".encode()
        ).hexdigest()[:16]
        suffix = "" if kind == "module" else f".{kind}"
        return os.path.join(self.cache_dir, f"{digest}-{engine_key}{suffix}.cwasm")

    def _load_artifact(self, path: Optional[str], load: Callable[[bytes], Any]) -> Any:
        if path is None or not os.path.exists(path):
            return None
        # Read, don't map: deserialize_file mmaps the artifact, and a
        # file changed under the mapping would crash the process.
        try:
            with open(path, "rb") as f:
                loaded = load(f.read())
        except (OSError, wasmtime.WasmtimeError):
            log.warn("compiled artifact {path} is unusable; recompiling", path=path)
            return None
        self.artifacts_loaded += 1
        return loaded

    def _load_or_compile(self, wasm: bytes, digest: str) -> wasmtime.Module:
        path = self._artifact_path(digest)
        module = self._load_artifact(path, lambda data: wasmtime.Module.deserialize(self.engine, data))
        if module is not None:
            return module
        try:
            module = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid module"
            raise InvalidWasm(f"module does not compile: {first}")
        self.artifacts_compiled += 1
        if path is not None:
            self._save_artifact(module, path)
        return module

    def _compile_component(self, wasm: bytes, digest: str) -> Any:
        # Imported here: caxton.agents.components builds on this module.
        from caxton.agents import components

        path = self._artifact_path(digest, "component")
        component = self._load_artifact(
            path, lambda data: components.deserialize_component(self.engine, data)
        )
        if component is None:
            component = components.compile_component(self.engine, wasm)
            self.artifacts_compiled += 1
            # Refused components are not cached: they would only fill the
            # data dir (tens of MB each).
            components.validate_component(self.engine, component)
            if path is not None:
                self._save_artifact(component, path)
        else:
            components.validate_component(self.engine, component)
        return components.CompiledComponent(digest, component)

    def _save_artifact(self, module: Any, path: str) -> None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            partial = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(partial, "wb") as f:
                f.write(module.serialize())
            os.replace(partial, path)
        except OSError as e:
            log.warn("cannot cache compiled module at {path}: {error}", path=path, error=e)

    def compile(self, wasm: bytes) -> Any:
        """
        Validate and compile a core module (a L{CompiledModule}) or a
        component (a L{caxton.agents.components.CompiledComponent}), or
        fetch it from the caches.  Blocking: a component built from an
        interpreter takes tens of seconds to compile the first time, and
        under a second from the artifact cache on disk.

        @raise InvalidWasm: when it does not compile or does not fit the ABI.
        """
        if wasm[:4] != b"\0asm":
            raise InvalidWasm("not a WebAssembly module (no \\0asm header)")
        digest = module_hash(wasm)
        with self._lock:
            cached = self._modules.get(digest)
        if cached is not None:
            return cached
        # Imported here: caxton.agents.components builds on this module.
        from caxton.agents import components

        compiled: Any
        if components.is_component(wasm):
            compiled = self._compile_component(wasm, digest)
        else:
            module = self._load_or_compile(wasm, digest)
            has_init = validate(module)
            compiled = CompiledModule(
                digest, module, self._linker.instantiate_pre(module), has_init
            )
        with self._lock:
            self._modules[digest] = compiled
        return compiled

    def forget(self, digest: str) -> None:
        """
        Drop a compiled module no agent uses any more, and its compiled
        artifacts on disk (for any engine settings: stale ones too).
        """
        with self._lock:
            self._modules.pop(digest, None)
        if self.cache_dir is None:
            return
        try:
            names = os.listdir(self.cache_dir)
        except OSError:
            return
        for name in names:
            if name.startswith(digest + "-") and name.endswith(".cwasm"):
                try:
                    os.unlink(os.path.join(self.cache_dir, name))
                except OSError as e:
                    log.warn("cannot remove compiled artifact {name}: {error}", name=name, error=e)

    def instantiate(self, compiled: Any, agent: str, limits: Limits) -> Any:
        """
        A fresh instance of C{compiled}, in a Store of its own: an
        L{AgentInstance} for a core module, a
        L{caxton.agents.components.ComponentInstance} (which is used the
        same way) for a component.  Blocking.

        @raise InvalidWasm: if it cannot be instantiated within C{limits}
            (a memory minimum above the cap, a start function that traps).
        """
        if not isinstance(compiled, CompiledModule):
            from caxton.agents import components

            with self._lock:
                if self._component_linker is None:
                    self._component_linker = components.make_linker(self.engine)
                linker = self._component_linker
            return components.instantiate(self.engine, linker, compiled, agent, limits)
        store = wasmtime.Store(self.engine)
        store.set_limits(
            memory_size=limits.memory,
            table_elements=MAX_TABLE_ELEMENTS,
            instances=1,
            tables=MAX_TABLES,
            memories=1,
        )
        store.set_fuel(limits.fuel)
        store.set_epoch_deadline(_ticks(limits.wall_clock))
        try:
            instance = compiled.pre.instantiate(store)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
            raise InvalidWasm(f"cannot instantiate: {str(e).strip().splitlines()[0]}")
        exports = instance.exports(store)
        memory = exports["memory"]
        return AgentInstance(
            agent=agent,
            limits=limits,
            store=store,
            memory=memory,
            control=_fastcall.StoreControl(store, memory, self.fast),
            alloc=_fastcall.bind_i32(store, exports["caxton_alloc"], 1, self.fast),
            handle=_fastcall.bind_i32(store, exports["caxton_handle"], 2, self.fast),
            init=(
                _fastcall.bind_i32(store, exports["caxton_init"], 2, self.fast)
                if compiled.has_init
                else None
            ),
            module_hash=compiled.module_hash,
        )


def _ticks(seconds: float) -> int:
    return max(1, int(round(seconds / EPOCH_TICK)) + 1)


def validate(module: wasmtime.Module) -> bool:
    """
    Check a compiled module against the agent ABI.

    @return: whether it exports C{caxton_init}.
    @raise InvalidWasm: naming the first thing that does not fit.
    """
    for imp in module.imports:
        where = f"{imp.module}.{imp.name}"
        if imp.module != "caxton" or imp.name not in ABI_IMPORTS:
            raise InvalidWasm(
                f"imports {where}, which is outside the agent ABI "
                "(allowed: caxton.send, caxton.reply, caxton.log, caxton.now_ms)"
            )
        if not isinstance(imp.type, wasmtime.FuncType) or _signature(imp.type) != ABI_IMPORTS[imp.name]:
            raise InvalidWasm(f"imports {where} with the wrong type")
    exports = {e.name: e.type for e in module.exports}
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise InvalidWasm("does not export its memory as 'memory'")
    for name, sig, required in (
        ("caxton_alloc", _ALLOC_TYPE, True),
        ("caxton_handle", _HANDLE_TYPE, True),
        ("caxton_init", _HANDLE_TYPE, False),
    ):
        ty = exports.get(name)
        if ty is None:
            if required:
                raise InvalidWasm(f"does not export {name}")
            continue
        if not isinstance(ty, wasmtime.FuncType) or _signature(ty) != sig:
            raise InvalidWasm(f"exports {name} with the wrong type")
    return "caxton_init" in exports


@attr.s(slots=True, auto_attribs=True)
class AgentInstance:
    """
    One live instance of an agent: its Store, memory and ABI exports.

    Only one thread at a time may use it (a Store is not thread-safe).
    """

    agent: str
    limits: Limits
    store: wasmtime.Store
    memory: Any
    control: _fastcall.StoreControl
    alloc: Callable[..., int]
    handle: Callable[..., int]
    init: Optional[Callable[..., int]]
    module_hash: str
    kind: str = "module"

    def memory_bytes(self) -> int:
        """
        The instance's linear memory in bytes, now.
        """
        return self.control.memory()[1]

    def run_init(self, config: bytes) -> Outcome:
        """
        Hand the agent its config JSON through C{caxton_init}, if exported.
        """
        if self.init is None:
            return Outcome(True, False, "", None, (), (), (), 0.0)
        return self._call(self.init, config, None)

    def deliver(self, raw: bytes, message: ACLMessage) -> Outcome:
        """
        Run C{caxton_handle} on one message.

        @param raw: the message's JSON, as the agent reads it.
        @param message: the same message, which C{reply} answers.
        """
        return self._call(self.handle, raw, message)

    def _call(self, entry: Callable[..., int], raw: bytes, current: Optional[ACLMessage]) -> Outcome:
        call = HostCall(self.agent, self.limits, self.control, current)
        _local.call = call
        started = time.perf_counter()
        self.control.arm(self.limits.fuel, _ticks(self.limits.wall_clock))
        try:
            ptr = self.alloc(len(raw))
            if not self._write(ptr, raw):
                status, detail = 1, f"caxton_alloc returned {ptr}, outside memory"
            else:
                status = entry(ptr, len(raw))
                detail = "" if status == 0 else f"handler returned {status}"
            trapped, kind = False, None
        except wasmtime.Trap as trap:
            kind = _trap_kind(trap)
            status, trapped, detail = 1, True, _trap_detail(kind, self.limits)
        except wasmtime.WasmtimeError as e:
            kind = "error"
            status, trapped, detail = 1, True, f"trapped: {str(e).strip().splitlines()[0]}"
        finally:
            _local.call = None
        return Outcome(
            ok=status == 0,
            trapped=trapped,
            detail=detail,
            trap=kind,
            sent=tuple(call.sent),
            refused=tuple(call.refused),
            logs=tuple(call.logs),
            elapsed=time.perf_counter() - started,
        )

    def _write(self, ptr: int, raw: bytes) -> bool:
        base, size = self.control.memory()
        if ptr < 0 or ptr + len(raw) > size:
            return False
        ctypes.memmove(base + ptr, raw, len(raw))
        return True
