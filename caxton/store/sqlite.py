# -*- test-case-name: tests.test_store -*-
"""
L{IStateStore} in one embedded SQLite file.

All SQLite work runs on one dedicated worker thread, so the reactor never
waits for a disk.  Because that worker runs its jobs one at a time in the
order they were handed over, ordering is simple: the hot-path C{record_*}
methods only append to an in-memory batch, and every other method first hands
that batch to the worker, so it sees every record made before it.

A batch is written in one transaction.  A batch that cannot be written (disk
full, corrupt file) is logged as a failure; reads that fail fire their
L{Deferred} with the error.

The schema is built by L{MIGRATIONS}, an ordered list of SQL scripts;
C{PRAGMA user_version} counts how many of them a file has had.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import contextmanager
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

import attr
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorCore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from caxton.store.interfaces import (
    AgentRecord,
    ConversationRecord,
    DeadLetter,
    IStateStore,
    StoredMessage,
)

__all__ = ["FLUSH_THRESHOLD", "MIGRATIONS", "SQLiteStore", "StoreError"]

_log = Logger()

_T = TypeVar("_T")

#: How many records may wait in memory before a batch is handed to the
#: worker without waiting for the next reactor turn.
FLUSH_THRESHOLD = 1000

#: How long SQLite waits for a lock held by another connection, in ms.
_BUSY_TIMEOUT_MS = 5000

#: The schema, one script per version.  Append only: a released script is
#: never edited, because C{PRAGMA user_version} says it has been applied.
MIGRATIONS: Sequence[str] = (
    # 1: the initial schema.
    """
    CREATE TABLE modules (
        hash TEXT PRIMARY KEY NOT NULL,
        wasm BLOB NOT NULL,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL
    );

    CREATE TABLE agents (
        name TEXT PRIMARY KEY NOT NULL,
        version INTEGER NOT NULL,
        module_hash TEXT NOT NULL REFERENCES modules (hash),
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );

    CREATE TABLE conversations (
        conversation_id TEXT PRIMARY KEY NOT NULL,
        protocol TEXT,
        initiator TEXT,
        participants TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        message_count INTEGER NOT NULL
    );
    CREATE INDEX conversations_updated_at ON conversations (updated_at);

    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL
            REFERENCES conversations (conversation_id) ON DELETE CASCADE,
        body TEXT NOT NULL,
        recorded_at REAL NOT NULL
    );
    CREATE INDEX messages_conversation ON messages (conversation_id, seq);

    CREATE TABLE mailbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        client TEXT NOT NULL,
        body TEXT NOT NULL,
        recorded_at REAL NOT NULL
    );
    CREATE INDEX mailbox_client ON mailbox (client, seq);

    CREATE TABLE dead_letters (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT,
        conversation_id TEXT,
        sender TEXT,
        receiver TEXT,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        body TEXT NOT NULL,
        recorded_at REAL NOT NULL
    );
    """,
    # 2: messages still queued for agents at shutdown.
    """
    CREATE TABLE pending_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        agent TEXT NOT NULL,
        body TEXT NOT NULL,
        recorded_at REAL NOT NULL
    );
    """,
    # 3: the delivery journal (messages accepted for agents here and not
    # handled yet), the outbox (messages for other nodes not acknowledged
    # yet) and, per peer and run, the last of its messages taken in.
    """
    CREATE TABLE inbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        agent TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body TEXT NOT NULL,
        recorded_at REAL NOT NULL
    );
    CREATE INDEX inbox_message ON inbox (message_id, agent);

    CREATE TABLE outbox (
        node TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        receiver TEXT NOT NULL,
        body TEXT NOT NULL,
        expires_at REAL NOT NULL,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (node, epoch, seq)
    );

    CREATE TABLE peer_intake (
        node TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        high INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (node, epoch)
    );

    CREATE TABLE client_homes (
        client TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        node TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (client, conversation_id)
    );
    CREATE INDEX client_homes_updated_at ON client_homes (updated_at);

    CREATE TABLE replicas (
        name TEXT PRIMARY KEY NOT NULL,
        owner TEXT NOT NULL,
        version INTEGER NOT NULL,
        module_hash TEXT NOT NULL REFERENCES modules (hash),
        spec TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
)


class StoreError(Exception):
    """
    The store cannot do what was asked: it is not open, or its file was
    written by a newer Caxton, or a module does not match its hash.
    """


def _encode(value: Any) -> str:
    """
    Encode C{value} as compact JSON text.

    @param value: any JSON-compatible value.
    @return: its JSON text.
    @raise TypeError: if C{value} holds something JSON cannot encode.
    @raise ValueError: if it holds NaN or an infinity.
    """
    return json.dumps(
        value,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_plainMapping,
    )


def _plainMapping(value: Any) -> Any:
    # json only encodes dicts; records hold any Mapping.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# Records waiting for the next batch.  They are built on the reactor thread
