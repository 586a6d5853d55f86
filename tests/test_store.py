"""
Tests for L{caxton.store.sqlite}: the node's state in SQLite.

Most tests are deterministic: a L{Clock} is the reactor and L{NonThreadPool}
runs the worker's jobs inline, against real SQLite files.  L{RealWorkerTests}
runs the real reactor and the real worker thread end to end.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from caxton.store import sqlite as sqlitestore
from caxton.testing import NonThreadPool, ThreadlessClock
from caxton.store.interfaces import (
    AgentRecord,
    ConversationRecord,
    IStateStore,
    StoredMessage,
)
from caxton.store.sqlite import FLUSH_THRESHOLD, MIGRATIONS, SQLiteStore, StoreError

#: Where every test clock starts: a plausible Unix time.
START = 1_700_000_000.0

_TABLES = {
    "modules",
    "agents",
    "conversations",
    "messages",
    "mailbox",
    "dead_letters",
    "pending_messages",
}


@implementer(IReactorCore)
class TriggerClock(ThreadlessClock):
    """
    A L{ThreadlessClock} that also keeps system event triggers, as much of
    L{IReactorCore} as the store uses.
    """

    def __init__(self) -> None:
        super().__init__()
        self.triggers: Dict[int, Tuple[str, str, Callable[[], Any]]] = {}
        self._nextTrigger = 0

    def addSystemEventTrigger(
        self, phase: str, eventType: str, f: Callable[[], Any]
    ) -> int:
        """
        Keep C{f} for C{phase} and C{eventType}; return its id.
        """
        self._nextTrigger += 1
        self.triggers[self._nextTrigger] = (phase, eventType, f)
        return self._nextTrigger

    def removeSystemEventTrigger(self, triggerID: int) -> None:
        """
        Forget a trigger.
        """
        del self.triggers[triggerID]


def conversation(
    conversationId: str,
    participants: Tuple[str, ...] = ("alice", "bob"),
    *,
    state: str = "open",
    at: float = START,
    createdAt: Optional[float] = None,
    messageCount: int = 0,
) -> ConversationRecord:
    """
    A conversation summary as the router would pass it.
    """
    return ConversationRecord(
        conversation_id=conversationId,
        protocol="fipa-request",
        initiator=participants[0],
        participants=participants,
        state=state,
        created_at=at if createdAt is None else createdAt,
        updated_at=at,
        message_count=messageCount,
    )


def message(conversationId: str, n: int, sender: str = "alice", **extra: Any) -> Dict[str, Any]:
    """
    A message as its JSON object.
    """
    body = {
        "performative": "inform",
        "sender": sender,
        "receiver": ["bob"],
        "conversation_id": conversationId,
        "message_id": f"{conversationId}-{n}",
        "content": {"n": n},
    }
    body.update(extra)
    return body


def agent(name: str, moduleHash: str, **changes: Any) -> AgentRecord:
    """
    An agent record using module C{moduleHash}.
    """
    values: Dict[str, Any] = dict(
        name=name,
        version=1,
        module_hash=moduleHash,
        spec={"capabilities": ["echo"], "limits": {"memory": 1048576}, "config": {"x": [1, 2]}},
        status="running",
        reason=None,
        created_at=START,
        updated_at=START,
    )
    values.update(changes)
    return AgentRecord(**values)


def sideQuery(path: str, sql: str, parameters: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    """
    Query C{path} through a connection of the test's own.
    """
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


class _StoreTestMixin:
    """
    Make deterministic stores on real files for a L{SynchronousTestCase}.
    """

    def makeStore(
        self, path: Optional[str] = None, **options: Any
    ) -> Tuple[SQLiteStore, ThreadlessClock, str]:
        """
        Open a store on a new file (or C{path}), closed again at cleanup.
        """
        testCase: Any = self
        clock = ThreadlessClock()
        clock.advance(START)
        path = testCase.mktemp() if path is None else path
        store = SQLiteStore(path, clock, threadpool=NonThreadPool(), **options)
        testCase.successResultOf(store.open())
        testCase.addCleanup(lambda: testCase.successResultOf(store.close()))
        return store, clock, path


class OpeningTests(_StoreTestMixin, SynchronousTestCase):
    """
    Opening, migrating and closing.
    """

    def test_interface(self) -> None:
        """
        L{SQLiteStore} provides L{IStateStore} and exposes its path.
        """
        store, _, path = self.makeStore()
        self.assertTrue(verifyObject(IStateStore, store))
        self.assertEqual(store.path, path)

    def test_constructorDoesNoIO(self) -> None:
        """
        Making a store creates no file and starts no worker.
        """
        path = self.mktemp()
        pool = NonThreadPool()
        SQLiteStore(path, ThreadlessClock(), threadpool=pool)
        SQLiteStore(path, ThreadlessClock())
        self.assertFalse(os.path.exists(path))

    def test_constructorRejectsBadLimits(self) -> None:
        """
        Negative caps and a non-positive retention are refused.
        """
        for options in (
            {"max_messages_per_conversation": -1},
            {"max_dead_letters": -1},
            {"retention_seconds": 0},
        ):
            self.assertRaises(ValueError, SQLiteStore, "x", ThreadlessClock(), **options)

    def test_migratesEmptyFile(self) -> None:
        """
        Opening a new file creates every table and records the schema
        version in C{user_version}.
        """
        _, _, path = self.makeStore()
        tables = {
            name for (name,) in sideQuery(path, "SELECT name FROM sqlite_master WHERE type='table'")
        }
        self.assertTrue(_TABLES <= tables, tables)
        self.assertEqual(sideQuery(path, "PRAGMA user_version"), [(len(MIGRATIONS),)])

    def test_reopenIsIdempotent(self) -> None:
        """
        Opening an up-to-date file again (in the same store or a new one)
        applies nothing and loses nothing.
        """
        path = self.mktemp()
        clock = ThreadlessClock()
        store = SQLiteStore(path, clock, threadpool=NonThreadPool())
        self.successResultOf(store.open())
        store.record_mailbox("client:a", {"n": 1})
        self.successResultOf(store.close())
        self.successResultOf(store.open())
        self.successResultOf(store.close())
        store, _, _ = self.makeStore(path)
        self.assertEqual(sideQuery(path, "PRAGMA user_version"), [(len(MIGRATIONS),)])
        [stored] = self.successResultOf(store.read_mailbox("client:a", 0, 10))
        self.assertEqual(stored.message, {"n": 1})

    def test_migratesOlderFile(self) -> None:
        """
        A file made by an older schema gets only the missing migrations,
        keeping its data.
        """
        path = self.mktemp()
        self.patch(sqlitestore, "MIGRATIONS", MIGRATIONS[:1])
        old, _, _ = self.makeStore(path)
        old.record_mailbox("client:a", {"n": 1})
        self.successResultOf(old.close())
        self.assertEqual(sideQuery(path, "PRAGMA user_version"), [(1,)])
        self.patch(sqlitestore, "MIGRATIONS", MIGRATIONS)
        store, _, _ = self.makeStore(path)
        self.assertEqual(sideQuery(path, "PRAGMA user_version"), [(len(MIGRATIONS),)])
        self.assertEqual(len(self.successResultOf(store.read_mailbox("client:a", 0, 10))), 1)
        self.assertEqual(self.successResultOf(store.take_pending()), [])

    def test_refusesNewerVersion(self) -> None:
        """
        A file whose schema is newer than this code knows is refused with a
        L{StoreError} saying so, and left as it was.
        """
        path = self.mktemp()
        newer = len(MIGRATIONS) + 1
        connection = sqlite3.connect(path)
        connection.execute(f"PRAGMA user_version = {newer}")
        connection.close()
        store = SQLiteStore(path, ThreadlessClock(), threadpool=NonThreadPool())
        failure = self.failureResultOf(store.open(), StoreError)
        self.assertIn("newer than this caxton", str(failure.value))
        self.assertEqual(sideQuery(path, "PRAGMA user_version"), [(newer,)])
        self.failureResultOf(store.load_agents(), StoreError)

    def test_failedMigrationRollsBack(self) -> None:
        """
        A migration that fails leaves neither its changes nor its version
        behind, and the file opens once the migration is fixed.
        """
        path = self.mktemp()
        store, _, _ = self.makeStore(path)
        self.successResultOf(store.close())
        self.patch(
            sqlitestore,
            "MIGRATIONS",
            tuple(MIGRATIONS) + ("CREATE TABLE extra (x INTEGER); THIS IS NOT SQL;",),
        )
        broken = SQLiteStore(path, ThreadlessClock(), threadpool=NonThreadPool())
        self.failureResultOf(broken.open(), sqlite3.OperationalError)
        self.assertEqual(sideQuery(path, "PRAGMA user_version"), [(len(MIGRATIONS),)])
        self.assertEqual(sideQuery(path, "SELECT name FROM sqlite_master WHERE name='extra'"), [])
        self.patch(
            sqlitestore,
            "MIGRATIONS",
            tuple(MIGRATIONS) + ("CREATE TABLE extra (x INTEGER);",),
        )
        self.successResultOf(broken.open())
        self.addCleanup(lambda: self.successResultOf(broken.close()))
        self.assertEqual(sideQuery(path, "PRAGMA user_version"), [(len(MIGRATIONS) + 1,)])

    def test_walMode(self) -> None:
        """
        The file is in write-ahead-log mode.
        """
        _, _, path = self.makeStore()
        self.assertEqual(sideQuery(path, "PRAGMA journal_mode"), [("wal",)])

    def test_corruptFile(self) -> None:
        """
        A file that is not a database fails L{open} with SQLite's error.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"this is not a database" * 512)
        store = SQLiteStore(path, ThreadlessClock(), threadpool=NonThreadPool())
        self.failureResultOf(store.open(), sqlite3.DatabaseError)

    def test_memoryOnly(self) -> None:
        """
        With no path the store works in memory.
        """
        store = SQLiteStore(None, ThreadlessClock(), threadpool=NonThreadPool())
        self.successResultOf(store.open())
        store.record_mailbox("client:a", {"n": 1})
        self.assertEqual(len(self.successResultOf(store.read_mailbox("client:a", 0, 10))), 1)
        self.successResultOf(store.close())

    def test_notOpen(self) -> None:
        """
        Before L{open} and after L{close}, records raise and reads fail with
        L{StoreError}; closing twice is harmless; opening twice is refused.
        """
        store = SQLiteStore(self.mktemp(), ThreadlessClock(), threadpool=NonThreadPool())
        self.assertRaises(StoreError, store.record_mailbox, "client:a", {})
        self.failureResultOf(store.read_mailbox("client:a", 0, 1), StoreError)
        self.successResultOf(store.open())
        self.failureResultOf(store.open(), StoreError)
        self.successResultOf(store.close())
        self.successResultOf(store.close())
        self.assertRaises(StoreError, store.record_message, conversation("c"), message("c", 1))
        self.assertRaises(StoreError, store.record_dead_letter, {}, None, "TIMEOUT", "")
        self.failureResultOf(store.list_dead_letters(10, None), StoreError)

    def test_closeFlushes(self) -> None:
        """
        Records still pending when the store closes are written.
        """
        path = self.mktemp()
        clock = ThreadlessClock()
        store = SQLiteStore(path, clock, threadpool=NonThreadPool())
        self.successResultOf(store.open())
        store.record_message(conversation("c"), message("c", 1))
        store.record_mailbox("client:a", {"n": 1})
        store.record_dead_letter(message("c", 2), "bob", "TIMEOUT", "no answer")
        self.successResultOf(store.close())
        self.assertEqual(clock.getDelayedCalls(), [])
        for table in ("messages", "mailbox", "dead_letters"):
            self.assertEqual(sideQuery(path, f"SELECT count(*) FROM {table}"), [(1,)])


    def test_reactorShutdownCloses(self) -> None:
        """
        An open store closes itself (writing what is pending) when the
        reactor shuts down, and forgets that trigger once closed.
        """
        path = self.mktemp()
        reactor = TriggerClock()
        store = SQLiteStore(path, reactor, threadpool=NonThreadPool())
        self.successResultOf(store.open())
        [(phase, event, trigger)] = reactor.triggers.values()
        self.assertEqual((phase, event), ("during", "shutdown"))
        store.record_mailbox("client:a", {"n": 1})
        self.successResultOf(trigger())
        self.assertEqual(reactor.triggers, {})
        self.assertEqual(sideQuery(path, "SELECT count(*) FROM mailbox"), [(1,)])
        self.assertRaises(StoreError, store.record_mailbox, "client:a", {})


