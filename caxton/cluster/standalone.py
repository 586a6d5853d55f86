# -*- test-case-name: tests.test_api -*-
"""
The cluster of a node that runs alone (no C{bind} address): one member,
itself, always in the majority.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from zope.interface import implementer

from caxton.cluster.interfaces import ICluster
from caxton.errors import InvalidRequest

_ALONE = "this node runs alone: start it with --bind HOST:PORT (and --tls-dir) to form a cluster"


@implementer(ICluster)
class Standalone:
    """
    L{ICluster} for a node without gossip.

    @param agents: the node's agent manager (its id and agent count).
    """

    def __init__(self, agents: Any) -> None:
        self._agents = agents

    @property
    def node_id(self) -> str:
        return self._agents.node_id

    def members(self) -> List[Dict[str, Any]]:
        return [
            {
                "id": self.node_id,
                "address": None,
                "state": "alive",
                "incarnation": 0,
                "agents": len(self._agents),
                "self": True,
            }
        ]

    def status(self) -> Dict[str, Any]:
        return {
            "node_id": self.node_id,
            "clustered": False,
            "partition": "majority",
            "members": {"alive": 1, "suspect": 0, "dead": 0, "left": 0},
            "local_health": 0,
            "agents": len(self._agents),
        }

    def gossip_health(self) -> Dict[str, Any]:
        return {
            "status": "healthy",
            "clustered": False,
            "peer_count": 0,
            "last_sync": None,
            "agent_count": len(self._agents),
            "partition": "majority",
        }

    def partition(self) -> str:
        return "majority"

    def hosting(self, name: str) -> Optional[str]:
        return None

    def remote_agents(self, node: Optional[str] = None) -> List[Dict[str, Any]]:
        return []

    async def join(self, seeds: Sequence[Tuple[str, int]]) -> int:
        raise InvalidRequest(_ALONE)

    async def leave(self) -> None:
        raise InvalidRequest(_ALONE)
