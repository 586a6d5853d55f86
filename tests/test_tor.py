"""
Tests for onion endpoints and Tor (L{caxton.tor}, L{caxton.endpoints},
docs/tor.md).

The unit tests drive L{caxton.tor.OnionEndpoint} and L{TorService} against
a fake control connection on a L{MemoryReactorClock}; the fake answers as
Debian's Tor 0.4.9 does, which the integration tests below check against
the real thing.

The integration tests run Debian's C{tor} (skipped with a reason when it
is not installed) with C{DisableNetwork 1}: it runs a control port and
accepts onion services, but uploads no descriptor and opens no SOCKS
port, so nothing can reach an onion over Tor here.  They show what can be
shown for real: a node publishing its API and its node streams as onion
services (proved by Tor refusing the same key from another controller
while the node runs, and accepting it after the node stopped), the API
answering on the port Tor forwards the service to, a node launching its
own Tor, and the one-line errors when Tor is missing, unreachable or
refuses.  The join through an onion seed is shown end to end through a
stand-in for Tor's SOCKS port (a small SOCKS5 server that maps the onion
address to the port Tor would forward it to): everything but Tor's
circuits is real.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import struct
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from caxton.config import ConfigError, load
from caxton.endpoints import EndpointListener, ListenAll, listener_service, server_endpoint
from caxton.tor import (
    OnionEndpoint,
    TorProcess,
    TorService,
    TorUnavailable,
    ViaOnion,
    from_config,
    is_onion_host,
    parse_onion,
    read_client_keys,
    read_private_key,
    redact,
    save_private_key,
    split_endpoint,
)
from tests.nodes import REPO, Client, NodeProcess, _Output

ONION = "pnrcihuhpjnmlporefshdoznrck7qi6nvfojoycqnei7viseuane7tyd"
KEY = "ED25519-V3:" + base64.b64encode(bytes(range(64))).decode("ascii")


def _tor_binary() -> Optional[str]:
    return shutil.which("tor") or ("/usr/sbin/tor" if os.access("/usr/sbin/tor", os.X_OK) else None)


TOR = _tor_binary()
NO_TOR = "Debian's tor package is not installed (CI installs it: apt-get install tor)"


def client_key() -> str:
    """
    A fresh x25519 public key in base32, as Tor's client authorisation
    wants it.
    """
    raw = X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b32encode(raw).decode("ascii").rstrip("=")


# --- the endpoint string -----------------------------------------------------------------


class ParseTests(SynchronousTestCase):
    """
    C{onion:} strings: txtorcon's grammar, checked up front.
    """

    def test_split(self) -> None:
        """
        Fields split at colons, a backslash escapes, key=value are options.
        """
        self.assertEqual(
            split_endpoint(r"onion:80:controlPort=/run/a\:b:x=1"),
            ("onion", ["80"], {"controlPort": "/run/a:b", "x": "1"}),
        )

    def test_defaults(self) -> None:
        """
        C{onion:80} is a version 3 service on the node's Tor, forwarded to
        any free local port.
        """
        spec = parse_onion("onion:80")
        self.assertEqual(
            (spec.public_port, spec.local_port, spec.control, spec.private_key, spec.single_hop),
            (80, 0, None, None, False),
        )
        self.assertEqual(parse_onion("onion:80:version=3").public_port, 80)

    def test_control_port(self) -> None:
        """
        A numeric controlPort is TCP on 127.0.0.1, anything else a Unix
        socket path (txtorcon's rule).
        """
        self.assertEqual(parse_onion("onion:80:controlPort=9051").control, "tcp:127.0.0.1:9051")
        self.assertEqual(
            parse_onion("onion:80:controlPort=/run/tor/control").control, "unix:/run/tor/control"
        )

    def test_options(self) -> None:
        """
        localPort, privateKeyFile, clientAuthFile and singleHop are read.
        """
        spec = parse_onion(
            "onion:7946:localPort=7000:privateKeyFile=/k:clientAuthFile=/c:singleHop=true"
        )
        self.assertEqual(
            (spec.local_port, spec.private_key_file, spec.client_auth_file, spec.single_hop),
            (7000, "/k", "/c", True),
        )
        encoded = KEY.split(":", 1)[1]
        self.assertEqual(parse_onion(f"onion:80:privateKey={encoded}").private_key, KEY)

    def test_errors(self) -> None:
        """
        Each mistake is refused with a message that says what to write.
        """
        cases = {
            "onion:": "one public port",
            "onion:http": "one public port",
            "onion:70000": "one public port",
            "onion:80:81": "one public port",
            "onion:80:version=2": "only version=3",
            "onion:80:hiddenServiceDir=/x": "privateKeyFile=PATH",
            "onion:80:bogus=1": "unknown option bogus=",
            "onion:80:localPort=x": "localPort=x is not a port",
            "onion:80:controlPort=0": "not a port",
            "onion:80:singleHop=maybe": "singleHop= must be true or false",
            "onion:80:privateKey=abc": "not an ED25519-V3 key",
            f"onion:80:privateKey={KEY.split(':')[1]}:privateKeyFile=/k": "not both",
        }
        for description, expected in cases.items():
            with self.assertRaises(ValueError, msg=description) as caught:
                parse_onion(description)
            self.assertIn(expected, str(caught.exception), description)

    def test_redact(self) -> None:
        """
        An inline private key never reaches a log or an error message.
        """
        secret = KEY.split(":", 1)[1]
        self.assertEqual(redact(f"onion:80:privateKey={secret}:version=3"), "onion:80:privateKey=***:version=3")
        self.assertNotIn(secret, parse_onion(f"onion:80:privateKey={secret}").description)
        with self.assertRaises(ConfigError) as caught:
            server_endpoint(MemoryReactorClock(), f"onion:80:privateKey={secret}:version=2", "api", None)
        self.assertNotIn(secret, str(caught.exception))
        self.assertIn("api: ", str(caught.exception))

    def test_onion_host(self) -> None:
        """
        Only v3 onion addresses count as onion hosts.
        """
        self.assertTrue(is_onion_host(ONION + ".onion"))
        self.assertTrue(is_onion_host(ONION.upper() + ".ONION"))
        self.assertFalse(is_onion_host("short.onion"))
        self.assertFalse(is_onion_host("10.0.0.1"))


class KeyFileTests(SynchronousTestCase):
    """
    Service keys and client keys on disk.
    """

    def test_round_trip(self) -> None:
        """
        A saved key reads back, and the file is readable by its owner only.
        """
        path = os.path.join(self.mktemp(), "sub", "api.key")
        self.assertIsNone(read_private_key(path))
        save_private_key(path, KEY)
        self.assertEqual(read_private_key(path), KEY)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_tor_key_file(self) -> None:
        """
        Tor's own hs_ed25519_secret_key (from a HiddenServiceDir) is read,
        so an existing onion address can move to a node.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"== ed25519v1-secret: type0 ==\x00\x00\x00" + bytes(range(64)))
        self.assertEqual(read_private_key(path), KEY)

    def test_not_a_key(self) -> None:
        """
        A file holding something else is refused, naming it.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("hello\n")
        with self.assertRaises(ValueError) as caught:
            read_private_key(path)
        self.assertIn(path, str(caught.exception))

    def test_client_keys(self) -> None:
        """
        Client keys in Tor's authorized_clients form or bare, with comments.
        """
        one, two = client_key(), client_key()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"# alice\ndescriptor:x25519:{one}\n\n{two.lower()}  # bob\n")
        self.assertEqual(read_client_keys(path), [one, two])

    def test_client_key_errors(self) -> None:
        """
        A bad line (with its number), an empty file or a missing one is
        refused.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{client_key()}\nnot-a-key\n")
        with self.assertRaises(ValueError) as caught:
            read_client_keys(path)
        self.assertIn("line 2", str(caught.exception))
        with open(path, "w") as f:
            f.write("# nobody\n")
        self.assertRaises(ValueError, read_client_keys, path)
        self.assertRaises(ValueError, read_client_keys, path + ".missing")


