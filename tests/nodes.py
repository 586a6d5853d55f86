"""
Real node processes on 127.0.0.1, for the integration tests.

L{NodeProcess} runs C{twist caxton} in a child process with its own data
directory and an API on an ephemeral port, waits until C{/ready} answers,
and stops it with SIGTERM (or SIGKILL) when the test is done.  L{Client} is
a small treq client for the node's API with non-persistent connections, so
tests leave no sockets behind.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import FailTest
from twisted.web.client import Agent, HTTPConnectionPool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PORT = re.compile(rb"Site starting on (\d+)")


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.port: Deferred = Deferred()
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.port.called:
            match = _PORT.search(self.output)
            if match:
                self.port.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if not self.port.called:
            self.port.errback(reason)
        self.ended.callback(reason.value)


class ChildProcess:
    """
    A child process the tests started, with how it ended.  Subclasses set
    C{_process} (from C{spawnProcess}) and C{_output} (a protocol whose
    C{ended} Deferred fires with the reason the process ended).
    """

    _process: Any = None
    _output: Any = None

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> Optional[int]:
        """
        Send C{sig} and wait for the process to end; its exit code, or
        C{None} if a signal ended it.
        """
        if self._process is None or self._output is None:
            return None
        if self._output.ended.called:
            ended = self._output.ended.result
        else:
            try:
                self._process.signalProcess({signal.SIGTERM: "TERM", signal.SIGKILL: "KILL"}[sig])
            except ProcessExitedAlready:
                pass
            timer = reactor.callLater(timeout, self.kill)
            ended = await self._output.ended
            if timer.active():
                timer.cancel()
        self._process = None
        if isinstance(ended, ProcessDone):
            return 0
        if isinstance(ended, ProcessTerminated):
            return ended.exitCode
        return None

    def kill(self) -> None:
        """
        SIGKILL the process if it still runs.
        """
        if self._process is not None and self._output is not None and not self._output.ended.called:
            try:
                self._process.signalProcess("KILL")
            except Exception:
                pass


class NodeProcess(ChildProcess):
    """
    One C{twist caxton} process.

    @param data_dir: its data directory (kept across restarts).
    @param args: extra command-line options.
    @param env: extra environment variables.
    @param api_host: the address its API listens on (and is reached at).
    @param wrapper: a command the node runs under (C{ip netns exec NS}).
    @param token: an API key, for a node that is not reached from loopback.
    """

    def __init__(
        self,
        data_dir: str,
        args: List[str] = (),
        env: Optional[Dict[str, str]] = None,
        api_host: str = "127.0.0.1",
        wrapper: List[str] = (),
        token: Optional[str] = None,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.args = list(args)
        self.env = dict(env or {})
        self.api_host = api_host
        self.wrapper = list(wrapper)
        self.token = token
        self.url: Optional[str] = None
        self._process: Any = None
        self._output: Optional[_Output] = None

    @property
    def output(self) -> str:
        """
        Everything the process wrote so far.
        """
        return bytes(self._output.output).decode("utf-8", "replace") if self._output else ""

    async def start(self, timeout: float = 60.0) -> str:
        """
        Start the node and wait until it is ready; its API URL.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.env)
        self._output = _Output()
        argv = [
            *self.wrapper,
            sys.executable,
            "-m",
            "twisted",
            "caxton",
            "--data-dir",
            self.data_dir,
            "--api",
            f"tcp:0:interface={self.api_host}",
            *self.args,
        ]
        self._process = reactor.spawnProcess(self._output, argv[0], argv, env=env, path=REPO)
        timer = reactor.callLater(timeout, self._output.port.cancel)
        try:
            port = await self._output.port
        except Exception:
            self.kill()
            raise AssertionError(f"node did not start:\n{self.output}")
        finally:
            if timer.active():
                timer.cancel()
        self.url = f"http://{self.api_host}:{port}"
        client = Client(self.url, token=self.token)
        for _ in range(int(timeout * 10)):
            try:
                response = await client.get("/ready")
                if response[0] == 200:
                    return self.url
            except Exception:
                pass
            await deferLater(reactor, 0.1, lambda: None)
        self.kill()
        raise AssertionError(f"node never became ready:\n{self.output}")

class Client:
    """
    A JSON client for one node's API.
    """

    def __init__(self, url: str, token: Optional[str] = None) -> None:
        self.url = url
        self.token = token
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._http = treq.client.HTTPClient(Agent(reactor, pool=pool))

    async def request(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None,
                      headers: Optional[Dict[str, str]] = None, **kwargs: Any) -> tuple:
        """
        C{(status, decoded JSON or None)} for one request.
        """
        data = raw
        all_headers = {"content-type": "application/json"}
        if self.token:
            all_headers["authorization"] = f"Bearer {self.token}"
        all_headers.update(headers or {})
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        response = await self._http.request(
            method, self.url + path, data=data, headers=all_headers, **kwargs
        )
        content = await response.content()
        try:
            decoded = json.loads(content) if content else None
        except ValueError:
            decoded = content
        return response.code, decoded

    async def poll(
        self,
        path: str,
        until: Callable[[List[Dict[str, Any]]], bool],
        after: Any = 0,
        timeout: float = 30.0,
    ) -> List[Dict[str, Any]]:
        """
        Long-poll C{path} (a mailbox or a conversation) from C{after} until
        the messages read so far satisfy C{until}.

        @return: every message read, oldest first.
        @raise FailTest: on an error answer, or when C{timeout} passes
            first (saying what was read).
        """
        deadline = time.monotonic() + timeout
        seen: List[Dict[str, Any]] = []
        for _ in range(200):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            status, body = await self.get(f"{path}?after={after}&wait={max(0.1, min(left, 5.0)):.1f}s")
            if status != 200:
                raise FailTest(f"{path}: {status} {body}")
            seen.extend(item["message"] for item in body["messages"])
            if until(seen):
                return seen
            after = body["next_after"]
        raise FailTest(f"{path}: nothing satisfied the wait within {timeout}s; read {json.dumps(seen, indent=1)}")

    async def get(self, path: str) -> tuple:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple:
        return await self.request("POST", path, body, **kwargs)

    async def deploy(self, name: str, wasm: bytes, **spec: Any) -> tuple:
        """
        Deploy C{wasm} as agent C{name} through the JSON form.
        """
        body = {"name": name, "wasm": base64.b64encode(wasm).decode("ascii"), **spec}
        return await self.post("/api/v1/agents", body)
