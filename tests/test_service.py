"""
Tests for L{caxton.service}: ordered start, graceful stop, and what
survives a restart, with the real pieces on the real reactor.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from caxton.acl.message import ACLMessage
from caxton.config import load
from caxton.node import build_node
from tests.wasmbuild import example, wat_module


class RestartTests(TestCase):
    """
    Two nodes, one after the other, on one data directory.
    """

    def node(self, data_dir: str):
        config = load({"data_dir": data_dir, "api": "tcp:0:interface=127.0.0.1"}, {}, None)
        service = build_node(config, reactor)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    async def test_queued_messages_survive_restart(self) -> None:
        """
        Messages waiting for a stopped agent at shutdown are kept, and after
        the restart they are handled, in order, once the agent starts; the
        agent comes back stopped, at the version it had.
        """
        data_dir = self.mktemp()
        first = self.node(data_dir)
        await first.whenReady()
        self.assertTrue(first.ready)
        agents = first.getServiceNamed("agents")
        await agents.deploy("echo", wat_module(example("wat", "echo.wat")), {})
        await agents.update("echo", None, {"capabilities": ["echo"]})
        await agents.stop("echo")
        for i in range(3):
            first.router.send(ACLMessage("request", sender="client:alice", receiver=("echo",), content=i))
        await first.stopService()

        second = self.node(data_dir)
        await second.whenReady()
        agents = second.getServiceNamed("agents")
        cell = agents.get("echo")
        self.assertEqual((cell.status, cell.version), ("stopped", 2))
        self.assertEqual(len(cell.inbox), 3)
        store = second.getServiceNamed("store").store
        arrived: Deferred = second.router.wait_mailbox("client:alice")
        await agents.start("echo")
        for _ in range(50):
            mailbox = await store.read_mailbox("client:alice", 0, 10)
            if len(mailbox) == 3:
                break
            await arrived
            arrived = second.router.wait_mailbox("client:alice")
        self.assertEqual([m.message["content"]["content"] for m in mailbox], [0, 1, 2])
        if not arrived.called:
            arrived.cancel()
            arrived.addErrback(lambda f: None)
        await second.stopService()