class ModuleTests(_StoreTestMixin, SynchronousTestCase):
    """
    Modules are kept by the hash of their content.
    """

    def test_contentAddressed(self) -> None:
        """
        A module saved under its hash loads back; saving it again keeps one
        copy; an unknown hash loads C{None}.
        """
        store, _, path = self.makeStore()
        wasm = b"\x00asm\x01\x00\x00\x00" + bytes(range(256))
        digest = hashlib.sha256(wasm).hexdigest()
        self.assertIsNone(self.successResultOf(store.save_module(digest, wasm)))
        self.successResultOf(store.save_module(digest, wasm))
        self.assertEqual(self.successResultOf(store.load_module(digest)), wasm)
        self.assertEqual(
            sideQuery(path, "SELECT hash, size FROM modules"), [(digest, len(wasm))]
        )
        self.assertIsNone(self.successResultOf(store.load_module("0" * 64)))

    def test_hashMismatch(self) -> None:
        """
        A module offered under a hash that is not its content's is refused.
        """
        store, _, _ = self.makeStore()
        self.failureResultOf(store.save_module("0" * 64, b"\x00asm"), StoreError)
        self.assertIsNone(self.successResultOf(store.load_module("0" * 64)))


class AgentTests(_StoreTestMixin, SynchronousTestCase):
    """
    Agents are saved, replaced, listed and deleted.
    """

    def setUp(self) -> None:
        self.store, self.clock, self.path = self.makeStore()
        self.wasm = b"\x00asm\x01\x00\x00\x00"
        self.digest = hashlib.sha256(self.wasm).hexdigest()
        self.successResultOf(self.store.save_module(self.digest, self.wasm))

    def test_roundTrip(self) -> None:
        """
        Saved agents load back equal, their spec as plain JSON values,
        ordered by name; saving again replaces; deleting forgets.
        """
        zeta = agent("zeta", self.digest)
        alpha = agent("alpha", self.digest, status="failed", reason="trap: unreachable")
        self.successResultOf(self.store.save_agent(zeta))
        self.successResultOf(self.store.save_agent(alpha))
        loaded = self.successResultOf(self.store.load_agents())
        self.assertEqual(loaded, [alpha, zeta])
        self.assertIsInstance(loaded[1].spec, dict)
        self.assertEqual(loaded[1].spec["config"], {"x": [1, 2]})

        updated = agent(
            "zeta", self.digest, version=2, spec={"capabilities": []}, updated_at=START + 5
        )
        self.successResultOf(self.store.save_agent(updated))
        self.assertEqual(self.successResultOf(self.store.load_agents()), [alpha, updated])

        self.assertIsNone(self.successResultOf(self.store.delete_agent("alpha")))
        self.successResultOf(self.store.delete_agent("nobody"))
        self.assertEqual(self.successResultOf(self.store.load_agents()), [updated])

    def test_unknownModule(self) -> None:
        """
        An agent whose module was never saved is refused by the foreign
        key.
        """
        self.failureResultOf(
            self.store.save_agent(agent("a", "f" * 64)), sqlite3.IntegrityError
        )

    def test_unencodableSpec(self) -> None:
        """
        A spec JSON cannot hold fails the save and writes nothing.
        """
        self.failureResultOf(
            self.store.save_agent(agent("a", self.digest, spec={"x": object()})), TypeError
        )
        self.assertEqual(self.successResultOf(self.store.load_agents()), [])