# and only read by the worker.


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _PendingMessage:
    conversation: ConversationRecord
    body: str
    recorded_at: float


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _PendingMailbox:
    client: str
    body: str
    recorded_at: float


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _PendingDeadLetter:
    message_id: Optional[str]
    conversation_id: Optional[str]
    sender: Optional[str]
    receiver: Optional[str]
    reason: str
    detail: str
    body: str
    recorded_at: float


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _PendingDelivery:
    agent: str
    body: str
    recorded_at: float


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _PendingStatement:
    """
    One statement of the delivery journal, the outbox or the peer intake,
    written in order with the other records of its batch.
    """

    sql: str
    parameters: Tuple[Any, ...]


_Pending = Union[
    _PendingMessage, _PendingMailbox, _PendingDeadLetter, _PendingDelivery, _PendingStatement
]


def _optionalString(message: Mapping[str, Any], key: str) -> Optional[str]:
    value = message.get(key)
    return value if isinstance(value, str) else None


# Everything below, down to the store class, runs on the worker thread.


@contextmanager
def _transaction(
    connection: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"
) -> Iterator[sqlite3.Connection]:
    """
    Run the body in one transaction (a write transaction unless C{begin}
    says otherwise), rolled back if it raises.

    The connection is in autocommit mode (C{isolation_level=None}), so this
    is the only place transactions begin and end.
    """
    connection.execute(begin)
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back on its own (SQLITE_FULL and
        # friends), in which case ROLLBACK would raise and hide the cause.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _connect(path: str, migrations: Sequence[str]) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
        _migrate(connection, migrations)
    except BaseException:
        connection.close()
        raise
    return connection


def _userVersion(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def _migrate(connection: sqlite3.Connection, migrations: Sequence[str]) -> None:
    version = _userVersion(connection)
    if version > len(migrations):
        raise StoreError(
            f"the state database is at schema version {version}, newer than "
            f"this caxton knows ({len(migrations)}); upgrade caxton to open it"
        )
    for number in range(version + 1, len(migrations) + 1):
        script = migrations[number - 1]
        try:
            # executescript runs a whole script, so the migration and its
            # version bump commit (or fail) together.
            connection.executescript(
                f"BEGIN IMMEDIATE;\n{script}\n;\nPRAGMA user_version = {number:d};\nCOMMIT;"
            )
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        _log.info("state database migrated to schema version {version}", version=number)


def _disconnect(connection: sqlite3.Connection) -> None:
    connection.close()


def _writeBatch(
    connection: sqlite3.Connection,
    batch: List[_Pending],
    maxMessages: int,
    maxDeadLetters: int,
) -> None:
    touched: Set[str] = set()
    deadLetters = False
    with _transaction(connection):
        for entry in batch:
            if isinstance(entry, _PendingMessage):
                _writeMessage(connection, entry)
                touched.add(entry.conversation.conversation_id)
            elif isinstance(entry, _PendingMailbox):
                connection.execute(
                    "INSERT INTO mailbox (client, body, recorded_at) VALUES (?, ?, ?)",
                    (entry.client, entry.body, entry.recorded_at),
                )
            elif isinstance(entry, _PendingStatement):
                connection.execute(entry.sql, entry.parameters)
            elif isinstance(entry, _PendingDelivery):
                connection.execute(
                    "INSERT INTO pending_messages (agent, body, recorded_at) VALUES (?, ?, ?)",
                    (entry.agent, entry.body, entry.recorded_at),
                )
            else:
                deadLetters = True
                connection.execute(
                    "INSERT INTO dead_letters (message_id, conversation_id, sender,"
                    " receiver, reason, detail, body, recorded_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        entry.message_id,
                        entry.conversation_id,
                        entry.sender,
                        entry.receiver,
                        entry.reason,
                        entry.detail,
                        entry.body,
                        entry.recorded_at,
                    ),
                )
        for conversationId in touched:
            # Everything older than the newest maxMessages goes; when there
            # are fewer, the subquery is NULL and nothing matches.
            connection.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND seq <= ("
                " SELECT seq FROM messages WHERE conversation_id = ?"
                " ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (conversationId, conversationId, maxMessages),
            )
        if deadLetters:
            connection.execute(
                "DELETE FROM dead_letters WHERE seq <= ("
                " SELECT seq FROM dead_letters ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (maxDeadLetters,),
            )


def _writeMessage(connection: sqlite3.Connection, entry: _PendingMessage) -> None:
    record = entry.conversation
    row = connection.execute(
        "SELECT participants FROM conversations WHERE conversation_id = ?",
        (record.conversation_id,),
    ).fetchone()
    if row is None:
        connection.execute(
            "INSERT INTO conversations (conversation_id, protocol, initiator,"
            " participants, state, created_at, updated_at, message_count)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
            (
                record.conversation_id,
                record.protocol,
                record.initiator,
                _encode(sorted(set(record.participants))),
                record.state,
                record.created_at,
                record.updated_at,
            ),
        )
    else:
        # Participants are merged, so a summary rebuilt after a restart
        # does not forget who took part earlier.  The count is ours: the
        # record's cannot know about messages it never saw.
        participants = set(json.loads(row[0])) | set(record.participants)
        connection.execute(
            "UPDATE conversations SET protocol = ?, initiator = ?,"
            " participants = ?, state = ?, created_at = MIN(created_at, ?),"
            " updated_at = MAX(updated_at, ?), message_count = message_count + 1"
            " WHERE conversation_id = ?",
            (
                record.protocol,
                record.initiator,
                _encode(sorted(participants)),
                record.state,
                record.created_at,
                record.updated_at,
                record.conversation_id,
            ),
        )
    connection.execute(
        "INSERT INTO messages (conversation_id, body, recorded_at) VALUES (?, ?, ?)",
        (record.conversation_id, entry.body, entry.recorded_at),
    )


def _saveModule(
    connection: sqlite3.Connection, moduleHash: str, wasm: bytes, createdAt: float
) -> None:
    if hashlib.sha256(wasm).hexdigest() != moduleHash:
        raise StoreError(f"module {moduleHash!r} is not the SHA-256 hex digest of its bytes")
    connection.execute(
        "INSERT OR IGNORE INTO modules (hash, wasm, size, created_at) VALUES (?, ?, ?, ?)",
        (moduleHash, wasm, len(wasm), createdAt),
    )


def _loadModule(connection: sqlite3.Connection, moduleHash: str) -> Optional[bytes]:
    row = connection.execute("SELECT wasm FROM modules WHERE hash = ?", (moduleHash,)).fetchone()
    return None if row is None else bytes(row[0])


def _deleteModule(connection: sqlite3.Connection, moduleHash: str) -> bool:
    cursor = connection.execute(
        "DELETE FROM modules WHERE hash = ?"
        " AND NOT EXISTS (SELECT 1 FROM agents WHERE module_hash = ?)"
        " AND NOT EXISTS (SELECT 1 FROM replicas WHERE module_hash = ?)",
        (moduleHash, moduleHash, moduleHash),
    )
    return cursor.rowcount > 0


def _saveAgent(connection: sqlite3.Connection, record: AgentRecord, spec: str) -> None:
    connection.execute(
        "INSERT INTO agents (name, version, module_hash, spec, status, reason,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET version = excluded.version,"
        " module_hash = excluded.module_hash, spec = excluded.spec,"
        " status = excluded.status, reason = excluded.reason,"
        " created_at = excluded.created_at, updated_at = excluded.updated_at",
        (
            record.name,
            record.version,
            record.module_hash,
            spec,
            record.status,
            record.reason,
            record.created_at,
            record.updated_at,
        ),
    )


def _deleteAgent(connection: sqlite3.Connection, name: str) -> None:
    connection.execute("DELETE FROM agents WHERE name = ?", (name,))


def _loadAgents(connection: sqlite3.Connection) -> List[AgentRecord]:
    rows = connection.execute(
        "SELECT name, version, module_hash, spec, status, reason, created_at,"
        " updated_at FROM agents ORDER BY name"
    ).fetchall()
    return [
        AgentRecord(
            name=name,
            version=version,
            module_hash=moduleHash,
            spec=json.loads(spec),
            status=status,
            reason=reason,
            created_at=createdAt,
            updated_at=updatedAt,
        )
        for (name, version, moduleHash, spec, status, reason, createdAt, updatedAt) in rows
    ]


_CONVERSATION_COLUMNS = (
    "conversation_id, protocol, initiator, participants, state, created_at,"
    " updated_at, message_count"
)


def _conversation(row: Tuple[Any, ...]) -> ConversationRecord:
    (conversationId, protocol, initiator, participants, state, createdAt, updatedAt, count) = row
    return ConversationRecord(
        conversation_id=conversationId,
        protocol=protocol,
        initiator=initiator,
        participants=tuple(json.loads(participants)),
        state=state,
        created_at=createdAt,
        updated_at=updatedAt,
        message_count=count,
    )


def _listConversations(
    connection: sqlite3.Connection,
    limit: int,
    before: Optional[float],
    participant: Optional[str],
    beforeId: Optional[str] = None,
) -> List[ConversationRecord]:
    conditions = []
    parameters: List[Any] = []
    if before is not None and beforeId is not None:
        # A page ends at (updated_at, conversation_id): ties on the time
        # continue by id, in the same order as ORDER BY.
        conditions.append("(updated_at < ? OR (updated_at = ? AND conversation_id < ?))")
        parameters.extend([before, before, beforeId])
    elif before is not None:
        conditions.append("updated_at < ?")
        parameters.append(before)
    if participant is not None:
        conditions.append(
            "EXISTS (SELECT 1 FROM json_each(conversations.participants) WHERE value = ?)"
        )
        parameters.append(participant)
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    parameters.append(limit)
    rows = connection.execute(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations{where}"
        " ORDER BY updated_at DESC, conversation_id DESC LIMIT ?",
        parameters,
    ).fetchall()
    return [_conversation(row) for row in rows]


def _getConversation(
    connection: sqlite3.Connection, conversationId: str, after: int, limit: int
) -> Tuple[Optional[ConversationRecord], List[StoredMessage]]:
    # One transaction, so the summary and the messages agree.
    with _transaction(connection, "BEGIN DEFERRED"):
        row = connection.execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = ?",
            (conversationId,),
        ).fetchone()
        rows = connection.execute(
            "SELECT seq, body, recorded_at FROM messages"
            " WHERE conversation_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (conversationId, after, limit),
        ).fetchall()
    record = None if row is None else _conversation(row)
    return record, [StoredMessage(seq, json.loads(body), at) for (seq, body, at) in rows]


