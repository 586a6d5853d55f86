# -*- test-case-name: tests.test_tor -*-
"""
Onion services and Tor for a node (SPEC 9, docs/tor.md).

An C{onion:} endpoint string, wherever the node listens (C{api},
C{streams.listen}), publishes that listener as a Tor onion service.  The
grammar is txtorcon's, e.g. C{onion:80}, C{onion:80:controlPort=9051},
C{onion:7946:privateKeyFile=/var/lib/caxton/streams.onion-key}, and the work
goes through txtorcon (its control-port client and its SOCKS client), but
the endpoint is this module's L{OnionEndpoint}, not txtorcon's C{onion:}
plugin, for three reasons found by trying that plugin against Debian's Tor
0.4.9:

  - txtorcon's C{listen()} fires only once a descriptor has been uploaded
    to a directory.  That takes tens of seconds on a good day and never
    happens while the network is down, so a node would not start (or
    would hang in its start) for a reason that has nothing to do with it;
  - without C{version=3} it asks for a version 2 service (Tor dropped
    those in 0.4.6) and turns a bare C{privateKey=} into an RSA one;
  - without C{controlPort=} it launches a process-wide Tor with no time
    limit, and C{txtorcon.launch} waits for a full bootstrap, which an
    onion service does not need (L{TorProcess} launches one that is ready
    as soon as its control port is).

Here a listener is up, and the node ready, as soon as Tor has accepted the
service (C{ADD_ONION}): its address is known and logged at once, and the
descriptor upload that makes it reachable is followed in the background
(logged, and shown as C{published} in C{GET /api/v1/cluster/status}).
Every wait on Tor is bounded by C{tor.timeout}, and a Tor that cannot be
reached, launched or that refuses the service stops the node's start with
one line (L{TorUnavailable} is a L{ConfigError}).

The services are ephemeral and tied to the node's control connection:
when the node stops (or dies) Tor forgets them.  C{privateKeyFile=PATH}
keeps the same address across restarts: the key is made and saved there
(mode 0600) the first time, and read back afterwards; a Tor
C{hs_ed25519_secret_key} from a C{HiddenServiceDir} works too.
C{clientAuthFile=PATH} lists the x25519 public keys of the clients
allowed in (v3 client authorisation): Tor then refuses everyone else
before a byte reaches the node.

Connections that arrive through an onion service come from Tor on
127.0.0.1; this module makes their peer address a L{ViaOnion}, never a
loopback address, so nothing that trusts loopback clients trusts the
whole Tor network.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import attr
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, clientFromString
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from caxton.config import ConfigError

log = Logger()

#: The prefix of an onion endpoint string.
ONION_PREFIX = "onion:"

#: The options an C{onion:} string may carry (txtorcon's names, plus
#: C{clientAuthFile}).
ONION_OPTIONS = (
    "controlPort",
    "localPort",
    "privateKey",
    "privateKeyFile",
    "version",
    "singleHop",
    "clientAuthFile",
)

#: The header of Tor's own C{hs_ed25519_secret_key} file.
_TOR_KEY_HEADER = b"== ed25519v1-secret: type0 ==\x00\x00\x00"

#: The largest key or client-auth file read (they are a few hundred bytes).
_MAX_KEY_FILE = 64 * 1024

_BASE32_KEY = re.compile(r"^[A-Z2-7]{52}$")
_ONION_HOST = re.compile(r"^(?:[a-z0-9-]+\.)*[a-z2-7]{56}\.onion$")


class TorUnavailable(ConfigError):
    """
    Tor cannot be reached, launched, or refused what the node asked; C{str()}
    is the one line to show.
    """


def is_onion_endpoint(description: str) -> bool:
    """
    Whether C{description} is an C{onion:} endpoint string.
    """
    return description.strip().lower().startswith(ONION_PREFIX)


def is_onion_host(host: str) -> bool:
    """
    Whether C{host} is a v3 onion address (C{<56 base32 characters>.onion}).
    """
    return bool(_ONION_HOST.match(host.lower()))


def split_endpoint(description: str) -> Tuple[str, List[str], Dict[str, str]]:
    """
    Split an endpoint string the way Twisted does: fields separated by
    C{:}, a backslash escapes the next character, C{key=value} fields are
    options.

    @return: the prefix, the positional fields and the options.
    """
    fields: List[str] = []
    current: List[str] = []
    escaped = False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    prefix, rest = fields[0], fields[1:]
    args: List[str] = []
    options: Dict[str, str] = {}
    for field in rest:
        name, sep, value = field.partition("=")
        if sep:
            options[name] = value
        else:
            args.append(field)
    return prefix, args, options


def redact(description: str) -> str:
    """
    C{description} fit for logs and errors: an inline private key is
    replaced by C{***}.
    """
    return re.sub(r"(privateKey=)((?:\\.|[^:\\])*)", r"\1***", description)


def _control_endpoint(value: str) -> str:
    # txtorcon's rule: a number is a TCP port on 127.0.0.1, anything else
    # the path of a Unix socket.
    if value.isdigit():
        port = int(value)
        if not 1 <= port <= 65535:
            raise ValueError(f"controlPort={value} is not a port")
        return f"tcp:127.0.0.1:{port}"
    if not value:
        raise ValueError("controlPort= needs a port number or a Unix socket path")
    return "unix:" + value.replace("\\", "\\\\").replace(":", "\\:")


def _flag(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"{name}= must be true or false")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class OnionSpec:
    """
    One C{onion:} endpoint string, checked.

    @ivar public_port: the port the service offers on its onion address.
    @ivar local_port: the 127.0.0.1 port Tor forwards to (0: any free one).
    @ivar control: a client endpoint string for the Tor control port to
        use, or C{None} for the node's Tor (C{tor.control}, or one it
        launches).
    @ivar private_key: an C{ED25519-V3:...} key given inline, if any.
    @ivar private_key_file: where the service's key is kept, if anywhere.
    @ivar single_hop: publish a non-anonymous single onion service (Tor
        must run with C{HiddenServiceNonAnonymousMode 1}).
    @ivar client_auth_file: the file of authorised clients' keys, if any.
    @ivar description: the string, redacted (for logs and errors).
    """

    public_port: int
    local_port: int = 0
    control: Optional[str] = None
    private_key: Optional[str] = None
    private_key_file: Optional[str] = None
    single_hop: bool = False
    client_auth_file: Optional[str] = None
    description: str = ""


def parse_onion(description: str) -> OnionSpec:
    """
    Check an C{onion:} endpoint string.

    @raise ValueError: saying what is wrong with it.
    """
    prefix, args, options = split_endpoint(description.strip())
    if prefix.lower() != "onion":
        raise ValueError("is not an onion: endpoint")
    if len(args) != 1 or not args[0].isdigit() or not 1 <= int(args[0]) <= 65535:
        raise ValueError("needs one public port, 1-65535 (onion:80)")
    unknown = sorted(set(options) - set(ONION_OPTIONS))
    if "hiddenServiceDir" in unknown:
        raise ValueError(
            "hiddenServiceDir= is not supported: use privateKeyFile=PATH to keep the "
            "onion address across restarts"
        )
    if unknown:
        raise ValueError(f"unknown option {unknown[0]}= (known: {', '.join(ONION_OPTIONS)})")
    version = options.get("version", "3")
    if version != "3":
        raise ValueError("only version=3 onion services exist (Tor dropped version 2)")
    local_port = 0
    if "localPort" in options:
        text = options["localPort"]
        if not text.isdigit() or not 0 <= int(text) <= 65535:
            raise ValueError(f"localPort={text} is not a port")
        local_port = int(text)
    control = _control_endpoint(options["controlPort"]) if "controlPort" in options else None
    private_key = options.get("privateKey")
    private_key_file = options.get("privateKeyFile")
    if private_key is not None and private_key_file is not None:
        raise ValueError("give privateKey= or privateKeyFile=, not both")
    if private_key is not None:
        if not private_key.startswith("ED25519-V3:"):
            private_key = "ED25519-V3:" + private_key
        _check_key_blob(private_key)
    if private_key_file == "":
        raise ValueError("privateKeyFile= needs a path")
    client_auth_file = options.get("clientAuthFile")
    if client_auth_file == "":
        raise ValueError("clientAuthFile= needs a path")
    return OnionSpec(
        public_port=int(args[0]),
        local_port=local_port,
        control=control,
        private_key=private_key,
        private_key_file=private_key_file,
        single_hop=_flag("singleHop", options["singleHop"]) if "singleHop" in options else False,
        client_auth_file=client_auth_file,
        description=redact(description.strip()),
    )


def _check_key_blob(blob: str) -> None:
    kind, _, encoded = blob.partition(":")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if kind != "ED25519-V3" or len(raw) != 64:
        raise ValueError("the private key is not an ED25519-V3 key (64 bytes in base64)")


def read_private_key(path: str) -> Optional[str]:
    """
    The key blob kept in C{path} (C{ED25519-V3:<base64>}, as this module
    saves it, or Tor's own C{hs_ed25519_secret_key}); C{None} if there is
    no file yet.

    @raise ValueError: the file holds no such key.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}")
    if data.startswith(_TOR_KEY_HEADER) and len(data) == len(_TOR_KEY_HEADER) + 64:
        return "ED25519-V3:" + base64.b64encode(data[len(_TOR_KEY_HEADER):]).decode("ascii")
    blob = data.decode("ascii", "replace").strip()
    try:
        _check_key_blob(blob)
    except ValueError:
        raise ValueError(f"{path} holds no onion service key (ED25519-V3:<base64>)")
    return blob


