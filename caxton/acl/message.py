# -*- test-case-name: tests.test_acl_message -*-
"""
The FIPA-ACL message model and its JSON codec (SPEC 4.1).

A message is a frozen L{ACLMessage}.  It enters the node as JSON, from the
REST API or from an agent's C{send}, through L{parse_message} (or
L{decode_message} for bytes), which checks every field and raises
L{InvalidMessage} with a reason a user can act on.  It leaves as JSON through
L{message_to_dict} / L{encode_message}.

FIPA's hyphenated parameter names (C{conversation-id}) are accepted on input;
output always uses the underscored names of the SPEC.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Tuple, Union

import attr

PERFORMATIVES = frozenset(
    [
        "accept-proposal",
        "agree",
        "cancel",
        "cfp",
        "confirm",
        "disconfirm",
        "failure",
        "inform",
        "inform-if",
        "inform-ref",
        "not-understood",
        "propagate",
        "propose",
        "proxy",
        "query-if",
        "query-ref",
        "refuse",
        "reject-proposal",
        "request",
        "request-when",
        "request-whenever",
        "subscribe",
    ]
)

#: Agent names: unique across the cluster, and their FIPA identifier.
AGENT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")

#: Longest participant name (agent or client) the codec accepts.
MAX_NAME_LENGTH = 255

#: Longest conversation id, reply-with, protocol, language and the like.
MAX_TOKEN_LENGTH = 255

_STRING_FIELDS = (
    "language",
    "encoding",
    "ontology",
    "protocol",
    "conversation_id",
    "reply_with",
    "in_reply_to",
    "message_id",
)

_ALIASES = {
    "conversation-id": "conversation_id",
    "reply-with": "reply_with",
    "in-reply-to": "in_reply_to",
    "reply-by": "reply_by",
    "reply-to": "reply_to",
    "message-id": "message_id",
}

_KNOWN_FIELDS = frozenset(
    ("performative", "sender", "receiver", "reply_to", "content", "reply_by")
    + _STRING_FIELDS
)


class InvalidMessage(ValueError):
    """
    A message that is not a valid ACL message; C{str()} says why.
    """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class CapabilityReceiver:
    """
    A receiver chosen by capability rather than by name.

    @ivar capability: the capability the receiving agent must offer.
    @ivar all: C{True} to deliver to every agent offering it, C{False} for
        exactly one of them.
    """

    capability: str
    all: bool = False


Receiver = Union[Tuple[str, ...], CapabilityReceiver]


@attr.s(frozen=True, slots=True, auto_attribs=True, hash=False)
class ACLMessage:
    """
    One FIPA-ACL message.

    @ivar performative: one of L{PERFORMATIVES}.
    @ivar sender: the sending agent's or client's name.
    @ivar receiver: a tuple of names, or a L{CapabilityReceiver}; C{None}
        only while the message is being built.
    @ivar reply_to: names replies should go to instead of C{sender}.
    @ivar content: any JSON value.
    @ivar reply_by: the deadline for an answer, an aware UTC datetime.
    @ivar user_fields: the C{X-...} parameters, in the order given.
    """

    performative: str
    sender: Optional[str] = None
    receiver: Optional[Receiver] = None
    reply_to: Optional[Tuple[str, ...]] = None
    content: Any = None
    language: Optional[str] = None
    encoding: Optional[str] = None
    ontology: Optional[str] = None
    protocol: Optional[str] = None
    conversation_id: Optional[str] = None
    reply_with: Optional[str] = None
    in_reply_to: Optional[str] = None
    reply_by: Optional[datetime] = None
    message_id: Optional[str] = None
    user_fields: Mapping[str, Any] = attr.ib(factory=dict)

    def evolve(self, **changes: Any) -> "ACLMessage":
        """
        Return a copy with C{changes} applied.
        """
        # attr.evolve introspects the class on every call; this runs for
        # every message routed, so copy the fields directly.
        values = {name: getattr(self, name) for name in _FIELD_NAMES}
        values.update(changes)
        return ACLMessage(**values)

    def receiver_names(self) -> Tuple[str, ...]:
        """
        The receivers named directly (empty for a capability receiver).
        """
        if isinstance(self.receiver, tuple):
            return self.receiver
        return ()


_FIELD_NAMES = tuple(field.name for field in attr.fields(ACLMessage))


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{field} must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidMessage(f"{field} is longer than {MAX_NAME_LENGTH} characters")
    if any(c.isspace() for c in value):
        raise InvalidMessage(f"{field} {value!r} contains white space")
    return value


def _names(value: Any, field: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (_name(value, field),)
    if isinstance(value, list):
        if not value:
            raise InvalidMessage(f"{field} is an empty list")
        names = tuple(_name(v, field) for v in value)
        return tuple(dict.fromkeys(names))
    raise InvalidMessage(f"{field} must be a name or a list of names")


def _receiver(value: Any) -> Receiver:
    if isinstance(value, dict):
        unknown = set(value) - {"capability", "all"}
        if unknown:
            raise InvalidMessage(
                "receiver object takes only 'capability' and 'all', not "
                + ", ".join(sorted(unknown))
            )
        capability = value.get("capability")
        if not isinstance(capability, str) or not capability:
            raise InvalidMessage("receiver.capability must be a non-empty string")
        every = value.get("all", False)
        if not isinstance(every, bool):
            raise InvalidMessage("receiver.all must be true or false")
        return CapabilityReceiver(capability, every)
    return _names(value, "receiver")


def parse_time(value: Any, field: str = "reply_by") -> datetime:
    """
    Parse an RFC 3339 timestamp into an aware UTC datetime.

    @raise InvalidMessage: if C{value} is not one, or has no UTC offset.
    """
    if not isinstance(value, str):
        raise InvalidMessage(f"{field} must be an RFC 3339 timestamp string")
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidMessage(f"{field} {value!r} is not an RFC 3339 timestamp")
    if when.tzinfo is None:
        raise InvalidMessage(f"{field} {value!r} has no UTC offset")
    try:
        return when.astimezone(timezone.utc)
    except OverflowError:
        # 0001-01-01T00:00+01:00 is a valid timestamp with no UTC datetime.
        raise InvalidMessage(f"{field} {value!r} is out of range")


def format_time(when: datetime) -> str:
    """
    Format an aware datetime as RFC 3339 in UTC with milliseconds.
    """
    when = when.astimezone(timezone.utc)
    # Not strftime: its %Y does not pad years before 1000 to four digits.
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}."
        f"{when.microsecond // 1000:03d}Z"
    )


def parse_message(data: Any, *, require_receiver: bool = True) -> ACLMessage:
    """
    Build an L{ACLMessage} from decoded JSON.

    @param data: the decoded JSON object.
    @param require_receiver: refuse a message without C{receiver}.
    @raise InvalidMessage: on any invalid, unknown or duplicated field.
    """
    if not isinstance(data, dict):
        raise InvalidMessage("a message must be a JSON object")
    fields: dict[str, Any] = {}
    user: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise InvalidMessage("field names must be strings")
        if key[:2] in ("X-", "x-"):
            user[key] = value
            continue
        canonical = _ALIASES.get(key, key)
        if canonical not in _KNOWN_FIELDS:
            raise InvalidMessage(f"unknown field {key!r} (user fields start with 'X-')")
        if canonical in fields:
            raise InvalidMessage(f"field {canonical!r} is given twice")
        fields[canonical] = value

    performative = fields.pop("performative", None)
    if performative is None:
        raise InvalidMessage("performative is required")
    if not isinstance(performative, str) or performative.lower() not in PERFORMATIVES:
        raise InvalidMessage(f"unknown performative {performative!r}")
    kwargs: dict[str, Any] = {"performative": performative.lower()}

    if fields.get("sender") is not None:
        kwargs["sender"] = _name(fields["sender"], "sender")
    if fields.get("receiver") is not None:
        kwargs["receiver"] = _receiver(fields["receiver"])
    elif require_receiver:
        raise InvalidMessage("receiver is required")
    if fields.get("reply_to") is not None:
        kwargs["reply_to"] = _names(fields["reply_to"], "reply_to")
    if fields.get("reply_by") is not None:
        kwargs["reply_by"] = parse_time(fields["reply_by"])
    for key in _STRING_FIELDS:
        value = fields.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise InvalidMessage(f"{key} must be a non-empty string")
        if len(value) > MAX_TOKEN_LENGTH:
            raise InvalidMessage(f"{key} is longer than {MAX_TOKEN_LENGTH} characters")
        kwargs[key] = value
    if "content" in fields:
        kwargs["content"] = fields["content"]
    if user:
        kwargs["user_fields"] = user
    return ACLMessage(**kwargs)


def decode_message(raw: Union[bytes, str], *, require_receiver: bool = True) -> ACLMessage:
    """
    Parse a message from UTF-8 JSON text.

    @raise InvalidMessage: if C{raw} is not UTF-8 JSON or not a valid message.
    """
    try:
        data = strict_json(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidMessage(f"malformed JSON: {e}")
    except RecursionError:
        raise InvalidMessage("malformed JSON: nested too deeply")
    return parse_message(data, require_receiver=require_receiver)


#: The deepest nesting of arrays and objects L{strict_json} accepts (as
#: serde_json's default).  Python's JSON encoder shares the recursion limit
#: with the code that calls it, so a value decoded near that limit (about a
#: thousand levels) could not be encoded again deeper in the node's stack:
#: refused at the door, it never reaches the router, the store or the API.
MAX_JSON_DEPTH = 128


def strict_json(raw: Union[bytes, str]) -> Any:
    """
    Decode JSON, refusing what strict parsers refuse (C{NaN}, C{Infinity},
    numbers out of a double's range) and nesting deeper than
    L{MAX_JSON_DEPTH}.

    @raise ValueError: for malformed or non-strict JSON.
    @raise RecursionError: for JSON nested too deeply.
    """
    value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    # Counting the brackets is cheap and bounds the depth from above, so
    # only a document with many of them is walked.
    openers = (b"[", b"{") if isinstance(raw, bytes) else ("[", "{")
    if raw.count(openers[0]) + raw.count(openers[1]) > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """
    Whether arrays and objects nest in C{value} deeper than C{limit}.
    """
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; passing them on would hand agents text
    # that strict parsers reject.
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def message_to_dict(message: ACLMessage) -> dict[str, Any]:
    """
    The JSON object for C{message}, leaving out fields that are not set.
    """
    out: dict[str, Any] = {"performative": message.performative}
    if message.message_id is not None:
        out["message_id"] = message.message_id
    if message.sender is not None:
        out["sender"] = message.sender
    receiver = message.receiver
    if isinstance(receiver, CapabilityReceiver):
        out["receiver"] = (
            {"capability": receiver.capability, "all": True}
            if receiver.all
            else {"capability": receiver.capability}
        )
    elif receiver is not None:
        out["receiver"] = receiver[0] if len(receiver) == 1 else list(receiver)
    if message.reply_to is not None:
        out["reply_to"] = list(message.reply_to)
    for key in _STRING_FIELDS:
        value = getattr(message, key)
        if value is not None and key != "message_id":
            out[key] = value
    if message.reply_by is not None:
        out["reply_by"] = format_time(message.reply_by)
    if message.content is not None:
        out["content"] = message.content
    out.update(message.user_fields)
    return out


def encode_message(message: ACLMessage) -> bytes:
    """
    Compact UTF-8 JSON for C{message}: what agents and the store receive.
    """
    return encode_body(message_to_dict(message))


def encode_body(data: Mapping[str, Any]) -> bytes:
    """
    Compact UTF-8 JSON for a message's JSON object (L{message_to_dict}).
    """
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )
    except UnicodeEncodeError:
        # A lone surrogate (from a "\\ud800" escape) has no UTF-8 form; JSON's
        # own escapes carry it.
        return json.dumps(data, separators=(",", ":")).encode("ascii")


def make_reply(
    original: ACLMessage, performative: str, content: Any, sender: Optional[str]
) -> ACLMessage:
    """
    The reply to C{original}, addressed and threaded as SPEC 3.3 says.

    The receiver is C{original.reply_to} or else its sender; the
    conversation id and protocol are kept; C{in_reply_to} is the original's
    C{reply_with}.
    """
    receiver: Optional[Tuple[str, ...]] = original.reply_to
    if receiver is None and original.sender is not None:
        receiver = (original.sender,)
    return ACLMessage(
        performative=performative,
        sender=sender,
        receiver=receiver,
        content=content,
        protocol=original.protocol,
        conversation_id=original.conversation_id,
        in_reply_to=original.reply_with,
    )
