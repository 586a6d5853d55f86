"""
The real pieces of one node, assembled the way caxton/node.py assembles
them (minus the HTTP API), for benchmarks that run on the real reactor.

SQLiteStore on a temporary file, WasmRuntime (with its epoch ticker),
ThreadWorkers, AgentManager and Router.  Nothing in caxton/ is changed;
benchmarks that need to observe an event wrap methods in their own process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Optional

import _common  # noqa: F401  (puts the repo on sys.path)

from caxton.agents.executor import ThreadWorkers
from caxton.agents.manager import AgentManager
from caxton.agents.runtime import WasmRuntime
from caxton.config import AgentDefaults
from caxton.router.router import Router
from caxton.store.sqlite import SQLiteStore

#: The defaults of caxton/config.py (agents.*), as a node would run with.
DEFAULTS = AgentDefaults(
    memory=16 * 1024**2,
    fuel=1_000_000_000,
    wall_clock=1.0,
    max_message=256 * 1024,
    max_sends=1000,
    max_traps=5,
    trap_window=60.0,
    max_queue=10_000,
)

#: caxton/config.py's default for agents.workers.
DEFAULT_WORKERS = 4


class BenchNode:
    """
    Store, runtime, workers, agents and router of one node.
    """

    def __init__(self, reactor: Any, fast: bool = True, workers: int = DEFAULT_WORKERS,
                 cache_dir: Optional[str] = None) -> None:
        self.reactor = reactor
        self.tmp = tempfile.mkdtemp(prefix="caxton-bench-")
        self.store = SQLiteStore(os.path.join(self.tmp, "state.sqlite3"), reactor)
        self.runtime = WasmRuntime(cache_dir=cache_dir, fast=fast)
        self.workers = ThreadWorkers(reactor, workers)
        self.agents = AgentManager(reactor, self.runtime, self.workers, self.store, DEFAULTS, "bench")
        self.router = Router(reactor, self.agents, self.store)

    async def start(self) -> None:
        await self.store.open()
        self.runtime.start()
        self.workers.start()

    async def stop(self) -> None:
        # As the node's own shutdown does: let running batches finish and
        # their output be routed before the store closes.
        self.router.stop()
        await self.agents.drain(5.0)
        await self.workers.stop()
        self.runtime.stop()
        await self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def flushed(self) -> None:
        """
        Fires when every record made so far is written: the store runs its
        jobs in order on one thread, and a read flushes what is pending.
        """
        await self.store.list_dead_letters(1, None)


def run(main: Any) -> None:
    """
    Run C{main(reactor)} (a coroutine function) on the real reactor, then
    stop it; exit non-zero if it failed.
    """
    from twisted.internet import defer, task

    def _main(reactor: Any) -> Any:
        return defer.Deferred.fromCoroutine(main(reactor))

    task.react(_main)
