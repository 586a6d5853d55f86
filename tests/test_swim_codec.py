"""
Tests for L{caxton.swim.codec}: the SWIM wire format.
"""

from __future__ import annotations

from typing import List

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from caxton.swim.codec import (
    MAX_MESSAGES,
    MAX_PUSH_PULL_SIZE,
    MAX_USER_PAYLOAD,
    PACKET_OVERHEAD,
    VERSION,
    CodecError,
    decode_packet,
    decode_push_pull,
    encode_message,
    encode_packet,
    encode_push_pull,
    message_size,
    valid_node_id,
)
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

# --- strategies -------------------------------------------------------------

node_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
ports = st.integers(min_value=0, max_value=65535)
hosts = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
addresses = st.builds(Address, hosts, ports)
metas = st.binary(max_size=MAX_META)

pings = st.builds(Ping, u32, node_ids, node_ids, addresses)
indirect_pings = st.builds(
    IndirectPing, u32, node_ids, addresses, st.booleans(), node_ids, addresses
)
acks = st.builds(Ack, u32)
nacks = st.builds(Nack, u32)
alives = st.builds(Alive, u32, node_ids, addresses, metas)
suspects = st.builds(Suspect, u32, node_ids, node_ids)
deads = st.builds(Dead, u32, node_ids, node_ids)
users = st.builds(User, st.binary(max_size=MAX_USER_PAYLOAD))

messages = st.one_of(
    pings, indirect_pings, acks, nacks, alives, suspects, deads, users
)
# Packets of a realistic size (the codec itself does not budget bytes).
small_messages = st.one_of(
    pings,
    indirect_pings,
    acks,
    nacks,
    st.builds(Alive, u32, node_ids, addresses, st.binary(max_size=64)),
    suspects,
    deads,
    st.builds(User, st.binary(max_size=64)),
)
packets = st.lists(small_messages, max_size=12)

member_states = st.builds(
    MemberState, node_ids, addresses, u32, st.sampled_from(State), metas
)
push_pulls = st.builds(
    PushPull,
    st.booleans(),
    st.lists(member_states, max_size=8).map(tuple),
    st.binary(max_size=2048),
)

HERE = Address("10.0.0.1", 7946)
THERE = Address("10.0.0.2", 7946)


def _valid_packet() -> bytes:
    """
    A packet holding one message of every type.
    """
    return encode_packet(
        [
            Ping(70000, "node-b", "node-a", HERE),
            IndirectPing(5, "node-c", Address("fd00::3", 7946), True, "node-a", HERE),
            Ack(5),
            Nack(6),
            Alive(2, "node-a", HERE, b"role=web"),
            Suspect(3, "node-c", "node-a"),
            Dead(4, "node-c", "node-b"),
            User(b"registry news"),
        ]
    )


class RoundTripTests(SynchronousTestCase):
    """
    Whatever is encoded decodes to an equal value.
    """

    @given(messages)
    def test_every_message_type(self, message: Message) -> None:
        """
        Any valid message of any type survives a packet round trip
        unchanged, host strings included (the strategy makes canonical
        ones).
        """
        self.assertEqual(decode_packet(encode_packet([message])), (message,))

    @given(packets)
    def test_packets(self, batch: List[Message]) -> None:
        """
        A packet of several messages decodes to the same messages in the
        same order.
        """
        self.assertEqual(decode_packet(encode_packet(batch)), tuple(batch))

    def test_empty_packet(self) -> None:
        """
        A packet without messages is just the version and a zero count,
        L{PACKET_OVERHEAD} bytes.
        """
        data = encode_packet([])
        self.assertEqual(data, bytes((VERSION, 0)))
        self.assertEqual(len(data), PACKET_OVERHEAD)
        self.assertEqual(decode_packet(data), ())

    def test_most_messages(self) -> None:
        """
        A packet holds up to L{MAX_MESSAGES} (255) messages, and one more is
        refused when encoding: memberlist's compound framing broke on this
        edge for years (notes/swim.md 7).
        """
        batch = [Ack(i) for i in range(MAX_MESSAGES)]
        self.assertEqual(decode_packet(encode_packet(batch)), tuple(batch))
        self.assertRaises(CodecError, encode_packet, batch + [Ack(0)])

    @given(push_pulls)
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_push_pull(self, pp: PushPull) -> None:
        """
        A push-pull document decodes to an equal L{PushPull}, member states
        as L{State} values.
        """
        decoded = decode_push_pull(encode_push_pull(pp))
        self.assertEqual(decoded, pp)
        for member in decoded.members:
            self.assertIsInstance(member.state, State)

    def test_host_canonical_form(self) -> None:
        """
        A host is carried as packed bytes, so it comes back in its
        canonical text form: the same address, written the standard way.
        """
        alive = Alive(1, "n1", Address("2001:DB8:0:0::1", 5), b"")
        (decoded,) = decode_packet(encode_packet([alive]))
        self.assertEqual(decoded.addr, Address("2001:db8::1", 5))

    def test_state_as_plain_int(self) -> None:
        """
        A member state given as a plain int of a valid L{State} is encoded
        and decoded as that L{State}.
        """
        pp = PushPull(False, (MemberState("n1", HERE, 1, 2),))  # type: ignore[arg-type]
        self.assertIs(decode_push_pull(encode_push_pull(pp)).members[0].state, State.DEAD)