# --- configuration -------------------------------------------------------------------------


class ConfigTests(SynchronousTestCase):
    """
    The C{tor.*} and C{streams.listen} keys, and when a node uses Tor.
    """

    def config(self, **values: Any) -> Any:
        values.setdefault("data_dir", self.mktemp())
        return load(values, {})

    def test_defaults(self) -> None:
        """
        Without onion endpoints or seeds a node has no Tor.
        """
        config = self.config()
        self.assertEqual(config["streams.listen"], ())
        self.assertEqual(config["tor.timeout"], 120.0)
        self.assertIsNone(config["tor.control"])
        self.assertIsNone(from_config(config, MemoryReactorClock()))

    def test_environment(self) -> None:
        """
        The keys come from the environment like every other.
        """
        config = load(
            {},
            {
                "CAXTON_STREAMS_LISTEN": "onion:7946,tcp:7947",
                "CAXTON_TOR_CONTROL": "unix:/run/tor/control",
                "CAXTON_TOR_TIMEOUT": "30s",
            },
        )
        self.assertEqual(config["streams.listen"], ("onion:7946", "tcp:7947"))
        self.assertEqual(config["tor.control"], "unix:/run/tor/control")
        self.assertEqual(config["tor.timeout"], 30.0)

    def test_uses_tor(self) -> None:
        """
        An onion API, onion node streams or an onion seed give the node a
        Tor service with the configured values.
        """
        for values in (
            {"api": ["onion:80"]},
            {"streams.listen": ["onion:7946"]},
            {"gossip.seeds": f"{ONION}.onion:7946"},
        ):
            tor = from_config(
                self.config(**values, **{"tor.control": "tcp:127.0.0.1:9051", "tor.timeout": "5s"}),
                MemoryReactorClock(),
            )
            self.assertIsInstance(tor, TorService, values)
            self.assertEqual((tor.control, tor.timeout), ("tcp:127.0.0.1:9051", 5.0))

    def test_bad_values(self) -> None:
        """
        A malformed onion seed or Tor endpoint is a configuration error
        naming the key.
        """
        with self.assertRaises(ConfigError) as caught:
            from_config(self.config(**{"gossip.seeds": "typo.onion:7946"}), MemoryReactorClock())
        self.assertIn("gossip.seeds: typo.onion", str(caught.exception))
        for key in ("tor.control", "tor.socks"):
            with self.assertRaises(ConfigError) as caught:
                from_config(self.config(api=["onion:80"], **{key: "bogus:1"}), MemoryReactorClock())
            self.assertIn(f"{key}: 'bogus:1'", str(caught.exception))

    def test_build_node(self) -> None:
        """
        A node with an onion API has a C{tor} service and an onion listener
        whose start the root awaits; bad strings and streams.listen without
        a cluster stop the build with one line.
        """
        from caxton.node import build_node

        node = build_node(self.config(api=["tcp:0", "onion:80:controlPort=9051"]), MemoryReactorClock())
        self.assertEqual(
            [child.name for child in node], ["store", "runtime", "agents", "tor", "retention", "audit", "observability", "api-0", "api-1"]
        )
        self.assertIsInstance(node.getServiceNamed("api-1"), EndpointListener)
        with self.assertRaises(ConfigError) as caught:
            build_node(self.config(api=["onion:80:version=2"]), MemoryReactorClock())
        self.assertIn("api: 'onion:80:version=2'", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            build_node(self.config(**{"streams.listen": ["onion:7946"]}), MemoryReactorClock())
        self.assertIn("streams.listen: node streams run only in a cluster", str(caught.exception))

    def test_tcp_listener(self) -> None:
        """
        Any other string is Twisted's: a listener that binds at once.
        """
        service = listener_service(MemoryReactorClock(), "tcp:0", "api", Factory(), None)
        self.assertNotIsInstance(service, EndpointListener)
        self.assertRaises(ConfigError, listener_service, MemoryReactorClock(), "bogus:1", "api", Factory())


# --- a fake control connection --------------------------------------------------------------


class FakeControl:
    """
    The control protocol side of a C{txtorcon.Tor}: commands answered by
    C{answer}, events delivered by L{event}.
    """

    def __init__(self, answer: Callable[[str], Any]) -> None:
        self.answer = answer
        self.commands: List[str] = []
        self.listeners: Dict[str, List[Callable[[str], None]]] = {}
        self.disconnected: Deferred = Deferred()

    def when_disconnected(self) -> Deferred:
        d: Deferred = Deferred()
        self.disconnected.addBoth(lambda r: (d.callback(r), r)[1])
        return d

    def queue_command(self, command: str) -> Deferred:
        self.commands.append(command)
        try:
            result = self.answer(command)
        except Exception as e:
            return fail(e)
        return result if isinstance(result, Deferred) else succeed(result)

    def add_event_listener(self, name: str, callback: Callable[[str], None]) -> Deferred:
        self.listeners.setdefault(name, []).append(callback)
        return succeed(None)

    def remove_event_listener(self, name: str, callback: Callable[[str], None]) -> Deferred:
        self.listeners[name].remove(callback)
        return succeed(None)

    def event(self, name: str, text: str) -> None:
        for callback in list(self.listeners.get(name, [])):
            callback(text)


class FakeTor:
    """
    A connected C{txtorcon.Tor}.
    """

    version = "0.4.9.11"

    def __init__(self, protocol: FakeControl) -> None:
        self.protocol = protocol
        self.quit_called = False

    def quit(self) -> Deferred:
        self.quit_called = True
        return succeed(None)


class FakeTxtorcon:
    """
    The parts of the txtorcon module the node uses.
    """

    def __init__(self, tor: Optional[FakeTor] = None, error: Optional[Exception] = None) -> None:
        self.tor = tor
        self.error = error
        self.connected: List[Any] = []
        self.clients: List[Tuple[str, int, Any]] = []

    def connect(self, reactor: Any, endpoint: Any) -> Deferred:
        self.connected.append(endpoint)
        if self.error is not None:
            return fail(self.error)
        return succeed(self.tor) if self.tor is not None else Deferred()

    def TorClientEndpoint(self, host: str, port: int, socks_endpoint: Any = None, reactor: Any = None) -> Any:
        self.clients.append((host, port, socks_endpoint))
        return FakeClientEndpoint(host, port)


class FakeClientEndpoint:
    """
    txtorcon's client endpoint: connecting gives C{(host, port)}.
    """

    def __init__(self, host: str, port: int) -> None:
        self.where = (host, port)

    def connect(self, factory: Any) -> Deferred:
        return succeed(self.where)


class TorAnswers:
    """
    Answers as Tor 0.4.9 gives them (checked by the integration tests).
    """

    def __init__(self) -> None:
        self.refuse: Optional[str] = None

    def __call__(self, command: str) -> str:
        from txtorcon.torcontrolprotocol import TorProtocolError

        if command.startswith("ADD_ONION"):
            if self.refuse:
                raise TorProtocolError(512, self.refuse)
            lines = [f"ServiceID={ONION}"]
            if "NEW:" in command:
                lines.append(f"PrivateKey={KEY}")
            return "\n".join(lines)
        if command.startswith("DEL_ONION"):
            return "OK"
        if command == "GETINFO net/listeners/socks":
            return 'net/listeners/socks="127.0.0.1:9050" "unix:/run/tor/socks"'
        return "OK"


class RecordingReactor(MemoryReactorClock):
    """
    A memory reactor that keeps the ports it hands out.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: List[Any] = []

    def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
        port = super().listenTCP(*args, **kwargs)
        port.connected = True

        def stop() -> None:
            port.connected = False

        port.stopListening = stop
        self.ports.append(port)
        return port


class OnionEndpointTests(SynchronousTestCase):
    """
    L{OnionEndpoint} against a fake control connection.
    """

    def setUp(self) -> None:
        self.reactor = RecordingReactor()
        self.answers = TorAnswers()
        self.control = FakeControl(self.answers)
        self.txtorcon = FakeTxtorcon(FakeTor(self.control))
        self.tor = TorService(
            self.reactor, self.mktemp(), control="tcp:127.0.0.1:9051", timeout=5.0, txtorcon=self.txtorcon
        )
        self.successResultOf(Deferred.fromCoroutine(self.tor.open()))

    def listen(self, description: str, factory: Any = None) -> Deferred:
        endpoint = server_endpoint(self.reactor, description, "api", self.tor)
        self.assertIsInstance(endpoint, OnionEndpoint)
        return endpoint.listen(factory or Factory.forProtocol(Protocol))

    def test_publish(self) -> None:
        """
        Listening binds 127.0.0.1 and asks Tor for a new v3 service
        forwarded there; the port is the onion address, and the status
        lists it, not yet published.
        """
        port = self.successResultOf(self.listen("onion:80:localPort=8123"))
        self.assertEqual(
            self.control.commands, ["ADD_ONION NEW:ED25519-V3 Port=80,127.0.0.1:8123"]
        )
        self.assertEqual(self.reactor.tcpServers[0][0], 8123)
        self.assertEqual(self.reactor.tcpServers[0][3], "127.0.0.1")
        self.assertEqual(port.getHost(), ViaOnion(f"{ONION}.onion", 80))
        self.assertTrue(verifyObject(IListeningPort, port))
        [onion] = self.tor.onions()
        self.assertEqual(
            onion,
            {
                "listener": "api",
                "address": f"{ONION}.onion:80",
                "local": "0.0.0.0:8123",
                "published": False,
                "lost": False,
                "client_auth": 0,
            },
        )
        self.assertEqual(self.tor.hostnames("api"), [(f"{ONION}.onion", 80)])

    def test_published(self) -> None:
        """
        The first descriptor upload of this service marks it published;
        other services' events change nothing.
        """
        port = self.successResultOf(self.listen("onion:80"))
        self.control.event("HS_DESC", "UPLOADED someoneelse UNKNOWN $AAAA")
        self.assertFalse(port.published)
        self.control.event("HS_DESC", f"FAILED {ONION} NO_AUTH $BBBB REASON=UPLOAD_REJECTED")
        self.assertEqual((port.published, port.upload_failures), (False, 1))
        self.control.event("HS_DESC", f"UPLOADED {ONION} UNKNOWN $CCCC")
        self.assertTrue(port.published)
        self.assertTrue(self.tor.onions()[0]["published"])

    def test_stop(self) -> None:
        """
        Stopping removes the service from Tor and closes the local port;
        Tor's events are no longer followed.
        """
        port = self.successResultOf(self.listen("onion:80"))
        local = port._local
        self.successResultOf(port.stopListening())
        self.assertEqual(self.control.commands[-1], f"DEL_ONION {ONION}")
        self.assertFalse(local.connected)
        self.assertEqual(self.control.listeners["HS_DESC"], [])
        self.assertEqual(self.tor.onions(), [])

    def test_key_file(self) -> None:
        """
        With privateKeyFile the new key is saved, and the next listen
        reuses it (the same onion address after a restart).
        """
        path = os.path.join(self.mktemp(), "api.key")
        self.successResultOf(self.listen(f"onion:80:privateKeyFile={path}"))
        self.assertEqual(read_private_key(path), KEY)
        self.successResultOf(self.listen(f"onion:81:privateKeyFile={path}"))
        self.assertTrue(self.control.commands[-1].startswith(f"ADD_ONION {KEY} Port=81,"))

    def test_flags(self) -> None:
        """
        Client authorisation and single-hop become ADD_ONION flags and
        arguments.
        """
        one, two = client_key(), client_key()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{one}\n{two}\n")
        port = self.successResultOf(self.listen(f"onion:80:clientAuthFile={path}:singleHop=true"))
        self.assertTrue(
            self.control.commands[-1].endswith(
                f" Flags=NonAnonymous,V3Auth ClientAuthV3={one} ClientAuthV3={two}"
            )
        )
        self.assertEqual(port.client_auth, 2)

    def test_refused(self) -> None:
        """
        A refusal by Tor fails the listen with one line naming the key, the
        string and Tor's reason, and closes the local port.
        """
        self.answers.refuse = "Tor is in anonymous hidden service mode"
        failure = self.failureResultOf(self.listen("onion:80:singleHop=true"), TorUnavailable)
        self.assertEqual(
            str(failure.value),
            "api: onion:80:singleHop=true: Tor refused the onion service "
            "(Tor is in anonymous hidden service mode)",
        )
        self.assertFalse(self.reactor.ports[-1].connected)
        self.assertEqual(self.tor.onions(), [])

    def test_bad_files(self) -> None:
        """
        An unreadable key or client file fails the listen before Tor is
        asked anything.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("nonsense\n")
        for description in (f"onion:80:privateKeyFile={path}", f"onion:80:clientAuthFile={path}"):
            failure = self.failureResultOf(self.listen(description), TorUnavailable)
            self.assertIn(path, str(failure.value))
        self.assertEqual(self.control.commands, [])

    def test_silent_tor(self) -> None:
        """
        A Tor that never answers fails the listen after tor.timeout.
        """
        self.control.answer = lambda command: Deferred()
        d = self.listen("onion:80")
        self.assertNoResult(d)
        self.reactor.advance(5.0)
        failure = self.failureResultOf(d, TorUnavailable)
        self.assertIn("no answer in time", str(failure.value))

    def test_unreachable(self) -> None:
        """
        A control port that cannot be reached is one line naming it.
        """
        from twisted.internet.error import ConnectionRefusedError

        self.txtorcon.error = ConnectionRefusedError()
        tor = TorService(self.reactor, self.mktemp(), control="tcp:127.0.0.1:1", txtorcon=self.txtorcon)
        endpoint = server_endpoint(self.reactor, "onion:80", "api", tor)
        failure = self.failureResultOf(endpoint.listen(Factory()), TorUnavailable)
        self.assertIn("api: onion:80: Tor: cannot use the control port tcp:127.0.0.1:1", str(failure.value))
        self.assertNotIn("\n", str(failure.value))

    def test_one_connection(self) -> None:
        """
        Listeners on the same control port share one connection; a control
        port named in the string gets its own.
        """
        self.successResultOf(self.listen("onion:80"))
        self.successResultOf(self.listen("onion:81"))
        self.assertEqual(len(self.txtorcon.connected), 1)
        self.successResultOf(self.listen("onion:82:controlPort=9999"))
        self.assertEqual(len(self.txtorcon.connected), 2)

    def test_peer_is_not_loopback(self) -> None:
        """
        A connection through the onion service sees a L{ViaOnion} peer
        naming the service, not the 127.0.0.1 Tor connects from; a factory
        refusing a connection still refuses it.
        """
        seen = []

        class Peer(Protocol):
            def connectionMade(self) -> None:
                seen.append(self.transport.getPeer())

        factory = Factory.forProtocol(Peer)
        self.successResultOf(self.listen("onion:80", factory))
        wrapper = self.reactor.tcpServers[0][1]
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        protocol = wrapper.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)))
        self.assertEqual(seen, [ViaOnion(f"{ONION}.onion", 80)])
        factory.buildProtocol = lambda addr: None
        self.assertIsNone(wrapper.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001)))

    def test_tor_goes_away(self) -> None:
        """
        When the control connection closes under the node, its services
        are marked lost (and not published), an error is logged, and the
        next listener connects anew.
        """
        from twisted.logger import capturedLogs

        self.successResultOf(self.listen("onion:80"))
        self.control.event("HS_DESC", f"UPLOADED {ONION} UNKNOWN $CCCC")
        with capturedLogs() as events:
            self.control.disconnected.callback(None)
        [onion] = self.tor.onions()
        self.assertEqual((onion["published"], onion["lost"]), (False, True))
        self.assertEqual([e["log_level"].name for e in events], ["error"])
        self.assertIn(f"{ONION}.onion:80", events[0]["addresses"])
        self.successResultOf(self.listen("onion:81"))
        self.assertEqual(len(self.txtorcon.connected), 2)

    def test_close(self) -> None:
        """
        Closing the Tor service removes what is still published and closes
        the control connection; afterwards nothing can use it.
        """
        self.successResultOf(self.listen("onion:80"))
        self.successResultOf(Deferred.fromCoroutine(self.tor.close()))
        self.assertEqual(self.control.commands[-1], f"DEL_ONION {ONION}")
        self.assertTrue(self.txtorcon.tor.quit_called)
        self.failureResultOf(self.listen("onion:81"), TorUnavailable)

    def test_dial_through_socks(self) -> None:
        """
        With tor.socks an onion is dialed through that SOCKS port; without,
        through the SOCKS port the node's Tor reports.
        """
        tor = TorService(self.reactor, "", socks="tcp:127.0.0.1:9150", txtorcon=self.txtorcon)
        self.assertEqual(tor.client_endpoint(ONION + ".onion", 7946).where, (ONION + ".onion", 7946))
        self.assertEqual(self.txtorcon.clients[-1][2]._port, 9150)
        self.assertEqual(self.txtorcon.connected, [])
        endpoint = self.tor.client_endpoint(ONION + ".onion", 7946)
        self.assertEqual(self.successResultOf(endpoint.connect(Factory())), (ONION + ".onion", 7946))
        self.assertEqual(self.control.commands, ["GETINFO net/listeners/socks"])
        socks = self.txtorcon.clients[-1][2]
        self.assertEqual((socks._host, socks._port), ("127.0.0.1", 9050))


