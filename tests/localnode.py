"""
A trial base class for tests on a deterministic L{caxton.testing.LocalNode}:
real wasm agents and a real SQLite file, no threads and no sockets.
"""

from __future__ import annotations

import time
from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from caxton.acl.message import ACLMessage
from caxton.testing import LocalNode


class LocalNodeTestCase(SynchronousTestCase):
    """
    A L{LocalNode} per test, with helpers to deploy, send and read
    mailboxes.

    @ivar overrides: config values for the node (C{agents__max_traps=3}).
    """

    overrides: dict = {}

    def setUp(self) -> None:
        self.node = LocalNode(self.mktemp(), time.time(), **self.overrides)
        self.successResultOf(self.node.open())
        self.addCleanup(lambda: self.successResultOf(self.node.store.close()))
        self.router = self.node.router
        self.agents = self.node.agents

    def deploy(self, name: str, wasm: bytes, **spec: Any) -> Any:
        """
        Deploy and start an agent; its cell.
        """
        d = Deferred.fromCoroutine(self.agents.deploy(name, wasm, spec))
        self.node.pump()
        return self.successResultOf(d)

    def send(self, **fields: Any) -> ACLMessage:
        """
        Send as C{client:alice} (unless C{sender} says otherwise) and run
        everything it causes.
        """
        fields.setdefault("sender", "client:alice")
        message = self.router.send(ACLMessage(**fields))
        self.node.pump()
        return message

    def mailbox(self, client: str = "client:alice") -> List[dict]:
        """
        The messages in C{client}'s mailbox, oldest first.
        """
        items = self.successResultOf(self.node.store.read_mailbox(client, 0, 10_000))
        return [item.message for item in items]

    def dead_letters(self) -> list:
        """
        The dead letters, newest first.
        """
        return self.successResultOf(self.node.store.list_dead_letters(100, None))