class MessageTests(_StoreTestMixin, SynchronousTestCase):
    """
    Recording messages in conversations.
    """

    def test_readYourWrites(self) -> None:
        """
        Messages recorded and not yet flushed are seen by the next read, in
        the order recorded, with the summary they were recorded with.
        """
        store, clock, _ = self.makeStore()
        for n in range(5):
            store.record_message(conversation("c", at=START + n, createdAt=START), message("c", n))
        record, messages = self.successResultOf(store.get_conversation("c", 0, 100))
        self.assertEqual([m.message["content"]["n"] for m in messages], list(range(5)))
        self.assertEqual([m.message for m in messages], [message("c", n) for n in range(5)])
        seqs = [m.seq for m in messages]
        self.assertEqual(seqs, sorted(set(seqs)))
        self.assertEqual(
            record,
            ConversationRecord(
                conversation_id="c",
                protocol="fipa-request",
                initiator="alice",
                participants=("alice", "bob"),
                state="open",
                created_at=START,
                updated_at=START + 4,
                message_count=5,
            ),
        )
        self.assertIsInstance(record.participants, tuple)

    def test_oneFlushScheduled(self) -> None:
        """
        Records only queue and schedule one flush for the next reactor
        turn, which writes them.
        """
        store, clock, path = self.makeStore()
        store.record_message(conversation("c"), message("c", 1))
        store.record_mailbox("client:a", {"n": 1})
        store.record_dead_letter(message("c", 2), "bob", "TIMEOUT", "")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(sideQuery(path, "SELECT count(*) FROM messages"), [(0,)])
        clock.advance(0)
        self.assertEqual(clock.getDelayedCalls(), [])
        for table in ("messages", "mailbox", "dead_letters"):
            self.assertEqual(sideQuery(path, f"SELECT count(*) FROM {table}"), [(1,)])

    def test_flushAtThreshold(self) -> None:
        """
        Once L{FLUSH_THRESHOLD} records are pending they are written without
        waiting for the reactor.
        """
        store, clock, path = self.makeStore()
        for n in range(FLUSH_THRESHOLD):
            store.record_mailbox("client:a", {"n": n})
        self.assertEqual(sideQuery(path, "SELECT count(*) FROM mailbox"), [(FLUSH_THRESHOLD,)])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_recordedAtIsReactorTime(self) -> None:
        """
        A message's C{recorded_at} is the reactor's time when it was
        recorded, not when it was written.
        """
        store, clock, _ = self.makeStore()
        store.record_message(conversation("c"), message("c", 1))
        clock.advance(7)
        store.record_message(conversation("c"), message("c", 2))
        clock.advance(7)
        _, messages = self.successResultOf(store.get_conversation("c", 0, 10))
        self.assertEqual([m.recorded_at for m in messages], [START, START + 7])

    def test_trimPerConversation(self) -> None:
        """
        Each conversation keeps its own newest messages up to the cap, in
        one batch or across many, while its C{message_count} counts every
        message ever recorded (not the record's count).
        """
        store, clock, _ = self.makeStore(max_messages_per_conversation=3)
        for n in range(5):
            store.record_message(conversation("a", messageCount=999), message("a", n))
        store.record_message(conversation("b"), message("b", 0))
        clock.advance(0)
        for n in range(5, 7):
            store.record_message(conversation("a"), message("a", n))
            clock.advance(0)
        store.record_message(conversation("b"), message("b", 1))
        recordA, messagesA = self.successResultOf(store.get_conversation("a", 0, 100))
        recordB, messagesB = self.successResultOf(store.get_conversation("b", 0, 100))
        self.assertEqual([m.message["content"]["n"] for m in messagesA], [4, 5, 6])
        self.assertEqual([m.message["content"]["n"] for m in messagesB], [0, 1])
        self.assertEqual(recordA.message_count, 7)
        self.assertEqual(recordB.message_count, 2)

    def test_afterAndLimit(self) -> None:
        """
        C{after} skips messages up to that C{seq} and C{limit} bounds how
        many come back, oldest first, so a reader can page through.
        """
        store, _, _ = self.makeStore()
        for n in range(10):
            store.record_message(conversation("c"), message("c", n))
            store.record_message(conversation("d"), message("d", n))
        seen: List[int] = []
        after = 0
        while True:
            _, page = self.successResultOf(store.get_conversation("c", after, 3))
            if not page:
                break
            self.assertLessEqual(len(page), 3)
            seen.extend(m.message["content"]["n"] for m in page)
            after = page[-1].seq
        self.assertEqual(seen, list(range(10)))

    def test_unknownConversation(self) -> None:
        """
        An unknown conversation reads as C{(None, [])}.
        """
        store, _, _ = self.makeStore()
        self.assertEqual(self.successResultOf(store.get_conversation("nope", 0, 10)), (None, []))

    def test_summaryUpdates(self) -> None:
        """
        The summary takes the latest state, merges participants sorted,
        keeps the earliest creation and the latest update.
        """
        store, _, _ = self.makeStore()
        store.record_message(
            conversation("c", ("bob", "alice"), at=START + 10), message("c", 1)
        )
        store.record_message(
            conversation("c", ("alice", "carol"), state="done", at=START + 20),
            message("c", 2),
        )
        store.record_message(
            conversation("c", ("alice",), state="done", at=START + 15), message("c", 3)
        )
        record, _ = self.successResultOf(store.get_conversation("c", 0, 10))
        self.assertEqual(record.participants, ("alice", "bob", "carol"))
        self.assertEqual(record.state, "done")
        self.assertEqual(record.created_at, START + 10)
        self.assertEqual(record.updated_at, START + 20)
        self.assertEqual(record.message_count, 3)

    def test_compactJSON(self) -> None:
        """
        Messages are stored as compact JSON text and read back as plain
        dicts and lists.
        """
        store, _, path = self.makeStore()
        store.record_message(conversation("c"), {"a": (1, 2), "b": {"c": "é"}})
        _, [stored] = self.successResultOf(store.get_conversation("c", 0, 10))
        self.assertEqual(stored.message, {"a": [1, 2], "b": {"c": "é"}})
        self.assertEqual(type(stored.message), dict)
        self.assertEqual(
            sideQuery(path, "SELECT body FROM messages"), [('{"a":[1,2],"b":{"c":"é"}}',)]
        )

    def test_unencodableMessage(self) -> None:
        """
        A message JSON cannot hold is refused where it is recorded and
        does not spoil the batch around it.
        """
        store, clock, _ = self.makeStore()
        store.record_message(conversation("c"), message("c", 1))
        self.assertRaises(TypeError, store.record_message, conversation("c"), {"x": object()})
        self.assertRaises(ValueError, store.record_mailbox, "client:a", {"x": float("nan")})
        store.record_message(conversation("c"), message("c", 2))
        record, messages = self.successResultOf(store.get_conversation("c", 0, 10))
        self.assertEqual(len(messages), 2)
        self.assertEqual(record.message_count, 2)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        cap=st.integers(min_value=1, max_value=5),
        steps=st.lists(
            st.one_of(
                st.tuples(st.just("record"), st.integers(min_value=0, max_value=3)),
                st.just(("flush",)),
                st.just(("read",)),
            ),
            max_size=40,
        ),
    )
    def test_anySequenceReadsBackInOrder(self, cap: int, steps: List[Tuple[Any, ...]]) -> None:
        """
        Whatever the interleaving of records across conversations, flushes
        and reads, each conversation reads back the newest C{cap} of its
        messages in the order recorded, with increasing C{seq}s, and counts
        all of them.
        """
        clock = ThreadlessClock()
        store = SQLiteStore(
            self.mktemp(), clock, threadpool=NonThreadPool(), max_messages_per_conversation=cap
        )
        self.successResultOf(store.open())
        try:
            expected: Dict[str, List[int]] = {}
            counter = 0

            def check() -> None:
                for cid, numbers in expected.items():
                    record, messages = self.successResultOf(store.get_conversation(cid, 0, 100))
                    self.assertEqual([m.message["content"]["n"] for m in messages], numbers[-cap:])
                    seqs = [m.seq for m in messages]
                    self.assertEqual(seqs, sorted(set(seqs)))
                    self.assertEqual(record.message_count, len(numbers))

            for step in steps:
                if step[0] == "record":
                    cid = f"c{step[1]}"
                    store.record_message(conversation(cid), message(cid, counter))
                    expected.setdefault(cid, []).append(counter)
                    counter += 1
                elif step[0] == "flush":
                    clock.advance(0)
                else:
                    check()
            check()
        finally:
            self.successResultOf(store.close())


