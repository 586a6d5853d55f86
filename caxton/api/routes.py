# -*- test-case-name: tests.test_api_routes -*-
"""
Which route a request is for, and who may call it.

One table, L{POLICY}, names the role each route needs (SPEC 6: C{viewer}
reads, C{operator} deploys, runs lifecycle and sends, C{admin} changes the
cluster and the keys).  Authentication, metrics and the OpenAPI document
all read it, so a route added to the API without a line here is caught by
a test (L{tests.test_api_routes}) instead of being served unguarded.

L{match} finds a request's route in the Klein app's URL map, giving its
I{template} (C{/api/v1/agents/<name>}), never the raw path, so metrics
labels stay few and logs name routes the way the docs do.
"""

from __future__ import annotations

import enum
from typing import Any, Dict, Optional, Tuple

import attr
from werkzeug.exceptions import HTTPException


class Role(enum.IntEnum):
    """
    What a key may do; each role may do everything the ones below it may.
    C{PUBLIC} routes need no key at all.
    """

    PUBLIC = 0
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def named(cls, name: str) -> "Role":
        """
        The role called C{name} (C{viewer}, C{operator}, C{admin}).

        @raise ValueError: for any other name.
        """
        try:
            role = cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r} (admin, operator or viewer)")
        if role is cls.PUBLIC:
            raise ValueError("a key's role is admin, operator or viewer")
        return role


#: (method, route template) -> the least role that may call it.  Health
#: and readiness stay public so load balancers and orchestrators can probe
#: a node without a key, and so does the API's own description.
POLICY: Dict[Tuple[str, str], Role] = {
    ("GET", "/health"): Role.PUBLIC,
    ("GET", "/ready"): Role.PUBLIC,
    ("GET", "/health/gossip"): Role.PUBLIC,
    ("GET", "/api/v1/openapi.json"): Role.PUBLIC,
    ("GET", "/metrics"): Role.VIEWER,
    ("GET", "/api/v1/events"): Role.VIEWER,
    ("GET", "/api/v1/agents"): Role.VIEWER,
    ("POST", "/api/v1/agents"): Role.OPERATOR,
    ("GET", "/api/v1/agents/<name>"): Role.VIEWER,
    ("PUT", "/api/v1/agents/<name>"): Role.OPERATOR,
    ("DELETE", "/api/v1/agents/<name>"): Role.OPERATOR,
    ("POST", "/api/v1/agents/<name>/stop"): Role.OPERATOR,
    ("POST", "/api/v1/agents/<name>/start"): Role.OPERATOR,
    ("POST", "/api/v1/agents/<name>/invoke"): Role.OPERATOR,
    ("POST", "/api/v1/messages"): Role.OPERATOR,
    ("GET", "/api/v1/conversations"): Role.VIEWER,
    ("GET", "/api/v1/conversations/<conversation_id>"): Role.VIEWER,
    ("GET", "/api/v1/mailboxes/<client>"): Role.VIEWER,
    ("GET", "/api/v1/dead-letters"): Role.VIEWER,
    ("GET", "/api/v1/tools"): Role.VIEWER,
    ("GET", "/api/v1/cluster/members"): Role.VIEWER,
    ("GET", "/api/v1/cluster/status"): Role.VIEWER,
    ("POST", "/api/v1/cluster/join"): Role.ADMIN,
    ("POST", "/api/v1/cluster/leave"): Role.ADMIN,
    ("GET", "/api/v1/keys"): Role.ADMIN,
    ("POST", "/api/v1/keys"): Role.ADMIN,
    ("DELETE", "/api/v1/keys/<key_id>"): Role.ADMIN,
    ("GET", "/api/v1/audit"): Role.ADMIN,
}


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Route:
    """
    The route a request is for.

    @ivar method: the HTTP method, upper case (C{HEAD} counts as C{GET}).
    @ivar template: the route's path template, as in L{POLICY}.
    @ivar role: the least role that may call it.
    @ivar arguments: the values of the template's parts.
    """

    method: str
    template: str
    role: Role
    arguments: Dict[str, Any] = attr.ib(factory=dict, eq=False)


def match(url_map: Any, method: bytes, path: bytes) -> Optional[Route]:
    """
    The route of C{method} C{path} in a Klein app's C{url_map}, or C{None}
    when no route has that method and path (the app answers 404 or 405).

    A route the app serves but L{POLICY} does not name is treated as
    C{ADMIN}, so a forgotten line fails closed.
    """
    verb = method.decode("ascii", "replace").upper()
    if verb == "HEAD":
        verb = "GET"
    try:
        rule, arguments = url_map.bind("", "/").match(
            path.decode("utf-8", "replace"), method=verb, return_rule=True
        )
    except HTTPException:
        return None
    template = rule.rule
    return Route(verb, template, POLICY.get((verb, template), Role.ADMIN), arguments)
