# -*- test-case-name: tests.test_cluster_service -*-
"""
A node's place in the cluster: SWIM membership over UDP, node streams
over mutual TLS, and the agent registry, put together.

L{ClusterService} owns the pieces and their order:

  1. the gossip keyring and the UDP socket (C{bind}; port 0 picks one),
  2. the node streams on the same host and port over TCP,
  3. the SWIM core (L{caxton.swim.core.Membership}), with the registry as
     its delegate and listener, this node's agents published in it, and a
     reactor-lag monitor feeding Lifeguard,
  4. a join through the seeds, retried with back-off, in the background
     (a node whose seeds are all down still starts, and keeps trying).

With Tor (docs/tor.md), the node streams also listen on the endpoints of
C{streams.listen} (an onion service), and C{.onion} seeds are dialed
through Tor: a join's push-pull can cross Tor, SWIM's UDP cannot.

It is the core's L{ISwimTransport}: packets go out through the datagram
protocol, push-pull and fallback pings through the node streams.  And it is
the API's L{ICluster}: members, status, health, join and leave.

Stopping leaves the cluster first (peers record this node as C{left}, not
C{dead}), then closes streams and the socket.
"""

from __future__ import annotations

import ipaddress
import os
import random
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
)
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from caxton.cluster.courier import Courier
from caxton.cluster.interfaces import ICluster
from caxton.cluster.pki import NodeTLS
from caxton.cluster.registry import Registry
from caxton.cluster.relocation import Relocator
from caxton.cluster.stream import Kind, NodeStreams
from caxton.config import Config, ConfigError
from caxton.endpoints import ListenAll, server_endpoint
from caxton.errors import InvalidRequest, Unreachable
from caxton.swim.codec import MAX_UINT32
from caxton.swim.config import SwimConfig, profile
from caxton.swim.core import Member, Membership
from caxton.swim.interfaces import ISwimTransport, IMembershipListener
from caxton.swim.keyring import Envelope, Keyring, KeyringError
from caxton.swim.lag import LagMonitor
from caxton.swim.messages import Address, State
from caxton.swim.udp import SwimDatagramProtocol

log = Logger()

#: With bind port 0, how many UDP ports are tried before one is also free
#: for TCP.
BIND_ATTEMPTS = 10

#: How often reactor lag is measured for Lifeguard, in seconds.
LAG_INTERVAL = 0.1

#: Incarnations start from the wall clock in seconds since this moment, so
#: a restarted node's news beats what it said before (memberlist#311).
INCARNATION_EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z

#: The longest a graceful leave waits for its news to go out, in seconds.
LEAVE_TIMEOUT = 3.0

#: How often the gossip key file is checked for changes, in seconds.
KEY_CHECK_INTERVAL = 10.0

#: How often old registry tombstones are forgotten, in seconds.
TOMBSTONE_SWEEP_INTERVAL = 600.0

_STATES = {State.ALIVE: "alive", State.SUSPECT: "suspect", State.DEAD: "dead", State.LEFT: "left"}