class ListConversationsTests(_StoreTestMixin, SynchronousTestCase):
    """
    Listing conversations.
    """

    def setUp(self) -> None:
        self.store, _, _ = self.makeStore()
        self.store.record_message(conversation("one", ("alice", "bob"), at=START + 1), {})
        self.store.record_message(conversation("two", ("carol", "dave"), at=START + 3), {})
        self.store.record_message(conversation("three", ("bob", "carol"), at=START + 2), {})

    def ids(
        self,
        limit: int = 10,
        before: Optional[float] = None,
        participant: Optional[str] = None,
    ) -> List[str]:
        """
        The ids L{list_conversations} returns.
        """
        records = self.successResultOf(self.store.list_conversations(limit, before, participant))
        return [r.conversation_id for r in records]

    def test_newestFirst(self) -> None:
        """
        Conversations come most recently updated first, up to C{limit}.
        """
        self.assertEqual(self.ids(), ["two", "three", "one"])
        self.assertEqual(self.ids(limit=2), ["two", "three"])

    def test_updateReorders(self) -> None:
        """
        A new message moves its conversation to the front.
        """
        self.store.record_message(conversation("one", at=START + 9), {})
        self.assertEqual(self.ids(), ["one", "two", "three"])

    def test_before(self) -> None:
        """
        C{before} keeps only conversations updated strictly earlier.
        """
        self.assertEqual(self.ids(before=START + 3), ["three", "one"])
        self.assertEqual(self.ids(before=START + 1), [])

    def test_participant(self) -> None:
        """
        C{participant} keeps only conversations that name took part in, by
        exact name.
        """
        self.assertEqual(self.ids(participant="bob"), ["three", "one"])
        self.assertEqual(self.ids(participant="carol", before=START + 3), ["three"])
        self.assertEqual(self.ids(participant="bo"), [])
        self.assertEqual(self.ids(participant='"bob"'), [])