class ListenAllTests(SynchronousTestCase):
    """
    L{ListenAll}: one factory on several endpoints.
    """

    def test_all(self) -> None:
        """
        Every endpoint listens with the factory; the first gives the
        address; stopping stops all.
        """
        reactor = RecordingReactor()
        factory = Factory()
        both = ListenAll(
            [TCP4ServerEndpoint(reactor, 7000, interface="127.0.0.1"), TCP4ServerEndpoint(reactor, 7001)]
        )
        ports = self.successResultOf(both.listen(factory))
        self.assertEqual([(s[0], s[1]) for s in reactor.tcpServers], [(7000, factory), (7001, factory)])
        self.assertEqual(ports.getHost().port, 7000)
        self.successResultOf(ports.stopListening())
        self.assertFalse(any(p.connected for p in ports.ports))

    def test_one_fails(self) -> None:
        """
        When a later endpoint fails, the ones listening already stop, and
        the failure is the listen's.
        """
        reactor = MemoryReactorClock()

        class Refusing:
            def listen(self, factory: Any) -> Deferred:
                return fail(TorUnavailable("no Tor"))

        first = TCP4ServerEndpoint(reactor, 7000)
        self.failureResultOf(ListenAll([first, Refusing()]).listen(Factory()), TorUnavailable)
        self.assertEqual(len(reactor.tcpServers), 1)


