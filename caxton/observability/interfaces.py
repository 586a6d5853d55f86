# -*- test-case-name: tests.test_observability_metrics -*-
"""
What the router tells observability about messages.

Kept apart from L{caxton.observability.metrics} so the router depends on a
small interface, not on Prometheus.
"""

from __future__ import annotations

from typing import Optional

from zope.interface import Interface, implementer


class IMessageObserver(Interface):
    """
    Told, on the reactor thread, what became of the messages a router
    handles.  Calls must be cheap: they happen once per message.
    """

    def routed(where: str, latency: Optional[float]) -> None:
        """
        A message was handed to its receiver.

        @param where: C{"local"} (an agent on this node), C{"client"} (an
            API client's mailbox), C{"tool"} (an MCP tool call) or
            C{"remote"} (another node).
        @param latency: seconds from the router accepting the message to
            this hand-off, or C{None} when unknown (a message kept over a
            restart).
        """

    def failed(reason: str) -> None:
        """
        A message ended in a recorded failure with C{reason}
        (C{AGENT_NOT_FOUND}, C{QUEUE_FULL}, C{TIMEOUT}, ...).
        """


@implementer(IMessageObserver)
class NullMessageObserver:
    """
    An L{IMessageObserver} that ignores everything: the router's default.
    """

    def routed(self, where: str, latency: Optional[float]) -> None:
        pass

    def failed(self, reason: str) -> None:
        pass
