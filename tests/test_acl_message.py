"""
Tests for L{caxton.acl.message}: the ACL message model and its JSON codec.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from caxton.acl.message import (
    MAX_JSON_DEPTH,
    MAX_NAME_LENGTH,
    MAX_TOKEN_LENGTH,
    PERFORMATIVES,
    ACLMessage,
    CapabilityReceiver,
    InvalidMessage,
    decode_message,
    encode_message,
    format_time,
    make_reply,
    message_to_dict,
    parse_message,
    parse_time,
    strict_json,
)

_ALIASES = {
    "conversation_id": "conversation-id",
    "reply_with": "reply-with",
    "in_reply_to": "in-reply-to",
    "reply_by": "reply-by",
    "reply_to": "reply-to",
    "message_id": "message-id",
}

_TOKEN_FIELDS = (
    "language",
    "encoding",
    "ontology",
    "protocol",
    "conversation_id",
    "reply_with",
    "in_reply_to",
    "message_id",
)

# Names: no white space, not empty, at most MAX_NAME_LENGTH characters.
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=24,
).filter(lambda s: not any(c.isspace() for c in s))

# Tokens (conversation ids, protocols, ...): any non-empty text.
tokens = st.text(min_size=1, max_size=40)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)

json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)

receivers = st.lists(names, min_size=1, max_size=4, unique=True).map(tuple) | st.builds(
    CapabilityReceiver, capability=tokens, all=st.booleans()
)

# reply_by is carried with millisecond precision, in UTC.
reply_bys = st.datetimes(timezones=st.just(timezone.utc)).map(
    lambda when: when.replace(microsecond=when.microsecond // 1000 * 1000)
)

# Fixed UTC offsets, as RFC 3339 writes them (named zones' DST gaps make the
# instant of some wall-clock times ambiguous).
fixed_offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)

user_fields = st.dictionaries(
    st.tuples(st.sampled_from(["X-", "x-"]), st.text(max_size=10)).map("".join),
    json_values,
    max_size=3,
)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


messages = st.builds(
    ACLMessage,
    performative=st.sampled_from(sorted(PERFORMATIVES)),
    sender=_optional(names),
    receiver=receivers,
    reply_to=_optional(st.lists(names, min_size=1, max_size=3, unique=True).map(tuple)),
    content=json_values,
    reply_by=_optional(reply_bys),
    user_fields=user_fields,
    **{field: _optional(tokens) for field in _TOKEN_FIELDS},
)


def _valid(**fields: Any) -> dict[str, Any]:
    """
    A minimal valid message dictionary, with C{fields} added or replaced.
    """
    data: dict[str, Any] = {"performative": "inform", "receiver": "bob"}
    data.update(fields)
    return data


class RoundTripTests(SynchronousTestCase):
    """
    Every valid L{ACLMessage} survives the codec unchanged.
    """

    @given(messages)
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_bytes(self, message: ACLMessage) -> None:
        """
        C{decode_message(encode_message(m)) == m} for any message, whatever its
        performative, receiver form, optional fields, deadline, content and
        user fields.
        """
        self.assertEqual(decode_message(encode_message(message)), message)

    @given(messages)
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_dict(self, message: ACLMessage) -> None:
        """
        C{parse_message(message_to_dict(m)) == m} for any message.
        """
        self.assertEqual(parse_message(message_to_dict(message)), message)

    @given(messages)
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_encodingIsUTF8JSON(self, message: ACLMessage) -> None:
        """
        C{encode_message} gives strict UTF-8 JSON (no NaN, no white space
        between tokens) whose object is C{message_to_dict}'s.
        """
        raw = encode_message(message)
        data = json.loads(
            raw.decode("utf-8"), parse_constant=lambda name: self.fail(name)
        )
        self.assertEqual(data, message_to_dict(message))
        self.assertEqual(
            raw, json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        )

    @given(messages)
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_unsetFieldsLeftOut(self, message: ACLMessage) -> None:
        """
        C{message_to_dict} leaves out every field that is not set and uses
        only the underscored names.
        """
        data = message_to_dict(message)
        for field in ("sender", "reply_to", "reply_by", "content") + _TOKEN_FIELDS:
            self.assertEqual(field in data, getattr(message, field) is not None, field)
        self.assertFalse(set(data) & set(_ALIASES.values()))

    @given(st.datetimes(timezones=fixed_offsets))
    def test_replyByOffsets(self, when: datetime) -> None:
        """
        A C{reply_by} with any UTC offset comes back as the same instant in
        UTC, to the millisecond.
        """
        try:
            when.astimezone(timezone.utc)
        except OverflowError:
            return
        message = ACLMessage("inform", receiver=("bob",), reply_by=when)
        decoded = decode_message(encode_message(message))
        assert decoded.reply_by is not None
        self.assertEqual(decoded.reply_by.utcoffset(), timedelta(0))
        self.assertEqual(
            decoded.reply_by,
            when.replace(microsecond=when.microsecond // 1000 * 1000),
        )

    def test_singleReceiverIsAString(self) -> None:
        """
        One named receiver is written as a string, several as a list, a
        capability receiver as an object with C{all} only when true.
        """
        self.assertEqual(message_to_dict(ACLMessage("inform", receiver=("a",)))["receiver"], "a")
        self.assertEqual(
            message_to_dict(ACLMessage("inform", receiver=("a", "b")))["receiver"],
            ["a", "b"],
        )
        self.assertEqual(
            message_to_dict(ACLMessage("inform", receiver=CapabilityReceiver("x")))[
                "receiver"
            ],
            {"capability": "x"},
        )
        self.assertEqual(
            message_to_dict(ACLMessage("inform", receiver=CapabilityReceiver("x", True)))[
                "receiver"
            ],
            {"capability": "x", "all": True},
        )

    def test_duplicateReceiversCollapsed(self) -> None:
        """
        A receiver list naming someone twice delivers to them once, keeping
        the order of first mention.
        """
        message = parse_message(_valid(receiver=["b", "a", "b"]))
        self.assertEqual(message.receiver, ("b", "a"))

    def test_receiverNames(self) -> None:
        """
        C{receiver_names} is the named receivers, and empty for a capability
        receiver or none.
        """
        self.assertEqual(ACLMessage("inform", receiver=("a", "b")).receiver_names(), ("a", "b"))
        self.assertEqual(
            ACLMessage("inform", receiver=CapabilityReceiver("x")).receiver_names(), ()
        )
        self.assertEqual(ACLMessage("inform").receiver_names(), ())

    def test_formatTime(self) -> None:
        """
        C{format_time} writes RFC 3339 in UTC with exactly three fraction
        digits, truncating finer precision.
        """
        when = datetime(2024, 5, 6, 7, 8, 9, 123999, tzinfo=timezone(timedelta(hours=2)))
        self.assertEqual(format_time(when), "2024-05-06T05:08:09.123Z")

    def test_formatTimeEarlyYears(self) -> None:
        """
        Years before 1000 are written with four digits, so they parse back
        (strftime's C{%Y} does not pad them).
        """
        when = datetime(5, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        self.assertEqual(format_time(when), "0005-01-02T03:04:05.000Z")
        self.assertEqual(parse_time(format_time(when)), when)

    def test_parseTime(self) -> None:
        """
        C{parse_time} accepts C{Z}, C{z} and numeric offsets, and gives an
        aware datetime in UTC.
        """
        expected = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
        for text in (
            "2024-01-01T12:00:00Z",
            "2024-01-01T12:00:00z",
            "2024-01-01T12:00:00.000+00:00",
            "2024-01-01T14:00:00+02:00",
            " 2024-01-01T12:00:00Z ",
        ):
            parsed = parse_time(text)
            self.assertEqual(parsed, expected, text)
            self.assertIs(parsed.tzinfo, timezone.utc, text)

    def test_lonelySurrogate(self) -> None:
        """
        A string holding a lone surrogate (sent as a C{\\ud800} escape, which
        JSON allows) is encoded with a JSON escape instead of crashing the
        UTF-8 encoder, and decodes back to the same message.
        """
        message = decode_message(b'{"performative":"inform","receiver":"a","content":"\\ud800x"}')
        self.assertEqual(message.content, "\ud800x")
        raw = encode_message(message)
        raw.decode("utf-8")
        self.assertEqual(decode_message(raw), message)

    def test_nonASCIIKeptAsUTF8(self) -> None:
        """
        Text outside ASCII is written as UTF-8, not as escapes.
        """
        raw = encode_message(ACLMessage("inform", receiver=("a",), content="café ☕"))
        self.assertIn("café ☕".encode("utf-8"), raw)

    def test_decodeStr(self) -> None:
        """
        C{decode_message} also takes text.
        """
        self.assertEqual(
            decode_message('{"performative":"inform","receiver":"a"}'),
            ACLMessage("inform", receiver=("a",)),
        )


class AliasTests(SynchronousTestCase):
    """
    FIPA's hyphenated names and any case of the performative are accepted.
    """

    @given(messages, st.data())
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_hyphenatedAliases(self, message: ACLMessage, data: st.DataObject) -> None:
        """
        Writing any subset of the fields under their hyphenated FIPA names
        parses to the same message.
        """
        underscored = message_to_dict(message)
        present = sorted(set(underscored) & set(_ALIASES))
        chosen = data.draw(st.sets(st.sampled_from(present)) if present else st.just(set()))
        hyphenated = {(_ALIASES[k] if k in chosen else k): v for k, v in underscored.items()}
        self.assertEqual(parse_message(hyphenated), message)

    def test_everyAlias(self) -> None:
        """
        Each hyphenated name sets the corresponding field.
        """
        message = parse_message(
            {
                "performative": "request",
                "receiver": "bob",
                "conversation-id": "c1",
                "reply-with": "r1",
                "in-reply-to": "r0",
                "reply-by": "2030-01-01T00:00:00Z",
                "reply-to": ["carol"],
                "message-id": "m1",
            }
        )
        self.assertEqual(message.conversation_id, "c1")
        self.assertEqual(message.reply_with, "r1")
        self.assertEqual(message.in_reply_to, "r0")
        self.assertEqual(message.reply_by, datetime(2030, 1, 1, tzinfo=timezone.utc))
        self.assertEqual(message.reply_to, ("carol",))
        self.assertEqual(message.message_id, "m1")

    @given(st.sampled_from(sorted(PERFORMATIVES)), st.data())
    def test_performativeCase(self, performative: str, data: st.DataObject) -> None:
        """
        The performative is matched without regard to case and stored in
        lower case.
        """
        flips = data.draw(st.lists(st.booleans(), min_size=len(performative), max_size=len(performative)))
        mixed = "".join(c.upper() if f else c for c, f in zip(performative, flips))
        self.assertEqual(parse_message(_valid(performative=mixed)).performative, performative)


class RejectionTests(SynchronousTestCase):
    """
    Every invalid message raises L{InvalidMessage} saying what is wrong.
    """

    def assertRejected(self, data: Any, *fragments: str) -> None:
        """
        C{parse_message(data)} raises L{InvalidMessage}, as does
        C{decode_message} of its JSON, and the reason contains every one of
        C{fragments}.
        """
        for parse in (parse_message, lambda d: decode_message(json.dumps(d))):
            with self.assertRaises(InvalidMessage) as caught:
                parse(data)
            for fragment in fragments:
                self.assertIn(fragment, str(caught.exception))

    def test_invalidMessageIsValueError(self) -> None:
        """
        L{InvalidMessage} is a L{ValueError}, so generic handlers catch it.
        """
        self.assertTrue(issubclass(InvalidMessage, ValueError))

    def test_malformedJSON(self) -> None:
        """
        Text that is not JSON is rejected as malformed JSON.
        """
        for raw in (b"{", b"", b"{'performative': 'inform'}", b"\xff\xfe\xfa", "nope"):
            with self.assertRaises(InvalidMessage) as caught:
                decode_message(raw)
            self.assertIn("malformed JSON", str(caught.exception))

    def test_deepNesting(self) -> None:
        """
        JSON nested deeper than the parser can follow is rejected as
        malformed rather than escaping as a L{RecursionError}.
        """
        with self.assertRaises(InvalidMessage) as caught:
            decode_message(b"[" * 200_000)
        self.assertIn("nested too deeply", str(caught.exception))

    def test_notJSONNumbers(self) -> None:
        """
        C{NaN}, C{Infinity} and numbers too large for a float are not JSON
        and are rejected, so they are never passed on to agents.
        """
        for content in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"):
            raw = b'{"performative":"inform","receiver":"a","content":' + content + b"}"
            with self.assertRaises(InvalidMessage) as caught:
                decode_message(raw)
            self.assertIn("malformed JSON", str(caught.exception))

    def test_notAnObject(self) -> None:
        """
        JSON that is not an object is rejected.
        """
        for data in ([], "inform", 3, None, [{"performative": "inform"}]):
            self.assertRejected(data, "must be a JSON object")

    def test_missingPerformative(self) -> None:
        """
        A message without a performative is rejected.
        """
        self.assertRejected({"receiver": "bob"}, "performative is required")
        self.assertRejected({"receiver": "bob", "performative": None}, "performative is required")

    def test_unknownPerformative(self) -> None:
        """
        A performative outside the 22 FIPA acts, or not a string, is rejected
        and named.
        """
        self.assertRejected(_valid(performative="shout"), "unknown performative", "'shout'")
        self.assertRejected(_valid(performative=3), "unknown performative")
        self.assertRejected(_valid(performative=["inform"]), "unknown performative")

    def test_missingReceiver(self) -> None:
        """
        A message without a receiver is rejected unless the caller says a
        receiver is not required.
        """
        self.assertRejected({"performative": "inform"}, "receiver is required")
        self.assertRejected({"performative": "inform", "receiver": None}, "receiver is required")
        self.assertEqual(
            parse_message({"performative": "inform"}, require_receiver=False),
            ACLMessage("inform"),
        )
        self.assertEqual(
            decode_message(b'{"performative":"inform"}', require_receiver=False),
            ACLMessage("inform"),
        )

    def test_emptyReceiverList(self) -> None:
        """
        An empty receiver list is rejected.
        """
        self.assertRejected(_valid(receiver=[]), "receiver is an empty list")

    def test_badReceiverNames(self) -> None:
        """
        Receiver names must be non-empty strings without white space and not
        too long.
        """
        self.assertRejected(_valid(receiver=""), "receiver must be a non-empty string")
        self.assertRejected(_valid(receiver=["a", 3]), "receiver must be a non-empty string")
        self.assertRejected(_valid(receiver="a b"), "contains white space")
        self.assertRejected(_valid(receiver="a" * (MAX_NAME_LENGTH + 1)), "longer than")
        self.assertRejected(_valid(receiver=3), "receiver must be a name or a list of names")
        self.assertRejected(_valid(receiver=True), "receiver must be a name or a list of names")

    def test_badCapabilityReceiver(self) -> None:
        """
        A capability receiver needs a non-empty C{capability} string, an
        optional boolean C{all}, and nothing else.
        """
        self.assertRejected(_valid(receiver={}), "receiver.capability")
        self.assertRejected(_valid(receiver={"capability": ""}), "receiver.capability")
        self.assertRejected(_valid(receiver={"capability": 3}), "receiver.capability")
        self.assertRejected(_valid(receiver={"capability": "x", "all": "yes"}), "receiver.all")
        self.assertRejected(_valid(receiver={"capability": "x", "all": 1}), "receiver.all")
        self.assertRejected(
            _valid(receiver={"capability": "x", "any": True}),
            "only 'capability' and 'all'",
            "any",
        )

    def test_unknownField(self) -> None:
        """
        A field that is neither known nor an C{X-} user field is rejected and
        named.
        """
        self.assertRejected(_valid(colour="red"), "unknown field", "'colour'", "X-")
        self.assertRejected(_valid(Performative="inform"), "unknown field")
        self.assertRejected(_valid(user_fields={}), "unknown field")

    def test_userFields(self) -> None:
        """
        C{X-} and C{x-} fields are kept as given, in order.
        """
        message = parse_message(_valid(**{"X-b": 1, "x-a": [2], "X-": None}))
        self.assertEqual(list(message.user_fields.items()), [("X-b", 1), ("x-a", [2]), ("X-", None)])

    def test_duplicateField(self) -> None:
        """
        Giving a field under both its hyphenated and underscored names is
        rejected, whichever comes first.
        """
        for underscored, hyphenated in _ALIASES.items():
            value = ["c"] if underscored == "reply_to" else "c"
            if underscored == "reply_by":
                value = "2030-01-01T00:00:00Z"
            self.assertRejected(
                _valid(**{hyphenated: value, underscored: value}),
                f"field {underscored!r} is given twice",
            )
            self.assertRejected(
                _valid(**{underscored: value, hyphenated: value}),
                f"field {underscored!r} is given twice",
            )

    def test_naiveReplyBy(self) -> None:
        """
        A C{reply_by} without a UTC offset is rejected: its instant is
        unknown.
        """
        self.assertRejected(_valid(reply_by="2030-01-01T00:00:00"), "reply_by", "no UTC offset")

    def test_badReplyBy(self) -> None:
        """
        A C{reply_by} that is not an RFC 3339 string, or names no
        representable UTC instant, is rejected.
        """
        self.assertRejected(_valid(reply_by="tomorrow"), "not an RFC 3339 timestamp")
        self.assertRejected(_valid(reply_by=1700000000), "RFC 3339 timestamp string")
        self.assertRejected(_valid(reply_by="0001-01-01T00:00:00+01:00"), "out of range")
        self.assertRejected(_valid(reply_by="9999-12-31T23:59:59-01:00"), "out of range")

    def test_badSender(self) -> None:
        """
        The sender must be a name.
        """
        self.assertRejected(_valid(sender=3), "sender must be a non-empty string")
        self.assertRejected(_valid(sender=""), "sender must be a non-empty string")
        self.assertRejected(_valid(sender="a\tb"), "sender", "white space")
        self.assertRejected(_valid(sender=["a"]), "sender must be a non-empty string")

    def test_badReplyTo(self) -> None:
        """
        C{reply_to} must be a name or a non-empty list of names.
        """
        self.assertRejected(_valid(reply_to=[]), "reply_to is an empty list")
        self.assertRejected(_valid(reply_to={"capability": "x"}), "reply_to must be a name")
        self.assertRejected(_valid(reply_to=[""]), "reply_to must be a non-empty string")

    def test_badTokenFields(self) -> None:
        """
        Each string field must be a non-empty string of bounded length.
        """
        for field in _TOKEN_FIELDS:
            self.assertRejected(_valid(**{field: 3}), f"{field} must be a non-empty string")
            self.assertRejected(_valid(**{field: ""}), f"{field} must be a non-empty string")
            self.assertRejected(_valid(**{field: ["x"]}), f"{field} must be a non-empty string")
            self.assertRejected(
                _valid(**{field: "x" * (MAX_TOKEN_LENGTH + 1)}),
                f"{field} is longer than {MAX_TOKEN_LENGTH}",
            )

    def test_nullOptionalFields(self) -> None:
        """
        An optional field given as C{null} is the same as leaving it out.
        """
        fields = {k: None for k in _TOKEN_FIELDS + ("sender", "reply_to", "reply_by", "content")}
        self.assertEqual(parse_message(_valid(**fields)), parse_message(_valid()))


_FIELD_NAMES = sorted(
    {"performative", "sender", "receiver", "reply_to", "content", "reply_by"}
    | set(_TOKEN_FIELDS)
    | set(_ALIASES.values())
)

# Objects shaped like messages, with plausible and implausible values.
near_messages = st.dictionaries(
    st.sampled_from(_FIELD_NAMES) | st.text(max_size=8),
    st.sampled_from(sorted(PERFORMATIVES))
    | st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01T00:00:00", "0001-01-01T00:00:00+01:00"])
    | st.builds(lambda c, a: {"capability": c, "all": a}, json_values, json_values)
    | json_values,
    max_size=8,
)


class RobustnessTests(SynchronousTestCase):
    """
    Whatever arrives, the codec returns a message or raises
    L{InvalidMessage}, nothing else.
    """

    def assertMessageOrInvalid(self, parse: Any, value: Any) -> None:
        """
        C{parse(value)} returns an L{ACLMessage} or raises L{InvalidMessage};
        a returned message survives a round trip through the codec.
        """
        try:
            message = parse(value)
        except InvalidMessage as e:
            self.assertTrue(str(e))
            return
        self.assertIsInstance(message, ACLMessage)
        self.assertEqual(decode_message(encode_message(message), require_receiver=False), message)

    @given(json_values | near_messages)
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_arbitraryJSON(self, value: Any) -> None:
        """
        Any decoded JSON value given to C{parse_message}, and its text given
        to C{decode_message}, gives a message or L{InvalidMessage}.
        """
        self.assertMessageOrInvalid(parse_message, value)
        self.assertMessageOrInvalid(decode_message, json.dumps(value).encode("utf-8"))
        self.assertMessageOrInvalid(
            lambda v: parse_message(v, require_receiver=False), value
        )

    @given(st.binary())
    def test_arbitraryBytes(self, raw: bytes) -> None:
        """
        Any bytes given to C{decode_message} give a message or
        L{InvalidMessage}.
        """
        self.assertMessageOrInvalid(decode_message, raw)

    @given(st.text())
    def test_arbitraryText(self, raw: str) -> None:
        """
        Any text, lone surrogates included, given to C{decode_message} gives
        a message or L{InvalidMessage}.
        """
        self.assertMessageOrInvalid(decode_message, raw)

    @given(near_messages.map(lambda d: json.dumps(d)), st.data())
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_mangledJSON(self, text: str, data: st.DataObject) -> None:
        """
        Near-message JSON with a slice cut out or replaced gives a message or
        L{InvalidMessage}.
        """
        start = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(start, len(text)))
        filler = data.draw(st.text(max_size=4))
        self.assertMessageOrInvalid(decode_message, text[:start] + filler + text[end:])


class MakeReplyTests(SynchronousTestCase):
    """
    L{make_reply} addresses and threads replies as SPEC 3.3 says.
    """

    @given(messages, st.sampled_from(sorted(PERFORMATIVES)), json_values, _optional(names))
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_threading(
        self, original: ACLMessage, performative: str, content: Any, sender: Any
    ) -> None:
        """
        A reply goes to C{reply_to}, or else the sender; it keeps the
        conversation id and protocol; its C{in_reply_to} is the original's
        C{reply_with}; it carries the given performative, content and sender
        and nothing else of the original.
        """
        reply = make_reply(original, performative, content, sender)
        if original.reply_to is not None:
            expected = original.reply_to
        elif original.sender is not None:
            expected = (original.sender,)
        else:
            expected = None
        self.assertEqual(
            reply,
            ACLMessage(
                performative=performative,
                sender=sender,
                receiver=expected,
                content=content,
                protocol=original.protocol,
                conversation_id=original.conversation_id,
                in_reply_to=original.reply_with,
            ),
        )

    def test_toSender(self) -> None:
        """
        Without C{reply_to}, the reply goes to the original sender.
        """
        original = ACLMessage(
            "request",
            sender="alice",
            receiver=("bob",),
            conversation_id="c1",
            protocol="fipa-request",
            reply_with="q1",
            reply_by=datetime(2030, 1, 1, tzinfo=timezone.utc),
            ontology="o",
        )
        reply = make_reply(original, "agree", {"ok": True}, "bob")
        self.assertEqual(reply.receiver, ("alice",))
        self.assertEqual(reply.sender, "bob")
        self.assertEqual(reply.conversation_id, "c1")
        self.assertEqual(reply.protocol, "fipa-request")
        self.assertEqual(reply.in_reply_to, "q1")
        self.assertIsNone(reply.reply_with)
        self.assertIsNone(reply.reply_by)
        self.assertIsNone(reply.ontology)
        self.assertEqual(reply.content, {"ok": True})

    def test_toReplyTo(self) -> None:
        """
        C{reply_to} takes precedence over the sender.
        """
        original = ACLMessage(
            "request", sender="alice", receiver=("bob",), reply_to=("carol", "dave")
        )
        self.assertEqual(make_reply(original, "inform", None, "bob").receiver, ("carol", "dave"))

    def test_nobodyToReplyTo(self) -> None:
        """
        With neither C{reply_to} nor sender, the reply has no receiver yet.
        """
        original = ACLMessage("request", receiver=("bob",))
        self.assertIsNone(make_reply(original, "inform", None, "bob").receiver)


class NestingLimitTests(SynchronousTestCase):
    """
    JSON deeper than L{MAX_JSON_DEPTH} is refused where it enters the node,
    so it never has to be encoded again deep in the node's stack (where
    Python's encoder would run out of recursion and fail the request).
    """

    def test_limit(self) -> None:
        """
        Arrays and objects nested C{MAX_JSON_DEPTH} deep are accepted, one
        more level is refused.
        """
        for opener, closer in (("[", "]"), ('{"a":', "}")):
            inner = "1" if opener != "[" else ""
            self.assertIsNotNone(strict_json(opener * MAX_JSON_DEPTH + inner + closer * MAX_JSON_DEPTH))
            with self.assertRaises(ValueError) as caught:
                strict_json((opener * (MAX_JSON_DEPTH + 1) + inner + closer * (MAX_JSON_DEPTH + 1)).encode())
            self.assertIn(f"nested deeper than {MAX_JSON_DEPTH} levels", str(caught.exception))

    def test_brackets_in_strings(self) -> None:
        """
        Brackets inside strings are no nesting: many of them are fine.
        """
        self.assertEqual(strict_json(json.dumps(["[{" * 1000])), ["[{" * 1000])

    def test_wide_not_deep(self) -> None:
        """
        Many shallow arrays side by side are fine.
        """
        self.assertEqual(len(strict_json("[" + ",".join(["[[]]"] * 1000) + "]")), 1000)

    def test_message(self) -> None:
        """
        A message whose content nests too deeply is refused as malformed.
        """
        content = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
        with self.assertRaises(InvalidMessage) as caught:
            decode_message('{"performative": "inform", "receiver": "a", "content": %s}' % (content,))
        self.assertIn("nested deeper", str(caught.exception))
