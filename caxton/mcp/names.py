# -*- test-case-name: tests.test_mcp_gateway -*-
"""
How MCP tools are named (SPEC 8): receiver names C{mcp:<server>/<tool>}
and the allowances a deploy spec lists.  Pure functions, with no I/O and no
HTTP client, for every layer that checks a name: the agent manager (specs),
the router (receivers) and the gateway (calls).
"""

from __future__ import annotations

import re
from typing import Sequence, Tuple

from caxton.mcp.interfaces import ToolFailure

#: Receiver names starting with this address MCP tools, not agents.
RECEIVER_PREFIX = "mcp:"

# Server names appear in receiver names and allowances, so they may not
# hold "/" or "*".
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")

# MCP (2025-11-25) recommends tool names of 1 to 128 letters, digits, "_",
# "-" and "."; "/" is allowed too, since the receiver splits at the first
# "/" and some servers namespace their tools that way.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")


def valid_server_name(name: str) -> bool:
    """
    Whether C{name} can name an MCP server (in receivers and allowances).
    """
    return bool(_SERVER_NAME.match(name))


def valid_tool_name(name: str) -> bool:
    """
    Whether C{name} can name a tool.
    """
    return bool(_TOOL_NAME.match(name))


def is_tool_receiver(name: str) -> bool:
    """
    Whether the receiver C{name} addresses an MCP tool rather than an agent.
    """
    return name.startswith(RECEIVER_PREFIX)


def parse_receiver(name: str) -> Tuple[str, str]:
    """
    The server and tool a receiver C{mcp:<server>/<tool>} names.

    @raise ToolFailure: (C{INVALID_MESSAGE}) if C{name} is not such a name.
    """
    if not name.startswith(RECEIVER_PREFIX):
        raise ToolFailure("INVALID_MESSAGE", f"{name!r} is not an mcp:<server>/<tool> name")
    server, slash, tool = name[len(RECEIVER_PREFIX) :].partition("/")
    if not slash or not _SERVER_NAME.match(server) or not _TOOL_NAME.match(tool):
        raise ToolFailure(
            "INVALID_MESSAGE", f"{name!r} is not a valid mcp:<server>/<tool> name"
        )
    return server, tool


def parse_allowance(text: str) -> str:
    """
    Check one deploy allowance: C{"<server>/<tool>"}, C{"<server>/*"} or
    C{"*"}.

    @return: C{text}, unchanged.
    @raise ValueError: with the sentence to show, if it is none of these.
    """
    if text == "*":
        return text
    server, slash, tool = text.partition("/")
    if slash and _SERVER_NAME.match(server) and (tool == "*" or _TOOL_NAME.match(tool)):
        return text
    raise ValueError(
        f"{text!r} is not an MCP tool allowance (write server/tool, server/* or *)"
    )


def allowed(allowances: Sequence[str], server: str, tool: str) -> bool:
    """
    Whether a deploy's C{allowances} let its agent call C{tool} on
    C{server}: an allowance is C{"<server>/<tool>"}, C{"<server>/*"} (all
    of that server's tools) or C{"*"} (every tool of every server).
    """
    exact = f"{server}/{tool}"
    every = f"{server}/*"
    return any(a == "*" or a == every or a == exact for a in allowances)
