# -*- test-case-name: tests.test_auth_resource -*-
"""
The door in front of the API: who is asking, may they, and how often.

L{Gatekeeper} decides one request from its method, path, C{Authorization}
header and client address, in this order:

  1. The route, as the Klein app will see it (L{path_info}, then
     L{caxton.api.routes.match}).  No route: the request passes and the
     app answers 404 or 405.  A C{PUBLIC} route passes.
  2. Protected mode (no active key): a loopback or Unix-socket client may
     call anything; anyone else gets 403 C{FORBIDDEN}, telling the operator
     to make a key.
  3. With keys: no C{Authorization: Bearer} header, 401 C{UNAUTHORIZED}
     with C{WWW-Authenticate: Bearer}; a malformed, unknown, wrong or
     revoked token, 401 as well (and audited).
  4. The key's bucket: empty, 429 C{RATE_LIMITED} with C{Retry-After}.
  5. The key's role below the route's, 403 C{FORBIDDEN} (audited).

Refusals that are audited first take a token from the client address's
bucket of refusals (L{caxton.auth.ratelimit.REFUSED_RATE}); when it is
empty the client gets 429 and no audit line, so the log cannot be flooded.

L{AuthResource} wraps the Klein app's resource with it, puts the caller on
the request (C{request.caxton_key}, a L{Caller}), adds the
C{X-RateLimit-*} headers to every answer to a request with a valid key,
and writes the audit entry of every change once its status is known.

L{Gatekeeper.early} is the same decision made when a request's headers are
complete and before its body is read (L{caxton.api.site.GuardedSite.gate}):
a request without valid credentials is refused there, so it never makes the
node buffer its body.

L{Guard} builds all of it for a node from its configuration.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import unquote
from twisted.web.resource import IResource
from zope.interface import implementer

from caxton.api.routes import Role, Route, match
from caxton.api.site import client_host, is_local, make_site, raw_response
from caxton.auth.audit import AuditLog, AuditService, entry
from caxton.auth.keys import KeyFile, KeyStore
from caxton.auth.ratelimit import REFUSED_BURST, REFUSED_RATE, RateLimiter
from caxton.auth.threads import ThreadExecutor

log = Logger()

#: What a non-local client hears in protected mode.
PROTECTED_MESSAGE = (
    "no API key exists yet, so this node answers only clients on its own host; "
    "create one with 'caxton keys create --name NAME --role admin' on the node's data directory"
)

_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    429: "Too Many Requests",
}


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Caller:
    """
    Who made a request, as handlers and the audit log see it.

    @ivar key_id: the key's id; C{loopback} for a local client in
        protected mode.
    @ivar name: the key's name (C{None} for loopback).
    @ivar role: what it may do.
    """

    key_id: str
    name: Optional[str]
    role: Role


#: A local client in protected mode.
LOOPBACK = Caller("loopback", None, Role.ADMIN)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Refusal:
    """
    A request refused: the status and SPEC 6 error to answer with.
    """

    status: int
    code: str
    message: str
    headers: Tuple[Tuple[str, str], ...] = ()

    def body(self) -> bytes:
        """
        The error as JSON.
        """
        return json.dumps({"error": {"code": self.code, "message": self.message}}).encode("utf-8")

    def response(self) -> bytes:
        """
        The whole HTTP response, for a refusal before the resource.
        """
        return raw_response(self.status, _REASONS.get(self.status, "Refused"), self.code,
                            self.message, self.headers)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Verdict:
    """
    What to do with one request.

    @ivar route: its route, or C{None} when the app has none.
    @ivar caller: who is asking, once known (C{None} on public routes, for
        routes the app does not have and for refusals).
    @ivar refusal: why it is refused, or C{None} when it may go on.
    @ivar headers: headers for the answer, whatever it is (rate limits).
    """

    route: Optional[Route]
    caller: Optional[Caller] = None
    refusal: Optional[Refusal] = None
    headers: Tuple[Tuple[str, str], ...] = ()


def path_info(path: bytes) -> bytes:
    """
    The path the Klein app routes on, from a request's path (no query):
    twisted.web splits it at C{/} and percent-decodes each segment
    (C{request.postpath}), and Klein joins them again.  Deciding on
    anything else would let C{/api/v1/%6Beys} slip past as "no route" and
    then be served as C{/api/v1/keys}.
    """
    segments = [unquote(segment) for segment in path[1:].split(b"/")]
    joined = b"/".join(segments)
    return joined if joined.startswith(b"/") else b"/" + joined


def client_name(peer: Any) -> str:
    """
    A client's address for the audit log: its IP, or C{unix}.
    """
    host = client_host(peer)
    if host is not None:
        return host
    return "unix" if is_local(peer) else type(peer).__name__


def bearer(values: Sequence[bytes]) -> Tuple[Optional[str], Optional[str]]:
    """
    The token of the C{Authorization} header values C{values}.

    @return: C{(token, None)}; C{(None, None)} when there is no header;
        C{(None, problem)} when there is one but it holds no usable
        bearer token.
    """
    if not values:
        return None, None
    if len(values) > 1:
        return None, "more than one Authorization header"
    try:
        text = values[0].decode("ascii").strip()
    except UnicodeDecodeError:
        return None, "Authorization header is not ASCII"
    scheme, _, token = text.partition(" ")
    if scheme.lower() != "bearer":
        return None, "Authorization is not a Bearer token"
    token = token.strip()
    if not token:
        return None, "empty Bearer token"
    return token, None


class Gatekeeper:
    """
    Decides requests (see the module docstring).

    @param url_map: the Klein app's URL map (C{CaxtonAPI.app.url_map}).
    @param keys: the node's L{KeyStore}.
    @param limiter: the per-key L{RateLimiter}.
    @param refused: the per-address L{RateLimiter} of audited refusals.
    @param audit: the L{AuditLog}.
    @param trust_loopback: whether loopback clients are the node's own
        host; C{False} behind a local proxy that carries remote clients
        (an onion service: Tor connects from 127.0.0.1).
    """

    def __init__(
        self,
        url_map: Any,
        keys: KeyStore,
        limiter: RateLimiter,
        refused: RateLimiter,
        audit: AuditLog,
        trust_loopback: bool = True,
    ) -> None:
        self._url_map = url_map
        self._keys = keys
        self.limiter = limiter
        self._refused = refused
        self._audit = audit
        self.trust_loopback = trust_loopback

    def decide(
        self, method: bytes, path: bytes, authorization: Sequence[bytes], peer: Any, early: bool = False
    ) -> Verdict:
        """
        The verdict on one request.

        @param method: its method.
        @param path: its path, without the query.
        @param authorization: its C{Authorization} header values.
        @param peer: the connection's client address.
        @param early: decide only on credentials (before the body is read):
            no rate limit is taken and roles are not checked yet.
        """
        route = match(self._url_map, method, path_info(path))
        if route is None or route.role is Role.PUBLIC:
            return Verdict(route)
        keys = self._keys.current()
        if keys.protected:
            if self.trust_loopback and is_local(peer):
                return Verdict(route, LOOPBACK)
            return self._refuse_audited(
                route, peer, Refusal(403, "FORBIDDEN", PROTECTED_MESSAGE),
                "protected mode: not a local client",
            )
        token, problem = bearer(authorization)
        if token is None and problem is None:
            return Verdict(route, refusal=Refusal(
                401, "UNAUTHORIZED", "this route needs an API key: Authorization: Bearer <token>",
                (("WWW-Authenticate", 'Bearer realm="caxton"'),),
            ))
        if token is not None:
            record, problem, claimed = keys.verify(token)
        else:
            record, claimed = None, None
        if record is None:
            return self._refuse_audited(
                route, peer,
                Refusal(401, "UNAUTHORIZED", "the API key is not valid (unknown, wrong or revoked)",
                        (("WWW-Authenticate", 'Bearer realm="caxton", error="invalid_token"'),)),
                problem or "refused", key_id=claimed,
            )
        caller = Caller(record.key_id, record.name, record.role)
        if early:
            return Verdict(route, caller)
        decision = self.limiter.take(record.key_id)
        headers = tuple(decision.headers().items())
        if not decision.allowed:
            return Verdict(route, refusal=Refusal(
                429, "RATE_LIMITED",
                f"rate limit of key {record.key_id} reached; retry in {decision.retry_after}s",
            ), headers=headers)
        if record.role < route.role:
            self._audit.record(entry(
                "refused", client_name(peer), route.method, route.template, route.arguments,
                status=403, key_id=record.key_id, key_name=record.name,
                reason=f"role {record.role.name.lower()} below {route.role.name.lower()}",
            ))
            return Verdict(route, refusal=Refusal(
                403, "FORBIDDEN",
                f"this route needs the {route.role.name.lower()} role; "
                f"key {record.key_id} is {record.role.name.lower()}",
            ), headers=headers)
        return Verdict(route, caller, headers=headers)

    def _refuse_audited(
        self, route: Route, peer: Any, refusal: Refusal, reason: str, key_id: Optional[str] = None
    ) -> Verdict:
        client = client_name(peer)
        allowed = self._refused.take(client)
        if not allowed.allowed:
            return Verdict(route, refusal=Refusal(
                429, "RATE_LIMITED", "too many refused requests from this address",
                (("Retry-After", str(allowed.retry_after)),),
            ))
        self._audit.record(entry(
            "refused", client, route.method, route.template, route.arguments,
            status=refusal.status, key_id=key_id, reason=reason,
        ))
        return Verdict(route, refusal=refusal)

    def early(self, method: bytes, uri: bytes, headers: Any, peer: Any) -> Optional[bytes]:
        """
        Refuse a request that has no valid credentials before its body is
        read: the whole response, or C{None} to read the body and decide
        when the request is rendered.
        """
        path = uri.split(b"?", 1)[0]
        verdict = self.decide(method, path, headers.getRawHeaders(b"authorization") or [], peer, early=True)
        if verdict.refusal is None:
            return None
        return verdict.refusal.response()


@implementer(IResource)
class AuthResource:
    """
    The API behind its L{Gatekeeper}.

    @param wrapped: the Klein app's resource (a leaf: it routes by itself).
    @param gatekeeper: decides requests.
    @param audit: where changes are recorded.
    """

    isLeaf = True

    def __init__(self, wrapped: Any, gatekeeper: Gatekeeper, audit: AuditLog) -> None:
        self._wrapped = wrapped
        self._gatekeeper = gatekeeper
        self._audit = audit

    def getChildWithDefault(self, name: bytes, request: Any) -> Any:
        """
        A leaf has no children: every path is rendered here.
        """
        return self

    def putChild(self, path: bytes, child: Any) -> None:
        """
        Not supported: the API is one resource.
        """
        raise NotImplementedError("AuthResource has no children")

    def render(self, request: Any) -> Any:
        """
        Decide, then refuse or hand the request to the API.
        """
        peer = request.getClientAddress()
        verdict = self._gatekeeper.decide(
            request.method,
            request.path,
            request.requestHeaders.getRawHeaders(b"authorization") or [],
            peer,
        )
        for name, value in verdict.headers:
            request.setHeader(name, value)
        request.caxton_key = verdict.caller
        if verdict.refusal is not None:
            refusal = verdict.refusal
            for name, value in refusal.headers:
                request.setHeader(name, value)
            request.setResponseCode(refusal.status)
            request.setHeader("content-type", "application/json")
            return refusal.body()
        route = verdict.route
        if route is not None and route.method != "GET" and verdict.caller is not None:
            self._audit_change(request, route, verdict.caller, client_name(peer))
        return self._wrapped.render(request)

    def _audit_change(self, request: Any, route: Route, caller: Caller, client: str) -> None:
        def done(result: Any) -> None:
            answered = not isinstance(result, Failure)
            self._audit.record(entry(
                "change", client, route.method, route.template, route.arguments,
                status=request.code if answered else None,
                key_id=caller.key_id, key_name=caller.name,
                reason=None if answered else "the client left before the answer",
                detail=getattr(request, "caxton_audit_detail", None),
            ))

        request.notifyFinish().addBoth(done)


def _behind_local_proxy(description: str) -> bool:
    """
    Whether clients of the endpoint C{description} reach the node through
    a local process, so that their address is loopback: an onion service.
    """
    return description.strip().split(":", 1)[0].lower() == "onion"


class Guard:
    """
    The auth parts of one node, made from its configuration: the key
    store, the audit log and its writer service, the rate limiters, and
    a site per API endpoint with all of it in front.

    @param config: the node's L{caxton.config.Config}.
    @param reactor: the node's reactor.
    @param url_map: the API's URL map (C{CaxtonAPI.app.url_map}).
    """

    def __init__(self, config: Any, reactor: Any, url_map: Any) -> None:
        data_dir = config["data_dir"]
        self._config = config
        self._reactor = reactor
        self.keys = KeyStore(KeyFile.in_data_dir(data_dir), reactor, ThreadExecutor(reactor, None))
        writer = ThreadExecutor.single(reactor, "caxton-audit")
        self.audit = AuditLog.in_data_dir(data_dir, config["audit.max_size"], reactor, writer)
        #: Start it before the API listens.
        self.service = AuditService(self.audit, writer)
        limiter = RateLimiter(reactor, config["auth.rate_limit"], config["auth.burst"])
        refused = RateLimiter(reactor, REFUSED_RATE, REFUSED_BURST)
        self._gatekeepers = {
            trust: Gatekeeper(url_map, self.keys, limiter, refused, self.audit, trust_loopback=trust)
            for trust in (True, False)
        }
        self._connections: Dict[str, int] = {}

    def site(self, resource: Any, description: str, wrap: Any = None) -> Any:
        """
        The site to serve the API's C{resource} on the endpoint
        C{description}.

        @param wrap: wraps the guarded resource (metrics count every
            request, refused ones too).
        """
        gatekeeper = self._gatekeepers[not _behind_local_proxy(description)]
        config = self._config
        guarded = AuthResource(resource, gatekeeper, self.audit)
        return make_site(
            wrap(guarded) if wrap is not None else guarded,
            config["http.max_body"],
            config["http.timeout"],
            request_timeout=config["http.request_timeout"],
            min_body_rate=config["http.min_body_rate"],
            max_connections_per_client=config["http.max_connections_per_client"],
            connections=self._connections,
            gate=gatekeeper.early,
            reactor=self._reactor,
        )


__all__: List[str] = [
    "AuthResource", "Caller", "Gatekeeper", "Guard", "LOOPBACK", "Refusal", "Verdict",
    "bearer", "client_name", "path_info",
]