class MailboxTests(_StoreTestMixin, SynchronousTestCase):
    """
    API clients' mailboxes.
    """

    def test_afterAndLimit(self) -> None:
        """
        A mailbox holds only its client's messages, oldest first, from
        C{after}, at most C{limit}.
        """
        store, clock, _ = self.makeStore()
        for n in range(5):
            store.record_mailbox("client:a", {"n": n})
            store.record_mailbox("client:b", {"n": -n})
            clock.advance(1)
        first = self.successResultOf(store.read_mailbox("client:a", 0, 2))
        self.assertEqual([m.message for m in first], [{"n": 0}, {"n": 1}])
        self.assertEqual([m.recorded_at for m in first], [START, START + 1])
        rest = self.successResultOf(store.read_mailbox("client:a", first[-1].seq, 10))
        self.assertEqual([m.message["n"] for m in rest], [2, 3, 4])
        self.assertTrue(all(isinstance(m, StoredMessage) for m in rest))
        self.assertEqual(self.successResultOf(store.read_mailbox("client:c", 0, 10)), [])


class DeadLetterTests(_StoreTestMixin, SynchronousTestCase):
    """
    Dead letters.
    """

    def test_fields(self) -> None:
        """
        A dead letter keeps the message, its ids and sender, the receiver,
        the reason and detail, and when.
        """
        store, _, _ = self.makeStore()
        body = message("c", 1, sender="client:x")
        store.record_dead_letter(body, "bob", "AGENT_NOT_FOUND", "no agent named bob")
        store.record_dead_letter({"performative": "inform"}, None, "TOO_LARGE", "")
        second, first = self.successResultOf(store.list_dead_letters(10, None))
        self.assertEqual(
            (
                first.message_id,
                first.conversation_id,
                first.sender,
                first.receiver,
                first.reason,
                first.detail,
                first.message,
                first.recorded_at,
            ),
            ("c-1", "c", "client:x", "bob", "AGENT_NOT_FOUND", "no agent named bob", body, START),
        )
        self.assertEqual(
            (second.message_id, second.conversation_id, second.sender, second.receiver),
            (None, None, None, None),
        )

    def test_newestFirstBeforeAndCap(self) -> None:
        """
        Dead letters list newest first, page with C{before}, and only the
        newest C{max_dead_letters} are kept.
        """
        store, clock, _ = self.makeStore(max_dead_letters=4)
        for n in range(3):
            store.record_dead_letter({"n": n}, None, "TIMEOUT", "")
        clock.advance(0)
        for n in range(3, 6):
            store.record_dead_letter({"n": n}, None, "TIMEOUT", "")
        letters = self.successResultOf(store.list_dead_letters(10, None))
        self.assertEqual([d.message["n"] for d in letters], [5, 4, 3, 2])
        page = self.successResultOf(store.list_dead_letters(2, None))
        self.assertEqual([d.message["n"] for d in page], [5, 4])
        page = self.successResultOf(store.list_dead_letters(2, page[-1].seq))
        self.assertEqual([d.message["n"] for d in page], [3, 2])
        self.assertEqual(self.successResultOf(store.list_dead_letters(2, page[-1].seq)), [])


