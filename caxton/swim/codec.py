# -*- test-case-name: tests.test_swim_codec -*-
"""
The SWIM wire format: a compact, versioned binary encoding of
L{caxton.swim.messages}.

A packet (one datagram's plaintext, before the envelope of
L{caxton.swim.keyring}) is::

    [VERSION u8][count u8] count x ([type u8][body])

Bodies are self-delimiting, so a message costs its type byte and nothing
more for framing (memberlist's compound framing spends 2 bytes per part on
a length; we do not need it because a packet is parsed strictly, and an
unknown type rejects the whole packet: new message types come with a new
L{VERSION}).  Field encodings:

  - integers (sequence numbers, incarnations, lengths): unsigned LEB128
    varints, canonical (shortest form only), at most 32 bits; small
    incarnations and young sequence numbers cost one to three bytes;
  - node ids: C{[len u8][ascii]}, matching L{NODE_ID} (at most 63 bytes,
    as in L{caxton.config});
  - addresses: C{[family u8: 4 or 6][4 or 16 bytes][port u16 BE]}; the host
    must be an IP literal, and comes back in its canonical text form;
  - bytes (meta, user payload): C{[len varint][bytes]}, bounded by
    L{caxton.swim.messages.MAX_META} and L{MAX_USER_PAYLOAD};
  - booleans and enums: one byte, any other value is an error.

Type bytes follow memberlist's numbering (notes/swim.md 2.6) so a packet
dump reads the same; push-pull is not a packet message but its own
document (L{encode_push_pull}), carried over the node stream.

Decoding never trusts its input: anything malformed (wrong version,
truncated, trailing bytes, non-canonical varint, bad node id, unknown type
or enum value, oversized field, ...) raises L{CodecError} and nothing else.
Every packet L{decode_packet} accepts encodes back to the same bytes.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from caxton.swim.messages import (
    MAX_META,
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    State,
    Suspect,
    User,
)

#: The wire format's version, first byte of every packet and push-pull.
VERSION = 1

#: Bytes of a packet that carries no message: the version and the count.
PACKET_OVERHEAD = 2

#: Most messages in one packet (the count is one byte).
MAX_MESSAGES = 255

#: The datagram budget every packet, envelope included, must fit in
#: (notes/swim.md 2.6 and 7: 1400 bytes stays under common path MTUs).
MAX_PACKET_SIZE = 1400

#: Largest user broadcast: a packet holding only it, its type byte and a
#: two-byte length.  The envelope's overhead makes the practical limit
#: smaller; the core budgets that.
MAX_USER_PAYLOAD = MAX_PACKET_SIZE - PACKET_OVERHEAD - 3

#: Largest push-pull document L{decode_push_pull} accepts by default
#: (memberlist's limit).
MAX_PUSH_PULL_SIZE = 20 * 1024 * 1024

#: Most members in a push-pull document (memberlist's limit).
MAX_PUSH_PULL_MEMBERS = 1_000_000

#: Node ids, as L{caxton.config} accepts them.
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")

#: Largest unsigned integer on the wire (sequence numbers, incarnations).
MAX_UINT32 = 0xFFFFFFFF

# Type bytes (memberlist's numbers; 6 is push-pull, which is not a packet
# message here).
TYPE_PING = 0
TYPE_INDIRECT_PING = 1
TYPE_ACK = 2
TYPE_SUSPECT = 3
TYPE_ALIVE = 4
TYPE_DEAD = 5
TYPE_USER = 8
TYPE_NACK = 11

_FAMILY_IPV4 = 4
_FAMILY_IPV6 = 6

# The smallest encoded member in a push-pull: a one-character id, an IPv4
# address, a one-byte incarnation, the state and an empty meta.  Used to
# reject a member count the data cannot possibly hold before looping.
_MIN_MEMBER_SIZE = 2 + 7 + 1 + 1 + 1


class CodecError(ValueError):
    """
    Bytes are not a valid packet or push-pull document, or a message
    cannot be encoded (bad node id, host that is no IP address, field out
    of range or too long).
    """


def valid_node_id(node: object) -> bool:
    """
    Whether C{node} is a node id the wire format can carry.
    """
    return isinstance(node, str) and NODE_ID.match(node) is not None


# --- encoding ---------------------------------------------------------------


def _varint(value: object, what: str, limit: int = MAX_UINT32) -> bytes:
    # bool is an int; a True sequence number is a bug upstream, not a 1.
    if type(value) is not int or not 0 <= value <= limit:
        raise CodecError(f"{what} must be an integer in 0..{limit}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _node(node: object, what: str) -> bytes:
    if type(node) is not str:
        raise CodecError(f"{what} is not a valid node id")
    encoded = _node_bytes(node)
    if encoded is None:
        raise CodecError(f"{what} is not a valid node id")
    return encoded


# The same few ids appear in every packet; checking and encoding them once
# halves the cost of encoding a probe.
@functools.lru_cache(maxsize=8192)
def _node_bytes(node: str) -> Optional[bytes]:
    if NODE_ID.match(node) is None:
        return None
    raw = node.encode("ascii")
    return bytes((len(raw),)) + raw


@functools.lru_cache(maxsize=4096)
def _pack_host(host: str) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise CodecError("address host must be an IPv4 or IPv6 literal") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        # The zone (fe80::1%eth0) means nothing on the peer's side.
        raise CodecError("address host must not carry an IPv6 zone")
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    return bytes((family,)) + ip.packed


def _address(addr: object, what: str) -> bytes:
    if not isinstance(addr, Address) or not isinstance(addr.host, str):
        raise CodecError(f"{what} must be an Address")
    port = addr.port
    if type(port) is not int or not 0 <= port <= 0xFFFF:
        raise CodecError(f"{what} port must be in 0..65535")
    return _pack_host(addr.host) + port.to_bytes(2, "big")


def _blob(value: object, what: str, limit: int) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise CodecError(f"{what} must be bytes")
    value = bytes(value)
    if len(value) > limit:
        raise CodecError(f"{what} is longer than {limit} bytes")
    return _varint(len(value), what) + value


def _bool(value: object) -> bytes:
    return b"\x01" if value else b"\x00"


def _encode_ping(m: Ping) -> bytes:
    return b"".join(
        (
            bytes((TYPE_PING,)),
            _varint(m.seq, "seq"),
            _node(m.target, "target"),
            _node(m.source, "source"),
            _address(m.source_addr, "source_addr"),
        )
    )


def _encode_indirect_ping(m: IndirectPing) -> bytes:
    return b"".join(
        (
            bytes((TYPE_INDIRECT_PING,)),
            _varint(m.seq, "seq"),
            _node(m.target, "target"),
            _address(m.target_addr, "target_addr"),
            _bool(m.nack),
            _node(m.source, "source"),
            _address(m.source_addr, "source_addr"),
        )
    )


def _encode_ack(m: Ack) -> bytes:
    return bytes((TYPE_ACK,)) + _varint(m.seq, "seq")


def _encode_nack(m: Nack) -> bytes:
    return bytes((TYPE_NACK,)) + _varint(m.seq, "seq")


def _encode_alive(m: Alive) -> bytes:
    return b"".join(
        (
            bytes((TYPE_ALIVE,)),
            _varint(m.incarnation, "incarnation"),
            _node(m.node, "node"),
            _address(m.addr, "addr"),
            _blob(m.meta, "meta", MAX_META),
        )
    )


def _encode_suspect(m: Suspect) -> bytes:
    return b"".join(
        (
            bytes((TYPE_SUSPECT,)),
            _varint(m.incarnation, "incarnation"),
            _node(m.node, "node"),
            _node(m.sender, "sender"),
        )
    )


def _encode_dead(m: Dead) -> bytes:
    return b"".join(
        (
            bytes((TYPE_DEAD,)),
            _varint(m.incarnation, "incarnation"),
            _node(m.node, "node"),
            _node(m.sender, "sender"),
        )
    )


def _encode_user(m: User) -> bytes:
    return bytes((TYPE_USER,)) + _blob(m.payload, "user payload", MAX_USER_PAYLOAD)


_ENCODERS: Dict[type, Callable[..., bytes]] = {
    Ping: _encode_ping,
    IndirectPing: _encode_indirect_ping,
    Ack: _encode_ack,
    Nack: _encode_nack,
    Alive: _encode_alive,
    Suspect: _encode_suspect,
    Dead: _encode_dead,
    User: _encode_user,
}


def encode_message(message: Message) -> bytes:
    """
    One message as it appears inside a packet: its type byte and body.

    @raise CodecError: if C{message} cannot be encoded.
    """
    # No cache of whole messages: Ack(True) == Ack(1) and hash alike, so a
    # cache would make refusing a bad field depend on what came before.
    encoder = _ENCODERS.get(type(message))
    if encoder is None:
        raise CodecError(f"cannot encode {type(message).__name__}")
    return encoder(message)


def message_size(message: Message) -> int:
    """
    How many bytes C{message} adds to a packet, framing included: the
    length of a packet is exactly L{PACKET_OVERHEAD} plus the sum of its
    messages' sizes.

    @raise CodecError: if C{message} cannot be encoded.
    """
    return len(encode_message(message))


def encode_packet(messages: Sequence[Message]) -> bytes:
    """
    One datagram's plaintext carrying C{messages} in order.

    @raise CodecError: if there are more than L{MAX_MESSAGES} messages or
        one of them cannot be encoded.
    """
    if len(messages) > MAX_MESSAGES:
        raise CodecError(f"a packet holds at most {MAX_MESSAGES} messages")
    parts = [bytes((VERSION, len(messages)))]
    parts.extend(encode_message(m) for m in messages)
    return b"".join(parts)


def encode_push_pull(pp: PushPull) -> bytes:
    """
    A node's full state for the node stream::

        [VERSION u8][join u8][members varint] members x
        ([node][address][incarnation varint][state u8][meta]),
        [user state length varint][user state]

    @raise CodecError: if a member cannot be encoded or the document would
        be larger than L{MAX_PUSH_PULL_SIZE}.
    """
    if not isinstance(pp, PushPull):
        raise CodecError("can only encode a PushPull")
    members = tuple(pp.members)
    if len(members) > MAX_PUSH_PULL_MEMBERS:
        raise CodecError(f"push-pull holds at most {MAX_PUSH_PULL_MEMBERS} members")
    parts = [bytes((VERSION,)), _bool(pp.join), _varint(len(members), "member count")]
    for member in members:
        if not isinstance(member, MemberState):
            raise CodecError("push-pull members must be MemberState")
        try:
            state = State(member.state)
        except ValueError:
            raise CodecError("member state is not a State") from None
        parts.append(_node(member.node, "member node"))
        parts.append(_address(member.addr, "member addr"))
        parts.append(_varint(member.incarnation, "member incarnation"))
        parts.append(bytes((state,)))
        parts.append(_blob(member.meta, "member meta", MAX_META))
    parts.append(_blob(pp.user_state, "user state", MAX_PUSH_PULL_SIZE))
    data = b"".join(parts)
    if len(data) > MAX_PUSH_PULL_SIZE:
        raise CodecError(f"push-pull is larger than {MAX_PUSH_PULL_SIZE} bytes")
    return data


# --- decoding ---------------------------------------------------------------


class _Reader:
    """
    A cursor over untrusted bytes; every read checks bounds and raises
    L{CodecError}.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise CodecError(f"truncated {what}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise CodecError(f"truncated {what}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self, what: str, limit: int = MAX_UINT32) -> int:
        value = 0
        shift = 0
        while True:
            b = self.byte(what)
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 28:
                # Five bytes carry 35 bits; more is never a u32.
                raise CodecError(f"{what} varint too long")
        if shift and b == 0:
            # A trailing zero group: an overlong (non-canonical) encoding,
            # refused so that every accepted packet has one encoding.
            raise CodecError(f"{what} varint not in shortest form")
        if value > limit:
            raise CodecError(f"{what} out of range")
        return value

    def boolean(self, what: str) -> bool:
        b = self.byte(what)
        if b > 1:
            raise CodecError(f"{what} is not a boolean")
        return b == 1

    def node(self, what: str) -> str:
        n = self.byte(what)
        if n == 0 or n > 63:
            raise CodecError(f"{what} length out of range")
        raw = self.take(n, what)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise CodecError(f"{what} is not a valid node id") from None
        if NODE_ID.match(text) is None:
            raise CodecError(f"{what} is not a valid node id")
        return text

    def address(self, what: str) -> Address:
        family = self.byte(what)
        if family == _FAMILY_IPV4:
            host = _unpack_ipv4(self.take(4, what))
        elif family == _FAMILY_IPV6:
            host = _unpack_ipv6(self.take(16, what))
        else:
            raise CodecError(f"{what} has an unknown address family")
        port = int.from_bytes(self.take(2, what), "big")
        return Address(host, port)

    def blob(self, what: str, limit: int) -> bytes:
        n = self.varint(what, limit)
        return self.take(n, what)