# --- with a real Tor ---------------------------------------------------------------------------


class RealTorTestCase(unittest.TestCase):
    """
    Runs a real Tor with its network disabled (a control port, nothing
    else) and real nodes; all stopped at the end.
    """

    timeout = 180

    def setUp(self) -> None:
        if TOR is None:
            raise unittest.SkipTest(NO_TOR)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.torrc = os.path.join(self.base, "torrc")
        with open(self.torrc, "w") as f:
            # Hermetic everywhere: no directory fetches, no uploads, no
            # SOCKS, whether or not the machine is online.
            f.write("DisableNetwork 1\n")

    async def start_tor(self) -> Tuple[str, Any]:
        """
        Start a Tor; its control port (a client endpoint string) and a
        control connection of the test's own.
        """
        import txtorcon
        from twisted.internet.endpoints import clientFromString

        process = TorProcess(global_reactor, TOR, os.path.join(self.base, "tor"), torrc=self.torrc)
        self.addCleanup(process.stop)
        self.tor_process = process
        control = await process.start(60.0)
        tor = await txtorcon.connect(global_reactor, clientFromString(global_reactor, control))
        self.addCleanup(lambda: tor.protocol.transport.loseConnection())
        return control, tor

    async def add_onion(self, tor: Any, key: str) -> Optional[str]:
        """
        Ask Tor for a service with C{key} on the test's own connection:
        the service id, or C{None} when Tor says the address is taken.
        """
        from txtorcon.torcontrolprotocol import TorProtocolError

        try:
            reply = await tor.protocol.queue_command(f"ADD_ONION {key} Port=1,127.0.0.1:1")
        except TorProtocolError as e:
            self.assertIn("Onion address collision", str(e))
            return None
        service_id = dict(line.split("=", 1) for line in reply.splitlines())["ServiceID"]
        await tor.protocol.queue_command(f"DEL_ONION {service_id}")
        return service_id

    async def node(self, args: List[str], env: Optional[Dict[str, str]] = None, data_dir: Optional[str] = None) -> Tuple[NodeProcess, Client]:
        process = NodeProcess(data_dir or self.mktemp(), args, env=env)
        self.addCleanup(process.stop, signal.SIGKILL)
        await process.start()
        return process, Client(process.url)

    async def failed_start(self, args: List[str], env: Optional[Dict[str, str]] = None) -> Tuple[Optional[int], str]:
        """
        Start a node that must fail: its exit code and output.
        """
        output = _Output()
        environ = dict(os.environ)
        environ["PYTHONPATH"] = REPO + os.pathsep + environ.get("PYTHONPATH", "")
        environ.update(env or {})
        argv = [sys.executable, "-m", "twisted", "caxton", "--data-dir", os.path.abspath(self.mktemp()),
                "--api", "tcp:0:interface=127.0.0.1", *args]
        process = global_reactor.spawnProcess(output, sys.executable, argv, env=environ, path=REPO)
        timer = global_reactor.callLater(90, lambda: process.signalProcess("KILL"))
        self.addCleanup(lambda: timer.active() and timer.cancel())
        ended = await output.ended
        code = getattr(ended, "exitCode", 0)
        return code, bytes(output.output).decode("utf-8", "replace")

    def assertOneLine(self, output: str, prefix: str) -> None:
        """
        The node's log holds one error starting C{prefix} (the line the
        operator reads; the root service logs it and writes it to stderr,
        which twist logs too) and no traceback.
        """
        lines = logged(output)
        errors = {line for line in lines if line.startswith(prefix)}
        self.assertEqual(len(errors), 1, "\n".join(lines))
        self.assertFalse([line for line in lines if "Traceback" in line], "\n".join(lines))

    async def status(self, client: Client) -> Dict[str, Any]:
        status, body = await client.get("/api/v1/cluster/status")
        self.assertEqual(status, 200, body)
        return body