class WireFormatTests(SynchronousTestCase):
    """
    The bytes themselves: pinned so that a change to the format is a
    deliberate one (with a new L{VERSION}), and small.
    """

    def test_ping_bytes(self) -> None:
        """
        A ping is its type byte, the varint sequence number, two
        length-prefixed ids and the family, packed IPv4 and port.
        """
        data = encode_message(Ping(300, "b", "a", Address("10.0.0.1", 7946)))
        self.assertEqual(
            data, b"\x00" + b"\xac\x02" + b"\x01b" + b"\x01a" + b"\x04\x0a\x00\x00\x01\x1f\x0a"
        )

    def test_alive_ipv6_bytes(self) -> None:
        """
        An alive carries incarnation, id, an IPv6 address as 16 packed bytes
        and length-prefixed meta.
        """
        data = encode_message(Alive(1, "n", Address("::1", 1), b"m"))
        self.assertEqual(
            data, b"\x04\x01\x01n\x06" + b"\x00" * 15 + b"\x01\x00\x01" + b"\x01m"
        )

    def test_small_messages(self) -> None:
        """
        Probes with typical ids stay small: a ping between host-named nodes
        about 30 bytes (13 plus the two ids' lengths plus the address), an
        ack a handful, so steady-state traffic fits the per-node budget.
        """
        ping = Ping(123456, "web-07", "web-12", Address("10.1.2.3", 7946))
        self.assertEqual(len(encode_packet([ping])), 2 + 1 + 3 + 7 + 7 + 7)
        ping = Ping(123456, "caxton-node-07", "caxton-node-12", Address("10.1.2.3", 7946))
        self.assertLessEqual(len(encode_packet([ping])), 45)
        self.assertLessEqual(len(encode_packet([Ack(123456)])), 6)

    def test_type_bytes(self) -> None:
        """
        Type bytes follow memberlist's numbering.
        """
        expected = [0, 1, 2, 11, 4, 3, 5, 8]
        packet = _valid_packet()
        offsets = []
        pos = PACKET_OVERHEAD
        for message in decode_packet(packet):
            offsets.append(packet[pos])
            pos += message_size(message)
        self.assertEqual(offsets, expected)


class SizeTests(SynchronousTestCase):
    """
    L{message_size} is exact, so the core can fill packets to the budget.
    """

    @given(packets)
    def test_sizes_add_up(self, batch: List[Message]) -> None:
        """
        A packet's length is L{PACKET_OVERHEAD} plus the sum of its
        messages' sizes.
        """
        self.assertEqual(
            len(encode_packet(batch)),
            PACKET_OVERHEAD + sum(message_size(m) for m in batch),
        )

    @given(messages)
    def test_size_is_encoding(self, message: Message) -> None:
        """
        A message's size is the length of its encoding inside a packet.
        """
        self.assertEqual(message_size(message), len(encode_message(message)))

    def test_largest_user_payload_fits(self) -> None:
        """
        A packet holding the largest user payload alone is exactly the
        1400-byte budget before the envelope.
        """
        self.assertEqual(len(encode_packet([User(b"x" * MAX_USER_PAYLOAD)])), 1400)