class PendingTests(_StoreTestMixin, SynchronousTestCase):
    """
    Messages kept across a restart for agents that had not taken them.
    """

    def test_takeInOrderOnce(self) -> None:
        """
        Kept messages come back as plain dicts in the order kept, across
        calls, and only once.
        """
        store, _, _ = self.makeStore()
        store.save_pending([("echo", b'{"n":1}'), ("other", '{"n":2}')])
        store.save_pending([("echo", '{"n":"\u00e9"}'.encode("utf-8"))])
        self.assertEqual(
            self.successResultOf(store.take_pending()),
            [("echo", {"n": 1}), ("other", {"n": 2}), ("echo", {"n": "é"})],
        )
        self.assertEqual(self.successResultOf(store.take_pending()), [])

    def test_keptAcrossRestart(self) -> None:
        """
        Messages kept just before L{close} are there after reopening, and
        L{expire} leaves them alone.
        """
        path = self.mktemp()
        store, clock, _ = self.makeStore(path, retention_seconds=1)
        store.save_pending([("echo", b'{"n":1}')])
        self.successResultOf(store.close())
        again, _, _ = self.makeStore(path, retention_seconds=1)
        self.assertEqual(self.successResultOf(again.expire(START + 100)), 0)
        self.assertEqual(self.successResultOf(again.take_pending()), [("echo", {"n": 1})])

    def test_notJSON(self) -> None:
        """
        A batch holding something that is not JSON is refused whole.
        """
        store, _, _ = self.makeStore()
        self.assertRaises(ValueError, store.save_pending, [("a", b"{}"), ("b", b"{nope")])
        self.assertEqual(self.successResultOf(store.take_pending()), [])


class ExpireTests(_StoreTestMixin, SynchronousTestCase):
    """
    Retention.
    """

    def test_expire(self) -> None:
        """
        L{expire} removes conversations with their messages, mailbox entries
        and dead letters older than the retention, counts every row it
        removed, and keeps everything newer.
        """
        store, clock, path = self.makeStore(retention_seconds=100)
        store.record_message(conversation("old", at=START), message("old", 1))
        store.record_message(conversation("old", at=START), message("old", 2))
        store.record_mailbox("client:a", {"n": "old"})
        store.record_dead_letter({"n": "old"}, None, "TIMEOUT", "")
        clock.advance(60)
        store.record_message(conversation("new", at=START + 60), message("new", 1))
        store.record_mailbox("client:a", {"n": "new"})
        store.record_dead_letter({"n": "new"}, None, "TIMEOUT", "")
        clock.advance(60)
        # One old conversation, its two messages, one mailbox entry and
        # one dead letter.
        self.assertEqual(self.successResultOf(store.expire(clock.seconds())), 5)
        self.assertEqual(self.successResultOf(store.get_conversation("old", 0, 10)), (None, []))
        self.assertEqual(sideQuery(path, "SELECT count(*) FROM messages"), [(1,)])
        record, messages = self.successResultOf(store.get_conversation("new", 0, 10))
        self.assertEqual((record.message_count, len(messages)), (1, 1))
        self.assertEqual(
            [m.message for m in self.successResultOf(store.read_mailbox("client:a", 0, 10))],
            [{"n": "new"}],
        )
        self.assertEqual(
            [d.message for d in self.successResultOf(store.list_dead_letters(10, None))],
            [{"n": "new"}],
        )
        self.assertEqual(self.successResultOf(store.expire(clock.seconds())), 0)

    def test_expireSeesPendingRecords(self) -> None:
        """
        Records still pending are written before L{expire} runs, so they
        are judged like the rest.
        """
        store, clock, _ = self.makeStore(retention_seconds=10)
        store.record_mailbox("client:a", {})
        self.assertEqual(self.successResultOf(store.expire(START + 11)), 1)