class OnionAPITests(RealTorTestCase):
    """
    The API as an onion service, with Debian's Tor.
    """

    async def test_api_onion(self) -> None:
        """
        C{--api onion:80:controlPort=...:privateKeyFile=...} publishes the
        API: the node logs the address and lists it in cluster status; Tor
        holds the service (it refuses the same key to another controller
        while the node runs); the API answers on the port Tor forwards to;
        a graceful stop removes the service (Tor then takes the key again,
        and it is the logged address's key).
        """
        control, tor = await self.start_tor()
        key_file = os.path.join(self.base, "keys", "api.key")
        port = control.rsplit(":", 1)[1]
        process, client = await self.node(["--api", f"onion:80:controlPort={port}:privateKeyFile={key_file}"])
        [onion] = (await self.status(client))["onions"]
        self.assertEqual((onion["listener"], onion["published"]), ("api", False))
        address = onion["address"]
        self.assertRegex(address, r"^[a-z2-7]{56}\.onion:80$")
        self.assertIn(f"api published as onion service {address}", "\n".join(logged(process.output)))
        self.assertEqual(os.stat(key_file).st_mode & 0o777, 0o600)
        key = read_private_key(key_file)
        self.assertIsNone(await self.add_onion(tor, key), "Tor does not hold the node's service")
        forwarded = Client("http://" + onion["local"])
        self.assertEqual(await forwarded.get("/ready"), (200, {"ready": True}))
        self.assertEqual(await process.stop(), 0)
        self.assertIn(f"onion service {address} removed", "\n".join(logged(process.output)))
        self.assertEqual(await self.add_onion(tor, key) + ".onion:80", address)

    async def test_same_address_after_restart(self) -> None:
        """
        A node restarted with the same privateKeyFile publishes the same
        onion address.
        """
        control, _ = await self.start_tor()
        port = control.rsplit(":", 1)[1]
        key_file = os.path.join(self.base, "api.key")
        args = ["--api", f"onion:80:controlPort={port}:privateKeyFile={key_file}"]
        data_dir = self.mktemp()
        addresses = []
        for _ in range(2):
            process, client = await self.node(args, data_dir=data_dir)
            addresses.append((await self.status(client))["onions"][0]["address"])
            self.assertEqual(await process.stop(), 0)
        self.assertEqual(addresses[0], addresses[1])

    async def test_client_auth(self) -> None:
        """
        With clientAuthFile Tor accepts the service with the listed client
        keys (v3 client authorisation), and the status counts them.
        """
        control, _ = await self.start_tor()
        clients = os.path.join(self.base, "clients")
        with open(clients, "w") as f:
            f.write(f"descriptor:x25519:{client_key()}\n{client_key()}\n")
        port = control.rsplit(":", 1)[1]
        _, client = await self.node(["--api", f"onion:80:controlPort={port}:clientAuthFile={clients}"])
        [onion] = (await self.status(client))["onions"]
        self.assertEqual(onion["client_auth"], 2)

    async def test_tor_stops_under_the_node(self) -> None:
        """
        When the Tor the node uses stops, the node keeps running and lists
        its service as lost (no longer published).
        """
        control, _ = await self.start_tor()
        port = control.rsplit(":", 1)[1]
        _, client = await self.node(["--api", f"onion:80:controlPort={port}"])
        await self.tor_process.stop()
        for _ in range(100):
            [onion] = (await self.status(client))["onions"]
            if onion["lost"]:
                break
            await deferLater(global_reactor, 0.1, lambda: None)
        self.assertEqual((onion["lost"], onion["published"]), (True, False))
        self.assertEqual(await client.get("/ready"), (200, {"ready": True}))

    async def test_launched_tor(self) -> None:
        """
        C{--api onion:80} with no control port launches a Tor for the node
        (here with a torrc that keeps it off the network), publishes the
        API through it, and stops that Tor with the node.
        """
        data_dir = os.path.abspath(self.mktemp())
        process, client = await self.node(
            ["--api", "onion:80"], env={"CAXTON_TOR_TORRC": self.torrc, "CAXTON_TOR_TIMEOUT": "60s"},
            data_dir=data_dir,
        )
        [onion] = (await self.status(client))["onions"]
        log = "\n".join(logged(process.output))
        self.assertIn("Tor: launching", log)
        self.assertIn(f"api published as onion service {onion['address']}", log)
        tor_dir = os.path.join(data_dir, "tor")
        self.assertTrue(_processes_mentioning(tor_dir), "no Tor runs for the node")
        self.assertEqual(await process.stop(), 0)
        for _ in range(100):
            if not _processes_mentioning(tor_dir):
                break
            await deferLater(global_reactor, 0.1, lambda: None)
        self.assertEqual(_processes_mentioning(tor_dir), [], "the node's Tor outlived it")

    async def test_unreachable_control_port(self) -> None:
        """
        A control port nobody listens on stops the start: exit 1, one
        configuration-error line naming the listener and the port.
        """
        port = _free_port()
        code, output = await self.failed_start(["--api", f"onion:80:controlPort={port}"])
        self.assertEqual(code, 1, output)
        self.assertOneLine(
            output, f"caxton: configuration error: api: onion:80:controlPort={port}: Tor: cannot use the control port"
        )

    async def test_no_tor_program(self) -> None:
        """
        A tor.binary that does not exist stops the start with one line.
        """
        code, output = await self.failed_start(["--api", "onion:80"], env={"CAXTON_TOR_BINARY": "/nonexistent/tor"})
        self.assertEqual(code, 1, output)
        self.assertOneLine(output, "caxton: configuration error: api: onion:80: tor.binary: /nonexistent/tor")

    async def test_tor_refuses(self) -> None:
        """
        A service Tor refuses (single-hop on an anonymous Tor) stops the
        start with one line carrying Tor's reason.
        """
        control, _ = await self.start_tor()
        port = control.rsplit(":", 1)[1]
        code, output = await self.failed_start(["--api", f"onion:80:controlPort={port}:singleHop=true"])
        self.assertEqual(code, 1, output)
        self.assertOneLine(
            output,
            f"caxton: configuration error: api: onion:80:controlPort={port}:singleHop=true: "
            "Tor refused the onion service (Tor is in anonymous hidden service mode)",
        )


