"""
Tests for L{caxton.auth.audit}: the file format, rotation, paging, and
the node's queue in front of its writer thread.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Callable, List, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from caxton.auth import audit as audit_module
from caxton.auth.audit import AuditLog, AuditService, append_entries, entry, read_entries
from caxton.auth.threads import IExecutor, InlineExecutor, ThreadExecutor
from caxton.errors import NotAccepting


def _lines(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


@implementer(IExecutor)
class _HeldExecutor:
    """
    Runs nothing until told to: for watching what queues up while the
    writer is busy.
    """

    def __init__(self) -> None:
        self.jobs: List[Tuple[Callable[..., Any], tuple, Deferred]] = []

    def submit(self, function: Callable[..., Any], *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((function, args, d))
        return d

    def run_one(self) -> None:
        function, args, d = self.jobs.pop(0)
        try:
            result = function(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)


class EntryTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """
        An entry has the route template and arguments, never more than
        L{audit_module.MAX_VALUE} characters of any value.
        """
        value = entry(
            "change", "10.0.0.1", "DELETE", "/api/v1/agents/<name>", {"name": "x" * 1000},
            status=204, key_id="0123456789ab", key_name="ci",
        )
        self.assertEqual(value["route"], "/api/v1/agents/<name>")
        self.assertEqual(value["status"], 204)
        self.assertEqual(len(value["arguments"]["name"]), audit_module.MAX_VALUE + 3)
        self.assertNotIn("reason", value)
        self.assertEqual(
            entry("refused", "c", "GET", "/r", reason="unknown key")["reason"], "unknown key"
        )


class FileTests(SynchronousTestCase):
    """
    The blocking half: appending, numbering, rotating, reading back.
    """

    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp(), "audit.log")

    def test_append_numbers_and_one_line_each(self) -> None:
        """
        Entries get consecutive C{seq} numbers and one line each, even
        with a newline in a value; the file is private.
        """
        append_entries(self.path, [entry("change", "c", "POST", "/a", {"name": "a\nb"})], 10_000, 5.0)
        append_entries(self.path, [entry("change", "c", "POST", "/b"), entry("refused", "c", "GET", "/c")],
                       10_000, 6.0)
        lines = _lines(self.path)
        self.assertEqual([line["seq"] for line in lines], [1, 2, 3])
        self.assertEqual([line["time"] for line in lines], [5.0, 6.0, 6.0])
        self.assertEqual(lines[0]["arguments"], {"name": "a\nb"})
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_rotation(self) -> None:
        """
        Past C{max_size} the file becomes C{audit.log.1} (replacing the
        older one); numbering goes on; both are read, newest first.
        """
        for i in range(30):
            append_entries(self.path, [entry("change", "c", "POST", f"/r{i}")], 1000, float(i))
        current, older = _lines(self.path), _lines(self.path + ".1")
        self.assertLessEqual(os.path.getsize(self.path), 1000)
        self.assertLessEqual(os.path.getsize(self.path + ".1"), 1000)
        self.assertEqual(current[-1]["seq"], 30)
        self.assertEqual(older[-1]["seq"] + 1, current[0]["seq"])
        found = read_entries(self.path, 1000)
        self.assertEqual([e["seq"] for e in found], list(range(30, 30 - len(found), -1)))
        self.assertEqual(len(found), len(current) + len(older))
        self.assertLess(len(found), 30)  # the oldest are gone

    def test_numbering_continues_from_rotated_file(self) -> None:
        """
        With C{audit.log} gone (just rotated, or deleted), numbering goes on
        from C{audit.log.1}.
        """
        append_entries(self.path, [entry("change", "c", "POST", "/a")] * 3, 10_000, 1.0)
        os.rename(self.path, self.path + ".1")
        append_entries(self.path, [entry("change", "c", "POST", "/b")], 10_000, 2.0)
        self.assertEqual(_lines(self.path)[0]["seq"], 4)

    def test_paging(self) -> None:
        """
        C{limit} and C{before} page through the log, newest first, over
        blocks larger than one read.
        """
        self.patch(audit_module, "_TAIL", 100)
        append_entries(self.path, [entry("change", "c", "POST", f"/r{i}") for i in range(50)], 10**6, 1.0)
        first = read_entries(self.path, 20)
        self.assertEqual([e["seq"] for e in first], list(range(50, 30, -1)))
        second = read_entries(self.path, 20, before=first[-1]["seq"])
        self.assertEqual([e["seq"] for e in second], list(range(30, 10, -1)))
        self.assertEqual([e["seq"] for e in read_entries(self.path, 20, before=11)], list(range(10, 0, -1)))
        self.assertEqual(read_entries(self.path, 20, before=1), [])

    def test_skips_junk_lines(self) -> None:
        """
        Lines that are not entries (a torn write, a hand edit) are skipped.
        """
        append_entries(self.path, [entry("change", "c", "POST", "/a")], 10_000, 1.0)
        with open(self.path, "a") as f:
            f.write("not json\n[1]\n{\"seq\": \"x\"}\n")
        append_entries(self.path, [entry("change", "c", "POST", "/b")], 10_000, 1.0)
        self.assertEqual([e["seq"] for e in read_entries(self.path, 10)], [2, 1])

    def test_no_file(self) -> None:
        self.assertEqual(read_entries(self.path, 10), [])


class AuditLogTests(SynchronousTestCase):
    """
    The node's side: queued on the reactor thread, written in batches, in
    order, by one writer.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(500)
        self.path = os.path.join(self.mktemp(), "audit.log")
        self.executor = _HeldExecutor()
        self.audit = AuditLog(self.path, 10**6, self.clock, self.executor)

    def test_batches_while_writer_busy(self) -> None:
        """
        Entries recorded while a write is under way go out together in
        the next one, in order, with the time they were recorded.
        """
        self.audit.record(entry("change", "c", "POST", "/1"))
        self.clock.advance(1)
        self.audit.record(entry("change", "c", "POST", "/2"))
        self.audit.record(entry("change", "c", "POST", "/3"))
        self.assertEqual(len(self.executor.jobs), 1)
        self.executor.run_one()
        self.assertEqual(len(self.executor.jobs), 1)
        self.executor.run_one()
        lines = _lines(self.path)
        self.assertEqual([line["route"] for line in lines], ["/1", "/2", "/3"])
        self.assertEqual([line["time"] for line in lines], [500.0, 501.0, 501.0])

    def test_listing_sees_everything_recorded_before(self) -> None:
        """
        A listing waits for the entries queued before it.
        """
        self.audit.record(entry("change", "c", "POST", "/1"))
        self.audit.record(entry("change", "c", "POST", "/2"))
        listing = Deferred.fromCoroutine(self.audit.entries(10))
        while self.executor.jobs:
            self.executor.run_one()
        entries, next_before = self.successResultOf(listing)
        self.assertEqual([e["route"] for e in entries], ["/2", "/1"])
        self.assertIsNone(next_before)

    def test_next_before(self) -> None:
        audit = AuditLog(self.path, 10**6, self.clock, InlineExecutor())
        for i in range(5):
            audit.record(entry("change", "c", "POST", f"/{i}"))
        entries, next_before = self.successResultOf(Deferred.fromCoroutine(audit.entries(2)))
        self.assertEqual(next_before, 4)
        entries, next_before = self.successResultOf(Deferred.fromCoroutine(audit.entries(2, 2)))
        self.assertEqual(([e["seq"] for e in entries], next_before), ([1], None))

    def test_write_failure_logged_and_writer_goes_on(self) -> None:
        """
        A failed write is logged; later entries are still written.
        """
        os.makedirs(os.path.dirname(self.path))
        os.makedirs(self.path)  # a directory where the file should be
        audit = AuditLog(self.path, 10**6, self.clock, InlineExecutor())
        audit.record(entry("change", "c", "POST", "/lost"))
        self.assertTrue(self.flushLoggedErrors(OSError))
        os.rmdir(self.path)
        audit.record(entry("change", "c", "POST", "/kept"))
        self.assertEqual([line["route"] for line in _lines(self.path)], ["/kept"])

    def test_bounded_queue(self) -> None:
        """
        Past L{audit_module.MAX_PENDING} waiting entries, new ones are
        dropped and counted, not kept in memory.
        """
        self.patch(audit_module, "MAX_PENDING", 3)
        for i in range(6):
            self.audit.record(entry("change", "c", "POST", f"/{i}"))
        self.executor.run_one()  # /0, submitted at once
        self.executor.run_one()  # /1 /2 /3; /4 /5 were dropped
        self.assertEqual([line["route"] for line in _lines(self.path)], ["/0", "/1", "/2", "/3"])

    def test_closed(self) -> None:
        """
        After the service closed the log, entries are not queued and
        listings are refused.
        """
        service = AuditService(self.audit, ThreadExecutor(None, None))
        self.successResultOf(Deferred.fromCoroutine(service.close()))
        self.audit.record(entry("change", "c", "POST", "/late"))
        self.assertEqual(self.executor.jobs, [])
        self.failureResultOf(Deferred.fromCoroutine(self.audit.entries(1)), NotAccepting)

    def test_executors_provide_interface(self) -> None:
        verifyObject(IExecutor, InlineExecutor())
        verifyObject(IExecutor, ThreadExecutor.single(None, "t"))
