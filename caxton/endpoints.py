# -*- test-case-name: tests.test_tor -*-
"""
Endpoint strings wherever a node listens (SPEC 9).

L{server_endpoint} turns one string into an C{IStreamServerEndpoint}:
C{onion:} strings become L{caxton.tor.OnionEndpoint}s on the node's Tor,
anything else goes to Twisted's C{serverFromString} (C{tcp:}, C{tcp6:},
C{unix:}, C{systemd:}, and any parser plugin installed).  A string that
does not parse is a L{ConfigError} naming the key it came from.

L{listener_service} makes the service that listens on one string: an
onion one is an L{EndpointListener}, whose start the node awaits (Tor must
accept the service before the node is ready, and a refusal fails the
start), anything else Twisted's C{StreamServerEndpointService}.

L{ListenAll} listens on several endpoints with one factory, which is how
the node streams' TLS listener takes the extra endpoints of
C{streams.listen} next to its TCP port.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer

from caxton.config import ConfigError


def server_endpoint(reactor: Any, description: str, key: str, tor: Any = None) -> IStreamServerEndpoint:
    """
    The server endpoint for C{description}, given under config key C{key}.

    @param tor: the node's L{caxton.tor.TorService}; needed for C{onion:}
        strings.
    @raise ConfigError: the string does not parse.
    """
    from caxton.tor import OnionEndpoint, is_onion_endpoint, parse_onion, redact

    if is_onion_endpoint(description):
        try:
            spec = parse_onion(description)
        except ValueError as e:
            raise ConfigError(f"{key}: {redact(description)!r}: {e}")
        if tor is None:
            raise AssertionError("an onion: endpoint needs the node's Tor")
        return OnionEndpoint(tor, spec, key)
    try:
        return serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{key}: {description!r} is not a server endpoint string ({e})")


def listener_service(
    reactor: Any, description: str, key: str, factory: Any, tor: Any = None
) -> IService:
    """
    A service listening with C{factory} on C{description} (from config key
    C{key}).

    @raise ConfigError: the string does not parse.
    """
    from caxton.tor import OnionEndpoint

    endpoint = server_endpoint(reactor, description, key, tor)
    if isinstance(endpoint, OnionEndpoint):
        return EndpointListener(endpoint, factory)
    listener = StreamServerEndpointService(endpoint, factory)
    # Fail the start (and exit 1) when the port cannot be bound, rather
    # than log it and run a node nobody can reach.
    listener._raiseSynchronously = True
    return listener


class EndpointListener(Service):
    """
    Listens on an endpoint whose C{listen} takes a while and may fail (an
    onion service: Tor must accept it).  Like the node's other parts, the
    work is in L{open}, which the root awaits in order, so the node is not
    ready before the listener is, and a failure stops the start.

    @ivar port: the listening port, once open.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: Any = None

    async def open(self) -> None:
        """
        Listen.
        """
        if self.port is None:
            self.port = await self.endpoint.listen(self.factory)

    async def close(self) -> None:
        """
        Stop listening.
        """
        port, self.port = self.port, None
        if port is not None:
            await _maybe(port.stopListening())

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return Deferred.fromCoroutine(self.close())


@implementer(IListeningPort)
class ListeningPorts:
    """
    The ports of a L{ListenAll}: C{getHost} is the first one's, and
    stopping stops them all.
    """

    def __init__(self, ports: Sequence[Any]) -> None:
        self.ports = list(ports)

    def startListening(self) -> None:
        for port in self.ports:
            port.startListening()

    def stopListening(self) -> Deferred:
        return Deferred.fromCoroutine(_stop_all(self.ports))

    def getHost(self) -> Any:
        return self.ports[0].getHost()


async def _stop_all(ports: Sequence[Any]) -> None:
    first: Optional[BaseException] = None
    for port in reversed(ports):
        try:
            await _maybe(port.stopListening())
        except Exception as e:
            first = first or e
    if first is not None:
        raise first


async def _maybe(value: Any) -> Any:
    if isinstance(value, Deferred):
        return await value
    return value


@implementer(IStreamServerEndpoint)
class ListenAll:
    """
    Listen on every one of C{endpoints} with the same factory, in order;
    if one fails, those already listening are stopped and the failure is
    raised.

    @param endpoints: at least one; the first gives the address.
    """

    def __init__(self, endpoints: Sequence[IStreamServerEndpoint]) -> None:
        if not endpoints:
            raise ValueError("ListenAll needs at least one endpoint")
        self.endpoints = list(endpoints)

    def listen(self, factory: Any) -> Deferred:
        return Deferred.fromCoroutine(self._listen(factory))

    async def _listen(self, factory: Any) -> ListeningPorts:
        ports: List[Any] = []
        try:
            for endpoint in self.endpoints:
                ports.append(await endpoint.listen(factory))
        except BaseException:
            await _stop_all(ports)
            raise
        return ListeningPorts(ports)
