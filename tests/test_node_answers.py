"""
Answers to the node's own messages end at the node, whatever protocol
their conversation follows: an agent that answers everything (like the
echo example) must not ping-pong with the node's protocol notices.

Found while probing the API for its OpenAPI document: a client's C{cfp}
to the echo agent under C{fipa-contract-net} made echo answer C{inform}
(a protocol violation), the node answered C{not-understood}, echo answered
that with C{inform} to the node, which the node policed as another
violation, and so on without end, on a single API call.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from caxton.acl.message import ACLMessage
from caxton.router.router import NODE
from tests.localnode import LocalNodeTestCase
from tests.wasmbuild import example, wat_module

#: More agent batches than the exchange needs: a loop would still be
#: going after them.
BATCHES = 50


class NodeAnswerTests(LocalNodeTestCase):
    """
    The node does not police messages addressed to itself.
    """

    def test_no_ping_pong(self) -> None:
        """
        A C{cfp} to echo ends after echo's answer, the node's
        C{not-understood}, and echo's answer to that, which the node
        records and drops.
        """
        self.deploy("echo", wat_module(example("wat", "echo.wat")))
        sent = self.router.send(
            ACLMessage(
                "cfp",
                sender="client:alice",
                receiver=("echo",),
                protocol="fipa-contract-net",
                conversation_id="cnp-1",
                reply_by=datetime.now(timezone.utc) + timedelta(hours=1),
            )
        )
        # Bounded: a loop would never let LocalNode.pump return.
        for _ in range(BATCHES):
            if not self.node.workers.pump(1):
                break
            self.node.clock.advance(0)
        self.assertEqual(self.node.workers.pump(1), 0, "the node and echo are still answering each other")
        _, messages = self.successResultOf(self.node.store.get_conversation(sent.conversation_id, 0, 100))
        flow = [(m.message["sender"], m.message["performative"]) for m in messages]
        self.assertEqual(
            flow,
            [
                ("client:alice", "cfp"),
                ("echo", "inform"),
                (NODE, "not-understood"),
                ("echo", "inform"),
            ],
        )
        self.assertEqual(messages[-1].message["receiver"], NODE)