# --- node streams ----------------------------------------------------------------------------------


class Socks5Relay(Protocol):
    """
    A stand-in for Tor's SOCKS port: SOCKS5 without authentication,
    CONNECT to a host name only, which it maps to a local port the way Tor
    maps an onion address to the port its service forwards to.
    """

    def __init__(self, routes: Dict[Tuple[str, int], int], asked: List[Tuple[int, str, int]]) -> None:
        self.routes = routes
        self.asked = asked
        self.buffer = b""
        self.state = "greeting"
        self.peer: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.state == "relay":
            self.peer.transport.write(data)
            return
        self.buffer += data
        if self.state == "greeting" and len(self.buffer) >= 2 and len(self.buffer) >= 2 + self.buffer[1]:
            self.buffer = self.buffer[2 + self.buffer[1]:]
            self.transport.write(b"\x05\x00")
            self.state = "request"
        if self.state == "request" and len(self.buffer) >= 5:
            kind = self.buffer[3]
            if kind != 3:
                self.asked.append((kind, "", 0))
                self.transport.write(b"\x05\x08\x00\x01" + b"\x00" * 6)
                self.transport.loseConnection()
                return
            length = self.buffer[4]
            if len(self.buffer) < 5 + length + 2:
                return
            host = self.buffer[5:5 + length].decode("ascii")
            (port,) = struct.unpack("!H", self.buffer[5 + length:7 + length])
            rest = self.buffer[7 + length:]
            self.buffer = b""
            self.asked.append((kind, host, port))
            target = self.routes.get((host, port))
            if target is None:
                self.transport.write(b"\x05\x04\x00\x01" + b"\x00" * 6)
                self.transport.loseConnection()
                return
            self.state = "connecting"
            self.transport.pauseProducing()
            endpoint = TCP4ClientEndpoint(global_reactor, "127.0.0.1", target)
            endpoint.connect(Factory.forProtocol(lambda: _Back(self))).addCallbacks(
                lambda back: self._connected(back, rest), lambda f: self.transport.loseConnection()
            )

    def _connected(self, back: Any, rest: bytes) -> None:
        self.peer = back
        self.state = "relay"
        self.transport.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")
        if rest:
            back.transport.write(rest)
        self.transport.resumeProducing()

    def connectionLost(self, reason: Any) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()


