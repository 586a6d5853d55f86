# -*- test-case-name: tests.test_cli_agents -*-
"""
C{caxton send} and C{caxton conversations}: send an ACL message, wait for
its reply, and read conversations (SPEC 7).

C{send --wait} follows the message's conversation with the API's long
poll (C{GET /api/v1/conversations/{id}?after=..&wait=..}) until a reply to
it arrives: a later message in that conversation addressed to the
message's sender, or answering its C{reply_with}.  Like C{invoke}, it
waits on past an C{agree} for the answer that follows.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional, TextIO, Tuple
from urllib.parse import quote

from caxton.cli import output
from caxton.cli.errors import CommandError
from caxton.cli.http import APIError, NodeClient, node_command, node_parent

#: The longest one long poll asks the node to wait, in seconds (the node
#: cuts it to its C{http.max_wait}, 60 s by default, anyway).
POLL = 25.0

#: How long C{--wait} alone waits, in seconds.
DEFAULT_WAIT = 30.0

#: How many messages one page of a conversation asks for.
PAGE = 1000

#: The most pages C{conversations show} reads, and the most polls of
#: one C{send --wait}.
MAX_PAGES = 1000

#: The names' column of C{send}'s fields (as wide as C{reply_message_id}).
_WIDTH = 16

#: How much of a message's content a table shows.
CONTENT_WIDTH = 60


def _path(conversation_id: str) -> str:
    return "/api/v1/conversations/" + quote(conversation_id, safe="")


# Reading the command line ------------------------------------------------------------------


def _content(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({e}); a string needs its quotes: --content '\"hi\"'"
        ) from None


def _performative(text: str) -> str:
    from caxton.acl.message import PERFORMATIVES

    value = text.strip().lower()
    if value not in PERFORMATIVES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a FIPA performative ({', '.join(sorted(PERFORMATIVES))})")
    return value


def _client_name(text: str) -> str:
    if not text.startswith("client:") or len(text) <= len("client:") or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a client name such as client:alice")
    return text


def _duration(text: str) -> float:
    from caxton.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _name(text: str) -> str:
    if not text or len(text) > 255 or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: a name is 1 to 255 characters without white space")
    return text


def receiver(targets: List[str], everyone: bool) -> Any:
    """
    The message's C{receiver} from the C{--to} options: one name, a list
    of names, or C{{"capability": C}} for C{--to capability:C} (with
    C{"all": true} for C{--all}).

    @raise argparse.ArgumentTypeError: for a mix of capability and names,
        or C{--all} without a capability.
    """
    capabilities = [t for t in targets if t.startswith("capability:")]
    if capabilities:
        if len(targets) != 1:
            raise argparse.ArgumentTypeError("--to capability:C goes alone, without other --to")
        capability = capabilities[0][len("capability:") :]
        if not capability:
            raise argparse.ArgumentTypeError("--to capability:C needs a capability after the colon")
        return {"capability": capability, "all": True} if everyone else {"capability": capability}
    if everyone:
        raise argparse.ArgumentTypeError("--all goes with --to capability:C")
    unique = list(dict.fromkeys(targets))
    return unique[0] if len(unique) == 1 else unique


def message_from_args(args: argparse.Namespace, now: Optional[datetime] = None) -> Dict[str, Any]:
    """
    The ACL message C{send} posts.
    """
    message: Dict[str, Any] = {
        "performative": args.performative,
        "receiver": receiver(args.to, args.all),
    }
    if hasattr(args, "content"):
        message["content"] = args.content
    for key, value in (
        ("sender", args.sender),
        ("conversation_id", args.conversation),
        ("protocol", args.protocol),
        ("reply_with", args.reply_with),
        ("ontology", args.ontology),
        ("language", args.language),
    ):
        if value is not None:
            message[key] = value
    if args.reply_by is not None:
        now = now or datetime.now(timezone.utc)
        message["reply_by"] = (now + timedelta(seconds=args.reply_by)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return message


# Waiting for the reply -----------------------------------------------------------------------


def _names(value: Any) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def is_reply(message: Dict[str, Any], sent: Dict[str, Any]) -> bool:
    """
    Whether C{message}, recorded after C{sent} in its conversation, is a
    reply to it: from someone else, and to its sender (or its C{reply_to})
    or answering its C{reply_with}.
    """
    sender = sent.get("sender")
    if message.get("sender") == sender:
        return False
    if sent.get("reply_with") and message.get("in_reply_to") == sent["reply_with"]:
        return True
    wanted = set(_names(sent.get("reply_to")) or _names(sender))
    return bool(wanted & set(_names(message.get("receiver"))))


async def wait_reply(
    client: NodeClient,
    conversation_id: str,
    message_id: str,
    seconds: float,
    on_agree: Any = None,
) -> Optional[Dict[str, Any]]:
    """
    Follow the conversation until a reply to C{message_id} other than an
    C{agree} arrives, for at most C{seconds}; the reply, or L{None}.
    """
    from twisted.internet.task import deferLater

    reactor = client.reactor
    deadline = reactor.seconds() + seconds
    after: Any = 0
    sent: Optional[Dict[str, Any]] = None
    for _ in range(MAX_PAGES):
        left = deadline - reactor.seconds()
        if left <= 0:
            return None
        wait = min(left, POLL)
        try:
            answer = await client.get(
                _path(conversation_id),
                [("after", after), ("wait", f"{max(wait, 0.001):.3f}s")],
                timeout=wait + 15.0,
            )
        except APIError as e:
            if e.status != 404:
                raise
            # Not recorded yet; the node waited already, unless it is an
            # old one that does not: do not spin.
            await deferLater(reactor, min(0.5, max(0.0, deadline - reactor.seconds())), lambda: None)
            continue
        for item in answer.get("messages") or []:
            message = item.get("message") or {}
            if sent is None:
                if message.get("message_id") == message_id:
                    sent = message
                continue
            if is_reply(message, sent):
                if message.get("performative") == "agree":
                    if on_agree is not None:
                        on_agree(message)
                    continue
                return message
        after = answer.get("next_after", after)
    return None


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def render_reply(message: Dict[str, Any]) -> str:
    """
    The fields of a reply, its content as indented JSON.
    """
    pairs: List[Tuple[str, Any]] = [
        ("reply", f"{message.get('performative')} from {message.get('sender')}"),
        ("receiver", output.receiver(message.get("receiver"))),
    ]
    if message.get("in_reply_to"):
        pairs.append(("in_reply_to", message["in_reply_to"]))
    pairs.append(("reply_message_id", message.get("message_id")))
    pairs.append(("content", _pretty(message.get("content")) if "content" in message else None))
    return output.fields(pairs, _WIDTH)


def _node_failure(message: Dict[str, Any]) -> Optional[str]:
    """
    The line to report when the reply is the node's own C{failure} (the
    message was not delivered, or timed out), else L{None}.
    """
    if message.get("sender") != "caxton" or message.get("performative") != "failure":
        return None
    content = message.get("content")
    if isinstance(content, dict):
        reason, text = content.get("reason"), content.get("message")
        if reason and text:
            return f"the node reports a failure: {reason}: {text}"
    return "the node reports a failure: " + output.json_line(content)


# Commands -----------------------------------------------------------------------------------------


@node_command
async def send(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{caxton send}: post one message; with C{--wait}, wait for its reply.
    """
    message = message_from_args(args)
    accepted = await client.post("/api/v1/messages", message)
    ids = {"message_id": accepted.get("message_id"), "conversation_id": accepted.get("conversation_id")}
    as_json = client.settings.json
    if not as_json:
        print(output.fields(ids.items(), _WIDTH), file=out)
        out.flush()
    if args.wait is None:
        if as_json:
            output.print_json(accepted, out)
        return 0

    def agreed(agree: Dict[str, Any]) -> None:
        if not as_json:
            print(f"agree from {agree.get('sender')}; waiting for the answer", file=out)
            out.flush()

    reply = await wait_reply(client, ids["conversation_id"], ids["message_id"], args.wait, agreed)
    if as_json:
        output.print_json({**ids, "reply": reply}, out)
    if reply is None:
        raise CommandError(
            f"no reply within {output.duration(args.wait)} in conversation {ids['conversation_id']} "
            f"(the message was accepted; see 'caxton conversations show {ids['conversation_id']}')"
        )
    if not as_json:
        print(render_reply(reply), file=out)
    failure = _node_failure(reply)
    if failure is not None:
        raise CommandError(failure)
    return 0