def _readMailbox(
    connection: sqlite3.Connection, client: str, after: int, limit: int
) -> List[StoredMessage]:
    rows = connection.execute(
        "SELECT seq, body, recorded_at FROM mailbox"
        " WHERE client = ? AND seq > ? ORDER BY seq LIMIT ?",
        (client, after, limit),
    ).fetchall()
    return [StoredMessage(seq, json.loads(body), at) for (seq, body, at) in rows]


def _listDeadLetters(
    connection: sqlite3.Connection, limit: int, before: Optional[int]
) -> List[DeadLetter]:
    where = "" if before is None else " WHERE seq < ?"
    parameters: List[Any] = [] if before is None else [before]
    rows = connection.execute(
        "SELECT seq, message_id, conversation_id, sender, receiver, reason,"
        f" detail, body, recorded_at FROM dead_letters{where}"
        " ORDER BY seq DESC LIMIT ?",
        parameters + [limit],
    ).fetchall()
    return [
        DeadLetter(
            seq=seq,
            message_id=messageId,
            conversation_id=conversationId,
            sender=sender,
            receiver=receiver,
            reason=reason,
            detail=detail,
            message=json.loads(body),
            recorded_at=recordedAt,
        )
        for (
            seq,
            messageId,
            conversationId,
            sender,
            receiver,
            reason,
            detail,
            body,
            recordedAt,
        ) in rows
    ]


