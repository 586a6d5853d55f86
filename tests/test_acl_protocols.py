"""
Tests for L{caxton.acl.protocols}: the conversation tracker for the FIPA
interaction protocols.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Set, Tuple

import attr
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from caxton.acl.message import PERFORMATIVES, ACLMessage
from caxton.acl.protocols import (
    ACCEPT,
    PROTOCOLS,
    ConversationTracker,
    Timeout,
    Verdict,
)

T0 = 1_700_000_000.0


def at(seconds: float) -> datetime:
    """
    The aware UTC datetime for C{seconds} since the epoch.
    """
    return datetime.fromtimestamp(seconds, timezone.utc)


def out_of_order(reason: str) -> Verdict:
    """
    The out-of-order verdict with C{reason}.
    """
    return Verdict("out-of-order", reason)


LATE = Verdict("late", "proposal arrived after reply_by")


class Conversation:
    """
    Sends the messages of one conversation through a tracker.
    """

    def __init__(
        self,
        tracker: ConversationTracker,
        protocol: str,
        conversation_id: str = "c1",
    ) -> None:
        self.tracker = tracker
        self.protocol = protocol
        self.conversation_id = conversation_id
        self.initiating: Optional[ACLMessage] = None

    def send(
        self,
        performative: str,
        sender: str,
        receivers: Tuple[str, ...],
        now: float = T0,
        **fields: Any,
    ) -> Verdict:
        """
        Observe a message of this conversation, returning the verdict.
        """
        fields.setdefault("protocol", self.protocol)
        fields.setdefault("conversation_id", self.conversation_id)
        message = ACLMessage(performative, sender=sender, receiver=receivers, **fields)
        return self.tracker.observe(message, receivers, now)

    def begin(
        self,
        performative: str,
        receivers: Tuple[str, ...],
        deadline: Optional[float] = None,
        now: float = T0,
    ) -> Verdict:
        """
        Send the initiating message from C{"init"}, with C{reply_by} at
        C{deadline} if given.
        """
        fields: Dict[str, Any] = {}
        if deadline is not None:
            fields["reply_by"] = at(deadline)
        self.initiating = ACLMessage(
            performative,
            sender="init",
            receiver=receivers,
            protocol=self.protocol,
            conversation_id=self.conversation_id,
            **fields,
        )
        return self.tracker.observe(self.initiating, receivers, now)

    @property
    def state(self) -> Optional[str]:
        """
        The tracker's state for this conversation.
        """
        return self.tracker.state(self.conversation_id)


class ValueTests(SynchronousTestCase):
    """
    The public values are frozen and as specified.
    """

    def test_protocols(self) -> None:
        """
        The three FIPA protocols of SPEC 4.3 are tracked.
        """
        self.assertEqual(PROTOCOLS, {"fipa-request", "fipa-query", "fipa-contract-net"})

    def test_frozen(self) -> None:
        """
        L{Verdict} and L{Timeout} cannot be changed, and L{ACCEPT} is the
        plain accepting verdict.
        """
        self.assertEqual(ACCEPT, Verdict("accept", ""))
        with self.assertRaises(attr.exceptions.FrozenInstanceError):
            ACCEPT.kind = "late"  # type: ignore[misc]
        timeout = Timeout("c", "fipa-request", "i", ACLMessage("request"), ("a",))
        with self.assertRaises(attr.exceptions.FrozenInstanceError):
            timeout.missing = ()  # type: ignore[misc]

    def test_maxConversations(self) -> None:
        """
        Remembering no conversation at all is refused.
        """
        self.assertRaises(ValueError, ConversationTracker, 0)


class TrackingTests(SynchronousTestCase):
    """
    Which messages start tracking, and which are left alone.
    """

    def setUp(self) -> None:
        self.tracker = ConversationTracker()

    def test_untrackedMessages(self) -> None:
        """
        Messages with no protocol, another protocol, no conversation id or
        no sender are accepted and start nothing, whatever they say.
        """
        for fields in (
            dict(protocol=None, conversation_id="c1", sender="init"),
            dict(protocol="fipa-subscribe", conversation_id="c1", sender="init"),
            dict(protocol="fipa-request", conversation_id=None, sender="init"),
            dict(protocol="fipa-request", conversation_id="c1", sender=None),
        ):
            for performative in ("request", "agree", "inform", "agree"):
                message = ACLMessage(performative, receiver=("a",), **fields)
                self.assertEqual(self.tracker.observe(message, ("a",), T0), ACCEPT)
        self.assertEqual(len(self.tracker), 0)
        self.assertIsNone(self.tracker.state("c1"))

    def test_initiatingMessages(self) -> None:
        """
        C{request} begins a fipa-request conversation, C{query-if} and
        C{query-ref} a fipa-query one, C{cfp} a fipa-contract-net one.
        """
        cases = [
            ("fipa-request", "request"),
            ("fipa-query", "query-if"),
            ("fipa-query", "query-ref"),
            ("fipa-contract-net", "cfp"),
        ]
        for number, (protocol, performative) in enumerate(cases, 1):
            conversation = Conversation(self.tracker, protocol, f"c{number}")
            self.assertEqual(conversation.begin(performative, ("a",)), ACCEPT)
            self.assertEqual(conversation.state, "open")
            self.assertEqual(len(self.tracker), number)

    def test_protocolCase(self) -> None:
        """
        Protocol names are matched without regard to case.
        """
        conversation = Conversation(self.tracker, "FIPA-Request")
        conversation.begin("request", ("a",))
        self.assertEqual(conversation.state, "open")
        self.assertEqual(
            conversation.send("propose", "a", ("init",)),
            out_of_order("propose after request in fipa-request"),
        )

    def test_unknownConversationNotInitiating(self) -> None:
        """
        A protocol message in a conversation the tracker never saw begin
        (after a restart, say) is accepted and not tracked, even when it
        could not be in order.
        """
        conversation = Conversation(self.tracker, "fipa-request")
        for performative in ("agree", "inform", "agree", "propose"):
            self.assertEqual(conversation.send(performative, "a", ("init",)), ACCEPT)
        self.assertIsNone(conversation.state)
        self.assertEqual(len(self.tracker), 0)

    def test_wrongInitiatingPerformative(self) -> None:
        """
        Another protocol's initiating performative begins nothing.
        """
        conversation = Conversation(self.tracker, "fipa-request")
        self.assertEqual(conversation.send("cfp", "init", ("a",)), ACCEPT)
        self.assertIsNone(conversation.state)

    def test_deadline(self) -> None:
        """
        The initiating message's C{reply_by} becomes the conversation's
        deadline, in Unix seconds; without one there is none.
        """
        Conversation(self.tracker, "fipa-request", "c1").begin("request", ("a",))
        self.assertIsNone(self.tracker.next_deadline())
        Conversation(self.tracker, "fipa-request", "c2").begin(
            "request", ("a",), deadline=T0 + 30.5
        )
        Conversation(self.tracker, "fipa-request", "c3").begin(
            "request", ("a",), deadline=T0 + 10.25
        )
        self.assertEqual(self.tracker.next_deadline(), T0 + 10.25)

    def test_initiatorNotParticipant(self) -> None:
        """
        The initiator is not one of its own participants; a conversation
        addressed only to its initiator, or to nobody, is not tracked.
        """
        conversation = Conversation(self.tracker, "fipa-request", "c1")
        conversation.begin("request", ("init",))
        self.assertIsNone(conversation.state)
        conversation = Conversation(self.tracker, "fipa-contract-net", "c2")
        conversation.begin("cfp", ())
        self.assertIsNone(conversation.state)
        conversation = Conversation(self.tracker, "fipa-request", "c3")
        conversation.begin("request", ("init", "a"))
        self.assertEqual(conversation.send("inform", "a", ("init",)), ACCEPT)
        self.assertEqual(conversation.state, "done")

    def test_notAParticipant(self) -> None:
        """
        In a tracked conversation, a message from someone who is neither
        the initiator nor a participant is out of order.
        """
        conversation = Conversation(self.tracker, "fipa-request")
        conversation.begin("request", ("a",))
        self.assertEqual(
            conversation.send("inform", "mallory", ("init",)),
            out_of_order("mallory is not a participant in conversation c1"),
        )
        self.assertEqual(conversation.state, "open")

    def test_protocolMismatch(self) -> None:
        """
        A message naming another tracked protocol than its conversation's is
        out of order.
        """
        conversation = Conversation(self.tracker, "fipa-request")
        conversation.begin("request", ("a",))
        verdict = conversation.send("inform", "a", ("init",), protocol="fipa-query")
        self.assertEqual(verdict.kind, "out-of-order")
        self.assertIn("fipa-query", verdict.reason)
        self.assertEqual(conversation.send("inform", "a", ("init",)), ACCEPT)

    def test_reinitiateFinished(self) -> None:
        """
        An initiating message reusing the id of a finished conversation
        begins a new one.
        """
        conversation = Conversation(self.tracker, "fipa-request")
        conversation.begin("request", ("a",))
        conversation.send("inform", "a", ("init",))
        self.assertEqual(conversation.state, "done")
        conversation.begin("request", ("b",))
        self.assertEqual(conversation.state, "open")
        self.assertEqual(conversation.send("agree", "b", ("init",)), ACCEPT)
        self.assertEqual(len(self.tracker), 1)

    def test_reinitiateOpen(self) -> None:
        """
        An initiating message reusing the id of an open conversation is out
        of order.
        """
        conversation = Conversation(self.tracker, "fipa-request")
        conversation.begin("request", ("a",))
        self.assertEqual(
            conversation.begin("request", ("b",)),
            out_of_order("request from the initiator after request in fipa-request"),
        )


class RequestQueryTests(SynchronousTestCase):
    """
    The participant's side of fipa-request and fipa-query.
    """

    def setUp(self) -> None:
        self.tracker = ConversationTracker()
        self.request = Conversation(self.tracker, "fipa-request", "r")
        self.request.begin("request", ("a", "b"))
        self.query = Conversation(self.tracker, "fipa-query", "q")
        self.query.begin("query-ref", ("a", "b"))

    def test_agreeThenResult(self) -> None:
        """
        C{agree} and then the result end a participant; when all have ended
        the conversation is done.
        """
        for conversation, result in ((self.request, "inform"), (self.query, "inform-ref")):
            self.assertEqual(conversation.send("agree", "a", ("init",)), ACCEPT)
            self.assertEqual(conversation.send(result, "a", ("init",)), ACCEPT)
            self.assertEqual(conversation.state, "open")
            self.assertEqual(conversation.send("inform", "b", ("init",)), ACCEPT)
            self.assertEqual(conversation.state, "done")

    def test_endings(self) -> None:
        """
        C{refuse} and C{failure} end a participant straight from the
        request; C{failure} also ends it after C{agree}.
        """
        self.assertEqual(self.request.send("refuse", "a", ("init",)), ACCEPT)
        self.assertEqual(self.request.send("failure", "b", ("init",)), ACCEPT)
        self.assertEqual(self.request.state, "done")
        self.assertEqual(self.query.send("agree", "a", ("init",)), ACCEPT)
        self.assertEqual(self.query.send("failure", "a", ("init",)), ACCEPT)
        self.assertEqual(self.query.send("inform-if", "b", ("init",)), ACCEPT)
        self.assertEqual(self.query.state, "done")

    def test_queryResults(self) -> None:
        """
        C{inform}, C{inform-if} and C{inform-ref} answer a query; only
        C{inform} answers a request.
        """
        self.assertEqual(self.query.send("inform-if", "a", ("init",)), ACCEPT)
        self.assertEqual(self.query.send("inform", "b", ("init",)), ACCEPT)
        self.assertEqual(
            self.request.send("inform-ref", "a", ("init",)),
            out_of_order("inform-ref after request in fipa-request"),
        )

    def test_agreeTwice(self) -> None:
        """
        A second C{agree} is out of order.
        """
        self.request.send("agree", "a", ("init",))
        self.assertEqual(
            self.request.send("agree", "a", ("init",)),
            out_of_order("agree after agree in fipa-request"),
        )

    def test_afterResult(self) -> None:
        """
        Anything after the result is out of order.
        """
        self.request.send("inform", "a", ("init",))
        self.assertEqual(
            self.request.send("agree", "a", ("init",)),
            out_of_order("agree after inform in fipa-request"),
        )
        self.assertEqual(
            self.request.send("inform", "a", ("init",)),
            out_of_order("inform after inform in fipa-request"),
        )

    def test_refuseAfterAgree(self) -> None:
        """
        From C{agreed}, only C{failure}, the result or C{not-understood} may
        follow: C{refuse} is out of order.
        """
        self.query.send("agree", "a", ("init",))
        self.assertEqual(
            self.query.send("refuse", "a", ("init",)),
            out_of_order("refuse after agree in fipa-query"),
        )

    def test_foreignPerformative(self) -> None:
        """
        A performative with no place in the protocol is out of order, and
        changes nothing.
        """
        self.assertEqual(
            self.request.send("propose", "a", ("init",)),
            out_of_order("propose after request in fipa-request"),
        )
        self.assertEqual(self.request.send("agree", "a", ("init",)), ACCEPT)

    def test_initiatorAfterInitiating(self) -> None:
        """
        The initiator may send nothing but C{cancel} or C{not-understood}
        after its request.
        """
        for performative in ("request", "inform", "agree", "accept-proposal"):
            self.assertEqual(
                self.request.send(performative, "init", ("a",)),
                out_of_order(f"{performative} from the initiator after request in fipa-request"),
            )
        self.assertEqual(
            self.query.send("query-if", "init", ("a",)),
            out_of_order("query-if from the initiator after query-ref in fipa-query"),
        )

    def test_participantNotUnderstood(self) -> None:
        """
        A participant's C{not-understood}, before or after C{agree}, ends
        its part only.
        """
        self.assertEqual(self.request.send("not-understood", "a", ("init",)), ACCEPT)
        self.assertEqual(self.request.state, "open")
        self.assertEqual(
            self.request.send("inform", "a", ("init",)),
            out_of_order("inform after not-understood in fipa-request"),
        )
        self.request.send("agree", "b", ("init",))
        self.assertEqual(self.request.send("not-understood", "b", ("init",)), ACCEPT)
        self.assertEqual(self.request.state, "done")

    def test_initiatorNotUnderstood(self) -> None:
        """
        The initiator's C{not-understood} ends the whole conversation.
        """
        self.request.send("agree", "a", ("init",))
        self.assertEqual(self.request.send("not-understood", "init", ("a",)), ACCEPT)
        self.assertEqual(self.request.state, "done")
        self.assertEqual(self.request.send("inform", "a", ("init",)).kind, "out-of-order")

    def test_cancel(self) -> None:
        """
        The initiator may C{cancel}; the participants addressed then end
        with C{inform} or C{failure}, and meanwhile may still follow the
        protocol.
        """
        self.request.send("agree", "b", ("init",))
        self.assertEqual(self.request.send("cancel", "init", ("a", "b")), ACCEPT)
        self.assertEqual(self.request.send("agree", "a", ("init",)), ACCEPT)
        self.assertEqual(self.request.send("inform", "a", ("init",)), ACCEPT)
        self.assertEqual(self.request.send("failure", "b", ("init",)), ACCEPT)
        self.assertEqual(self.request.state, "done")


class ContractNetTests(SynchronousTestCase):
    """
    fipa-contract-net: calls for proposals, proposals, awards.
    """

    def setUp(self) -> None:
        self.tracker = ConversationTracker()
        self.net = Conversation(self.tracker, "fipa-contract-net")
        self.net.begin("cfp", ("a", "b", "c"), deadline=T0 + 60)

    def test_fullRound(self) -> None:
        """
        cfp to three; two propose, one refuses; the initiator accepts one
        proposal and rejects the other; the winner informs.  Every step is
        accepted and the conversation ends done.
        """
        net = self.net
        self.assertEqual(net.send("propose", "a", ("init",), now=T0 + 1), ACCEPT)
        self.assertEqual(net.send("propose", "b", ("init",), now=T0 + 2), ACCEPT)
        self.assertEqual(net.send("refuse", "c", ("init",), now=T0 + 3), ACCEPT)
        self.assertEqual(net.send("accept-proposal", "init", ("a",), now=T0 + 4), ACCEPT)
        self.assertEqual(net.send("reject-proposal", "init", ("b",), now=T0 + 4), ACCEPT)
        self.assertEqual(net.state, "open")
        self.assertEqual(net.send("inform", "a", ("init",), now=T0 + 9), ACCEPT)
        self.assertEqual(net.state, "done")
        self.assertEqual(self.tracker.expire(T0 + 60), [])

    def test_lateProposal(self) -> None:
        """
        A proposal after C{reply_by} is late, and ends its sender: the
        initiator may not accept it, only reject it.
        """
        self.assertEqual(self.net.send("propose", "a", ("init",), now=T0 + 60), ACCEPT)
        self.assertEqual(self.net.send("propose", "b", ("init",), now=T0 + 60.001), LATE)
        self.assertEqual(
            self.net.send("accept-proposal", "init", ("b",), now=T0 + 61),
            out_of_order("accept-proposal to b after propose in fipa-contract-net"),
        )
        self.assertEqual(self.net.send("reject-proposal", "init", ("b",), now=T0 + 61), ACCEPT)
        self.assertEqual(
            self.net.send("propose", "b", ("init",), now=T0 + 62),
            out_of_order("propose after propose in fipa-contract-net"),
        )

    def test_refuseAfterDeadline(self) -> None:
        """
        A refusal after C{reply_by} is accepted.
        """
        self.assertEqual(self.net.send("refuse", "a", ("init",), now=T0 + 100), ACCEPT)

    def test_proposeTwice(self) -> None:
        """
        A second proposal, or a refusal after proposing, is out of order.
        """
        self.net.send("propose", "a", ("init",))
        self.assertEqual(
            self.net.send("propose", "a", ("init",)),
            out_of_order("propose after propose in fipa-contract-net"),
        )
        self.assertEqual(
            self.net.send("refuse", "a", ("init",)),
            out_of_order("refuse after propose in fipa-contract-net"),
        )

    def test_participantWrongPerformative(self) -> None:
        """
        Before an award a participant may only propose, refuse or not
        understand; C{inform} is out of order.
        """
        self.assertEqual(
            self.net.send("inform", "a", ("init",)),
            out_of_order("inform after cfp in fipa-contract-net"),
        )
        self.net.send("propose", "a", ("init",))
        self.assertEqual(
            self.net.send("inform", "a", ("init",)),
            out_of_order("inform after propose in fipa-contract-net"),
        )

    def test_awardOnlyProposals(self) -> None:
        """
        C{accept-proposal} and C{reject-proposal} may go only to
        participants that have proposed; otherwise the message is out of
        order and changes nothing.
        """
        self.net.send("propose", "a", ("init",))
        self.net.send("refuse", "b", ("init",))
        self.assertEqual(
            self.net.send("accept-proposal", "init", ("a", "c")),
            out_of_order("accept-proposal to c after cfp in fipa-contract-net"),
        )
        self.assertEqual(
            self.net.send("reject-proposal", "init", ("b",)),
            out_of_order("reject-proposal to b after refuse in fipa-contract-net"),
        )
        self.assertEqual(
            self.net.send("accept-proposal", "init", ("zed",)),
            out_of_order("zed is not a participant in conversation c1"),
        )
        self.assertEqual(self.net.send("accept-proposal", "init", ("a",)), ACCEPT)
        self.assertEqual(
            self.net.send("reject-proposal", "init", ("a",)),
            out_of_order("reject-proposal to a after accept-proposal in fipa-contract-net"),
        )

    def test_acceptedAnswers(self) -> None:
        """
        An accepted participant ends with C{inform} or C{failure}; anything
        else from it is out of order.
        """
        self.net.send("propose", "a", ("init",))
        self.net.send("propose", "b", ("init",))
        self.net.send("accept-proposal", "init", ("a", "b"))
        self.assertEqual(
            self.net.send("propose", "a", ("init",)),
            out_of_order("propose after accept-proposal in fipa-contract-net"),
        )
        self.assertEqual(self.net.send("inform", "a", ("init",)), ACCEPT)
        self.assertEqual(self.net.send("failure", "b", ("init",)), ACCEPT)
        self.assertEqual(
            self.net.send("inform", "b", ("init",)),
            out_of_order("inform after failure in fipa-contract-net"),
        )

    def test_initiatorOtherPerformatives(self) -> None:
        """
        The initiator may not send other performatives, such as a second
        C{cfp}, in the conversation.
        """
        self.assertEqual(
            self.net.send("cfp", "init", ("a",)),
            out_of_order("cfp from the initiator after cfp in fipa-contract-net"),
        )

    def test_notUnderstood(self) -> None:
        """
        A participant's C{not-understood} ends its part at any stage, and
        the initiator's ends the conversation.
        """
        self.net.send("propose", "a", ("init",))
        self.assertEqual(self.net.send("not-understood", "a", ("init",)), ACCEPT)
        self.assertEqual(self.net.send("not-understood", "b", ("init",)), ACCEPT)
        self.assertEqual(self.net.state, "open")
        self.assertEqual(self.net.send("not-understood", "init", ("c",)), ACCEPT)
        self.assertEqual(self.net.state, "done")

    def test_cancel(self) -> None:
        """
        After a C{cancel} the participants it was addressed to may end with
        C{inform} or C{failure} from any stage; the others may not.
        """
        self.net.send("propose", "b", ("init",))
        self.assertEqual(self.net.send("cancel", "init", ("a", "b")), ACCEPT)
        self.assertEqual(self.net.send("inform", "a", ("init",)), ACCEPT)
        self.assertEqual(self.net.send("failure", "b", ("init",)), ACCEPT)
        self.assertEqual(
            self.net.send("inform", "c", ("init",)),
            out_of_order("inform after cfp in fipa-contract-net"),
        )
        self.net.send("refuse", "c", ("init",))
        self.assertEqual(self.net.state, "done")


class DeadlineTests(SynchronousTestCase):
    """
    L{ConversationTracker.expire} and L{ConversationTracker.next_deadline}.
    """

    def setUp(self) -> None:
        self.tracker = ConversationTracker()

    def test_requestTimeout(self) -> None:
        """
        At its deadline a request with unanswered participants is reported
        once, naming them sorted, and becomes timed-out.
        """
        conversation = Conversation(self.tracker, "fipa-request")
        conversation.begin("request", ("c", "a", "b", "d"), deadline=T0 + 5)
        conversation.send("inform", "b", ("init",))
        conversation.send("agree", "c", ("init",))
        self.assertEqual(self.tracker.next_deadline(), T0 + 5)
        self.assertEqual(self.tracker.expire(T0 + 4.999), [])
        assert conversation.initiating is not None
        self.assertEqual(
            self.tracker.expire(T0 + 5),
            [Timeout("c1", "fipa-request", "init", conversation.initiating, ("a", "c", "d"))],
        )
        self.assertEqual(conversation.state, "timed-out")
        self.assertEqual(self.tracker.expire(T0 + 500), [])
        self.assertIsNone(self.tracker.next_deadline())

    def test_lateAnswersAccepted(self) -> None:
        """
        After a request or query times out, late answers from its
        participants are accepted, even ones that would otherwise be out of
        order; strangers are still refused.
        """
        conversation = Conversation(self.tracker, "fipa-query")
        conversation.begin("query-if", ("a", "b"), deadline=T0 + 5)
        conversation.send("inform", "a", ("init",))
        self.tracker.expire(T0 + 6)
        self.assertEqual(conversation.send("agree", "b", ("init",), now=T0 + 7), ACCEPT)
        self.assertEqual(conversation.send("inform-if", "b", ("init",), now=T0 + 8), ACCEPT)
        self.assertEqual(conversation.send("inform", "a", ("init",), now=T0 + 8), ACCEPT)
        self.assertEqual(conversation.state, "timed-out")
        self.assertEqual(
            conversation.send("inform", "z", ("init",), now=T0 + 8).kind, "out-of-order"
        )

    def test_nothingMissing(self) -> None:
        """
        A conversation whose participants have all answered by its deadline
        is not reported, and its deadline is not pending.
        """
        conversation = Conversation(self.tracker, "fipa-request")
        conversation.begin("request", ("a",), deadline=T0 + 5)
        conversation.send("refuse", "a", ("init",))
        self.assertIsNone(self.tracker.next_deadline())
        self.assertEqual(self.tracker.expire(T0 + 5), [])
        self.assertEqual(conversation.state, "done")

    def test_contractNetTimeout(self) -> None:
        """
        A contract-net conversation is reported at its deadline naming only
        the participants that neither proposed, refused nor failed to
        understand; it stays open, later proposals are late, and awards go
        on.
        """
        net = Conversation(self.tracker, "fipa-contract-net")
        net.begin("cfp", ("a", "b", "c", "d"), deadline=T0 + 10)
        net.send("propose", "a", ("init",))
        net.send("refuse", "b", ("init",))
        assert net.initiating is not None
        self.assertEqual(
            self.tracker.expire(T0 + 10),
            [Timeout("c1", "fipa-contract-net", "init", net.initiating, ("c", "d"))],
        )
        self.assertEqual(net.state, "open")
        # Reported missing, so late even at the deadline itself.
        self.assertEqual(net.send("propose", "c", ("init",), now=T0 + 10), LATE)
        self.assertEqual(net.send("accept-proposal", "init", ("a",), now=T0 + 11), ACCEPT)
        self.assertEqual(net.send("inform", "a", ("init",), now=T0 + 12), ACCEPT)
        self.assertEqual(self.tracker.expire(T0 + 100), [])
        # d never answered, but nothing more is awaited from it.
        self.assertEqual(net.state, "done")
        self.assertEqual(net.send("refuse", "d", ("init",), now=T0 + 13), ACCEPT)

    def test_contractNetAllAnsweredNotReported(self) -> None:
        """
        A contract-net conversation in which everyone proposed or refused
        before the deadline is not reported, though awards are pending.
        """
        net = Conversation(self.tracker, "fipa-contract-net")
        net.begin("cfp", ("a", "b"), deadline=T0 + 10)
        net.send("propose", "a", ("init",))
        net.send("not-understood", "b", ("init",))
        self.assertEqual(self.tracker.expire(T0 + 10), [])
        self.assertEqual(net.state, "open")

    def test_order(self) -> None:
        """
        C{expire} reports every due conversation, earliest deadline first,
        and leaves later ones pending.
        """
        for number, deadline in enumerate([30, 10, 20, 40], 1):
            Conversation(self.tracker, "fipa-request", f"c{number}").begin(
                "request", ("a",), deadline=T0 + deadline
            )
        self.assertEqual(self.tracker.next_deadline(), T0 + 10)
        timeouts = self.tracker.expire(T0 + 30)
        self.assertEqual([t.conversation_id for t in timeouts], ["c2", "c3", "c1"])
        self.assertEqual(self.tracker.next_deadline(), T0 + 40)
        self.assertEqual([t.conversation_id for t in self.tracker.expire(T0 + 40)], ["c4"])

    def test_forgottenNotReported(self) -> None:
        """
        A conversation forgotten to bound memory is never reported.
        """
        tracker = ConversationTracker(max_conversations=1)
        Conversation(tracker, "fipa-request", "c1").begin("request", ("a",), deadline=T0 + 1)
        Conversation(tracker, "fipa-request", "c2").begin("request", ("a",), deadline=T0 + 2)
        self.assertEqual(tracker.next_deadline(), T0 + 2)
        self.assertEqual([t.conversation_id for t in tracker.expire(T0 + 3)], ["c2"])

    def test_replacedNotReportedTwice(self) -> None:
        """
        A finished conversation whose id is reused reports only the new
        conversation's deadline.
        """
        conversation = Conversation(self.tracker, "fipa-request")
        conversation.begin("request", ("a",), deadline=T0 + 1)
        conversation.send("inform", "a", ("init",))
        conversation.begin("request", ("b",), deadline=T0 + 5)
        self.assertEqual(self.tracker.next_deadline(), T0 + 5)
        [timeout] = self.tracker.expire(T0 + 10)
        self.assertEqual(timeout.missing, ("b",))


class MemoryTests(SynchronousTestCase):
    """
    The tracker remembers a bounded number of conversations.
    """

    def test_doneKept(self) -> None:
        """
        A done conversation stays known as done while there is room.
        """
        tracker = ConversationTracker()
        conversation = Conversation(tracker, "fipa-request")
        conversation.begin("request", ("a",))
        conversation.send("inform", "a", ("init",))
        self.assertEqual(conversation.state, "done")
        self.assertEqual(len(tracker), 1)

    def test_oldestForgotten(self) -> None:
        """
        Beyond C{max_conversations} the oldest conversation is forgotten;
        its messages are then accepted untracked.
        """
        tracker = ConversationTracker(max_conversations=2)
        conversations = [Conversation(tracker, "fipa-request", f"c{n}") for n in range(3)]
        for conversation in conversations:
            conversation.begin("request", ("a",))
            self.assertLessEqual(len(tracker), 2)
        self.assertEqual(
            [c.state for c in conversations], [None, "open", "open"]
        )
        self.assertEqual(conversations[0].send("agree", "mallory", ("init",)), ACCEPT)

    def test_finishedForgottenFirst(self) -> None:
        """
        To make room, finished conversations are forgotten before open ones.
        """
        tracker = ConversationTracker(max_conversations=2)
        first, second, third = (
            Conversation(tracker, "fipa-request", f"c{n}") for n in range(3)
        )
        first.begin("request", ("a",))
        second.begin("request", ("a",))
        second.send("inform", "a", ("init",))
        third.begin("request", ("a",))
        self.assertEqual((first.state, second.state, third.state), ("open", None, "open"))

    def test_heapBounded(self) -> None:
        """
        Forgotten conversations' deadlines do not pile up: the deadline heap
        stays within a constant factor of C{max_conversations}.
        """
        tracker = ConversationTracker(max_conversations=10)
        for n in range(1000):
            Conversation(tracker, "fipa-request", f"c{n}").begin(
                "request", ("a",), deadline=T0 + 10_000 - n
            )
        self.assertEqual(len(tracker), 10)
        self.assertLessEqual(len(tracker._deadlines), 2 * 10 + 17)
        self.assertEqual(tracker.next_deadline(), T0 + 10_000 - 999)


# Random traffic for the property test.
AGENTS = ("i", "a", "b", "c")
CONVERSATION_IDS = ("c1", "c2", "c3", "c4", "c5")
MAX_CONVERSATIONS = 3

_INITIATING = {
    "fipa-request": ["request"],
    "fipa-query": ["query-if", "query-ref"],
    "fipa-contract-net": ["cfp"],
}
_LIKELY = [
    "agree",
    "refuse",
    "failure",
    "inform",
    "inform-if",
    "inform-ref",
    "not-understood",
    "cancel",
    "propose",
    "accept-proposal",
    "reject-proposal",
]


class TrackerMachine(RuleBasedStateMachine):
    """
    Random message traffic, deadlines and clock advances, checking the
    tracker's invariants after every step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tracker = ConversationTracker(max_conversations=MAX_CONVERSATIONS)
        self.now = T0
        self.ids = itertools.count()
        self.reported: Set[str] = set()

    @rule(
        performative=st.sampled_from(_LIKELY) | st.sampled_from(sorted(PERFORMATIVES)),
        sender=st.sampled_from(AGENTS),
        receivers=st.lists(st.sampled_from(AGENTS), max_size=4).map(tuple),
        protocol=st.sampled_from(sorted(PROTOCOLS)) | st.sampled_from([None, "other"]),
        conversation_id=st.sampled_from(CONVERSATION_IDS) | st.none(),
        deadline=st.none() | st.floats(-5, 30),
    )
    def observe(
        self,
        performative: str,
        sender: str,
        receivers: Tuple[str, ...],
        protocol: Optional[str],
        conversation_id: Optional[str],
        deadline: Optional[float],
    ) -> None:
        """
        Any message gives one of the three verdicts, with a reason exactly
        when it is not accepted.
        """
        self._observe(performative, sender, receivers, protocol, conversation_id, deadline)

    @rule(
        data=st.data(),
        sender=st.sampled_from(AGENTS),
        receivers=st.lists(st.sampled_from(AGENTS), min_size=1, max_size=4).map(tuple),
        protocol=st.sampled_from(sorted(PROTOCOLS)),
        conversation_id=st.sampled_from(CONVERSATION_IDS),
        deadline=st.none() | st.floats(0, 30),
    )
    def begin(
        self,
        data: st.DataObject,
        sender: str,
        receivers: Tuple[str, ...],
        protocol: str,
        conversation_id: str,
        deadline: Optional[float],
    ) -> None:
        """
        Initiating messages, frequent enough to build real conversations.
        """
        performative = data.draw(st.sampled_from(_INITIATING[protocol]))
        self._observe(performative, sender, receivers, protocol, conversation_id, deadline)

    def _observe(
        self,
        performative: str,
        sender: str,
        receivers: Tuple[str, ...],
        protocol: Optional[str],
        conversation_id: Optional[str],
        deadline: Optional[float],
    ) -> None:
        message = ACLMessage(
            performative,
            sender=sender,
            receiver=receivers,
            protocol=protocol,
            conversation_id=conversation_id,
            reply_by=None if deadline is None else at(self.now + deadline),
            message_id=f"m{next(self.ids)}",
        )
        verdict = self.tracker.observe(message, receivers, self.now)
        assert verdict.kind in ("accept", "late", "out-of-order"), verdict
        assert (verdict.kind == "accept") == (verdict.reason == ""), verdict

    @rule(seconds=st.floats(0, 20))
    def advance(self, seconds: float) -> None:
        """
        Time passes.
        """
        self.now += seconds

    @rule()
    def expire(self) -> None:
        """
        Each conversation is reported at most once, not before its
        deadline nor before C{next_deadline}, naming some participants,
        sorted; afterwards no deadline at or before now is pending.
        """
        pending = self.tracker.next_deadline()
        timeouts: List[Timeout] = self.tracker.expire(self.now)
        for timeout in timeouts:
            key = timeout.initiating.message_id
            assert key is not None
            assert key not in self.reported, timeout
            self.reported.add(key)
            assert timeout.initiating.reply_by is not None
            deadline = timeout.initiating.reply_by.timestamp()
            assert deadline <= self.now
            assert pending is not None and pending <= deadline
            assert timeout.missing
            assert list(timeout.missing) == sorted(set(timeout.missing))
            assert timeout.initiator not in timeout.missing
            assert set(timeout.missing) <= set(timeout.initiating.receiver or ())
        following = self.tracker.next_deadline()
        assert following is None or following > self.now

    @invariant()
    def bounded(self) -> None:
        """
        The tracker never remembers more than C{max_conversations}, and
        every state is one of the documented ones.
        """
        assert len(self.tracker) <= MAX_CONVERSATIONS
        states = [self.tracker.state(c) for c in CONVERSATION_IDS]
        assert set(states) <= {None, "open", "done", "timed-out"}, states
        assert len(self.tracker) == sum(s is not None for s in states)


class PropertyTests(SynchronousTestCase):
    """
    Invariants under random traffic.
    """

    def test_randomTraffic(self) -> None:
        """
        For random sequences of messages, clock advances and expiries:
        C{observe} never raises and always gives one of the three verdicts;
        each conversation is reported by C{expire} at most once; the
        tracker never remembers more than C{max_conversations}.
        """
        run_state_machine_as_test(
            TrackerMachine,
            settings=settings(max_examples=300, stateful_step_count=60, deadline=None),
        )
