"""
The node's local state: what it keeps in SQLite and the records it exchanges.

Everything that can be slow returns a L{Deferred}; the C{record_*} methods
are fire-and-forget and batched, so the router can call them on its hot path
without waiting for a disk.  Reads see every record made before them.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import attr
from zope.interface import Attribute, Interface


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AgentRecord:
    """
    A deployed agent as the node persists it.

    @ivar name: the agent's name.
    @ivar version: 1 at deploy, bumped by every update.
    @ivar module_hash: the SHA-256 hex digest of its WebAssembly module.
    @ivar spec: the deploy spec as JSON (capabilities, limits, config).
    @ivar status: C{running}, C{stopped} or C{failed}.
    @ivar reason: why it failed, when C{status} is C{failed}.
    @ivar created_at: first deploy, Unix seconds.
    @ivar updated_at: last change, Unix seconds.
    """

    name: str
    version: int
    module_hash: str
    spec: Mapping[str, Any]
    status: str
    reason: Optional[str]
    created_at: float
    updated_at: float


@attr.s(frozen=True, slots=True, auto_attribs=True)
class StoredMessage:
    """
    A message as kept in a conversation, a mailbox or the dead letters.

    @ivar seq: its position, increasing in the order it was recorded.
    @ivar message: the message as its JSON object.
    @ivar recorded_at: Unix seconds.
    """

    seq: int
    message: Mapping[str, Any]
    recorded_at: float


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ConversationRecord:
    """
    The summary of one conversation.

    @ivar participants: every sender and receiver seen, sorted.
    @ivar state: the protocol's state (C{open}, C{done}, C{failed},
        C{timed-out}, ...).
    @ivar message_count: messages ever recorded in it, including any
        dropped by retention.
    """

    conversation_id: str
    protocol: Optional[str]
    initiator: Optional[str]
    participants: Tuple[str, ...]
    state: str
    created_at: float
    updated_at: float
    message_count: int


@attr.s(frozen=True, slots=True, auto_attribs=True)
class DeadLetter:
    """
    A message that ended in failure, with the reason.
    """

    seq: int
    message_id: Optional[str]
    conversation_id: Optional[str]
    sender: Optional[str]
    receiver: Optional[str]
    reason: str
    detail: str
    message: Mapping[str, Any]
    recorded_at: float


class IStateStore(Interface):
    """
    The node's durable state.
    """

    path = Attribute("Where the state lives, or None for memory only.")

    def open() -> Any:
        """
        Open (creating and migrating as needed); a Deferred firing when ready.
        """

    def close() -> Any:
        """
        Flush what is pending and close; a Deferred firing when done.
        """

    def save_module(module_hash: str, wasm: bytes) -> Any:
        """
        Keep a module under its hash (idempotent); Deferred of None.
        """

    def load_module(module_hash: str) -> Any:
        """
        Deferred of the module's bytes, or None.
        """

    def delete_module(module_hash: str) -> Any:
        """
        Forget a module unless an agent record names it; Deferred of whether
        it was deleted.
        """

    def save_agent(record: AgentRecord) -> Any:
        """
        Insert or replace an agent's record; Deferred of None.
        """

    def delete_agent(name: str) -> Any:
        """
        Forget an agent; Deferred of None.
        """

    def load_agents() -> Any:
        """
        Deferred of every L{AgentRecord}, by name.
        """

    def record_message(conversation: ConversationRecord, message: Mapping[str, Any]) -> None:
        """
        Append C{message} to its conversation and update the summary.
        Batched; keeps at most the configured number of messages per
        conversation.
        """

    def record_mailbox(client: str, message: Mapping[str, Any]) -> None:
        """
        Put C{message} in the mailbox of API client C{client}. Batched.
        """

    def record_dead_letter(
        message: Mapping[str, Any], receiver: Optional[str], reason: str, detail: str
    ) -> None:
        """
        Record a message that ended in failure. Batched.
        """

    def list_conversations(
        limit: int, before: Optional[float], participant: Optional[str], before_id: Optional[str] = None
    ) -> Any:
        """
        Deferred of L{ConversationRecord}s, most recently updated first
        (ties by id, descending), updated before C{before} when given, or
        after the page ending at C{(before, before_id)} when both are.
        """

    def get_conversation(conversation_id: str, after: int, limit: int) -> Any:
        """
        Deferred of C{(ConversationRecord or None, [StoredMessage])}: the
        conversation and its messages with C{seq > after}, oldest first.
        """

    def read_mailbox(client: str, after: int, limit: int) -> Any:
        """
        Deferred of the L{StoredMessage}s in C{client}'s mailbox with
        C{seq > after}, oldest first.
        """

    def list_dead_letters(limit: int, before: Optional[int]) -> Any:
        """
        Deferred of L{DeadLetter}s, newest first, with C{seq < before} when
        given.
        """

    def save_pending(items: Sequence[Tuple[str, bytes]]) -> None:
        """
        Keep messages that were still queued for agents at shutdown, as
        C{(agent name, message JSON)}. Batched; flushed by C{close}.
        """

    def take_pending() -> Any:
        """
        Deferred of the kept C{(agent name, message dict)} pairs, in the
        order kept, removing them from the store.
        """

    def together() -> Any:
        """
        A context manager: records made inside are written in one
        transaction.
        """

    def sync() -> Any:
        """
        A Deferred firing once every record made before the call is written.
        """

    def journal_add(agent: str, message_id: str, body: Any) -> None:
        """
        Note a message waiting for C{agent} (the delivery journal). Batched.
        """

    def journal_done(agent: str, message_id: str) -> None:
        """
        C{agent} is done with a message. Batched.
        """

    def load_journal() -> Any:
        """
        Deferred of C{(agent, message dict)} still waiting, oldest first.
        """

    def outbox_add(node: str, epoch: int, seq: int, receiver: str, body: str, expires_at: float) -> None:
        """
        Keep a message bound for another node until it is acknowledged. Batched.
        """

    def outbox_acked(node: str, epoch: int, high: int) -> None:
        """
        C{node} has the messages up to C{(epoch, high)}. Batched.
        """

    def outbox_drop(node: str, epoch: int, seq: int) -> None:
        """
        Forget one message bound for C{node}. Batched.
        """

    def load_outbox() -> Any:
        """
        Deferred of C{(node, epoch, seq, receiver, body, expires_at)} rows.
        """

    def intake_high(node: str, epoch: int, high: int) -> None:
        """
        Everything C{node}'s run C{epoch} sent up to C{high} is taken in. Batched.
        """

    def client_home(client: str, conversation_id: str, node: str) -> None:
        """
        An API client came through C{node} (in a conversation, or C{""}). Batched.
        """

    def load_client_homes(limit: int) -> Any:
        """
        Deferred of the latest C{(client, conversation_id, node)}, oldest first.
        """

    def load_intake() -> Any:
        """
        Deferred of C{{(node, epoch): high}}.
        """

    def expire(now: float) -> Any:
        """
        Apply retention (conversations, mailboxes, dead letters older than
        configured); Deferred of the number of rows removed.
        """

