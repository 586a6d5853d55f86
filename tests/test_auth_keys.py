"""
Tests for L{caxton.auth.keys}: tokens, the key file and the node's view
of it.
"""

from __future__ import annotations

import hmac
import json
import os
import stat
import string
import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from caxton.api.routes import Role
from caxton.auth import keys as keys_module
from caxton.auth.keys import (
    MAX_KEYS,
    KeyFile,
    KeyFileError,
    KeyNotFound,
    KeySet,
    KeyStore,
    format_token,
    hash_secret,
    parse_token,
)
from caxton.auth.threads import InlineExecutor
from caxton.errors import InvalidRequest

_ID = st.text(alphabet="0123456789abcdef", min_size=12, max_size=12)
_SECRET = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=43, max_size=43)


class TokenTests(SynchronousTestCase):
    """
    The token format, C{cxk_<key_id>_<secret>}.
    """

    @given(_ID, _SECRET)
    def test_round_trip(self, key_id: str, secret: str) -> None:
        """
        A formatted token parses back to its id and secret, whatever
        underscores and dashes the secret holds.
        """
        self.assertEqual(parse_token(format_token(key_id, secret)), (key_id, secret))

    @given(st.text(max_size=120))
    @settings(max_examples=300)
    def test_parse_never_raises(self, text: str) -> None:
        """
        Any text either parses to a well-formed id and secret or is
        refused with C{None}; it never raises.
        """
        parsed = parse_token(text)
        if parsed is not None:
            key_id, secret = parsed
            self.assertEqual(format_token(key_id, secret), text)

    @given(_ID, _SECRET, st.sampled_from(["", " ", "\n", "x", "=", "+"]))
    def test_trailing_junk_refused(self, key_id: str, secret: str, junk: str) -> None:
        """
        Anything after (or instead of part of) the secret makes it no token.
        """
        if junk:
            self.assertIsNone(parse_token(format_token(key_id, secret) + junk))
        self.assertIsNone(parse_token(format_token(key_id, secret[:-1])))

    def test_not_tokens(self) -> None:
        self.assertIsNone(parse_token(None))  # type: ignore[arg-type]
        self.assertIsNone(parse_token("cxk_0123456789ab_" + "a" * 43 + "\n"))
        self.assertIsNone(parse_token("cxk_ABCDEF012345_" + "a" * 43))  # upper-case id
        self.assertIsNone(parse_token("xyz_0123456789ab_" + "a" * 43))

    def test_made_secrets_are_long(self) -> None:
        """
        A made token carries 32 random bytes: 43 URL-safe base64 characters.
        """
        record, token = KeyFile(os.path.join(self.mktemp(), "keys.json")).create("a", "admin", 1.0)
        key_id, secret = parse_token(token)
        self.assertEqual(len(secret), 43)
        self.assertEqual(record.key_id, key_id)
        self.assertEqual(record.hint, token[-4:])
        self.assertEqual(record.secret_hash, hash_secret(secret))


