# -*- test-case-name: tests.test_auth_audit -*-
"""
The audit log (SPEC 6): every change and every refused login, as JSON
lines in C{<data_dir>/audit.log}, listable by admins.

One line per event, for example::

  {"seq":42,"time":1718000000.25,"event":"change","key_id":"3f9c0a1b2c3d",
   "key_name":"ci","client":"10.0.0.7","method":"POST",
   "route":"/api/v1/agents/<name>/stop","arguments":{"name":"echo"},
   "status":200}

C{event} is C{change} (a request other than C{GET}/C{HEAD} that passed
authorization, whatever its outcome) or C{refused} (a bad, unknown or
revoked token, a role too low for the route, or a non-loopback client in
protected mode, with C{reason}).  C{seq} grows by one per line, across
rotations and across writers (the node and C{caxton keys}), and is the
cursor of C{GET /api/v1/audit?before=}.  A token, a secret or a request
body is never written: only what L{entry} copies.

Writing does not block the reactor: L{AuditLog.record} only queues the
entry; a single writer thread (L{caxton.auth.threads.ThreadExecutor.single})
appends whatever is queued in one batch, then looks again.  One thread
keeps lines in order, and reads for the listing run on it too, after the
writes queued before them.  Every append takes an exclusive C{fcntl} lock
on C{audit.log.lock}, so C{caxton keys} can add its own lines while the
node runs.

The file is bounded: when an append would take C{audit.log} past
C{max_size}, it is first renamed to C{audit.log.1} (replacing the older
one), so the log takes at most about twice C{max_size} on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from caxton.errors import NotAccepting

log = Logger()

#: The file, in the data directory.
AUDIT_FILE = "audit.log"

#: Longest text kept of one value (a path argument, a name); longer ones are
#: cut, so one line stays well under the tail read below.
MAX_VALUE = 256

#: Entries waiting for the writer beyond this are dropped (and counted):
#: memory stays bounded when the disk stalls.
MAX_PENDING = 100_000

_TAIL = 64 * 1024


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_VALUE:
        return value[:MAX_VALUE] + "..."
    return value


def entry(
    event: str,
    client: str,
    method: str,
    route: Optional[str],
    arguments: Optional[Mapping[str, Any]] = None,
    status: Optional[int] = None,
    key_id: Optional[str] = None,
    key_name: Optional[str] = None,
    reason: Optional[str] = None,
    detail: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """
    One audit entry (without C{seq} and C{time}, which the log adds).

    @param event: C{change} or C{refused}.
    @param client: the client's address (C{127.0.0.1}, C{unix}, C{cli}).
    @param method: the HTTP method (C{CLI} for C{caxton keys}).
    @param route: the route template, never the raw path.
    @param arguments: the template's values (an agent's name, a key id).
    @param status: the response's status code, C{None} when the client
        left before it was answered.
    @param key_id: the key that made the request (C{loopback} in protected
        mode, C{cli} for C{caxton keys}), or the id a refused token named.
    @param key_name: that key's name.
    @param reason: why a request was refused.
    @param detail: anything else worth keeping (a new key's id and role).
    """
    value: Dict[str, Any] = {
        "event": event,
        "key_id": _short(key_id),
        "key_name": _short(key_name),
        "client": _short(client),
        "method": _short(method),
        "route": _short(route),
        "arguments": {str(k)[:64]: _short(str(v)) for k, v in (arguments or {}).items()},
        "status": status,
    }
    if reason is not None:
        value["reason"] = reason
    if detail:
        value["detail"] = {str(k)[:64]: _short(v) for k, v in detail.items()}
    return value


# Blocking file work: the writer thread and C{caxton keys} ----------------------


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _reverse_lines(path: str) -> Iterator[bytes]:
    """
    The complete lines of C{path}, last first, read backwards in blocks.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        position = f.seek(0, os.SEEK_END)
        rest = b""
        while position > 0:
            size = min(_TAIL, position)
            position -= size
            f.seek(position)
            block = f.read(size) + rest
            lines = block.split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line.strip():
                    yield line
        if rest.strip():
            yield rest


def _parse(line: bytes) -> Optional[Dict[str, Any]]:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("seq"), int):
        return None
    return value


def _last_seq(path: str) -> int:
    for name in (path, path + ".1"):
        for line in _reverse_lines(name):
            value = _parse(line)
            if value is not None:
                return value["seq"]
    return 0


