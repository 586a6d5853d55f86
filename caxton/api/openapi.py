# -*- test-case-name: tests.test_openapi -*-
"""
The OpenAPI 3.1 description of the management API (SPEC 6), served at
C{GET /api/v1/openapi.json}.

The document is data: L{document} builds a dict from the shared component
schemas below and one entry per route in L{OPERATIONS}, whose keys are the
same C{(method, template)} pairs as L{caxton.api.routes.POLICY}; each
operation's role (C{x-caxton-role}), its security and its 401/403/429
answers come from that table, so the document cannot disagree with it
about who may call what.

It is kept true by tests: L{tests.test_openapi} checks that it is valid
OpenAPI 3.1, that it names exactly the routes of L{POLICY} (and so every
route the app serves), and that the answers of a real node to a realistic
sequence of requests match its schemas; L{tests.test_openapi_fuzz} runs
schemathesis against a real node from the served document.  Response
objects do not allow properties they do not list, so a field added to an
answer without being described here fails those tests.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from caxton import __version__
from caxton.acl.message import MAX_NAME_LENGTH, MAX_TOKEN_LENGTH, PERFORMATIVES
from caxton.api.routes import POLICY, Role

#: The error codes the API answers with: SPEC 6's, and C{UNAVAILABLE}
#: (shutting down) and C{UNREACHABLE} (a join no seed answered).
ERROR_CODES = (
    "INVALID_MESSAGE",
    "INVALID_WASM",
    "INVALID_REQUEST",
    "AGENT_NOT_FOUND",
    "AGENT_ALREADY_EXISTS",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "RATE_LIMITED",
    "PAYLOAD_TOO_LARGE",
    "PARTITIONED",
    "INTERNAL_ERROR",
    "UNAVAILABLE",
    "UNREACHABLE",
)

#: The events of C{GET /api/v1/events}.
EVENT_TYPES = (
    "agent.deployed",
    "agent.updated",
    "agent.started",
    "agent.stopped",
    "agent.failed",
    "agent.removed",
    "member.joined",
    "member.suspected",
    "member.alive",
    "member.failed",
    "member.left",
)

_DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"
_SIZE_PATTERN = r"^\s*\d+\s*([bB]|[kKmMgG][iI]?[bB])?\s*$"
_COUNT_PATTERN = r"^\s*\d[\d_]*\s*$"


def _ref(name: str) -> Dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Dict[str, Any]) -> Dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(
    properties: Dict[str, Any],
    required: Sequence[str] = (),
    description: Optional[str] = None,
    closed: bool = True,
) -> Dict[str, Any]:
    """
    An object schema; C{closed} ones allow no other properties.
    """
    schema: Dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def _list(items: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return {"type": "array", "items": items, **extra}


_UNIX_TIME = {"type": "number", "description": "Unix seconds."}
_COUNT = {"type": "integer", "minimum": 0}
_STRINGS = _list({"type": "string"})
_PARTITION = {"type": "string", "enum": ["majority", "minority", "isolated"]}


# Component schemas ---------------------------------------------------------------


def _message_schemas() -> Dict[str, Any]:
    token = {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN_LENGTH}
    name = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_NAME_LENGTH,
        "pattern": r"^\S+$",
        "description": "An agent name, a client name (client:...), caxton or mcp:<server>/<tool>.",
    }
    names = {"anyOf": [_ref("Name"), _list(_ref("Name"), minItems=1)]}
    capability = _object(
        {
            "capability": {"type": "string", "minLength": 1},
            "all": {"type": "boolean", "description": "Every agent offering it, not one."},
        },
        required=["capability"],
    )
    fields = {
        "performative": {
            "type": "string",
            "description": "One of the 22 FIPA communicative acts (any case on input, lower case on output).",
            "enum": sorted(PERFORMATIVES),
        },
        "sender": _ref("Name"),
        "receiver": {"anyOf": [_ref("Name"), _list(_ref("Name"), minItems=1), _ref("CapabilityReceiver")]},
        "reply_to": names,
        "content": {"description": "Any JSON value."},
        "language": token,
        "encoding": token,
        "ontology": token,
        "protocol": token,
        "conversation_id": token,
        "reply_with": token,
        "in_reply_to": token,
        "reply_by": {"type": "string", "format": "date-time", "description": "RFC 3339 with an offset."},
        "message_id": {**token, "description": "Accepted, but always replaced by a new id."},
    }
    # FIPA's spellings, accepted on input as aliases of these fields.  The
    # schemas name only the underscored ones: a field given under both
    # names is refused, which the schemas could say only with a "not" that
    # makes test generation from them impractically slow.
    aliases = {
        "conversation-id": "conversation_id",
        "reply-with": "reply_with",
        "in-reply-to": "in_reply_to",
        "reply-by": "reply_by",
        "reply-to": "reply_to",
        "message-id": "message_id",
    }
    user_fields = {"^[Xx]-": {"description": "User fields, kept as they are."}}
    client = {
        "type": "string",
        "maxLength": MAX_NAME_LENGTH,
        "pattern": r"^client:\S+$",
        "description": "A client name; the API sends as clients only.",
    }
    message_in = {
        "type": "object",
        "description": (
            "A FIPA-ACL message (SPEC 4.1) as a client sends it.  FIPA's hyphenated names "
            "(conversation-id, reply-with, in-reply-to, reply-by, reply-to, message-id; see "
            "x-caxton-aliases) are accepted too, but not a field under both names, nor any "
            "other field that does not begin X-.  Without a sender it is sent as client:api."
        ),
        "properties": {**fields, "sender": client},
        "patternProperties": user_fields,
        "additionalProperties": False,
        "required": ["performative", "receiver"],
        "x-caxton-aliases": aliases,
    }
    invoke_fields = dict(fields)
    del invoke_fields["reply_to"]
    invoke = {
        "type": "object",
        "description": (
            "A message whose fields are all optional, plus timeout.  The node sets protocol, "
            "receiver, reply_with and reply_by (replacing any given); performative is request, "
            "query-if or query-ref; reply_to is refused, since the answer is the reply.  "
            "FIPA's hyphenated names are accepted as for messages."
        ),
        "properties": {
            **invoke_fields,
            "sender": client,
            "performative": {"type": "string", "enum": ["request", "query-if", "query-ref"], "default": "request"},
            "timeout": _ref("Duration"),
        },
        "patternProperties": user_fields,
        "additionalProperties": False,
        "x-caxton-aliases": {k: v for k, v in aliases.items() if v in invoke_fields},
    }
    # What the node sends: underscored names only, receiver as given (one
    # name as a string), reply_to always a list, no field that is not set.
    out = {
        **fields,
        "performative": {"type": "string", "enum": sorted(PERFORMATIVES)},
        "sender": {"type": "string", "minLength": 1},
        "receiver": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                _list({"type": "string", "minLength": 1}, minItems=1),
                _ref("CapabilityReceiver"),
            ]
        },
        "reply_to": _list({"type": "string", "minLength": 1}, minItems=1),
        "message_id": {"type": "string", "minLength": 1},
    }
    message_out = {
        "type": "object",
        "description": "A message as the node records and delivers it; message_id is the node's.",
        "properties": out,
        "patternProperties": user_fields,
        "additionalProperties": False,
        "required": ["performative"],
    }
    stored = _object(
        {
            "seq": {"type": "integer", "minimum": 1, "description": "Increasing; use it only as an after value."},
            "recorded_at": _UNIX_TIME,
            "message": _ref("AclMessage"),
        },
        required=["seq", "recorded_at", "message"],
    )
    return {
        "Name": name,
        "CapabilityReceiver": capability,
        "AclMessageIn": message_in,
        "AclMessage": message_out,
        "InvokeRequest": invoke,
        "StoredMessage": stored,
    }


def _agent_schemas() -> Dict[str, Any]:
    limits_in = _object(
        {
            "memory": {**_ref("Size"), "description": "Memory cap (default 16 MiB)."},
            "fuel": {**_ref("Count"), "description": "Fuel per message."},
            "wall_clock": {**_ref("Duration"), "description": "Wall-clock time per message (default 1 s)."},
            "max_message": {**_ref("Size"), "description": "Largest message (default 256 KiB)."},
            "max_sends": {**_ref("Count"), "description": "Most messages sent while handling one."},
        },
        description="Sandbox limits; those not given take the node's defaults.",
    )
    spec_fields = {
        "capabilities": _list({"type": "string", "minLength": 1, "maxLength": 255}),
        "limits": limits_in,
        "config": {"description": "Any JSON value, handed to the agent's init."},
        "tools": _list(
            {"type": "string", "description": "server/tool, server/* or *"},
            description="The MCP tools the agent may call.",
        ),
    }
    wasm = {
        "type": "string",
        "contentEncoding": "base64",
        "contentMediaType": "application/wasm",
        "description": "The module's (or component's) bytes in standard base64.",
    }
    deploy = _object(
        {"name": _ref("AgentName"), "wasm": wasm, **spec_fields},
        required=["name", "wasm"],
        description="A deploy: the name, the module, and the spec fields.",
    )
    update = _object(
        {
            "name": {"description": "Ignored."},
            "wasm": wasm,
            **spec_fields,
        },
        description=(
            "An update: a new module and/or spec fields, each replacing the current one "
            "as a whole; at least one of them."
        ),
    )
    spec = _object(
        {"name": _ref("AgentName"), **spec_fields},
        description="The spec part of a multipart deploy or update (name is required to deploy).",
    )

    def multipart(wasm_required: bool) -> Dict[str, Any]:
        return _object(
            {
                "wasm": {
                    "type": "string",
                    "contentMediaType": "application/wasm",
                    "description": "The module file.",
                },
                "spec": _ref("AgentSpec"),
            },
            required=["wasm", "spec"] if wasm_required else [],
            closed=False,
        )

    limits = _object(
        {
            "memory": {"type": "integer", "minimum": 1, "description": "Bytes."},
            "fuel": {"type": "integer", "minimum": 1},
            "wall_clock": {"type": "number", "exclusiveMinimum": 0, "description": "Seconds."},
            "max_message": {"type": "integer", "minimum": 1, "description": "Bytes."},
            "max_sends": {"type": "integer", "minimum": 1},
        },
        required=["memory", "fuel", "wall_clock", "max_message", "max_sends"],
    )
    agent = _object(
        {
            "name": _ref("AgentName"),
            "version": {"type": "integer", "minimum": 1},
            "status": {"type": "string", "enum": ["running", "stopped", "failed", "draining"]},
            "reason": _nullable({"type": "string"}),
            "node": {"type": "string"},
            "capabilities": _STRINGS,
            "tools": _STRINGS,
            "module": _object(
                {"hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "size": _COUNT},
                required=["hash", "size"],
            ),
            "limits": limits,
            "config": {"description": "The spec's config, or null."},
            "created_at": _UNIX_TIME,
            "updated_at": _UNIX_TIME,
            "usage": _object(
                {"memory_bytes": _COUNT, "queue_depth": _COUNT},
                required=["memory_bytes", "queue_depth"],
            ),
            "counters": _object(
                {
                    "handled": _COUNT,
                    "failed": _COUNT,
                    "traps": _COUNT,
                    "last_error": _nullable({"type": "string"}),
                },
                required=["handled", "failed", "traps", "last_error"],
            ),
        },
        required=[
            "name", "version", "status", "reason", "node", "capabilities", "tools", "module",
            "limits", "config", "created_at", "updated_at", "usage", "counters",
        ],
        description="An agent this node hosts: limits, usage, counters.",
    )
    deploying = _object(
        {
            "name": _ref("AgentName"),
            "status": {"const": "deploying"},
            "node": {"type": "string"},
            "since": _UNIX_TIME,
            "module": _object({"size": _COUNT}, required=["size"]),
        },
        required=["name", "status", "node", "since", "module"],
        description="An agent of this node whose deploy is in progress.",
    )
    remote = _object(
        {
            "name": _ref("AgentName"),
            "node": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "status": {"type": "string", "description": "As its node published it."},
            "capabilities": _STRINGS,
            "remote": {"const": True},
        },
        required=["name", "node", "version", "status", "capabilities", "remote"],
        description="An agent on another node, as the agent registry knows it.",
    )
    return {
        "AgentName": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9._-]{0,62}$"},
        "Size": {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": _SIZE_PATTERN, "examples": ["256KiB", "16MiB"]},
            ]
        },
        "Count": {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": _COUNT_PATTERN, "examples": ["1_000_000"]},
            ]
        },
        "Duration": {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "description": "Seconds."},
                {"type": "string", "pattern": _DURATION_PATTERN, "examples": ["200ms", "5s", "1m"]},
            ]
        },
        "AgentLimits": limits,
        "AgentDeploy": deploy,
        "AgentUpdate": update,
        "AgentSpec": spec,
        "AgentDeployForm": multipart(True),
        "AgentUpdateForm": multipart(False),
        "Agent": agent,
        "AgentDeploying": deploying,
        "RemoteAgent": remote,
        "AgentListItem": {"anyOf": [_ref("Agent"), _ref("AgentDeploying"), _ref("RemoteAgent")]},
        "AgentPage": _object(
            {
                "agents": _list(_ref("AgentListItem")),
                "next_cursor": _nullable({"type": "string", "description": "name/node of the page's last agent."}),
            },
            required=["agents", "next_cursor"],
        ),
    }


def _conversation_schemas() -> Dict[str, Any]:
    conversation = _object(
        {
            "conversation_id": {"type": "string"},
            "protocol": _nullable({"type": "string"}),
            "initiator": _nullable({"type": "string"}),
            "participants": _STRINGS,
            "state": {
                "type": "string",
                "description": "open, done, timed-out, ... for the tracked FIPA protocols; others stay open.",
            },
            "created_at": _UNIX_TIME,
            "updated_at": _UNIX_TIME,
            "message_count": _COUNT,
        },
        required=[
            "conversation_id", "protocol", "initiator", "participants", "state",
            "created_at", "updated_at", "message_count",
        ],
    )
    return {
        "Accepted": _object(
            {"message_id": {"type": "string"}, "conversation_id": {"type": "string"}},
            required=["message_id", "conversation_id"],
        ),
        "InvokeResult": _object(
            {
                "message_id": {"type": "string"},
                "conversation_id": {"type": "string"},
                "reply": _ref("AclMessage"),
            },
            required=["message_id", "conversation_id", "reply"],
        ),
        "Conversation": conversation,
        "ConversationPage": _object(
            {
                "conversations": _list(_ref("Conversation")),
                "next_before": _nullable(_UNIX_TIME),
                "next_before_id": _nullable({"type": "string"}),
            },
            required=["conversations", "next_before", "next_before_id"],
        ),
        "ConversationDetail": _object(
            {
                "conversation": _ref("Conversation"),
                "messages": _list(_ref("StoredMessage")),
                "next_after": _COUNT,
            },
            required=["conversation", "messages", "next_after"],
        ),
        "Mailbox": _object(
            {
                "client": {"type": "string", "pattern": "^client:"},
                "messages": _list(_ref("StoredMessage")),
                "next_after": _COUNT,
            },
            required=["client", "messages", "next_after"],
        ),
        "DeadLetter": _object(
            {
                "seq": {"type": "integer", "minimum": 1},
                "message_id": _nullable({"type": "string"}),
                "conversation_id": _nullable({"type": "string"}),
                "sender": _nullable({"type": "string"}),
                "receiver": _nullable({"type": "string"}),
                "reason": {"type": "string", "description": "AGENT_NOT_FOUND, AGENT_FAILED, QUEUE_FULL, ..."},
                "detail": {"type": "string"},
                "message": _ref("AclMessage"),
                "recorded_at": _UNIX_TIME,
            },
            required=[
                "seq", "message_id", "conversation_id", "sender", "receiver", "reason",
                "detail", "message", "recorded_at",
            ],
        ),
        "DeadLetterPage": _object(
            {
                "dead_letters": _list(_ref("DeadLetter")),
                "next_before": _nullable({"type": "integer", "minimum": 1}),
            },
            required=["dead_letters", "next_before"],
        ),
    }


def _cluster_schemas() -> Dict[str, Any]:
    counters = {"type": "object", "additionalProperties": {"type": "integer"}}
    return {
        "GossipHealth": _object(
            {
                "status": {"type": "string", "enum": ["healthy", "degraded"]},
                "clustered": {"type": "boolean"},
                "peer_count": _COUNT,
                "last_sync": _nullable(_UNIX_TIME),
                "agent_count": _COUNT,
                "partition": _PARTITION,
                "local_health": {**_COUNT, "description": "Lifeguard's score; clustered nodes only."},
            },
            required=["status", "clustered", "peer_count", "last_sync", "agent_count", "partition"],
        ),
        "ClusterMember": _object(
            {
                "id": {"type": "string"},
                "address": _nullable({"type": "string", "description": "host:port, [v6]:port"}),
                "state": {"type": "string", "enum": ["alive", "suspect", "dead", "left"]},
                "incarnation": _COUNT,
                "since": _UNIX_TIME,
                "agents": _COUNT,
                "self": {"type": "boolean"},
            },
            required=["id", "address", "state", "incarnation", "agents", "self"],
        ),
        "ClusterMembers": _object({"members": _list(_ref("ClusterMember"))}, required=["members"]),
        "ClusterStatus": _object(
            {
                "node_id": {"type": "string"},
                "clustered": {"type": "boolean"},
                "cluster": {"type": "string"},
                "address": _nullable({"type": "string"}),
                "profile": {"type": "string", "enum": ["lan", "wan", "local"]},
                "encrypted": {"type": "boolean"},
                "partition": _PARTITION,
                "left": {"type": "boolean"},
                "members": _object(
                    {state: _COUNT for state in ("alive", "suspect", "dead", "left")},
                    required=["alive", "suspect", "dead", "left"],
                ),
                "expected": {"type": "integer", "minimum": 1},
                "local_health": _COUNT,
                "incarnation": _COUNT,
                "agents": _COUNT,
                "last_sync": _nullable(_UNIX_TIME),
                "streams": _STRINGS,
                "queues": {
                    "type": "object",
                    "additionalProperties": _COUNT,
                    "description": "Messages waiting for each other node (the outbox).",
                },
                "replicas": {
                    **_STRINGS,
                    "description": "The relocatable agents of other nodes this node keeps a copy of.",
                },
                "onions": _list({"type": "object"}),
                "counters": _object(
                    {"swim": counters, "udp": counters, "messages": counters, "relocation": counters},
                    required=["swim", "udp"],
                ),
            },
            required=["node_id", "clustered", "partition", "members", "local_health", "agents"],
            description="A node that runs alone answers only the required fields.",
        ),
        "JoinRequest": _object(
            {
                "seeds": {
                    "anyOf": [
                        {"type": "string"},
                        _list({"type": "string"}, minItems=1, maxItems=64),
                    ],
                    "description": "HOST:PORT addresses (port 7946 by default, IPv6 in brackets).",
                }
            },
            required=["seeds"],
            closed=False,
        ),
        "Joined": _object(
            {
                "joined": {**_COUNT, "description": "Seeds that answered."},
                "members": {**_COUNT, "description": "Members this node now knows."},
            },
            required=["joined", "members"],
        ),
        "Left": _object({"left": {"const": True}}, required=["left"]),
    }


def _other_schemas() -> Dict[str, Any]:
    tool = _object(
        {
            "name": {"type": "string"},
            "description": _nullable({"type": "string"}),
            "input_schema": {"description": "The tool's JSON Schema for its arguments."},
        },
        required=["name"],
        closed=False,
    )
    counters = _object(
        {
            "calls": _COUNT,
            "failures": {"type": "object", "additionalProperties": _COUNT, "description": "By reason."},
            "latency_ms_total": {"type": "number", "minimum": 0},
        },
        required=["calls", "failures", "latency_ms_total"],
    )
    server = _object(
        {
            "name": {"type": "string"},
            "url": {"type": "string"},
            "status": {"type": "string", "enum": ["ok", "unreachable", "timeout", "error", "stopped"]},
            "error": _nullable({"type": "string"}),
            "tools": _list(tool),
            "counters": {"type": "object", "additionalProperties": counters, "description": "By tool name."},
        },
        required=["name", "url", "status", "error", "tools", "counters"],
    )
    role = {"type": "string", "enum": ["admin", "operator", "viewer"]}
    key = _object(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "role": role,
            "created_at": _UNIX_TIME,
            "hint": {"type": "string", "description": "Enough of the token to recognise it; never the token."},
            "revoked": {"type": "boolean"},
        },
        required=["id", "name", "role", "created_at"],
        closed=False,
    )
    event = _object(
        {
            "id": {"type": "integer", "description": "Increasing; give it as after or Last-Event-ID to resume."},
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "time": {"type": "string", "format": "date-time"},
            "agent": {"type": "string"},
            "node": {"type": "string"},
            "version": {"type": "integer"},
            "reason": _nullable({"type": "string"}),
            "member": {"type": "string"},
            "address": _nullable({"type": "string"}),
            "incarnation": {"type": "integer"},
        },
        required=["id", "type", "time"],
        closed=False,
        description="The data of one server-sent event (its SSE id and event fields repeat id and type).",
    )
    return {
        "Error": _object(
            {
                "error": _object(
                    {
                        "code": {"type": "string", "enum": list(ERROR_CODES)},
                        "message": {"type": "string", "minLength": 1},
                    },
                    required=["code", "message"],
                )
            },
            required=["error"],
            description="Every error (SPEC 6).",
        ),
        "Health": _object({"status": {"const": "ok"}}, required=["status"]),
        "Ready": _object({"ready": {"type": "boolean"}}, required=["ready"]),
        "ToolServer": server,
        "Tools": _object({"servers": _list(server)}, required=["servers"]),
        "Event": event,
        "Key": key,
        "KeyList": _object({"keys": _list(_ref("Key"))}, required=["keys"], closed=False),
        "KeyCreate": _object(
            {"name": {"type": "string", "minLength": 1}, "role": role},
            required=["name", "role"],
        ),
        "KeyCreated": _object(
            {
                "key": _ref("Key"),
                "token": {"type": "string", "description": "Shown this once; only its hash is kept."},
            },
            required=["key", "token"],
        ),
        "KeyRevoked": _object({"key": _ref("Key")}, required=["key"]),
        "AuditEntry": {
            "type": "object",
            "description": "One line of the audit log: a change, or a refused login.",
        },
        "AuditPage": _object({"entries": _list(_ref("AuditEntry"))}, required=["entries"], closed=False),
    }


# Responses and parameters --------------------------------------------------------------


def _json(description: str, schema: Dict[str, Any], headers: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    response: Dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, *codes: str, headers: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """
    An error response whose C{code} is one of C{codes}.
    """
    schema = {
        "allOf": [
            _ref("Error"),
            {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}},
        ]
    }
    return _json(description, schema, headers)


_RATE_HEADERS = {
    "Retry-After": {
        "description": "Seconds until a request will be taken again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Limit": {"description": "The key's bucket size.", "schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"description": "Requests left in the bucket.", "schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"description": "Seconds until the bucket is full again.", "schema": {"type": "number"}},
}

#: Answers every route that needs a key may give.
_GUARDED = {
    "401": _error("No token, or a token that is unknown or revoked.", "UNAUTHORIZED"),
    "403": _error(
        "The key's role is below the route's (x-caxton-role); or, while no key exists "
        "(protected mode), the client is not on loopback.",
        "FORBIDDEN",
    ),
    "429": _error("The key's rate limit is spent.", "RATE_LIMITED", headers=_RATE_HEADERS),
}

_TOO_LARGE = _error("The body is over http.max_body (the connection is closed).", "PAYLOAD_TOO_LARGE")
_UNAVAILABLE = _error("The node is shutting down and takes no new messages.", "UNAVAILABLE")
_PARTITIONED = _error(
    "The node is in a minority or isolated partition and refuses deploys, updates and removals.",
    "PARTITIONED",
)
_AGENT_NOT_FOUND = _error("No agent by that name on this node.", "AGENT_NOT_FOUND")


def _query(name: str, schema: Dict[str, Any], description: str) -> Dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, schema: Dict[str, Any], description: str, example: str) -> Dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
        "example": example,
    }


def _limit(high: int, default: int) -> Dict[str, Any]:
    return _query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": high, "default": default},
        f"Page size, 1 to {high}.",
    )


_WAIT = _query(
    "wait",
    {"type": "string", "pattern": _DURATION_PATTERN, "examples": ["5s", "500ms", "2"]},
    "Long poll: if nothing is newer than after, wait up to this long (a duration, or a bare "
    "number of seconds; 0 does not wait), cut to http.max_wait (60 s by default).",
)
_AGENT = _path(
    "name",
    {"type": "string", "pattern": "^[^/]+$"},
    "The agent's name.",
    "echo",
)


def _body(
    schema: Dict[str, Any],
    example: Any = None,
    form: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    content: Dict[str, Any] = {"application/json": {"schema": schema}}
    if example is not None:
        content["application/json"]["example"] = example
    if form is not None:
        content["multipart/form-data"] = {
            "schema": form,
            "encoding": {
                "wasm": {"contentType": "application/octet-stream"},
                "spec": {"contentType": "application/json"},
            },
        }
    return {"required": True, "content": content}


# Operations -----------------------------------------------------------------------------

#: (method, Klein template) -> the operation, without its role, security
#: and guard responses (added by L{document} from L{POLICY}).
OPERATIONS: Dict[Tuple[str, str], Dict[str, Any]] = {
    ("GET", "/health"): {
        "operationId": "health",
        "tags": ["health"],
        "summary": "Liveness: the node answers.",
        "responses": {"200": _json("Alive.", _ref("Health"))},
    },
    ("GET", "/ready"): {
        "operationId": "ready",
        "tags": ["health"],
        "summary": "Readiness: state loaded, agents restored, listeners up.",
        "responses": {
            "200": _json("Ready.", _ref("Ready")),
            "503": _json("Not ready (shutting down).", _ref("Ready")),
        },
    },
    ("GET", "/health/gossip"): {
        "operationId": "gossipHealth",
        "tags": ["health", "cluster"],
        "summary": "Membership health: peers, last full sync, agents, partition mode.",
        "responses": {"200": _json("Always.", _ref("GossipHealth"))},
    },
    ("GET", "/api/v1/openapi.json"): {
        "operationId": "openapi",
        "tags": ["meta"],
        "summary": "This document.",
        "responses": {"200": _json("The OpenAPI 3.1 description of this API.", {"type": "object"})},
    },
    ("GET", "/metrics"): {
        "operationId": "metrics",
        "tags": ["observability"],
        "summary": "Prometheus metrics.",
        "responses": {
            "200": {
                "description": "The Prometheus text exposition format (version 0.0.4).",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    },
    ("GET", "/api/v1/events"): {
        "operationId": "events",
        "tags": ["observability"],
        "summary": "Server-sent events: agents deployed, updated, started, stopped, failed, removed; members joined, suspected, alive again, failed, left.",
        "parameters": [
            _query("after", {"type": "integer", "minimum": 0}, "Replay the events after this id first."),
            _query(
                "types",
                {"type": "string", "examples": ["agent.deployed,agent.failed"]},
                "Only these event types, comma-separated (" + ", ".join(EVENT_TYPES) + ").",
            ),
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "What a reconnecting EventSource sends: the last id it saw, as after.",
            },
        ],
        "responses": {
            "200": {
                "description": (
                    "A stream that stays open: each event is an SSE message whose data is one "
                    "JSON object, an Event (#/components/schemas/Event)."
                ),
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": _error("A bad after or types.", "INVALID_REQUEST"),
        },
    },
    ("GET", "/api/v1/agents"): {
        "operationId": "listAgents",
        "tags": ["agents"],
        "summary": "The cluster's agents, sorted by name and node, in pages.",
        "parameters": [
            _query("capability", {"type": "string"}, "Only agents offering it."),
            _query(
                "status",
                {"type": "string", "examples": ["running", "stopped", "failed", "deploying"]},
                "Only agents in this state.",
            ),
            _query("node", {"type": "string"}, "Only agents on this node id."),
            _limit(1000, 100),
            _query("cursor", {"type": "string"}, "The previous page's next_cursor."),
        ],
        "responses": {
            "200": _json("A page of agents.", _ref("AgentPage")),
            "400": _error("A bad limit.", "INVALID_REQUEST"),
        },
    },
    ("POST", "/api/v1/agents"): {
        "operationId": "deployAgent",
        "tags": ["agents"],
        "summary": "Deploy an agent: JSON with the module in base64, or multipart (wasm file and spec JSON).",
        "requestBody": _body(_ref("AgentDeploy"), form=_ref("AgentDeployForm")),
        "responses": {
            "201": _json(
                "Compiled, checked, started and initialised.",
                _ref("Agent"),
                headers={
                    "Location": {
                        "description": "/api/v1/agents/{name}",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                },
            ),
            "400": _error(
                "Malformed body, bad name or spec, missing or bad wasm; or a module that does "
                "not compile, fit the ABI or initialise (INVALID_WASM).",
                "INVALID_REQUEST",
                "INVALID_WASM",
            ),
            "409": _error("The name is taken.", "AGENT_ALREADY_EXISTS"),
            "413": _TOO_LARGE,
            "503": _PARTITIONED,
        },
    },
    ("GET", "/api/v1/agents/<name>"): {
        "operationId": "showAgent",
        "tags": ["agents"],
        "summary": "One agent: this node's in full, a deploy in progress, or another node's as the registry knows it.",
        "parameters": [_AGENT],
        "responses": {
            "200": _json("The agent.", _ref("AgentListItem")),
            "404": _AGENT_NOT_FOUND,
        },
    },
    ("PUT", "/api/v1/agents/<name>"): {
        "operationId": "updateAgent",
        "tags": ["agents"],
        "summary": "A new version: a new module and/or spec fields (JSON or multipart).",
        "parameters": [_AGENT],
        "requestBody": _body(_ref("AgentUpdate"), {"capabilities": ["echo", "mirror"]}, form=_ref("AgentUpdateForm")),
        "responses": {
            "200": _json("Updated; the version went up by one.", _ref("Agent")),
            "400": _error(
                "Malformed body, bad spec, nothing to update, no usable module; or a module that "
                "does not compile, fit or initialise (INVALID_WASM; the agent is left as it was).",
                "INVALID_REQUEST",
                "INVALID_WASM",
            ),
            "404": _AGENT_NOT_FOUND,
            "413": _TOO_LARGE,
            "503": _PARTITIONED,
        },
    },
    ("DELETE", "/api/v1/agents/<name>"): {
        "operationId": "removeAgent",
        "tags": ["agents"],
        "summary": "Remove an agent; its queued messages fail with AGENT_NOT_FOUND.",
        "parameters": [{**_AGENT, "example": "old-echo"}],
        "responses": {
            "204": {"description": "Removed."},
            "404": _AGENT_NOT_FOUND,
            "503": _PARTITIONED,
        },
    },
    ("POST", "/api/v1/agents/<name>/stop"): {
        "operationId": "stopAgent",
        "tags": ["agents"],
        "summary": "Stop an agent: it keeps taking messages into its queue but handles none.",
        "parameters": [{**_AGENT, "example": "old-echo"}],
        "responses": {"200": _json("Stopped.", _ref("Agent")), "404": _AGENT_NOT_FOUND},
    },
    ("POST", "/api/v1/agents/<name>/start"): {
        "operationId": "startAgent",
        "tags": ["agents"],
        "summary": "Start a stopped or failed agent.",
        "parameters": [_AGENT],
        "responses": {
            "200": _json("Running.", _ref("Agent")),
            "400": _error("The agent has no usable module: update it with one.", "INVALID_REQUEST"),
            "404": _AGENT_NOT_FOUND,
        },
    },
    ("POST", "/api/v1/agents/<name>/invoke"): {
        "operationId": "invokeAgent",
        "tags": ["agents", "messages"],
        "summary": "Send a request (or query) and answer with the first reply, or the node's TIMEOUT failure.",
        "parameters": [_AGENT],
        "requestBody": _body(_ref("InvokeRequest"), {"content": {"text": "hi"}, "timeout": "1s"}),
        "responses": {
            "200": _json("The reply (look at reply.performative and reply.sender).", _ref("InvokeResult")),
            "400": _error(
                "Not a valid message, or a performative invoke does not send (INVALID_MESSAGE); "
                "a bad or too long timeout (INVALID_REQUEST).",
                "INVALID_MESSAGE",
                "INVALID_REQUEST",
            ),
            "404": _AGENT_NOT_FOUND,
            "413": _TOO_LARGE,
            "503": _UNAVAILABLE,
        },
    },
    ("POST", "/api/v1/messages"): {
        "operationId": "sendMessage",
        "tags": ["messages"],
        "summary": "Send an ACL message as a client; its outcome comes back as a message.",
        "requestBody": _body(
            _ref("AclMessageIn"),
            {
                "performative": "request",
                "sender": "client:alice",
                "receiver": "echo",
                "protocol": "fipa-request",
                "conversation_id": "hello-1",
                "reply_with": "r1",
                "content": {"text": "hi"},
                "X-Trace": "abc",
            },
        ),
        "responses": {
            "202": _json("Accepted: exactly one outcome will be recorded.", _ref("Accepted")),
            "400": _error("Not a valid message, or its sender is not a client name.", "INVALID_MESSAGE"),
            "413": _TOO_LARGE,
            "503": _UNAVAILABLE,
        },
    },
    ("GET", "/api/v1/conversations"): {
        "operationId": "listConversations",
        "tags": ["conversations"],
        "summary": "Conversations, most recently active first.",
        "parameters": [
            _query("participant", {"type": "string"}, "Only conversations this name took part in."),
            _limit(1000, 100),
            _query("before", {"type": "number"}, "Unix time: the previous page's next_before."),
            _query("before_id", {"type": "string"}, "With before: the previous page's next_before_id."),
        ],
        "responses": {
            "200": _json("A page of conversations.", _ref("ConversationPage")),
            "400": _error("A bad limit or before.", "INVALID_REQUEST"),
        },
    },
    ("GET", "/api/v1/conversations/<conversation_id>"): {
        "operationId": "showConversation",
        "tags": ["conversations"],
        "summary": "A conversation and its messages after after; wait long-polls for newer ones.",
        "parameters": [
            _path("conversation_id", {"type": "string", "pattern": "^[^/]+$"}, "The conversation's id.", "hello-1"),
            _query(
                "after",
                {"type": "string", "description": "A seq number, or a message_id in this conversation."},
                "Skip messages up to and including this one (default 0, from the start).",
            ),
            _WAIT,
            _limit(10000, 1000),
        ],
        "responses": {
            "200": _json("The conversation.", _ref("ConversationDetail")),
            "400": _error("A bad after, wait or limit.", "INVALID_REQUEST"),
            "404": _error("No such conversation when the answer is made.", "INVALID_REQUEST"),
        },
    },
    ("GET", "/api/v1/mailboxes/<client>"): {
        "operationId": "mailbox",
        "tags": ["conversations"],
        "summary": "What was delivered to a client name, after after; wait long-polls.",
        "parameters": [
            _path("client", {"type": "string", "pattern": "^[^/]+$"}, "A client name, client:<id>.", "client:alice"),
            _query("after", {"type": "integer", "minimum": 0, "default": 0}, "A seq of this mailbox."),
            _WAIT,
            _limit(10000, 1000),
        ],
        "responses": {
            "200": _json("The mailbox.", _ref("Mailbox")),
            "400": _error("Not a client name; a bad after, wait or limit.", "INVALID_REQUEST"),
        },
    },
    ("GET", "/api/v1/dead-letters"): {
        "operationId": "deadLetters",
        "tags": ["messages"],
        "summary": "Messages that ended in failure, with reasons, newest first.",
        "parameters": [
            _limit(1000, 100),
            _query("before", {"type": "integer", "minimum": 1}, "A seq: the previous page's next_before."),
        ],
        "responses": {
            "200": _json("A page of dead letters.", _ref("DeadLetterPage")),
            "400": _error("A bad limit or before.", "INVALID_REQUEST"),
        },
    },
    ("GET", "/api/v1/tools"): {
        "operationId": "listTools",
        "tags": ["tools"],
        "summary": "The MCP servers agents may use, their tools and call counters.",
        "responses": {"200": _json("Always.", _ref("Tools"))},
    },
    ("GET", "/api/v1/cluster/members"): {
        "operationId": "clusterMembers",
        "tags": ["cluster"],
        "summary": "Every member this node knows, itself included.",
        "responses": {"200": _json("Sorted by id.", _ref("ClusterMembers"))},
    },
    ("GET", "/api/v1/cluster/status"): {
        "operationId": "clusterStatus",
        "tags": ["cluster"],
        "summary": "Partition mode, members by state, local health, counters.",
        "responses": {"200": _json("This node's view.", _ref("ClusterStatus"))},
    },
    ("POST", "/api/v1/cluster/join"): {
        "operationId": "clusterJoin",
        "tags": ["cluster"],
        "summary": "Join through seed addresses now: one push-pull with each.",
        "requestBody": _body(_ref("JoinRequest"), {"seeds": ["10.0.0.4:7946", "10.0.0.6"]}),
        "responses": {
            "200": _json("At least one seed answered.", _ref("Joined")),
            "400": _error("A bad body or seed, or a node that runs alone.", "INVALID_REQUEST"),
            "413": _TOO_LARGE,
            "503": _error("No seed answered.", "UNREACHABLE"),
        },
    },
    ("POST", "/api/v1/cluster/leave"): {
        "operationId": "clusterLeave",
        "tags": ["cluster"],
        "summary": "Leave the cluster gracefully; the node keeps running alone.",
        "responses": {
            "200": _json("Left.", _ref("Left")),
            "400": _error("The node is not in a cluster.", "INVALID_REQUEST"),
        },
    },
    ("GET", "/api/v1/keys"): {
        "operationId": "listKeys",
        "tags": ["keys"],
        "summary": "The API keys, revoked ones included; never their tokens.",
        "responses": {"200": _json("The keys.", _ref("KeyList"))},
    },
    ("POST", "/api/v1/keys"): {
        "operationId": "createKey",
        "tags": ["keys"],
        "summary": "Create an API key; its token is in the answer and nowhere else.",
        "requestBody": _body(_ref("KeyCreate"), {"name": "ci", "role": "operator"}),
        "responses": {
            "201": _json("Created.", _ref("KeyCreated")),
            "400": _error("A bad name or role.", "INVALID_REQUEST"),
            "413": _TOO_LARGE,
        },
    },
    ("DELETE", "/api/v1/keys/<key_id>"): {
        "operationId": "revokeKey",
        "tags": ["keys"],
        "summary": "Revoke an API key.",
        "parameters": [_path("key_id", {"type": "string", "pattern": "^[^/]+$"}, "The key's id.", "k1")],
        "responses": {
            "200": _json("Revoked: the key's record.", _ref("KeyRevoked")),
            "404": _error("No such key.", "INVALID_REQUEST"),
        },
    },
    ("GET", "/api/v1/audit"): {
        "operationId": "audit",
        "tags": ["keys"],
        "summary": "The audit log: every change and every refused login, newest first.",
        "parameters": [
            _limit(1000, 100),
            _query("before", {"type": "string"}, "The previous page's last entry, to page back."),
        ],
        "responses": {
            "200": _json("A page of the audit log.", _ref("AuditPage")),
            "400": _error("A bad limit or before.", "INVALID_REQUEST"),
        },
    },
}


def openapi_path(template: str) -> str:
    """
    A Klein route template (C{/api/v1/agents/<name>}) as an OpenAPI path
    (C{/api/v1/agents/{name}}).
    """
    return template.replace("<", "{").replace(">", "}")


_DESCRIPTION = """\
The management API of a Caxton node (SPEC 6).  JSON in and out; times are Unix
seconds.  Every error is {"error": {"code": ..., "message": ...}}.  An unknown
route answers 404 and a known route with a method it does not serve answers 405,
both INVALID_REQUEST, with an Allow header on 405.  A body over http.max_body is
refused with 413 PAYLOAD_TOO_LARGE before it is read.  Each operation's
x-caxton-role is the least role a key needs for it (viewer < operator < admin;
public needs none); while no key exists the node answers loopback clients only.
"""


def document() -> Dict[str, Any]:
    """
    The OpenAPI 3.1 document, built afresh.
    """
    paths: Dict[str, Dict[str, Any]] = {}
    for (method, template), operation in OPERATIONS.items():
        # A route the policy does not name is treated as admin-only (see
        # caxton.api.routes.match); tests keep the two tables equal.
        role = POLICY.get((method, template), Role.ADMIN)
        described = dict(operation)
        described["x-caxton-role"] = role.name.lower()
        responses = dict(operation["responses"])
        if role is Role.PUBLIC:
            described["security"] = []
        else:
            described["security"] = [{"bearer": []}]
            responses.update(_GUARDED)
        described["responses"] = dict(sorted(responses.items()))
        paths.setdefault(openapi_path(template), {})[method.lower()] = described
    schemas: Dict[str, Any] = {}
    for part in (_message_schemas, _agent_schemas, _conversation_schemas, _cluster_schemas, _other_schemas):
        schemas.update(part())
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Caxton management API",
            "version": __version__,
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": name}
            for name in (
                "health", "agents", "messages", "conversations", "cluster", "tools",
                "keys", "observability", "meta",
            )
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key's token: Authorization: Bearer <token>.",
                }
            },
            "responses": {
                "MethodNotAllowed": _error(
                    "The route exists, but not with this method.",
                    "INVALID_REQUEST",
                    headers={
                        "Allow": {
                            "description": "The methods the route takes.",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    },
                ),
                "NoSuchRoute": _error("No such route.", "INVALID_REQUEST"),
            },
        },
    }


_encoded: List[bytes] = []


def encoded() -> bytes:
    """
    The document as UTF-8 JSON, built once per process.
    """
    if not _encoded:
        _encoded.append(json.dumps(document(), separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return _encoded[0]