class KeyFileTests(SynchronousTestCase):
    """
    C{keys.json}: created, listed, revoked, atomically and privately.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.file = KeyFile.in_data_dir(self.dir)

    def test_missing_file_is_no_keys(self) -> None:
        """
        No file: no keys, and protected mode.
        """
        keys = self.file.read()
        self.assertEqual(keys.records, ())
        self.assertTrue(keys.protected)

    def test_create_and_read(self) -> None:
        """
        A created key is stored with its hash, never its secret, in a file
        only its owner can read.
        """
        record, token = self.file.create("ci", "operator", 100.0)
        self.assertEqual(record.role, Role.OPERATOR)
        with open(self.file.path) as f:
            text = f.read()
        self.assertNotIn(parse_token(token)[1], text)
        self.assertIn(record.secret_hash, text)
        self.assertEqual(stat.S_IMODE(os.stat(self.file.path).st_mode), 0o600)
        keys = self.file.read()
        self.assertFalse(keys.protected)
        self.assertEqual(keys.get(record.key_id), record)
        self.assertEqual(keys.verify(token), (record, "", record.key_id))
        self.assertEqual(sorted(os.listdir(self.dir)), ["keys.json", "keys.json.lock"])

    def test_bad_name_or_role(self) -> None:
        self.assertRaises(InvalidRequest, self.file.create, "", "admin", 1.0)
        self.assertRaises(InvalidRequest, self.file.create, "a\nb", "admin", 1.0)
        self.assertRaises(InvalidRequest, self.file.create, "x" * 65, "admin", 1.0)
        self.assertRaises(InvalidRequest, self.file.create, "a", "root", 1.0)
        self.assertRaises(InvalidRequest, self.file.create, "a", "public", 1.0)
        self.assertFalse(os.path.exists(self.file.path))

    def test_revoke(self) -> None:
        """
        A revoked key is refused with its reason; revoking twice keeps the
        first time; revoking the last active key goes back to protected
        mode.
        """
        record, token = self.file.create("ci", "viewer", 1.0)
        revoked = self.file.revoke(record.key_id, 5.0)
        self.assertEqual(revoked.revoked_at, 5.0)
        self.assertEqual(self.file.revoke(record.key_id, 9.0).revoked_at, 5.0)
        keys = self.file.read()
        self.assertEqual(keys.verify(token), (None, "revoked key", record.key_id))
        self.assertTrue(keys.protected)
        self.assertRaises(KeyNotFound, self.file.revoke, "0123456789ab", 1.0)

    def test_refusal_reasons(self) -> None:
        """
        Malformed, unknown and wrong tokens are told apart (for the audit
        log), and the id a token names is given back.
        """
        record, token = self.file.create("ci", "viewer", 1.0)
        keys = self.file.read()
        self.assertEqual(keys.verify("nope"), (None, "malformed token", None))
        other = format_token("0123456789ab", parse_token(token)[1])
        self.assertEqual(keys.verify(other), (None, "unknown key", "0123456789ab"))
        wrong = format_token(record.key_id, "A" * 43)
        self.assertEqual(keys.verify(wrong), (None, "wrong secret", record.key_id))

    def test_compares_in_constant_time_for_unknown_ids(self) -> None:
        """
        The secret is compared with C{hmac.compare_digest}, for a known
        key and for an unknown id alike.
        """
        record, token = self.file.create("ci", "viewer", 1.0)
        keys = self.file.read()
        calls = []
        original = hmac.compare_digest

        def counting(a, b):
            calls.append((a, b))
            return original(a, b)

        self.patch(keys_module.hmac, "compare_digest", counting)
        keys.verify(token)
        keys.verify(format_token("0123456789ab", "B" * 43))
        self.assertEqual(len(calls), 2)
        self.assertEqual(calls[1][1], keys_module._NO_KEY)

    def test_corrupt_file(self) -> None:
        """
        A broken file is an error naming it, for reads and changes alike.
        """
        os.makedirs(self.dir)
        with open(self.file.path, "w") as f:
            f.write("{not json")
        error = self.assertRaises(KeyFileError, self.file.read)
        self.assertIn(self.file.path, str(error))
        self.assertRaises(KeyFileError, self.file.create, "a", "admin", 1.0)
        with open(self.file.path, "w") as f:
            json.dump({"keys": [{"id": "zz"}]}, f)
        self.assertIn("bad key id", str(self.assertRaises(KeyFileError, self.file.read)))

    def test_too_large_file(self) -> None:
        os.makedirs(self.dir)
        with open(self.file.path, "w") as f:
            f.write(" " * (keys_module.MAX_FILE_SIZE + 1))
        self.assertIn("larger", str(self.assertRaises(KeyFileError, self.file.read)))

    def test_oldest_revoked_forgotten_past_the_cap(self) -> None:
        """
        Past L{MAX_KEYS} records the oldest revoked one goes; when all are
        active, a new key is refused.
        """
        self.patch(keys_module, "MAX_KEYS", 3)
        a, _ = self.file.create("a", "viewer", 1.0)
        b, _ = self.file.create("b", "viewer", 2.0)
        self.file.revoke(b.key_id, 3.0)
        self.file.revoke(a.key_id, 4.0)
        self.file.create("c", "viewer", 5.0)
        self.file.create("d", "viewer", 6.0)
        names = [r.name for r in self.file.read().records]
        self.assertEqual(names, ["a", "c", "d"])
        self.file.revoke(self.file.read().records[1].key_id, 7.0)
        self.file.create("e", "viewer", 8.0)
        self.assertEqual([r.name for r in self.file.read().records], ["c", "d", "e"])
        self.file.create("f", "viewer", 9.0)
        self.assertEqual([r.name for r in self.file.read().records], ["d", "e", "f"])
        self.assertRaises(KeyFileError, self.file.create, "g", "viewer", 10.0)
        self.assertEqual([r.name for r in self.file.read().records], ["d", "e", "f"])
        self.assertEqual(MAX_KEYS, 1000)

    def test_concurrent_writers_lose_nothing(self) -> None:
        """
        Writers in several threads (as the CLI and a node are several
        processes) each read-modify-write under the lock: every key made
        is in the file at the end.
        """
        made = []

        def make(n: int) -> None:
            for i in range(5):
                made.append(KeyFile(self.file.path).create(f"k{n}-{i}", "viewer", 1.0)[0].key_id)

        threads = [threading.Thread(target=make, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(sorted(r.key_id for r in self.file.read().records), sorted(made))
        self.assertEqual(len(made), 20)
        leftovers = [n for n in os.listdir(self.dir) if n.startswith(".keys.json.")]
        self.assertEqual(leftovers, [])


class KeyStoreTests(SynchronousTestCase):
    """
    The node's view: from memory, re-read when the file changes, at most
    once a second.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.file = KeyFile.in_data_dir(self.mktemp())
        self.store = KeyStore(self.file, self.clock, InlineExecutor())

    def test_sees_changes_by_others_within_a_second(self) -> None:
        """
        A key made by another writer (the CLI) is accepted once the
        check interval has passed, without anything else happening.
        """
        self.assertTrue(self.store.current().protected)
        record, token = KeyFile(self.file.path).create("cli", "admin", 1.0)
        self.assertTrue(self.store.current().protected)
        self.clock.advance(1.0)
        self.assertEqual(self.store.current().verify(token)[0], record)

    def test_reads_only_when_changed(self) -> None:
        """
        An unchanged file is not read again: only its C{stat} is looked at.
        """
        self.file.create("a", "admin", 1.0)
        reads = []
        original = self.file.read
        self.patch(self.file, "read", lambda: reads.append(1) or original())
        for _ in range(5):
            self.clock.advance(1.0)
            self.store.current()
        self.assertEqual(len(reads), 1)

    def test_own_changes_apply_at_once(self) -> None:
        """
        Keys made and revoked through the store apply to the next request,
        without waiting for the check interval.
        """
        self.store.current()
        record, token = self.successResultOf(self.store.create("a", "operator"))
        self.assertEqual(self.store.current().verify(token)[0], record)
        self.successResultOf(self.store.revoke(record.key_id))
        self.assertEqual(self.store.current().verify(token)[1], "revoked key")
        self.assertEqual([v["id"] for v in self.store.views()], [record.key_id])
        self.assertNotIn("hash", self.store.views()[0])

    def test_bad_input(self) -> None:
        self.failureResultOf(self.store.create("", "admin"), InvalidRequest)
        self.failureResultOf(self.store.create("a", "boss"), InvalidRequest)
        self.failureResultOf(self.store.revoke("../../etc"), KeyNotFound)
        self.failureResultOf(self.store.revoke("0123456789ab"), KeyNotFound)

    def test_broken_file_fails_closed(self) -> None:
        """
        When the file turns unreadable, every token is refused (not
        protected mode) until it is fixed; then the keys work again.
        """
        record, token = self.file.create("a", "admin", 1.0)
        self.assertEqual(self.store.current().verify(token)[0], record)
        with open(self.file.path) as f:
            good = f.read()
        with open(self.file.path, "w") as f:
            f.write("garbage")
        self.clock.advance(1.0)
        keys = self.store.current()
        self.assertFalse(keys.protected)
        self.assertEqual(keys.verify(token)[:2], (None, "key file unreadable"))
        self.assertRaises(KeyFileError, self.store.views)
        self.flushLoggedErrors()
        with open(self.file.path, "w") as f:
            f.write(good)
        self.clock.advance(1.0)
        self.assertEqual(self.store.current().verify(token)[0], record)

    def test_keyset_protected(self) -> None:
        self.assertTrue(KeySet().protected)
        self.assertFalse(KeySet(broken="x").protected)
