"""
Run the C{caxton} command as a user does, in a child process
(C{python -m caxton.cli ...}), from integration tests that run on the
reactor: the child is spawned without blocking it, so a fake server in the
test process can answer the command.

The child's environment has this checkout on C{PYTHONPATH}, C{TZ=UTC} (so
times print the same everywhere) and no C{CAXTON_URL} or C{CAXTON_TOKEN}
from the outer environment unless the test gives them.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import FailTest

from tests.nodes import REPO, ChildProcess

#: The longest one command may take, in seconds (a deploy compiles).
LIMIT = 60.0


def environment(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """
    The environment of a C{caxton} child process.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("CAXTON_URL", "CAXTON_TOKEN")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["TZ"] = "UTC"
    env.update(extra or {})
    return env


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred = Deferred()
        self._waiters: List[Tuple[int, Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def lines(self) -> List[str]:
        return bytes(self.out).decode("utf-8", "replace").splitlines()

    def _check(self) -> None:
        count = self.out.count(b"\n")
        for waiter in list(self._waiters):
            if count >= waiter[0]:
                self._waiters.remove(waiter)
                waiter[1].callback(None)

    def wait_lines(self, count: int) -> Deferred:
        waiter: Deferred = Deferred()
        self._waiters.append((count, waiter))
        self._check()
        return waiter

    def processEnded(self, reason) -> None:
        for _, waiter in self._waiters:
            waiter.errback(FailTest(f"the command ended first:\n{self.text()}"))
        self._waiters = []
        self.ended.callback(reason.value)

    def text(self) -> str:
        return (
            "stdout:\n" + bytes(self.out).decode("utf-8", "replace")
            + "\nstderr:\n" + bytes(self.err).decode("utf-8", "replace")
        )


def _status(ended: object) -> Optional[int]:
    if isinstance(ended, ProcessDone):
        return 0
    if isinstance(ended, ProcessTerminated):
        return ended.exitCode
    return None


class Command(ChildProcess):
    """
    One running C{caxton} command.
    """

    def __init__(self, argv: List[str], env: Optional[Dict[str, str]] = None) -> None:
        self._output = _Collect()
        self._process = reactor.spawnProcess(
            self._output,
            sys.executable,
            [sys.executable, "-m", "caxton.cli", *argv],
            env=environment(env),
            path=REPO,
        )

    @property
    def out(self) -> str:
        return bytes(self._output.out).decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return bytes(self._output.err).decode("utf-8", "replace")

    async def lines(self, count: int, timeout: float = 30.0) -> List[str]:
        """
        Wait until the command printed C{count} lines; its lines so far.
        """
        waiter = self._output.wait_lines(count)
        timer = reactor.callLater(timeout, waiter.cancel)
        try:
            await waiter
        except Exception:
            self.kill()
            raise FailTest(f"fewer than {count} lines within {timeout}s:\n{self._output.text()}")
        finally:
            if timer.active():
                timer.cancel()
        return self._output.lines()

    async def signal(self, sig: int, timeout: float = 30.0) -> Optional[int]:
        """
        Send C{sig} and wait for the command to end (killing it after
        C{timeout}); its exit status.
        """
        if self._process is not None and not self._output.ended.called:
            self._process.signalProcess(int(sig))
        return await self.finished(timeout)

    async def finished(self, timeout: float = LIMIT) -> Optional[int]:
        """
        Wait for the command to end on its own (killing it after
        C{timeout}); its exit status.
        """
        timer = reactor.callLater(timeout, self.kill)
        ended = await self._output.ended
        if timer.active():
            timer.cancel()
        else:
            raise FailTest(f"caxton did not finish within {timeout}s:\n{self._output.text()}")
        self._process = None
        return _status(ended)


async def caxton(*argv: str, env: Optional[Dict[str, str]] = None, timeout: float = LIMIT) -> Tuple[int, str, str]:
    """
    Run C{caxton argv...} to its end: C{(status, stdout, stderr)}.
    """
    command = Command(list(argv), env)
    status = await command.finished(timeout)
    return status, command.out, command.err


def start(test, argv: List[str], env: Optional[Dict[str, str]] = None) -> Command:
    """
    Start a C{caxton} command that runs until stopped; it is killed when
    C{test} ends.
    """
    command = Command(argv, env)
    test.addCleanup(lambda: ensureDeferred(command.stop(signal.SIGKILL)))
    return command


def table(text: str) -> List[Dict[str, str]]:
    """
    The rows of a table the CLI printed, as dicts by lower-case header
    (cells are separated by two or more spaces).
    """
    lines = [line for line in text.splitlines() if line.strip()]
    headers = [h.lower() for h in re.split(r"\s{2,}", lines[0].strip())]
    return [dict(zip(headers, re.split(r"\s{2,}", line.strip()))) for line in lines[1:]]


def fields(text: str) -> Dict[str, str]:
    """
    The C{name  value} lines the CLI printed, as a dict.
    """
    result = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(" "):
            name, _, value = re.split(r"(\s{2,})", line, maxsplit=1)
            result[name] = value.strip()
    return result
