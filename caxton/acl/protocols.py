# -*- test-case-name: tests.test_acl_protocols -*-
"""
The FIPA interaction protocols the node polices (SPEC 4.3), as a sans-I/O
state machine.

The router hands every message it routes to L{ConversationTracker.observe},
with the receivers already resolved and the current time, and acts on the
L{Verdict}: deliver (C{accept}), answer C{reject-proposal} with reason
C{late} (C{late}), or answer C{not-understood} (C{out-of-order}).  It calls
L{ConversationTracker.expire} when L{ConversationTracker.next_deadline}
comes and sends the initiator of each L{Timeout} a C{failure} with reason
C{TIMEOUT}.  The tracker reads no clock and does no I/O.

Three protocols are tracked: C{fipa-request}, C{fipa-query} and
C{fipa-contract-net}.  A conversation is tracked from its initiating message
(C{request}; C{query-if} or C{query-ref}; C{cfp}).  A message of one of
these protocols in a conversation the tracker has not seen begin is
accepted and not tracked: the node may have restarted, or forgotten the
conversation to bound its memory, and only conversations seen from their
start can be policed fairly.

Each participant (a receiver of the initiating message other than the
initiator) moves through its own states:

  - C{fipa-request} and C{fipa-query}: C{asked}, then C{agreed} after
    C{agree}; C{refuse}, C{failure}, C{not-understood} and the result
    (C{inform} for request; C{inform}, C{inform-if} or C{inform-ref} for
    query) end it; from C{agreed} only C{failure}, the result or
    C{not-understood} may follow.
  - C{fipa-contract-net}: C{called}, then C{proposed} after C{propose} (or
    C{late} after a C{propose} past the deadline, which ends it); C{refuse}
    or C{not-understood} end it; the initiator's C{accept-proposal} moves a
    C{proposed} participant to C{accepted}, its C{reject-proposal} ends it;
    an C{accepted} participant ends with C{inform} or C{failure}.

The initiator may send C{cancel} at any time, after which the participants
it was addressed to may also end with C{inform} or C{failure}; its
C{not-understood} ends the whole conversation; any participant's
C{not-understood} ends that participant.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

import attr

from caxton.acl.message import ACLMessage

#: The interaction protocols the tracker polices.
PROTOCOLS = frozenset({"fipa-request", "fipa-query", "fipa-contract-net"})

_INITIATING: Dict[str, FrozenSet[str]] = {
    "fipa-request": frozenset({"request"}),
    "fipa-query": frozenset({"query-if", "query-ref"}),
    "fipa-contract-net": frozenset({"cfp"}),
}

_RESULTS: Dict[str, FrozenSet[str]] = {
    "fipa-request": frozenset({"inform"}),
    "fipa-query": frozenset({"inform", "inform-if", "inform-ref"}),
}

_CONTRACT_NET = "fipa-contract-net"

# Participant states.  ENDED and LATE take no further part; ASKED (request,
# query) and CALLED (contract-net) are the states a deadline finds
# "missing".
_ASKED = "asked"
_AGREED = "agreed"
_CALLED = "called"
_PROPOSED = "proposed"
_ACCEPTED = "accepted"
_LATE = "late"
_ENDED = "ended"

# Conversation states, as L{ConversationTracker.state} reports them.
_OPEN = "open"
_DONE = "done"
_TIMED_OUT = "timed-out"

_LATE_REASON = "proposal arrived after reply_by"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Verdict:
    """
    What the router should do with an observed message.

    @ivar kind: C{"accept"} to deliver it; C{"late"} for a contract-net
        proposal past the deadline, to be answered C{reject-proposal};
        C{"out-of-order"} for a message breaking the protocol, to be
        answered C{not-understood}.
    @ivar reason: why, in words, for C{late} and C{out-of-order}.
    """

    kind: str
    reason: str = ""


#: The verdict for every message that breaks no rule.
ACCEPT = Verdict("accept")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Timeout:
    """
    A conversation's C{reply_by} passed without the awaited answers.

    @ivar conversation_id: the conversation.
    @ivar protocol: its interaction protocol.
    @ivar initiator: who began it, and should be told.
    @ivar initiating: the C{request}, C{query-*} or C{cfp} that set the
        deadline.
    @ivar missing: the participants that had not given the awaited answer
        (for request and query, their final answer; for contract-net, a
        proposal or refusal), sorted.
    """

    conversation_id: str
    protocol: str
    initiator: str
    initiating: ACLMessage
    missing: Tuple[str, ...]


@attr.s(slots=True, eq=False, auto_attribs=True)
class _Participant:
    """
    One participant's place in a conversation (mutable tracker state).
    """

    state: str
    last: str
    cancelled: bool = False


@attr.s(slots=True, eq=False, auto_attribs=True)
class _Conversation:
    """
    A tracked conversation (mutable tracker state).

    C{live} counts participants not ended; C{waiting} those a deadline would
    find missing.  Both only ever decrease, which lets the deadline heap drop
    entries that can no longer report anything.
    """

    conversation_id: str
    protocol: str
    initiator: str
    initiating: ACLMessage
    participants: Dict[str, _Participant]
    deadline: Optional[float]
    serial: int
    live: int
    waiting: int
    state: str = _OPEN
    expired: bool = False


def _unix_seconds(when: datetime) -> float:
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


class ConversationTracker:
    """
    Follows conversations of the FIPA protocols in L{PROTOCOLS} and judges
    each message against them.

    Memory is bounded: at most C{max_conversations} conversations are
    remembered.  Finished conversations (C{done} or C{timed-out}) stay
    queryable through L{state} until room is needed; room is made by
    forgetting the conversation that finished longest ago, or, when none has
    finished, the one begun longest ago.  A forgotten conversation is
    untracked: L{state} returns C{None} and its messages are accepted.

    A finished conversation whose id is used again by an initiating message
    is replaced by a new conversation; an open one is not (that message is
    out of order).
    """

    def __init__(self, max_conversations: int = 100_000) -> None:
        """
        @param max_conversations: the most conversations to remember, at
            least 1.
        """
        if max_conversations < 1:
            raise ValueError("max_conversations must be at least 1")
        self._max = max_conversations
        # Both ordered oldest first: by start for open conversations, by end
        # for finished ones.
        self._open: "OrderedDict[str, _Conversation]" = OrderedDict()
        self._finished: "OrderedDict[str, _Conversation]" = OrderedDict()
        # (deadline, serial, conversation id); stale entries are skipped.
        self._deadlines: List[Tuple[float, int, str]] = []
        self._serial = 0

    def __len__(self) -> int:
        """
        The number of conversations remembered, open or finished.
        """
        return len(self._open) + len(self._finished)

    def state(self, conversation_id: str) -> Optional[str]:
        """
        The state of a conversation.

        @return: C{"open"} while answers are awaited; C{"done"} once every
            participant has ended (for contract-net, also when its deadline
            has passed and the only participants left never answered the
            C{cfp}); C{"timed-out"} for a request or query whose deadline
            passed with answers missing; C{None} if the conversation is not
            tracked (never seen begin, or forgotten).
        """
        conversation = self._lookup(conversation_id)
        if conversation is None:
            return None
        return conversation.state

    def next_deadline(self) -> Optional[float]:
        """
        The earliest deadline, in Unix seconds, at which L{expire} may
        report a L{Timeout}, or C{None} if none is pending.
        """
        heap = self._deadlines
        while heap:
            deadline, serial, conversation_id = heap[0]
            if self._pending(serial, conversation_id) is not None:
                return deadline
            heapq.heappop(heap)
        return None

    def expire(self, now: float) -> List[Timeout]:
        """
        Report the conversations whose deadline is at or before C{now} and
        that still miss answers, each once.

        A request or query reported here becomes C{timed-out}, and answers
        that arrive later are accepted.  A contract-net conversation carries
        on: proposals still to come are late, and the initiator may go on
        accepting and rejecting the proposals it has.

        @param now: the current time, Unix seconds.
        @return: the L{Timeout}s, earliest deadline first.
        """
        timeouts: List[Timeout] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, serial, conversation_id = heapq.heappop(heap)
            conversation = self._pending(serial, conversation_id)
            if conversation is None:
                continue
            conversation.expired = True
            missing = tuple(
                sorted(
                    name
                    for name, participant in conversation.participants.items()
                    if self._is_waiting(conversation, participant.state)
                )
            )
            timeouts.append(
                Timeout(
                    conversation_id=conversation.conversation_id,
                    protocol=conversation.protocol,
                    initiator=conversation.initiator,
                    initiating=conversation.initiating,
                    missing=missing,
                )
            )
            if conversation.protocol == _CONTRACT_NET:
                self._check_finished(conversation)
            else:
                self._finish(conversation, _TIMED_OUT)
        return timeouts

    def observe(
        self, message: ACLMessage, receivers: Tuple[str, ...], now: float
    ) -> Verdict:
        """
        Judge a message being routed, and follow its conversation.

        @param message: the message, with C{sender} and C{conversation_id}
            set; messages without them, or of a protocol not in
            L{PROTOCOLS} (compared without regard to case), are accepted and
            not tracked.
        @param receivers: the names it is being delivered to, capability
            receivers already resolved.
        @param now: the current time, Unix seconds.
        @return: L{ACCEPT}, a C{late} verdict, or an C{out-of-order}
            verdict saying why.
        """
        protocol = message.protocol.lower() if message.protocol else None
        sender = message.sender
        conversation_id = message.conversation_id
        if protocol not in PROTOCOLS or not sender or not conversation_id:
            return ACCEPT
        performative = message.performative
        conversation = self._lookup(conversation_id)
        initiating = performative in _INITIATING[protocol]
        if conversation is None or (initiating and conversation.state != _OPEN):
            if initiating:
                self._begin(message, protocol, sender, conversation_id, receivers)
            return ACCEPT
        if protocol != conversation.protocol:
            return Verdict(
                "out-of-order",
                f"{protocol} message in {conversation.protocol} "
                f"conversation {conversation_id}",
            )
        if sender == conversation.initiator:
            return self._from_initiator(conversation, performative, receivers)
        participant = conversation.participants.get(sender)
        if participant is None:
            return Verdict(
                "out-of-order",
                f"{sender} is not a participant in conversation {conversation_id}",
            )
        if conversation.protocol == _CONTRACT_NET:
            return self._from_bidder(conversation, participant, performative, now)
        return self._from_responder(conversation, participant, performative)

    def participant_failed(self, conversation_id: str, participant: str) -> None:
        """
        The node could not deliver to C{participant} and has already sent
        its initiator a C{failure}: it will never answer, so no deadline
        waits for it (and no second failure, C{TIMEOUT}, follows).
        """
        conversation = self._lookup(conversation_id)
        if conversation is None or conversation.state != _OPEN:
            return
        state = conversation.participants.get(participant)
        if state is not None and state.state not in (_ENDED, _LATE):
            self._move(conversation, state, _ENDED, "failure")

    # Conversations

    def _lookup(self, conversation_id: str) -> Optional[_Conversation]:
        conversation = self._open.get(conversation_id)
        if conversation is None:
            conversation = self._finished.get(conversation_id)
        return conversation

    def _begin(
        self,
        message: ACLMessage,
        protocol: str,
        initiator: str,
        conversation_id: str,
        receivers: Tuple[str, ...],
    ) -> None:
        # The initiator is not its own participant: a cfp to oneself is
        # answered by nobody we could police.
        names = [name for name in dict.fromkeys(receivers) if name != initiator]
        if not names:
            return
        self._forget(conversation_id)
        first = _CALLED if protocol == _CONTRACT_NET else _ASKED
        participants = {
            name: _Participant(first, message.performative) for name in names
        }
        deadline = (
            _unix_seconds(message.reply_by) if message.reply_by is not None else None
        )
        self._serial += 1
        conversation = _Conversation(
            conversation_id=conversation_id,
            protocol=protocol,
            initiator=initiator,
            initiating=message,
            participants=participants,
            deadline=deadline,
            serial=self._serial,
            live=len(names),
            waiting=len(names),
        )
        self._open[conversation_id] = conversation
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, self._serial, conversation_id))
            self._compact()
        while len(self) > self._max:
            if self._finished:
                self._finished.popitem(last=False)
            else:
                self._open.popitem(last=False)

    def _forget(self, conversation_id: str) -> None:
        self._open.pop(conversation_id, None)
        self._finished.pop(conversation_id, None)

    def _finish(self, conversation: _Conversation, state: str) -> None:
        conversation.state = state
        conversation_id = conversation.conversation_id
        if self._open.pop(conversation_id, None) is not None:
            self._finished[conversation_id] = conversation

    def _check_finished(self, conversation: _Conversation) -> None:
        if conversation.state != _OPEN:
            return
        if conversation.live == 0 or (
            conversation.protocol == _CONTRACT_NET
            and conversation.expired
            and conversation.live == conversation.waiting
        ):
            self._finish(conversation, _DONE)

    # Deadlines

    def _pending(self, serial: int, conversation_id: str) -> Optional[_Conversation]:
        """
        The conversation a heap entry belongs to, if it can still report.
        """
        conversation = self._lookup(conversation_id)
        if (
            conversation is None
            or conversation.serial != serial
            or conversation.expired
            or conversation.waiting == 0
        ):
            return None
        return conversation

    def _compact(self) -> None:
        # Forgotten conversations leave entries behind; rebuild the heap when
        # they outnumber the live ones, so it stays within a constant factor
        # of max_conversations.
        if len(self._deadlines) <= 2 * len(self) + 16:
            return
        self._deadlines = [
            entry for entry in self._deadlines if self._pending(entry[1], entry[2])
        ]
        heapq.heapify(self._deadlines)

    # Participant states

    @staticmethod
    def _is_waiting(conversation: _Conversation, state: str) -> bool:
        if conversation.protocol == _CONTRACT_NET:
            return state == _CALLED
        return state in (_ASKED, _AGREED)

    def _move(
        self,
        conversation: _Conversation,
        participant: _Participant,
        state: str,
        performative: str,
    ) -> None:
        was_live = participant.state not in (_ENDED, _LATE)
        was_waiting = self._is_waiting(conversation, participant.state)
        participant.state = state
        participant.last = performative
        conversation.live -= was_live and state in (_ENDED, _LATE)
        conversation.waiting -= was_waiting and not self._is_waiting(
            conversation, state
        )
        self._check_finished(conversation)

    def _from_initiator(
        self,
        conversation: _Conversation,
        performative: str,
        receivers: Tuple[str, ...],
    ) -> Verdict:
        participants = conversation.participants
        if performative == "not-understood":
            for participant in participants.values():
                if participant.state not in (_ENDED, _LATE):
                    self._move(conversation, participant, _ENDED, performative)
            return ACCEPT
        if performative == "cancel":
            for name in receivers:
                participant = participants.get(name)
                if participant is not None:
                    participant.cancelled = True
            return ACCEPT
        if conversation.protocol == _CONTRACT_NET and performative in (
            "accept-proposal",
            "reject-proposal",
        ):
            allowed: Set[str] = {_PROPOSED}
            if performative == "reject-proposal":
                # The router answers late proposals with reject-proposal; the
                # initiator may do so too.
                allowed.add(_LATE)
            for name in receivers:
                participant = participants.get(name)
                if participant is None:
                    return Verdict(
                        "out-of-order",
                        f"{name} is not a participant in conversation "
                        f"{conversation.conversation_id}",
                    )
                if participant.state not in allowed:
                    return Verdict(
                        "out-of-order",
                        f"{performative} to {name} after {participant.last} "
                        f"in {conversation.protocol}",
                    )
            for name in receivers:
                participant = participants[name]
                if performative == "accept-proposal":
                    self._move(conversation, participant, _ACCEPTED, performative)
                elif participant.state != _LATE:
                    self._move(conversation, participant, _ENDED, performative)
            return ACCEPT
        return Verdict(
            "out-of-order",
            f"{performative} from the initiator after "
            f"{conversation.initiating.performative} in {conversation.protocol}",
        )

    def _from_responder(
        self,
        conversation: _Conversation,
        participant: _Participant,
        performative: str,
    ) -> Verdict:
        """
        A participant's message in fipa-request or fipa-query.
        """
        state = participant.state
        results = _RESULTS[conversation.protocol]
        if performative == "not-understood" and state != _ENDED:
            self._move(conversation, participant, _ENDED, performative)
            return ACCEPT
        if participant.cancelled and state != _ENDED and performative in (
            "inform",
            "failure",
        ):
            self._move(conversation, participant, _ENDED, performative)
            return ACCEPT
        if state == _ASKED and performative == "agree":
            self._move(conversation, participant, _AGREED, performative)
            return ACCEPT
        if (state == _ASKED and performative == "refuse") or (
            state in (_ASKED, _AGREED)
            and (performative == "failure" or performative in results)
        ):
            self._move(conversation, participant, _ENDED, performative)
            return ACCEPT
        if conversation.state == _TIMED_OUT:
            # The initiator has had its TIMEOUT failure; whatever follows
            # is a late answer, passed on as it is.
            return ACCEPT
        return Verdict(
            "out-of-order",
            f"{performative} after {participant.last} in {conversation.protocol}",
        )

    def _from_bidder(
        self,
        conversation: _Conversation,
        participant: _Participant,
        performative: str,
        now: float,
    ) -> Verdict:
        """
        A participant's message in fipa-contract-net.
        """
        state = participant.state
        if performative == "not-understood" and state not in (_ENDED, _LATE):
            self._move(conversation, participant, _ENDED, performative)
            return ACCEPT
        if participant.cancelled and state not in (_ENDED, _LATE) and performative in (
            "inform",
            "failure",
        ):
            self._move(conversation, participant, _ENDED, performative)
            return ACCEPT
        if state == _CALLED:
            if performative == "propose":
                deadline = conversation.deadline
                if conversation.expired or (deadline is not None and now > deadline):
                    self._move(conversation, participant, _LATE, performative)
                    return Verdict("late", _LATE_REASON)
                self._move(conversation, participant, _PROPOSED, performative)
                return ACCEPT
            if performative == "refuse":
                self._move(conversation, participant, _ENDED, performative)
                return ACCEPT
        elif state == _ACCEPTED and performative in ("inform", "failure"):
            self._move(conversation, participant, _ENDED, performative)
            return ACCEPT
        return Verdict(
            "out-of-order",
            f"{performative} after {participant.last} in {conversation.protocol}",
        )
