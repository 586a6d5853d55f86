# -*- test-case-name: tests.test_observability_web -*-
"""
The HTTP side of observability: counting API requests, and serving the
event stream as server-sent events.

L{MeasuredResource} wraps the API's resource (and whatever wraps it in
turn, such as authentication) and counts every request when its response
is finished, by method, route I{template} (L{caxton.api.routes.match}, so
label values stay few) and status code.  It is the outermost resource, so
requests an authentication wrapper refuses are counted too.

L{stream_events} serves one C{GET /api/v1/events} request: headers, the
events owed since C{Last-Event-ID}, then every new one, until the client
goes, the node stops, or the client falls too far behind.  The site's idle
timeout (C{http.timeout}) does not cut it: twisted.web's C{HTTPChannel}
suspends its timeout from the end of a request's headers until its
response is finished (HTTP/2 resets it on every frame sent instead, which
the keep-alives provide).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger
from twisted.web.resource import IResource, getChildForRequest
from zope.interface import implementer

from caxton.api.routes import match
from caxton.errors import InvalidRequest
from caxton.observability.events import EventHub, IEventConsumer, TooManySubscribers, parse_types
from caxton.observability.metrics import APIMetrics

log = Logger()

#: Methods kept as label values; any other is counted as C{OTHER}.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

#: The status counted when the client goes away before the response ends
#: (nginx's convention).
CLIENT_GONE = 499


@implementer(IResource)
class MeasuredResource:
    """
    Counts each request to C{wrapped} in L{APIMetrics} once its response
    is finished (or its client gone).

    A leaf: it keeps the whole path, finds the request's route, and then
    lets C{wrapped} traverse it as if it were the site's root, so any
    wrapper (or Klein's resource itself) can sit inside.

    @param wrapped: the resource to serve.
    @param metrics: where requests are counted.
    @param url_map: the Klein app's URL map, to name the route.
    @param clock: C{seconds()}, for durations.
    """

    isLeaf = True

    def __init__(self, wrapped: Any, metrics: APIMetrics, url_map: Any, clock: Any) -> None:
        self._wrapped = wrapped
        self._metrics = metrics
        self._url_map = url_map
        self._clock = clock

    def getChildWithDefault(self, name: bytes, request: Any) -> Any:
        """
        Never traversed: a leaf.
        """
        return self

    def putChild(self, path: bytes, child: Any) -> None:
        """
        Children belong to the wrapped resource.
        """
        raise NotImplementedError("MeasuredResource has no children of its own")

    def render(self, request: Any) -> Any:
        """
        Start the clock, note the route, and render the wrapped resource.
        """
        started = self._clock.seconds()
        route = match(self._url_map, request.method, request.path)
        if route is not None:
            method, template = route.method, route.template
        else:
            raw = request.method.decode("ascii", "replace").upper()
            method, template = (raw if raw in _METHODS else "OTHER"), "other"

        def finished(result: Any) -> None:
            code = CLIENT_GONE if result is not None else request.code
            self._metrics.finished(method, template, code, self._clock.seconds() - started)

        request.notifyFinish().addBoth(finished)
        return getChildForRequest(self._wrapped, request).render(request)


@implementer(IEventConsumer)
class _ResponseConsumer:
    """
    A subscription's bytes go to the response; a subscriber too far
    behind loses its connection.
    """

    def __init__(self, request: Any) -> None:
        self._request = request

    def write(self, data: bytes) -> None:
        self._request.write(data)

    def abort(self) -> None:
        transport = getattr(self._request, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            self._request.loseConnection()


def _last_event_id(request: Any) -> Optional[int]:
    """
    Where the client resumes: the C{Last-Event-ID} header a reconnecting
    EventSource sends, else C{?after=N}; C{None} for new events only.

    @raise InvalidRequest: for an id that is not a whole number.
    """
    raw = request.getHeader("last-event-id")
    what = "Last-Event-ID"
    if raw is None:
        values = request.args.get(b"after")
        if values:
            raw, what = values[0].decode("utf-8", "replace"), "after"
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidRequest(f"{what} must be an event id (a whole number)")
    return int(raw)


async def stream_events(hub: EventHub, request: Any) -> bytes:
    """
    Serve one event stream on C{request} until it ends.

    Server-sent events: each event is C{id: N}, C{event: <type>} and
    C{data: <JSON>} lines and a blank line; a C{: keepalive} comment goes
    out every C{events.keepalive}.  C{Last-Event-ID} (or C{?after=N})
    resumes after that id; C{?types=a,b} keeps only those kinds.

    @return: C{b""} once the node ends the stream (it stops, or the client
        fell too far behind), for Klein to finish the response.
    @raise InvalidRequest: for a bad C{Last-Event-ID}, C{after} or C{types}.
    @raise TooManySubscribers: with C{Retry-After} set, when the node
        serves as many streams as it may.
    """
    after = _last_event_id(request)
    values = request.args.get(b"types")
    types = parse_types(values[0].decode("utf-8", "replace") if values else None)
    try:
        subscription = hub.subscribe(_ResponseConsumer(request), after, types)
    except TooManySubscribers:
        request.setHeader("retry-after", "5")
        raise
    request.setResponseCode(200)
    request.setHeader("content-type", "text/event-stream; charset=utf-8")
    request.setHeader("cache-control", "no-cache")
    # Tell nginx and the like not to buffer the stream.
    request.setHeader("x-accel-buffering", "no")
    request.registerProducer(subscription, True)
    try:
        subscription.start()
        # Klein cancels this when the client goes away.
        await subscription.done
    finally:
        subscription.stopProducing()
        if getattr(request, "producer", None) is subscription:
            if getattr(request, "channel", None) is not None:
                request.unregisterProducer()
            else:
                # The connection is gone, and the channel with it.
                request.producer = None
    return b""
