# -*- test-case-name: tests.test_agents_executor -*-
"""
Worker threads for guest calls, so that no agent runs on the reactor thread.

ctypes releases the GIL while wasm runs, so a spinning agent costs one
worker thread until its wall-clock limit, while the reactor keeps answering
the API and timers (shared/notes/agents.md, section 6).  Work goes in with
L{IWorkers.schedule}; its result comes back on the reactor thread.

L{InlineWorkers} is the deterministic fake for unit tests: work runs when
the test calls L{InlineWorkers.pump}, on the test's thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

#: How long stopping waits for the worker threads.
STOP_TIMEOUT = 10.0

log = Logger()

_Job = Tuple[Callable[[], Any], Callable[[Any], None], Callable[[Failure], None]]


class IWorkers(Interface):
    """
    Somewhere to run blocking work off the reactor thread.
    """

    def schedule(work: Callable[[], Any], done: Callable[[Any], None], error: Callable[[Failure], None]) -> None:
        """
        Run C{work()} off the reactor thread; then, on the reactor thread,
        C{done(result)}, or C{error(failure)} if it raised.
        """

    def start() -> None:
        """
        Start the workers.
        """

    def stop() -> Deferred:
        """
        Let running work finish, stop the workers; fires when they are gone.
        """


@implementer(IWorkers)
class ThreadWorkers:
    """
    A fixed set of daemon threads taking jobs from one queue.

    @param reactor: provides C{callFromThread} and C{callInThread}.
    @param count: how many guest calls may run at once.
    """

    def __init__(self, reactor: Any, count: int) -> None:
        self._reactor = reactor
        self._count = count
        self._jobs: "queue.SimpleQueue[Optional[_Job]]" = queue.SimpleQueue()
        self._threads: List[threading.Thread] = []

    def start(self) -> None:
        """
        Start the threads.
        """
        for i in range(self._count):
            thread = threading.Thread(target=self._work, name=f"caxton-agent-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def schedule(self, work: Callable[[], Any], done: Callable[[Any], None], error: Callable[[Failure], None]) -> None:
        """
        Queue C{work} for the next free thread.
        """
        self._jobs.put((work, done, error))

    def _work(self) -> None:
        callFromThread = self._reactor.callFromThread
        while True:
            job = self._jobs.get()
            if job is None:
                return
            work, done, error = job
            try:
                result = work()
            except BaseException:
                callFromThread(error, Failure())
            else:
                callFromThread(done, result)

    def stop(self, timeout: float = STOP_TIMEOUT) -> Deferred:
        """
        Let queued work run, end the threads; fires once they are gone, or
        after C{timeout} seconds with an error logged: a thread stuck in a
        host call must not keep the node from exiting (they are daemons).
        """
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)

        def join() -> List[str]:
            deadline = time.monotonic() + timeout
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            return [thread.name for thread in threads if thread.is_alive()]

        def report(stuck: List[str]) -> None:
            if stuck:
                log.error("worker threads {threads} did not stop; leaving them", threads=", ".join(stuck))

        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), join)
        d.addCallback(report)
        return d


@implementer(IWorkers)
class InlineWorkers:
    """
    Workers for deterministic tests: jobs wait until L{pump} runs them.
    """

    def __init__(self) -> None:
        self.pending: Deque[_Job] = deque()

    def start(self) -> None:
        """
        Nothing to start.
        """

    def stop(self) -> Deferred:
        """
        Run what is pending; fires at once.
        """
        self.pump()
        return succeed(None)

    def schedule(self, work: Callable[[], Any], done: Callable[[Any], None], error: Callable[[Failure], None]) -> None:
        """
        Keep C{work} until L{pump}.
        """
        self.pending.append((work, done, error))

    def pump(self, limit: int = 10_000) -> int:
        """
        Run jobs (and the jobs they schedule) until none is left.

        @return: how many ran.
        """
        ran = 0
        while self.pending and ran < limit:
            work, done, error = self.pending.popleft()
            try:
                result = work()
            except BaseException:
                error(Failure())
            else:
                done(result)
            ran += 1
        return ran
