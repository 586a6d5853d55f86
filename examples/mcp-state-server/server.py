"""
An example MCP state server for Caxton (SPEC 8): a key-value store in SQLite,
served over MCP's streamable HTTP transport with the official ``mcp`` Python
SDK (``mcp`` 2.x, whose ``MCPServer`` is what 1.x called ``FastMCP``).

Caxton keeps no business state; agents that need to remember something call
the operator's MCP tools through the node (receiver ``mcp:<server>/<tool>``).
This server is the smallest useful such backend. Its tools:

- ``store(key, value)``: keep any JSON value under ``key``;
  result ``{"key": key, "stored": true}``;
- ``retrieve(key)``: result ``{"key": key, "value": <value or null>,
  "found": <bool>}``;
- ``delete(key)``: result ``{"key": key, "deleted": <bool>}``;
- ``list(prefix="")``: result ``{"keys": [...], "truncated": <bool>}``, the
  keys starting with ``prefix`` in sorted order, at most ``LIST_LIMIT``.

Run it with::

    python examples/mcp-state-server/server.py --host 127.0.0.1 --port 9000 \\
        --db /var/lib/caxton-state/state.db [--token-file /etc/caxton/mcp-token]

Once it listens it prints one line on stdout,
``MCP state server listening on http://HOST:PORT/mcp``, and flushes it, so a
supervisor (or a test) started with ``--port 0`` learns the port the
kernel chose. With ``--token-file``, every HTTP request must carry
``Authorization: Bearer <the file's content, stripped>``; others get 401.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from typing import Any, Optional, TypedDict

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

#: Most keys one ``list`` call returns; a prefix matching more says
#: ``"truncated": true`` (the caller narrows the prefix).
LIST_LIMIT = 1000

#: Longest key accepted, in characters. Keys are names, not payloads.
MAX_KEY = 1024

#: Largest stored value, in bytes of compact JSON. Caxton's own messages are
#: capped at 256 KiB by default; a checkpoint bigger than a message could not
#: be retrieved through the node anyway.
MAX_VALUE = 1024 * 1024

#: Longest token file read, in bytes (a token is a line, not a document).
MAX_TOKEN = 4096


class StoreResult(TypedDict):
    key: str
    stored: bool


class RetrieveResult(TypedDict):
    key: str
    value: Any
    found: bool


class DeleteResult(TypedDict):
    key: str
    deleted: bool


class ListResult(TypedDict):
    keys: list[str]
    truncated: bool


class StateStore:
    """
    The key-value table: one SQLite connection in WAL mode, shared by the
    tool calls. The SDK runs synchronous tools on worker threads, so the
    connection is opened with C{check_same_thread=False} and every use holds
    C{self._lock}: one connection, one statement at a time.

    Values are kept as compact JSON text, so any JSON value round-trips
    (including C{null}, which is still C{found}).

    Bad arguments raise L{ToolError}: the SDK answers the call with
    C{isError} and this message (which a Caxton agent receives as a
    C{failure} with reason C{TOOL_ERROR}) and logs no traceback.
    """

    def __init__(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit; each statement is its own
        # transaction, which is all a single-key store needs.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across process crashes in WAL mode; only a power
        # loss can lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS state ("
            " key TEXT PRIMARY KEY NOT NULL,"
            " value TEXT NOT NULL,"
            " updated REAL NOT NULL)"
        )

    @staticmethod
    def _check_key(key: Any) -> str:
        if not isinstance(key, str) or not key:
            raise ToolError("key must be a non-empty string")
        if len(key) > MAX_KEY:
            raise ToolError(f"key is longer than {MAX_KEY} characters")
        return key

    def store(self, key: str, value: Any) -> None:
        key = self._check_key(key)
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ToolError(f"value is not JSON: {e}") from None
        if len(text.encode("utf-8")) > MAX_VALUE:
            raise ToolError(f"value is larger than {MAX_VALUE} bytes as JSON")
        with self._lock:
            self._db.execute(
                "INSERT INTO state (key, value, updated) VALUES (?, ?, ?) ON CONFLICT(key)"
                " DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (key, text, time.time()),
            )

    def retrieve(self, key: str) -> tuple[bool, Any]:
        key = self._check_key(key)
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        if row is None:
            return False, None
        return True, json.loads(row[0])

    def delete(self, key: str) -> bool:
        key = self._check_key(key)
        with self._lock:
            cursor = self._db.execute("DELETE FROM state WHERE key = ?", (key,))
        return cursor.rowcount > 0

    def list(self, prefix: str) -> tuple[list[str], bool]:
        if not isinstance(prefix, str):
            raise ToolError("prefix must be a string")
        # A range scan on the primary key rather than LIKE, so '%' and '_'
        # in a prefix mean themselves. Keys >= prefix that start with it are
        # contiguous in the (binary-collated) index; stop at the first that
        # does not. One more row than the limit tells us about truncation.
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM state WHERE key >= ? ORDER BY key LIMIT ?",
                (prefix, LIST_LIMIT + 1),
            ).fetchall()
        keys = []
        for (key,) in rows:
            if not key.startswith(prefix):
                break
            keys.append(key)
        return keys[:LIST_LIMIT], len(keys) > LIST_LIMIT

    def close(self) -> None:
        with self._lock:
            self._db.close()


def build_server(state: StateStore, log_level: str = "WARNING") -> MCPServer:
    """
    The MCP server with the four tools over C{state}. Each tool returns a
    TypedDict, so the SDK publishes an output schema and answers with
    C{structuredContent} (the dict itself) as well as the same JSON as text.
    """
    mcp = MCPServer(
        name="caxton-state",
        instructions="Key-value state for Caxton agents: store, retrieve, delete, list.",
        version="1.0",
        log_level=log_level,
    )

    @mcp.tool(name="store", description="Keep a JSON value under a key (replacing any value it had).")
    def store(key: str, value: Any) -> StoreResult:
        state.store(key, value)
        return {"key": key, "stored": True}

    @mcp.tool(
        name="retrieve",
        description="The value stored under a key; found is false (and value null) if there is none.",
    )
    def retrieve(key: str) -> RetrieveResult:
        found, value = state.retrieve(key)
        return {"key": key, "value": value, "found": found}

    @mcp.tool(name="delete", description="Forget a key; deleted says whether it existed.")
    def delete(key: str) -> DeleteResult:
        return {"key": key, "deleted": state.delete(key)}

    @mcp.tool(
        name="list",
        description=f"The keys starting with prefix, sorted, at most {LIST_LIMIT} (truncated says if there were more).",
    )
    def list_keys(prefix: str = "") -> ListResult:
        keys, truncated = state.list(prefix)
        return {"keys": keys, "truncated": truncated}

    return mcp


class BearerToken:
    """
    ASGI middleware: HTTP requests must carry C{Authorization: Bearer
    <token>}, compared in constant time; others are answered 401 before the
    MCP transport sees them. Lifespan events pass through (the transport's
    session manager starts there).
    """

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = ("Bearer " + token).encode("utf-8")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": "unauthorized"}}
        ).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"www-authenticate", b'Bearer realm="caxton-state"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def read_token(path: str) -> str:
    """The token in C{path}, stripped; refuses an empty or oversized file."""
    with open(path, "rb") as f:
        raw = f.read(MAX_TOKEN + 1)
    if len(raw) > MAX_TOKEN:
        raise SystemExit(f"token file {path} is larger than {MAX_TOKEN} bytes")
    token = raw.decode("utf-8").strip()
    if not token:
        raise SystemExit(f"token file {path} is empty")
    return token


def bind(host: str, port: int) -> socket.socket:
    """
    A listening TCP socket on C{(host, port)}; port 0 lets the kernel
    choose. Binding here rather than in uvicorn is what lets us report the
    real port: uvicorn only logs it.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise SystemExit(f"cannot listen on {host}:{port}: {e}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {e}") from None
    return sock


