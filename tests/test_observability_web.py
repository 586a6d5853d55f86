"""
Tests for L{caxton.observability.web} and the API's observability routes:
requests counted by route template and code (also those a wrapper inside
refuses), C{GET /metrics}, and the event stream served over HTTP, through
C{StubTreq} on a deterministic L{LocalNode}.
"""

from __future__ import annotations

import json
import time
from typing import Any, List

import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from caxton.api.app import CaxtonAPI
from caxton.observability.events import EventHub
from caxton.observability.metrics import NodeMetrics
from caxton.observability.web import MeasuredResource
from caxton.testing import LocalNode
from tests.test_api import BASE, b64
from tests.test_observability_metrics import value
from tests.wasmbuild import example, wat_module


@implementer(IResource)
class Guard:
    """
    A stand-in for an authentication wrapper: refuses requests without
    C{Authorization: Bearer ok} with 401, and lets the others through to
    the wrapped resource, traversing it (not a leaf).
    """

    isLeaf = False

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def getChildWithDefault(self, name: bytes, request: Any) -> Any:
        request.postpath.insert(0, request.prepath.pop())
        if request.getHeader("authorization") != "Bearer ok":
            refusal = Resource()
            refusal.isLeaf = True
            refusal.render = lambda r: (r.setResponseCode(401), b'{"error": {"code": "UNAUTHORIZED"}}')[1]
            return refusal
        return getChildForRequest(self._wrapped, request)

    def render(self, request: Any) -> Any:
        return self.getChildWithDefault(b"", request).render(request)

    def putChild(self, path: bytes, child: Any) -> None:
        raise NotImplementedError()


class MeasuredAPITestCase(SynchronousTestCase):
    """
    A node's API with metrics and events, behind C{StubTreq}.
    """

    guarded = False

    def setUp(self) -> None:
        self.node = LocalNode(self.mktemp(), time.time())
        self.successResultOf(self.node.open())
        self.addCleanup(lambda: self.successResultOf(self.node.store.close()))
        self.metrics = NodeMetrics("test-node", "9.9", process=False)
        self.metrics.watch_agents(self.node.agents)
        self.hub = EventHub(self.node.clock, max_subscribers=2, keepalive=5.0)
        self.api = CaxtonAPI(
            self.node.clock, self.node.agents, self.node.router, self.node.store,
            metrics=self.metrics, events=self.hub,
        )
        resource = self.api.resource()
        if self.guarded:
            resource = Guard(resource)
        self.measured = MeasuredResource(resource, self.metrics.api, CaxtonAPI.app.url_map, self.node.clock)
        verifyObject(IResource, self.measured)
        self.http = StubTreq(self.measured)

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple:
        data = json.dumps(body).encode() if body is not None else None
        d = self.http.request(method, BASE + path, data=data, **kwargs)
        for _ in range(100):
            self.node.pump()
            self.http.flush()
            if d.called:
                break
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.content())

    def requests(self, method: str, route: str, code: int) -> Any:
        return value(self.metrics, "caxton_api_requests_total", method=method, route=route, code=str(code))