@functools.lru_cache(maxsize=4096)
def _unpack_ipv4(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


@functools.lru_cache(maxsize=4096)
def _unpack_ipv6(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


def _decode_ping(r: _Reader) -> Ping:
    seq = r.varint("seq")
    target = r.node("target")
    source = r.node("source")
    return Ping(seq, target, source, r.address("source_addr"))


def _decode_indirect_ping(r: _Reader) -> IndirectPing:
    seq = r.varint("seq")
    target = r.node("target")
    target_addr = r.address("target_addr")
    nack = r.boolean("nack")
    source = r.node("source")
    return IndirectPing(seq, target, target_addr, nack, source, r.address("source_addr"))


def _decode_ack(r: _Reader) -> Ack:
    return Ack(r.varint("seq"))


def _decode_nack(r: _Reader) -> Nack:
    return Nack(r.varint("seq"))


def _decode_alive(r: _Reader) -> Alive:
    incarnation = r.varint("incarnation")
    node = r.node("node")
    addr = r.address("addr")
    return Alive(incarnation, node, addr, r.blob("meta", MAX_META))


def _decode_suspect(r: _Reader) -> Suspect:
    incarnation = r.varint("incarnation")
    node = r.node("node")
    return Suspect(incarnation, node, r.node("sender"))


def _decode_dead(r: _Reader) -> Dead:
    incarnation = r.varint("incarnation")
    node = r.node("node")
    return Dead(incarnation, node, r.node("sender"))


def _decode_user(r: _Reader) -> User:
    return User(r.blob("user payload", MAX_USER_PAYLOAD))


_DECODERS: Dict[int, Callable[[_Reader], Message]] = {
    TYPE_PING: _decode_ping,
    TYPE_INDIRECT_PING: _decode_indirect_ping,
    TYPE_ACK: _decode_ack,
    TYPE_NACK: _decode_nack,
    TYPE_ALIVE: _decode_alive,
    TYPE_SUSPECT: _decode_suspect,
    TYPE_DEAD: _decode_dead,
    TYPE_USER: _decode_user,
}


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise CodecError("data must be bytes")


def decode_packet(data: bytes) -> Tuple[Message, ...]:
    """
    The messages of one packet, in order.

    @raise CodecError: if C{data} is not exactly one valid packet.
    """
    r = _Reader(_as_bytes(data))
    version = r.byte("version")
    if version != VERSION:
        raise CodecError(f"unsupported packet version {version}")
    count = r.byte("message count")
    messages: List[Message] = []
    for _ in range(count):
        kind = r.byte("message type")
        decoder = _DECODERS.get(kind)
        if decoder is None:
            raise CodecError(f"unknown message type {kind}")
        messages.append(decoder(r))
    if r.remaining():
        raise CodecError("trailing bytes after the last message")
    return tuple(messages)


def decode_push_pull(data: bytes, max_size: int = MAX_PUSH_PULL_SIZE) -> PushPull:
    """
    A peer's full state, as L{encode_push_pull} wrote it.

    @param max_size: refuse documents larger than this many bytes.

    @raise CodecError: if C{data} is larger than C{max_size} or not exactly
        one valid push-pull document.
    """
    data = _as_bytes(data)
    if len(data) > max_size:
        raise CodecError(f"push-pull is larger than {max_size} bytes")
    r = _Reader(data)
    version = r.byte("version")
    if version != VERSION:
        raise CodecError(f"unsupported push-pull version {version}")
    join = r.boolean("join")
    count = r.varint("member count", MAX_PUSH_PULL_MEMBERS)
    if count * _MIN_MEMBER_SIZE > r.remaining():
        raise CodecError("member count larger than the data can hold")
    members: List[MemberState] = []
    for _ in range(count):
        node = r.node("member node")
        addr = r.address("member addr")
        incarnation = r.varint("member incarnation")
        raw_state = r.byte("member state")
        try:
            state = State(raw_state)
        except ValueError:
            raise CodecError(f"unknown member state {raw_state}") from None
        meta = r.blob("member meta", MAX_META)
        members.append(MemberState(node, addr, incarnation, state, meta))
    user_state = r.blob("user state", max_size)
    if r.remaining():
        raise CodecError("trailing bytes after the user state")
    return PushPull(join, tuple(members), user_state)


__all__: Sequence[str] = [
    "VERSION",
    "PACKET_OVERHEAD",
    "MAX_MESSAGES",
    "MAX_PACKET_SIZE",
    "MAX_USER_PAYLOAD",
    "MAX_PUSH_PULL_SIZE",
    "MAX_PUSH_PULL_MEMBERS",
    "MAX_UINT32",
    "NODE_ID",
    "CodecError",
    "valid_node_id",
    "encode_message",
    "message_size",
    "encode_packet",
    "decode_packet",
    "encode_push_pull",
    "decode_push_pull",
]
