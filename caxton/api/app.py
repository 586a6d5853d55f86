# -*- test-case-name: tests.test_api -*-
"""
The REST management API (SPEC 6), as a Klein app.

Handlers parse the request, call the agent manager, the router or the
store, and return JSON.  Errors are raised as domain exceptions and turned
into the SPEC's error shape in one place, L{CaxtonAPI.app}'s error handlers.
Authentication, metrics and events come later as wrappers of this same
app, so every route goes through L{CaxtonAPI._json} and the error handlers.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Optional, Tuple

from email import message_from_bytes

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed, NotFound

from caxton.acl.message import InvalidMessage, message_to_dict, parse_message, strict_json
from caxton.agents.manager import AgentManager, decode_wasm
from caxton.agents.runtime import InvalidWasm
from caxton.api import openapi
from caxton.cluster.interfaces import ICluster
from caxton.cluster.standalone import Standalone
from caxton.config import parse_duration, parse_host_port
from caxton.mcp.interfaces import IToolGateway
from caxton.observability.events import EventHub
from caxton.observability.metrics import NodeMetrics
from caxton.observability.web import stream_events
from caxton import __version__ as caxton_version
from caxton.errors import (
    AgentAlreadyExists,
    AgentNotFound,
    CaxtonError,
    ConversationNotFound,
    InvalidRequest,
    Partitioned,
)
from caxton.router.router import CLIENT_PREFIX, Router, new_id
from caxton.store.interfaces import IStateStore, StoredMessage

log = Logger()

_JSON = "application/json"

_INVOKE_PROTOCOLS = {
    "request": "fipa-request",
    "query-if": "fipa-query",
    "query-ref": "fipa-query",
}


def _error(request: Any, status: int, code: str, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader("content-type", _JSON)
    return json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")


def _arg(request: Any, name: str) -> Optional[str]:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def _int_arg(request: Any, name: str, default: Optional[int], low: int = 0, high: int = 10**12) -> Optional[int]:
    raw = _arg(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}")
    return value


def _cursor(raw: Optional[str]) -> Optional[Tuple[str, str]]:
    """
    A page cursor of the agent list: C{name/node}, as C{next_cursor} gave it.
    """
    if raw is None:
        return None
    name, _, node = raw.partition("/")
    return (name, node)


def parse_multipart(content: bytes, content_type: str) -> Dict[str, list]:
    """
    The parts of a C{multipart/form-data} body, by field name.  Blocking:
    run it off the reactor thread.

    @raise InvalidRequest: if the body is not multipart.
    """
    message = message_from_bytes(
        b"MIME-Version: 1.0\r\nContent-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + content
    )
    if not message.is_multipart():
        raise InvalidRequest("the body is not multipart/form-data")
    parts: Dict[str, list] = {}
    for part in message.get_payload():
        name = part.get_param("name", header="content-disposition")
        if name:
            parts.setdefault(name, []).append(part.get_payload(decode=True) or b"")
    return parts


def _detached(coroutine: Any) -> Deferred:
    """
    Run a change to the node to its end even if the client goes away: Klein
    cancels a handler whose client disconnects, which must not stop a
    deploy, update or removal halfway.
    """
    running = Deferred.fromCoroutine(coroutine)
    answer: Deferred = Deferred()

    def settle(result: Any) -> None:
        if not answer.called:
            answer.callback(result)
        elif isinstance(result, Failure):
            log.failure("a change finished after its client left", result)

    running.addBoth(settle)
    return answer


def _discard(waiter: Deferred) -> None:
    """
    Cancel a waiter nobody will await, without an unhandled error.
    """
    waiter.addErrback(lambda failure: failure.trap(CancelledError))
    waiter.cancel()


def _stored(item: StoredMessage) -> Dict[str, Any]:
    return {"seq": item.seq, "recorded_at": item.recorded_at, "message": item.message}


class _NotKept(CaxtonError):
    """
    The node was built without API keys or an audit log.
    """

    code = "INVALID_REQUEST"
    status = 404


class CaxtonAPI:
    """
    The management API of one node.

    @param reactor: for timers (long polls, invoke).
    @param agents: the agents hosted here.
    @param router: where messages go.
    @param store: the node's state, for conversations and dead letters.
    @param invoke_timeout: the default wait of C{invoke}, in seconds.
    @param max_wait: the longest long poll, in seconds.
    @param ready: tells whether the node is ready (state loaded, listening).
    @param cluster: the cluster this node belongs to (by default it runs
        alone).
    @param tools: the MCP tool gateway, for C{GET /api/v1/tools}.
    @param keys: the node's API keys (L{caxton.auth.keys.KeyStore}), for
        C{/api/v1/keys}.
    @param audit: the node's audit log (L{caxton.auth.audit.AuditLog}),
        for C{GET /api/v1/audit}.
    @param metrics: the node's L{caxton.observability.metrics.NodeMetrics},
        for C{GET /metrics} (by default, metrics of the agents and cluster
        only).
    @param events: the node's L{caxton.observability.events.EventHub}, for
        C{GET /api/v1/events} (by default, a hub nothing publishes to).
    @param onions: lists the onion services the node publishes, for
        C{GET /api/v1/cluster/status} (when the node uses Tor).
    """

    app = Klein()

    def __init__(
        self,
        reactor: Any,
        agents: AgentManager,
        router: Router,
        store: IStateStore,
        invoke_timeout: float = 30.0,
        max_wait: float = 60.0,
        ready: Callable[[], bool] = lambda: True,
        cluster: Optional[ICluster] = None,
        tools: Optional[IToolGateway] = None,
        keys: Any = None,
        audit: Any = None,
        metrics: Any = None,
        events: Any = None,
        onions: Optional[Callable[[], List[Dict[str, Any]]]] = None,
    ) -> None:
        self._reactor = reactor
        self._agents = agents
        self._router = router
        self._store = store
        self._invoke_timeout = invoke_timeout
        self._max_wait = max_wait
        self._ready = ready
        self._cluster: ICluster = cluster if cluster is not None else Standalone(agents)
        self._tools = tools
        self._keys = keys
        self._audit = audit
        self._metrics, self._events = metrics, events
        if metrics is None:
            self._metrics = NodeMetrics(agents.node_id, caxton_version, process=False)
            self._metrics.watch_agents(agents)
            self._metrics.watch_cluster(self._cluster)
        if events is None:
            self._events = EventHub(reactor)
        self._onions = onions

    def resource(self) -> Any:
        """
        The twisted.web resource serving this API.
        """
        return self.app.resource()

    # Errors, in one place ------------------------------------------------------

    @app.handle_errors(CaxtonError)
    def _caxton_error(self, request: Any, failure: Any) -> bytes:
        error = failure.value
        return _error(request, error.status, error.code, str(error))

    @app.handle_errors(InvalidMessage)
    def _invalid_message(self, request: Any, failure: Any) -> bytes:
        return _error(request, 400, "INVALID_MESSAGE", str(failure.value))

    @app.handle_errors(InvalidWasm)
    def _invalid_wasm(self, request: Any, failure: Any) -> bytes:
        return _error(request, 400, "INVALID_WASM", str(failure.value))

    @app.handle_errors(NotFound)
    def _no_route(self, request: Any, failure: Any) -> bytes:
        return _error(request, 404, "INVALID_REQUEST", "no such route")

    @app.handle_errors(MethodNotAllowed)
    def _bad_method(self, request: Any, failure: Any) -> bytes:
        allowed = getattr(failure.value, "valid_methods", None)
        if allowed:
            request.setHeader("allow", ", ".join(sorted(allowed)))
        return _error(request, 405, "INVALID_REQUEST", "method not allowed on this route")

    @app.handle_errors(Exception)
    def _internal(self, request: Any, failure: Any) -> bytes:
        log.failure("unhandled error in {method} {path}", failure, method=request.method, path=request.path)
        return _error(request, 500, "INTERNAL_ERROR", "internal error; see the node's log")

    # Helpers ------------------------------------------------------------------------

    @staticmethod
    def _json(request: Any, value: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader("content-type", _JSON)
        return json.dumps(value, ensure_ascii=False).encode("utf-8")

    @staticmethod
    def _body(request: Any, error: type = InvalidRequest) -> Any:
        raw = request.content.read()
        try:
            return strict_json(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise error(f"malformed JSON: {e}")
        except RecursionError:
            raise error("malformed JSON: nested too deeply")

    def _wait_arg(self, request: Any) -> float:
        raw = _arg(request, "wait")
        if raw is None or raw.strip().rstrip("msh").strip() in ("0", "0.0"):
            return 0.0
        try:
            seconds = parse_duration(raw)
        except ValueError as e:
            raise InvalidRequest(f"wait: {e}")
        return min(seconds, self._max_wait)

    async def _wait(self, waiter: Deferred, seconds: float, request: Any) -> tuple:
        """
        Wait for C{waiter} at most C{seconds}, or until the client goes.

        @return: C{(True, result)} if it fired, else C{(False, None)}.
        """
        timer = self._reactor.callLater(seconds, waiter.cancel)
        request.notifyFinish().addErrback(lambda _: waiter.cancel())
        try:
            return True, await waiter
        except CancelledError:
            return False, None
        finally:
            if timer.active():
                timer.cancel()

    # Health ---------------------------------------------------------------------------

    @app.route("/health", methods=["GET"])
    def health(self, request: Any) -> bytes:
        """
        Liveness: the node answers.
        """
        return self._json(request, {"status": "ok"})

    @app.route("/ready", methods=["GET"])
    def ready(self, request: Any) -> bytes:
        """
        Readiness: state loaded and every listener up (503 until then).
        """
        ready = self._ready()
        return self._json(request, {"ready": ready}, 200 if ready else 503)

    @app.route("/health/gossip", methods=["GET"])
    def gossip_health(self, request: Any) -> bytes:
        """
        Membership health: peers, last full sync, agents, partition mode.
        """
        return self._json(request, self._cluster.gossip_health())

    # Observability (SPEC 10) -------------------------------------------------------------

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Any) -> bytes:
        """
        Prometheus metrics, in the text exposition format (or OpenMetrics,
        when the scraper asks for it).
        """
        body, content_type = self._metrics.exposition(request.getHeader("accept"))
        request.setHeader("content-type", content_type)
        return body

    @app.route("/api/v1/events", methods=["GET"])
    async def events(self, request: Any) -> bytes:
        """
        Server-sent events: agents and members as they change.
        """
        return await stream_events(self._events, request)

    # Cluster ---------------------------------------------------------------------------

    @app.route("/api/v1/cluster/members", methods=["GET"])
    def cluster_members(self, request: Any) -> bytes:
        """
        Every member this node knows, itself included.
        """
        return self._json(request, {"members": self._cluster.members()})

    @app.route("/api/v1/cluster/status", methods=["GET"])
    def cluster_status(self, request: Any) -> bytes:
        """
        Partition mode, members by state, local health, agents.
        """
        status = self._cluster.status()
        if self._onions is not None:
            status = {**status, "onions": self._onions()}
        return self._json(request, status)

    @app.route("/api/v1/cluster/join", methods=["POST"])
    async def cluster_join(self, request: Any) -> bytes:
        """
        Join through seed addresses: C{{"seeds": ["host:port", ...]}}.
        """
        body = self._body(request)
        seeds = body.get("seeds") if isinstance(body, dict) else None
        if isinstance(seeds, str):
            seeds = [seeds]
        if (
            not isinstance(seeds, list)
            or not 0 < len(seeds) <= 64
            or not all(isinstance(seed, str) for seed in seeds)
        ):
            raise InvalidRequest("seeds: a list of 1 to 64 HOST:PORT addresses is required")
        try:
            addresses = [parse_host_port(seed) for seed in seeds]
        except ValueError as e:
            raise InvalidRequest(f"seeds: {e}")
        reached = await _detached(self._cluster.join(addresses))
        return self._json(request, {"joined": reached, "members": len(self._cluster.members())})

    @app.route("/api/v1/cluster/leave", methods=["POST"])
    async def cluster_leave(self, request: Any) -> bytes:
        """
        Leave the cluster gracefully; the node keeps running alone and can
        join again.
        """
        await _detached(self._cluster.leave())
        return self._json(request, {"left": True})

    # Tools -----------------------------------------------------------------------------

    @app.route("/api/v1/tools", methods=["GET"])
    async def list_tools(self, request: Any) -> bytes:
        """
        The MCP servers this node is configured with and their tools.
        """
        servers = await self._tools.catalog() if self._tools is not None else []
        return self._json(request, {"servers": servers})

    # Agents ----------------------------------------------------------------------------

    async def _deploy_parts(self, request: Any, require_wasm: bool) -> tuple:
        """
        The module and spec of a deploy or update: JSON with base64, or
        multipart with a C{wasm} file and a C{spec} JSON part.
        """
        content_type = request.getHeader("content-type") or ""
        if content_type.lower().startswith("multipart/form-data"):
            parts = await deferToThreadPool(
                self._reactor,
                self._reactor.getThreadPool(),
                parse_multipart,
                request.content.read(),
                content_type,
            )
            spec: Dict[str, Any] = {}
            if parts.get("spec"):
                try:
                    spec = strict_json(parts["spec"][0])
                except (UnicodeDecodeError, ValueError, RecursionError) as e:
                    raise InvalidRequest(f"spec part is not valid JSON: {e}")
                if not isinstance(spec, dict):
                    raise InvalidRequest("spec part must be a JSON object")
            wasm = parts["wasm"][0] if parts.get("wasm") else None
            if wasm is None and require_wasm:
                raise InvalidRequest("multipart deploy needs a 'wasm' file part")
            return wasm, spec
        body = self._body(request)
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        wasm = decode_wasm(body.pop("wasm")) if body.get("wasm") is not None else None
        body.pop("wasm", None)
        if wasm is None and require_wasm:
            raise InvalidRequest("wasm is required: the module's bytes in base64")
        return wasm, body

    def _may_change(self) -> None:
        """
        Deploys, updates and removals happen only on the majority side of
        a partition (SPEC 5.4).

        @raise Partitioned: on a minority side, or alone.
        """
        mode = self._cluster.partition()
        if mode != "majority":
            raise Partitioned(
                f"this node is in the {mode} side of a partition: deploys, updates and "
                "removals wait until it reaches a majority of the cluster again"
            )

    @app.route("/api/v1/agents", methods=["POST"])
    async def deploy(self, request: Any) -> bytes:
        """
        Deploy an agent (JSON with base64, or multipart); 201 with its view.
        """
        self._may_change()
        wasm, spec = await self._deploy_parts(request, require_wasm=True)
        name = spec.pop("name", None)
        elsewhere = self._cluster.hosting(name) if isinstance(name, str) else None
        if elsewhere is not None:
            raise AgentAlreadyExists(f"an agent named {name!r} already runs on node {elsewhere}")
        cell = await _detached(self._agents.deploy(name, wasm, spec))
        request.setHeader("location", f"/api/v1/agents/{cell.name}")
        return self._json(request, cell.view(self._agents.node_id), 201)

    @app.route("/api/v1/agents", methods=["GET"])
    def list_agents(self, request: Any) -> bytes:
        """
        The cluster's agents, filtered by capability, status and node,
        paged by name and node: this node's in full, other nodes' as the
        registry knows them.
        """
        capability = _arg(request, "capability")
        status = _arg(request, "status")
        node = _arg(request, "node")
        cursor = _cursor(_arg(request, "cursor"))
        limit = _int_arg(request, "limit", 100, 1, 1000)
        node_id = self._agents.node_id
        rows: List[Tuple[Tuple[str, str], str, Any, Any]] = []
        if node is None or node == node_id:
            rows += [((c.name, node_id), c.status, c.spec.capabilities, c) for c in self._agents]
            rows += [((v["name"], node_id), "deploying", (), v) for v in self._agents.deploying()]
        for view in self._cluster.remote_agents(node):
            rows.append(((view["name"], view["node"]), view["status"], view["capabilities"], view))
        views = []
        more = False
        for key, state, capabilities, item in sorted(rows, key=lambda row: row[0]):
            if cursor is not None and key <= cursor:
                continue
            if capability is not None and capability not in capabilities:
                continue
            if status is not None and state != status:
                continue
            if len(views) == limit:
                more = True
                break
            views.append(item if isinstance(item, dict) else item.view(node_id))
        next_cursor = f"{views[-1]['name']}/{views[-1]['node']}" if more and views else None
        return self._json(request, {"agents": views, "next_cursor": next_cursor})

    def _cell(self, name: str) -> Any:
        cell = self._agents.get(name)
        if cell is None:
            raise AgentNotFound(f"no agent named {name!r}")
        return cell

    @app.route("/api/v1/agents/<name>", methods=["GET"])
    def show_agent(self, request: Any, name: str) -> bytes:
        """
        One agent: limits, usage, counters; or, while its deploy is in
        progress, status C{deploying} with the time it began.
        """
        for view in self._agents.deploying():
            if view["name"] == name:
                return self._json(request, view)
        if self._agents.get(name) is None:
            # Hosted elsewhere: what the registry knows.
            for view in self._cluster.remote_agents():
                if view["name"] == name:
                    return self._json(request, view)
        return self._json(request, self._cell(name).view(self._agents.node_id))

    @app.route("/api/v1/agents/<name>", methods=["PUT"])
    async def update_agent(self, request: Any, name: str) -> bytes:
        """
        A new module and/or spec fields; the version goes up by one.
        """
        cell = self._cell(name)
        self._may_change()
        wasm, given = await self._deploy_parts(request, require_wasm=False)
        given.pop("name", None)
        spec = None
        if given:
            spec = dict(cell.spec.document)
            spec.update(given)
        if wasm is None and spec is None:
            raise InvalidRequest("an update needs a new module ('wasm') or spec fields")
        cell = await _detached(self._agents.update(name, wasm, spec))
        return self._json(request, cell.view(self._agents.node_id))

    @app.route("/api/v1/agents/<name>", methods=["DELETE"])
    async def remove_agent(self, request: Any, name: str) -> bytes:
        """
        Remove an agent; 204.
        """
        self._cell(name)
        self._may_change()
        await _detached(self._agents.remove(name))
        request.setResponseCode(204)
        return b""

    @app.route("/api/v1/agents/<name>/stop", methods=["POST"])
    async def stop_agent(self, request: Any, name: str) -> bytes:
        """
        Stop an agent; its messages wait.
        """
        cell = await self._agents.stop(name)
        return self._json(request, cell.view(self._agents.node_id))

    @app.route("/api/v1/agents/<name>/start", methods=["POST"])
    async def start_agent(self, request: Any, name: str) -> bytes:
        """
        Start a stopped or failed agent.
        """
        cell = await self._agents.start(name)
        return self._json(request, cell.view(self._agents.node_id))

    @app.route("/api/v1/agents/<name>/invoke", methods=["POST"])
    async def invoke(self, request: Any, name: str) -> bytes:
        """
        Send a C{request} and answer with the reply, or the node's
        C{failure} C{TIMEOUT} once the timeout passes.  The agent may run
        on another node.
        """
        if self._cluster.hosting(name) is None:
            self._cell(name)
        body = self._body(request, InvalidMessage)
        if not isinstance(body, dict):
            raise InvalidMessage("the request body must be a JSON object")
        timeout = body.pop("timeout", None)
        try:
            seconds = parse_duration(timeout) if timeout is not None else self._invoke_timeout
        except ValueError as e:
            raise InvalidRequest(f"timeout: {e}")
        longest = max(self._max_wait, self._invoke_timeout)
        if seconds > longest:
            raise InvalidRequest(f"timeout: at most {longest:g}s")
        # Only what opens a tracked protocol: the node then answers TIMEOUT
        # at reply_by, so the call always ends with a message.
        performative = str(body.setdefault("performative", "request")).lower()
        protocol = _INVOKE_PROTOCOLS.get(performative)
        if protocol is None:
            raise InvalidMessage("invoke sends request, query-if or query-ref")
        if body.get("reply_to") is not None or body.get("reply-to") is not None:
            # The reply would go there, and this call would wait in vain.
            raise InvalidMessage("invoke answers with the reply itself: reply_to is not allowed")
        # What the node sets replaces what was given, in either spelling.
        for field in ("reply-with", "reply-by"):
            body.pop(field, None)
        body["protocol"] = protocol
        if body.get("sender") is None:
            body["sender"] = f"{CLIENT_PREFIX}invoke-{new_id()}"
        body["receiver"] = name
        body["reply_with"] = new_id()
        body["reply_by"] = (
            datetime.now(timezone.utc) + timedelta(seconds=seconds)
        ).isoformat()
        message = parse_message(body)
        conversation_id = message.conversation_id or new_id()
        message = message.evolve(conversation_id=conversation_id)
        reply = self._router.expect_reply(message.sender, conversation_id)
        try:
            accepted = self._router.send(message)
        except Exception:
            _discard(reply)
            raise
        # The node answers TIMEOUT at reply_by; the extra second only
        # guards against a reply that can never come.
        replied, answer = await self._wait(reply, seconds + 1.0, request)
        if not replied:
            raise CaxtonError("no reply and no timeout from the node")
        return self._json(
            request,
            {
                "message_id": accepted.message_id,
                "conversation_id": conversation_id,
                "reply": message_to_dict(answer),
            },
        )

    # Messages and conversations -------------------------------------------------------

    @app.route("/api/v1/messages", methods=["POST"])
    async def send_message(self, request: Any) -> bytes:
        """
        Accept a message from a client; 202 with its ids.
        """
        message = parse_message(self._body(request, InvalidMessage))
        accepted = self._router.send(message)
        # 202 once the message is on disk (the journal, or the outbox for
        # another node): a crash after this answer loses nothing.
        await self._store.sync()
        return self._json(
            request,
            {"message_id": accepted.message_id, "conversation_id": accepted.conversation_id},
            202,
        )

    @app.route("/api/v1/conversations", methods=["GET"])
    async def list_conversations(self, request: Any) -> bytes:
        """
        Conversations, most recently active first.
        """
        limit = _int_arg(request, "limit", 100, 1, 1000)
        before_raw = _arg(request, "before")
        try:
            before = float(before_raw) if before_raw is not None else None
        except ValueError:
            raise InvalidRequest("before must be a Unix time")
        participant = _arg(request, "participant")
        before_id = _arg(request, "before_id")
        records = await self._store.list_conversations(limit, before, participant, before_id)
        items = [_conversation(r) for r in records]
        last = items[-1] if len(items) == limit else None
        return self._json(
            request,
            {
                "conversations": items,
                "next_before": last["updated_at"] if last else None,
                "next_before_id": last["conversation_id"] if last else None,
            },
        )

    @app.route("/api/v1/conversations/<conversation_id>", methods=["GET"])
    async def show_conversation(self, request: Any, conversation_id: str) -> bytes:
        """
        A conversation and its messages; C{after} (a C{seq}, or the
        C{message_id} of one of its messages) skips what the client has
        seen, and C{wait} long-polls until something newer arrives.
        """
        after = await self._after(request, conversation_id)
        limit = _int_arg(request, "limit", 1000, 1, 10_000)
        wait = self._wait_arg(request)
        waiter = self._router.wait_conversation(conversation_id) if wait else None
        record, messages = await self._store.get_conversation(conversation_id, after, limit)
        if waiter is not None:
            if not messages and (await self._wait(waiter, wait, request))[0]:
                record, messages = await self._store.get_conversation(conversation_id, after, limit)
            else:
                _discard(waiter)
        if record is None:
            raise ConversationNotFound(f"no conversation {conversation_id!r}")
        return self._json(
            request,
            {
                "conversation": _conversation(record),
                "messages": [_stored(m) for m in messages],
                "next_after": messages[-1].seq if messages else after,
            },
        )

    async def _after(self, request: Any, conversation_id: str) -> int:
        raw = _arg(request, "after")
        if raw is None or raw.isdigit():
            return _int_arg(request, "after", 0)
        _, messages = await self._store.get_conversation(conversation_id, 0, 10_000)
        for item in messages:
            if item.message.get("message_id") == raw:
                return item.seq
        raise InvalidRequest(f"after: no message {raw!r} in conversation {conversation_id!r}")

    @app.route("/api/v1/mailboxes/<client>", methods=["GET"])
    async def mailbox(self, request: Any, client: str) -> bytes:
        """
        A client's mailbox after C{after}, long-polled with C{wait}.
        """
        if not client.startswith(CLIENT_PREFIX):
            raise InvalidRequest("mailboxes belong to client names such as 'client:alice'")
        after = _int_arg(request, "after", 0)
        limit = _int_arg(request, "limit", 1000, 1, 10_000)
        wait = self._wait_arg(request)
        waiter = self._router.wait_mailbox(client) if wait else None
        messages = await self._store.read_mailbox(client, after, limit)
        if waiter is not None:
            if not messages and (await self._wait(waiter, wait, request))[0]:
                messages = await self._store.read_mailbox(client, after, limit)
            else:
                _discard(waiter)
        return self._json(
            request,
            {
                "client": client,
                "messages": [_stored(m) for m in messages],
                "next_after": messages[-1].seq if messages else after,
            },
        )

    @app.route("/api/v1/dead-letters", methods=["GET"])
    async def dead_letters(self, request: Any) -> bytes:
        """
        Messages that ended in failure, newest first.
        """
        limit = _int_arg(request, "limit", 100, 1, 1000)
        before = _int_arg(request, "before", None, 1)
        letters = await self._store.list_dead_letters(limit, before)
        items = [
            {
                "seq": d.seq,
                "message_id": d.message_id,
                "conversation_id": d.conversation_id,
                "sender": d.sender,
                "receiver": d.receiver,
                "reason": d.reason,
                "detail": d.detail,
                "message": d.message,
                "recorded_at": d.recorded_at,
            }
            for d in letters
        ]
        next_before = items[-1]["seq"] if len(items) == limit else None
        return self._json(request, {"dead_letters": items, "next_before": next_before})

    # The API's description -----------------------------------------------------------

    @app.route("/api/v1/openapi.json", methods=["GET"])
    def openapi_document(self, request: Any) -> bytes:
        """
        The OpenAPI 3.1 description of this API (L{caxton.api.openapi}).
        """
        request.setHeader("content-type", _JSON)
        return openapi.encoded()


    # Keys and the audit log (caxton.auth, docs/security.md) ---------------------------
    # The node always gives both; an API built without them (tests, tools)
    # answers 404 on these routes.

    def _key_store(self) -> Any:
        if self._keys is None:
            raise _NotKept("this node keeps no API keys")
        return self._keys

    @app.route("/api/v1/keys", methods=["GET"])
    def list_keys(self, request: Any) -> bytes:
        """
        Every API key, newest first, without secrets.
        """
        return self._json(request, {"keys": self._key_store().views()})

    @app.route("/api/v1/keys", methods=["POST"])
    async def create_key(self, request: Any) -> bytes:
        """
        Make a key: C{{"name": ..., "role": ...}}; 201 with its token,
        shown this once.
        """
        keys = self._key_store()
        body = self._body(request)
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object with name and role")
        record, token = await _detached(keys.create(body.get("name"), body.get("role")))
        request.caxton_audit_detail = {"created_key_id": record.key_id, "role": record.role.name.lower()}
        request.setHeader("location", f"/api/v1/keys/{record.key_id}")
        return self._json(request, {"key": record.view(), "token": token}, 201)

    @app.route("/api/v1/keys/<key_id>", methods=["DELETE"])
    async def revoke_key(self, request: Any, key_id: str) -> bytes:
        """
        Revoke a key; it is refused from the next request.
        """
        record = await _detached(self._key_store().revoke(key_id))
        return self._json(request, {"key": record.view()})

    @app.route("/api/v1/audit", methods=["GET"])
    async def audit_log(self, request: Any) -> bytes:
        """
        Audit entries, newest first: C{limit} (1-1000, default 100) and
        C{before} (a C{seq}, from C{next_before}).
        """
        if self._audit is None:
            raise _NotKept("this node keeps no audit log")
        limit = _int_arg(request, "limit", 100, 1, 1000)
        before = _int_arg(request, "before", None, 1)
        entries, next_before = await self._audit.entries(limit, before)
        return self._json(request, {"entries": entries, "next_before": next_before})


def _conversation(record: Any) -> Dict[str, Any]:
    return {
        "conversation_id": record.conversation_id,
        "protocol": record.protocol,
        "initiator": record.initiator,
        "participants": list(record.participants),
        "state": record.state,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "message_count": record.message_count,
    }