def append_entries(path: str, entries: List[Dict[str, Any]], max_size: int, now: float) -> int:
    """
    Append C{entries} to the audit log at C{path}, numbered after the
    last line there, rotating first if they would take it past
    C{max_size} bytes.  Blocking: call it off the reactor thread.

    @param now: the time to give entries that have none.
    @return: the C{seq} of the last entry written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with _locked(path):
        seq = _last_seq(path)
        lines = []
        for item in entries:
            seq += 1
            value = {"seq": seq, "time": item.get("time", now)}
            value.update((k, v) for k, v in item.items() if k not in ("seq", "time"))
            # ensure_ascii: one line per entry whatever a name holds.
            lines.append(json.dumps(value, ensure_ascii=True, separators=(",", ":")) + "\n")
        data = "".join(lines).encode("ascii")
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > max_size:
            os.replace(path, path + ".1")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return seq


def read_entries(path: str, limit: int, before: Optional[int] = None) -> List[Dict[str, Any]]:
    """
    At most C{limit} entries, newest first, with C{seq} below C{before}
    (when given), from C{audit.log} then C{audit.log.1}.  Lines that are
    not entries (a hand edit, a torn line) are skipped.  Blocking.
    """
    found: List[Dict[str, Any]] = []
    for name in (path, path + ".1"):
        for line in _reverse_lines(name):
            value = _parse(line)
            if value is None or (before is not None and value["seq"] >= before):
                continue
            found.append(value)
            if len(found) >= limit:
                return found
    return found


# The node's side -------------------------------------------------------------


class AuditLog:
    """
    The node's audit log: entries are queued on the reactor thread and
    written in batches by one writer.

    @param path: the file (C{<data_dir>/audit.log}).
    @param max_size: rotate past this many bytes.
    @param clock: an C{IReactorTime}, for entry times.
    @param executor: an L{caxton.auth.threads.IExecutor} that runs one
        function at a time, in order.
    """

    def __init__(self, path: str, max_size: int, clock: Any, executor: Any) -> None:
        self.path = path
        self.max_size = max_size
        self._clock = clock
        self._executor = executor
        self._pending: List[Dict[str, Any]] = []
        self._writing: Optional[Deferred] = None
        self._idle: List[Deferred] = []
        self._dropped = 0
        self.closed = False

    @classmethod
    def in_data_dir(cls, data_dir: str, max_size: int, clock: Any, executor: Any) -> "AuditLog":
        """
        The audit log of the data directory C{data_dir}.
        """
        return cls(os.path.join(data_dir, AUDIT_FILE), max_size, clock, executor)

    def record(self, value: Dict[str, Any]) -> None:
        """
        Queue one entry (made by L{entry}); it is written soon, in order.
        """
        if self.closed:
            log.warn("audit entry after the log closed, not written: {event} {route}",
                     event=value.get("event"), route=value.get("route"))
            return
        if len(self._pending) >= MAX_PENDING:
            self._dropped += 1
            return
        value = dict(value, time=self._clock.seconds())
        self._pending.append(value)
        if self._writing is None:
            self._write()

    def _write(self) -> None:
        batch, self._pending = self._pending, []
        if self._dropped:
            log.error("audit log: {count} entries dropped, the writer could not keep up",
                      count=self._dropped)
            self._dropped = 0
        self._writing = self._executor.submit(
            append_entries, self.path, batch, self.max_size, self._clock.seconds()
        )
        self._writing.addCallbacks(self._written, self._failed, errbackArgs=(len(batch),))

    def _failed(self, failure: Any, count: int) -> None:
        log.failure("audit log: could not write {count} entries to {path}", failure,
                    count=count, path=self.path)
        self._written(None)

    def _written(self, _: Any) -> None:
        self._writing = None
        if self._pending:
            self._write()
            return
        idle, self._idle = self._idle, []
        for waiter in idle:
            waiter.callback(None)

    def flush(self) -> Deferred:
        """
        A Deferred that fires once everything queued so far is written.
        """
        if self._writing is None and not self._pending:
            d: Deferred = Deferred()
            d.callback(None)
            return d
        waiter: Deferred = Deferred()
        self._idle.append(waiter)
        return waiter

    async def entries(self, limit: int, before: Optional[int] = None) -> Tuple[List[Dict[str, Any]], Optional[int]]:
        """
        The newest C{limit} entries below C{before}, newest first, and
        the C{before} of the next page (C{None} on the last).
        """
        if self.closed:
            raise NotAccepting("the audit log is closed: the node is shutting down")
        await self.flush()
        found = await self._executor.submit(read_entries, self.path, limit, before)
        next_before = found[-1]["seq"] if len(found) == limit and found[-1]["seq"] > 1 else None
        return found, next_before


class AuditService(Service):
    """
    Starts the audit log's writer thread, and at stop writes what is
    queued and stops it.

    @param audit: the log.
    @param executor: its writer (a L{caxton.auth.threads.ThreadExecutor}).
    """

    name = "audit"

    def __init__(self, audit: AuditLog, executor: Any) -> None:
        self.audit = audit
        self.executor = executor

    async def open(self) -> None:
        """
        Start the writer.
        """
        self.executor.start()

    async def close(self) -> None:
        """
        Write what is queued, then stop the writer.
        """
        await self.audit.flush()
        self.audit.closed = True
        self.executor.stop()
