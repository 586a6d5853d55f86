"""
Tests for L{caxton.swim.keyring}: the gossip keyring and the datagram
envelope with replay protection.
"""

from __future__ import annotations

import base64
import os
from typing import List, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from caxton.swim.codec import MAX_PACKET_SIZE, encode_packet
from caxton.swim.keyring import (
    ENVELOPE_AES_GCM,
    ENVELOPE_PLAINTEXT,
    DropReason,
    Dropped,
    Envelope,
    EnvelopeError,
    Keyring,
    KeyringError,
    ReplayFilter,
    decode_key,
    generate_key,
)
from caxton.swim.messages import Ack, Address, Ping

KEY_A = b"a" * 32
KEY_B = b"b" * 16
KEY_C = b"c" * 24

PACKET = encode_packet([Ping(7, "node-b", "node-a", Address("10.0.0.1", 7946)), Ack(3)])


def _envelope(
    node_id: str = "node-a",
    keys: Optional[List[bytes]] = None,
    cluster: str = "prod",
    clock: Optional[Clock] = None,
    epoch_ms: Optional[int] = 1000,
    **kwargs: object,
) -> Envelope:
    keyring = Keyring(keys if keys is not None else [KEY_A])
    return Envelope(
        node_id,
        cluster,
        keyring,
        clock or Clock(),
        epoch_ms=epoch_ms,
        **kwargs,  # type: ignore[arg-type]
    )


class KeyringTests(SynchronousTestCase):
    """
    L{Keyring} holds AES keys, primary first, and rotates them like
    memberlist's.
    """

    def test_key_sizes(self) -> None:
        """
        16, 24 and 32-byte keys are accepted; other sizes, text and an
        empty keyring are refused with L{KeyringError}.
        """
        self.assertEqual(Keyring([KEY_A, KEY_B, KEY_C]).keys, (KEY_A, KEY_B, KEY_C))
        for bad in ([b"x" * 15], [b"x" * 33], [b""], ["a" * 32], []):
            self.assertRaises(KeyringError, Keyring, bad)

    def test_duplicates_kept_once(self) -> None:
        """
        A key given twice, or added again, is installed once.
        """
        ring = Keyring([KEY_A, KEY_A])
        ring.add_key(KEY_A)
        self.assertEqual(ring.keys, (KEY_A,))

    def test_add_use_remove(self) -> None:
        """
        C{add_key} installs a decryption key, C{use_key} makes an installed
        key primary, C{remove_key} uninstalls any key but the primary;
        using a missing key and removing the primary are refused.
        """
        ring = Keyring([KEY_A])
        ring.add_key(KEY_B)
        self.assertEqual(ring.primary, KEY_A)
        ring.use_key(KEY_B)
        self.assertEqual(ring.keys, (KEY_B, KEY_A))
        self.assertRaises(KeyringError, ring.use_key, KEY_C)
        self.assertRaises(KeyringError, ring.remove_key, KEY_B)
        ring.remove_key(KEY_A)
        ring.remove_key(KEY_C)  # not installed: nothing happens
        self.assertEqual(ring.keys, (KEY_B,))
        self.assertRaises(KeyringError, ring.add_key, b"short")

    def test_repr_hides_keys(self) -> None:
        """
        A keyring's repr does not contain its keys in any form.
        """
        key = os.urandom(32)
        text = repr(Keyring([key]))
        self.assertNotIn(repr(key), text)
        self.assertNotIn(base64.b64encode(key).decode(), text)
        self.assertNotIn(key.hex(), text)

    def test_generate_key(self) -> None:
        """
        L{generate_key} returns base64 of 32 random bytes, a new one each
        time, which L{decode_key} reads back.
        """
        first, second = generate_key(), generate_key()
        self.assertNotEqual(first, second)
        self.assertEqual(len(decode_key(first)), 32)
        self.assertEqual(len(base64.b64decode(first)), 32)

    def test_decode_key_refuses(self) -> None:
        """
        Non-base64 text and base64 of a wrong-sized key are refused.
        """
        self.assertRaises(KeyringError, decode_key, "not base64!")
        self.assertRaises(KeyringError, decode_key, base64.b64encode(b"x" * 20).decode())

    def test_from_file(self) -> None:
        """
        A key file holds one base64 key per line, primary first; blank
        lines and comments are skipped.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# gossip keys\n\n")
            for key in (KEY_B, KEY_A):
                f.write(base64.b64encode(key).decode() + "\n")
        self.assertEqual(Keyring.from_file(path).keys, (KEY_B, KEY_A))

    def test_from_file_errors(self) -> None:
        """
        An empty key file, or one with a bad line, is refused with the line
        number but without the line's content.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# nothing\n")
        self.assertRaises(KeyringError, Keyring.from_file, path)
        secret = base64.b64encode(b"s" * 20).decode()
        with open(path, "w") as f:
            f.write(base64.b64encode(KEY_A).decode() + "\n" + secret + "\n")
        error = self.assertRaises(KeyringError, Keyring.from_file, path)
        self.assertIn("line 2", str(error))
        self.assertNotIn(secret, str(error))