def render_conversation(answer: Dict[str, Any]) -> str:
    """
    A conversation's fields, then its messages as a table.
    """
    record = answer.get("conversation") or {}
    head = output.fields(
        [
            ("conversation", record.get("conversation_id")),
            ("protocol", record.get("protocol")),
            ("state", record.get("state")),
            ("initiator", record.get("initiator")),
            ("participants", ", ".join(record.get("participants") or []) or None),
            ("created", output.when(record.get("created_at"))),
            ("updated", output.when(record.get("updated_at"))),
            ("messages", record.get("message_count")),
        ]
    )
    rows = answer.get("messages") or []
    columns = [
        output.Column("seq", "seq", right=True),
        output.Column("time", lambda item: output.when(item.get("recorded_at"))),
        output.Column("performative", lambda item: (item.get("message") or {}).get("performative")),
        output.Column("from", lambda item: (item.get("message") or {}).get("sender")),
        output.Column("to", lambda item: output.receiver((item.get("message") or {}).get("receiver"))),
        output.Column(
            "content",
            lambda item: output.shorten(output.json_line((item.get("message") or {}).get("content")), CONTENT_WIDTH)
            if "content" in (item.get("message") or {})
            else None,
        ),
    ]
    return head + "\n\n" + output.table(rows, columns, "no messages")


