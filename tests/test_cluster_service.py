"""
Tests for L{caxton.cluster.service.ClusterService}: configuration errors
are one line, and two services on loopback (real UDP, real mutual TLS)
join, share their agents and leave.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List

import attr
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caxton.cluster import pki
from caxton.cluster.service import ClusterService
from caxton.config import ConfigError, load
from caxton.swim.keyring import generate_key


@attr.s(auto_attribs=True)
class _Spec:
    capabilities: tuple = ()
    relocatable: bool = False
    moves: int = 0


@attr.s(auto_attribs=True)
class _Cell:
    name: str
    version: int = 1
    status: str = "running"
    spec: _Spec = attr.Factory(_Spec)


class _Agents:
    """
    The part of the agent manager the cluster uses.
    """

    def __init__(self, node_id: str, cells: List[_Cell] = ()) -> None:
        self.node_id = node_id
        self.cells = list(cells)
        self.observers: List[Any] = []

    def __iter__(self) -> Any:
        return iter(self.cells)

    def __len__(self) -> int:
        return len(self.cells)


def _config(**values: Any) -> Any:
    options: Dict[str, Any] = {"node_id": "n1", "bind": "127.0.0.1:0"}
    options.update(values)
    return load(options, {})


class ConfigTests(SynchronousTestCase):
    """
    What is wrong is said in one line, naming the key.
    """

    def test_unspecified_bind_needs_advertise(self) -> None:
        """
        Binding every interface needs an advertise address.
        """
        with self.assertRaises(ConfigError) as e:
            ClusterService(reactor, _config(bind="0.0.0.0:7946"), _Agents("n1"))
        self.assertIn("advertise", str(e.exception))
        ClusterService(reactor, _config(bind="0.0.0.0:7946", advertise="10.0.0.1:7946"), _Agents("n1"))

    def test_ip_addresses(self) -> None:
        """
        bind and advertise are IP addresses (SWIM's wire carries them).
        """
        with self.assertRaises(ConfigError) as e:
            ClusterService(reactor, _config(bind="localhost:7946"), _Agents("n1"))
        self.assertIn("bind", str(e.exception))

    def test_max_packet(self) -> None:
        """
        A datagram size outside what UDP carries is refused.
        """
        for size in ("100", "70000"):
            with self.assertRaises(ConfigError) as e:
                ClusterService(reactor, _config(**{"gossip.max_packet": size}), _Agents("n1"))
            self.assertIn("gossip.max_packet", str(e.exception))

    def test_no_tls_dir(self) -> None:
        """
        A clustered node without a TLS directory says how to make one.
        """
        service = ClusterService(reactor, _config(), _Agents("n1"))
        failure = self.failureResultOf(_run(service.open()))
        self.assertIn("caxton certs init-ca", str(failure.value))

    def test_bad_key_file(self) -> None:
        """
        An unreadable or malformed gossip key file is named, and no key
        material is shown.
        """
        tls = self.mktemp()
        pki.init_ca(tls + "-ca")
        pki.issue(tls + "-ca", "n1", tls)
        bad = self.mktemp()
        with open(bad, "w") as f:
            # Valid base64 of 10 bytes: no AES key size.
            f.write("c2VjcmV0LWtleQ==\n")
        for path in (bad, self.mktemp()):
            service = ClusterService(reactor, _config(tls_dir=tls, **{"gossip.key_file": path}), _Agents("n1"))
            failure = self.failureResultOf(_run(service.open()))
            self.assertIsInstance(failure.value, ConfigError)
            self.assertIn("gossip.key_file", str(failure.value))
            self.assertNotIn("c2VjcmV0", str(failure.value))
            self.assertNotIn("secret", str(failure.value))


def _run(coroutine: Any) -> Deferred:
    return Deferred.fromCoroutine(coroutine)


class LoopbackTests(TestCase):
    """
    Two cluster services in this process, on 127.0.0.1.
    """

    timeout = 60

    async def test_join_share_leave(self) -> None:
        """
        The second joins through the first; each lists both members alive
        and the other's agent; after the second leaves, the first sees it
        left and its agent withdrawn.
        """
        base = os.path.abspath(self.mktemp())
        pki.init_ca(os.path.join(base, "ca"))
        key = os.path.join(base, "gossip.key")
        os.makedirs(base, exist_ok=True)
        with open(key, "w") as f:
            f.write(generate_key() + "\n")
        fast = {
            "gossip.profile": "local",
            "gossip.probe_interval": "100ms",
            "gossip.probe_timeout": "50ms",
            "gossip.gossip_interval": "20ms",
            "gossip.key_file": key,
        }
        services = []
        for node_id, seeds in (("n1", None), ("n2", "")):
            pki.issue(os.path.join(base, "ca"), node_id, os.path.join(base, node_id))
            values = dict(fast, node_id=node_id, bind="127.0.0.1:0", tls_dir=os.path.join(base, node_id))
            if seeds is not None:
                values["gossip.seeds"] = str(services[0].address)
            service = ClusterService(reactor, load(values, {}), _Agents(node_id, [_Cell(f"agent-{node_id}")]))
            await service.open()
            self.addCleanup(lambda s=service: _run(s.close()))
            services.append(service)
        first, second = services

        async def until(predicate: Any, what: str) -> None:
            deadline = time.monotonic() + 10
            for _ in range(200):
                if predicate():
                    return
                if time.monotonic() > deadline:
                    break
                await deferLater(reactor, 0.05, lambda: None)
            self.fail(f"not seen within 10s: {what}")

        def states(service: ClusterService) -> Dict[str, str]:
            return {m["id"]: m["state"] for m in service.members()}

        await until(lambda: states(first) == states(second) == {"n1": "alive", "n2": "alive"}, "both alive")
        await until(lambda: [a["name"] for a in first.remote_agents()] == ["agent-n2"], "n2's agent on n1")
        await until(lambda: [a["name"] for a in second.remote_agents()] == ["agent-n1"], "n1's agent on n2")
        self.assertEqual(first.status()["encrypted"], True)
        # A seed list naming only this node means it starts the cluster.
        assert first.address is not None
        self.assertTrue(first._is_me((first.address.host, first.address.port)))
        self.assertFalse(first._is_me((first.address.host, first.address.port + 1)))
        self.assertFalse(first._is_me(("localhost", first.address.port)))
        self.assertEqual(first.gossip_health()["peer_count"], 1)
        counters = first.status()["counters"]
        self.assertGreater(counters["udp"]["packets_out"], 0)
        self.assertGreater(counters["swim"]["probes"] + counters["swim"]["push_pulls_received"], 0)
        await second.leave()
        await until(lambda: states(first).get("n2") == "left", "n2 left")
        self.assertEqual(first.remote_agents(), [])
        health = second.gossip_health()
        self.assertEqual((health["status"], health["peer_count"], health["partition"]),
                         ("degraded", 0, "isolated"))

        # While out of the cluster, n2's agent stops; joining again, its
        # news beats what n1 remembers from before the leave.
        second._agents.cells[0].status = "stopped"
        assert first.address is not None
        self.assertEqual(await second.join([(first.address.host, first.address.port)]), 1)
        await until(lambda: states(first).get("n2") == "alive", "n2 back")
        await until(
            lambda: [(a["name"], a["status"]) for a in first.remote_agents()] == [("agent-n2", "stopped")],
            "n2's agent seen stopped",
        )


class KeyFileWatcherTests(SynchronousTestCase):
    """
    The gossip key file is re-read when it changes, so keys rotate without
    a restart.
    """

    def test_rotation(self) -> None:
        """
        Adding a key, then making it the primary, installs each new keyring;
        an unchanged file installs nothing; a broken file keeps the keys in
        use.
        """
        from twisted.internet.task import Clock

        from caxton.cluster.service import KEY_CHECK_INTERVAL, KeyFileWatcher
        from caxton.swim.keyring import decode_key

        path = self.mktemp()
        old, new = generate_key(), generate_key()
        with open(path, "w") as f:
            f.write(old + "\n")
        clock, installed = Clock(), []
        watcher = KeyFileWatcher(path, clock, installed.append)
        watcher.start()
        clock.advance(KEY_CHECK_INTERVAL)
        self.assertEqual(installed, [])
        for text, primary in ((f"{old}\n{new}\n", old), (f"{new}\n{old}\n", new)):
            with open(path, "w") as f:
                f.write(text + "# " + "x" * len(installed) + "\n")
            clock.advance(KEY_CHECK_INTERVAL)
            self.assertEqual(installed[-1].primary, decode_key(primary))
            self.assertEqual(len(installed[-1].keys), 2)
        with open(path, "w") as f:
            f.write("not a key\n")
        clock.advance(KEY_CHECK_INTERVAL)
        self.assertEqual(len(installed), 2)
        watcher.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
