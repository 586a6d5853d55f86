"""
The example MCP state server (examples/mcp-state-server/server.py) as a
child process, and a small MCP client over streamable HTTP, for the tests.

L{StateServerProcess} runs the server with its own SQLite file on an
ephemeral port of 127.0.0.1, waits for the URL line it prints once it
listens, and stops it with SIGTERM (then SIGKILL) when the test is done.
L{McpClient} speaks MCP's streamable HTTP transport with treq on the
reactor (JSON-RPC over POST, answers as JSON or as an SSE stream): enough to
initialize, list tools and call them, to check the server and, in the
end-to-end tests, what an agent checkpointed.

Both are async and run on the reactor: nothing here blocks it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.web.client import Agent, HTTPConnectionPool

from tests.nodes import ChildProcess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(REPO, "examples", "mcp-state-server", "server.py")

#: The protocol revision the client offers; the SDK answers with it (it
#: speaks every revision from 2024-11-05 on through initialize).
PROTOCOL_VERSION = "2025-06-18"

_URL = re.compile(rb"listening on (http://\S+)")

#: Most bytes of child output kept (a runaway log must not eat the test's
#: memory); the URL line comes first.
_MAX_OUTPUT = 1 << 20


def mcp_available() -> Optional[str]:
    """
    C{None} if the official C{mcp} SDK is importable in this interpreter
    (the server needs it), else why not.
    """
    try:
        import mcp.server.mcpserver  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"the mcp SDK is not importable ({e}); pip install 'mcp>=2.3,<3'"
    return None


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.url: Deferred = Deferred()
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        if len(self.output) < _MAX_OUTPUT:
            self.output += data[: _MAX_OUTPUT - len(self.output)]
        if not self.url.called:
            match = _URL.search(self.output)
            if match:
                self.url.callback(match.group(1).decode("ascii"))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if not self.url.called:
            self.url.errback(reason)
        self.ended.callback(reason.value)


class StateServerProcess(ChildProcess):
    """
    The example state server as a child process.

    @param db: its SQLite file (kept across restarts: L{start} again after
        L{stop} serves the same state).
    @param token_file: a file holding the bearer token to require, or
        C{None}.
    @param args: more command-line options (C{--json-response},
        C{--stateless}, ...).
    @param port: the port to listen on; 0 (the default) lets the kernel
        choose on each start.
    """

    def __init__(
        self,
        db: str,
        token_file: Optional[str] = None,
        args: Sequence[str] = (),
        port: int = 0,
    ) -> None:
        self.db = os.path.abspath(db)
        self.token_file = os.path.abspath(token_file) if token_file is not None else None
        self.args = list(args)
        self.port = port
        self.url: Optional[str] = None
        self._process: Any = None
        self._output: Optional[_Output] = None

    @property
    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        return bytes(self._output.output).decode("utf-8", "replace") if self._output else ""

    async def start(self, timeout: float = 30.0) -> str:
        """
        Start the server and wait (at most C{timeout} seconds) for the line
        saying it listens; its MCP endpoint URL.
        """
        argv = [sys.executable, SERVER, "--host", "127.0.0.1", "--port", str(self.port), "--db", self.db]
        if self.token_file is not None:
            argv += ["--token-file", self.token_file]
        argv += self.args
        env = dict(os.environ)
        # The URL line must not sit in a pipe buffer.
        env["PYTHONUNBUFFERED"] = "1"
        self._output = _Output()
        self._process = reactor.spawnProcess(self._output, sys.executable, argv, env=env, path=REPO)
        timer = reactor.callLater(timeout, self._output.url.cancel)
        try:
            self.url = await self._output.url
        except Exception:
            self.kill()
            raise AssertionError(f"the MCP state server did not start:\n{self.output}")
        finally:
            if timer.active():
                timer.cancel()
        return self.url


class McpError(Exception):
    """
    A JSON-RPC error, or a tool result with C{isError}.

    @ivar code: the JSON-RPC error code, or C{None} for a tool error.
    """

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code


def parse_sse(body: bytes) -> List[Any]:
    """
    The JSON messages in an SSE stream's C{message} events (the data lines
    of one event joined by newlines, as the SSE spec says).
    """
    messages = []
    for block in re.split(rb"\r?\n\r?\n", body):
        event = b"message"
        data: List[bytes] = []
        for line in block.splitlines():
            if line.startswith(b"event:"):
                event = line[6:].strip()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        if data and event == b"message":
            messages.append(json.loads(b"\n".join(data)))
    return messages


class McpClient:
    """
    A minimal MCP client over streamable HTTP, with treq on the reactor.

    L{initialize} opens a session (keeping C{Mcp-Session-Id} if the server
    gives one); L{call} calls a tool and returns its C{structuredContent}.
    Connections are not persistent, so a test leaves no sockets behind.

    @param url: the server's MCP endpoint.
    @param token: a bearer token to send, or C{None}.
    @param timeout: seconds to wait for each HTTP answer.
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        self.session: Optional[str] = None
        self._ids = 0
        self._agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def headers(self) -> Dict[str, List[str]]:
        headers = {
            "Content-Type": ["application/json"],
            "Accept": ["application/json, text/event-stream"],
        }
        if self.token is not None:
            headers["Authorization"] = [f"Bearer {self.token}"]
        if self.session is not None:
            headers["Mcp-Session-Id"] = [self.session]
            headers["Mcp-Protocol-Version"] = [PROTOCOL_VERSION]
        return headers

    async def post(self, message: Dict[str, Any]) -> tuple:
        """
        POST one JSON-RPC message; C{(status, headers, body bytes)}.
        """
        response = await treq.post(
            self.url,
            data=json.dumps(message).encode("utf-8"),
            headers=self.headers(),
            agent=self._agent,
            timeout=self.timeout,
        )
        body = await treq.content(response)
        return response.code, response.headers, body

    async def request(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        """
        A JSON-RPC request; its C{result}, or L{McpError} for an error.
        """
        self._ids += 1
        message: Dict[str, Any] = {"jsonrpc": "2.0", "id": self._ids, "method": method}
        if params is not None:
            message["params"] = params
        status, headers, body = await self.post(message)
        if status != 200:
            raise McpError(f"{method}: HTTP {status}: {body[:500]!r}", code=status)
        kind = (headers.getRawHeaders(b"content-type") or [b""])[0].split(b";")[0].strip()
        if kind == b"text/event-stream":
            answers = [m for m in parse_sse(body) if isinstance(m, dict) and m.get("id") == self._ids]
            if not answers:
                raise McpError(f"{method}: no answer in the event stream: {body[:500]!r}")
            answer = answers[0]
        else:
            answer = json.loads(body)
        if "error" in answer:
            error = answer["error"]
            raise McpError(f"{method}: {error.get('message')}", code=error.get("code"))
        if method == "initialize":
            session = headers.getRawHeaders(b"mcp-session-id")
            self.session = session[0].decode("ascii") if session else None
        return answer["result"]

    async def notify(self, method: str, params: Optional[Dict[str, Any]] = None) -> int:
        """A JSON-RPC notification; the HTTP status (202 when accepted)."""
        message: Dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        status, _, _ = await self.post(message)
        return status

    async def initialize(self) -> Dict[str, Any]:
        """The MCP handshake: C{initialize}, then C{notifications/initialized}."""
        result = await self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "caxton-tests", "version": "1"},
            },
        )
        status = await self.notify("notifications/initialized")
        if status != 202:
            raise McpError(f"notifications/initialized: HTTP {status}", code=status)
        return result

    async def list_tools(self) -> List[Dict[str, Any]]:
        return (await self.request("tools/list"))["tools"]

    async def call(self, tool: str, arguments: Dict[str, Any]) -> Any:
        """
        Call C{tool}; its C{structuredContent}. A result with C{isError}
        raises L{McpError} with the text the server gave.
        """
        result = await self.request("tools/call", {"name": tool, "arguments": arguments})
        if result.get("isError"):
            text = " ".join(
                c.get("text", "") for c in result.get("content", ()) if isinstance(c, dict)
            )
            raise McpError(f"{tool}: {text}")
        return result.get("structuredContent")

    async def close(self) -> None:
        """End the session (DELETE), if there is one; errors are ignored."""
        if self.session is None:
            return
        try:
            response = await treq.delete(self.url, headers=self.headers(), agent=self._agent, timeout=self.timeout)
            await treq.content(response)
        except Exception:
            pass
        self.session = None
