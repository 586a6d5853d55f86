# -*- test-case-name: tests.test_api_site -*-
"""
The HTTP site the API is served from: capped request bodies and timeouts.

twisted.web buffers a whole request body before any resource sees it and
sets no limit of its own, so the cap is enforced here, while the body
arrives: a declared C{Content-Length} over the cap is refused before its
first byte is read, and a chunked body is refused as soon as it passes the
cap.  Either way the client gets 413 C{PAYLOAD_TOO_LARGE} and the
connection is closed, so an oversized upload costs the node nothing more.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.web.server import Request, Site


def _payload_too_large(limit: int) -> bytes:
    body = json.dumps(
        {
            "error": {
                "code": "PAYLOAD_TOO_LARGE",
                "message": f"request body is larger than {limit} bytes",
            }
        }
    ).encode("utf-8")
    return (
        b"HTTP/1.1 413 Payload Too Large\r\n"
        b"Content-Type: application/json\r\n"
        b"Connection: close\r\n"
        + b"Content-Length: %d\r\n\r\n" % (len(body),)
        + body
    )


class CappedRequest(Request):
    """
    A request that refuses bodies larger than C{max_body} bytes.
    """

    max_body = 32 * 1024 * 1024
    _received = 0
    _refused = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        # The API parses multipart bodies itself, off the reactor thread and
        # for PUT as well as POST; Twisted would parse every POST form into
        # request.args on the reactor thread first.
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)

    def gotLength(self, length: Optional[int]) -> None:
        """
        Refuse a declared length over the cap before reading the body.
        """
        if length is not None and length > self.max_body:
            self._refuse()
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """
        Keep a chunk, or refuse the request once the body passes the cap.
        """
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Process the request, unless it was already refused.
        """
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        if self._refused:
            return
        self._refused = True
        self.channel.transport.write(_payload_too_large(self.max_body))
        self.channel.loseConnection()


def make_site(resource: Any, max_body: int, timeout: float) -> Site:
    """
    A L{Site} for C{resource} with bodies capped at C{max_body} bytes and
    idle connections closed after C{timeout} seconds.
    """
    request_factory = type("CappedRequest", (CappedRequest,), {"max_body": max_body})
    site = Site(resource, timeout=timeout)
    site.requestFactory = request_factory
    site.displayTracebacks = False
    return site