def save_private_key(path: str, blob: str) -> None:
    """
    Keep C{blob} in C{path}, readable by its owner only, replacing the
    file atomically.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".onion-key-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(blob + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_client_keys(path: str) -> List[str]:
    """
    The authorised clients' x25519 public keys in C{path}: one per line,
    as Tor writes them in an C{authorized_clients} file
    (C{descriptor:x25519:<base32>}) or bare base32; blank lines and C{#}
    comments are skipped.

    @raise ValueError: a line is not such a key, or there is none.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}")
    if len(data) > _MAX_KEY_FILE:
        raise ValueError(f"{path} is larger than {_MAX_KEY_FILE} bytes")
    keys = []
    for number, line in enumerate(data.decode("ascii", "replace").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if text.lower().startswith("descriptor:x25519:"):
            text = text[len("descriptor:x25519:"):]
        text = text.upper().rstrip("=")
        if not _BASE32_KEY.match(text):
            raise ValueError(f"{path} line {number} is not an x25519 public key in base32")
        keys.append(text)
    if not keys:
        raise ValueError(f"{path} lists no client keys")
    return keys


# --- who is on the other end ------------------------------------------------------


@implementer(IAddress)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class ViaOnion:
    """
    The peer address of a connection that came in through one of this
    node's onion services.  Tor hides who the client is, so this names the
    service it came in through; it is never a loopback address, though Tor
    connects from 127.0.0.1.

    @ivar host: the service's onion address.
    @ivar port: the service's public port.
    """

    host: str
    port: int


class _ViaOnionProtocol(ProtocolWrapper):
    def getPeer(self) -> ViaOnion:
        return self.factory.address


class _ViaOnionFactory(WrappingFactory):
    """
    Wraps the listener's factory so that its protocols see a L{ViaOnion}
    peer (set once Tor has named the service).
    """

    protocol = _ViaOnionProtocol
    noisy = False

    def __init__(self, wrapped: Any, address: ViaOnion) -> None:
        super().__init__(wrapped)
        self.address = address

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(self.address)
        if wrapped is None:
            # Refused (a listener past its limits): close at once.
            return None
        return self.protocol(self, wrapped)

    def logPrefix(self) -> str:
        # Twisted names the port in its "<prefix> starting on N" line.
        inner = getattr(self.wrappedFactory, "logPrefix", None)
        name = inner() if callable(inner) else self.wrappedFactory.__class__.__name__
        return f"{name} (onion)"


# --- the listening side --------------------------------------------------------------


@implementer(IListeningPort)
class OnionPort:
    """
    One published onion service: the 127.0.0.1 port Tor forwards to, and
    the service in Tor.  L{stopListening} removes the service from Tor
    (C{DEL_ONION}) and closes the port.

    @ivar address: the service's L{ViaOnion} address.
    @ivar published: whether a descriptor has been uploaded (the service
        is reachable over Tor).
    @ivar lost: whether Tor dropped the service (its control connection
        closed while the node ran).
    """

    def __init__(
        self,
        tor: "TorService",
        name: str,
        control: Any,
        local: Any,
        address: ViaOnion,
        client_auth: int,
    ) -> None:
        self._tor = tor
        self.name = name
        self._control = control
        self._local = local
        self.address = address
        self.client_auth = client_auth
        self.published = False
        self.lost = False
        self.upload_failures = 0
        self._stopped = False

    @property
    def service_id(self) -> str:
        """
        The onion address without C{.onion}, as Tor's control port names it.
        """
        return self.address.host[: -len(".onion")]

    def startListening(self) -> None:
        """
        Nothing to do: the service is up once L{OnionEndpoint.listen} fires.
        """

    def getHost(self) -> ViaOnion:
        """
        The onion address and public port.
        """
        return self.address

    @property
    def local_address(self) -> str:
        """
        Where Tor forwards the service, C{127.0.0.1:PORT}.
        """
        host = self._local.getHost()
        return f"{host.host}:{host.port}"

    def hs_desc(self, event: str) -> None:
        """
        Follow Tor's C{HS_DESC} events for this service: the first upload
        makes it reachable; failures are logged (Tor keeps trying).
        """
        fields = event.split()
        if len(fields) < 4 or fields[1] != self.service_id:
            return
        action, directory = fields[0], fields[3]
        if action == "UPLOADED" and not self.published:
            self.published = True
            log.info(
                "onion service {address} is published (descriptor uploaded to {directory})",
                address=f"{self.address.host}:{self.address.port}",
                directory=directory,
            )
        elif action == "FAILED":
            self.upload_failures += 1
            reason = next((f[len("REASON="):] for f in fields if f.startswith("REASON=")), "unknown")
            log_at = log.warn if self.upload_failures == 1 and not self.published else log.debug
            log_at(
                "onion service {address}: descriptor upload to {directory} failed ({reason}); "
                "Tor keeps trying",
                address=f"{self.address.host}:{self.address.port}",
                directory=directory,
                reason=reason,
            )

    def stopListening(self) -> Deferred:
        """
        Remove the service from Tor and close the local port.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._tor._forget(self)
        protocol = self._control.protocol
        try:
            await protocol.remove_event_listener("HS_DESC", self.hs_desc)
        except Exception:
            pass
        try:
            d = protocol.queue_command(f"DEL_ONION {self.service_id}")
            await d.addTimeout(self._tor.timeout, self._tor.reactor)
        except Exception as e:
            # Tor gone or the connection closed: the service went with it.
            log.debug(
                "removing onion service {address}: {error}", address=self.address.host, error=str(e)
            )
        await _maybe(self._local.stopListening())
        log.info(
            "onion service {address} removed", address=f"{self.address.host}:{self.address.port}"
        )


@implementer(IStreamServerEndpoint)
class OnionEndpoint:
    """
    An C{onion:} endpoint string as a server endpoint: listen on
    127.0.0.1, then ask Tor (C{ADD_ONION}) to publish that port as an
    onion service.

    @param tor: the node's L{TorService}.
    @param spec: the parsed string.
    @param name: what listens, for logs and status (C{api-1},
        C{streams}).
    """

    def __init__(self, tor: "TorService", spec: OnionSpec, name: str) -> None:
        self.tor = tor
        self.spec = spec
        self.name = name

    def listen(self, factory: Any) -> Deferred:
        """
        Publish C{factory} as an onion service; fires with an L{OnionPort}
        once Tor has accepted it, or fails with L{TorUnavailable}.
        """
        return Deferred.fromCoroutine(self._listen(factory))

    def _fail(self, why: str) -> TorUnavailable:
        return TorUnavailable(f"{self.name}: {self.spec.description}: {why}")

    async def _listen(self, factory: Any) -> OnionPort:
        spec = self.spec
        # Read the files first: a bad one is the operator's to fix, whatever
        # Tor says.
        key = spec.private_key
        if spec.private_key_file is not None:
            try:
                key = read_private_key(spec.private_key_file)
            except ValueError as e:
                raise self._fail(str(e))
        client_keys: List[str] = []
        if spec.client_auth_file is not None:
            try:
                client_keys = read_client_keys(spec.client_auth_file)
            except ValueError as e:
                raise self._fail(str(e))
        try:
            control = await self.tor.control_for(spec.control)
        except TorUnavailable as e:
            raise self._fail(str(e))
        address = ViaOnion("", spec.public_port)
        wrapper = _ViaOnionFactory(factory, address)
        local_endpoint = TCP4ServerEndpoint(self.tor.reactor, spec.local_port, interface="127.0.0.1")
        try:
            local = await local_endpoint.listen(wrapper)
        except Exception as e:
            raise self._fail(f"cannot listen on 127.0.0.1:{spec.local_port} ({e})")
        command = f"ADD_ONION {key or 'NEW:ED25519-V3'} Port={spec.public_port},127.0.0.1:{local.getHost().port}"
        flags = []
        if spec.single_hop:
            flags.append("NonAnonymous")
        if client_keys:
            flags.append("V3Auth")
        if flags:
            command += " Flags=" + ",".join(flags)
        for client in client_keys:
            command += f" ClientAuthV3={client}"
        try:
            reply = await self.tor.command(control, command)
            fields = dict(
                line.split("=", 1) for line in reply.splitlines() if "=" in line
            )
            service_id = fields["ServiceID"].strip()
        except Exception as e:
            await _maybe(local.stopListening())
            if isinstance(e, KeyError):
                raise self._fail("Tor's answer to ADD_ONION named no service")
            if isinstance(e, (CancelledError, DeferredTimeoutError)):
                raise self._fail(f"Tor gave no answer in time ({self.tor.timeout:.0f}s)")
            raise self._fail(f"Tor refused the onion service ({_reason(e)})")
        hostname = f"{service_id}.onion"
        if spec.private_key_file is not None and key is None:
            try:
                save_private_key(spec.private_key_file, fields["PrivateKey"].strip())
            except (OSError, KeyError) as e:
                try:
                    await self.tor.command(control, f"DEL_ONION {service_id}")
                except Exception:
                    pass
                await _maybe(local.stopListening())
                raise self._fail(f"cannot keep the key in {spec.private_key_file} ({e})")
        wrapper.address = ViaOnion(hostname, spec.public_port)
        port = OnionPort(self.tor, self.name, control, local, wrapper.address, len(client_keys))
        await control.protocol.add_event_listener("HS_DESC", port.hs_desc)
        self.tor._remember(port)
        log.info(
            "{name} published as onion service {address} (Tor forwards it to {local}{auth}); "
            "reachable once its descriptor is uploaded",
            name=self.name,
            address=f"{hostname}:{spec.public_port}",
            local=port.local_address,
            auth=f", {len(client_keys)} authorised clients" if client_keys else "",
        )
        return port


def _reason(error: BaseException) -> str:
    if isinstance(error, (CancelledError, DeferredTimeoutError, TwistedTimeoutError)):
        return "no answer in time"
    # txtorcon's TorProtocolError puts Tor's code first; the text is Tor's
    # own words.
    text = getattr(error, "text", None) or str(error) or error.__class__.__name__
    return text.splitlines()[0][:300]


# --- the dialing side ----------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class _OnionClientEndpoint:
    """
    Reaches C{host:port} through the node's Tor, getting (connecting to or
    launching) that Tor first.
    """

    def __init__(self, tor: "TorService", host: str, port: int) -> None:
        self._tor = tor
        self._host = host
        self._port = port

    def connect(self, factory: Any) -> Deferred:
        async def go() -> Any:
            control = await self._tor.control_for(None)
            socks = await self._tor.socks_endpoint(control)
            endpoint = self._tor._txtorcon.TorClientEndpoint(
                self._host, self._port, socks_endpoint=socks, reactor=self._tor.reactor
            )
            return await endpoint.connect(factory)

        return Deferred.fromCoroutine(go())


# --- a Tor of the node's own ------------------------------------------------------------


class TorProcess(ProcessProtocol):
    """
    A Tor launched for the node: its state in C{directory}, its control
    port on a free 127.0.0.1 port (C{ControlPort auto}, written to
    C{directory/control-port}) with cookie authentication, a SOCKS port on
    a free 127.0.0.1 port, and nothing else unless C{torrc} says so.

    Unlike C{txtorcon.launch}, L{start} does not wait for Tor to
    bootstrap: Tor accepts onion services before it has reached the
    network, and publishes them once it has.

    @param reactor: spawns the process.
    @param binary: the tor program.
    @param directory: its C{DataDirectory} (made, mode 0700).
    @param torrc: a torrc file to read first, or C{None}.
    """

    def __init__(self, reactor: Any, binary: str, directory: str, torrc: Optional[str] = None) -> None:
        self.reactor = reactor
        self.binary = binary
        self.directory = directory
        self.torrc = torrc
        self.ended: Deferred = Deferred()
        self._tail = bytearray()
        self._process: Any = None

    @property
    def port_file(self) -> str:
        """
        Where Tor writes its control port.
        """
        return os.path.join(self.directory, "control-port")

    def arguments(self) -> List[str]:
        """
        The command line (options given here override the torrc's).
        """
        none = os.path.join(self.directory, "no-such-torrc")
        return [
            self.binary,
            "--ignore-missing-torrc",
            "-f",
            self.torrc or none,
            "--defaults-torrc",
            none,
            "DataDirectory",
            self.directory,
            "ControlPort",
            "auto",
            "ControlPortWriteToFile",
            self.port_file,
            "CookieAuthentication",
            "1",
            "SocksPort",
            "auto",
            "__OwningControllerProcess",
            str(os.getpid()),
            "RunAsDaemon",
            "0",
            "Log",
            "notice stdout",
        ]

    async def start(self, timeout: float) -> str:
        """
        Start Tor and wait (at most C{timeout} seconds) for its control
        port.

        @return: the control port as a client endpoint string.
        @raise TorUnavailable: Tor exited or did not open it in time.
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        self._process = self.reactor.spawnProcess(
            self, self.binary, self.arguments(), env={"HOME": self.directory}, path=self.directory
        )
        deadline = self.reactor.seconds() + timeout
        while True:
            if self.ended.called:
                raise TorUnavailable(f"Tor: {self.binary} exited: {self.last_words()}")
            control = self._control_port()
            if control is not None:
                return control
            if self.reactor.seconds() >= deadline:
                raise TorUnavailable(
                    f"Tor: {self.binary} opened no control port within {timeout:.0f}s: {self.last_words()}"
                )
            await deferLater(self.reactor, 0.05, lambda: None)

    def _control_port(self) -> Optional[str]:
        try:
            with open(self.port_file, encoding="ascii") as f:
                text = f.read(256).strip()
        except (OSError, ValueError):
            return None
        match = re.match(r"^PORT=([0-9.]+):(\d+)$", text)
        if match is None:
            return None
        return f"tcp:{match.group(1)}:{match.group(2)}"

    def last_words(self) -> str:
        """
        Tor's last error or warning, or its last line.
        """
        lines = bytes(self._tail).decode("utf-8", "replace").splitlines()
        for marker in ("[err]", "[warn]"):
            found = [line for line in lines if marker in line]
            if found:
                return found[-1].split(marker, 1)[1].strip()[:300]
        return lines[-1][:300] if lines else "no output"

    async def stop(self, grace: float = 10.0) -> None:
        """
        End Tor (TERM, then KILL after C{grace} seconds) and wait for it.
        """
        if self._process is None:
            return
        for signal_name in ("TERM", "KILL"):
            if self.ended.called:
                return
            try:
                self._process.signalProcess(signal_name)
            except ProcessExitedAlready:
                return
            for _ in range(max(1, int(grace / 0.05))):
                if self.ended.called:
                    return
                await deferLater(self.reactor, 0.05, lambda: None)

    # ProcessProtocol

    def outReceived(self, data: bytes) -> None:
        self._tail += data
        del self._tail[:-4096]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


# --- the node's Tor ----------------------------------------------------------------------


class TorService(Service):
    """
    The node's way to Tor: control connections (made on first use and
    shared by every onion endpoint), a private Tor launched when no control
    port is configured, and client endpoints to reach onion addresses.

    Like the node's other parts, the work is in L{open} (nothing: Tor is
    reached when a listener or a dial first needs it) and L{close}
    (disconnect, stop a launched Tor), which the root awaits after the
    listeners that use it are closed.

    @param reactor: the reactor.
    @param data_dir: the node's data directory (a launched Tor keeps its
        state in C{tor/} there, which makes the next start quicker).
    @param control: C{tor.control}: a client endpoint string for a running
        Tor's control port, or C{None} to launch one when needed.
    @param socks: C{tor.socks}: a client endpoint string for a Tor SOCKS
        port to reach onion addresses through, or C{None} to ask the
        node's Tor for one.
    @param binary: C{tor.binary}: the tor program to launch (default:
        found on the C{PATH}).
    @param torrc: C{tor.torrc}: a torrc file for the launched Tor (bridges,
        a proxy, C{DisableNetwork}...), or C{None}.
    @param timeout: C{tor.timeout}: the longest any wait on Tor may take.
    @param txtorcon: the txtorcon module (tests pass a fake).
    """

    name = "tor"

    def __init__(
        self,
        reactor: Any,
        data_dir: str,
        control: Optional[str] = None,
        socks: Optional[str] = None,
        binary: Optional[str] = None,
        torrc: Optional[str] = None,
        timeout: float = 120.0,
        txtorcon: Any = None,
    ) -> None:
        if txtorcon is None:
            import txtorcon
        self.reactor = reactor
        self.data_dir = data_dir
        self.control = control
        self.socks = socks
        self.binary = binary
        self.torrc = torrc
        self.timeout = timeout
        self._txtorcon = txtorcon
        self._controls: Dict[Optional[str], Any] = {}
        self._pending: Dict[Optional[str], List[Deferred]] = {}
        self._launched: List[TorProcess] = []
        self._ports: List[OnionPort] = []
        self._closed = False

    # -- life

    async def open(self) -> None:
        """
        Nothing: Tor is reached when something first needs it.
        """
        self._closed = False

    async def close(self) -> None:
        """
        Remove the onion services still up, close the control connections
        and stop the Tor this node launched.
        """
        self._closed = True
        for port in list(self._ports):
            await port.stopListening()
        controls, self._controls = self._controls, {}
        for tor in controls.values():
            try:
                d = Deferred.fromCoroutine(_await(tor.quit()))
                await d.addTimeout(self.timeout, self.reactor)
            except Exception as e:
                log.debug("closing Tor's control connection: {error}", error=str(e))
        launched, self._launched = self._launched, []
        for process in launched:
            # It exits once its control connection is gone; make sure.
            await process.stop()

    # -- control connections

    def control_for(self, control: Optional[str]) -> Deferred:
        """
        A connected C{txtorcon.Tor} for the control endpoint string
        C{control}, or for the node's Tor when C{None} (C{tor.control}, or
        a Tor launched for the node).  One connection per endpoint, made on
        first use and shared.

        @return: a Deferred failing with L{TorUnavailable} when Tor cannot
            be had within C{tor.timeout}.
        """
        if self._closed:
            return fail(TorUnavailable("Tor: the node is stopping"))
        key = control if control is not None else self.control
        if key in self._controls:
            return succeed(self._controls[key])
        d: Deferred = Deferred()
        if key in self._pending:
            self._pending[key].append(d)
            return d
        self._pending[key] = [d]
        Deferred.fromCoroutine(self._get(key)).addBoth(self._got, key)
        return d

    def _got(self, result: Any, key: Optional[str]) -> None:
        waiters = self._pending.pop(key, [])
        if not isinstance(result, Failure) and self._closed:
            # Stopped while Tor was being reached: let it go again.
            _quietly(result.quit())
            result = Failure(TorUnavailable("Tor: the node is stopping"))
        if isinstance(result, Failure):
            # Not kept: the next listener or dial that needs Tor tries again.
            for d in waiters:
                d.errback(result)
            return
        self._controls[key] = result
        when_disconnected = getattr(result.protocol, "when_disconnected", None)
        if callable(when_disconnected):
            when_disconnected().addBoth(self._disconnected, key, result)
        for d in waiters:
            d.callback(result)

    def _disconnected(self, reason: Any, key: Optional[str], tor: Any) -> None:
        """
        A control connection closed while the node runs (Tor stopped or
        restarted): its onion services went with it.  They are not
        published again before the node restarts; the next listener or dial
        that needs Tor connects anew.
        """
        if self._closed or self._controls.get(key) is not tor:
            return
        del self._controls[key]
        lost = [port for port in self._ports if port._control is tor]
        for port in lost:
            port.lost = True
            port.published = False
        log.error(
            "Tor: the control connection to {control} closed; onion services gone from Tor until "
            "the node restarts: {addresses}",
            control=key or "the Tor launched for this node",
            addresses=", ".join(f"{p.address.host}:{p.address.port}" for p in lost) or "none",
        )

    async def _get(self, control: Optional[str]) -> Any:
        if control is not None:
            return await self._connect(control)
        return await self._launch()

    async def _connect(self, control: str) -> Any:
        try:
            endpoint = clientFromString(self.reactor, control)
        except (ValueError, KeyError, TypeError) as e:
            raise TorUnavailable(f"Tor: {control!r} is not a client endpoint string ({e})")
        d = Deferred.fromCoroutine(_await(self._txtorcon.connect(self.reactor, endpoint)))
        d.addTimeout(self.timeout, self.reactor)
        try:
            tor = await d
        except Exception as e:
            raise TorUnavailable(f"Tor: cannot use the control port {control} ({_reason(e)})")
        log.info(
            "Tor: connected to the control port {control} (Tor {version})",
            control=control,
            version=getattr(tor, "version", "?"),
        )
        return tor

    async def _launch(self) -> Any:
        binary = self.binary
        if binary is not None:
            if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
                raise TorUnavailable(f"tor.binary: {binary} is not an executable file")
        else:
            binary = shutil.which("tor") or next(
                (p for p in ("/usr/sbin/tor", "/usr/local/bin/tor", "/usr/bin/tor") if os.access(p, os.X_OK)),
                None,
            )
            if binary is None:
                raise TorUnavailable(
                    "Tor: no tor program found to launch: install Tor (Debian: apt-get install tor), "
                    "or set tor.control to a running Tor's control port"
                )
        directory = os.path.abspath(os.path.join(self.data_dir, "tor"))
        process = TorProcess(self.reactor, binary, directory, torrc=self.torrc)
        log.info(
            "Tor: launching {binary} with its state in {directory}",
            binary=binary,
            directory=directory,
        )
        try:
            control = await process.start(self.timeout)
            tor = await self._connect(control)
            # Tor exits when this connection closes, so it never outlives
            # the node (txtorcon.launch does the same).
            await self.command(tor, "TAKEOWNERSHIP")
        except BaseException:
            await process.stop()
            raise
        self._launched.append(process)
        return tor

    async def command(self, control: Any, command: str) -> str:
        """
        Send one control-port command, bounded by C{tor.timeout}.
        """
        d = Deferred.fromCoroutine(_await(control.protocol.queue_command(command)))
        d.addTimeout(self.timeout, self.reactor)
        return await d

    # -- reaching onion addresses

    async def socks_endpoint(self, control: Any) -> IStreamClientEndpoint:
        """
        A client endpoint to the SOCKS port of the Tor behind C{control}
        (asked, never configured: the node does not change a Tor it did
        not launch).

        @raise TorUnavailable: that Tor has no TCP SOCKS port.
        """
        reply = await self.command(control, "GETINFO net/listeners/socks")
        for listener in re.findall(r'"([^"]+)"', reply):
            match = re.match(r"^(\d+\.\d+\.\d+\.\d+):(\d+)$", listener)
            if match is not None:
                return TCP4ClientEndpoint(self.reactor, match.group(1), int(match.group(2)))
        raise TorUnavailable("Tor: the Tor in use has no SOCKS port on 127.0.0.1; set tor.socks")

    def client_endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        """
        A client endpoint to C{host:port} through Tor: its SOCKS port
        C{tor.socks} when set, otherwise the node's Tor.  Tor resolves the
        name, so nothing leaks to DNS.
        """
        if self.socks is not None:
            socks = clientFromString(self.reactor, self.socks)
            return self._txtorcon.TorClientEndpoint(host, port, socks_endpoint=socks, reactor=self.reactor)
        return _OnionClientEndpoint(self, host, port)

    # -- what is published

    def _remember(self, port: OnionPort) -> None:
        self._ports.append(port)

    def _forget(self, port: OnionPort) -> None:
        if port in self._ports:
            self._ports.remove(port)

    def hostnames(self, name: Optional[str] = None) -> List[Tuple[str, int]]:
        """
        The onion addresses published (by listener C{name}, or all).
        """
        return [(p.address.host, p.address.port) for p in self._ports if name in (None, p.name)]

    def onions(self) -> List[Dict[str, Any]]:
        """
        The onion services this node publishes, for the status API.
        """
        return [
            {
                "listener": p.name,
                "address": f"{p.address.host}:{p.address.port}",
                "local": p.local_address,
                "published": p.published,
                "lost": p.lost,
                "client_auth": p.client_auth,
            }
            for p in self._ports
        ]


async def _await(value: Any) -> Any:
    return await value


async def _maybe(value: Any) -> Any:
    # IListeningPort.stopListening returns a Deferred or None.
    if isinstance(value, Deferred):
        return await value
    return value


async def _raise(error: BaseException) -> Any:
    raise error


def _quietly(d: Any) -> None:
    # A Deferred whose outcome does not matter (Tor going away anyway).
    if isinstance(d, Deferred):
        d.addErrback(lambda f: None)


def from_config(config: Any, reactor: Any) -> Optional[TorService]:
    """
    The node's L{TorService} if its configuration uses Tor (an C{onion:}
    listener in C{api} or C{streams.listen}, a C{.onion} seed, or
    C{tor.control} or C{tor.socks} set), else C{None}.

    @raise ConfigError: a C{tor.*} value or an onion seed is wrong, or
        txtorcon is not installed.
    """
    onion_seeds = [host for host, _ in config["gossip.seeds"] if host.lower().endswith(".onion")]
    for host in onion_seeds:
        if not is_onion_host(host):
            raise ConfigError(f"gossip.seeds: {host} is not a v3 onion address (56 characters .onion)")
    uses_tor = (
        onion_seeds
        or any(is_onion_endpoint(d) for d in config["api"])
        or any(is_onion_endpoint(d) for d in config["streams.listen"])
        # Set for onion seeds given later, through the API.
        or config["tor.control"] is not None
        or config["tor.socks"] is not None
    )
    if not uses_tor:
        return None
    for key in ("tor.control", "tor.socks"):
        if config[key] is not None:
            try:
                clientFromString(reactor, config[key])
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{key}: {config[key]!r} is not a client endpoint string ({e})")
    try:
        import txtorcon
    except ImportError:
        raise ConfigError("onion services and onion seeds need txtorcon (pip install txtorcon)")
    return TorService(
        reactor,
        config["data_dir"],
        control=config["tor.control"],
        socks=config["tor.socks"],
        binary=config["tor.binary"],
        torrc=config["tor.torrc"],
        timeout=config["tor.timeout"],
        txtorcon=txtorcon,
    )
