# -*- test-case-name: tests.test_auth_audit -*-
"""
Where the auth package does its file I/O: off the reactor thread.

An L{IExecutor} runs a blocking function and gives its result as a
Deferred.  The node uses L{ThreadExecutor} (a thread pool: the reactor's
for key changes, a private one-thread pool for the audit log, so audit
writes keep their order); tests use L{InlineExecutor}, which runs the
function at once, so they need no threads and no real time.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer


class IExecutor(Interface):
    """
    Runs blocking functions somewhere the reactor does not wait for them.
    """

    def submit(function: Callable[..., Any], *args: Any) -> Deferred:
        """
        Run C{function(*args)}; a Deferred of its result.
        """


@implementer(IExecutor)
class ThreadExecutor:
    """
    Runs functions in C{pool}, first in first out.

    @param reactor: the reactor results are delivered on.
    @param pool: the thread pool; with C{owned}, this executor starts and
        stops it.  C{None} means the reactor's own pool, looked up when a
        function is submitted (it exists once the reactor runs).
    """

    def __init__(self, reactor: Any, pool: Optional[ThreadPool], owned: bool = False) -> None:
        self._reactor = reactor
        self._pool = pool
        self._owned = owned

    @classmethod
    def single(cls, reactor: Any, name: str) -> "ThreadExecutor":
        """
        An executor with a private pool of one thread: functions run one
        at a time, in the order they were submitted.
        """
        return cls(reactor, ThreadPool(minthreads=0, maxthreads=1, name=name), owned=True)

    def submit(self, function: Callable[..., Any], *args: Any) -> Deferred:
        """
        Run C{function(*args)} in the pool.
        """
        pool = self._pool if self._pool is not None else self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, function, *args)

    def start(self) -> None:
        """
        Start an owned pool.
        """
        if self._owned and self._pool is not None and not self._pool.started:
            self._pool.start()

    def stop(self) -> None:
        """
        Stop an owned pool (waits for the function running now, if any).
        """
        if self._owned and self._pool is not None and self._pool.started:
            self._pool.stop()


@implementer(IExecutor)
class InlineExecutor:
    """
    Runs functions at once, on the calling thread: for tests.
    """

    def submit(self, function: Callable[..., Any], *args: Any) -> Deferred:
        """
        Run C{function(*args)} now; an already-fired Deferred.
        """
        try:
            return succeed(function(*args))
        except BaseException:
            return fail()