class SealTests(SynchronousTestCase):
    """
    Sealing and opening encrypted datagrams.
    """

    def test_round_trip(self) -> None:
        """
        A sealed packet opens to the same packet at a peer with the same key
        and cluster name, and the datagram does not contain it in clear.
        """
        datagram = _envelope("node-a").seal(PACKET)
        self.assertEqual(datagram[0], ENVELOPE_AES_GCM)
        self.assertNotIn(b"node-b", datagram)
        self.assertEqual(_envelope("node-b").open(datagram), PACKET)

    @given(st.binary(max_size=MAX_PACKET_SIZE - 100))
    @settings(max_examples=50)
    def test_round_trip_any_packet(self, packet: bytes) -> None:
        """
        Any payload within the budget round-trips; the envelope does not
        interpret the packet.
        """
        self.assertEqual(_envelope("node-b").open(_envelope().seal(packet)), packet)

    def test_overhead_exact(self) -> None:
        """
        C{overhead} is exactly what sealing adds: version, nonce, tag, the
        length-prefixed sender id, epoch and counter; one byte in plaintext.
        """
        envelope = _envelope("node-a")
        self.assertEqual(envelope.overhead, 1 + 12 + 16 + 1 + 6 + 8 + 8)
        self.assertEqual(len(envelope.seal(PACKET)), len(PACKET) + envelope.overhead)
        plain = Envelope("node-a", "prod", None, Clock())
        self.assertEqual(plain.overhead, 1)
        self.assertEqual(len(plain.seal(PACKET)), len(PACKET) + 1)

    def test_budget(self) -> None:
        """
        A packet that would make the datagram larger than C{max_datagram}
        is refused; one that fills it exactly is sealed.
        """
        envelope = _envelope()
        self.assertEqual(len(envelope.seal(b"p" * envelope.max_packet)), MAX_PACKET_SIZE)
        self.assertRaises(EnvelopeError, envelope.seal, b"p" * (envelope.max_packet + 1))

    def test_fresh_nonces(self) -> None:
        """
        Sealing the same packet twice gives different datagrams (new nonce,
        next counter).
        """
        envelope = _envelope()
        self.assertNotEqual(envelope.seal(PACKET)[:13], envelope.seal(PACKET)[:13])

    def test_wrong_key(self) -> None:
        """
        A datagram under a key the receiver does not hold is dropped as
        UNAUTHENTICATED.
        """
        datagram = _envelope(keys=[KEY_A]).seal(PACKET)
        error = self.assertRaises(Dropped, _envelope("node-b", keys=[KEY_B]).open, datagram)
        self.assertEqual(error.reason, DropReason.UNAUTHENTICATED)

    def test_other_cluster(self) -> None:
        """
        A datagram of another cluster, under the same key, is dropped as
        UNAUTHENTICATED: the cluster name is associated data.
        """
        datagram = _envelope(cluster="staging").seal(PACKET)
        error = self.assertRaises(Dropped, _envelope("node-b", cluster="prod").open, datagram)
        self.assertEqual(error.reason, DropReason.UNAUTHENTICATED)

    def test_tampering(self) -> None:
        """
        Flipping any bit after the version byte makes the datagram
        UNAUTHENTICATED; flipping the version byte makes it MALFORMED or
        UNAUTHENTICATED, never opened.
        """
        datagram = _envelope().seal(PACKET)
        receiver = _envelope("node-b")
        for index in range(len(datagram)):
            damaged = bytearray(datagram)
            damaged[index] ^= 0x10
            error = self.assertRaises(Dropped, receiver.open, bytes(damaged))
            if index:
                self.assertEqual(error.reason, DropReason.UNAUTHENTICATED)
            else:
                self.assertIn(error.reason, (DropReason.MALFORMED, DropReason.UNAUTHENTICATED))
        self.assertEqual(receiver.open(datagram), PACKET)

    def test_rotation(self) -> None:
        """
        During a rotation, a node that made the new key primary is
        understood by one that still has the old primary (and the new key
        installed), and the reverse; after the old key is removed, its
        datagrams are UNAUTHENTICATED.
        """
        old = _envelope("node-a", keys=[KEY_A])
        new = _envelope("node-b", keys=[KEY_A])
        old.keyring.add_key(KEY_B)  # type: ignore[union-attr]
        new.keyring.add_key(KEY_B)  # type: ignore[union-attr]
        new.keyring.use_key(KEY_B)  # type: ignore[union-attr]
        self.assertEqual(old.open(new.seal(PACKET)), PACKET)
        self.assertEqual(new.open(old.seal(PACKET)), PACKET)
        new.keyring.remove_key(KEY_A)  # type: ignore[union-attr]
        error = self.assertRaises(Dropped, new.open, old.seal(PACKET))
        self.assertEqual(error.reason, DropReason.UNAUTHENTICATED)

    def test_malformed(self) -> None:
        """
        Empty datagrams, unknown versions and datagrams too short for a
        nonce and tag are MALFORMED.
        """
        receiver = _envelope("node-b")
        for datagram in (b"", b"\x00", b"\x07" + b"x" * 40, bytes((ENVELOPE_AES_GCM,)) + b"x" * 27):
            error = self.assertRaises(Dropped, receiver.open, datagram)
            self.assertEqual(error.reason, DropReason.MALFORMED)

    def test_bad_replay_header(self) -> None:
        """
        An authentic datagram whose replay header is broken (a peer's bug)
        is MALFORMED, and records nothing.
        """
        keyring = Keyring([KEY_A])
        aad = bytes((ENVELOPE_AES_GCM,)) + b"prod"
        receiver = _envelope("node-b")
        for plaintext in (b"", b"\x05ab", b"\x00" + b"\x00" * 16, b"\x02a b" + b"\x00" * 16):
            datagram = bytes((ENVELOPE_AES_GCM,)) + keyring.encrypt(plaintext, aad)
            error = self.assertRaises(Dropped, receiver.open, datagram)
            self.assertEqual(error.reason, DropReason.MALFORMED)
        self.assertEqual(len(receiver.replay), 0)

    def test_too_large(self) -> None:
        """
        A datagram over C{max_datagram} is TOO_LARGE, before any decryption.
        """
        error = self.assertRaises(Dropped, _envelope().open, b"\x02" * (MAX_PACKET_SIZE + 1))
        self.assertEqual(error.reason, DropReason.TOO_LARGE)

    def test_mode_mismatch(self) -> None:
        """
        A plaintext datagram at an encrypting node, and an encrypted one at
        a plaintext node, are UNAUTHENTICATED: the usual sign of a
        half-configured cluster.
        """
        plain = Envelope("node-p", "prod", None, Clock())
        encrypted = _envelope("node-e")
        error = self.assertRaises(Dropped, encrypted.open, plain.seal(PACKET))
        self.assertEqual(error.reason, DropReason.UNAUTHENTICATED)
        error = self.assertRaises(Dropped, plain.open, encrypted.seal(PACKET))
        self.assertEqual(error.reason, DropReason.UNAUTHENTICATED)

    def test_plaintext_mode(self) -> None:
        """
        Without a keyring the datagram is the version byte and the packet;
        replays cannot be detected, so the same datagram opens every time.
        """
        sender = Envelope("node-a", "prod", None, Clock())
        receiver = Envelope("node-b", "prod", None, Clock())
        datagram = sender.seal(PACKET)
        self.assertEqual(datagram, bytes((ENVELOPE_PLAINTEXT,)) + PACKET)
        self.assertEqual(receiver.open(datagram), PACKET)
        self.assertEqual(receiver.open(datagram), PACKET)
        self.assertFalse(receiver.encrypted)
        error = self.assertRaises(Dropped, receiver.open, b"\x09" + PACKET)
        self.assertEqual(error.reason, DropReason.MALFORMED)

    def test_epoch_from_clock(self) -> None:
        """
        Without an explicit epoch, the envelope's epoch is its clock's time
        in milliseconds, read from an L{IReactorTime} or a callable.
        """
        clock = Clock()
        clock.advance(1700000000.25)
        self.assertEqual(_envelope(clock=clock, epoch_ms=None).epoch_ms, 1700000000250)
        envelope = Envelope("n", "c", None, lambda: 2.5)
        self.assertEqual(envelope.epoch_ms, 2500)

    def test_bad_node_id(self) -> None:
        """
        An envelope needs a valid node id for its replay header.
        """
        self.assertRaises(ValueError, Envelope, "bad id", "c", None, Clock())