class PersistenceTests(_StoreTestMixin, SynchronousTestCase):
    """
    What a store writes outlives it.
    """

    def test_reopenKeepsEverything(self) -> None:
        """
        After closing, a new store on the same file reads back modules,
        agents, conversations, mailboxes and dead letters.
        """
        path = self.mktemp()
        clock = ThreadlessClock()
        clock.advance(START)
        store = SQLiteStore(path, clock, threadpool=NonThreadPool())
        self.successResultOf(store.open())
        wasm = b"\x00asm\x01\x00\x00\x00"
        digest = hashlib.sha256(wasm).hexdigest()
        self.successResultOf(store.save_module(digest, wasm))
        self.successResultOf(store.save_agent(agent("echo", digest)))
        store.record_message(conversation("c"), message("c", 1))
        store.record_mailbox("client:a", {"n": 1})
        store.record_dead_letter(message("c", 2), "bob", "TIMEOUT", "late")
        before = (
            self.successResultOf(store.get_conversation("c", 0, 10)),
            self.successResultOf(store.read_mailbox("client:a", 0, 10)),
            self.successResultOf(store.list_dead_letters(10, None)),
        )
        self.successResultOf(store.close())

        again, _, _ = self.makeStore(path)
        self.assertEqual(self.successResultOf(again.load_module(digest)), wasm)
        self.assertEqual(self.successResultOf(again.load_agents()), [agent("echo", digest)])
        after = (
            self.successResultOf(again.get_conversation("c", 0, 10)),
            self.successResultOf(again.read_mailbox("client:a", 0, 10)),
            self.successResultOf(again.list_dead_letters(10, None)),
        )
        self.assertEqual(after, before)

    def test_seqKeepsIncreasingAfterTrim(self) -> None:
        """
        Sequence numbers are never reused, even after the newest rows were
        expired and the file reopened, so a reader's C{after} stays valid.
        """
        path = self.mktemp()
        store, clock, _ = self.makeStore(path, retention_seconds=1)
        store.record_mailbox("client:a", {"n": 1})
        [first] = self.successResultOf(store.read_mailbox("client:a", 0, 10))
        self.successResultOf(store.expire(START + 5))
        self.successResultOf(store.close())
        again, _, _ = self.makeStore(path)
        again.record_mailbox("client:a", {"n": 2})
        [second] = self.successResultOf(again.read_mailbox("client:a", 0, 10))
        self.assertGreater(second.seq, first.seq)


class ErrorTests(_StoreTestMixin, SynchronousTestCase):
    """
    Failures in the worker are reported, not swallowed.
    """

    def test_batchFailureIsLogged(self) -> None:
        """
        A batch the worker cannot write is logged as a failure and the store
        goes on working for the tables it can still write.
        """
        store, clock, path = self.makeStore()
        connection = sqlite3.connect(path)
        connection.execute("DROP TABLE messages")
        connection.commit()
        connection.close()
        store.record_message(conversation("c"), message("c", 1))
        clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        store.record_mailbox("client:a", {"n": 1})
        clock.advance(0)
        self.assertEqual(len(self.successResultOf(store.read_mailbox("client:a", 0, 10))), 1)

    def test_failedBatchIsAtomic(self) -> None:
        """
        A batch that fails part way writes nothing at all.
        """
        store, clock, path = self.makeStore()
        connection = sqlite3.connect(path)
        connection.execute("DROP TABLE dead_letters")
        connection.commit()
        connection.close()
        store.record_mailbox("client:a", {"n": 1})
        store.record_dead_letter({}, None, "TIMEOUT", "")
        clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(self.successResultOf(store.read_mailbox("client:a", 0, 10)), [])

    def test_readFailureFails(self) -> None:
        """
        A read the worker cannot do fails its Deferred with the error.
        """
        store, _, path = self.makeStore()
        connection = sqlite3.connect(path)
        connection.execute("DROP TABLE mailbox")
        connection.commit()
        connection.close()
        self.failureResultOf(store.read_mailbox("client:a", 0, 10), sqlite3.OperationalError)


def _poolThreads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if "caxton-sqlite" in t.name and t.is_alive()]


