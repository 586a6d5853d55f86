"""
What the rest of the node (the API) sees of the cluster.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from zope.interface import Attribute, Interface


class ICluster(Interface):
    """
    The node's membership and registry, as the API shows them.
    """

    node_id = Attribute("This node's id.")

    def members() -> List[Dict[str, Any]]:
        """
        Every member this node knows, itself included, as JSON views:
        C{id}, C{address}, C{state}, C{incarnation}, C{agents}, C{self}.
        """

    def status() -> Dict[str, Any]:
        """
        The cluster as this node sees it: partition mode, member counts by
        state, local health, agent count.
        """

    def gossip_health() -> Dict[str, Any]:
        """
        C{/health/gossip}: C{peer_count}, C{last_sync}, C{agent_count},
        C{partition}, C{status} (C{healthy} or C{degraded}).
        """

    def remote_agents(node: Optional[str] = None) -> List[Dict[str, Any]]:
        """
        Agents hosted on other nodes, as the registry knows them, sorted by
        name: C{name}, C{node}, C{version}, C{status}, C{capabilities}.
        """

    def join(seeds: Sequence[Tuple[str, int]]) -> Any:
        """
        Join the cluster through C{seeds}: a coroutine returning how many
        were reached, or raising a L{caxton.errors.CaxtonError}.
        """

    def leave() -> Any:
        """
        Leave the cluster gracefully (a coroutine).
        """
