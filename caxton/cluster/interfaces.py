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

    def partition() -> str:
        """
        This node's partition mode: C{majority}, C{minority} or
        C{isolated}.
        """

    def hosting(name: str) -> Optional[str]:
        """
        The other node that hosts an agent called C{name}, if the registry
        knows one.
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


class IRemoteRoutes(Interface):
    """
    What the router needs of the cluster to deliver beyond this node
    (SPEC 5.2): where agents are, and a way to send them messages.
    """

    node_id = Attribute("This node's id.")

    def locate(name: str) -> Optional[str]:
        """
        The node that hosts agent C{name} as far as the registry knows (the
        last home of an agent whose node is unreachable, where messages
        wait), or C{None}.
        """

    def shadowed(name: str) -> Optional[str]:
        """
        The node whose agent C{name} wins over this node's agent of the same
        name (deployed on both sides of a partition; see
        L{caxton.cluster.registry.winner}), or C{None}.
        """

    def offering(capability: str) -> List[Tuple[str, str]]:
        """
        C{(agent, node)} for the agents on other nodes that offer
        C{capability}, on nodes that can be reached.
        """

    def ask(name: str) -> Any:
        """
        Ask the reachable members whether one of them hosts C{name}: a
        Deferred of its node id, or C{None} when none answers yes within
        the lookup timeout.
        """

    def forward(node: str, receiver: str, message: Any, body: bytes) -> None:
        """
        Queue C{message} (its JSON C{body}) for C{receiver} on C{node}; it
        is kept durably until that node acknowledges it, or fails back to
        its sender.

        @raise caxton.errors.QueueFull: the queue for C{node} is full.
        """

    def client_home(client: str, conversation_id: Optional[str]) -> Optional[str]:
        """
        The node an API client C{client} sent from in this conversation
        (or lately), when that is another node; else C{None}.
        """
