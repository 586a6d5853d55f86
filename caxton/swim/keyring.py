# -*- test-case-name: tests.test_swim_keyring -*-
"""
Gossip encryption: the L{Keyring} of AES keys and the L{Envelope} every
SWIM datagram travels in.

Keys
====
A keyring holds AES-128, -192 or -256 keys (16, 24 or 32 bytes).  The first
is the primary: it alone encrypts, and every key decrypts, so keys rotate
without downtime, as in memberlist (notes/swim.md 2.6):

  1. install the new key on every node (L{Keyring.add_key});
  2. make it the primary on every node (L{Keyring.use_key}); nodes still
     on the old primary are understood meanwhile, since both decrypt;
  3. remove the old key everywhere (L{Keyring.remove_key}).

A node that is down during the whole rotation cannot talk to the cluster
when it returns (serf#579): give it the new key file before restarting it.
The key file (L{Keyring.from_file}) holds base64 keys, one per line, the
primary first; L{generate_key} makes one (C{caxton gossip-key}).

Envelope
========
With a keyring, a datagram is::

    [ENVELOPE_AES_GCM u8][nonce: 12 bytes][ciphertext + 16-byte tag]

sealed with AES-GCM under the primary key; the associated data is the
version byte and the cluster name, so a datagram of another cluster (or
one whose version byte was changed) fails authentication like one under an
unknown key.  The authenticated plaintext starts with a replay header::

    [sender id len u8][sender id][epoch u64 BE][counter u64 BE][packet]

The epoch is the sender's start time in milliseconds and the counter counts
its datagrams from 1.  The receiver keeps, per sender, the newest epoch
seen and an IPsec-style sliding window over counters (the highest counter
and a 64-bit bitmap of those below it), and drops a datagram as
L{DropReason.REPLAYED} when:

  - its epoch is older than the one stored for its sender: a capture from
    an earlier run of that node;
  - its counter is 64 or more below the highest seen in its epoch: too old
    to tell apart from a replay;
  - its counter was already seen in the window: a duplicate.

A newer epoch replaces the stored one (the sender restarted), and
reordering within the window is accepted.  State is kept only for
datagrams that authenticated, and for at most C{max_senders} senders (the
least recently heard is forgotten first; a forgotten sender's old
datagrams could be accepted once more).

A node whose clock stepped back between two runs starts with an epoch
older than its previous one, and peers drop its datagrams as replays.  So
that it is not shut out for good, an older epoch is accepted once the
stored entry has been silent for C{replay_window} seconds (300 by
default): the previous run is then presumed gone.  The price is that an
attacker holding datagrams from a node's earlier run can replay them after
that node has been silent for that long; SWIM's incarnation numbers make
such stale news lose anyway.

Without a keyring (plaintext mode) a datagram is just
C{[ENVELOPE_PLAINTEXT u8][packet]}: anyone on the network can read, forge
and replay packets, and nothing separates clusters sharing a network.  Use
it on trusted networks and in tests only.

Both modes refuse the other's datagrams as L{DropReason.UNAUTHENTICATED},
which makes a half-configured cluster easy to diagnose.
"""

from __future__ import annotations

import base64
import binascii
import collections
import enum
import os
import struct
from typing import Callable, List, Optional, OrderedDict, Sequence, Tuple, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.interfaces import IReactorTime

from caxton.swim.codec import MAX_PACKET_SIZE, valid_node_id

#: Valid AES key sizes in bytes.
KEY_SIZES = (16, 24, 32)

#: First byte of a plaintext datagram.
ENVELOPE_PLAINTEXT = 1

#: First byte of an AES-GCM datagram.
ENVELOPE_AES_GCM = 2

_NONCE_SIZE = 12
_TAG_SIZE = 16
_COUNTERS = struct.Struct(">QQ")
_WINDOW_BITS = 64
_WINDOW_MASK = (1 << _WINDOW_BITS) - 1
_MAX_U64 = (1 << 64) - 1


class KeyringError(ValueError):
    """
    A key or key file is not usable; the message never contains key
    material.
    """


class EnvelopeError(ValueError):
    """
    A packet cannot be sealed: it would make a datagram larger than the
    budget.
    """


class DropReason(enum.Enum):
    """
    Why an incoming datagram was dropped.
    """

    #: Not an envelope at all: empty, unknown version byte, too short, or
    #: an authenticated plaintext whose replay header is broken.
    MALFORMED = "malformed"
    #: No key opens it (another key, another cluster name, tampering), or
    #: it is plaintext while a keyring is set, or the reverse.
    UNAUTHENTICATED = "unauthenticated"
    #: Authentic but already seen, too old, or from an older run.
    REPLAYED = "replayed"
    #: Larger than the datagram budget.
    TOO_LARGE = "too_large"


