# -*- test-case-name: tests.test_swim_codec -*-
"""
The messages SWIM nodes exchange, as frozen values.

These are the protocol's vocabulary, shared by the core
(L{caxton.swim.core}), the codec (L{caxton.swim.codec}) and the simulator.
They follow memberlist's messages (notes/swim.md 2.6): probes (L{Ping},
L{IndirectPing}, L{Ack}, L{Nack}), membership news (L{Alive}, L{Suspect},
L{Dead}), application broadcasts (L{User}) and the full state exchanged in
push-pull (L{PushPull}).  A datagram carries one or more of them.
"""

from __future__ import annotations

import enum
from typing import Tuple, Union

import attr

#: Largest metadata a node may attach to its alive message.
MAX_META = 512


class State(enum.IntEnum):
    """
    What a node believes about a member.  C{LEFT} is a member that said
    goodbye; C{DEAD} one that was declared failed.
    """

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@attr.s(frozen=True, slots=True, auto_attribs=True, order=True)
class Address:
    """
    Where a node listens: SWIM over UDP and the node stream over TCP share
    C{host} and C{port}.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Ping:
    """
    A direct probe.  C{target} names the node the sender means to reach, so
    a node that took over the address answers nothing.
    """

    seq: int
    target: str
    source: str
    source_addr: Address


@attr.s(frozen=True, slots=True, auto_attribs=True)
class IndirectPing:
    """
    Ask a helper to probe C{target} at C{target_addr} for the sender, and
    to answer with a L{Nack} if the target stays silent and C{nack} is set.
    """

    seq: int
    target: str
    target_addr: Address
    nack: bool
    source: str
    source_addr: Address


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Ack:
    """
    The answer to a probe with sequence number C{seq}.
    """

    seq: int


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Nack:
    """
    A helper's word that it asked but the target did not answer: proof that
    the path to the helper works (Lifeguard).
    """

    seq: int


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Alive:
    """
    C{node} is alive at C{addr} with C{incarnation}; C{meta} is at most
    L{MAX_META} bytes of the node's own data.
    """

    incarnation: int
    node: str
    addr: Address
    meta: bytes = b""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Suspect:
    """
    C{sender} suspects C{node} at C{incarnation}.
    """

    incarnation: int
    node: str
    sender: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Dead:
    """
    C{sender} declares C{node} dead at C{incarnation}; when C{sender} is
    C{node} itself, the node left.
    """

    incarnation: int
    node: str
    sender: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class User:
    """
    An application broadcast (the agent registry's news), opaque to SWIM.
    """

    payload: bytes


#: The messages a datagram can carry.
Message = Union[Ping, IndirectPing, Ack, Nack, Alive, Suspect, Dead, User]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class MemberState:
    """
    One member as a node knows it, in a push-pull exchange.
    """

    node: str
    addr: Address
    incarnation: int
    state: State
    meta: bytes = b""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PushPull:
    """
    A node's full state, sent over the node stream: its members and the
    application's state (the registry).  C{join} is set when the sender is
    joining through this exchange.
    """

    join: bool
    members: Tuple[MemberState, ...]
    user_state: bytes = b""
