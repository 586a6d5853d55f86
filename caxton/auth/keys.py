# -*- test-case-name: tests.test_auth_keys -*-
"""
API keys (SPEC 6, "Auth"): made once, shown once, stored hashed.

A key is given to its user as one token, C{cxk_<key_id>_<secret>}: the
C{key_id} (12 hex digits) names the key's record and may appear in logs;
the secret (32 random bytes, URL-safe base64) is never stored, logged or
shown again.  The data directory's C{keys.json} holds, per key, its id,
name, role, creation time, the last four characters of the token (so a
person can tell keys apart) and the SHA-256 of the secret.

L{KeyFile} reads and changes that file.  It is plain blocking code, used
as is by C{caxton keys} (which works on the data directory, also while a
node runs) and from a thread by the node.  Every change is a
read-modify-write under an exclusive C{fcntl} lock on C{keys.json.lock},
written to a temporary file and renamed over C{keys.json}, so readers never
see half a file and two writers never lose each other's change.

L{KeyStore} is the node's view: it answers "which key is this token?" on
the reactor thread from memory, and looks at the file's C{stat} at most
once a second to pick up what C{caxton keys} changed, without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import attr
from twisted.logger import Logger

from caxton.api.routes import Role
from caxton.errors import CaxtonError, InvalidRequest

log = Logger()

#: The file, in the data directory.
KEYS_FILE = "keys.json"

#: What every token starts with, so a leaked one is easy to recognise
#: (secret scanners, grep) and a token from another system is refused
#: before any work.
TOKEN_PREFIX = "cxk_"

#: Random bytes in a secret.
SECRET_BYTES = 32

#: Most key records kept, revoked ones included; past it the oldest
#: revoked records are forgotten.  Keeps the file (read on the reactor
#: thread when it changes) small: about 250 bytes per key.
MAX_KEYS = 1000

#: A larger C{keys.json} is refused rather than read on the reactor thread.
MAX_FILE_SIZE = 1024 * 1024

#: How often, at most, the node looks whether the file changed (seconds).
CHECK_INTERVAL = 1.0

# Always fullmatch: "$" would let a trailing newline through.
_TOKEN = re.compile(r"cxk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,64}")

#: Compared against when a token names no key, so an unknown id costs the
#: same as a wrong secret.
_NO_KEY = hashlib.sha256(b"caxton: no such key").hexdigest()


class KeyFileError(CaxtonError):
    """
    C{keys.json} cannot be read or written (permissions, a hand edit that
    broke it, too large); C{str()} says which and why.
    """

    code = "UNAVAILABLE"
    status = 503


class KeyNotFound(CaxtonError):
    """
    No key has that id.
    """

    code = "INVALID_REQUEST"
    status = 404


def parse_token(token: str) -> Optional[Tuple[str, str]]:
    """
    The C{(key_id, secret)} of a token, or C{None} if it is not one.
    """
    if not isinstance(token, str):
        return None
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    return match.group(1), match.group(2)


def format_token(key_id: str, secret: str) -> str:
    """
    The token of C{key_id} with C{secret}.
    """
    return f"{TOKEN_PREFIX}{key_id}_{secret}"


def hash_secret(secret: str) -> str:
    """
    What is stored for C{secret}: its SHA-256, in hex.

    A fast hash is enough here, and the right choice.  Slow password
    hashes (bcrypt, scrypt, Argon2) exist because passwords are guessable:
    they make each guess of a stolen hash expensive.  A secret is 256
    random bits, so there is nothing to guess; a stolen C{keys.json}
    gives no way back to any token.  A fast hash also keeps checking a
    token at every request to microseconds on the reactor thread, where a
    slow one would cost tens of milliseconds each.
    """
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def check_name(name: Any) -> str:
    """
    A key's name: 1 to 64 characters, no control characters.

    @raise InvalidRequest: for anything else.
    """
    if not isinstance(name, str) or not name.strip() or not _NAME.fullmatch(name):
        raise InvalidRequest("name: 1 to 64 characters without control characters")
    return name.strip()


def check_role(role: Any) -> Role:
    """
    The role named C{role}.

    @raise InvalidRequest: unless it is admin, operator or viewer.
    """
    if not isinstance(role, str):
        raise InvalidRequest("role: admin, operator or viewer")
    try:
        return Role.named(role)
    except ValueError as e:
        raise InvalidRequest(f"role: {e}")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class KeyRecord:
    """
    One key, as stored (without its secret).

    @ivar key_id: 12 hex digits, part of the token.
    @ivar name: what the key is for, chosen by whoever made it.
    @ivar role: what it may do.
    @ivar created_at: Unix time it was made.
    @ivar hint: the token's last four characters.
    @ivar secret_hash: L{hash_secret} of the secret.
    @ivar revoked_at: Unix time it was revoked, or C{None}.
    """

    key_id: str
    name: str
    role: Role
    created_at: float
    hint: str
    secret_hash: str = attr.ib(repr=False)
    revoked_at: Optional[float] = None

    @property
    def revoked(self) -> bool:
        """
        Whether the key was revoked.
        """
        return self.revoked_at is not None

    def view(self) -> Dict[str, Any]:
        """
        The key as the API and C{caxton keys list} show it: never the hash.
        """
        return {
            "id": self.key_id,
            "name": self.name,
            "role": self.role.name.lower(),
            "created_at": self.created_at,
            "hint": self.hint,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
        }

    def to_json(self) -> Dict[str, Any]:
        """
        The key as C{keys.json} stores it.
        """
        value = self.view()
        value["hash"] = "sha256:" + self.secret_hash
        return value

    @classmethod
    def from_json(cls, value: Any) -> "KeyRecord":
        """
        A key from its C{keys.json} form.

        @raise ValueError: if it is malformed.
        """
        if not isinstance(value, dict):
            raise ValueError("a key is not a JSON object")
        key_id, digest = value.get("id"), value.get("hash")
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise ValueError(f"bad key id {key_id!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"key {key_id}: bad hash")
        try:
            name = check_name(value.get("name"))
            role = check_role(value.get("role"))
        except InvalidRequest as e:
            raise ValueError(f"key {key_id}: {e}")
        created_at, revoked_at = value.get("created_at"), value.get("revoked_at")
        if not isinstance(created_at, (int, float)) or isinstance(created_at, bool):
            raise ValueError(f"key {key_id}: bad created_at")
        if revoked_at is not None and (not isinstance(revoked_at, (int, float)) or isinstance(revoked_at, bool)):
            raise ValueError(f"key {key_id}: bad revoked_at")
        if value.get("revoked") and revoked_at is None:
            revoked_at = float(created_at)
        return cls(
            key_id=key_id,
            name=name,
            role=role,
            created_at=float(created_at),
            hint=str(value.get("hint", ""))[-4:],
            secret_hash=digest[len("sha256:"):],
            revoked_at=None if revoked_at is None else float(revoked_at),
        )


@attr.s(frozen=True, slots=True)
class KeySet:
    """
    Every key at one moment, and the checks made against them.

    @ivar records: the keys, oldest first.
    @ivar broken: why the file could not be read, when it could not: the
        node then accepts no token at all (it fails closed; it does not
        fall back to protected mode).
    """

    records: Tuple[KeyRecord, ...] = attr.ib(default=())
    broken: Optional[str] = attr.ib(default=None)
    _by_id: Dict[str, KeyRecord] = attr.ib(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {r.key_id: r for r in self.records})

    @property
    def protected(self) -> bool:
        """
        Protected mode: no active key exists (and the file was readable),
        so only loopback clients may use the API.
        """
        return self.broken is None and not any(not r.revoked for r in self.records)

    def get(self, key_id: str) -> Optional[KeyRecord]:
        """
        The key with id C{key_id}, if any.
        """
        return self._by_id.get(key_id)

    def verify(self, token: str) -> Tuple[Optional[KeyRecord], str, Optional[str]]:
        """
        Which active key C{token} is.

        The secret is compared in constant time with C{hmac.compare_digest},
        and against a fixed hash when the id names no key, so the time
        taken says nothing about which ids exist.

        @return: C{(record, reason, key_id)}: the record (C{None} when the
            token is refused), why it was refused (C{"malformed token"},
            C{"unknown key"}, C{"wrong secret"}, C{"revoked key"},
            C{"key file unreadable"}; C{""} when accepted) and the key id
            the token names, when it names one.  The reason is for the
            audit log; clients get one message for every refusal.
        """
        parsed = parse_token(token)
        if parsed is None:
            return None, "malformed token", None
        key_id, secret = parsed
        record = self._by_id.get(key_id)
        expected = record.secret_hash if record is not None else _NO_KEY
        same = hmac.compare_digest(hash_secret(secret), expected)
        if self.broken is not None:
            return None, "key file unreadable", key_id
        if record is None:
            return None, "unknown key", key_id
        if not same:
            return None, "wrong secret", key_id
        if record.revoked:
            return None, "revoked key", key_id
        return record, "", key_id


def _decode(raw: bytes, path: str) -> KeySet:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise KeyFileError(f"{path} is not valid JSON ({e})")
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyFileError(f"{path}: expected an object with a 'keys' list")
    if document.get("version", 1) != 1:
        raise KeyFileError(f"{path}: version {document.get('version')!r} is newer than this caxton knows")
    try:
        records = tuple(KeyRecord.from_json(item) for item in document["keys"])
    except ValueError as e:
        raise KeyFileError(f"{path}: {e}")
    if len({r.key_id for r in records}) != len(records):
        raise KeyFileError(f"{path}: a key id is listed twice")
    return KeySet(records)


class KeyFile:
    """
    C{keys.json} in a data directory: blocking reads and locked changes.

    @param path: the file (C{<data_dir>/keys.json}).
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def in_data_dir(cls, data_dir: str) -> "KeyFile":
        """
        The key file of the data directory C{data_dir}.
        """
        return cls(os.path.join(data_dir, KEYS_FILE))

    def signature(self) -> Optional[Tuple[int, int, int]]:
        """
        What identifies the file's current content without reading it
        (inode, modification time, size), or C{None} when there is none.
        Every change renames a new file into place, so the inode alone
        changes each time; the rest covers hand edits.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise KeyFileError(f"cannot read {self.path}: {e.strerror}")
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def read(self) -> KeySet:
        """
        Every key; none when the file does not exist.

        @raise KeyFileError: when it cannot be read or is malformed.
        """
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return KeySet()
        except OSError as e:
            raise KeyFileError(f"cannot read {self.path}: {e.strerror}")
        if len(raw) > MAX_FILE_SIZE:
            raise KeyFileError(f"{self.path} is larger than {MAX_FILE_SIZE} bytes")
        return _decode(raw, self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise KeyFileError(f"cannot lock {self.path}: {e.strerror}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, records: List[KeyRecord]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        document = {"version": 1, "keys": [r.to_json() for r in records]}
        data = (json.dumps(document, indent=1) + "\n").encode("utf-8")
        try:
            fd, temporary = tempfile.mkstemp(prefix=".keys.json.", dir=directory)
        except OSError as e:
            raise KeyFileError(f"cannot write {self.path}: {e.strerror}")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise KeyFileError(f"cannot write {self.path}: {e.strerror}")
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def create(self, name: str, role: Any, now: float) -> Tuple[KeyRecord, str]:
        """
        Make a new key.

        @param role: a L{Role} or its name.
        @return: the record and the token, which exists nowhere else.
        @raise InvalidRequest: for a bad name or role.
        @raise KeyFileError: when the file cannot be read or written, or
            already holds L{MAX_KEYS} active keys.
        """
        name = check_name(name)
        role = role if isinstance(role, Role) and role is not Role.PUBLIC else check_role(role)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        with self._locked():
            records = list(self.read().records)
            existing = {r.key_id for r in records}
            key_id = secrets.token_hex(6)
            while key_id in existing:
                key_id = secrets.token_hex(6)
            token = format_token(key_id, secret)
            record = KeyRecord(
                key_id=key_id,
                name=name,
                role=role,
                created_at=now,
                hint=token[-4:],
                secret_hash=hash_secret(secret),
            )
            records.append(record)
            while len(records) > MAX_KEYS:
                revoked = [r for r in records if r.revoked]
                if not revoked:
                    raise KeyFileError(f"{MAX_KEYS} active keys exist already; revoke some first")
                records.remove(min(revoked, key=lambda r: r.revoked_at or 0.0))
            self._write(records)
        return record, token

    def revoke(self, key_id: str, now: float) -> KeyRecord:
        """
        Revoke key C{key_id}; revoking a revoked key changes nothing.

        @return: its record, revoked.
        @raise KeyNotFound: when no key has that id.
        @raise KeyFileError: when the file cannot be read or written.
        """
        with self._locked():
            records = list(self.read().records)
            for i, record in enumerate(records):
                if record.key_id == key_id:
                    if record.revoked:
                        return record
                    records[i] = attr.evolve(record, revoked_at=now)
                    self._write(records)
                    return records[i]
        raise KeyNotFound(f"no key with id {key_id!r}")


class KeyStore:
    """
    The running node's keys: checks on the reactor thread from memory,
    changes through a thread, and changes made by others (C{caxton keys})
    picked up within L{CHECK_INTERVAL}.

    Reading on the reactor thread is bounded: the file is at most
    L{MAX_FILE_SIZE} bytes (about 250 bytes per key, L{MAX_KEYS} keys),
    and it is read only when its C{stat} changed.

    @param key_file: the file.
    @param clock: an C{IReactorTime}, for how often to look at the file.
    @param executor: an L{caxton.auth.threads.IExecutor} for changes.
    """

    def __init__(self, key_file: KeyFile, clock: Any, executor: Any) -> None:
        self.file = key_file
        self._clock = clock
        self._executor = executor
        self._keys = KeySet()
        self._signature: Any = ()  # never a real signature: read at first use
        self._checked: Optional[float] = None

    def current(self) -> KeySet:
        """
        The keys now, read again if the file changed (looked at no more
        than once per L{CHECK_INTERVAL}).
        """
        now = self._clock.seconds()
        if self._checked is None or not 0 <= now - self._checked < CHECK_INTERVAL:
            self._checked = now
            self.reload()
        return self._keys

    def reload(self, force: bool = False) -> None:
        """
        Read the file if its C{stat} changed (or always, with C{force}).
        A file that cannot be read leaves the node refusing every token
        until it is fixed; the reason is logged once per change.
        """
        try:
            signature = self.file.signature()
            if signature == self._signature and not force:
                return
            keys = self.file.read()
        except KeyFileError as e:
            if self._keys.broken != str(e):
                log.error("API keys refused until fixed: {error}", error=str(e))
            self._keys = KeySet(broken=str(e))
            self._signature = ()
            return
        if self._keys.broken is not None or self._signature != ():
            log.info(
                "API keys read again: {active} active, {revoked} revoked",
                active=sum(1 for r in keys.records if not r.revoked),
                revoked=sum(1 for r in keys.records if r.revoked),
            )
        self._keys = keys
        self._signature = signature

    def views(self) -> List[Dict[str, Any]]:
        """
        Every key, as the API shows it, newest first.
        """
        keys = self.current()
        if keys.broken is not None:
            raise KeyFileError(keys.broken)
        return [r.view() for r in sorted(reversed(keys.records), key=lambda r: r.created_at, reverse=True)]

    async def create(self, name: Any, role: Any) -> Tuple[KeyRecord, str]:
        """
        Make a key (in a thread); it works at once.

        @raise InvalidRequest: for a bad name or role.
        """
        name = check_name(name)
        role = check_role(role)
        try:
            return await self._executor.submit(self.file.create, name, role, self._clock.seconds())
        finally:
            self.reload(force=True)

    async def revoke(self, key_id: str) -> KeyRecord:
        """
        Revoke a key (in a thread); it is refused from the next request.
        """
        if not _KEY_ID.fullmatch(key_id):
            raise KeyNotFound(f"no key with id {key_id!r}")
        try:
            return await self._executor.submit(self.file.revoke, key_id, self._clock.seconds())
        finally:
            self.reload(force=True)
