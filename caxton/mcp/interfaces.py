"""
What the router needs from the MCP tool gateway (SPEC 8).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

from twisted.internet.defer import Deferred
from zope.interface import Interface


class ToolFailure(Exception):
    """
    A tool call that ended without a result.

    @ivar reason: the failure reason the calling agent sees: C{UNREACHABLE},
        C{TIMEOUT}, C{TOOL_ERROR}, C{FORBIDDEN}, C{NOT_FOUND} or
        C{INVALID_MESSAGE}.
    @ivar detail: what went wrong, for the agent and the dead letters.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class IToolGateway(Interface):
    """
    Calls MCP tools for agents and API clients.
    """

    def parse_receiver(name: str) -> Tuple[str, str]:
        """
        C{(server, tool)} of a receiver name C{mcp:<server>/<tool>}.

        @raise ToolFailure: C{INVALID_MESSAGE} for a malformed name.
        """

    def allowed(allowances: Sequence[str], server: str, tool: str) -> bool:
        """
        Whether a spec's C{tools} (C{server/tool}, C{server/*}, C{*}) allow
        calling C{tool} on C{server}.
        """

    def call(server: str, tool: str, arguments: Any) -> Deferred:
        """
        Call C{tool} on C{server} with C{arguments} (the request's content):
        fires with the content of the C{inform} to send back, or fails with
        L{ToolFailure}.
        """

    def catalog() -> Deferred:
        """
        The configured servers and their tools, for C{GET /api/v1/tools};
        never fails (errors go in each server's entry).
        """
