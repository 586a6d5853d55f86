# -*- test-case-name: tests.test_observability_events -*-
"""
The observability child of a node's root service.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service

from caxton.observability.events import AgentEvents, EventHub


class ObservabilityService(Service):
    """
    Follows the agent manager for events once the agents it keeps are
    loaded (the root opens its children in order, this one after the
    agents), and at stop ends every event stream, so clients see the
    stream end and reconnect elsewhere.

    @param hub: the node's event hub.
    @param agent_events: turns agent changes into events.
    @param agents: the agent manager to follow.
    """

    name = "observability"

    def __init__(self, hub: EventHub, agent_events: AgentEvents, agents: Any) -> None:
        self.hub = hub
        self.agent_events = agent_events
        self.agents = agents

    async def open(self) -> None:
        """
        Follow the agents.
        """
        self.agent_events.attach(self.agents)

    async def close(self) -> None:
        """
        Stop following the agents and end every event stream.
        """
        self.agent_events.detach()
        self.hub.close()