class Dropped(Exception):
    """
    An incoming datagram was refused.

    @ivar reason: the L{DropReason}.
    @ivar detail: a short explanation for logs (no key material).
    """

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


def generate_key() -> str:
    """
    A new random AES-256 key, base64-encoded, for a key file.
    """
    return base64.b64encode(os.urandom(32)).decode("ascii")


def decode_key(text: str) -> bytes:
    """
    A key from its base64 text.

    @raise KeyringError: if C{text} is not base64 of 16, 24 or 32 bytes.
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError("key is not valid base64") from None
    _check_key(key)
    return key


def _check_key(key: object) -> None:
    if not isinstance(key, bytes):
        raise KeyringError("a key must be bytes")
    if len(key) not in KEY_SIZES:
        raise KeyringError(f"a key must be 16, 24 or 32 bytes, not {len(key)}")


class Keyring:
    """
    AES keys for gossip: the primary (first) encrypts, all decrypt.

    Mutable, so that keys can be rotated while the node runs; an
    L{Envelope} sees changes at once.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        """
        @param keys: at least one key; the first is the primary.  Repeated
            keys are kept once.

        @raise KeyringError: if there is no key or one is not a valid AES
            key.
        """
        self._ciphers: List[Tuple[bytes, AESGCM]] = []
        for key in keys:
            self.add_key(key)
        if not self._ciphers:
            raise KeyringError("a keyring needs at least one key")

    @classmethod
    def from_file(cls, path: str) -> Keyring:
        """
        Read a key file: base64 keys, one per line, the primary first.
        Blank lines and lines starting with C{#} are ignored.

        @raise KeyringError: if the file holds no key or a bad one (named
            by its line number, never by its content).
        @raise OSError: if the file cannot be read.
        """
        with open(path, encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
        keys = []
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                keys.append(decode_key(text))
            except KeyringError as e:
                raise KeyringError(f"{path}, line {number}: {e}") from None
        if not keys:
            raise KeyringError(f"{path} holds no key")
        return cls(keys)

    def __repr__(self) -> str:
        # Never the keys themselves.
        return f"<Keyring with {len(self._ciphers)} key(s)>"

    def __len__(self) -> int:
        return len(self._ciphers)

    @property
    def keys(self) -> Tuple[bytes, ...]:
        """
        The installed keys, the primary first.
        """
        return tuple(key for key, _ in self._ciphers)

    @property
    def primary(self) -> bytes:
        """
        The key that encrypts.
        """
        return self._ciphers[0][0]

    def add_key(self, key: bytes) -> None:
        """
        Install C{key} for decryption (it does not become the primary).
        Installing a key twice changes nothing.

        @raise KeyringError: if C{key} is not a valid AES key.
        """
        _check_key(key)
        if key not in self.keys:
            self._ciphers.append((key, AESGCM(key)))

    def use_key(self, key: bytes) -> None:
        """
        Make the installed C{key} the primary.

        @raise KeyringError: if C{key} is not installed.
        """
        for index, (installed, cipher) in enumerate(self._ciphers):
            if installed == key:
                del self._ciphers[index]
                self._ciphers.insert(0, (installed, cipher))
                return
        raise KeyringError("cannot use a key that is not installed")

    def remove_key(self, key: bytes) -> None:
        """
        Uninstall C{key}; removing a key that is not installed changes
        nothing.

        @raise KeyringError: if C{key} is the primary.
        """
        if key == self.primary:
            raise KeyringError("cannot remove the primary key")
        self._ciphers = [(k, c) for k, c in self._ciphers if k != key]

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """
        C{plaintext} sealed under the primary key: a fresh random 12-byte
        nonce, then the ciphertext and tag.
        """
        nonce = os.urandom(_NONCE_SIZE)
        return nonce + self._ciphers[0][1].encrypt(nonce, plaintext, associated_data)

    def decrypt(self, sealed: bytes, associated_data: bytes) -> Optional[bytes]:
        """
        The plaintext of C{sealed} (as L{encrypt} made it) under whichever
        installed key opens it, or None if none does.
        """
        if len(sealed) < _NONCE_SIZE + _TAG_SIZE:
            return None
        nonce = sealed[:_NONCE_SIZE]
        body = sealed[_NONCE_SIZE:]
        for _, cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, body, associated_data)
            except InvalidTag:
                continue
        return None