def _ip(host: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(f"{what}: {host!r} must be an IP address")


class KeyFileWatcher:
    """
    Re-reads the gossip key file when it changes, so keys rotate without a
    restart (docs/cluster.md: add the new key everywhere, make it first,
    remove the old one).  A file that no longer loads is logged and the
    keys in use are kept.

    @param path: the key file.
    @param clock: an C{IReactorTime}.
    @param install: told each new L{Keyring}.
    """

    def __init__(self, path: str, clock: Any, install: Any) -> None:
        self._path = path
        self._clock = clock
        self._install = install
        self._signature: Optional[Tuple[int, int, int]] = None
        self._call: Any = None

    def _stat(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def start(self) -> None:
        """
        Note the file as it is (the keys in use were read from it), then
        check every L{KEY_CHECK_INTERVAL} seconds.
        """
        self._signature = self._stat()
        self._call = self._clock.callLater(KEY_CHECK_INTERVAL, self.check)

    def stop(self) -> None:
        """
        Stop checking.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def check(self) -> None:
        """
        Reload the keys if the file changed.
        """
        self._call = self._clock.callLater(KEY_CHECK_INTERVAL, self.check)
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            keyring = Keyring.from_file(self._path)
        except (OSError, KeyringError) as e:
            log.warn(
                "gossip key file {path} changed but cannot be used ({error}); keeping the keys in use",
                path=self._path,
                error=str(e),
            )
            return
        self._install(keyring)
        log.info(
            "gossip keys reloaded from {path}: {count} keys", path=self._path, count=len(keyring.keys)
        )


@implementer(ICluster, ISwimTransport, IMembershipListener)
class ClusterService(Service):
    """
    This node's membership, node streams and registry.

    @param reactor: the reactor (UDP, TCP, timers).
    @param config: the node's configuration (C{bind}, C{tls_dir},
        C{gossip.*}).
    @param agents: the node's agent manager, whose agents are published.
    @param store: the node's store, for the outbox (with C{router}).
    @param router: the node's router: messages for other nodes come from
        it and arrive through it.  Without both, the node takes part in
        membership and the registry but routes no messages.
    @param tor: the node's L{caxton.tor.TorService}, when it uses Tor:
        for the C{onion:} endpoints of C{streams.listen} and to dial
        C{.onion} seeds (docs/tor.md).
    """

    name = "cluster"

    def __init__(
        self,
        reactor: Any,
        config: Config,
        agents: Any,
        store: Any = None,
        router: Any = None,
        tor: Any = None,
    ) -> None:
        self._reactor = reactor
        self._agents = agents
        self.node_id: str = config["node_id"]
        self.cluster_name: str = config["gossip.cluster"]
        self.profile_name: str = config["gossip.profile"]
        try:
            self.swim_config: SwimConfig = profile(self.profile_name, **config.swim_overrides)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"gossip: {e}")
        if self.swim_config.probe_timeout >= self.swim_config.probe_interval:
            raise ConfigError(
                "gossip.probe_timeout: must be shorter than gossip.probe_interval "
                "(indirect probes run in between)"
            )
        if not 576 <= self.swim_config.max_packet <= 65_507:
            # Every node must use the same value: a receiver drops larger
            # datagrams.
            raise ConfigError("gossip.max_packet: must be 576 to 65507 bytes (one UDP datagram)")
        host, port = config["bind"]
        self._bind = (_ip(host, "bind"), port)
        advertise = config["advertise"]
        if advertise is not None:
            advertise = (_ip(advertise[0], "advertise"), advertise[1])
        elif ipaddress.ip_address(self._bind[0]).is_unspecified:
            raise ConfigError(
                f"advertise: needed when bind is {host} (the address other nodes reach this one at)"
            )
        self._advertise = advertise
        self._seeds: Tuple[Tuple[str, int], ...] = config["gossip.seeds"]
        self._join_retry_max: float = config["gossip.join_retry_max"]
        self._key_file: Optional[str] = config["gossip.key_file"]
        self._tor = tor
        # Extra listeners of the node streams (an onion service, say), with
        # the same TLS on top (docs/tor.md).
        self._stream_listeners = [
            server_endpoint(reactor, description, "streams.listen", tor)
            for description in config["streams.listen"]
        ]
        self.tls = NodeTLS(config["tls_dir"] or "")
        self._tls_given = config["tls_dir"] is not None
        self._rng = random.Random()
        self.epoch_ms = 0
        self.address: Optional[Address] = None
        self.envelope: Optional[Envelope] = None
        self.udp: Optional[SwimDatagramProtocol] = None
        self.streams: Optional[NodeStreams] = None
        self.membership: Optional[Membership] = None
        self.registry: Optional[Registry] = None
        self._port: Any = None
        self._lag = LagMonitor(reactor, LAG_INTERVAL, self._lagged)
        self._sweep = LoopingCall(self._expire_tombstones)
        self._sweep.clock = reactor
        self._joining: Optional[Deferred] = None
        self._join_token: Optional[object] = None
        self._key_watcher: Optional[KeyFileWatcher] = None
        self._largest = 1
        self._expect: int = config["cluster.bootstrap_expect"]
        self.last_sync: Optional[float] = None
        self.courier: Optional[Courier] = None
        if store is not None and router is not None:
            self.courier = Courier(
                reactor,
                self,
                store,
                router,
                agents,
                queue_ttl=config["cluster.queue_ttl"],
                max_queue=config["cluster.max_queue"],
                lookup_timeout=config["cluster.lookup_timeout"],
            )
            router.remote = self.courier
        self.relocator: Optional[Relocator] = None
        if store is not None:
            self.relocator = Relocator(reactor, self, agents, store)
        #: More listeners for every membership this service starts (the
        #: event stream's).
        self.listeners: List[IMembershipListener] = []

    # Start and stop -------------------------------------------------------------

    async def open(self) -> None:
        """
        Bind UDP and the node streams, start membership, publish this
        node's agents, and start joining the seeds.

        @raise ConfigError: for a missing or unusable TLS directory or
            gossip key file.
        """
        if not self._tls_given:
            raise ConfigError(
                "tls_dir: a clustered node needs the cluster CA and its certificate "
                "(make them with: caxton certs init-ca; caxton certs issue NODE_ID)"
            )
        keyring = None
        if self._key_file is not None:
            try:
                keyring = Keyring.from_file(self._key_file)
            except (OSError, KeyringError) as e:
                raise ConfigError(f"gossip.key_file: {e}")
        else:
            log.warn("gossip is not encrypted: set gossip.key_file (make a key with: caxton gossip-key)")
        self.epoch_ms = int(time.time() * 1000)
        self.envelope = Envelope(
            self.node_id,
            self.cluster_name,
            keyring,
            self._reactor,
            epoch_ms=self.epoch_ms,
            max_datagram=self.swim_config.max_packet,
        )
        self.udp = SwimDatagramProtocol(self.envelope, self._deliver)
        if self.relocator is not None:
            await self.relocator.load()
        host, port = await self._listen()
        if keyring is not None:
            self._key_watcher = KeyFileWatcher(self._key_file, self._reactor, self._install_keys)
            self._key_watcher.start()
        advertise = self._advertise or (host, port)
        self.address = Address(advertise[0], advertise[1] or port)
        self._start_membership()
        if self.courier is not None:
            self.courier.start_sending()
        self._lag.start()
        self._sweep.start(TOMBSTONE_SWEEP_INTERVAL, now=False)
        log.info(
            "node {node_id} gossiping on {address} (cluster {cluster}, profile {profile}, {encryption})",
            node_id=self.node_id,
            address=str(self.address),
            cluster=self.cluster_name,
            profile=self.profile_name,
            encryption="encrypted" if keyring is not None else "NOT encrypted",
        )
        if self._seeds:
            self._join_in_background(self._seeds)

    async def _listen(self) -> Tuple[str, int]:
        """
        Bind SWIM's UDP port and the node streams' TCP port, the same
        number.  With port 0 the UDP port is picked first; if that number
        is taken for TCP, both are tried again (a few times).

        @return: the host and the port bound.
        """
        host, wanted = self._bind
        endpoint_type = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
        for attempt in range(BIND_ATTEMPTS):
            self._port = self._reactor.listenUDP(wanted, self.udp, interface=host, maxPacketSize=65535)
            port = self._port.getHost().port
            endpoint = endpoint_type(self._reactor, port, interface=host)
            if self._stream_listeners:
                endpoint = ListenAll([endpoint, *self._stream_listeners])
            self.streams = NodeStreams(
                self._reactor,
                self.node_id,
                self.cluster_name,
                self.tls,
                endpoint,
                connect=self._stream_endpoint,
                connect_timeout=self.swim_config.tcp_timeout,
            )
            self.streams.register_handler(Kind.PUSH_PULL, self._push_pull_received)
            if self.courier is not None:
                self.courier.register(self.streams)
            if self.relocator is not None:
                self.relocator.register(self.streams)
            self.streams.on_peer_lost = self._peer_lost
            try:
                await self.streams.open()
            except CannotListenError:
                await self._port.stopListening()
                self._port = None
                if wanted != 0 or attempt == BIND_ATTEMPTS - 1:
                    raise
                continue
            except BaseException:
                await self._port.stopListening()
                self._port = None
                raise
            return host, port
        raise AssertionError("unreachable")

    def _stream_endpoint(self, addr: Address) -> Any:
        """
        How to reach a node stream at C{addr}: through Tor for a C{.onion}
        seed, over TCP otherwise.
        """
        if addr.host.endswith(".onion") and self._tor is not None:
            return self._tor.client_endpoint(addr.host, addr.port)
        timeout = self.swim_config.tcp_timeout
        if ":" in addr.host:
            return TCP6ClientEndpoint(self._reactor, addr.host, addr.port, timeout=timeout)
        return TCP4ClientEndpoint(self._reactor, addr.host, addr.port, timeout=timeout)

    def _start_membership(self) -> None:
        """
        A fresh SWIM core and registry (at start, and when joining again
        after a leave), with this node's agents published.
        """
        incarnation = max(0, min(MAX_UINT32, int(time.time()) - INCARNATION_EPOCH))
        registry_epoch = self.epoch_ms
        if self.membership is not None:
            # Joining again after a leave: news from this life must beat
            # what peers remember of the last one.
            incarnation = max(incarnation, self.membership.incarnation + 1)
            registry_epoch = max(int(time.time() * 1000), self.registry.epoch + 1)
        self.registry = Registry(self.node_id, registry_epoch, self._reactor, self._broadcast)
        self.membership = Membership(
            self.swim_config,
            self.node_id,
            self.address,
            self._reactor,
            self._rng,
            self,
            incarnation=incarnation,
            delegate=self.registry,
            overhead=self.envelope.overhead,
        )
        self.membership.add_listener(self.registry)
        self.membership.add_listener(self)
        if self.courier is not None:
            self.courier.attach(self.registry)
        if self.relocator is not None:
            self.relocator.attach(self.registry)
        for listener in self.listeners:
            self.membership.add_listener(listener)
        self._largest = 1
        self.membership.start()
        for cell in self._agents:
            self.agent_changed(cell.name, cell)
        if self.agent_changed not in self._agents.observers:
            self._agents.observers.append(self.agent_changed)

    def _expire_tombstones(self) -> None:
        if self.registry is not None:
            self.registry.expire()

    def _install_keys(self, keyring: Keyring) -> None:
        if self.envelope is not None:
            self.envelope.keyring = keyring

    def _broadcast(self, key: str, payload: bytes) -> None:
        if self.membership is None:
            return
        try:
            self.membership.broadcast_user(key, payload)
        except ValueError:
            # Larger than a datagram holds (a small gossip.max_packet):
            # the entry spreads by push-pull only.
            log.info("registry news {key} is too big to gossip; it spreads by push-pull", key=key)

    async def close(self) -> None:
        """
        Leave (if not done), then stop membership, streams and the socket.
        """
        if self.membership is not None and not self.membership.left:
            await self.leave_gracefully()
        self._stop_joining()
        if self.courier is not None:
            self.courier.stop_sending()
        self._lag.stop()
        if self._sweep.running:
            self._sweep.stop()
        if self._key_watcher is not None:
            self._key_watcher.stop()
        if self.membership is not None:
            self.membership.stop()
        if self.agent_changed in self._agents.observers:
            self._agents.observers.remove(self.agent_changed)
        if self.streams is not None:
            await self.streams.close()
        if self._port is not None:
            await self._port.stopListening()
            self._port = None

    async def leave_gracefully(self) -> None:
        """
        Tell the cluster this node is leaving and wait (bounded) until the
        news went out.
        """
        if self.membership is None or self.membership.left:
            return
        self._stop_joining()
        log.info("node {node_id} leaving the cluster", node_id=self.node_id)
        await self.membership.leave(LEAVE_TIMEOUT)

    # Joining ---------------------------------------------------------------------

    async def _addresses(self, seeds: Sequence[Tuple[str, int]]) -> List[Address]:
        """
        Seeds as addresses: names (a Kubernetes service, say) resolved.
        """
        found = []
        for host, port in seeds:
            if host.lower().endswith(".onion"):
                # Never resolved (that would tell DNS): Tor dials it.
                if self._tor is None:
                    log.warn(
                        "cannot reach seed {seed}: this node has no Tor (docs/tor.md)",
                        seed=f"{host}:{port}",
                    )
                else:
                    found.append(Address(host.lower(), port))
                continue
            try:
                ip = str(ipaddress.ip_address(host))
            except ValueError:
                try:
                    ip = await self._reactor.resolve(host)
                except Exception as e:
                    log.warn("cannot resolve seed {seed}: {error}", seed=f"{host}:{port}", error=str(e))
                    continue
            found.append(Address(ip, port))
        return found

    def _join_in_background(self, seeds: Sequence[Tuple[str, int]]) -> None:
        """
        Join through C{seeds} without holding up the start.  Each round
        resolves the seed names again (a Kubernetes service's pods come and
        go) and tries every seed; while none answers, rounds repeat with
        back-off (1 s doubling to C{gossip.join_retry_max}, with jitter).
        Seeds that are only this node mean this node starts the cluster.
        A leave or a stop ends it.
        """

        token = object()
        self._join_token = token

        async def go() -> None:
            delay = 1.0
            while self._join_token is token and self._in_cluster():
                addresses = [
                    a
                    for a in await self._addresses(seeds)
                    if a != self.address and not self._is_me((a.host, a.port))
                ]
                if not addresses and all(self._is_me(seed) for seed in seeds):
                    log.info("the only seed is this node: it starts the cluster")
                    return
                membership = self.membership
                if addresses and membership is not None:
                    reached = await membership.join(addresses)
                    if self._join_token is not token:
                        return
                    if reached:
                        log.info(
                            "joined through {reached} of {count} seeds",
                            reached=reached,
                            count=len(addresses),
                        )
                        return
                wait = delay * (1.0 + 0.25 * self._rng.random())
                log.info("no seed answered; trying again in {wait:.1f}s", wait=wait)
                await deferLater(self._reactor, wait, lambda: None)
                delay = min(self._join_retry_max, delay * 2)

        self._joining = Deferred.fromCoroutine(go())
        # Cancelled by a leave or a stop; nothing else can fail in it.
        self._joining.addErrback(lambda f: f.trap(CancelledError))

    def _stop_joining(self) -> None:
        # The token ends the loop even where a cancellation is swallowed
        # (a push-pull turns it into "not reached"); the cancel ends a wait.
        self._join_token = None
        if self._joining is not None:
            self._joining.cancel()

    def _is_me(self, seed: Tuple[str, int]) -> bool:
        host, port = seed
        if self._tor is not None and (host.lower(), port) in self._tor.hostnames("streams.listen"):
            return True
        if self.address is None or port != self.address.port:
            return False
        try:
            return str(ipaddress.ip_address(host)) in (self.address.host, self._bind[0])
        except ValueError:
            return False

    async def join(self, seeds: Sequence[Tuple[str, int]]) -> int:
        """
        Join through C{seeds} now (one round, no retry): how many answered.

        @raise Unreachable: when none did.
        """
        if self.membership is None:
            raise InvalidRequest("the cluster layer is not running")
        if self.membership.left:
            # Joining again after a leave: a fresh view, a new incarnation.
            self.membership.stop()
            self._start_membership()
        addresses = await self._addresses(seeds)
        reached = await self.membership.join(addresses) if addresses else 0
        if not reached:
            raise Unreachable("no seed answered (see the node's log for why)")
        return reached

    async def leave(self) -> None:
        """
        Leave the cluster gracefully; the node keeps running alone, and
        can join again.
        """
        if self.membership is None or self.membership.left:
            raise InvalidRequest("this node is not in a cluster")
        await self.leave_gracefully()
        # Out of the cluster: no more probing, gossip or push-pull until a
        # join starts a fresh view.
        self.membership.stop()

    # ISwimTransport ---------------------------------------------------------------

    def send_packet(self, addr: Address, packet: bytes) -> None:
        if self.udp is not None:
            self.udp.send_packet(addr, packet)

    def push_pull(self, node: Optional[str], addr: Address, state: bytes) -> Deferred:
        d = self.streams.request(node, addr, Kind.PUSH_PULL, state, self.swim_config.tcp_timeout)
        return d.addCallback(self._synced)

    def stream_ping(self, node: str, addr: Address) -> Deferred:
        return self.streams.probe(node, addr, self.swim_config.probe_interval)

    def _synced(self, result: bytes) -> bytes:
        self.last_sync = self._reactor.seconds()
        return result

    def _deliver(self, addr: Address, packet: bytes) -> None:
        if self.membership is not None:
            self.membership.packet_received(addr, packet)

    def _push_pull_received(self, peer: str, payload: bytes) -> bytes:
        if self.membership is None:
            raise RuntimeError("membership is not running")
        answer = self.membership.push_pull_received(payload)
        self.last_sync = self._reactor.seconds()
        return answer

    def _peer_lost(self, node: str) -> None:
        if self.membership is not None:
            self.membership.probe_soon(node)
        if self.courier is not None:
            self.courier.peer_lost(node)

    def _lagged(self, lag: float) -> None:
        if self.membership is not None:
            self.membership.note_lag(lag)

    # This node's agents ---------------------------------------------------------

    def agent_changed(self, name: str, cell: Any) -> None:
        """
        Publish a change to one of this node's agents (C{cell} is None when
        it was removed).
        """
        if self.registry is None:
            return
        if cell is None:
            self.registry.withdraw(name)
        else:
            relocatable = cell.spec.relocatable
            self.registry.publish(
                name,
                cell.version,
                cell.status,
                cell.spec.capabilities,
                module=cell.module_hash if relocatable else "",
                moves=cell.spec.moves,
            )

    # IMembershipListener: the largest cluster seen (the core logs changes) --

    def member_joined(self, member: Member) -> None:
        counts = self._counts()
        self._largest = max(self._largest, counts["alive"] + counts["suspect"] + counts["dead"])
        self._reachable(member)

    def member_updated(self, member: Member) -> None:
        self._reachable(member)

    def member_suspected(self, member: Member) -> None:
        pass

    def member_alive(self, member: Member) -> None:
        self._reachable(member)

    def member_failed(self, member: Member) -> None:
        if self.courier is not None:
            self.courier.members_changed()
        if self.relocator is not None and member.node != self.node_id:
            self.relocator.member_failed(member.node)

    def member_left(self, member: Member) -> None:
        # A member that left on purpose is no longer expected.
        self._largest = max(1, self._largest - 1)
        if self.courier is not None:
            self.courier.members_changed()

    def _reachable(self, member: Member) -> None:
        """
        C{member} is alive (again, or somewhere new): messages waiting for
        it go now.
        """
        if self.courier is not None and member.node != self.node_id:
            self.courier.member_reachable(member.node)
            self.courier.members_changed()

    # ICluster --------------------------------------------------------------------

    def _counts(self) -> Dict[str, int]:
        counts = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
        if self.membership is not None:
            for member in self.membership.members():
                counts[_STATES[member.state]] += 1
        return counts

    def _in_cluster(self) -> bool:
        return self.membership is not None and not self.membership.left

    def partition(self) -> str:
        """
        C{majority}, C{minority} or C{isolated}: the members this node can
        reach (alive or suspect, itself included) against the largest
        cluster it has seen, less the members that left.
        """
        if not self._in_cluster():
            return "isolated"
        counts = self._counts()
        reachable = counts["alive"] + counts["suspect"]
        expected = max(self._largest, reachable, self._expect)
        if reachable * 2 > expected:
            return "majority"
        if reachable <= 1:
            return "isolated"
        return "minority"

    def members(self) -> List[Dict[str, Any]]:
        if self.membership is None:
            return []
        agents: Dict[str, int] = {}
        if self.registry is not None:
            for entry in self.registry.entries():
                agents[entry.node] = agents.get(entry.node, 0) + 1
        views = []
        for member in sorted(self.membership.members(), key=lambda m: m.node):
            views.append(
                {
                    "id": member.node,
                    "address": str(member.addr),
                    "state": _STATES[member.state],
                    "incarnation": member.incarnation,
                    "since": member.state_change,
                    "agents": agents.get(member.node, 0),
                    "self": member.node == self.node_id,
                }
            )
        return views

    def status(self) -> Dict[str, Any]:
        membership = self.membership
        return {
            "node_id": self.node_id,
            "clustered": True,
            "cluster": self.cluster_name,
            "address": str(self.address) if self.address else None,
            "profile": self.profile_name,
            "encrypted": bool(self.envelope and self.envelope.encrypted),
            "partition": self.partition(),
            "left": bool(membership and membership.left),
            "members": self._counts(),
            "expected": max(self._largest, self._expect, 1),
            "queues": self.courier.queues() if self.courier else {},
            "replicas": sorted(self.relocator.replicas) if self.relocator else [],
            "local_health": membership.local_health if membership else 0,
            "incarnation": membership.incarnation if membership else 0,
            "agents": self.registry.count() if self.registry else 0,
            "last_sync": self.last_sync,
            "streams": self.streams.connected_peers() if self.streams else [],
            "counters": {
                "swim": membership.stats.as_dict() if membership else {},
                "udp": self.udp.stats.as_dict() if self.udp else {},
                "messages": dict(self.courier.counters) if self.courier else {},
                "relocation": dict(self.relocator.counters) if self.relocator else {},
            },
        }

    def gossip_health(self) -> Dict[str, Any]:
        counts = self._counts()
        partition = self.partition()
        health = self.membership.local_health if self.membership else 0
        healthy = partition == "majority" and health == 0
        peers = counts["alive"] + counts["suspect"] - 1 if self._in_cluster() else 0
        return {
            "status": "healthy" if healthy else "degraded",
            "clustered": True,
            "peer_count": max(0, peers),
            "last_sync": self.last_sync,
            "agent_count": self.registry.count() if self.registry else 0,
            "partition": partition,
            "local_health": health,
        }

    def hosting(self, name: str) -> Optional[str]:
        if self.registry is None:
            return None
        others = [e.node for e in self.registry.lookup(name) if e.node != self.node_id]
        return others[0] if others else None

    def remote_agents(self, node: Optional[str] = None) -> List[Dict[str, Any]]:
        if self.registry is None:
            return []
        return [
            {
                "name": e.name,
                "node": e.node,
                "version": e.version,
                "status": e.status,
                "capabilities": list(e.capabilities),
                "remote": True,
            }
            for e in self.registry.entries(node)
            if e.node != self.node_id
        ]
