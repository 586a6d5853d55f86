"""
The boundaries of the SWIM core: what it needs from the world
(L{ISwimTransport}) and whom it tells about changes
(L{IMembershipListener}, L{IMembershipDelegate}).

The real node implements the transport with UDP and the node stream
(L{caxton.swim.udp}, L{caxton.cluster.stream}); the simulator
(L{caxton.swim.simulator}) with a virtual network on one C{task.Clock}.
"""

from __future__ import annotations

import enum
from typing import Optional

from twisted.internet.defer import Deferred
from zope.interface import Interface

from caxton.swim.messages import Address


class StreamPing(enum.Enum):
    """
    What a probe over the node stream found.

    @cvar ANSWERED: the peer answered, as the node it was meant to be.
    @cvar SILENT: no answer (timeout, unreachable, another node, refused
        at the TLS or identity check).
    @cvar REFUSED: the peer's host refused the TCP connection: nothing
        listens at that address, so the process is gone (a crash or a kill
        on a host that is up).  Silence could be a slow or cut-off node;
        a refusal cannot.
    """

    ANSWERED = "answered"
    SILENT = "silent"
    REFUSED = "refused"


class ISwimTransport(Interface):
    """
    How the core reaches other nodes.  Every method returns at once.
    """

    def send_packet(addr: Address, packet: bytes) -> None:
        """
        Send one encoded packet (L{caxton.swim.codec.encode_packet}) to
        C{addr} as a datagram.  Best effort: loss is normal.
        """

    def push_pull(node: Optional[str], addr: Address, state: bytes) -> Deferred:
        """
        Exchange full state with the node at C{addr} over a stream:
        send C{state} (L{caxton.swim.codec.encode_push_pull}) and fire
        with the peer's encoded state, or fail.  C{node} is the peer's id
        when known (None for a seed address), and the stream refuses a peer
        whose identity does not match it.
        """

    def stream_ping(node: str, addr: Address) -> Deferred:
        """
        Probe C{node} over the stream (memberlist's TCP fallback ping): fire
        with a L{StreamPing}.  Never fails.
        """


class IMembershipListener(Interface):
    """
    Told about members as the core's view of them changes.  C{member} is a
    L{caxton.swim.core.Member} snapshot.
    """

    def member_joined(member: object) -> None:
        """
        A node became known and alive, or came back after dead or left.
        """

    def member_updated(member: object) -> None:
        """
        A known alive node changed its address or metadata.
        """

    def member_suspected(member: object) -> None:
        """
        A member is now suspect.
        """

    def member_alive(member: object) -> None:
        """
        A suspect member refuted the suspicion.
        """

    def member_failed(member: object) -> None:
        """
        A member was declared dead.
        """

    def member_left(member: object) -> None:
        """
        A member left gracefully.
        """


class IMembershipDelegate(Interface):
    """
    The application riding on membership (the agent registry): its state
    travels in push-pull, its news in L{caxton.swim.messages.User}
    broadcasts queued with L{caxton.swim.core.Membership.broadcast_user}.
    """

    def local_state(join: bool) -> bytes:
        """
        The application's full state to send in a push-pull exchange.
        """

    def merge_remote_state(data: bytes, join: bool) -> None:
        """
        Merge a peer's full state received in push-pull.  Must not raise on
        bad input (drop and log instead).
        """

    def notify_user(payload: bytes) -> None:
        """
        A user broadcast arrived.  Must not raise on bad input.
        """