class ReplayTests(SynchronousTestCase):
    """
    Authentic datagrams are accepted once, within a sliding window, per
    sender and run.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.receiver = _envelope("node-r", clock=self.clock)

    def assertReplayed(self, datagram: bytes) -> None:
        error = self.assertRaises(Dropped, self.receiver.open, datagram)
        self.assertEqual(error.reason, DropReason.REPLAYED)

    def test_replayed_dropped(self) -> None:
        """
        The same datagram a second time is REPLAYED.
        """
        datagram = _envelope("node-a").seal(PACKET)
        self.assertEqual(self.receiver.open(datagram), PACKET)
        self.assertReplayed(datagram)

    def test_reordered_within_window(self) -> None:
        """
        Datagrams arriving out of order within 64 of the newest are all
        accepted once, and each is a replay afterwards.
        """
        sender = _envelope("node-a")
        datagrams = [sender.seal(PACKET) for _ in range(64)]
        for datagram in reversed(datagrams):
            self.assertEqual(self.receiver.open(datagram), PACKET)
        for datagram in datagrams:
            self.assertReplayed(datagram)

    def test_too_old_dropped(self) -> None:
        """
        A datagram 64 or more counters behind the newest of its sender is
        REPLAYED even if never seen: the window cannot tell.
        """
        sender = _envelope("node-a")
        datagrams = [sender.seal(PACKET) for _ in range(65)]
        self.receiver.open(datagrams[64])
        self.assertReplayed(datagrams[0])
        self.assertEqual(self.receiver.open(datagrams[1]), PACKET)

    def test_big_jump(self) -> None:
        """
        After a jump of more than the window, the window restarts at the new
        counter: everything before it is too old.
        """
        sender = _envelope("node-a")
        datagrams = [sender.seal(PACKET) for _ in range(200)]
        self.receiver.open(datagrams[0])
        self.receiver.open(datagrams[199])
        self.assertReplayed(datagrams[199])
        self.assertReplayed(datagrams[100])
        self.assertEqual(self.receiver.open(datagrams[150]), PACKET)

    def test_senders_independent(self) -> None:
        """
        Counters of different senders do not interfere: two nodes both
        sending their first datagram are both accepted.
        """
        self.receiver.open(_envelope("node-a").seal(PACKET))
        self.receiver.open(_envelope("node-b").seal(PACKET))
        self.assertEqual(len(self.receiver.replay), 2)

    def test_new_epoch_resets(self) -> None:
        """
        A restarted sender (newer epoch) is accepted from its counter 1,
        and afterwards its previous run's datagrams are REPLAYED.
        """
        first = _envelope("node-a", epoch_ms=1000)
        early = first.seal(PACKET)
        for _ in range(10):
            self.receiver.open(first.seal(PACKET))
        second = _envelope("node-a", epoch_ms=2000)
        self.assertEqual(self.receiver.open(second.seal(PACKET)), PACKET)
        self.assertReplayed(early)
        self.assertReplayed(first.seal(PACKET))

    def test_older_epoch_after_silence(self) -> None:
        """
        A sender whose epoch went back (its clock stepped back between runs)
        is REPLAYED while its newer run was heard recently, and accepted
        once that run has been silent for the replay window.
        """
        self.receiver.open(_envelope("node-a", epoch_ms=5000).seal(PACKET))
        stepped_back = _envelope("node-a", epoch_ms=4000)
        self.clock.advance(299)
        self.assertReplayed(stepped_back.seal(PACKET))
        self.clock.advance(2)
        self.assertEqual(self.receiver.open(stepped_back.seal(PACKET)), PACKET)
        self.assertReplayed(_envelope("node-a", epoch_ms=3000).seal(PACKET))

    def test_not_recorded_unless_authentic(self) -> None:
        """
        Datagrams that fail authentication leave no replay state.
        """
        self.assertRaises(Dropped, self.receiver.open, _envelope(keys=[KEY_B]).seal(PACKET))
        self.assertEqual(len(self.receiver.replay), 0)

    def test_senders_bounded(self) -> None:
        """
        At most C{max_senders} senders are remembered; the least recently
        heard is forgotten first.
        """
        receiver = _envelope("node-r", max_senders=3)
        early = _envelope("node-0").seal(PACKET)
        receiver.open(early)
        for i in range(1, 4):
            receiver.open(_envelope(f"node-{i}").seal(PACKET))
        self.assertEqual(len(receiver.replay), 3)
        # node-0 was forgotten: its datagram is accepted again (the
        # documented price of a bounded table).
        self.assertEqual(receiver.open(early), PACKET)


class ReplayFilterTests(SynchronousTestCase):
    """
    L{ReplayFilter}'s window arithmetic, directly.
    """

    @given(st.lists(st.integers(1, 300), max_size=80))
    @settings(max_examples=200)
    def test_accepts_each_counter_at_most_once(self, counters: List[int]) -> None:
        """
        Over any arrival order, a counter is accepted at most once, and a
        counter is accepted exactly when it is new and less than 64 behind
        the highest accepted so far.
        """
        replay = ReplayFilter()
        seen: set = set()
        highest = 0
        for counter in counters:
            expected = counter not in seen and (not seen or counter > highest - 64)
            try:
                replay.accept("n", 1, counter, 0.0)
            except Dropped:
                accepted = False
            else:
                accepted = True
            self.assertEqual(accepted, expected, (counter, sorted(seen)))
            if accepted:
                seen.add(counter)
                highest = max(highest, counter)

    def test_future_epoch_refused(self) -> None:
        """
        A datagram claiming its sender started more than a day from now is
        dropped and not recorded, so it cannot shut out the sender's real
        datagrams (a holder of the key forging a huge epoch).
        """
        replay = ReplayFilter()
        now = 1_800_000_000.0
        with self.assertRaises(Dropped) as caught:
            replay.accept("n", 2**63, 1, now)
        self.assertEqual(caught.exception.reason, DropReason.MALFORMED)
        replay.accept("n", int(now * 1000), 1, now)
        self.assertEqual(len(replay), 1)

    def test_bad_bound(self) -> None:
        """
        A filter that remembers no sender is refused.
        """
        self.assertRaises(ValueError, ReplayFilter, max_senders=0)
