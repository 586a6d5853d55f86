# -*- test-case-name: tests.test_router -*-
"""
The router: where every message on the node goes through (SPEC 4).

It accepts messages from API clients and from agents, gives them their ids,
resolves receivers (names, a capability for one, a capability for all),
keeps the interaction protocols honest through the
L{ConversationTracker}, records conversations, and hands each copy to an
agent's inbox or a client's mailbox.

It keeps the delivery guarantee of SPEC 4.2: a message it accepted is
delivered, or its sender receives a C{failure} naming the reason and a dead
letter is recorded.  Messages the node itself sends (failures, timeouts,
C{not-understood}, late C{reject-proposal}) come from the reserved name
L{NODE}; when one of those cannot be delivered, only a dead letter is
recorded, so failures never beget failures.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter, OrderedDict, defaultdict
from typing import Any, DefaultDict, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from caxton.acl.message import (
    ACLMessage,
    CapabilityReceiver,
    InvalidMessage,
    encode_body,
    make_reply,
    message_to_dict,
    parse_message,
)
from caxton.acl.protocols import ConversationTracker
from caxton.agents.manager import AgentManager, IMessageSink
from caxton.cluster.interfaces import IRemoteRoutes
from caxton.errors import CaxtonError, NotAccepting
from caxton.mcp.interfaces import IToolGateway, ToolFailure
from caxton.mcp.names import RECEIVER_PREFIX
from caxton.observability.interfaces import IMessageObserver, NullMessageObserver
from caxton.store.interfaces import ConversationRecord, IStateStore

log = Logger()

#: The name the node itself sends under.
NODE = "caxton"

#: Names that start with this are API clients, with a mailbox.
CLIENT_PREFIX = "client:"

#: Names that start with this are MCP tools, C{mcp:<server>/<tool>}.
TOOL_PREFIX = RECEIVER_PREFIX

#: Conversation summaries kept in memory for recording.
_SUMMARIES = 10_000


#: Ids are this process's random prefix and a counter: unique across nodes
#: and restarts, and cheap.  uuid4() reads os.urandom, a system call that
#: releases the GIL, and getting it back from busy agent workers cost the
#: reactor thread tens of microseconds per id (docs/performance.md).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_id() -> str:
    """
    A fresh message or conversation id: 32 hex digits, opaque to clients.
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class _Waiters:
    """
    Deferreds waiting on a key, fired together.
    """

    def __init__(self) -> None:
        self._waiting: DefaultDict[Any, List[Deferred]] = defaultdict(list)

    def wait(self, key: Any) -> Deferred:
        def cancel(d: Deferred) -> None:
            waiting = self._waiting.get(key)
            if waiting and d in waiting:
                waiting.remove(d)
                if not waiting:
                    del self._waiting[key]

        d: Deferred = Deferred(cancel)
        self._waiting[key].append(d)
        return d

    def fire(self, key: Any, value: Any = None) -> None:
        waiting = self._waiting.pop(key, None)
        for d in waiting or ():
            d.callback(value)

    def __contains__(self, key: Any) -> bool:
        return key in self._waiting