def _takePending(connection: sqlite3.Connection) -> List[Tuple[str, Any]]:
    with _transaction(connection):
        rows = connection.execute(
            "SELECT agent, body FROM pending_messages ORDER BY seq"
        ).fetchall()
        connection.execute("DELETE FROM pending_messages")
    return [(agent, json.loads(body)) for (agent, body) in rows]


def _fire(waiting: List[Deferred], result: Any) -> None:
    for d in waiting:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(None)


def _fire_later(result: Any, waiting: List[Deferred]) -> None:
    _fire(waiting, result)


def _nothing(connection: sqlite3.Connection) -> None:
    return None


def _loadJournal(connection: sqlite3.Connection) -> List[Tuple[str, Any]]:
    rows = connection.execute("SELECT agent, body FROM inbox ORDER BY seq").fetchall()
    return [(agent, json.loads(body)) for (agent, body) in rows]


def _loadOutbox(connection: sqlite3.Connection) -> List[Tuple[Any, ...]]:
    return connection.execute(
        "SELECT node, epoch, seq, receiver, body, expires_at FROM outbox ORDER BY node, epoch, seq"
    ).fetchall()


def _loadClientHomes(connection: sqlite3.Connection, limit: int) -> List[Tuple[str, str, str]]:
    rows = connection.execute(
        "SELECT client, conversation_id, node FROM client_homes ORDER BY updated_at DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return rows[::-1]


def _saveReplica(
    connection: sqlite3.Connection, name: str, owner: str, version: int, moduleHash: str, spec: str, now: float
) -> None:
    with _transaction(connection):
        connection.execute(
            "INSERT OR REPLACE INTO replicas (name, owner, version, module_hash, spec, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (name, owner, version, moduleHash, spec, now),
        )


def _deleteReplica(connection: sqlite3.Connection, name: str) -> None:
    with _transaction(connection):
        connection.execute("DELETE FROM replicas WHERE name = ?", (name,))


def _loadReplicas(connection: sqlite3.Connection) -> List[Tuple[str, str, int, str, Any]]:
    rows = connection.execute(
        "SELECT name, owner, version, module_hash, spec FROM replicas ORDER BY name"
    ).fetchall()
    return [(n, o, v, h, json.loads(spec)) for (n, o, v, h, spec) in rows]


def _loadIntake(connection: sqlite3.Connection) -> Dict[Tuple[str, int], int]:
    rows = connection.execute("SELECT node, epoch, high FROM peer_intake").fetchall()
    return {(node, epoch): high for (node, epoch, high) in rows}


def _expire(connection: sqlite3.Connection, cutoff: float) -> int:
    removed = 0
    with _transaction(connection):
        # Messages first and by hand: rows removed by ON DELETE CASCADE
        # would not be counted.
        for statement in (
            "DELETE FROM messages WHERE conversation_id IN"
            " (SELECT conversation_id FROM conversations WHERE updated_at < ?)",
            "DELETE FROM conversations WHERE updated_at < ?",
            "DELETE FROM mailbox WHERE recorded_at < ?",
            "DELETE FROM dead_letters WHERE recorded_at < ?",
            # A peer's run not heard from for the retention period will not
            # resend: its outbox would have expired long before.
            "DELETE FROM peer_intake WHERE updated_at < ?",
            "DELETE FROM client_homes WHERE updated_at < ?",
        ):
            removed += connection.execute(statement, (cutoff,)).rowcount
    return removed


@implementer(IStateStore)
class SQLiteStore:
    """
    The node's state in one SQLite file, worked on by one thread.

    @ivar path: the database file, or C{None} to keep the state in memory
        only (gone at L{close}).
    """

    def __init__(
        self,
        path: Optional[str],
        reactor: Any,
        *,
        max_messages_per_conversation: int = 1000,
        retention_seconds: float = 7 * 86400,
        max_dead_letters: int = 100_000,
        threadpool: Optional[ThreadPool] = None,
    ) -> None:
        """
        Make a store; nothing is opened until L{open}.

        @param path: the database file (its directory must exist), or
            C{None} for memory only.
        @param reactor: provides C{seconds}, C{callLater} and
            C{callFromThread}; its time stamps every record.
        @param max_messages_per_conversation: how many of a conversation's
            newest messages are kept.
        @param retention_seconds: how long conversations (since their last
            update), mailbox entries and dead letters are kept by L{expire}.
        @param max_dead_letters: how many of the newest dead letters are
            kept.
        @param threadpool: the worker to run SQLite on, which must run one
            job at a time in order (one thread), and which the caller
            starts and stops.  By default the store makes its own in
            L{open} and stops it in L{close}.
        @raise ValueError: if a limit is negative or the retention is not
            positive.
        """
        if max_messages_per_conversation < 0:
            raise ValueError("max_messages_per_conversation must not be negative")
        if max_dead_letters < 0:
            raise ValueError("max_dead_letters must not be negative")
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        self.path = path
        self._reactor = reactor
        self._maxMessages = max_messages_per_conversation
        self._retention = retention_seconds
        self._maxDeadLetters = max_dead_letters
        self._givenPool = threadpool
        self._pool: Optional[ThreadPool] = None
        self._connection: Optional[sqlite3.Connection] = None
        self._state = "closed"
        self._pending: List[_Pending] = []
        self._flushCall: Any = None
        self._holding = 0
        self._syncing: Optional[Deferred] = None
        # Batches handed to the worker, and the last one that failed (with
        # why): a sync behind a failed batch fails too, once.
        self._batches = 0
        self._failed: Optional[Tuple[int, Failure]] = None
        self._nextSync: List[Deferred] = []
        self._shutdownTrigger: Any = None

    # Opening and closing

    def open(self) -> "Deferred[None]":
        """
        Start the worker, open the file and bring its schema up to date.

        @return: a L{Deferred} firing with C{None} when the store is ready,
            or failing with L{StoreError} if the file comes from a newer
            Caxton, or with the SQLite error if it cannot be opened.
        """
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        if self._state != "closed":
            raise StoreError(f"cannot open a store that is {self._state}")
        self._state = "opening"
        if self._givenPool is None:
            self._pool = ThreadPool(1, 1, name="caxton-sqlite")
            self._pool.start()
        else:
            self._pool = self._givenPool
        try:
            self._connection = await deferToThreadPool(
                self._reactor,
                self._pool,
                _connect,
                ":memory:" if self.path is None else self.path,
                MIGRATIONS,
            )
        except BaseException:
            self._stopPool()
            self._state = "closed"
            raise
        self._state = "open"
        if IReactorCore.providedBy(self._reactor):
            # If the reactor stops without anyone closing us, still flush
            # and let the (non-daemon) worker thread end.
            self._shutdownTrigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self.close
            )

    def close(self) -> "Deferred[None]":
        """
        Write what is pending, close the file and stop the worker.  Closing
        a store that is not open does nothing.

        @return: a L{Deferred} firing with C{None} when done.
        """
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._state != "open":
            return
        self._flush()
        self._state = "closing"
        if self._shutdownTrigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdownTrigger)
            self._shutdownTrigger = None
        connection, self._connection = self._connection, None
        try:
            await deferToThreadPool(self._reactor, self._pool, _disconnect, connection)
        finally:
            self._stopPool()
            self._state = "closed"

    def _stopPool(self) -> None:
        if self._givenPool is None and self._pool is not None:
            # The worker has finished its last job, so this join is short.
            self._pool.stop()
        self._pool = None

    # Running work on the worker

    def _run(self, function: Callable[..., _T], *args: Any) -> "Deferred[_T]":
        """
        Hand whatever is pending to the worker, then C{function(connection,
        *args)}, so that it sees every record made before this call.
        """
        if self._state != "open":
            return fail(StoreError(f"the store is {self._state}, not open"))
        self._flush()
        return deferToThreadPool(self._reactor, self._pool, function, self._connection, *args)

    def _enqueue(self, entry: _Pending) -> None:
        if self._state != "open":
            raise StoreError(f"cannot record in a store that is {self._state}")
        self._pending.append(entry)
        if len(self._pending) >= FLUSH_THRESHOLD and not self._holding:
            self._flush()
        elif self._flushCall is None:
            self._flushCall = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """
        Hand the pending batch, if any, to the worker.
        """
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        written = deferToThreadPool(
            self._reactor,
            self._pool,
            _writeBatch,
            self._connection,
            batch,
            self._maxMessages,
            self._maxDeadLetters,
        )
        self._batches += 1
        written.addErrback(self._batchFailed, len(batch), self._batches)

    def _batchFailed(self, failure: Failure, count: int, number: int) -> None:
        """
        A batch was rolled back: log it, and fail the syncs waiting behind
        it (they promise that what came before them is written).
        """
        _log.failure(
            "could not write a batch of {count} records to the state database",
            failure,
            count=count,
        )
        self._failed = (number, failure)

    # IStateStore

    def save_module(self, module_hash: str, wasm: bytes) -> "Deferred[None]":
        """
        Keep C{wasm} under C{module_hash}; saving it again does nothing.

        @param module_hash: the SHA-256 hex digest of C{wasm}.
        @param wasm: the module's bytes.
        @return: a L{Deferred} of C{None}, failing with L{StoreError} if
            C{module_hash} is not C{wasm}'s digest.
        """
        return self._run(_saveModule, module_hash, bytes(wasm), self._reactor.seconds())

    def load_module(self, module_hash: str) -> "Deferred[Optional[bytes]]":
        """
        Load a module.

        @param module_hash: its SHA-256 hex digest.
        @return: a L{Deferred} of its bytes, or C{None} if it is not kept.
        """
        return self._run(_loadModule, module_hash)

    def delete_module(self, module_hash: str) -> "Deferred[bool]":
        """
        Forget a module, unless an agent's record still names it.

        @return: a L{Deferred} of whether it was deleted.
        """
        return self._run(_deleteModule, module_hash)

    def save_agent(self, record: AgentRecord) -> "Deferred[None]":
        """
        Insert or replace an agent's record.  Its module must have been
        saved with L{save_module} first.

        @param record: the agent.
        @return: a L{Deferred} of C{None}, failing with
            L{sqlite3.IntegrityError} if the module is not kept.
        """
        try:
            spec = _encode(record.spec)
        except (TypeError, ValueError):
            return fail()
        return self._run(_saveAgent, record, spec)

    def delete_agent(self, name: str) -> "Deferred[None]":
        """
        Forget an agent; forgetting an unknown one does nothing.

        @param name: the agent's name.
        @return: a L{Deferred} of C{None}.
        """
        return self._run(_deleteAgent, name)

    def load_agents(self) -> "Deferred[List[AgentRecord]]":
        """
        Load every agent.

        @return: a L{Deferred} of a list of L{AgentRecord}s, by name.
        """
        return self._run(_loadAgents)

    def record_message(self, conversation: ConversationRecord, message: Mapping[str, Any]) -> None:
        """
        Append C{message} to its conversation and update the summary from
        C{conversation}: its participants are merged with those kept, its
        C{message_count} is ignored in favour of the kept count plus one.
        Written with the next batch; the conversation keeps at most its
        newest C{max_messages_per_conversation} messages.

        @param conversation: the conversation's current summary.
        @param message: the message as its JSON object.
        @raise TypeError: if C{message} cannot be encoded as JSON.
        @raise StoreError: if the store is not open.
        """
        self._enqueue(_PendingMessage(conversation, _encode(message), self._reactor.seconds()))

    def record_mailbox(self, client: str, message: Mapping[str, Any]) -> None:
        """
        Put C{message} in API client C{client}'s mailbox with the next
        batch.

        @param client: the client's name.
        @param message: the message as its JSON object.
        @raise TypeError: if C{message} cannot be encoded as JSON.
        @raise StoreError: if the store is not open.
        """
        self._enqueue(_PendingMailbox(client, _encode(message), self._reactor.seconds()))

    def record_dead_letter(
        self,
        message: Mapping[str, Any],
        receiver: Optional[str],
        reason: str,
        detail: str,
    ) -> None:
        """
        Record a message that ended in failure with the next batch; only the
        newest C{max_dead_letters} are kept.

        @param message: the message as its JSON object; its C{message_id},
            C{conversation_id} and C{sender} are kept alongside.
        @param receiver: the receiver it failed to reach, if one.
        @param reason: the failure's reason code (C{TIMEOUT}, ...).
        @param detail: what happened, for an operator.
        @raise TypeError: if C{message} cannot be encoded as JSON.
        @raise StoreError: if the store is not open.
        """
        self._enqueue(
            _PendingDeadLetter(
                message_id=_optionalString(message, "message_id"),
                conversation_id=_optionalString(message, "conversation_id"),
                sender=_optionalString(message, "sender"),
                receiver=receiver,
                reason=reason,
                detail=detail,
                body=_encode(message),
                recorded_at=self._reactor.seconds(),
            )
        )

    def list_conversations(
        self,
        limit: int,
        before: Optional[float],
        participant: Optional[str],
        before_id: Optional[str] = None,
    ) -> "Deferred[List[ConversationRecord]]":
        """
        List conversations, most recently updated first (ties by id,
        descending).

        @param limit: at most this many.
        @param before: only those updated strictly before this time, or,
            with C{before_id}, those after the page that ended at
            C{(before, before_id)}.
        @param participant: only those this name took part in.
        @return: a L{Deferred} of a list of L{ConversationRecord}s.
        """
        return self._run(_listConversations, limit, before, participant, before_id)

    def get_conversation(
        self, conversation_id: str, after: int, limit: int
    ) -> "Deferred[Tuple[Optional[ConversationRecord], List[StoredMessage]]]":
        """
        Read a conversation and its kept messages.

        @param conversation_id: the conversation.
        @param after: only messages with a greater C{seq}.
        @param limit: at most this many messages, oldest first.
        @return: a L{Deferred} of C{(summary or None, [StoredMessage])}.
        """
        return self._run(_getConversation, conversation_id, after, limit)

    def read_mailbox(self, client: str, after: int, limit: int) -> "Deferred[List[StoredMessage]]":
        """
        Read a client's mailbox.

        @param client: the client's name.
        @param after: only messages with a greater C{seq}.
        @param limit: at most this many, oldest first.
        @return: a L{Deferred} of a list of L{StoredMessage}s.
        """
        return self._run(_readMailbox, client, after, limit)

    def list_dead_letters(self, limit: int, before: Optional[int]) -> "Deferred[List[DeadLetter]]":
        """
        List dead letters, newest first.

        @param limit: at most this many.
        @param before: only those with a smaller C{seq}.
        @return: a L{Deferred} of a list of L{DeadLetter}s.
        """
        return self._run(_listDeadLetters, limit, before)

    def save_pending(self, items: Sequence[Tuple[str, Union[bytes, str]]]) -> None:
        """
        Keep messages that were still queued for agents, to hand back with
        L{take_pending} after a restart.  Written with the next batch (and
        so by L{close}).

        @param items: C{(agent name, message as JSON)} pairs, the JSON as
            UTF-8 bytes (or text), in the order they should be redelivered.
        @raise ValueError: if an item's message is not JSON (nothing is
            kept then).
        @raise StoreError: if the store is not open.
        """
        now = self._reactor.seconds()
        entries = []
        for agent, body in items:
            text = body.decode("utf-8") if isinstance(body, bytes) else body
            # Checked now: one bad row would otherwise fail every later
            # take_pending, and with it the node's start.
            json.loads(text)
            entries.append(_PendingDelivery(agent, text, now))
        for entry in entries:
            self._enqueue(entry)

    def take_pending(self) -> "Deferred[List[Tuple[str, Any]]]":
        """
        Take back the messages kept by L{save_pending}, removing them from
        the store.

        @return: a L{Deferred} of C{(agent name, message dict)} pairs, in
            the order kept.
        """
        return self._run(_takePending)

    # The delivery journal, the outbox and the peer intake --------------------
    #
    # These records keep SPEC 4.2 through a kill -9: a message is in the
    # journal from the moment an agent's inbox takes it until its handler
    # has run, in the outbox from the moment it is bound for another node
    # until that node acknowledges it, and each peer's last message taken
    # in is kept so a resend is recognised.  All are batched like the
    # other records, in order, so what a handler sent is written before
    # (or with) the record that it was handled.

    @contextmanager
    def together(self) -> Iterator[None]:
        """
        Records made inside go to the worker in one batch, and so are
        written in one transaction: all or none survive a crash.
        """
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding and len(self._pending) >= FLUSH_THRESHOLD:
                self._flush()

    def sync(self) -> "Deferred[None]":
        """
        Fires once every record made before this call is written.

        Calls share work: while one sync is on the worker, the calls that
        come meanwhile wait together for the next, so a burst of API
        requests costs two trips to the worker, not one each.
        """
        d: Deferred = Deferred()
        if self._syncing is not None:
            self._nextSync.append(d)
            return d
        waiting = [d]
        self._syncing = self._run(_nothing)
        # _run handed every pending record to the worker first.
        self._syncing.addBoth(self._synced, waiting, self._batches)
        return d

    def _synced(self, result: Any, waiting: List[Deferred], behind: int) -> None:
        self._syncing = None
        if self._failed is not None and self._failed[0] <= behind and not isinstance(result, Failure):
            # A batch before this sync failed (its errback ran first: the
            # worker and the reactor both keep order).
            result, self._failed = self._failed[1], None
        _fire(waiting, result)
        following, self._nextSync = self._nextSync, []
        if following:
            self.sync().addBoth(_fire_later, following)

    def _statement(self, sql: str, *parameters: Any) -> None:
        self._enqueue(_PendingStatement(sql, parameters))

    def journal_add(self, agent: str, message_id: str, body: Union[bytes, str]) -> None:
        """
        Note that agent C{agent} has message C{message_id} (its JSON
        C{body}) waiting.  Batched.
        """
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        self._statement(
            "INSERT INTO inbox (agent, message_id, body, recorded_at) VALUES (?, ?, ?, ?)",
            agent,
            message_id,
            text,
            self._reactor.seconds(),
        )

    def journal_done(self, agent: str, message_id: str) -> None:
        """
        Agent C{agent} is done with message C{message_id}.  Batched.
        """
        self._statement("DELETE FROM inbox WHERE message_id = ? AND agent = ?", message_id, agent)

    def load_journal(self) -> "Deferred[List[Tuple[str, Any]]]":
        """
        The messages still waiting for agents, as C{(agent, message dict)}
        in the order they were taken; they stay until L{journal_done}.
        """
        return self._run(_loadJournal)

    def outbox_add(
        self, node: str, epoch: int, seq: int, receiver: str, body: str, expires_at: float
    ) -> None:
        """
        Keep a message bound for C{node} until it is acknowledged.  Batched.
        """
        self._statement(
            "INSERT OR REPLACE INTO outbox (node, epoch, seq, receiver, body, expires_at,"
            " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            node,
            epoch,
            seq,
            receiver,
            body,
            expires_at,
            self._reactor.seconds(),
        )

    def outbox_acked(self, node: str, epoch: int, high: int) -> None:
        """
        C{node} has everything up to C{(epoch, high)}.  Batched.
        """
        self._statement(
            "DELETE FROM outbox WHERE node = ? AND epoch = ? AND seq <= ?", node, epoch, high
        )

    def outbox_drop(self, node: str, epoch: int, seq: int) -> None:
        """
        Forget one message bound for C{node} (it failed).  Batched.
        """
        self._statement(
            "DELETE FROM outbox WHERE node = ? AND epoch = ? AND seq = ?", node, epoch, seq
        )

    def load_outbox(self) -> "Deferred[List[Tuple[Any, ...]]]":
        """
        Every message waiting for another node, as C{(node, epoch, seq,
        receiver, body, expires_at)}, by node and in the order sent.
        """
        return self._run(_loadOutbox)

    def intake_high(self, node: str, epoch: int, high: int) -> None:
        """
        Everything C{node} sent up to C{(epoch, high)} has been taken in.
        Batched.
        """
        self._statement(
            "INSERT OR REPLACE INTO peer_intake (node, epoch, high, updated_at) VALUES (?, ?, ?, ?)",
            node,
            epoch,
            high,
            self._reactor.seconds(),
        )

    def client_home(self, client: str, conversation_id: str, node: str) -> None:
        """
        API client C{client} came through C{node} in C{conversation_id}
        (C{""}: lately).  Batched.
        """
        self._statement(
            "INSERT OR REPLACE INTO client_homes (client, conversation_id, node, updated_at)"
            " VALUES (?, ?, ?, ?)",
            client,
            conversation_id,
            node,
            self._reactor.seconds(),
        )

    def load_client_homes(self, limit: int) -> "Deferred[List[Tuple[str, str, str]]]":
        """
        The C{limit} latest C{(client, conversation_id, node)}, oldest first.
        """
        return self._run(_loadClientHomes, limit)

    def save_replica(self, name: str, owner: str, version: int, module_hash: str, spec: Mapping[str, Any]) -> "Deferred[None]":
        """
        Keep the spec of another node's relocatable agent, whose module is
        saved under C{module_hash} (L{save_module} first).
        """
        return self._run(
            _saveReplica, name, owner, version, module_hash, _encode(spec), self._reactor.seconds()
        )

    def delete_replica(self, name: str) -> "Deferred[None]":
        """
        Forget the copy of agent C{name} (its module stays if used).
        """
        return self._run(_deleteReplica, name)

    def load_replicas(self) -> "Deferred[List[Tuple[str, str, int, str, Any]]]":
        """
        Every kept copy: C{(name, owner, version, module_hash, spec)}.
        """
        return self._run(_loadReplicas)

    def load_intake(self) -> "Deferred[Dict[Tuple[str, int], int]]":
        """
        The last message taken in from each peer's run, C{{(node, epoch):
        seq}}.
        """
        return self._run(_loadIntake)

    def expire(self, now: float) -> "Deferred[int]":
        """
        Remove conversations not updated, and mailbox entries and dead
        letters not recorded, within C{retention_seconds} before C{now}.
        Messages kept by L{save_pending} are not expired.

        @param now: the current time, Unix seconds.
        @return: a L{Deferred} of the number of rows removed (a conversation
            counts once, plus once for each of its kept messages).
        """
        return self._run(_expire, now - self._retention)
