# -*- test-case-name: tests.test_cli_cluster -*-
"""
C{caxton cluster status|members|join|leave}: a node's view of its cluster
and its place in it (SPEC 7, docs/cluster.md).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, TextIO, Tuple

from caxton.cli import output
from caxton.cli.http import NodeClient, node_command, node_parent

#: Join waits for every seed, each up to the node's C{gossip.tcp_timeout}.
JOIN_TIMEOUT = 120.0


def render_status(status: Dict[str, Any], now: Optional[float] = None) -> str:
    """
    The fields of C{cluster status} (its counters are in C{--json}).
    """
    members = status.get("members") or {}
    counts = ", ".join(f"{members[state]} {state}" for state in ("alive", "suspect", "dead", "left") if state in members)
    pairs: List[Tuple[str, Any]] = [
        ("node", status.get("node_id")),
        ("clustered", status.get("clustered")),
    ]
    if status.get("clustered"):
        pairs += [
            ("cluster", status.get("cluster")),
            ("address", status.get("address")),
            ("profile", status.get("profile")),
            ("encrypted", status.get("encrypted")),
        ]
    pairs += [("partition", status.get("partition"))]
    if status.get("clustered"):
        pairs.append(("left", status.get("left")))
    pairs.append(("members", counts or None))
    if status.get("clustered"):
        pairs.append(("expected", status.get("expected")))
    pairs += [("local health", status.get("local_health")), ("agents", status.get("agents"))]
    if status.get("clustered"):
        pairs += [
            ("incarnation", status.get("incarnation")),
            ("last sync", output.when_and_age(status.get("last_sync"), now) if status.get("last_sync") else "never"),
            ("streams", status.get("streams") or None),
        ]
    return output.fields(pairs)


def render_members(members: List[Dict[str, Any]], now: Optional[float] = None) -> str:
    """
    The table of C{cluster members}; this node is marked with C{*}.
    """
    columns = [
        output.Column("id", lambda m: f"{m.get('id')} *" if m.get("self") else m.get("id")),
        output.Column("address", "address"),
        output.Column("state", "state"),
        output.Column("since", lambda m: output.age(m.get("since"), now) if m.get("since") else None),
        output.Column("incarnation", "incarnation", right=True),
        output.Column("agents", "agents", right=True),
    ]
    return output.table(members, columns, "no members")


@node_command
async def status(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{cluster status}.
    """
    answer = await client.get("/api/v1/cluster/status")
    output.answer(client.settings.json, answer, lambda: render_status(answer), out)
    return 0


@node_command
async def members(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{cluster members}.
    """
    answer = await client.get("/api/v1/cluster/members")
    output.answer(client.settings.json, answer, lambda: render_members(answer.get("members") or []), out)
    return 0


@node_command
async def join(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{cluster join SEED...}.
    """
    answer = await client.post(
        "/api/v1/cluster/join", {"seeds": args.seeds}, timeout=client.settings.timeout or JOIN_TIMEOUT
    )
    seeds = len(args.seeds)
    output.answer(
        client.settings.json,
        answer,
        lambda: f"joined through {answer.get('joined')} of {seeds} seed{'s' if seeds != 1 else ''}; "
        f"this node knows {answer.get('members')} members",
        out,
    )
    return 0


@node_command
async def leave(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{cluster leave}.
    """
    answer = await client.post("/api/v1/cluster/leave")
    output.answer(
        client.settings.json, answer, lambda: "left the cluster; the node runs alone until it joins again", out
    )
    return 0


def register(subparsers: Any) -> None:
    """
    Add C{cluster status|members|join|leave}.
    """
    cluster = subparsers.add_parser(
        "cluster",
        help="the node's cluster: status, members, join, leave",
        description="Show a node's view of its cluster, join seeds, or leave gracefully.",
    )
    commands = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND")
    commands.required = True
    command = commands.add_parser(
        "status",
        parents=[node_parent()],
        help="partition mode, member counts, health",
        description="Partition mode, members by state, local health, agents (counters with --json).",
    )
    command.set_defaults(handler=status)
    command = commands.add_parser(
        "members", parents=[node_parent()], help="the members this node knows", description="The members this node knows, itself marked *."
    )
    command.set_defaults(handler=members)
    command = commands.add_parser(
        "join",
        parents=[node_parent()],
        help="join the cluster through seeds",
        description="Join the cluster now through one or more seeds (HOST:PORT, port 7946 by default).",
    )
    command.add_argument("seeds", nargs="+", metavar="SEED", help="HOST:PORT of a member")
    command.set_defaults(handler=join)
    command = commands.add_parser(
        "leave",
        parents=[node_parent()],
        help="leave the cluster gracefully",
        description="Leave the cluster gracefully: the others record this node as left; it keeps running alone.",
    )
    command.set_defaults(handler=leave)