class MeasuredResourceTests(MeasuredAPITestCase):
    """
    Requests are counted by method, route template and code.
    """

    def test_routes(self) -> None:
        """
        A deploy counts under C{/api/v1/agents} with 201, a show under the
        template C{/api/v1/agents/<name>} (never the name), an unknown path
        under C{other}; durations are observed per route.
        """
        wasm = b64(wat_module(example("wat", "echo.wat")))
        self.assertEqual(self.call("POST", "/api/v1/agents", {"name": "echo", "wasm": wasm})[0], 201)
        self.assertEqual(self.call("GET", "/api/v1/agents/echo")[0], 200)
        self.assertEqual(self.call("GET", "/api/v1/agents/nobody")[0], 404)
        self.assertEqual(self.call("GET", "/no/such/thing")[0], 404)
        self.assertEqual(self.call("DELETE", "/health")[0], 405)
        self.assertEqual(self.requests("POST", "/api/v1/agents", 201), 1)
        self.assertEqual(self.requests("GET", "/api/v1/agents/<name>", 200), 1)
        self.assertEqual(self.requests("GET", "/api/v1/agents/<name>", 404), 1)
        self.assertEqual(self.requests("GET", "other", 404), 1)
        self.assertEqual(self.requests("DELETE", "other", 405), 1)
        self.assertEqual(
            value(self.metrics, "caxton_api_request_duration_seconds_count", method="GET", route="/api/v1/agents/<name>"),
            2,
        )

    def test_metrics_route(self) -> None:
        """
        C{GET /metrics} serves the text exposition (parseable), counting
        itself from the next scrape on.
        """
        code, body = self.call("GET", "/metrics")
        self.assertEqual(code, 200)
        names = {f.name for f in text_string_to_metric_families(body.decode("utf-8"))}
        self.assertTrue({"caxton_agents", "caxton_messages_routed", "caxton_api_requests"} <= names)
        code, body = self.call("GET", "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}
        [sample] = [s for s in families["caxton_api_requests"].samples if s.name.endswith("_total")]
        self.assertEqual((sample.labels["route"], sample.value), ("/metrics", 1))

    def test_openmetrics(self) -> None:
        """
        A scraper that asks for OpenMetrics gets it, with its content type
        and its terminating C{# EOF}.
        """
        d = self.http.get(BASE + "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
        self.http.flush()
        response = self.successResultOf(d)
        [content_type] = response.headers.getRawHeaders("content-type")
        self.assertTrue(content_type.startswith("application/openmetrics-text; version=1.0.0"), content_type)
        body = self.successResultOf(response.content())
        self.assertTrue(body.endswith(b"# EOF\n"))
        self.assertIn(b"caxton_messages_routed_total", body)

    def test_methods_bounded(self) -> None:
        """
        Made-up methods are counted as C{OTHER}, so clients cannot mint
        label values.
        """
        request = DummyRequest([b"x"])
        request.method = b"BREW"
        request.path = b"/x"
        request.code = 405
        wrapped = Resource()
        wrapped.isLeaf = True
        wrapped.render = lambda r: b""
        measured = MeasuredResource(wrapped, self.metrics.api, CaxtonAPI.app.url_map, Clock())
        request.render(measured)
        self.assertEqual(self.requests("OTHER", "other", 405), 1)

    def test_client_gone(self) -> None:
        """
        A request whose client went away before the end counts as 499.
        """
        clock = Clock()
        request = DummyRequest([b"api", b"v1", b"events"])
        request.method = b"GET"
        request.path = b"/api/v1/events"
        wrapped = Resource()
        wrapped.isLeaf = True
        wrapped.render = lambda r: 1  # NOT_DONE_YET
        measured = MeasuredResource(wrapped, self.metrics.api, CaxtonAPI.app.url_map, clock)
        measured.render(request)
        clock.advance(42)
        request.processingFailed(Failure(ConnectionError("gone")))
        self.assertEqual(self.requests("GET", "/api/v1/events", 499), 1)
        self.assertEqual(
            value(self.metrics, "caxton_api_request_duration_seconds_sum", method="GET", route="/api/v1/events"), 42
        )


class GuardedTests(MeasuredAPITestCase):
    """
    The metrics wrapper is outermost: requests a wrapper inside refuses
    are counted, and those it lets through reach the API.
    """

    guarded = True

    def test_refused_counted(self) -> None:
        """
        A request refused with 401 is counted under its route; one with the
        key is served.
        """
        self.assertEqual(self.call("GET", "/api/v1/agents")[0], 401)
        code, _ = self.call("GET", "/api/v1/agents", headers={"authorization": "Bearer ok"})
        self.assertEqual(code, 200)
        self.assertEqual(self.requests("GET", "/api/v1/agents", 401), 1)
        self.assertEqual(self.requests("GET", "/api/v1/agents", 200), 1)


class EventStreamTests(MeasuredAPITestCase):
    """
    C{GET /api/v1/events} over HTTP.
    """

    def open(self, path: str = "/api/v1/events", **kwargs: Any) -> tuple:
        chunks: List[bytes] = []
        d = self.http.get(BASE + path, **kwargs)
        self.http.flush()
        response = self.successResultOf(d)
        done = treq.collect(response, chunks.append)
        self.http.flush()
        return response, chunks, done

    def test_stream(self) -> None:
        """
        The stream answers 200 C{text/event-stream}, sends the events owed
        since C{Last-Event-ID}, then new ones and keep-alives, and ends
        cleanly when the node closes the hub.
        """
        self.hub.publish("agent.deployed", agent="a", node="test-node", version=1)
        self.hub.publish("agent.deployed", agent="b", node="test-node", version=1)
        response, chunks, done = self.open(headers={"last-event-id": "1"})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream; charset=utf-8"])
        self.hub.publish("member.failed", member="n2", address="10.0.0.2:7946", incarnation=3)
        self.node.clock.advance(5)
        self.http.flush()
        text = b"".join(chunks).decode("utf-8")
        self.assertIn('id: 2\nevent: agent.deployed\ndata: {"id":2,"type":"agent.deployed"', text)
        self.assertIn("id: 3\nevent: member.failed\n", text)
        self.assertNotIn("id: 1\n", text)
        self.assertIn(": keepalive\n\n", text)
        self.hub.close()
        self.http.flush()
        self.successResultOf(done)

    def test_slow_client_dropped(self) -> None:
        """
        A client whose connection stays paused (its send buffer full) while
        more than C{events.max_pending} waits is disconnected; the stream
        is closed on both sides, the subscription freed, nothing logged as
        an error, and a new stream can take its place.
        """
        self.hub.max_pending = 2000
        _, chunks, done = self.open()
        [subscription] = self.hub._subscriptions
        subscription.pauseProducing()
        for i in range(30):
            self.hub.publish("agent.deployed", agent=f"agent-{i:03d}", node="test-node", version=1)
        self.http.flush()
        self.failureResultOf(done)
        self.assertEqual((self.hub.subscribers, self.hub.dropped), (0, 1))
        self.assertNotIn(b"agent-000", b"".join(chunks))
        self.open()
        self.assertEqual(self.hub.subscribers, 1)
        self.hub.close()
        self.http.flush()

    def test_after_and_types(self) -> None:
        """
        C{?after=N} resumes like C{Last-Event-ID}; C{?types=} filters.
        """
        self.hub.publish("agent.deployed", agent="a", node="test-node", version=1)
        self.hub.publish("agent.removed", agent="a", node="test-node", version=1)
        _, chunks, _ = self.open("/api/v1/events?after=0&types=agent.removed")
        text = b"".join(chunks).decode("utf-8")
        self.assertIn("event: agent.removed", text)
        self.assertNotIn("event: agent.deployed", text)
        self.hub.close()
        self.http.flush()

    def test_bad_arguments(self) -> None:
        """
        A bad C{Last-Event-ID}, C{after} or C{types} is a 400 in the SPEC's
        error shape.
        """
        for path, headers in [
            ("/api/v1/events", {"last-event-id": "abc"}),
            ("/api/v1/events?after=-1", {}),
            ("/api/v1/events?types=agent.exploded", {}),
        ]:
            code, body = self.call("GET", path, headers=headers)
            self.assertEqual((code, json.loads(body)["error"]["code"]), (400, "INVALID_REQUEST"), path)

    def test_too_many(self) -> None:
        """
        Past C{events.max_subscribers}, 429 C{RATE_LIMITED} with a
        C{Retry-After}.
        """
        self.open()
        self.open()
        d = self.http.get(BASE + "/api/v1/events")
        self.http.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["5"])
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(body["error"]["code"], "RATE_LIMITED")
        self.hub.close()
        self.http.flush()