def url_for(sock: socket.socket, path: str) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


async def serve(args: argparse.Namespace) -> None:
    state = StateStore(args.db)
    try:
        mcp = build_server(state, args.log_level.upper())
        app: Any = mcp.streamable_http_app(
            streamable_http_path=args.path,
            json_response=args.json_response,
            stateless_http=args.stateless,
            host=args.host,
        )
        if args.token_file:
            app = BearerToken(app, read_token(args.token_file))
        sock = bind(args.host, args.port)
        config = uvicorn.Config(
            app,
            log_level=args.log_level,
            # Streams close promptly on shutdown rather than after the
            # default grace period: a test or supervisor stopping us waits
            # for nothing.
            timeout_graceful_shutdown=2,
            lifespan="on",
        )
        server = uvicorn.Server(config)

        async def announce() -> None:
            # Bounded: uvicorn either starts within a minute or has failed.
            for _ in range(6000):
                if server.started:
                    print(f"MCP state server listening on {url_for(sock, args.path)}", flush=True)
                    return
                if server.should_exit:
                    return
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            task.cancel()
            sock.close()
    finally:
        state.close()


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="An MCP key-value state server for Caxton agents.")
    parser.add_argument("--host", default=os.environ.get("CAXTON_STATE_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("CAXTON_STATE_PORT", "9000")),
        help="TCP port; 0 picks a free one (the URL line on stdout names it)",
    )
    parser.add_argument(
        "--db", default=os.environ.get("CAXTON_STATE_DB", "caxton-state.db"),
        help="SQLite file, created if missing (env CAXTON_STATE_DB)",
    )
    parser.add_argument(
        "--token-file", default=os.environ.get("CAXTON_STATE_TOKEN_FILE"),
        help="require 'Authorization: Bearer <token>' with the token in this file",
    )
    parser.add_argument("--path", default="/mcp", help="the MCP endpoint's path (default /mcp)")
    parser.add_argument(
        "--json-response", action="store_true",
        help="answer POSTs with application/json instead of an SSE stream",
    )
    parser.add_argument(
        "--stateless", action="store_true", help="no MCP sessions (no Mcp-Session-Id)"
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    # SIGTERM as SIGINT: uvicorn handles both, but say so for supervisors
    # that send TERM before uvicorn has installed its handlers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