class _Back(Protocol):
    def __init__(self, front: Socks5Relay) -> None:
        self.front = front

    def connectionMade(self) -> None:
        self.front.peer = self

    def dataReceived(self, data: bytes) -> None:
        self.front.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self.front.transport.loseConnection()


class OnionStreamsTests(RealTorTestCase):
    """
    Node streams as an onion service, and a join through an onion seed.
    """

    def cluster_args(self, node_id: str) -> List[str]:
        from caxton.cluster import pki

        ca = os.path.join(self.base, "ca")
        if not os.path.exists(ca):
            pki.init_ca(ca, cluster_name="caxton")
        tls = os.path.join(self.base, "tls-" + node_id)
        pki.issue(ca, node_id, tls)
        return ["--node-id", node_id, "--bind", "127.0.0.1:0", "--tls-dir", tls]

    async def test_join_through_onion_seed(self) -> None:
        """
        A node whose streams also listen as an onion service
        (C{streams.listen}) holds that service in Tor; a second node given
        only the onion address as its seed dials it through the SOCKS port
        (by name: nothing is resolved locally), joins with a push-pull over
        the mutual-TLS stream, and from then on the two gossip directly.
        """
        from tests.test_cluster import FAST

        control, tor = await self.start_tor()
        port = control.rsplit(":", 1)[1]
        key_file = os.path.join(self.base, "streams.key")
        seed, seed_client = await self.node(
            self.cluster_args("n1"),
            env={**FAST, "CAXTON_STREAMS_LISTEN": f"onion:7946:controlPort={port}:privateKeyFile={key_file}"},
        )
        status = await self.status(seed_client)
        [onion] = status["onions"]
        self.assertEqual(onion["listener"], "streams.listen")
        self.assertIn(
            f"streams.listen published as onion service {onion['address']}", "\n".join(logged(seed.output))
        )
        self.assertIsNone(await self.add_onion(tor, read_private_key(key_file)))
        host = onion["address"].rsplit(":", 1)[0]
        local_port = int(onion["local"].rsplit(":", 1)[1])

        asked: List[Tuple[int, str, int]] = []
        relay = await TCP4ServerEndpoint(global_reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: Socks5Relay({(host, 7946): local_port}, asked))
        )
        self.addCleanup(relay.stopListening)
        joiner, joiner_client = await self.node(
            self.cluster_args("n2"),
            env={
                **FAST,
                "CAXTON_GOSSIP_SEEDS": f"{host}:7946",
                "CAXTON_TOR_SOCKS": f"tcp:127.0.0.1:{relay.getHost().port}",
            },
        )
        deadline = time.monotonic() + 30
        members: Dict[str, Any] = {}
        while time.monotonic() < deadline:
            members = {}
            for client in (seed_client, joiner_client):
                code, body = await client.get("/api/v1/cluster/members")
                members[client.url] = {m["id"]: m["state"] for m in body["members"]}
            if all(view == {"n1": "alive", "n2": "alive"} for view in members.values()):
                break
            await deferLater(global_reactor, 0.2, lambda: None)
        self.assertTrue(
            all(view == {"n1": "alive", "n2": "alive"} for view in members.values()),
            f"{members}\n{joiner.output[-3000:]}",
        )
        # Asked by name (type 3), never by an address resolved here.
        self.assertIn((3, host, 7946), asked)
        self.assertEqual({kind for kind, _, _ in asked}, {3})


def logged(output: str) -> List[str]:
    """
    A node's log (JSON lines, as twist writes them when its output is not
    a terminal) as the text of each event.
    """
    from twisted.logger import formatEvent

    lines = []
    for raw in output.replace("\x1e", "\n").splitlines():
        try:
            event = json.loads(raw)
        except ValueError:
            if raw.strip():
                lines.append(raw)
            continue
        if "log_text" in event:
            lines.append(event["log_text"])
        else:
            lines.append(formatEvent(event))
    return lines


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_mentioning(text: str) -> List[int]:
    """
    The running processes whose command line mentions C{text}.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\x00", b" ").decode("utf-8", "replace")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().split(b") ", 1)[1][:1]
        except OSError:
            continue
        if text in cmdline and state != b"Z":
            found.append(int(entry))
    return found
