"""
Integration tests of observability against real node processes on
127.0.0.1: C{/metrics} counts what the test just did, the event stream
delivers a deploy to a subscribed client (and outlives the HTTP idle
timeout), and a node started with C{--log-format json} writes only JSON
lines, under C{twist} and under C{twistd}.

Every wait is bounded by a count and a deadline; every process is stopped
in cleanup.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from tests.nodes import REPO, ChildProcess, Client, NodeProcess, _Output
from tests.test_cluster import ClusterTestCase
from tests.wasmbuild import example, wat_module

#: The longest any single wait in these tests may take, in seconds.
WAIT = 20.0


def _echo() -> bytes:
    return wat_module(example("wat", "echo.wat"))


class EventReader(Protocol):
    """
    Reads a server-sent event stream as it arrives: the events (C{id},
    C{event}, decoded C{data}) and the comments.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.events: List[Dict[str, Any]] = []
        self.comments: List[Tuple[float, str]] = []
        self.ended: Deferred = Deferred()
        self._waiting: List[Deferred] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields: Dict[str, str] = {}
            for line in block.decode("utf-8").split("\n"):
                if line.startswith(":"):
                    self.comments.append((time.monotonic(), line))
                elif line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
            if fields:
                self.events.append(
                    {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}
                )
        self._wake()

    def connectionLost(self, reason: Any) -> None:
        self.ended.callback(None)
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    async def until(self, check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """
        Wait until C{check()} holds, at most C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            if check():
                return
            if self.ended.called:
                raise AssertionError(f"the stream ended before {what}: {self.events} {self.comments}")
            left = deadline - time.monotonic()
            if left <= 0:
                break
            d: Deferred = Deferred()
            self._waiting.append(d)
            timer = reactor.callLater(min(left, 0.5), lambda: d.called or d.callback(None))
            await d
            if timer.active():
                timer.cancel()
        raise AssertionError(f"no {what} within {timeout}s: {self.events} {self.comments}")

    def close(self) -> None:
        """
        Drop the connection.
        """
        if self.transport is not None and not self.ended.called:
            self.transport.stopProducing()


class _ObservabilityTestCase(unittest.TestCase):
    timeout = 120

    async def node(self, args: List[str] = (), env: Optional[Dict[str, str]] = None) -> Tuple[NodeProcess, Client]:
        process = NodeProcess(os.path.abspath(self.mktemp()), args=args, env=env)
        self.addCleanup(lambda: ensureDeferred(process.stop(signal.SIGKILL)))
        url = await process.start()
        return process, Client(url)

    async def events(self, url: str, path: str = "/api/v1/events", headers: Optional[Dict[str, str]] = None) -> EventReader:
        """
        Open an event stream; it is closed when the test ends.
        """
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        raw = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
        response = await agent.request(b"GET", (url + path).encode("ascii"), raw)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"])
        reader = EventReader()
        response.deliverBody(reader)
        self.addCleanup(reader.close)
        return reader

    async def scrape(self, client: Client) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
        response = await client._http.get(client.url + "/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        text = (await response.content()).decode("utf-8")
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found


def _get(found: Dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


class MetricsTests(_ObservabilityTestCase):
    """
    C{GET /metrics} on a real node.
    """

    async def test_counts_what_happened(self) -> None:
        """
        After a deploy and five requests to an echo agent, the routed
        counters grew by five locally (the requests) and five to the
        client's mailbox (the replies), the latency histogram by ten, the
        API counted one deploy (201) and five sends (202); a message to no
        agent counts one AGENT_NOT_FOUND failure.
        """
        _, client = await self.node()
        status, body = await client.deploy("echo", _echo())
        self.assertEqual(status, 201, body)
        before = await self.scrape(client)
        for i in range(5):
            status, body = await client.post(
                "/api/v1/messages",
                {"performative": "request", "sender": "client:m", "receiver": "echo", "content": {"i": i}},
            )
            self.assertEqual(status, 202, body)
        await client.poll("/api/v1/mailboxes/client:m", lambda seen: len(seen) >= 5)
        status, _ = await client.post(
            "/api/v1/messages", {"performative": "inform", "sender": "client:m", "receiver": "nobody"}
        )
        self.assertEqual(status, 202)
        await client.poll("/api/v1/mailboxes/client:m", lambda seen: len(seen) >= 6)
        after = await self.scrape(client)

        def grew(name: str, **labels: str) -> float:
            return _get(after, name, **labels) - _get(before, name, **labels)

        self.assertEqual(grew("caxton_messages_routed_total", where="local"), 5)
        self.assertEqual(grew("caxton_messages_routed_total", where="client"), 6)
        self.assertEqual(grew("caxton_message_latency_seconds_count"), 11)
        self.assertEqual(grew("caxton_messages_failed_total", reason="AGENT_NOT_FOUND"), 1)
        self.assertEqual(
            _get(after, "caxton_api_requests_total", method="POST", route="/api/v1/agents", code="201"), 1
        )
        self.assertEqual(
            _get(after, "caxton_api_requests_total", method="POST", route="/api/v1/messages", code="202"), 6
        )
        self.assertEqual(_get(after, "caxton_agents", state="running"), 1)
        self.assertEqual(_get(after, "caxton_cluster_partition", mode="majority"), 1)
        self.assertGreater(_get(after, "process_resident_memory_bytes"), 0)


class EventStreamTests(_ObservabilityTestCase):
    """
    C{GET /api/v1/events} on a real node.
    """

    async def test_deploy_event(self) -> None:
        """
        A subscribed client keeps its stream past the HTTP idle timeout
        (keep-alives arrive meanwhile) and receives the deploy and the
        removal of an agent; a client resuming from C{Last-Event-ID: 0}
        with a C{types} filter gets only the kind it asked for, from the
        ring.
        """
        _, client = await self.node(env={"CAXTON_HTTP_TIMEOUT": "1s", "CAXTON_EVENTS_KEEPALIVE": "300ms"})
        stream = await self.events(client.url)
        await stream.until(lambda: any(c == ": connected" for _, c in stream.comments), "connected comment")
        opened = stream.comments[0][0]
        await stream.until(
            lambda: [c for t, c in stream.comments if c == ": keepalive" and t - opened > 2.5],
            "keep-alive 2.5 s after the stream opened",
        )
        status, body = await client.deploy("echo", _echo())
        self.assertEqual(status, 201, body)
        await stream.until(lambda: any(e["event"] == "agent.deployed" for e in stream.events), "deploy event")
        [deployed] = [e for e in stream.events if e["event"] == "agent.deployed"]
        data = deployed["data"]
        self.assertEqual((data["type"], data["agent"], data["version"], data["id"]),
                         ("agent.deployed", "echo", 1, deployed["id"]))
        self.assertEqual(data["node"], body["node"])
        self.assertTrue(data["time"].endswith("Z"))
        status, _ = await client.request("DELETE", "/api/v1/agents/echo")
        self.assertEqual(status, 204)
        await stream.until(lambda: any(e["event"] == "agent.removed" for e in stream.events), "removal event")
        resumed = await self.events(
            client.url, "/api/v1/events?types=agent.removed", headers={"Last-Event-ID": "0"}
        )
        await resumed.until(lambda: resumed.events, "replayed event")
        self.assertEqual([e["event"] for e in resumed.events], ["agent.removed"])
        self.assertFalse(stream.ended.called)


class _Twistd(ChildProcess):
    """
    C{twistd -n caxton} in a child process.
    """

    def __init__(self, data_dir: str, args: List[str]) -> None:
        self.data_dir = data_dir
        self.args = args

    async def start(self, timeout: float = 60.0) -> str:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        self._output = _Output()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [
            sys.executable, twistd, "-n", "--pidfile=", "caxton",
            "--data-dir", self.data_dir, "--api", "tcp:0:interface=127.0.0.1", *self.args,
        ]
        self._process = reactor.spawnProcess(self._output, sys.executable, argv, env=env, path=REPO)
        timer = reactor.callLater(timeout, self._output.port.cancel)
        try:
            port = await self._output.port
        except Exception:
            self.kill()
            raise AssertionError(f"twistd did not start:\n{bytes(self._output.output).decode()}")
        finally:
            if timer.active():
                timer.cancel()
        return f"http://127.0.0.1:{port}"


class JSONLogTests(_ObservabilityTestCase):
    """
    C{--log-format json}: every line a node writes is a JSON object.
    """

    def assertJSONLines(self, output: bytes) -> List[Dict[str, Any]]:
        lines = output.decode("utf-8").splitlines()
        self.assertTrue(lines)
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                self.fail(f"not a JSON line: {line!r}\n{output.decode()}")
            self.assertIsInstance(record, dict)
            self.assertIn("log_text", record)
            records.append(record)
        texts = [r["log_text"] for r in records]
        self.assertIn("caxton node ready", texts)
        self.assertIn("caxton node stopped", texts)
        return records

    async def ready(self, url: str) -> None:
        client = Client(url)
        for _ in range(200):
            try:
                if (await client.get("/ready"))[0] == 200:
                    return
            except Exception:
                pass
            await deferLater(reactor, 0.1, lambda: None)
        self.fail("the node never became ready")

    async def test_twist(self) -> None:
        """
        Under C{python -m twisted caxton --log-format json} (stdout and
        stderr read together), including an API request and a graceful
        stop.
        """
        process, client = await self.node(args=["--log-format", "json"])
        self.assertEqual((await client.get("/health"))[0], 200)
        self.assertEqual(await process.stop(signal.SIGTERM), 0)
        self.assertJSONLines(bytes(process._output.output))

    async def test_twistd(self) -> None:
        """
        Under C{twistd -n caxton --log-format json}: twistd's own start-up
        lines are JSON too.
        """
        process = _Twistd(os.path.abspath(self.mktemp()), ["--log-format", "json"])
        self.addCleanup(lambda: ensureDeferred(process.stop(signal.SIGKILL)))
        url = await process.start()
        await self.ready(url)
        self.assertEqual(await process.stop(signal.SIGTERM), 0)
        records = self.assertJSONLines(bytes(process._output.output))
        self.assertTrue(any("starting up" in r["log_text"] for r in records))


class ClusterTests(ClusterTestCase, _ObservabilityTestCase):
    """
    Member events and cluster metrics from a real two-node cluster.
    """

    async def test_member_events_and_metrics(self) -> None:
        """
        A node's member stream announces the node that joins, then, once
        that node is killed, its suspicion and failure; the metrics show
        the members by state, SWIM probes, and the partition mode moving
        from majority to isolated.
        """
        _, c1 = await self.node("n1")
        stream = await self.events(c1.url, "/api/v1/events?types=member.*")
        await stream.until(lambda: any(c == ": connected" for _, c in stream.comments), "connected comment")
        p2, _ = await self.node("n2", join=(await self.gossip_address(c1),))
        await stream.until(
            lambda: any(e["event"] == "member.joined" and e["data"]["member"] == "n2" for e in stream.events),
            "n2 joining",
        )
        joined = [e for e in stream.events if e["event"] == "member.joined"][0]["data"]
        self.assertTrue(joined["address"].startswith("127.0.0.1:"))
        self.assertIsInstance(joined["incarnation"], int)
        found = await self.scrape(c1)
        self.assertEqual(_get(found, "caxton_cluster_members", state="alive"), 2)
        self.assertEqual(_get(found, "caxton_cluster_partition", mode="majority"), 1)
        await p2.stop(signal.SIGKILL)
        await stream.until(
            lambda: any(e["event"] == "member.failed" and e["data"]["member"] == "n2" for e in stream.events),
            "n2 declared failed",
        )
        kinds = [e["event"] for e in stream.events if e["data"]["member"] == "n2"]
        self.assertEqual(kinds[0], "member.joined")
        self.assertLess(kinds.index("member.suspected"), kinds.index("member.failed"))
        found = await self.scrape(c1)
        self.assertEqual(_get(found, "caxton_cluster_members", state="dead"), 1)
        self.assertEqual(_get(found, "caxton_cluster_partition", mode="isolated"), 1)
        self.assertGreater(_get(found, "caxton_swim_probes_total"), 0)
        self.assertGreaterEqual(_get(found, "caxton_swim_suspicions_total"), 1)
        self.assertGreater(_get(found, "caxton_gossip_packets_total", direction="out"), 0)


class BackupTests(_ObservabilityTestCase):
    """
    The backup procedure of docs/operations.md works on a running node.
    """

    async def test_online_backup_and_restore(self) -> None:
        """
        C{VACUUM INTO} on the database of a running node (WAL mode) makes a
        copy that, as the only file of a new data directory, starts a node
        with the agent deployed before the backup, which still answers.
        """
        process, client = await self.node()
        status, _ = await client.deploy("echo", _echo())
        self.assertEqual(status, 201)
        backup = os.path.abspath(self.mktemp()) + ".sqlite3"
        source = sqlite3.connect(os.path.join(process.data_dir, "caxton.sqlite3"))
        try:
            self.assertEqual(source.execute("PRAGMA journal_mode").fetchone()[0], "wal")
            source.execute("VACUUM INTO ?", (backup,))
        finally:
            source.close()
        self.assertEqual(await process.stop(signal.SIGTERM), 0)
        restored_dir = os.path.abspath(self.mktemp())
        os.makedirs(restored_dir)
        shutil.copy(backup, os.path.join(restored_dir, "caxton.sqlite3"))
        restored = NodeProcess(restored_dir)
        self.addCleanup(lambda: ensureDeferred(restored.stop(signal.SIGKILL)))
        again = Client(await restored.start())
        status, body = await again.get("/api/v1/agents/echo")
        self.assertEqual((status, body["status"]), (200, "running"), body)
        status, body = await again.post(
            "/api/v1/agents/echo/invoke", {"content": {"restored": True}, "sender": "client:b"}
        )
        self.assertEqual(status, 200, body)
        self.assertEqual(body["reply"]["content"]["content"], {"restored": True})
