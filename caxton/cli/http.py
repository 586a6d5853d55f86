# -*- test-case-name: tests.test_cli_http -*-
"""
The C{caxton} commands' client for a node's REST API (SPEC 6, 7).

  - L{add_node_options} gives a parser C{--url}, C{--token}, C{--json} and
    C{--timeout}.  Their defaults are C{SUPPRESS}, so the same options
    can sit on the top-level parser and on every command's parser
    (C{caxton --url X agents list} and C{caxton agents list --url X}); the
    last one given wins, and L{settings} fills in the environment
    (C{CAXTON_URL}, C{CAXTON_TOKEN}) and the defaults.
  - L{NodeClient} sends JSON requests on treq with non-persistent
    connections and a time limit, and turns every way a request can fail
    into a L{CommandError} with one line a person can act on: the node
    cannot be reached, refused the token, refused the role, is rate
    limiting, or answered an error in the SPEC 6 shape
    (C{CODE: message}).
  - L{node_command} makes a command's handler out of an C{async def}
    that takes a L{NodeClient}, and makes Ctrl-C and SIGTERM cancel it
    cleanly (the handler sees L{CancelledError}).

Twisted and treq are imported only when a command runs, so C{caxton
--help} and the offline commands start fast.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from typing import Any, Awaitable, Callable, Dict, Iterable, Mapping, Optional, TextIO, Tuple
from urllib.parse import urlencode, urlsplit

from caxton.cli.errors import CommandError, UsageError

#: Where a node's API is unless C{--url} or C{CAXTON_URL} says otherwise.
DEFAULT_URL = "http://127.0.0.1:8080"

#: The environment variables of the node options.
URL_ENV = "CAXTON_URL"
TOKEN_ENV = "CAXTON_TOKEN"

#: The longest an ordinary request may take, in seconds (C{--timeout}).
DEFAULT_TIMEOUT = 30.0

#: The longest a connection attempt may take, in seconds.
CONNECT_TIMEOUT = 10.0

#: The largest answer the client reads, in bytes.
MAX_ANSWER = 64 * 1024 * 1024

_HINT_URL = "(--url / CAXTON_URL)"
_HINT_TOKEN = "(--token / CAXTON_TOKEN)"


def _url(value: str) -> str:
    """
    argparse type of C{--url}: an http or https URL with a host.
    """
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL with a host")
    try:
        parts.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} has a bad port") from None
    if parts.netloc.endswith(":"):
        raise argparse.ArgumentTypeError(f"{value!r} has an empty port")
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{value!r}: give the node's base URL, without ? or #")
    return value.strip().rstrip("/")


def _seconds(value: str) -> float:
    """
    argparse type of C{--timeout}: a duration (C{30}, C{90s}, C{5m}).
    """
    from caxton.config import parse_duration

    try:
        return parse_duration(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_node_options(parser: argparse.ArgumentParser, json_help: Optional[str] = None) -> None:
    """
    Give C{parser} the options of every command that talks to a node.
    Their defaults are C{SUPPRESS}: an option given on the top-level parser
    survives a command parser that does not repeat it.
    """
    group = parser.add_argument_group("node options")
    group.add_argument(
        "--url",
        type=_url,
        default=argparse.SUPPRESS,
        help=f"the node's API (default ${URL_ENV}, else {DEFAULT_URL})",
    )
    group.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help=f"API key sent as 'Authorization: Bearer' (default ${TOKEN_ENV})",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help=json_help or "print the API's JSON instead of a table",
    )
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=argparse.SUPPRESS,
        metavar="DURATION",
        help=f"give up on a request after this long (default {DEFAULT_TIMEOUT:g}s; longer for deploys)",
    )


def node_parent() -> argparse.ArgumentParser:
    """
    A parent parser holding L{add_node_options}, for C{parents=[...]}.
    """
    parent = argparse.ArgumentParser(add_help=False)
    add_node_options(parent)
    return parent


class Settings:
    """
    Where the node is and how to talk to it, from the options and the
    environment.

    @ivar url: the API's base URL, without a trailing slash.
    @ivar token: the API key, or L{None}.
    @ivar json: print JSON instead of tables.
    @ivar timeout: the time limit of one request in seconds, or L{None}
        for the command's own default.
    """

    def __init__(self, url: str, token: Optional[str], json: bool, timeout: Optional[float]) -> None:
        self.url = url
        self.token = token
        self.json = json
        self.timeout = timeout


def settings(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> Settings:
    """
    The node settings of a parsed command line: options first, then
    C{CAXTON_URL} and C{CAXTON_TOKEN}, then the defaults.

    @raise UsageError: if C{CAXTON_URL} is not a URL.
    """
    environ = os.environ if environ is None else environ
    url = getattr(args, "url", None)
    if url is None:
        raw = environ.get(URL_ENV, "").strip()
        if raw:
            try:
                url = _url(raw)
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"{URL_ENV}: {e}") from None
        else:
            url = DEFAULT_URL
    token = getattr(args, "token", None)
    if token is None:
        token = environ.get(TOKEN_ENV) or None
    if token is not None:
        token = token.strip()
        if not token or any(c in token for c in "\r\n"):
            raise UsageError("the token is empty or has a line break in it " + _HINT_TOKEN)
    return Settings(url, token, bool(getattr(args, "json", False)), getattr(args, "timeout", None))


class APIError(CommandError):
    """
    The node answered with an error status.

    @ivar status: the HTTP status.
    @ivar code: the SPEC 6 error code, or L{None} if the body had none.
    @ivar detail: the error's message from the body, or L{None}.
    """

    def __init__(self, line: str, status: int, code: Optional[str] = None, detail: Optional[str] = None) -> None:
        super().__init__(line)
        self.status = status
        self.code = code
        self.detail = detail


def error_body(content: bytes) -> Tuple[Optional[str], Optional[str]]:
    """
    The C{(code, message)} of a SPEC 6 error body, or C{(None, None)}.
    """
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (
        code if isinstance(code, str) else None,
        " ".join(message.split()) if isinstance(message, str) else None,
    )


def describe_error(status: int, phrase: str, content: bytes, headers: Mapping[str, str], token: Optional[str]) -> APIError:
    """
    The L{APIError} for an error answer, with a line that says what to do.

    @param headers: the answer's headers that matter, by lower-case name
        (C{retry-after}).
    """
    code, message = error_body(content)
    said = f"{code}: {message}" if code and message else (code or message)
    if status == 401:
        if token is None:
            line = f"the node requires an API token: pass --token or set {TOKEN_ENV}"
        else:
            line = f"the node refused the token {_HINT_TOKEN}"
        if said:
            line += f" [{said}]"
    elif status == 403:
        line = f"{said or 'FORBIDDEN'} — the token's role is not allowed to do this {_HINT_TOKEN}"
    elif status == 429:
        retry = (headers.get("retry-after") or "").strip()
        line = said or "RATE_LIMITED: too many requests"
        line += f"; retry after {retry}s" if retry.isdigit() else "; retry later"
    elif said:
        line = said
    else:
        snippet = " ".join(content[:200].decode("utf-8", "replace").split())
        line = f"the node answered {status} {phrase}".rstrip()
        if snippet:
            line += f": {snippet}"
        if status == 404:
            line += f" — is {_HINT_URL} a Caxton node of this version?"
    return APIError(line, status, code, message)


def unreachable(url: str, reason: BaseException) -> CommandError:
    """
    The L{CommandError} for a request that got no answer at all.
    """
    from twisted.internet import error
    from twisted.web._newclient import ResponseFailed, ResponseNeverReceived

    reasons = [reason]
    if isinstance(reason, (ResponseFailed, ResponseNeverReceived)):
        reasons = [f.value for f in reason.reasons] or reasons
    first = reasons[0]
    hint = f"is it running? {_HINT_URL}"
    if isinstance(first, error.ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(first, error.DNSLookupError):
        why, hint = "no such host", f"check the address {_HINT_URL}"
    elif isinstance(first, (error.TimeoutError, error.ConnectingCancelledError)):
        why, hint = "the connection timed out", f"is it running, and is the address right? {_HINT_URL}"
    elif isinstance(first, (error.ConnectionLost, error.ConnectionDone)) or isinstance(
        reason, (ResponseFailed, ResponseNeverReceived)
    ):
        why = "the connection closed before an answer"
        hint = f"is that a Caxton node, and is http/https right? {_HINT_URL}"
    else:
        why = " ".join(str(first).split()) or type(first).__name__
        if "SSL" in type(first).__name__ or "certificate" in why.lower():
            hint = "TLS failed: check the node's certificate " + _HINT_URL
    return CommandError(f"cannot reach the node at {url}: {why} — {hint}")


def _cancelled(reason: BaseException) -> bool:
    """
    Whether a request failed because it was cancelled (by its time limit
    or by Ctrl-C), however the HTTP client wrapped that.
    """
    from twisted.internet.defer import CancelledError
    from twisted.internet.error import ConnectingCancelledError
    from twisted.web._newclient import ResponseFailed, ResponseNeverReceived

    if isinstance(reason, (CancelledError, ConnectingCancelledError)):
        return True
    if isinstance(reason, (ResponseFailed, ResponseNeverReceived)):
        return any(_cancelled(f.value) for f in reason.reasons)
    return False


class NodeClient:
    """
    A JSON client for one node's API.

    @param reactor: for timers and connections.
    @param settings: where the node is, the token, the default time limit.
    @param http: a treq C{HTTPClient} (or L{treq.testing.StubTreq}); by
        default one with non-persistent connections, so nothing lingers.

    @ivar interrupted: set when Ctrl-C or SIGTERM cancelled the command.
    """

    def __init__(self, reactor: Any, settings: Settings, http: Any = None) -> None:
        self.reactor = reactor
        self.settings = settings
        self.url = settings.url
        self.interrupted = False
        if http is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            pool = HTTPConnectionPool(reactor, persistent=False)
            http = HTTPClient(Agent(reactor, connectTimeout=CONNECT_TIMEOUT, pool=pool))
        self._http = http

    def _headers(self, extra: Optional[Mapping[str, str]] = None) -> Dict[bytes, list]:
        headers = {b"accept": [b"application/json"], b"user-agent": [b"caxton-cli"]}
        if self.settings.token is not None:
            headers[b"authorization"] = [b"Bearer " + self.settings.token.encode("utf-8")]
        for name, value in (extra or {}).items():
            headers[name.lower().encode("ascii")] = [value.encode("utf-8")]
        return headers

    def location(self, path: str, params: Optional[Iterable[Tuple[str, Any]]] = None) -> str:
        """
        The full URL of C{path} on the node, with C{params} (pairs whose
        value is L{None} are left out) as its query.
        """
        query = urlencode([(k, str(v)) for k, v in (params or ()) if v is not None])
        return self.url + path + (f"?{query}" if query else "")

    async def _within(self, work: Awaitable[Any], seconds: float) -> Any:
        """
        Await C{work} for at most C{seconds}.

        @raise CommandError: if the time passes first.
        @raise CancelledError: if the command was interrupted.
        """
        from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

        running: Deferred = ensureDeferred(work)
        expired = []

        def expire() -> None:
            expired.append(True)
            running.cancel()

        timer = self.reactor.callLater(seconds, expire)
        try:
            return await running
        except Exception as e:
            if expired:
                raise CommandError(
                    f"the node at {self.url} did not answer within {seconds:g}s "
                    "(a longer --timeout may help)"
                ) from None
            if self.interrupted or _cancelled(e):
                raise CancelledError() from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Iterable[Tuple[str, Any]]] = None,
        body: Any = None,
        data: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """
        Send one request and return the response, whatever its status
        (the body not read yet: see L{read}).

        @param body: sent as JSON.
        @param data: sent as it is (bytes, or an C{IBodyProducer}).
        @raise CommandError: if the node cannot be reached in time.
        """
        url = self.location(path, params)
        extra = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            extra.setdefault("content-type", "application/json")
        seconds = timeout or self.settings.timeout or DEFAULT_TIMEOUT

        async def exchange() -> Any:
            try:
                return await self._http.request(method, url, data=data, headers=self._headers(extra), unbuffered=True)
            except Exception as e:
                if self.interrupted or _cancelled(e):
                    raise
                raise unreachable(self.url, e) from None

        return await self._within(exchange(), seconds)

    async def read(self, response: Any, timeout: Optional[float] = None) -> bytes:
        """
        The body of C{response}, at most L{MAX_ANSWER} bytes.
        """
        import treq

        chunks: list = []
        size = [0]

        def collect(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > MAX_ANSWER:
                raise CommandError(f"the node's answer is larger than {MAX_ANSWER // 2**20} MiB")
            chunks.append(data)

        async def body() -> bytes:
            try:
                await treq.collect(response, collect)
            except CommandError:
                raise
            except Exception as e:
                if self.interrupted or _cancelled(e):
                    raise
                raise CommandError(
                    f"the connection to the node at {self.url} broke while it answered: "
                    + (" ".join(str(e).split()) or type(e).__name__)
                ) from None
            return b"".join(chunks)

        return await self._within(body(), timeout or self.settings.timeout or DEFAULT_TIMEOUT)

    def check(self, response: Any, content: bytes) -> None:
        """
        Raise the L{APIError} for an error answer.
        """
        if response.code < 400:
            return
        headers = {"retry-after": (response.headers.getRawHeaders(b"retry-after") or [b""])[0].decode("latin-1")}
        raise describe_error(response.code, _phrase(response), content, headers, self.settings.token)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """
        One request with a JSON answer: the decoded JSON (L{None} for an
        empty body, as C{204} has).

        @raise APIError: for an error status.
        @raise CommandError: if the node cannot be reached, or does not
            answer JSON.
        """
        response = await self.send(method, path, **kwargs)
        content = await self.read(response, kwargs.get("timeout"))
        self.check(response, content)
        if not content.strip():
            return None
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise CommandError(
                f"the node at {self.url} answered {response.code} with something that is not JSON "
                f"— is {_HINT_URL} a Caxton node's API?"
            ) from None

    async def get(self, path: str, params: Optional[Iterable[Tuple[str, Any]]] = None, **kwargs: Any) -> Any:
        """
        C{GET path?params}; the JSON answer.
        """
        return await self.request("GET", path, params=params, **kwargs)

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        """
        C{POST path} with a JSON body (C{{}} if none); the JSON answer.
        """
        return await self.request("POST", path, body=body if body is not None else {}, **kwargs)


def _phrase(response: Any) -> str:
    phrase = getattr(response, "phrase", b"") or b""
    return phrase.decode("latin-1") if isinstance(phrase, bytes) else str(phrase)


def node_command(
    handler: Callable[[argparse.Namespace, NodeClient, TextIO, TextIO], Awaitable[Optional[int]]],
) -> Callable[[argparse.Namespace, TextIO, TextIO], Awaitable[Optional[int]]]:
    """
    Make a command handler of an C{async def handler(args, client, out,
    err)}: it gets a L{NodeClient} for the node the options name, and runs
    until it returns, or until Ctrl-C or SIGTERM cancels it.

    On Ctrl-C or SIGTERM the reactor is about to stop: the handler is
    cancelled (it sees L{CancelledError} where it awaits, and may catch it
    to finish cleanly, as C{caxton events} does), and the reactor waits
    for it to end.  A cancelled handler that does not catch it ends with
    C{caxton: interrupted} and status 1.
    """

    @functools.wraps(handler)
    async def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> Optional[int]:
        from twisted.internet import reactor
        from twisted.internet.defer import CancelledError, Deferred

        client = NodeClient(reactor, settings(args))
        work: Deferred = Deferred.fromCoroutine(handler(args, client, out, err))
        ended: Deferred = Deferred()

        def settle(result: Any) -> Any:
            ended.callback(None)
            return result

        work.addBoth(settle)

        def interrupt() -> Deferred:
            client.interrupted = True
            work.cancel()
            return ended

        trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupt)
        try:
            return await work
        except CancelledError:
            if client.interrupted:
                raise CommandError("interrupted") from None
            raise
        finally:
            if not client.interrupted:
                reactor.removeSystemEventTrigger(trigger)

    return run