class RealWorkerTests(TestCase):
    """
    The store with the real reactor and its own worker thread.
    """

    timeout = 60

    def test_endToEnd(self) -> Deferred[None]:
        """
        Many messages recorded from the reactor thread are written by a
        worker thread of the store's own, read back in order and trimmed,
        and the thread is gone after L{close}.
        """
        from twisted.internet import reactor

        store = SQLiteStore(self.mktemp(), reactor, max_messages_per_conversation=1000)
        self.addCleanup(store.close)
        count = 2500

        async def run() -> None:
            await store.open()
            self.assertTrue(_poolThreads())
            for n in range(count):
                cid = f"c{n % 2}"
                store.record_message(conversation(cid, at=reactor.seconds()), message(cid, n))
            record, messages = await store.get_conversation("c0", 0, 2000)
            self.assertEqual(record.message_count, count // 2)
            self.assertEqual(
                [m.message["content"]["n"] for m in messages],
                list(range(0, count, 2))[-1000:],
            )
            conversations = await store.list_conversations(10, None, "alice")
            self.assertEqual(sorted(c.conversation_id for c in conversations), ["c0", "c1"])
            await store.close()
            self.assertEqual(_poolThreads(), [])

        return Deferred.fromCoroutine(run())

    def test_refusedOpenStopsWorker(self) -> Deferred[None]:
        """
        When L{open} fails, the worker thread it started is stopped.
        """
        from twisted.internet import reactor

        path = self.mktemp()
        connection = sqlite3.connect(path)
        connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        connection.close()
        store = SQLiteStore(path, reactor)
        self.addCleanup(store.close)

        async def run() -> None:
            try:
                await store.open()
            except StoreError:
                pass
            else:
                self.fail("open succeeded")
            self.assertEqual(_poolThreads(), [])

        return Deferred.fromCoroutine(run())


class _HeldPool(NonThreadPool):
    """
    A pool that keeps jobs until L{run} says, to see how many there were.
    """

    def __init__(self) -> None:
        self.jobs: List[Callable[[], None]] = []

    def callInThreadWithCallback(self, onResult: Any, f: Any, *a: Any, **kw: Any) -> None:
        self.jobs.append(lambda: NonThreadPool.callInThreadWithCallback(self, onResult, f, *a, **kw))

    def run(self) -> int:
        ran = 0
        while self.jobs:
            self.jobs.pop(0)()
            ran += 1
        return ran


class QueueRecordTests(SynchronousTestCase):
    """
    The delivery journal, the outbox, the peer intake and sync.
    """

    def setUp(self) -> None:
        self.pool = _HeldPool()
        self.store = SQLiteStore(None, ThreadlessClock(), threadpool=self.pool)
        self.store.open()
        self.pool.run()

    def test_syncs_share_trips(self) -> None:
        """
        Syncs asked for while one is on the worker wait for one more trip,
        together, and each fires only after what was recorded before it.
        """
        fired: List[int] = []
        self.store.journal_add("a", "m1", b'{"x":1}')
        self.store.sync().addCallback(lambda _: fired.append(1))
        for i in (2, 3, 4):
            self.store.sync().addCallback(lambda _, i=i: fired.append(i))
        self.assertEqual(len(self.pool.jobs), 2)  # the batch and the first sync
        self.assertEqual(self.pool.run(), 3)  # ... and one more for 2, 3, 4
        self.assertEqual(fired, [1, 2, 3, 4])

    def test_records_survive_together(self) -> None:
        """
        Journal, outbox and intake rows read back as written; a batch made
        together is not split by the flush threshold.
        """
        with self.store.together():
            for i in range(FLUSH_THRESHOLD + 5):
                self.store.journal_add("a", f"m{i}", '{"i": %d}' % i)
            self.assertEqual(self.pool.jobs, [])
        self.store.journal_done("a", "m0")
        self.store.outbox_add("n2", 7, 1, "echo", '{"i": 1}', 99.0)
        self.store.outbox_add("n2", 7, 2, "echo", '{"i": 2}', 99.0)
        self.store.outbox_acked("n2", 7, 1)
        self.store.intake_high("n3", 5, 42)
        self.store.client_home("client:a", "c1", "n2")
        journal, outbox, intake, homes = [], [], [], []
        self.store.load_journal().addCallback(journal.extend)
        self.store.load_outbox().addCallback(outbox.extend)
        self.store.load_intake().addCallback(lambda found: intake.append(found))
        self.store.load_client_homes(10).addCallback(homes.extend)
        self.pool.run()
        self.assertEqual(len(journal), FLUSH_THRESHOLD + 4)
        self.assertEqual(journal[0], ("a", {"i": 1}))
        self.assertEqual(outbox, [("n2", 7, 2, "echo", '{"i": 2}', 99.0)])
        self.assertEqual(intake, [{("n3", 5): 42}])
        self.assertEqual(homes, [("client:a", "c1", "n2")])

    def test_sync_behind_a_failed_batch_fails(self) -> None:
        """
        A sync promises that what came before it is written: when that
        batch was rolled back, the sync fails (once), and the next one,
        behind a good batch, succeeds.
        """
        self.store.journal_add("a", "m1", b"{}")
        self.store.intake_high("n", 1, 2**63)  # too large for SQLite: the batch fails
        failed: List[Any] = []
        self.store.sync().addErrback(failed.append)
        self.pool.run()
        self.assertEqual(len(failed), 1)
        self.assertEqual(len(self.flushLoggedErrors(OverflowError)), 1)
        journal: List[Any] = []
        self.store.load_journal().addCallback(journal.extend)
        self.store.journal_add("a", "m2", b"{}")
        ok: List[Any] = []
        self.store.sync().addCallback(ok.append)
        self.pool.run()
        self.assertEqual((journal, ok), ([], [None]))
