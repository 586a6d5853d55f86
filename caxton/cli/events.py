# -*- test-case-name: tests.test_cli_events -*-
"""
C{caxton events}: follow a node's event stream (C{GET /api/v1/events},
server-sent events) and print one line per event until Ctrl-C or SIGTERM,
which end it with status 0.

Each event's data is a JSON object: C{id}, C{type} (C{agent.deployed},
C{member.joined}, ...), C{time} (RFC 3339) and the fields of its kind
(agents: C{agent}, C{node}, C{version}, C{reason}; members: C{member},
C{address}, C{incarnation}).  When the stream drops, the command
reconnects with back-off and sends C{Last-Event-ID}, so the node can
replay what it missed.  It gives up (status 1) only when the node refuses
the request outright (401, 403, 404, ...) or cannot be reached at the
first attempt.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import TYPE_CHECKING, Any, Dict, TextIO

from caxton.cli import output
from caxton.cli.http import NodeClient, node_command, node_parent

if TYPE_CHECKING:  # pragma: no cover
    from caxton.cli.sse import Event

_TYPE = re.compile(r"^[A-Za-z0-9_.*-]+$")

#: Fields shown in their own place on a line rather than among its details.
_HIDDEN = {"id", "type", "time", "agent", "member", "node"}


def _types(text: str) -> str:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or not all(_TYPE.match(name) for name in names):
        raise argparse.ArgumentTypeError(f"{text!r}: give event types separated by commas (agent.deployed,member.joined)")
    return ",".join(names)


def event_data(event: Event) -> Dict[str, Any]:
    """
    The event's JSON object; one made of its type, id and raw data when
    the data is not a JSON object.
    """
    try:
        data = json.loads(event.data)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {"type": event.type, "data": event.data}
        if event.id is not None:
            data["id"] = event.id
    return data


def _detail(value: Any) -> str:
    shown = output.text(value)
    return json.dumps(shown, ensure_ascii=False) if (" " in shown or not shown) else shown


def event_line(data: Dict[str, Any]) -> str:
    """
    One readable line for an event: local time, type, subject, details.

    C{2025-11-20 14:03:12  agent.deployed   echo on n1  version=1}
    """
    kind = str(data.get("type") or "message")
    subject = ""
    if data.get("agent") is not None:
        subject = f"{data['agent']}" + (f" on {data['node']}" if data.get("node") is not None else "")
    elif data.get("member") is not None:
        subject = str(data["member"])
    elif data.get("node") is not None:
        subject = f"node {data['node']}"
    details = " ".join(f"{key}={_detail(value)}" for key, value in sorted(data.items()) if key not in _HIDDEN)
    parts = [output.when_rfc3339(data.get("time")) if data.get("time") else output.NONE, kind.ljust(16)]
    parts += [part for part in (subject, details) if part]
    return "  ".join(parts).rstrip()


@node_command
async def follow(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{caxton events}: print events until interrupted.
    """
    from caxton.cli.eventstream import follow_events

    return await follow_events(args, client, out, err)


def register(subparsers: Any) -> None:
    """
    Add C{events}.
    """
    command = subparsers.add_parser(
        "events",
        parents=[node_parent()],
        help="follow the node's events (deploys, failures, members)",
        description=(
            "Follow the node's event stream and print one line per event (time, type, subject, "
            "details), or one JSON object per line with --json, until Ctrl-C. Reconnects by itself "
            "with Last-Event-ID when the stream drops."
        ),
    )
    command.add_argument(
        "--types",
        type=_types,
        metavar="T,...",
        help="only these event types, separated by commas (agent.deployed,member.failed)",
    )
    command.add_argument(
        "--after", metavar="ID", help="start after this event id (sent as Last-Event-ID), to pick up where you left off"
    )
    command.set_defaults(handler=follow)
