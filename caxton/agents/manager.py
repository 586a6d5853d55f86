# -*- test-case-name: tests.test_agents_manager -*-
"""
The agents hosted on this node: deploy, update, stop, start, remove, and
the delivery of messages to them (SPEC 3.1).

Each agent is an L{AgentCell}.  Its inbox lives on the reactor thread;
whenever the agent has messages and is not already busy, a batch of them
goes to a worker thread, where they run one after another on the agent's
instance.  A batch's outcomes come back to the reactor thread and go to the
L{IMessageSink} (the router): what the agent sent, and the failures the
senders of failed messages must hear about.  One agent never runs on two
threads at once, so its messages are handled in the order they arrived.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter, deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

import attr
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import Interface

from caxton.acl.message import AGENT_NAME, ACLMessage
from caxton.agents.executor import IWorkers
from caxton.agents.runtime import (
    AgentInstance,
    CompiledModule,
    MAX_WALL_CLOCK,
    InvalidWasm,
    Limits,
    Outcome,
    WasmRuntime,
)
from caxton.config import AgentDefaults, parse_count, parse_duration, parse_size
from caxton.mcp.names import parse_allowance
from caxton.errors import (
    AgentAlreadyExists,
    AgentNotFound,
    AgentUnavailable,
    InvalidRequest,
    QueueFull,
)
from caxton.store.interfaces import AgentRecord, IStateStore

log = Logger()

#: After interrupting the agents at shutdown, how long their workers get to
#: hand back their batches.
INTERRUPT_GRACE = 5.0

#: Modules this large get progress lines in the log while they compile.
SLOW_COMPILE_SIZE = 1024 * 1024

#: Names the platform keeps for itself.
RESERVED_NAMES = frozenset({"caxton"})

#: Messages handed to a worker in one go.
BATCH = 64

#: A batch ends early after this much guest time, or once its handlers
#: have sent this many messages: one busy agent must not hold a worker, nor
#: hand the reactor a mountain of messages to route in one turn.
BATCH_TIME = 0.05
BATCH_SENDS = 1000

#: Messages an agent sent that the reactor routes in one turn; the rest of
#: a batch's output waits for the next turn, so a flood never holds the
#: reactor (and the timers and API behind it) for long.
REPORT_SLICE = 100

_LOG_LEVELS = {0: "debug", 1: "info", 2: "warn", 3: "error"}


class IMessageSink(Interface):
    """
    Where the agents' output goes: the router.
    """

    def agent_sent(agent: str, message: ACLMessage) -> None:
        """
        C{agent} sent C{message} (its C{send} or C{reply} returned 0).
        """

    def agent_refused(agent: str, reason: str, handling: Optional[ACLMessage]) -> None:
        """
        C{agent} tried to send something malformed while handling
        C{handling}; it should hear C{not-understood}.
        """

    def delivery_failed(message: ACLMessage, receiver: str, reason: str, detail: str) -> None:
        """
        C{message} could not be handled by C{receiver}.
        """

    def message_handled(agent: str, message: ACLMessage) -> None:
        """
        C{agent}'s handler ran on C{message}; told after what it sent.
        """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AgentSpec:
    """
    What a deploy says about an agent besides its module.

    @ivar capabilities: what it offers, for capability receivers.
    @ivar limits: its sandbox limits.
    @ivar config: the JSON value handed to C{caxton_init}.
    @ivar document: the spec as persisted and shown.
    @ivar tools: the MCP tools it may call (SPEC 8): C{server/tool},
        C{server/*} or C{*}.
    @ivar relocatable: restarted on another node when its node dies
        (SPEC 5.4; L{caxton.cluster.relocation}).
    @ivar moves: how many times it was restarted elsewhere (set by the
        node that restarts it; the copy that moved most wins).
    """

    capabilities: Tuple[str, ...]
    limits: Limits
    config: Any
    document: Dict[str, Any]
    tools: Tuple[str, ...] = ()
    relocatable: bool = False
    moves: int = 0


_LIMIT_PARSERS = {
    "memory": parse_size,
    "fuel": parse_count,
    "wall_clock": parse_duration,
    "max_message": parse_size,
    "max_sends": parse_count,
}

#: The most a deploy may ask for: wasm32's 4 GiB, five minutes a message.
_LIMIT_CEILINGS = {
    "memory": 4 * 1024**3,
    "fuel": 10**15,
    "wall_clock": MAX_WALL_CLOCK,
    "max_message": 64 * 1024**2,
    "max_sends": 1_000_000,
}


def parse_spec(document: Any, defaults: AgentDefaults) -> AgentSpec:
    """
    Check a deploy spec (capabilities, limits, config) and fill in defaults.

    @raise InvalidRequest: naming the first bad field.
    """
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise InvalidRequest("the agent spec must be a JSON object")
    unknown = set(document) - {"capabilities", "limits", "config", "tools", "relocatable", "moves"}
    if unknown:
        raise InvalidRequest(f"unknown spec field(s): {', '.join(sorted(unknown))}")
    capabilities = document.get("capabilities", [])
    if not isinstance(capabilities, list) or not all(
        isinstance(c, str) and 0 < len(c) <= 255 for c in capabilities
    ):
        raise InvalidRequest("capabilities must be a list of non-empty strings")
    given = document.get("limits") or {}
    if not isinstance(given, dict):
        raise InvalidRequest("limits must be a JSON object")
    values = {
        "memory": defaults.memory,
        "fuel": defaults.fuel,
        "wall_clock": defaults.wall_clock,
        "max_message": defaults.max_message,
        "max_sends": defaults.max_sends,
    }
    for key, raw in given.items():
        parser = _LIMIT_PARSERS.get(key)
        if parser is None:
            raise InvalidRequest(
                f"unknown limit {key!r} (known: {', '.join(sorted(_LIMIT_PARSERS))})"
            )
        try:
            values[key] = parser(raw)
        except ValueError as e:
            raise InvalidRequest(f"limits.{key}: {e}")
        if values[key] > _LIMIT_CEILINGS[key]:
            raise InvalidRequest(f"limits.{key}: at most {_LIMIT_CEILINGS[key]}")
    tools = document.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise InvalidRequest(
            "tools must be a list of 'server/tool', 'server/*' or '*' (the MCP tools the agent may call)"
        )
    for allowance in tools:
        try:
            parse_allowance(allowance)
        except ValueError as e:
            raise InvalidRequest(f"tools: {e}")
    relocatable = document.get("relocatable", False)
    if not isinstance(relocatable, bool):
        raise InvalidRequest("relocatable must be true or false")
    moves = document.get("moves", 0)
    if not isinstance(moves, int) or isinstance(moves, bool) or not 0 <= moves < 2**31:
        raise InvalidRequest("moves must be a whole number (the node sets it when it relocates an agent)")
    config = document.get("config")
    clean: Dict[str, Any] = {"capabilities": list(dict.fromkeys(capabilities)), "limits": dict(given)}
    if tools:
        clean["tools"] = list(dict.fromkeys(tools))
    if config is not None:
        clean["config"] = config
    if relocatable:
        clean["relocatable"] = True
        if moves:
            clean["moves"] = moves
    return AgentSpec(
        tuple(clean["capabilities"]),
        Limits(**values),
        config,
        clean,
        tuple(clean.get("tools", ())),
        relocatable,
        moves if relocatable else 0,
    )


def check_name(name: Any) -> str:
    """
    @raise InvalidRequest: if C{name} is not a valid, unreserved agent name.
    """
    if not isinstance(name, str) or not AGENT_NAME.match(name):
        raise InvalidRequest(
            "agent name must match [a-z0-9][a-z0-9._-]{0,62}"
        )
    if name in RESERVED_NAMES:
        raise InvalidRequest(f"agent name {name!r} is reserved")
    return name


@attr.s(slots=True, auto_attribs=True, eq=False)
class AgentCell:
    """
    One hosted agent: its record, its inbox and its instance.

    All fields belong to the reactor thread except C{instance} and
    C{instance_generation}, which belong to whichever worker runs the
    agent's current batch (C{busy} says one does).  C{pending} is an
    instance an update already started (and ran init on) for the next
    generation; the reactor puts it there and the first batch of that
    generation takes it, both under C{lock}.  Workers read C{status} and
    C{generation} between messages, to stop a batch early.
    """

    name: str
    version: int
    spec: AgentSpec
    module_hash: str
    compiled: Optional[CompiledModule]
    status: str
    reason: Optional[str]
    created_at: float
    updated_at: float
    module_size: int
    generation: int = 0
    instance: Optional[AgentInstance] = None
    instance_generation: int = -1
    pending: Optional[Tuple[AgentInstance, int]] = None
    lock: threading.Lock = attr.ib(factory=threading.Lock)
    inbox: Deque[Tuple[ACLMessage, bytes]] = attr.ib(factory=deque)
    busy: bool = False
    traps: Deque[float] = attr.ib(factory=deque)
    handled: int = 0
    failed: int = 0
    trapped: int = 0
    last_error: Optional[str] = None
    memory_bytes: int = 0
    idle: List[Deferred] = attr.ib(factory=list)

    def record(self) -> AgentRecord:
        """
        What the store keeps of this agent.
        """
        return AgentRecord(
            name=self.name,
            version=self.version,
            module_hash=self.module_hash,
            spec=self.spec.document,
            status=self.status,
            reason=self.reason,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def view(self, node_id: str) -> Dict[str, Any]:
        """
        The agent as the API shows it.
        """
        limits = self.spec.limits
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
            "node": node_id,
            "capabilities": list(self.spec.capabilities),
            "tools": list(self.spec.tools),
            "module": {"hash": self.module_hash, "size": self.module_size},
            "limits": {
                "memory": limits.memory,
                "fuel": limits.fuel,
                "wall_clock": limits.wall_clock,
                "max_message": limits.max_message,
                "max_sends": limits.max_sends,
            },
            "config": self.spec.config,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "usage": {"memory_bytes": self.memory_bytes, "queue_depth": len(self.inbox)},
            "counters": {
                "handled": self.handled,
                "failed": self.failed,
                "traps": self.trapped,
                "last_error": self.last_error,
            },
        }


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _BatchResult:
    outcomes: List[Tuple[Optional[ACLMessage], Outcome]]
    leftover: List[Tuple[ACLMessage, bytes]]
    #: The instance's memory after the batch; None when no instance is left
    #: to measure (it trapped, or the batch stopped early).
    memory_bytes: Optional[int]
    generation: int


def decode_wasm(value: Any) -> bytes:
    """
    The module bytes from a JSON deploy's base64 C{wasm} field.

    @raise InvalidRequest: if it is missing or not base64.
    """
    if not isinstance(value, str) or not value:
        raise InvalidRequest("wasm must be the module's bytes in base64")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise InvalidRequest("wasm is not valid base64")


class AgentManager(Service):
    """
    The agents on this node and their lifecycle.

    @param reactor: the reactor (C{seconds}, C{callLater}, thread pool).
    @param runtime: compiles and instantiates modules.
    @param workers: where guest calls run.
    @param store: where agents are persisted.
    @param defaults: the node's default limits and trap policy.
    @param node_id: this node's id, shown in agent views.
    """

    name = "agents"

    def __init__(
        self,
        reactor: Any,
        runtime: WasmRuntime,
        workers: IWorkers,
        store: IStateStore,
        defaults: AgentDefaults,
        node_id: str,
        compile_in_thread: bool = True,
    ) -> None:
        self._reactor = reactor
        self.runtime = runtime
        self._workers = workers
        self._store = store
        self.defaults = defaults
        self.node_id = node_id
        self._compile_in_thread = compile_in_thread
        self.sink: Optional[IMessageSink] = None
        self._cells: Dict[str, AgentCell] = {}
        self._deploying: Dict[str, Dict[str, Any]] = {}
        # Modules a deploy or update in progress has compiled but not yet
        # recorded: not to be released meanwhile.
        self._modules_in_use: Counter = Counter()
        self._draining = False
        self._capabilities: Dict[str, List[str]] = {}
        self._round_robin: Dict[str, int] = {}
        #: Told C{observer(name, cell)} whenever an agent is added or its
        #: record changes, and C{observer(name, None)} when it is removed
        #: (the cluster's registry listens here).
        self.observers: List[Callable[[str, Optional[AgentCell]], None]] = []

    # Directory, for the router ------------------------------------------

    def get(self, name: str) -> Optional[AgentCell]:
        """
        The agent called C{name} on this node, if any.
        """
        return self._cells.get(name)

    def __iter__(self) -> Iterable[AgentCell]:
        """
        The hosted agents, by name.
        """
        return iter(sorted(self._cells.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        """
        How many agents are hosted here.
        """
        return len(self._cells)

    def offering(self, capability: str) -> List[AgentCell]:
        """
        The agents that offer C{capability} and can take messages, by name.
        """
        cells = (self._cells.get(n) for n in self._capabilities.get(capability, ()))
        return [c for c in cells if c is not None and c.status != "failed"]

    def choose(self, capability: str) -> Optional[AgentCell]:
        """
        One agent offering C{capability}, taking turns among them.
        """
        cells = self.offering(capability)
        if not cells:
            return None
        turn = self._round_robin.get(capability, 0)
        self._round_robin[capability] = turn + 1
        return cells[turn % len(cells)]

    def deliver(self, name: str, message: ACLMessage, raw: bytes) -> None:
        """
        Queue C{message} for agent C{name}; it runs when the agent is free.

        @raise AgentNotFound: no such agent here.
        @raise AgentUnavailable: the agent has failed.
        @raise QueueFull: its inbox holds C{agents.max_queue} messages.
        """
        cell = self._cells.get(name)
        if cell is None:
            raise AgentNotFound(f"no agent named {name!r}")
        if cell.status == "failed":
            raise AgentUnavailable(f"agent {name!r} has failed: {cell.reason}")
        if len(raw) > cell.spec.limits.max_message:
            raise AgentUnavailable(
                f"message of {len(raw)} bytes is larger than {name!r} accepts "
                f"({cell.spec.limits.max_message})",
                code="TOO_LARGE",
            )
        if len(cell.inbox) >= self.defaults.max_queue:
            raise QueueFull(f"agent {name!r} has {len(cell.inbox)} messages waiting")
        cell.inbox.append((message, raw))
        self._kick(cell)

    # Running batches ------------------------------------------------------

    def _kick(self, cell: AgentCell) -> None:
        if cell.busy or cell.status != "running" or not cell.inbox or cell.compiled is None:
            return
        cell.busy = True
        batch = [cell.inbox.popleft() for _ in range(min(BATCH, len(cell.inbox)))]
        compiled, spec, generation = cell.compiled, cell.spec, cell.generation
        self._workers.schedule(
            lambda: self._run_batch(cell, batch, compiled, spec, generation),
            lambda result: self._batch_done(cell, result),
            lambda failure: self._batch_crashed(cell, batch, failure),
        )

    def _run_batch(
        self,
        cell: AgentCell,
        batch: List[Tuple[ACLMessage, bytes]],
        compiled: CompiledModule,
        spec: AgentSpec,
        generation: int,
    ) -> _BatchResult:
        # On a worker thread: touch only the cell's instance fields (and
        # pending, under its lock); read status only to stop early.
        # Outcomes with no message are those of caxton_init.
        outcomes: List[Tuple[Optional[ACLMessage], Outcome]] = []
        spent = 0.0
        sent = 0
        for i, (message, raw) in enumerate(batch):
            if self._draining or cell.status != "running" or generation != cell.generation:
                # Shutting down, stopped, removed or updated: what has not
                # started goes back to the reactor, to keep, fail or run
                # on the new version.
                return _BatchResult(outcomes, batch[i:], None, generation)
            if i and (spent > BATCH_TIME or sent > BATCH_SENDS):
                # Let other agents have this worker, and let the reactor
                # route what this batch sent before it grows further.
                return _BatchResult(outcomes, batch[i:], None, generation)
            try:
                if cell.instance is None or cell.instance_generation != generation:
                    cell.instance = None
                    started = self._take_pending(cell, generation)
                    if started is None:
                        started, init = self._fresh_instance(cell.name, compiled, spec)
                        if started is None:
                            outcomes.append((message, init))
                            return _BatchResult(outcomes, batch[i + 1 :], None, generation)
                        outcomes.append((None, init))
                    cell.instance, cell.instance_generation = started, generation
                outcome = cell.instance.deliver(raw, message)
            except Exception as e:
                # A bug on our side, not the agent's: fail this message,
                # start the next on a fresh instance, keep serving.
                log.failure("delivering to agent {agent} failed", agent=cell.name)
                outcome = Outcome(False, True, f"internal error: {e}", "internal", (), (), (), 0.0)
            outcomes.append((message, outcome))
            spent += outcome.elapsed
            sent += len(outcome.sent)
            if outcome.trapped:
                cell.instance = None
                return _BatchResult(outcomes, batch[i + 1 :], None, generation)
        memory = cell.instance.memory_bytes() if cell.instance else None
        return _BatchResult(outcomes, [], memory, generation)

    def _take_pending(self, cell: AgentCell, generation: int) -> Optional[AgentInstance]:
        """
        On a worker: the instance an update started for C{generation}, if
        any; an older batch leaves a newer pending instance alone.
        """
        with cell.lock:
            pending = cell.pending
            if pending is None or pending[1] != generation:
                return None
            cell.pending = None
            return pending[0]

    def _fresh_instance(
        self, name: str, compiled: CompiledModule, spec: AgentSpec
    ) -> Tuple[Optional[AgentInstance], Outcome]:
        """
        A new instance with its init run, and init's outcome; no instance
        if it could not start, the outcome saying why.
        """
        try:
            instance = self.runtime.instantiate(compiled, name, spec.limits)
        except InvalidWasm as e:
            return None, Outcome(False, True, str(e), "instantiate", (), (), (), 0.0)
        outcome = instance.run_init(_config_bytes(spec))
        if not outcome.ok:
            failed = attr.evolve(outcome, trapped=True, detail=f"init failed: {outcome.detail}")
            return None, failed
        return instance, outcome

    def _current(self, cell: AgentCell) -> bool:
        """
        Whether C{cell} is still the agent hosted under its name (not
        removed, nor replaced by a new deploy of the name).
        """
        return self._cells.get(cell.name) is cell

    def _report_some(
        self, cell: AgentCell, pending: Deque[Tuple[Optional[ACLMessage], Outcome, int]], generation: int
    ) -> bool:
        """
        Pass on what guest calls did, at most L{REPORT_SLICE} sent messages
        at a time: their log lines, what they sent, and for a failed message
        the failure its sender must hear.  Traps count against the agent
        only if they happened on its current version.

        @param pending: C{(message, outcome, sent so far)} still to report,
            oldest first; consumed as reported.
        @return: whether everything was reported.
        """
        budget = REPORT_SLICE
        sink = self.sink
        while pending and budget > 0:
            message, outcome, offset = pending[0]
            if offset == 0:
                for line in outcome.logs:
                    log.emit(_log_level(line.level), "agent {agent}: {text}", agent=cell.name, text=line.text)
            chunk = outcome.sent[offset : offset + budget]
            if sink is not None:
                for sent in chunk:
                    sink.agent_sent(cell.name, sent)
            budget -= len(chunk)
            if offset + len(chunk) < len(outcome.sent):
                pending[0] = (message, outcome, offset + len(chunk))
                break
            pending.popleft()
            budget -= 1
            if sink is not None:
                for reason in outcome.refused:
                    sink.agent_refused(cell.name, reason, message)
            if message is None:
                continue
            if outcome.ok:
                cell.handled += 1
                if sink is not None:
                    sink.message_handled(cell.name, message)
                continue
            cell.failed += 1
            cell.last_error = outcome.detail
            if sink is not None:
                sink.delivery_failed(message, cell.name, "AGENT_FAILED", outcome.detail)
            if outcome.trapped and generation == cell.generation and self._current(cell):
                self._trapped(cell, outcome)
        return not pending

    def _report(self, cell: AgentCell, message: Optional[ACLMessage], outcome: Outcome, generation: int) -> None:
        """
        Pass on all of one guest call's outcome now (deploy's and update's
        init, which send little).
        """
        pending: Deque[Tuple[Optional[ACLMessage], Outcome, int]] = deque([(message, outcome, 0)])
        while not self._report_some(cell, pending, generation):
            pass

    def _batch_done(self, cell: AgentCell, result: _BatchResult) -> None:
        cell.inbox.extendleft(reversed(result.leftover))
        if result.memory_bytes is not None:
            cell.memory_bytes = result.memory_bytes
        pending = deque((message, outcome, 0) for message, outcome in result.outcomes)
        self._report_rest(cell, pending, result.generation)

    def _report_rest(
        self, cell: AgentCell, pending: Deque[Tuple[Optional[ACLMessage], Outcome, int]], generation: int
    ) -> None:
        # The agent stays busy while its outcomes are reported, over as many
        # reactor turns as it takes: what it sends to itself queues behind,
        # and its traps are counted before its next batch starts.
        if not self._report_some(cell, pending, generation):
            self._reactor.callLater(0, self._report_rest, cell, pending, generation)
            return
        cell.busy = False
        if not self._current(cell):
            self._drop_inbox(cell, "AGENT_NOT_FOUND", f"agent {cell.name!r} was removed")
        self._kick(cell)
        if not cell.busy:
            self._notify_idle(cell)

    def _batch_crashed(self, cell: AgentCell, batch: List[Tuple[ACLMessage, bytes]], failure: Failure) -> None:
        # _run_batch catches per message; this is a bug in the batch itself,
        # before any message ran: fail them all, keep serving.
        log.failure("running a batch for agent {agent} failed", failure, agent=cell.name)
        cell.busy = False
        cell.instance = None
        if self.sink is not None:
            for message, _ in batch:
                self.sink.delivery_failed(message, cell.name, "AGENT_FAILED", "internal error")
        self._kick(cell)
        if not cell.busy:
            self._notify_idle(cell)

    def _trapped(self, cell: AgentCell, outcome: Outcome) -> None:
        now = self._reactor.seconds()
        cell.trapped += 1
        cell.traps.append(now)
        while cell.traps and cell.traps[0] < now - self.defaults.trap_window:
            cell.traps.popleft()
        log.warn(
            "agent {agent} trapped ({trap}): {detail}",
            agent=cell.name,
            trap=outcome.trap,
            detail=outcome.detail,
        )
        if len(cell.traps) >= self.defaults.max_traps and cell.status == "running":
            reason = (
                f"{len(cell.traps)} traps within {self.defaults.trap_window:g}s; "
                f"last: {outcome.detail}"
            )
            self._fail(cell, reason)

    def _fail(self, cell: AgentCell, reason: str) -> None:
        cell.status, cell.reason = "failed", reason
        cell.updated_at = self._reactor.seconds()
        log.error("agent {agent} failed: {reason}", agent=cell.name, reason=reason)
        self._persist(cell)
        self._drop_inbox(cell, "AGENT_FAILED", f"agent {cell.name!r} has failed: {reason}")

    def _drop_inbox(self, cell: AgentCell, reason: str, detail: str) -> None:
        waiting, cell.inbox = list(cell.inbox), deque()
        if self.sink is not None:
            for message, _ in waiting:
                self.sink.delivery_failed(message, cell.name, reason, detail)

    def _persist(self, cell: AgentCell) -> Deferred:
        """
        Save C{cell}'s record, in the background: a failure is logged.
        """
        self._changed(cell.name, cell)
        d = self._store.save_agent(cell.record())
        d.addErrback(lambda f: log.failure("saving agent {agent}", f, agent=cell.name))
        return d

    def _notify_idle(self, cell: AgentCell) -> None:
        waiting, cell.idle = cell.idle, []
        for d in waiting:
            d.callback(None)

    def when_idle(self, cell: AgentCell) -> Deferred:
        """
        Fires when C{cell} has no batch running.
        """
        if not cell.busy:
            return succeed(None)
        d: Deferred = Deferred()
        cell.idle.append(d)
        return d

    # Lifecycle -------------------------------------------------------------

    async def _compile(self, wasm: bytes, agent: str) -> CompiledModule:
        """
        Compile on the reactor's thread pool, logging progress when it is
        slow (an interpreter inside a component takes tens of seconds).
        """
        if not self._compile_in_thread:
            return self.runtime.compile(wasm)
        started = self._reactor.seconds()
        if len(wasm) >= SLOW_COMPILE_SIZE:
            log.info(
                "compiling {size:.1f} MiB module for agent {agent}",
                size=len(wasm) / 2**20,
                agent=agent,
            )
        pool = self._reactor.getThreadPool()
        compiled = await deferToThreadPool(self._reactor, pool, self.runtime.compile, wasm)
        elapsed = self._reactor.seconds() - started
        if elapsed >= 1.0:
            log.info(
                "compiled module {module_hash} for agent {agent} in {seconds:.1f}s",
                module_hash=compiled.module_hash,
                agent=agent,
                seconds=elapsed,
            )
        return compiled

    def deploying(self) -> List[Dict[str, Any]]:
        """
        Views of the deploys in progress (compiling, starting), by name.
        """
        return [dict(self._deploying[name]) for name in sorted(self._deploying)]

    async def _try_start(self, name: str, compiled: CompiledModule, spec: AgentSpec) -> Tuple[AgentInstance, Outcome]:
        """
        Instantiate and init on a worker, so a slow or hostile init does
        not hold the reactor; refuse the deploy if it fails.

        @return: the instance and its init's outcome, whose messages and
            log lines are passed on once the agent is in place.
        """
        d: Deferred = Deferred()
        self._workers.schedule(
            lambda: self._fresh_instance(name, compiled, spec), d.callback, d.errback
        )
        instance, init = await d
        if instance is None:
            raise InvalidWasm(init.detail)
        return instance, init

    async def deploy(self, name: Any, wasm: bytes, document: Any) -> AgentCell:
        """
        Deploy a new agent and start it.

        @raise InvalidRequest: bad name or spec.
        @raise AgentAlreadyExists: the name is taken.
        @raise InvalidWasm: the module does not compile, fit the ABI or init.
        """
        name = check_name(name)
        spec = parse_spec(document, self.defaults)
        if name in self._cells or name in self._deploying:
            raise AgentAlreadyExists(f"an agent named {name!r} already exists")
        self._deploying[name] = {
            "name": name,
            "status": "deploying",
            "node": self.node_id,
            "since": self._reactor.seconds(),
            "module": {"size": len(wasm)},
        }
        compiled: Optional[CompiledModule] = None
        try:
            compiled = await self._compile(wasm, name)
            self._modules_in_use[compiled.module_hash] += 1
            instance, init = await self._try_start(name, compiled, spec)
            await self._store.save_module(compiled.module_hash, wasm)
            now = self._reactor.seconds()
            cell = AgentCell(
                name=name,
                version=1,
                spec=spec,
                module_hash=compiled.module_hash,
                compiled=compiled,
                status="running",
                reason=None,
                created_at=now,
                updated_at=now,
                module_size=len(wasm),
                instance=instance,
                instance_generation=0,
            )
            await self._store.save_agent(cell.record())
        except BaseException:
            if compiled is not None:
                self._modules_in_use[compiled.module_hash] -= 1
                self._release(compiled.module_hash)
            raise
        finally:
            self._deploying.pop(name, None)
        self._modules_in_use[compiled.module_hash] -= 1
        self._add(cell)
        self._report(cell, None, init, cell.generation)
        log.info(
            "agent {agent} deployed (version {version}, module {module_hash})",
            agent=name,
            version=1,
            module_hash=compiled.module_hash,
        )
        return cell

    def _add(self, cell: AgentCell) -> None:
        self._cells[cell.name] = cell
        for capability in cell.spec.capabilities:
            self._capabilities.setdefault(capability, []).append(cell.name)
        self._changed(cell.name, cell)

    def _changed(self, name: str, cell: Optional[AgentCell]) -> None:
        for observer in self.observers:
            try:
                observer(name, cell)
            except Exception:
                log.failure("agent observer failed on {agent}", agent=name)

    def _remove_capabilities(self, cell: AgentCell) -> None:
        for capability in cell.spec.capabilities:
            names = self._capabilities.get(capability, [])
            if cell.name in names:
                names.remove(cell.name)
            if not names:
                self._capabilities.pop(capability, None)

    def _cell(self, name: str) -> AgentCell:
        cell = self._cells.get(name)
        if cell is None:
            raise AgentNotFound(f"no agent named {name!r}")
        return cell

    async def update(self, name: str, wasm: Optional[bytes], document: Any) -> AgentCell:
        """
        Give an agent a new module and/or spec; its version goes up by one.

        The message being handled finishes on the old instance; the next
        one runs on the new.  A failed agent starts running again.
        """
        cell = self._cell(name)
        spec = parse_spec(document, self.defaults) if document is not None else cell.spec
        compiled = await self._compile(wasm, name) if wasm is not None else cell.compiled
        if compiled is None:
            raise InvalidRequest(f"agent {name!r} has no usable module: update it with a new one")
        self._modules_in_use[compiled.module_hash] += 1
        try:
            instance, init = await self._try_start(name, compiled, spec)
            if wasm is not None:
                await self._store.save_module(compiled.module_hash, wasm)
            cell = self._cell(name)
        except BaseException:
            self._modules_in_use[compiled.module_hash] -= 1
            self._release(compiled.module_hash)
            raise
        self._modules_in_use[compiled.module_hash] -= 1
        old_module = cell.module_hash
        self._remove_capabilities(cell)
        cell.spec, cell.compiled, cell.module_hash = spec, compiled, compiled.module_hash
        if wasm is not None:
            cell.module_size = len(wasm)
        cell.version += 1
        cell.generation += 1
        with cell.lock:
            cell.pending = (instance, cell.generation)
        cell.updated_at = self._reactor.seconds()
        # Traps of the old version say nothing about the new one.
        cell.traps.clear()
        if cell.status == "failed":
            cell.status, cell.reason = "running", None
        self._add_capabilities(cell)
        self._report(cell, None, init, cell.generation)
        self._kick(cell)
        # The store runs jobs in order: the record names the new module
        # before the old one is released.
        self._persist(cell)
        self._release(old_module)
        log.info("agent {agent} updated to version {version}", agent=name, version=cell.version)
        return cell

    def _add_capabilities(self, cell: AgentCell) -> None:
        for capability in cell.spec.capabilities:
            names = self._capabilities.setdefault(capability, [])
            if cell.name not in names:
                names.append(cell.name)

    async def stop(self, name: str) -> AgentCell:
        """
        Stop an agent: it keeps its messages queued but handles none; the
        batch it is running stops after the message at hand.
        """
        cell = self._cell(name)
        if cell.status == "running":
            cell.status = "stopped"
            cell.updated_at = self._reactor.seconds()
            self._persist(cell)
            log.info("agent {agent} stopped", agent=name)
        return cell

    async def start(self, name: str) -> AgentCell:
        """
        Start a stopped or failed agent again.
        """
        cell = self._cell(name)
        if cell.compiled is None:
            raise InvalidRequest(f"agent {name!r} has no usable module: update it with a new one")
        if cell.status != "running":
            if cell.status == "failed":
                # A failed agent starts over on a fresh instance; a stopped
                # one carries on with the instance it had.
                cell.generation += 1
                cell.traps.clear()
            cell.status, cell.reason = "running", None
            cell.updated_at = self._reactor.seconds()
            self._persist(cell)
            log.info("agent {agent} started", agent=name)
            self._kick(cell)
        return cell

    async def remove(self, name: str) -> None:
        """
        Remove an agent; messages still waiting for it fail, and the batch
        it is running stops after the message at hand.
        """
        cell = self._cell(name)
        del self._cells[name]
        self._remove_capabilities(cell)
        self._drop_inbox(cell, "AGENT_NOT_FOUND", f"agent {name!r} was removed")
        cell.status = "removed"
        self._changed(name, None)
        log.info("agent {agent} removed", agent=name)
        deleted = self._store.delete_agent(name)
        # After the record is gone (the store runs jobs in order), so the
        # module is no longer named by it.
        self._release(cell.module_hash)
        await deleted

    def _release(self, module_hash: str) -> None:
        """
        Forget a module no hosted agent (nor a deploy or update in progress)
        uses any more: compiled, cached on disk and stored.  A component's
        are tens of megabytes each.
        """
        if self._modules_in_use[module_hash] or any(
            c.module_hash == module_hash for c in self._cells.values()
        ):
            return
        self.runtime.forget(module_hash)
        d = self._store.delete_module(module_hash)
        d.addErrback(lambda f: log.failure("deleting module {module_hash}", f, module_hash=module_hash))

    # Start and stop ----------------------------------------------------------

    async def load(self) -> None:
        """
        Bring back the agents the store knows, in the state they were in.

        An agent whose module no longer compiles comes back C{failed}, with
        the reason; the others are not held up by it.
        """
        for record in await self._store.load_agents():
            wasm = await self._store.load_module(record.module_hash)
            status, reason = record.status, record.reason
            compiled: Optional[CompiledModule] = None
            try:
                spec = parse_spec(record.spec, self.defaults)
            except InvalidRequest as e:
                # The node's limits changed under a stored spec: keep the
                # agent visible and failed, its spec kept as it was (so an
                # update can mend just the limits), the defaults its limits.
                spec = _unusable_spec(record.spec, self.defaults)
                status, reason = "failed", f"stored spec is no longer valid: {e}"
            try:
                if wasm is None:
                    raise InvalidWasm(f"module {record.module_hash} is missing from the store")
                compiled = await self._compile(wasm, record.name)
            except InvalidWasm as e:
                status, reason = "failed", f"cannot be restored: {e}"
            if status == "failed" and reason != record.reason:
                log.error("agent {agent} {reason}", agent=record.name, reason=reason)
            cell = AgentCell(
                name=record.name,
                version=record.version,
                spec=spec,
                module_hash=record.module_hash,
                compiled=compiled,
                status=status,
                reason=reason,
                created_at=record.created_at,
                updated_at=record.updated_at,
                module_size=len(wasm) if wasm is not None else 0,
            )
            self._add(cell)
        log.info("restored {count} agents", count=len(self._cells))

    async def _idle_within(self, seconds: float) -> bool:
        """
        Wait until no agent runs a batch, for at most C{seconds}.
        """
        busy = [self.when_idle(c) for c in self._cells.values() if c.busy]
        if not busy:
            return True
        waiting = DeferredList(busy, consumeErrors=True)
        timer = self._reactor.callLater(seconds, waiting.cancel)
        try:
            await waiting
        except CancelledError:
            pass
        if timer.active():
            timer.cancel()
        return not any(c.busy for c in self._cells.values())

    async def drain(self, grace: float) -> List[Tuple[str, ACLMessage]]:
        """
        Stop taking messages, let running batches finish (for at most
        C{grace} seconds), and return what is still waiting, by agent.
        """
        self._draining = True
        for cell in self._cells.values():
            if cell.status == "running":
                cell.status = "draining"
        if not await self._idle_within(grace):
            # Past the grace period: interrupt what is still running (its
            # senders get AGENT_FAILED), and give the workers a moment to
            # hand back the rest of their batches.
            log.warn("interrupting agents still busy after the {grace}s grace period", grace=grace)
            self.runtime.interrupt_all()
            if not await self._idle_within(INTERRUPT_GRACE):
                stuck = [c.name for c in self._cells.values() if c.busy]
                log.error(
                    "agents {agents} did not stop; the messages they hold are lost",
                    agents=", ".join(stuck),
                )
        left: List[Tuple[str, ACLMessage]] = []
        for cell in self._cells.values():
            left.extend((cell.name, m) for m, _ in cell.inbox)
            cell.inbox.clear()
        return left


def _unusable_spec(document: Any, defaults: AgentDefaults) -> AgentSpec:
    """
    A stored spec the node now refuses, kept as it was, with default limits.
    """
    document = dict(document) if isinstance(document, dict) else {}
    capabilities = document.get("capabilities")
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        capabilities = []
    limits = parse_spec({}, defaults).limits
    return AgentSpec(tuple(capabilities), limits, document.get("config"), document)


def _config_bytes(spec: AgentSpec) -> bytes:
    return json.dumps(spec.config, separators=(",", ":")).encode("utf-8")


def _log_level(level: int) -> LogLevel:
    return LogLevel.levelWithName(_LOG_LEVELS.get(level, "info"))