class _SenderWindow:
    """
    What a receiver remembers about one sender: its newest epoch, the
    highest counter seen in it and a bitmap of the 64 counters below and
    including it (bit 0 is the highest).
    """

    __slots__ = ("epoch", "highest", "bitmap", "last_seen")

    def __init__(self, epoch: int, counter: int, now: float) -> None:
        self.epoch = epoch
        self.highest = counter
        self.bitmap = 1
        self.last_seen = now


#: How far ahead of ours a sender's clock may be, in seconds.
MAX_CLOCK_AHEAD = 86_400.0


class ReplayFilter:
    """
    Per-sender replay detection for authenticated datagrams (see the module
    docstring for the rules).
    """

    def __init__(self, replay_window: float = 300.0, max_senders: int = 4096) -> None:
        """
        @param replay_window: seconds a sender must have been silent before
            an older epoch of it is accepted again.
        @param max_senders: most senders remembered; the least recently
            heard is forgotten first.
        """
        if max_senders < 1:
            raise ValueError("max_senders must be at least 1")
        self.replay_window = replay_window
        self.max_senders = max_senders
        self._senders: OrderedDict[str, _SenderWindow] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._senders)

    def accept(self, sender: str, epoch: int, counter: int, now: float) -> None:
        """
        Record datagram C{counter} of C{sender}'s run C{epoch}, received at
        C{now}.

        @raise Dropped: with L{DropReason.REPLAYED} if it is a replay; then
            nothing is recorded.
        """
        if epoch > (now + MAX_CLOCK_AHEAD) * 1000:
            # An epoch is its sender's start time: one far in the future
            # would shut out every real datagram of that sender (a forged
            # or corrupt clock), so it is refused rather than recorded.
            raise Dropped(DropReason.MALFORMED, "datagram from a sender whose clock is a day ahead")
        entry = self._senders.get(sender)
        if entry is None or epoch > entry.epoch or (
            epoch < entry.epoch and now - entry.last_seen > self.replay_window
        ):
            self._senders[sender] = _SenderWindow(epoch, counter, now)
            self._senders.move_to_end(sender)
            while len(self._senders) > self.max_senders:
                self._senders.popitem(last=False)
            return
        if epoch < entry.epoch:
            raise Dropped(DropReason.REPLAYED, "datagram from an older run of its sender")
        if counter > entry.highest:
            shift = counter - entry.highest
            if shift < _WINDOW_BITS:
                entry.bitmap = ((entry.bitmap << shift) | 1) & _WINDOW_MASK
            else:
                entry.bitmap = 1
            entry.highest = counter
        else:
            behind = entry.highest - counter
            if behind >= _WINDOW_BITS:
                raise Dropped(DropReason.REPLAYED, "datagram older than the replay window")
            bit = 1 << behind
            if entry.bitmap & bit:
                raise Dropped(DropReason.REPLAYED, "datagram already received")
            entry.bitmap |= bit
        entry.last_seen = now
        self._senders.move_to_end(sender)