class EncodeValidationTests(SynchronousTestCase):
    """
    Encoding refuses what the wire cannot carry, with L{CodecError}.
    """

    def test_bad_node_ids(self) -> None:
        """
        Empty, too long, non-ASCII, badly started and non-string ids are
        refused, in every id field.
        """
        for bad in ["", "x" * 64, "nöde", "-lead", "a b", "a:b", 7, None]:
            for message in [
                Ping(1, bad, "a", HERE),  # type: ignore[arg-type]
                Ping(1, "a", bad, HERE),  # type: ignore[arg-type]
                Suspect(1, "a", bad),  # type: ignore[arg-type]
                Dead(1, bad, "a"),  # type: ignore[arg-type]
                Alive(1, bad, HERE),  # type: ignore[arg-type]
            ]:
                self.assertRaises(CodecError, encode_packet, [message])
        self.assertTrue(valid_node_id("x" * 63))
        self.assertFalse(valid_node_id("x" * 64))

    def test_bad_integers(self) -> None:
        """
        Negative, too large (over u32), boolean and non-integer sequence
        numbers and incarnations are refused, even right after an equal
        valid value (C{Ack(True) == Ack(1)}) was encoded.
        """
        message_size(Ack(1))
        for bad in [-1, 2**32, True, 1.0, "1", None]:
            self.assertRaises(CodecError, message_size, Ack(bad))  # type: ignore[arg-type]
            suspect = Suspect(bad, "a", "b")  # type: ignore[arg-type]
            self.assertRaises(CodecError, message_size, suspect)

    def test_bad_addresses(self) -> None:
        """
        Host names, scoped IPv6 addresses, non-Address values and ports
        outside 0..65535 are refused: the wire carries packed IPs only.
        """
        for addr in [
            Address("localhost", 1),
            Address("fe80::1%eth0", 1),
            Address("10.0.0.1", -1),
            Address("10.0.0.1", 65536),
            Address("10.0.0.1", "80"),  # type: ignore[arg-type]
            ("10.0.0.1", 80),
        ]:
            self.assertRaises(
                CodecError, encode_packet, [Ping(1, "a", "b", addr)]  # type: ignore[arg-type]
            )

    def test_oversized_fields(self) -> None:
        """
        Meta over L{MAX_META} and user payloads over L{MAX_USER_PAYLOAD} are
        refused; at the limit they are fine.
        """
        message_size(Alive(1, "a", HERE, b"m" * MAX_META))
        self.assertRaises(CodecError, message_size, Alive(1, "a", HERE, b"m" * (MAX_META + 1)))
        self.assertRaises(CodecError, message_size, User(b"u" * (MAX_USER_PAYLOAD + 1)))
        text_meta = Alive(1, "a", HERE, "text")  # type: ignore[arg-type]
        self.assertRaises(CodecError, message_size, text_meta)

    def test_unhashable_meta(self) -> None:
        """
        A bytearray meta is encoded like bytes.
        """
        self.assertEqual(
            encode_message(Alive(1, "a", HERE, bytearray(b"m"))),  # type: ignore[arg-type]
            encode_message(Alive(1, "a", HERE, b"m")),
        )

    def test_not_a_message(self) -> None:
        """
        Anything that is not one of the message classes is refused.
        """
        self.assertRaises(CodecError, encode_packet, [object()])  # type: ignore[list-item]
        self.assertRaises(CodecError, encode_packet, [HERE])  # type: ignore[list-item]

    def test_bad_push_pull(self) -> None:
        """
        Push-pull refuses non-member entries, unknown states and invalid
        member fields.
        """
        for members in [
            ("member",),
            (MemberState("a", HERE, 1, 9),),  # type: ignore[arg-type]
            (MemberState("", HERE, 1, State.ALIVE),),
            (MemberState("a", HERE, -1, State.ALIVE),),
        ]:
            self.assertRaises(
                CodecError, encode_push_pull, PushPull(False, members)  # type: ignore[arg-type]
            )
        self.assertRaises(CodecError, encode_push_pull, "state")  # type: ignore[arg-type]


