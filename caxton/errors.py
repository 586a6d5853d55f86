"""
Errors a user can cause, each with its API error code and HTTP status.

The API maps them to responses in one place (L{caxton.api.app}); the rest
of the node raises them without knowing about HTTP.
"""

from __future__ import annotations


class CaxtonError(Exception):
    """
    A refusal with a code from SPEC 6 and the HTTP status that goes with it.

    @ivar code: the API error code (C{AGENT_NOT_FOUND}, ...).
    @ivar status: the HTTP status the API answers with.
    """

    code = "INTERNAL_ERROR"
    status = 500

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidRequest(CaxtonError):
    """
    The request is malformed or names something impossible.
    """

    code = "INVALID_REQUEST"
    status = 400


class AgentNotFound(CaxtonError):
    """
    No agent has that name.
    """

    code = "AGENT_NOT_FOUND"
    status = 404


class ConversationNotFound(CaxtonError):
    """
    No conversation has that id (or it has expired).
    """

    code = "INVALID_REQUEST"
    status = 404


class AgentAlreadyExists(CaxtonError):
    """
    The name is taken.
    """

    code = "AGENT_ALREADY_EXISTS"
    status = 409


class AgentUnavailable(CaxtonError):
    """
    The agent exists but cannot take the message (failed, too large).
    """

    code = "AGENT_FAILED"
    status = 409


class QueueFull(CaxtonError):
    """
    The agent's inbox is full.
    """

    code = "QUEUE_FULL"
    status = 503


class PayloadTooLarge(CaxtonError):
    """
    The request body is larger than the node accepts.
    """

    code = "PAYLOAD_TOO_LARGE"
    status = 413


class NotAccepting(CaxtonError):
    """
    The node is shutting down and takes no new work.
    """

    code = "UNAVAILABLE"
    status = 503


class Unreachable(CaxtonError):
    """
    No node could be reached (a join whose seeds all failed).
    """

    code = "UNREACHABLE"
    status = 503


class Partitioned(CaxtonError):
    """
    This node is not on the majority side of a partition, so it makes no
    change that the other side could contradict (SPEC 5.4).
    """

    code = "PARTITIONED"
    status = 503