@implementer(IMessageSink)
class Router:
    """
    Routes messages between agents and API clients on this node.

    @param reactor: provides C{seconds} and C{callLater}.
    @param agents: the agents hosted here.
    @param store: where conversations, mailboxes and dead letters go.
    @param tools: the MCP tool gateway, for receivers C{mcp:<server>/<tool>}
        (none: such messages fail with C{NOT_FOUND}).

    @ivar remote: the cluster's routes to other nodes, set when the node
        is clustered; without it every name is local.
    @param observer: told what became of each message, for metrics.
    """

    def __init__(
        self,
        reactor: Any,
        agents: AgentManager,
        store: IStateStore,
        tracker: Optional[ConversationTracker] = None,
        tools: Optional[IToolGateway] = None,
        observer: Optional[IMessageObserver] = None,
    ) -> None:
        self._reactor = reactor
        self._observer: IMessageObserver = observer if observer is not None else NullMessageObserver()
        self._agents = agents
        self._store = store
        self._tools = tools
        self._tracker = tracker if tracker is not None else ConversationTracker()
        self._summaries: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
        self._deadline: Any = None
        self._deadline_at: Optional[float] = None
        self._conversation_waiters = _Waiters()
        self._mailbox_waiters = _Waiters()
        self._replies = _Waiters()
        self.counters: Counter = Counter()
        self.accepting = True
        self.remote: Optional[IRemoteRoutes] = None
        self._remote_turns: Counter = Counter()
        agents.sink = self

    # Entry points -----------------------------------------------------------

    def send(self, message: ACLMessage) -> ACLMessage:
        """
        Accept a message from an API client and route it.

        @param message: its sender must be a client name (C{client:...}).
        @return: the message as accepted, with its ids.
        @raise InvalidMessage: for a sender that is not a client name.
        @raise NotAccepting: while the node shuts down.
        """
        if not self.accepting:
            raise NotAccepting("the node is shutting down")
        if message.sender is None:
            message = message.evolve(sender=CLIENT_PREFIX + "api")
        elif not message.sender.startswith(CLIENT_PREFIX) or message.sender == CLIENT_PREFIX:
            raise InvalidMessage(
                f"API clients send as a client name such as 'client:alice', not {message.sender!r}"
            )
        if message.receiver is None:
            raise InvalidMessage("receiver is required")
        accepted = self._accept(message)
        self._route(accepted)
        return accepted

    def agent_sent(self, agent: str, message: ACLMessage) -> None:
        """
        Route what an agent sent, as the agent.
        """
        if message.receiver is None:
            self.agent_refused(agent, "reply: the message being handled has no sender to reply to", None)
            return
        self._route(self._accept(message))

    def agent_refused(self, agent: str, reason: str, handling: Optional[ACLMessage] = None) -> None:
        """
        Answer an agent's malformed send with C{not-understood}.
        """
        self.counters["not_understood"] += 1
        if handling is not None and handling.sender == NODE and handling.performative == "not-understood":
            # Answering a not-understood about a malformed message with
            # another malformed message: stop the ping-pong here.
            log.warn("agent {agent} keeps sending malformed messages: {reason}", agent=agent, reason=reason)
            return
        self._from_node(
            "not-understood",
            agent,
            {"reason": "INVALID_MESSAGE", "message": reason},
            conversation_id=handling.conversation_id if handling else None,
        )

    def delivery_failed(self, message: ACLMessage, receiver: str, reason: str, detail: str) -> None:
        """
        Tell the sender of C{message} it failed at C{receiver}, and record it.
        """
        if message.message_id is not None:
            self._store.journal_done(receiver, message.message_id)
        self._fail(message, receiver, reason, detail)

    def message_handled(self, agent: str, message: ACLMessage) -> None:
        """
        Agent C{agent}'s handler has run on C{message}: it leaves the
        journal, after whatever the handler sent.
        """
        if message.message_id is not None:
            self._store.journal_done(agent, message.message_id)

    def redeliver(self, name: str, body: Dict[str, Any], journaled: bool = False) -> None:
        """
        Queue again, under its own ids, a message that was accepted and
        queued for agent C{name} before the node last stopped.

        @param journaled: it comes from the delivery journal, where it
            already is (and stays until handled).
        """
        try:
            message = parse_message(body)
        except InvalidMessage as e:
            log.warn("dropping unreadable kept message for {agent}: {error}", agent=name, error=str(e))
            if journaled and isinstance(body.get("message_id"), str):
                self._store.journal_done(name, body["message_id"])
            return
        body = message_to_dict(message)
        self._deliver(message, encode_body(body), name, body, journaled=journaled)

    def arrived(self, receiver: str, body: Dict[str, Any]) -> None:
        """
        Take in a message another node forwarded for C{receiver} here: it
        is judged by this node's protocol tracker too (replies to
        conversations begun here end them), recorded, and delivered.

        @raise InvalidMessage: if C{body} is not a message.
        """
        message = parse_message(body)
        if message.message_id is None or message.conversation_id is None:
            raise InvalidMessage("a forwarded message carries its ids")
        if receiver == NODE or receiver.startswith(TOOL_PREFIX):
            # Tools are called by the node of the agent that asked (which
            # checks its allowances); nobody forwards to them.
            raise InvalidMessage(f"{receiver!r} is not a receiver another node forwards to")
        self.counters["arrived"] += 1
        receivers = (receiver,)
        if message.sender != NODE:
            verdict = self._tracker.observe(message, receivers, self._reactor.seconds())
            self._schedule_deadline()
            if verdict.kind != "accept":
                self._record(message, receivers, body)
                self._protocol_refusal(message, verdict.kind, verdict.reason)
                return
        self._record(message, receivers, body)
        self._deliver(message, encode_body(body), receiver, body, arrived=True)

    # Routing -----------------------------------------------------------------

    def _accept(self, message: ACLMessage) -> ACLMessage:
        return message.evolve(
            message_id=new_id(),
            conversation_id=message.conversation_id or new_id(),
        )

    def _resolve(self, message: ACLMessage) -> Tuple[Tuple[str, ...], Optional[str]]:
        """
        The receivers' names, and the capability asked for when none offers
        it.  A capability is served by this node's agents first, then by
        those of other nodes (SPEC 5.2).
        """
        receiver = message.receiver
        if isinstance(receiver, CapabilityReceiver):
            capability = receiver.capability
            if receiver.all:
                names = [c.name for c in self._agents.offering(capability)]
                if self.remote is not None:
                    names.extend(n for n, _ in self.remote.offering(capability) if n not in names)
                found = tuple(names)
            else:
                chosen = self._agents.choose(capability)
                if chosen is not None:
                    found = (chosen.name,)
                else:
                    found = self._choose_remote(capability)
            return found, (None if found else capability)
        return receiver or (), None

    def _choose_remote(self, capability: str) -> Tuple[str, ...]:
        """
        One agent of another node offering C{capability}, taking turns.
        """
        if self.remote is None:
            return ()
        offered = sorted(set(n for n, _ in self.remote.offering(capability)))
        if not offered:
            return ()
        turn = self._remote_turns[capability]
        self._remote_turns[capability] = turn + 1
        return (offered[turn % len(offered)],)

    def _route(self, message: ACLMessage) -> None:
        self.counters["routed"] += 1
        accepted_at = self._reactor.seconds()
        receivers, unmet = self._resolve(message)
        # Messages to the node end there unpoliced: a protocol notice in
        # answer would be answered again by an agent that answers everything.
        if message.sender != NODE and receivers != (NODE,):
            verdict = self._tracker.observe(message, receivers, self._reactor.seconds())
            self._schedule_deadline()
            if verdict.kind != "accept":
                self._record(message, receivers, message_to_dict(message))
                self._protocol_refusal(message, verdict.kind, verdict.reason)
                return
        body = message_to_dict(message)
        self._record(message, receivers, body)
        if unmet is not None:
            self._fail(
                message,
                f"capability:{unmet}",
                "AGENT_NOT_FOUND",
                f"no agent offers capability {unmet!r}",
            )
            return
        raw = encode_body(body)
        for name in receivers:
            self._deliver(message, raw, name, body, accepted_at=accepted_at)

    def _deliver(
        self,
        message: ACLMessage,
        raw: bytes,
        name: str,
        body: Dict[str, Any],
        journaled: bool = False,
        accepted_at: Optional[float] = None,
        arrived: bool = False,
    ) -> None:
        if name == NODE:
            # Answers to the node's own messages (an agent replying to a
            # failure, say) end here: recorded in the conversation, and
            # never bounced back, which could loop.
            self.counters["to_node"] += 1
            return
        if name.startswith(TOOL_PREFIX):
            self._call_tool(message, name)
            return
        remote = self.remote
        if name.startswith(CLIENT_PREFIX):
            # A message another node sent here for a client stays here: two
            # nodes that each think the client is at the other must not
            # pass it back and forth.
            home = None
            if remote is not None and not arrived:
                home = remote.client_home(name, message.conversation_id)
            if home is not None:
                self._forward(home, message, raw, name)
                return
            self._store.record_mailbox(name, body)
            self._mailbox_waiters.fire(name)
            if message.performative != "agree":
                self._replies.fire((name, message.conversation_id), message)
            self.counters["delivered"] += 1
            self._observer.routed("client", self._since(accepted_at))
            return
        if remote is not None:
            if self._agents.get(name) is None:
                self._deliver_remote(message, raw, name, journaled)
                return
            elsewhere = remote.shadowed(name)
            if elsewhere is not None:
                if journaled:
                    self._store.journal_done(name, message.message_id)
                self._forward(elsewhere, message, raw, name)
                return
        try:
            self._agents.deliver(name, message, raw)
        except CaxtonError as e:
            if journaled:
                self._store.journal_done(name, message.message_id)
            self._fail(message, name, e.code, str(e))
        else:
            if not journaled:
                self._store.journal_add(name, message.message_id, raw)
            self.counters["delivered"] += 1
            self._observer.routed("local", self._since(accepted_at))

    def _since(self, accepted_at: Optional[float]) -> Optional[float]:
        return None if accepted_at is None else self._reactor.seconds() - accepted_at

    # Other nodes (SPEC 5.2) ---------------------------------------------------

    def _deliver_remote(self, message: ACLMessage, raw: bytes, name: str, journaled: bool) -> None:
        """
        Send a message for an agent that is not here to the node the
        registry names, or ask the cluster; C{AGENT_NOT_FOUND} when no node
        hosts it.
        """
        remote = self.remote
        assert remote is not None
        if journaled:
            # Kept for an agent that is no longer here: it goes on from
            # the outbox now.
            self._store.journal_done(name, message.message_id)
        node = remote.locate(name)
        if node is not None:
            self._forward(node, message, raw, name)
            return
        self.counters["lookups"] += 1
        asked = remote.ask(name)
        asked.addCallback(self._looked_up, message, raw, name)
        asked.addErrback(
            lambda failure: (
                log.failure("looking up agent {agent}", failure, agent=name),
                self._fail(message, name, "AGENT_NOT_FOUND", f"no agent named {name!r}"),
            )
        )

    def _looked_up(self, node: Optional[str], message: ACLMessage, raw: bytes, name: str) -> None:
        if node is None:
            self._fail(message, name, "AGENT_NOT_FOUND", f"no agent named {name!r} in the cluster")
            return
        self._forward(node, message, raw, name)

    def _forward(self, node: str, message: ACLMessage, raw: bytes, name: str) -> None:
        assert self.remote is not None
        try:
            self.remote.forward(node, name, message, raw)
        except CaxtonError as e:
            self._fail(message, name, e.code, str(e))
        else:
            self.counters["forwarded"] += 1
            self._observer.routed("remote", None)

    def _here(self, name: str, conversation_id: Optional[str]) -> bool:
        """
        Whether C{name} sends from this node: one of its agents, or an API
        client that did not come through another node.
        """
        if self.remote is None:
            return True
        if name.startswith(CLIENT_PREFIX):
            return self.remote.client_home(name, conversation_id) is None
        return self._agents.get(name) is not None

    # MCP tools (SPEC 8) ------------------------------------------------------

    def _call_tool(self, message: ACLMessage, name: str) -> None:
        """
        Hand a message for C{mcp:<server>/<tool>} to the tool gateway; its
        answer comes back from the tool's name as C{inform}, or as a
        C{failure} from the node naming the reason.
        """
        tools = self._tools
        if tools is None:
            self._fail(message, name, "NOT_FOUND", "this node has no MCP servers configured")
            return
        if message.performative != "request":
            self._fail(message, name, "NOT_UNDERSTOOD", "MCP tools answer only request")
            return
        try:
            server, tool = tools.parse_receiver(name)
        except ToolFailure as e:
            self._fail(message, name, e.reason, e.detail)
            return
        sender = message.sender or ""
        if not sender.startswith(CLIENT_PREFIX):
            cell = self._agents.get(sender)
            allowances = cell.spec.tools if cell is not None else ()
            if not tools.allowed(allowances, server, tool):
                self._fail(
                    message,
                    name,
                    "FORBIDDEN",
                    f"agent {sender!r} may not call {server}/{tool}: "
                    f"its spec's tools are {list(allowances)!r}",
                )
                return
        self.counters["tool_calls"] += 1
        self._observer.routed("tool", None)
        d = tools.call(server, tool, message.content)
        d.addCallbacks(
            self._tool_answered,
            self._tool_failed,
            callbackArgs=(message, name),
            errbackArgs=(message, name),
        )

    def _tool_answered(self, result: Any, message: ACLMessage, name: str) -> None:
        self._route(self._accept(make_reply(message, "inform", result, sender=name)))

    def _tool_failed(self, failure: Failure, message: ACLMessage, name: str) -> None:
        if failure.check(ToolFailure):
            self._fail(message, name, failure.value.reason, failure.value.detail)
            return
        log.failure("calling tool {tool}", failure, tool=name)
        self._fail(message, name, "TOOL_ERROR", "the tool call failed; see the node's log")

    def _record(self, message: ACLMessage, receivers: Tuple[str, ...], body: Dict[str, Any]) -> None:
        conversation_id = message.conversation_id
        assert conversation_id is not None
        now = self._reactor.seconds()
        summary = self._summaries.get(conversation_id)
        if summary is None:
            summary = {
                "protocol": message.protocol,
                "initiator": message.sender,
                "participants": set(),
                "created_at": now,
            }
            if len(self._summaries) >= _SUMMARIES:
                self._summaries.popitem(last=False)
            self._summaries[conversation_id] = summary
        else:
            self._summaries.move_to_end(conversation_id)
        participants = summary["participants"]
        if message.sender is not None:
            participants.add(message.sender)
        participants.update(receivers)
        state = self._tracker.state(conversation_id) or "open"
        record = ConversationRecord(
            conversation_id=conversation_id,
            protocol=summary["protocol"],
            initiator=summary["initiator"],
            participants=tuple(sorted(participants)),
            state=state,
            created_at=summary["created_at"],
            updated_at=now,
            message_count=0,
        )
        self._store.record_message(record, body)
        self._conversation_waiters.fire(conversation_id)

    def _fail(self, message: ACLMessage, receiver: str, reason: str, detail: str) -> None:
        self.counters["failed:" + reason] += 1
        self._observer.failed(reason)
        if message.conversation_id is not None:
            self._tracker.participant_failed(message.conversation_id, receiver)
        self._store.record_dead_letter(message_to_dict(message), receiver, reason, detail)
        log.info(
            "message {message_id} to {receiver} failed: {reason} ({detail})",
            message_id=message.message_id,
            receiver=receiver,
            reason=reason,
            detail=detail,
        )
        if message.sender is None or message.sender == NODE:
            return
        if message.sender.startswith(TOOL_PREFIX):
            # A tool's answer that could not be delivered (too large for
            # the agent that asked, say): the tool cannot take a failure,
            # so the one who asked hears of it.
            self._from_node(
                "failure",
                receiver,
                {
                    "reason": reason,
                    "message": f"the answer of {message.sender} could not be delivered: {detail}",
                    "message_id": message.message_id,
                    "receiver": receiver,
                },
                about=message,
            )
            return
        self._from_node(
            "failure",
            message.sender,
            {
                "reason": reason,
                "message": detail,
                "message_id": message.message_id,
                "receiver": receiver,
            },
            about=message,
        )

    def _protocol_refusal(self, message: ACLMessage, kind: str, reason: str) -> None:
        late = kind == "late"
        code = "LATE" if late else "PROTOCOL_VIOLATION"
        self.counters["failed:" + code] += 1
        self._observer.failed(code)
        self._store.record_dead_letter(
            message_to_dict(message), ",".join(message.receiver_names()), code, reason
        )
        if message.sender is None:
            return
        self._from_node(
            "reject-proposal" if late else "not-understood",
            message.sender,
            {
                "reason": "late" if late else "PROTOCOL_VIOLATION",
                "message": reason,
                "message_id": message.message_id,
            },
            about=message,
        )

    def _from_node(
        self,
        performative: str,
        receiver: str,
        content: Dict[str, Any],
        about: Optional[ACLMessage] = None,
        conversation_id: Optional[str] = None,
    ) -> None:
        """
        Send a message from the node itself, threaded on the message it is
        C{about} (its conversation, protocol and C{reply_with}).
        """
        self._route(
            self._accept(
                ACLMessage(
                    performative=performative,
                    sender=NODE,
                    receiver=(receiver,),
                    conversation_id=about.conversation_id if about else conversation_id,
                    protocol=about.protocol if about else None,
                    in_reply_to=about.reply_with if about else None,
                    content=content,
                )
            )
        )

    # Protocol deadlines -------------------------------------------------------

    def _schedule_deadline(self) -> None:
        if not self.accepting:
            # Stopped: the store is closing, and no one waits for answers.
            return
        when = self._tracker.next_deadline()
        if when == self._deadline_at:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline, self._deadline_at = None, when
        if when is not None:
            delay = max(0.0, when - self._reactor.seconds())
            self._deadline = self._reactor.callLater(delay, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline, self._deadline_at = None, None
        for timeout in self._tracker.expire(self._reactor.seconds()):
            if not self._here(timeout.initiator, timeout.initiating.conversation_id):
                # Its own node keeps the deadline too and tells it.
                continue
            initiating = timeout.initiating
            missing = list(timeout.missing)
            self.counters["timeouts"] += 1
            self._from_node(
                "failure",
                timeout.initiator,
                {
                    "reason": "TIMEOUT",
                    "message": "reply_by passed without an answer from " + ", ".join(missing),
                    "missing": missing,
                    "message_id": initiating.message_id,
                },
                about=initiating,
            )
        self._schedule_deadline()

    # Waiting, for the API --------------------------------------------------------

    def wait_conversation(self, conversation_id: str) -> Deferred:
        """
        Fires when the next message is recorded in C{conversation_id}.
        """
        return self._conversation_waiters.wait(conversation_id)

    def wait_mailbox(self, client: str) -> Deferred:
        """
        Fires when the next message reaches C{client}'s mailbox.
        """
        return self._mailbox_waiters.wait(client)

    def expect_reply(self, client: str, conversation_id: str) -> Deferred:
        """
        Fires with the first message other than C{agree} that reaches
        C{client} in C{conversation_id}; for C{invoke}.
        """
        return self._replies.wait((client, conversation_id))

    def stop(self) -> None:
        """
        Take no more messages from clients and drop the deadline timer.
        """
        self.accepting = False
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline, self._deadline_at = None, None