def _flip(data: bytes, index: int, bit: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


class DecodeRejectionTests(SynchronousTestCase):
    """
    Decoding raises L{CodecError}, and nothing else, on anything that is
    not exactly a valid packet; whatever it accepts is canonical.
    """

    def assertRejected(self, data: bytes) -> None:
        self.assertRaises(CodecError, decode_packet, data)

    def assertCanonicalOrRejected(self, data: bytes) -> None:
        """
        C{data} either raises L{CodecError} or decodes to messages that
        encode back to exactly C{data}.  Any other exception fails the test.
        """
        try:
            decoded = decode_packet(data)
        except CodecError:
            return
        self.assertEqual(encode_packet(decoded), data)

    @given(st.binary(max_size=300))
    @settings(max_examples=500)
    def test_random_bytes(self, data: bytes) -> None:
        """
        Random bytes are refused with L{CodecError} or, rarely, are a valid
        packet that re-encodes to themselves.
        """
        self.assertCanonicalOrRejected(data)

    @given(st.binary(max_size=300))
    @settings(max_examples=300)
    def test_random_bytes_after_header(self, data: bytes) -> None:
        """
        Random bodies behind a valid version byte and count, which reach
        the message decoders, are refused with L{CodecError} or canonical.
        """
        for count in (1, 2, 255):
            self.assertCanonicalOrRejected(bytes((VERSION, count)) + data)

    @given(packets.filter(bool))
    def test_truncations(self, batch: List[Message]) -> None:
        """
        Every proper prefix of a valid, non-empty packet is refused.
        """
        data = encode_packet(batch)
        for end in range(len(data)):
            self.assertRejected(data[:end])

    def test_truncations_of_every_type(self) -> None:
        """
        Every proper prefix of a packet holding each message type is
        refused: truncation is caught in every field decoder.
        """
        data = _valid_packet()
        for end in range(len(data)):
            self.assertRejected(data[:end])

    def test_bit_flips(self) -> None:
        """
        Every single-bit flip of a packet holding each message type is
        refused with L{CodecError} or decodes to a packet that re-encodes
        to the flipped bytes (a flip inside a payload or a port is just
        another valid packet); never another exception.
        """
        data = _valid_packet()
        for index in range(len(data)):
            for bit in range(8):
                self.assertCanonicalOrRejected(_flip(data, index, bit))

    @given(packets, st.data())
    def test_random_bit_flips(self, batch: List[Message], data: st.DataObject) -> None:
        """
        Random multi-bit damage to random packets is refused or canonical.
        """
        packet = bytearray(encode_packet(batch))
        for _ in range(data.draw(st.integers(1, 4))):
            index = data.draw(st.integers(0, len(packet) - 1))
            packet[index] ^= data.draw(st.integers(1, 255))
        self.assertCanonicalOrRejected(bytes(packet))

    @given(packets, st.binary(min_size=1, max_size=8))
    def test_trailing_bytes(self, batch: List[Message], extra: bytes) -> None:
        """
        Bytes after the last message are refused.
        """
        self.assertRejected(encode_packet(batch) + extra)

    def test_wrong_version(self) -> None:
        """
        A packet of any other version is refused.
        """
        data = encode_packet([Ack(1)])
        for version in (0, VERSION + 1, 255):
            self.assertRejected(bytes((version,)) + data[1:])

    def test_count_larger_than_content(self) -> None:
        """
        A count that promises more messages than the packet holds is
        refused.
        """
        data = bytearray(encode_packet([Ack(1), Ack(2)]))
        data[1] = 3
        self.assertRejected(bytes(data))

    def test_unknown_type(self) -> None:
        """
        Type bytes outside the known set (push-pull's 6 included) are
        refused.
        """
        for kind in (6, 7, 9, 10, 12, 13, 200, 244, 255):
            self.assertRejected(bytes((VERSION, 1, kind, 1)))

    def test_bad_boolean(self) -> None:
        """
        An indirect ping whose nack flag is neither 0 nor 1 is refused.
        """
        message = IndirectPing(1, "t", HERE, True, "s", THERE)
        data = bytearray(encode_packet([message]))
        flag = PACKET_OVERHEAD + 1 + 1 + 2 + 7
        self.assertEqual(data[flag], 1)
        data[flag] = 2
        self.assertRejected(bytes(data))

    def test_varints(self) -> None:
        """
        Sequence numbers must be canonical varints of at most 32 bits:
        overlong forms, values over u32 and endless continuation bytes are
        refused, and the largest u32 is accepted.
        """
        head = bytes((VERSION, 1, 2))
        self.assertEqual(decode_packet(head + b"\xff\xff\xff\xff\x0f"), (Ack(2**32 - 1),))
        self.assertRejected(head + b"\x80\x00")  # 0, overlong
        self.assertRejected(head + b"\x81\x80\x00")  # 1, overlong
        self.assertRejected(head + b"\x80\x80\x80\x80\x10")  # 2**32
        self.assertRejected(head + b"\xff" * 6 + b"\x01")  # too many bytes
        self.assertRejected(head + b"\xff" * 2000)

    def test_bad_node_ids(self) -> None:
        """
        Ids of length 0 or over 63, non-ASCII or UTF-8 ids and ids with
        forbidden characters are refused.
        """
        tail = b"\x01a" + b"\x04\x0a\x00\x00\x01\x00\x01"
        head = bytes((VERSION, 1, 0, 1))
        self.assertEqual(len(decode_packet(head + b"\x01b" + tail)), 1)
        bad_ids = [b"\x00", b"\x40" + b"x" * 64, b"\x02\xc3\xa9", b"\x01\xff", b"\x01-", b"\x03a b"]
        for node in bad_ids:
            self.assertRejected(head + node + tail)

    def test_bad_address(self) -> None:
        """
        Unknown address families are refused, and a family must be followed
        by its full length of address bytes.
        """
        head = bytes((VERSION, 1, 0, 1, 1, ord("b"), 1, ord("a")))
        self.assertEqual(len(decode_packet(head + b"\x04\x0a\x00\x00\x01\x00\x01")), 1)
        for family in (0, 5, 10, 255):
            self.assertRejected(head + bytes((family,)) + b"\x0a\x00\x00\x01\x00\x01")
        self.assertRejected(head + b"\x06\x0a\x00\x00\x01\x00\x01")

    def test_oversized_meta(self) -> None:
        """
        Meta claiming more than L{MAX_META} bytes is refused, even when that
        many bytes follow.
        """
        alive = encode_packet([Alive(1, "a", HERE, b"")])[:-1]
        too_big = MAX_META + 1
        self.assertRejected(alive + bytes((0x80 | (too_big & 0x7F), too_big >> 7)) + b"m" * too_big)

    def test_oversized_user(self) -> None:
        """
        A user payload claiming more than L{MAX_USER_PAYLOAD} bytes is
        refused.
        """
        n = MAX_USER_PAYLOAD + 1
        self.assertRejected(bytes((VERSION, 1, 8, 0x80 | (n & 0x7F), n >> 7)) + b"u" * n)

    def test_not_bytes(self) -> None:
        """
        Text and other non-bytes inputs are refused with L{CodecError};
        bytearray and memoryview are read like bytes.
        """
        self.assertRaises(CodecError, decode_packet, "\x01\x00")  # type: ignore[arg-type]
        self.assertRaises(CodecError, decode_packet, None)  # type: ignore[arg-type]
        data = encode_packet([Ack(1)])
        self.assertEqual(decode_packet(bytearray(data)), (Ack(1),))
        self.assertEqual(decode_packet(memoryview(data)), (Ack(1),))


class PushPullRejectionTests(SynchronousTestCase):
    """
    L{decode_push_pull} refuses garbage with L{CodecError} only and bounds
    what it accepts.
    """

    def _valid(self) -> bytes:
        return encode_push_pull(
            PushPull(
                True,
                (
                    MemberState("a", HERE, 1, State.ALIVE, b"meta"),
                    MemberState("b", Address("fd00::2", 7946), 7, State.SUSPECT),
                    MemberState("c", THERE, 2, State.LEFT),
                ),
                b"registry",
            )
        )

    def assertCanonicalOrRejected(self, data: bytes) -> None:
        try:
            decoded = decode_push_pull(data)
        except CodecError:
            return
        self.assertEqual(encode_push_pull(decoded), data)

    @given(st.binary(max_size=400))
    @settings(max_examples=300)
    def test_random_bytes(self, data: bytes) -> None:
        """
        Random bytes are refused with L{CodecError} or are canonical.
        """
        self.assertCanonicalOrRejected(data)
        self.assertCanonicalOrRejected(bytes((VERSION, 0)) + data)

    def test_truncations(self) -> None:
        """
        Every proper prefix of a valid document is refused.
        """
        data = self._valid()
        for end in range(len(data)):
            self.assertRaises(CodecError, decode_push_pull, data[:end])

    def test_bit_flips(self) -> None:
        """
        Every single-bit flip of a valid document is refused or canonical.
        """
        data = self._valid()
        for index in range(len(data)):
            for bit in range(8):
                self.assertCanonicalOrRejected(_flip(data, index, bit))

    def test_max_size(self) -> None:
        """
        A document larger than C{max_size} is refused before it is parsed;
        at the limit it is accepted.
        """
        data = self._valid()
        decode_push_pull(data, max_size=len(data))
        self.assertRaises(CodecError, decode_push_pull, data, max_size=len(data) - 1)
        self.assertRaises(CodecError, decode_push_pull, b"\x00" * (MAX_PUSH_PULL_SIZE + 1))

    def test_member_count_bounded(self) -> None:
        """
        A member count the data cannot hold (here a million members in a
        few bytes) is refused at once, not looped over.
        """
        self.assertRaises(
            CodecError, decode_push_pull, bytes((VERSION, 0)) + b"\xc0\x84\x3d" + b"\x00"
        )

    def test_bad_state_and_join(self) -> None:
        """
        Member states outside L{State} and join flags other than 0 or 1 are
        refused.
        """
        pp = PushPull(False, (MemberState("a", HERE, 1, State.ALIVE),))
        data = bytearray(encode_push_pull(pp))
        state_at = 3 + 2 + 7 + 1
        self.assertEqual(data[state_at], State.ALIVE)
        for bad in (4, 255):
            data[state_at] = bad
            self.assertRaises(CodecError, decode_push_pull, bytes(data))
        data = bytearray(encode_push_pull(pp))
        data[1] = 2
        self.assertRaises(CodecError, decode_push_pull, bytes(data))

    def test_trailing_and_version(self) -> None:
        """
        Trailing bytes and other versions are refused.
        """
        data = self._valid()
        self.assertRaises(CodecError, decode_push_pull, data + b"\x00")
        self.assertRaises(CodecError, decode_push_pull, bytes((VERSION + 1,)) + data[1:])

    def test_user_state_large(self) -> None:
        """
        User state well beyond a packet's size travels in push-pull.
        """
        pp = PushPull(False, (), b"s" * 100_000)
        self.assertEqual(decode_push_pull(encode_push_pull(pp)), pp)


class FuzzSurvivalTests(SynchronousTestCase):
    """
    A broad fuzz over damaged valid packets, drawn by Hypothesis.
    """

    @given(messages, st.integers(0, 2**16), st.integers(0, 7))
    @settings(max_examples=300)
    def test_flip_any_message(self, message: Message, where: int, bit: int) -> None:
        """
        Flipping one bit anywhere in a one-message packet of any type is
        refused with L{CodecError} or canonical.
        """
        data = encode_packet([message])
        index = where % len(data)
        damaged = _flip(data, index, bit)
        assume(damaged != data)
        try:
            decoded = decode_packet(damaged)
        except CodecError:
            return
        self.assertEqual(encode_packet(decoded), damaged)
