"""
Fakes for testing code built on Caxton, each checked against the real
thing by Caxton's own tests.

  - L{NonThreadPool}: a thread pool that runs jobs at once, on the caller's
    thread;
  - L{ThreadlessClock}: a L{Clock} with C{callFromThread} and
    C{getThreadPool}, as C{deferToThreadPool} and the agent manager need;
  - L{LocalNode}: a whole node without threads or sockets (real SQLite file,
    real wasmtime, L{InlineWorkers}) for deterministic tests of routing and
    agents;
  - L{FakeTools}: MCP tools in memory (an L{IToolGateway}).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from caxton.acl.protocols import ConversationTracker
from caxton.agents.executor import InlineWorkers
from caxton.agents.manager import AgentManager
from caxton.agents.runtime import WasmRuntime
from caxton.config import load
from caxton.mcp.names import allowed, parse_receiver
from caxton.mcp.interfaces import IToolGateway, ToolFailure
from caxton.router.router import Router
from caxton.store.sqlite import SQLiteStore


class NonThreadPool:
    """
    A stand-in for L{twisted.python.threadpool.ThreadPool} that runs each
    job at once on the calling thread, so tests need no real thread.
    """

    started = False

    def start(self) -> None:
        """
        Do nothing but remember it.
        """
        self.started = True

    def stop(self) -> None:
        """
        Do nothing but remember it.
        """
        self.started = False

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        """
        Run C{f} now and report its outcome to C{onResult} as the real pool
        would.
        """
        try:
            result = f(*a, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def callInThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        """
        Run C{f} now, ignoring its outcome.
        """
        self.callInThreadWithCallback(lambda ok, result: None, f, *a, **kw)


class ThreadlessClock(Clock):
    """
    A L{Clock} whose C{callFromThread} calls at once and whose thread pool
    is a L{NonThreadPool}, as L{deferToThreadPool} needs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pool = NonThreadPool()

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        """
        Call C{f} now.
        """
        f(*a, **kw)

    def getThreadPool(self) -> NonThreadPool:
        """
        The pool C{deferToThreadPool} is pointed at.
        """
        return self._pool


class LocalNode:
    """
    The router, agents and store of one node, run deterministically.

    Time is a L{ThreadlessClock} starting at the real current time (so
    C{reply_by} timestamps mean what they say); agents run when L{pump}
    says so.

    @param directory: where the SQLite file goes.
    @param overrides: config values by dotted key (C{agents.wall_clock}).
    @param tools: the MCP tool gateway the router uses, if any.
    """

    def __init__(
        self, directory: str, now: float, tools: Optional[IToolGateway] = None, **overrides: Any
    ) -> None:
        os.makedirs(directory, exist_ok=True)
        self.clock = ThreadlessClock()
        self.clock.advance(now)
        self.config = load({k.replace("__", "."): v for k, v in overrides.items()}, {}, None)
        self.store = SQLiteStore(
            os.path.join(directory, "caxton.sqlite3"), self.clock, threadpool=NonThreadPool()
        )
        self.runtime = WasmRuntime()
        self.workers = InlineWorkers()
        self.agents = AgentManager(
            self.clock,
            self.runtime,
            self.workers,
            self.store,
            self.config.agent_defaults,
            "test-node",
            compile_in_thread=False,
        )
        self.router = Router(self.clock, self.agents, self.store, ConversationTracker(), tools=tools)

    def open(self) -> Any:
        """
        Open the store; a Deferred.
        """
        return self.store.open()

    def pump(self) -> int:
        """
        Run every queued agent batch, and what they cause, to the end.
        """
        total = 0
        while True:
            ran = self.workers.pump()
            self.clock.advance(0)
            if not ran:
                return total
            total += ran


@implementer(IToolGateway)
class FakeTools:
    """
    An in-memory L{IToolGateway}: tools are Python callables by
    C{(server, tool)}; a call answers with what the callable returns, a
    L{ToolFailure} it raises, or a Deferred it returns (to answer later).
    Receiver names and allowances go through the real gateway's functions.

    @ivar calls: every C{(server, tool, arguments)} called.
    """

    def __init__(self, tools: Dict[Tuple[str, str], Callable[[Any], Any]]) -> None:
        self.tools = dict(tools)
        self.calls: List[Tuple[str, str, Any]] = []

    def parse_receiver(self, name: str) -> Tuple[str, str]:
        return parse_receiver(name)

    def allowed(self, allowances: Sequence[str], server: str, tool: str) -> bool:
        return allowed(allowances, server, tool)

    def call(self, server: str, tool: str, arguments: Any) -> Deferred:
        self.calls.append((server, tool, arguments))
        handler = self.tools.get((server, tool))
        if handler is None:
            return fail(ToolFailure("NOT_FOUND", f"no tool {tool!r} on server {server!r}"))
        return maybeDeferred(handler, arguments)

    def catalog(self) -> Deferred:
        servers: Dict[str, List[Dict[str, Any]]] = {}
        for server, tool in sorted(self.tools):
            servers.setdefault(server, []).append({"name": tool, "description": "", "input_schema": {}})
        return succeed(
            [
                {"name": name, "url": f"fake://{name}", "status": "ok", "error": None, "tools": tools}
                for name, tools in servers.items()
            ]
        )