@node_command
async def show_conversation(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{conversations show ID}: every message it keeps, page by page.
    """
    after: Any = 0
    answer: Dict[str, Any] = {}
    messages: List[Dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        answer = await client.get(_path(args.conversation), [("after", after), ("limit", PAGE)])
        page = answer.get("messages") or []
        messages += page
        if len(page) < PAGE:
            break
        after = answer.get("next_after")
    whole = {**answer, "messages": messages, "next_after": messages[-1]["seq"] if messages else 0}
    output.answer(client.settings.json, whole, lambda: render_conversation(whole), out)
    return 0


def render_conversations(items: List[Dict[str, Any]]) -> str:
    """
    The table of C{conversations list}.
    """
    columns = [
        output.Column("conversation", "conversation_id"),
        output.Column("protocol", "protocol"),
        output.Column("state", "state"),
        output.Column("messages", "message_count", right=True),
        output.Column("updated", lambda c: output.when(c.get("updated_at"))),
        output.Column("initiator", "initiator"),
        output.Column("participants", "participants"),
    ]
    return output.table(items, columns, "no conversations")


@node_command
async def list_conversations(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{conversations list}: the most recently active first.
    """
    answer = await client.get(
        "/api/v1/conversations", [("participant", args.participant), ("limit", args.limit)]
    )
    output.answer(
        client.settings.json, answer, lambda: render_conversations(answer.get("conversations") or []), out
    )
    return 0


# The parser ------------------------------------------------------------------------------------


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return value


def register(subparsers: Any) -> None:
    """
    Add C{send} and C{conversations show|list}.
    """
    command = subparsers.add_parser(
        "send",
        parents=[node_parent()],
        help="send an ACL message (and wait for the reply)",
        description=(
            "Send one FIPA-ACL message through the node; it answers with the message's id and "
            "conversation id. With --wait, follow the conversation until a reply arrives."
        ),
    )
    command.add_argument(
        "--to",
        action="append",
        required=True,
        type=_name,
        metavar="NAME",
        help="the receiver: an agent, client:NAME, mcp:SERVER/TOOL, or capability:C (repeatable for several names)",
    )
    command.add_argument("--all", action="store_true", help="with --to capability:C: every agent offering C")
    command.add_argument("--performative", "-p", required=True, type=_performative, metavar="P", help="request, inform, cfp, ...")
    command.add_argument(
        "--content",
        "-c",
        type=_content,
        default=argparse.SUPPRESS,
        metavar="JSON",
        help='the content, as JSON: \'{"text": "hi"}\' (none if not given)',
    )
    command.add_argument("--sender", type=_client_name, metavar="client:NAME", help="send as this client (the node's default is client:api)")
    command.add_argument("--conversation", type=_name, metavar="ID", help="the conversation id (the node makes one up if not given)")
    command.add_argument("--protocol", type=_name, metavar="P", help="fipa-request, fipa-query, fipa-contract-net, ...")
    command.add_argument("--reply-with", type=_name, metavar="ID", help="the reply_with id replies answer")
    command.add_argument("--reply-by", type=_duration, metavar="DURATION", help="reply_by: now plus this (30s, 2m)")
    command.add_argument("--ontology", type=_name, metavar="O")
    command.add_argument("--language", type=_name, metavar="L")
    command.add_argument(
        "--wait",
        nargs="?",
        const=DEFAULT_WAIT,
        type=_duration,
        metavar="SECONDS",
        help=f"wait for the reply and print it (default {DEFAULT_WAIT:g}s); exit 1 if none comes",
    )
    command.set_defaults(handler=send)

    conversations = subparsers.add_parser(
        "conversations",
        help="read conversations",
        description="List conversations, or show one with its messages.",
    )
    commands = conversations.add_subparsers(dest="conversations_command", metavar="COMMAND")
    commands.required = True
    show = commands.add_parser(
        "show", parents=[node_parent()], help="a conversation and its messages", description="Show a conversation and every message it keeps."
    )
    show.add_argument("conversation", metavar="ID")
    show.set_defaults(handler=show_conversation)
    listing = commands.add_parser(
        "list", parents=[node_parent()], help="recent conversations", description="List conversations, most recently active first."
    )
    listing.add_argument("--participant", metavar="NAME", help="only those this agent or client took part in")
    listing.add_argument("--limit", type=_limit, default=100, metavar="N", help="how many (1 to 1000, default %(default)s)")
    listing.set_defaults(handler=list_conversations)