class Envelope:
    """
    Seals this node's packets into datagrams and opens its peers'
    (the format is in the module docstring).
    """

    def __init__(
        self,
        node_id: str,
        cluster_name: str,
        keyring: Optional[Keyring],
        clock: Union[Callable[[], float], IReactorTime],
        *,
        epoch_ms: Optional[int] = None,
        replay_window: float = 300.0,
        max_senders: int = 4096,
        max_datagram: int = MAX_PACKET_SIZE,
    ) -> None:
        """
        @param node_id: this node's id, sent in the replay header.
        @param cluster_name: bound to every encrypted datagram as
            associated data.
        @param keyring: the keys, or None for plaintext mode.
        @param clock: seconds since the epoch: a callable or an
            L{IReactorTime} (its C{seconds}).  Gives the replay epoch and
            the time senders were last heard.
        @param epoch_ms: this run's epoch; by default the clock's time in
            milliseconds now.
        @param replay_window: see L{ReplayFilter}.
        @param max_senders: see L{ReplayFilter}.
        @param max_datagram: largest datagram sealed or opened.
        """
        if not valid_node_id(node_id):
            raise ValueError("node_id is not a valid node id")
        #: The clock, as a callable returning seconds.
        self.seconds: Callable[[], float]
        if IReactorTime.providedBy(clock):
            self.seconds = clock.seconds  # type: ignore[union-attr]
        else:
            self.seconds = clock  # type: ignore[assignment]
        self.node_id = node_id
        self.cluster_name = cluster_name
        self.keyring = keyring
        self.max_datagram = max_datagram
        self.epoch_ms = int(self.seconds() * 1000) if epoch_ms is None else epoch_ms
        if not 0 <= self.epoch_ms <= _MAX_U64:
            raise ValueError("epoch_ms must fit in 64 bits")
        self._counter = 0
        self._sender = bytes((len(node_id),)) + node_id.encode("ascii")
        self._aad = bytes((ENVELOPE_AES_GCM,)) + cluster_name.encode("utf-8")
        self.replay = ReplayFilter(replay_window, max_senders)

    @property
    def encrypted(self) -> bool:
        """
        Whether datagrams are encrypted (a keyring is set).
        """
        return self.keyring is not None

    @property
    def overhead(self) -> int:
        """
        The bytes sealing adds to a packet: a packet of up to
        C{max_datagram - overhead} bytes fits the budget.
        """
        if self.keyring is None:
            return 1
        return 1 + _NONCE_SIZE + _TAG_SIZE + len(self._sender) + _COUNTERS.size

    @property
    def max_packet(self) -> int:
        """
        The largest packet L{seal} accepts.
        """
        return self.max_datagram - self.overhead

    def seal(self, packet: bytes) -> bytes:
        """
        The datagram carrying C{packet}.

        @raise EnvelopeError: if the datagram would be larger than
            C{max_datagram}.
        """
        if len(packet) > self.max_packet:
            raise EnvelopeError(
                f"packet of {len(packet)} bytes exceeds the {self.max_packet}-byte budget"
            )
        if self.keyring is None:
            return bytes((ENVELOPE_PLAINTEXT,)) + packet
        self._counter += 1
        plaintext = b"".join(
            (self._sender, _COUNTERS.pack(self.epoch_ms, self._counter), packet)
        )
        return bytes((ENVELOPE_AES_GCM,)) + self.keyring.encrypt(plaintext, self._aad)

    def open(self, datagram: bytes) -> bytes:
        """
        The packet inside C{datagram}.

        @raise Dropped: if the datagram is too large, malformed, not
            authentic or a replay.
        """
        if len(datagram) > self.max_datagram:
            raise Dropped(DropReason.TOO_LARGE, "datagram larger than the budget")
        if not datagram:
            raise Dropped(DropReason.MALFORMED, "empty datagram")
        version = datagram[0]
        if self.keyring is None:
            if version == ENVELOPE_PLAINTEXT:
                return bytes(datagram[1:])
            if version == ENVELOPE_AES_GCM:
                raise Dropped(
                    DropReason.UNAUTHENTICATED, "encrypted datagram but no gossip key set"
                )
            raise Dropped(DropReason.MALFORMED, "unknown envelope version")
        if version == ENVELOPE_PLAINTEXT:
            raise Dropped(DropReason.UNAUTHENTICATED, "plaintext datagram but a gossip key is set")
        if version != ENVELOPE_AES_GCM:
            raise Dropped(DropReason.MALFORMED, "unknown envelope version")
        if len(datagram) < 1 + _NONCE_SIZE + _TAG_SIZE:
            raise Dropped(DropReason.MALFORMED, "datagram too short")
        plaintext = self.keyring.decrypt(bytes(datagram[1:]), self._aad)
        if plaintext is None:
            raise Dropped(DropReason.UNAUTHENTICATED, "no key opens the datagram")
        # From here on the sender holds a key: a broken header is a bug on
        # its side, not an attack.
        n = plaintext[0] if plaintext else 0
        end = 1 + n + _COUNTERS.size
        if len(plaintext) < end:
            raise Dropped(DropReason.MALFORMED, "truncated replay header")
        try:
            sender = plaintext[1 : 1 + n].decode("ascii")
        except UnicodeDecodeError:
            sender = ""
        if not valid_node_id(sender):
            raise Dropped(DropReason.MALFORMED, "bad sender id in replay header")
        epoch, counter = _COUNTERS.unpack_from(plaintext, 1 + n)
        self.replay.accept(sender, epoch, counter, self.seconds())
        return plaintext[end:]


__all__: Sequence[str] = [
    "KEY_SIZES",
    "ENVELOPE_PLAINTEXT",
    "ENVELOPE_AES_GCM",
    "KeyringError",
    "EnvelopeError",
    "DropReason",
    "Dropped",
    "generate_key",
    "decode_key",
    "Keyring",
    "ReplayFilter",
    "Envelope",
]
