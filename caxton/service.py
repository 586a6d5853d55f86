# -*- test-case-name: tests.test_service -*-
"""
The root service of a node, and the order things start and stop in.

L{CaxtonService} is one C{MultiService} with named children:

  - C{store}: the SQLite state (L{StoreService});
  - C{runtime}: the wasmtime engine's epoch ticker and the agent workers
    (L{RuntimeService});
  - C{agents}: the hosted agents (L{caxton.agents.manager.AgentManager});
  - C{cluster}: membership, node streams and the registry, when the node
    has a bind address (L{caxton.cluster.service.ClusterService});
  - C{tools}: the MCP servers agents may call, when some are configured
    (L{ToolsService});
  - C{api}: one listener per C{--api} endpoint.

Starting is ordered and asynchronous (the store must be open before the
agents come back, and they before the API listens), so the root starts its
children itself, in that order, and L{CaxtonService.whenReady} fires when
all are up.  Stopping runs the other way and is graceful (SPEC 2): stop
leave the cluster, stop listening, stop taking messages, let running
handlers finish within the grace period, persist what is still queued,
close the store.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, List, Optional

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from caxton.agents.executor import IWorkers
from caxton.agents.manager import AgentManager
from caxton.agents.runtime import WasmRuntime
from caxton.config import ConfigError
from caxton.router.router import Router
from caxton.store.interfaces import IStateStore

log = Logger()


class StoreService(Service):
    """
    Opens the node's store on start and closes it on stop.
    """

    name = "store"

    def __init__(self, store: IStateStore) -> None:
        self.store = store

    async def open(self) -> None:
        """
        Open the store (and create or migrate its schema).
        """
        await self.store.open()

    async def close(self) -> None:
        """
        Flush and close the store.
        """
        await self.store.close()


class RuntimeService(Service):
    """
    Runs the epoch ticker and the worker threads agents run on.
    """

    name = "runtime"

    def __init__(self, runtime: WasmRuntime, workers: IWorkers) -> None:
        self.runtime = runtime
        self.workers = workers

    async def open(self) -> None:
        """
        Start the epoch ticker and the workers.
        """
        self.runtime.start()
        self.workers.start()

    async def close(self) -> None:
        """
        Let the workers finish and stop them, then the ticker.
        """
        await self.workers.stop()
        self.runtime.stop()


class ToolsService(Service):
    """
    Starts and stops the MCP tool gateway (reads token files, closes HTTP
    connections).
    """

    name = "tools"

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    async def open(self) -> None:
        """
        Start the gateway.
        """
        self.gateway.start()

    async def close(self) -> None:
        """
        Stop the gateway; calls in flight fail.
        """
        await self.gateway.stop()


class CaxtonService(MultiService):
    """
    One Caxton node.

    @param reactor: the reactor the node runs on; stopped if start fails.
    @param router: the node's router, stopped before the agents drain.
    @param grace: seconds running handlers get to finish at shutdown.
    """

    def __init__(self, reactor: Any, router: Router, grace: float) -> None:
        super().__init__()
        self._reactor = reactor
        self.router = router
        self.grace = grace
        self.ready = False
        self._started: Optional[Deferred] = None

    def _child(self, name: str) -> Any:
        return self.getServiceNamed(name)

    def privilegedStartService(self) -> None:
        # twistd starts listeners here, before startService, which would put
        # the API up before the state is loaded.  The node binds nothing
        # privileged of its own: everything starts in order in _start.
        Service.privilegedStartService(self)

    def startService(self) -> None:
        Service.startService(self)
        self._started = Deferred.fromCoroutine(self._start())
        self._started.addErrback(self._start_failed)

    async def _start(self) -> None:
        for child in self:
            child.startService()
            if _opens(child):
                await child.open()
            if isinstance(child, AgentManager):
                await child.load()
                await self._redeliver(child)
        self.ready = True
        log.info("caxton node ready")

    async def _redeliver(self, agents: AgentManager) -> None:
        """
        Hand back the messages that were waiting for agents when the node
        last stopped, gracefully or not: those in the delivery journal
        (and any a Caxton before the journal kept at its shutdown).
        """
        store = self._child("store").store
        kept = await store.take_pending()
        for name, message in kept:
            self.router.redeliver(name, message)
        journal = await store.load_journal()
        for name, message in journal:
            self.router.redeliver(name, message, journaled=True)
        if kept or journal:
            log.info("redelivered {count} queued messages", count=len(kept) + len(journal))

    def _start_failed(self, failure: Any) -> None:
        """
        Log why the node could not start, stop the reactor, and exit with
        status 1 once it has stopped (twistd and twist would exit 0).
        """
        if failure.check(ConfigError):
            # A bad file named by the config (TLS directory, gossip key):
            # one line, like any other configuration error.
            log.critical("caxton: configuration error: {error}", error=str(failure.value))
            sys.stderr.write(f"caxton: configuration error: {failure.value}\n")
        else:
            log.failure("caxton node failed to start", failure)
        if getattr(self._reactor, "running", False):
            self._reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
            self._reactor.stop()

    def whenReady(self) -> Deferred:
        """
        Fires when the node has started (or failed to).
        """
        if self._started is None:
            return succeed(None)
        d: Deferred = Deferred()
        self._started.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        log.info("caxton node stopping")
        if self._started is not None and not self._started.called:
            # Stopped while still starting (SIGTERM during a long load):
            # let the start finish, then undo it in order.
            done: Deferred = Deferred()
            self._started.addBoth(lambda result: (done.callback(None), result)[1])
            await done
        self.ready = False
        children: List[IService] = list(self)
        cluster = [c for c in children if c.name == "cluster"]
        for member in cluster:
            # Leave first, so peers record this node as left, not dead.
            await member.leave_gracefully()
        api = [c for c in children if c.name and c.name.startswith("api")]
        for listener in api:
            if listener.running:
                await listener.stopService()
        self.router.stop()
        agents = self._child("agents")
        left = await agents.drain(self.grace)
        if left:
            # They are in the delivery journal, which the next start reads.
            log.info("kept {count} queued messages for the next start", count=len(left))
        for child in reversed(children):
            if child in api:
                continue
            if _opens(child):
                await child.close()
            if child.running:
                await maybeDeferred(child.stopService)
        log.info("caxton node stopped")
        _forget_sigterm(self._reactor)


def _opens(child: IService) -> bool:
    """
    Whether C{child} has work to do at start and stop beyond running: an
    C{open()} and a C{close()} coroutine (the store, the runtime, the
    cluster, the tools), awaited in order at start and in reverse at stop.
    """
    return callable(getattr(child, "open", None)) and callable(getattr(child, "close", None))


def _forget_sigterm(reactor: Any) -> None:
    """
    SPEC 2: a SIGTERM ends in a graceful stop and exit status 0.  C{twist}
    and C{twistd} re-raise the signal that stopped the reactor once it has
    stopped (so the status would be 143); the node has shut down cleanly by
    now, so forget that signal.  C{_exitSignal} is private to Twisted: the
    integration test of a SIGTERM restart checks the status stays 0.
    """
    if getattr(reactor, "_exitSignal", None) == signal.SIGTERM:
        reactor._exitSignal = None


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def data_paths(data_dir: str) -> dict:
    """
    Where a node keeps things inside its data directory.
    """
    return {
        "database": os.path.join(data_dir, "caxton.sqlite3"),
        "compiled": os.path.join(data_dir, "compiled"),
    }
