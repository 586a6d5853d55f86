# -*- test-case-name: tests.test_mcp_gateway -*-
"""
The tool gateway: how agents reach the operator's MCP servers (SPEC 8).

An agent calls a tool by sending C{request} to the receiver
C{mcp:<server>/<tool>} with the tool's arguments (a JSON object) as
content.  The router asks L{parse_receiver} which server and tool that
names, checks the agent's deploy allowances with L{allowed}, and calls
L{ToolGateway.call}; the Deferred it gets fires with the content of the
C{inform} to answer, or fails with a L{ToolFailure} whose C{reason} is the
failure's reason:

  - C{UNREACHABLE}: the server cannot be reached, answered something that
    is not MCP, has too many calls in flight, or the node is stopping;
  - C{TIMEOUT}: the server did not answer in time;
  - C{TOOL_ERROR}: the tool reported an error (a result with C{isError}),
    or the server refused the call (a JSON-RPC error, such as invalid
    arguments); the detail is the server's message;
  - C{NOT_FOUND}: no server by that name is configured, or the server
    has no such tool;
  - C{FORBIDDEN}: for the router, when L{allowed} says no;
  - C{INVALID_MESSAGE}: a malformed receiver name, or arguments that are
    not a JSON object.

What an C{inform} carries
=========================

A tool result's C{structuredContent} when the server sent one (MCP
2025-06-18 and later: a tool with an output schema); otherwise, if every
content item is text, the text (joined by newlines) parsed as JSON if it
parses, else the text itself; otherwise the raw C{content} list (images,
resources...).  A result with no content is C{null}.

Bounds
======

At most C{max_in_flight} calls (64 by default) are in flight to one server;
one more fails at once with C{UNREACHABLE} ("too many calls in flight")
rather than wait in a queue: the agent learns at once that the server is
saturated, and the node holds no unbounded backlog for it.  Each call is
bounded in time by the client's timeout.

L{ToolGateway.catalog} (for C{GET /api/v1/tools}) lists each server's
tools, asking the server at most once every C{catalog_ttl} seconds (a
failed listing is retried after at most 5 seconds), and never fails: a
server that cannot list its tools is an entry with a status and an error.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from caxton.config import ConfigError
from caxton.mcp.client import (
    IMcpClient,
    McpClient,
    McpError,
    McpProtocolError,
    McpTimeout,
    McpUnreachable,
)
from caxton.mcp.interfaces import IToolGateway, ToolFailure
from caxton.mcp.names import (
    RECEIVER_PREFIX,
    allowed,
    is_tool_receiver,
    parse_allowance,
    parse_receiver,
    valid_server_name,
    valid_tool_name,
)

__all__ = [
    "RECEIVER_PREFIX",
    "REASONS",
    "McpServerConfig",
    "ToolGateway",
    "allowed",
    "is_tool_receiver",
    "parse_allowance",
    "parse_receiver",
    "tool_result_content",
]

REASONS = frozenset(
    {"UNREACHABLE", "TIMEOUT", "TOOL_ERROR", "FORBIDDEN", "NOT_FOUND", "INVALID_MESSAGE"}
)
"""The reasons a L{ToolFailure} from the gateway may give."""

# How a server says a tool does not exist: the MCP specification's example
# is JSON-RPC -32602 "Unknown tool: <name>"; the official SDK answers a
# result with isError and the text "Unknown tool: <name>".
_UNKNOWN_TOOL = re.compile(r"unknown tool|tool not found|no such tool", re.IGNORECASE)

_METHOD_NOT_FOUND = -32601
_INVALID_PARAMS = -32602

# Distinct tool names counted per server: agents choose the names they
# call, so the counters must not grow without bound.
_MAX_COUNTED_TOOLS = 256
_OTHER_TOOLS = "(other)"

# A failed listing is asked again sooner than a good one.
_FAILED_LISTING_TTL = 5.0


@attr.s(frozen=True, slots=True, auto_attribs=True)
class McpServerConfig:
    """
    One MCP server the operator configured.

    @ivar name: the name agents use in C{mcp:<name>/<tool>}.
    @ivar url: the server's streamable HTTP endpoint.
    @ivar token_file: a file holding a bearer token for the server, or
        L{None}; read when the gateway starts.
    """

    name: str
    url: str
    token_file: Optional[str] = None


def tool_result_content(result: Any) -> Any:
    """
    The C{inform} content for a C{tools/call} result (see the module
    docstring).

    @raise ToolFailure: C{TOOL_ERROR} (with the tool's text) for a result
        with C{isError}, C{NOT_FOUND} if that text says the tool is
        unknown, C{UNREACHABLE} for a result that is not an MCP result.
    """
    if not isinstance(result, dict):
        raise ToolFailure("UNREACHABLE", "MCP server sent a result that is not an object")
    content = result.get("content", [])
    if not isinstance(content, list):
        raise ToolFailure("UNREACHABLE", "MCP server sent a result whose content is not a list")
    texts = [
        item["text"]
        for item in content
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str)
    ]
    all_text = len(texts) == len(content)
    if result.get("isError") is True:
        message = "\n".join(texts) if texts else "the tool reported an error"
        if _UNKNOWN_TOOL.search(message) and len(message) < 300:
            raise ToolFailure("NOT_FOUND", message)
        raise ToolFailure("TOOL_ERROR", message)
    if result.get("structuredContent") is not None:
        return result["structuredContent"]
    if not content:
        return None
    if not all_text:
        return content
    text = "\n".join(texts)
    try:
        return json.loads(text)
    except ValueError:
        return text


@attr.s(slots=True, auto_attribs=True)
class _Counters:
    """
    What happened to the calls of one tool.
    """

    calls: int = 0
    failures: Dict[str, int] = attr.Factory(dict)
    latency_ms_total: float = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return {
            "calls": self.calls,
            "failures": dict(self.failures),
            "latency_ms_total": round(self.latency_ms_total, 3),
        }


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Listing:
    """
    The last answer to C{tools/list} from one server.
    """

    fetched_at: float
    status: str
    error: Optional[str]
    tools: Tuple[Dict[str, Any], ...]


@implementer(IToolGateway)
class ToolGateway:
    """
    One L{IMcpClient} per configured MCP server, and the calls agents make
    through them (see the module docstring).

    Constructing one checks the configuration and does no I/O;
    L{start} reads the token files and makes the clients; L{stop} fails
    the calls in flight and closes the clients (the node's C{tools}
    service calls both).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        servers: Sequence[McpServerConfig],
        timeout: float = 30.0,
        client_factory: Optional[Callable[..., IMcpClient]] = None,
        max_in_flight: int = 64,
        catalog_ttl: float = 30.0,
    ) -> None:
        """
        @param reactor: the reactor, for time and for the clients.
        @param servers: the configured servers.
        @param timeout: seconds one call (or listing) may take.
        @param client_factory: called with keyword arguments C{reactor},
            C{name}, C{url}, C{token} and C{timeout}, returns an
            L{IMcpClient}; L{McpClient} by default.
        @param max_in_flight: calls in flight to one server at most.
        @param catalog_ttl: seconds a server's tool list is reused.

        @raise ConfigError: two servers with one name, a name that cannot
            appear in a receiver name, or a URL that is not HTTP.
        """
        seen = set()
        for server in servers:
            if not valid_server_name(server.name):
                raise ConfigError(
                    f"mcp server name {server.name!r} must be letters, digits, "
                    "'_', '-' or '.' (at most 63)"
                )
            if server.name in seen:
                raise ConfigError(f"mcp server {server.name!r} is configured twice")
            seen.add(server.name)
            if not re.match(r"^https?://[^/\s]+", server.url):
                raise ConfigError(
                    f"mcp server {server.name!r}: url {server.url!r} is not an "
                    "http:// or https:// URL"
                )
        self._reactor = reactor
        self._servers = {server.name: server for server in servers}
        self._timeout = timeout
        self._client_factory = client_factory or McpClient
        self._max_in_flight = max_in_flight
        self._catalog_ttl = catalog_ttl
        self._clients: Dict[str, IMcpClient] = {}
        self._in_flight: Dict[str, set] = {name: set() for name in self._servers}
        self._counters: Dict[str, Dict[str, _Counters]] = {name: {} for name in self._servers}
        self._listings: Dict[str, _Listing] = {}
        self._listing: Dict[str, Deferred] = {}
        self._running = False
        self._stopping = False

    @property
    def servers(self) -> Tuple[McpServerConfig, ...]:
        """
        The configured servers, in configuration order.
        """
        return tuple(self._servers.values())

    # Starting and stopping

    def start(self) -> None:
        """
        Read every token file and make the clients.

        @raise ConfigError: a token file cannot be read or is empty.
        """
        if self._running:
            return
        tokens = {name: _read_token(server) for name, server in self._servers.items()}
        for name, server in self._servers.items():
            self._clients[name] = self._client_factory(
                reactor=self._reactor,
                name=name,
                url=server.url,
                token=tokens[name],
                timeout=self._timeout,
            )
        self._running = True
        self._stopping = False
        self.log.info(
            "MCP tool gateway started with {count} servers: {names}",
            count=len(self._servers),
            names=", ".join(self._servers) or "none",
        )

    def stop(self) -> Deferred:
        """
        Fail every call in flight with C{UNREACHABLE} ("node stopping"),
        then close the clients.

        @return: a L{Deferred} firing with L{None} when the clients are
            closed.
        """
        if not self._running:
            return succeed(None)
        self._running = False
        self._stopping = True
        for calls in self._in_flight.values():
            for call in list(calls):
                call.cancel()
        for listing in list(self._listing.values()):
            listing.cancel()
        clients, self._clients = self._clients, {}
        closing = [maybeDeferred(client.close) for client in clients.values()]
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

    # Calls

    parse_receiver = staticmethod(parse_receiver)
    allowed = staticmethod(allowed)

    def call(self, server: str, tool: str, arguments: Any) -> Deferred:
        """
        Call C{tool} on C{server} with C{arguments}.

        @param arguments: the tool's arguments, a JSON object (L{None} is
            taken as no arguments).
        @return: a L{Deferred} firing with the C{inform} content (see
            L{tool_result_content}), or failing with L{ToolFailure}.
            Cancelling it cancels the call.
        """
        if not self._running:
            detail = "node stopping" if self._stopping else "MCP tool gateway is not running"
            return fail(ToolFailure("UNREACHABLE", detail))
        client = self._clients.get(server)
        if client is None:
            return fail(ToolFailure("NOT_FOUND", f"no MCP server named {server!r} is configured"))
        if not valid_tool_name(tool):
            return fail(ToolFailure("INVALID_MESSAGE", f"{tool!r} is not a valid tool name"))
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return fail(
                ToolFailure("INVALID_MESSAGE", "tool arguments must be a JSON object")
            )
        try:
            json.dumps(arguments)
        except (TypeError, ValueError) as error:
            return fail(ToolFailure("INVALID_MESSAGE", f"tool arguments are not JSON: {error}"))
        counters = self._counters_for(server, tool)
        counters.calls += 1
        calls = self._in_flight[server]
        if len(calls) >= self._max_in_flight:
            counters.failures["UNREACHABLE"] = counters.failures.get("UNREACHABLE", 0) + 1
            return fail(
                ToolFailure(
                    "UNREACHABLE",
                    f"too many calls in flight to MCP server {server} "
                    f"({self._max_in_flight})",
                )
            )
        started = self._reactor.seconds()
        call = maybeDeferred(client.call_tool, tool, arguments)
        calls.add(call)

        def succeeded(result: Any) -> Any:
            return tool_result_content(result)

        def failed(failure: Failure) -> Any:
            if failure.check(CancelledError) and not self._stopping:
                # The caller gave up; nobody is told anything.
                return failure
            return Failure(self._tool_failure(failure, server, tool))

        def finished(result: Any) -> Any:
            calls.discard(call)
            counters.latency_ms_total += (self._reactor.seconds() - started) * 1000.0
            if isinstance(result, Failure) and result.check(ToolFailure):
                reason = result.value.reason
                counters.failures[reason] = counters.failures.get(reason, 0) + 1
                self.log.info(
                    "MCP tool {server}/{tool} failed: {reason}: {detail}",
                    server=server,
                    tool=tool,
                    reason=reason,
                    detail=result.value.detail,
                )
            return result

        call.addCallbacks(succeeded, failed)
        call.addBoth(finished)
        return call

    def _tool_failure(self, failure: Failure, server: str, tool: str) -> ToolFailure:
        """
        The L{ToolFailure} for a call that failed with C{failure}.
        """
        error = failure.value
        if self._stopping:
            return ToolFailure("UNREACHABLE", "node stopping")
        if isinstance(error, ToolFailure):
            return error
        if isinstance(error, McpTimeout):
            return ToolFailure(
                "TIMEOUT", f"MCP server {server} did not answer within {self._timeout}s"
            )
        if isinstance(error, McpUnreachable):
            return ToolFailure("UNREACHABLE", str(error))
        if isinstance(error, McpProtocolError):
            return ToolFailure(
                "UNREACHABLE", f"MCP server {server} answered with something that is not MCP: {error}"
            )
        if isinstance(error, McpError):
            if error.code == _METHOD_NOT_FOUND:
                return ToolFailure("NOT_FOUND", f"MCP server {server} does not serve tools")
            if error.code == _INVALID_PARAMS and _UNKNOWN_TOOL.search(error.message):
                return ToolFailure("NOT_FOUND", error.message)
            return ToolFailure("TOOL_ERROR", error.message)
        self.log.failure(
            "MCP tool {server}/{tool}: unexpected error", failure, server=server, tool=tool
        )
        return ToolFailure("UNREACHABLE", f"internal error calling MCP server {server}")

    def _counters_for(self, server: str, tool: str) -> _Counters:
        counters = self._counters[server]
        if tool not in counters and len(counters) >= _MAX_COUNTED_TOOLS:
            tool = _OTHER_TOOLS
        if tool not in counters:
            counters[tool] = _Counters()
        return counters[tool]

    def counters(self) -> Dict[str, Dict[str, Dict[str, Any]]]:
        """
        The call counters, for metrics: server name -> tool name ->
        C{{"calls": n, "failures": {reason: n}, "latency_ms_total": ms}}.
        Calls to unconfigured servers are not counted; past 256 tool names
        on one server, the rest are counted together as C{"(other)"}.
        """
        return {
            server: {tool: counters.as_dict() for tool, counters in tools.items()}
            for server, tools in self._counters.items()
        }

    # The catalog

    def catalog(self) -> Deferred:
        """
        Every configured server with its tools, for C{GET /api/v1/tools}.

        @return: a L{Deferred} firing with a list, in configuration order,
            of C{{"name", "url", "status", "error", "tools", "counters"}}:
            C{status} is C{"ok"}, C{"unreachable"}, C{"timeout"},
            C{"error"} (the server answered, but not a tool list) or
            C{"stopped"}; C{error} says what went wrong, or is L{None};
            C{tools} are C{{"name", "description", "input_schema"}} (the
            last list the server gave, when it fails now); C{counters} are
            the server's entry of L{counters}.  It does not fail.
        """
        names = list(self._servers)
        listings = [maybeDeferred(self._listing_of, name) for name in names]

        def entries(results: List[Tuple[bool, Any]]) -> List[Dict[str, Any]]:
            out = []
            for name, (ok, listing) in zip(names, results):
                if not ok:
                    listing = _Listing(0.0, "error", "internal error", ())
                out.append(
                    {
                        "name": name,
                        "url": self._servers[name].url,
                        "status": listing.status,
                        "error": listing.error,
                        "tools": [dict(tool) for tool in listing.tools],
                        "counters": {
                            tool: counters.as_dict()
                            for tool, counters in self._counters[name].items()
                        },
                    }
                )
            return out

        return DeferredList(listings, consumeErrors=True).addCallback(entries)

    def _listing_of(self, name: str) -> Deferred:
        """
        The server's tool listing, fresh enough, asking the server if it
        is not; concurrent askers share one C{tools/list}.
        """
        last = self._listings.get(name)
        now = self._reactor.seconds()
        if not self._running:
            tools = last.tools if last is not None else ()
            return succeed(_Listing(now, "stopped", "MCP tool gateway is not running", tools))
        if last is not None:
            ttl = self._catalog_ttl if last.status == "ok" else min(
                self._catalog_ttl, _FAILED_LISTING_TTL
            )
            if now - last.fetched_at < ttl:
                return succeed(last)
        running = self._listing.get(name)
        if running is None:
            running = maybeDeferred(self._clients[name].list_tools)
            running.addBoth(self._listed, name, last)
            self._listing[name] = running
        mine: Deferred = Deferred()
        running.addBoth(_relay, mine)
        return mine

    def _listed(self, result: Any, name: str, last: Optional[_Listing]) -> _Listing:
        self._listing.pop(name, None)
        now = self._reactor.seconds()
        previous = last.tools if last is not None else ()
        if isinstance(result, Failure):
            error = result.value
            if self._stopping:
                status, detail = "stopped", "MCP tool gateway is not running"
            elif isinstance(error, McpTimeout):
                status, detail = "timeout", f"MCP server {name} did not answer in time"
            elif isinstance(error, McpUnreachable):
                status, detail = "unreachable", str(error)
            elif isinstance(error, (McpError, McpProtocolError)):
                status, detail = "error", str(error)
            else:
                self.log.failure("MCP server {server}: listing tools failed", result, server=name)
                status, detail = "error", "internal error"
            listing = _Listing(now, status, detail, previous)
        elif not isinstance(result, list) or not all(
            isinstance(tool, dict) and isinstance(tool.get("name"), str) for tool in result
        ):
            listing = _Listing(now, "error", "the tool list is not a list of tools", previous)
        else:
            tools = tuple(
                {
                    "name": tool["name"],
                    "description": tool.get("description"),
                    "input_schema": tool.get("inputSchema"),
                }
                for tool in result
            )
            listing = _Listing(now, "ok", None, tools)
        if self._running:
            self._listings[name] = listing
        return listing


def _relay(result: Any, target: Deferred) -> Any:
    """
    Fire C{target} with C{result} and pass C{result} on, so that one
    Deferred's result reaches several waiters, none of which can cancel it.
    (The listing Deferreds this relays never fail: L{ToolGateway._listed}
    turns every failure into a listing.)
    """
    if isinstance(result, Failure):
        target.errback(result)
    else:
        target.callback(result)
    return result


def _read_token(server: McpServerConfig) -> Optional[str]:
    """
    The bearer token in the server's token file, stripped, or L{None}.

    @raise ConfigError: the file cannot be read, is empty, or holds more
        than one line.
    """
    if server.token_file is None:
        return None
    try:
        with open(server.token_file, encoding="utf-8") as token_file:
            token = token_file.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        why = getattr(error, "strerror", None) or str(error)
        raise ConfigError(
            f"mcp server {server.name!r}: cannot read token_file {server.token_file}: {why}"
        ) from None
    if not token:
        raise ConfigError(f"mcp server {server.name!r}: token_file {server.token_file} is empty")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in token):
        raise ConfigError(
            f"mcp server {server.name!r}: token_file {server.token_file} must hold one "
            "token without spaces or control characters"
        )
    return token
