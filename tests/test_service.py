"""
Tests for L{caxton.service}: ordered start, graceful stop, and what
survives a restart, with the real pieces on the real reactor.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from caxton.acl.message import ACLMessage
from caxton.config import load
from caxton.node import build_node
from tests.wasmbuild import example, testing_agent, wat_module


class RestartTests(TestCase):
    """
    Two nodes, one after the other, on one data directory.
    """

    def node(self, data_dir: str, **options: str):
        given = {"data_dir": data_dir, "api": "tcp:0:interface=127.0.0.1"}
        given.update(options)
        config = load(given, {}, None)
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

    async def test_shutdown_interrupts_past_grace(self) -> None:
        """
        A node stopping while an agent spins (wall clock 30 s) waits only
        the grace period, then interrupts it: the spinning message's sender
        gets AGENT_FAILED, the messages queued behind it are kept, and they
        run after the restart.
        """
        data_dir = self.mktemp()
        first = self.node(data_dir, shutdown_grace="300ms")
        await first.whenReady()
        agents = first.getServiceNamed("agents")
        await agents.deploy("spin", wat_module(testing_agent("spin.wat")), {"limits": {"wall_clock": "30s"}})
        for i in range(3):
            first.router.send(ACLMessage("request", sender="client:alice", receiver=("spin",), content=i))
        # Let the worker enter the first message, so the interrupt is needed.
        await deferLater(reactor, 0.3, lambda: None)
        started = reactor.seconds()
        await first.stopService()
        self.assertLess(reactor.seconds() - started, 20)

        second = self.node(data_dir, shutdown_grace="300ms")
        await second.whenReady()
        store = second.getServiceNamed("store").store
        failures = await store.read_mailbox("client:alice", 0, 10)
        for failure in failures:
            self.assertEqual(failure.message["content"]["reason"], "AGENT_FAILED")
            self.assertIn("wall-clock", failure.message["content"]["message"])
        # Every message is accounted for: interrupted (at most the one that
        # was running) or kept and back (one may already be spinning again).
        cell = second.getServiceNamed("agents").get("spin")
        self.assertLessEqual(len(failures), 1)
        self.assertEqual(len(failures) + len(cell.inbox) + cell.busy, 3)
        await second.stopService()
