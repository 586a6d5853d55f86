# -*- test-case-name: tests.test_relocation -*-
"""
Relocatable agents (SPEC 5.4): restarted on another node when their node
dies, chosen without a coordinator.

An agent deployed with C{"relocatable": true} is published in the
registry with its module's SHA-256 (L{caxton.cluster.registry.Entry}).
Every other node that learns of it fetches the module and the spec from
the hosting node over the node streams (a FETCH request; the module is
content-addressed, so a node that has the bytes already keeps them once)
and keeps them in its store, with the version it copied.

When the hosting node is declared dead, every survivor computes the new
home by rendezvous hashing: of the members it can reach (alive or
suspect, itself included), the one whose C{sha256(name, node)} is
highest.  Members that see the same membership agree, so exactly one of
them starts the agent, from its copy, with C{moves} one higher; the
registry entry it publishes says so everywhere, and the courier moves
the messages that were waiting for the dead node to the new home.  If
the old node comes back, its entry has fewer moves and loses
(L{caxton.cluster.registry.winner}); the old node then removes its copy.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any, Dict, Iterable, Optional, Tuple

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from caxton.cluster.stream import Kind, StreamError
from caxton.errors import CaxtonError
from caxton.swim.messages import State

log = Logger()

_HEADER = struct.Struct(">I")

#: Seconds before a failed copy is tried again.
COPY_RETRY = 5.0


def rendezvous(name: str, nodes: Iterable[str]) -> Optional[str]:
    """
    The node among C{nodes} that agent C{name} belongs on: the highest
    C{sha256(name NUL node)}; C{None} for no nodes.
    """
    best: Optional[Tuple[bytes, str]] = None
    for node in nodes:
        score = hashlib.sha256(name.encode("utf-8") + b"\0" + node.encode("utf-8")).digest()
        if best is None or score > best[0]:
            best = (score, node)
    return best[1] if best else None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Replica:
    """
    This node's copy of another node's relocatable agent.
    """

    name: str
    owner: str
    version: int
    module_hash: str
    spec: Dict[str, Any]


def encode_copy(header: Dict[str, Any], wasm: bytes) -> bytes:
    """
    A FETCH answer: the header's JSON length, the JSON, the module.
    """
    data = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return _HEADER.pack(len(data)) + data + wasm


def decode_copy(payload: bytes) -> Tuple[Dict[str, Any], bytes]:
    """
    @raise ValueError: for a malformed answer.
    """
    if len(payload) < _HEADER.size:
        raise ValueError("short answer")
    (length,) = _HEADER.unpack_from(payload)
    if length > len(payload) - _HEADER.size:
        raise ValueError("header longer than the answer")
    header = json.loads(payload[_HEADER.size : _HEADER.size + length])
    if not isinstance(header, dict):
        raise ValueError("header must be an object")
    return header, payload[_HEADER.size + length :]


class Relocator:
    """
    Keeps copies of other nodes' relocatable agents, serves copies of this
    node's, and restarts the agents of a dead node that land here.

    @param reactor: for timers.
    @param cluster: the cluster service (C{node_id}, C{registry},
        C{membership}, C{streams}, C{courier}).
    @param agents: the agent manager.
    @param store: the node's store.
    """

    def __init__(self, reactor: Any, cluster: Any, agents: Any, store: Any) -> None:
        self._reactor = reactor
        self._cluster = cluster
        self._agents = agents
        self._store = store
        self.replicas: Dict[str, Replica] = {}
        self._fetching: Dict[str, Deferred] = {}
        self._starting: set = set()
        self.counters: Dict[str, int] = {"copied": 0, "copy_failed": 0, "relocated": 0, "stood_down": 0}

    @property
    def node_id(self) -> str:
        return self._cluster.node_id

    async def load(self) -> None:
        """
        Read the copies kept by an earlier run.
        """
        for name, owner, version, module_hash, spec in await self._store.load_replicas():
            self.replicas[name] = Replica(name, owner, version, module_hash, spec)

    def register(self, streams: Any) -> None:
        streams.register_handler(Kind.FETCH, self._fetch_received)

    def attach(self, registry: Any) -> None:
        """
        Follow C{registry} for relocatable agents to copy.
        """
        registry.observers.append(self._entry_changed)
        for entry in registry.entries():
            self._entry_changed(entry)

    # Copies ------------------------------------------------------------------------

    def _entry_changed(self, entry: Any) -> None:
        if entry.node == self.node_id:
            return
        if entry.removed:
            known = self.replicas.get(entry.name)
            if known is not None and known.owner == entry.node:
                del self.replicas[entry.name]
                self._background(self._store.delete_replica(entry.name), "forgetting a copy")
            return
        if entry.module:
            self._stand_down(entry)
            known = self.replicas.get(entry.name)
            if known is None or known.version != entry.version or known.owner != entry.node:
                self._fetch(entry)

    def _fetch(self, entry: Any) -> None:
        if entry.name in self._fetching:
            return
        membership, streams = self._cluster.membership, self._cluster.streams
        member = membership.member(entry.node) if membership is not None else None
        if streams is None or member is None:
            return
        payload = json.dumps({"n": entry.name}).encode("utf-8")
        d = streams.request(entry.node, member.addr, Kind.FETCH, payload, 60.0)
        self._fetching[entry.name] = d
        d.addCallback(self._copied, entry)
        d.addErrback(self._copy_failed, entry)
        d.addBoth(lambda result: (self._fetching.pop(entry.name, None), result)[1])

    async def _keep(self, header: Dict[str, Any], wasm: bytes, entry: Any) -> None:
        module_hash = hashlib.sha256(wasm).hexdigest()
        if module_hash != header.get("module") or not isinstance(header.get("spec"), dict):
            raise ValueError("the copy does not match its hash, or has no spec")
        await self._store.save_module(module_hash, wasm)
        version = int(header.get("version", entry.version))
        await self._store.save_replica(entry.name, entry.node, version, module_hash, header["spec"])
        self.replicas[entry.name] = Replica(entry.name, entry.node, version, module_hash, header["spec"])
        self.counters["copied"] += 1
        log.info(
            "kept a copy of relocatable agent {agent} of {node} (version {version})",
            agent=entry.name,
            node=entry.node,
            version=version,
        )

    def _copied(self, payload: bytes, entry: Any) -> Deferred:
        header, wasm = decode_copy(payload)
        return Deferred.fromCoroutine(self._keep(header, wasm, entry))

    def _copy_failed(self, failure: Any, entry: Any) -> None:
        self.counters["copy_failed"] += 1
        self._reactor.callLater(COPY_RETRY, self._retry_copy, entry.name)
        if not failure.check(StreamError, ValueError):
            log.failure("copying agent {agent} from {node}", failure, agent=entry.name, node=entry.node)
            return
        log.warn(
            "could not copy relocatable agent {agent} from {node}: {error}",
            agent=entry.name,
            node=entry.node,
            error=str(failure.value),
        )

    def _retry_copy(self, name: str) -> None:
        """
        Try again to copy C{name}, if it is still relocatable elsewhere and
        not yet copied.
        """
        registry = self._cluster.registry
        if registry is None:
            return
        for entry in registry.lookup(name):
            if entry.node != self.node_id and entry.module:
                known = self.replicas.get(name)
                if known is None or known.version != entry.version or known.owner != entry.node:
                    self._fetch(entry)

    async def _serve(self, name: Any) -> bytes:
        cell = self._agents.get(name) if isinstance(name, str) else None
        if cell is None or not cell.spec.relocatable:
            raise CaxtonError(f"no relocatable agent named {name!r} here")
        wasm = await self._store.load_module(cell.module_hash)
        if wasm is None:
            raise CaxtonError(f"the module of {name!r} is not kept")
        header = {
            "name": name,
            "version": cell.version,
            "module": cell.module_hash,
            "spec": dict(cell.spec.document),
        }
        return encode_copy(header, wasm)

    def _fetch_received(self, origin: str, payload: bytes) -> Deferred:
        name = json.loads(payload).get("n")
        return Deferred.fromCoroutine(self._serve(name))

    # Failover ---------------------------------------------------------------------

    def member_failed(self, node: str) -> None:
        """
        C{node} was declared dead: restart here those of its relocatable
        agents whose new home is this node.
        """
        membership = self._cluster.membership
        if membership is None:
            return
        if self._cluster.partition() != "majority":
            # The other side of a partition may well be alive, with its
            # agents: only the majority restarts them.
            log.info("node {node} failed, but this node is not in the majority: relocating nothing", node=node)
            return
        reachable = [
            m.node for m in membership.members() if m.state in (State.ALIVE, State.SUSPECT)
        ]
        for replica in list(self.replicas.values()):
            if replica.owner != node:
                continue
            home = rendezvous(replica.name, reachable)
            if home != self.node_id:
                log.info(
                    "agent {agent} of dead node {node} moves to {home}",
                    agent=replica.name,
                    node=node,
                    home=home,
                )
                continue
            self._background(Deferred.fromCoroutine(self._start(replica)), "relocating an agent")

    async def _start(self, replica: Replica) -> None:
        if self._agents.get(replica.name) is not None or replica.name in self._starting:
            return
        self._starting.add(replica.name)
        try:
            wasm = await self._store.load_module(replica.module_hash)
            if wasm is None:
                log.error("the copy of agent {agent} has no module", agent=replica.name)
                return
            spec = dict(replica.spec)
            spec["relocatable"] = True
            spec["moves"] = int(spec.get("moves", 0)) + 1
            started = self._reactor.seconds()
            await self._agents.deploy(replica.name, wasm, spec)
        finally:
            self._starting.discard(replica.name)
        self.counters["relocated"] += 1
        del self.replicas[replica.name]
        self._background(self._store.delete_replica(replica.name), "forgetting a copy")
        log.info(
            "relocated agent {agent} from {node} to this node in {seconds:.3f}s (move {moves})",
            agent=replica.name,
            node=replica.owner,
            seconds=self._reactor.seconds() - started,
            moves=spec["moves"],
        )

    def _stand_down(self, entry: Any) -> None:
        """
        This node hosts C{entry.name} too, but the other copy moved more
        (this node is the old home, back after its agent was relocated):
        remove this one.
        """
        cell = self._agents.get(entry.name)
        if cell is None or not cell.spec.relocatable or entry.moves <= cell.spec.moves:
            return
        self.counters["stood_down"] += 1
        log.warn(
            "agent {agent} was relocated to {node} while this node was away: removing this copy",
            agent=entry.name,
            node=entry.node,
        )
        self._background(Deferred.fromCoroutine(self._agents.remove(entry.name)), "removing a moved agent")

    def _background(self, d: Deferred, what: str) -> None:
        d.addErrback(lambda failure: log.failure(what, failure))
