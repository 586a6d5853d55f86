"""
Integration tests of API keys, roles, rate limits and the audit log
against real C{twist caxton} processes (L{tests.nodes}).

Each test starts its own node on loopback with a fresh data directory and
kills it in cleanup.  Waits are bounded loops.  One test needs a client
that is not on loopback: it makes a network namespace joined to the host
by a veth pair with 10.x addresses, and skips (saying why) where network
namespaces cannot be made.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Dict, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
import treq

from caxton.auth.keys import KeyFile, format_token, parse_token
from tests.nodes import REPO, NodeProcess
from tests.wasmbuild import example, wat_module


async def _call(url: str, method: str = "GET", token: Optional[str] = None, body: Any = None) -> Tuple[int, Dict[str, str], Any]:
    """
    One request: its status, headers (lower-case names, first values) and
    decoded JSON body.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    response = await http.request(method, url, data=data, headers=headers)
    content = await response.content()
    found = {
        name.decode().lower(): values[0].decode()
        for name, values in response.headers.getAllRawHeaders()
    }
    return response.code, found, (json.loads(content) if content else None)


class _Raw(Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.closed: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(self.received)


async def _raw(url: str, payload: bytes) -> bytes:
    """
    Send C{payload} over a plain socket; what came back before the server
    closed the connection (cut after 30 s).
    """
    port = int(url.rsplit(":", 1)[1])
    protocol = _Raw(payload)
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: protocol))
    timer = reactor.callLater(30, protocol.transport.abortConnection)
    received = await protocol.closed
    if timer.active():
        timer.cancel()
    return received


async def _cli(*argv: str, data_dir: str) -> Tuple[int, str, str]:
    """
    Run C{caxton} (C{python -m caxton.cli}) as its own process.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CAXTON_DATA_DIR", None)
    out, err, status = await getProcessOutputAndValue(
        sys.executable, ["-m", "caxton.cli", *argv, "--data-dir", data_dir], env=env, path=REPO
    )
    return status, out.decode(), err.decode()


def _echo_body(name: str) -> Dict[str, Any]:
    return {"name": name, "wasm": base64.b64encode(wat_module(example("wat", "echo.wat"))).decode()}


class _AuthNodeTestCase(unittest.TestCase):
    timeout = 120

    async def node(self, env: Optional[Dict[str, str]] = None, args: Tuple[str, ...] = (),
                   data_dir: Optional[str] = None) -> NodeProcess:
        process = NodeProcess(os.path.abspath(data_dir or self.mktemp()), list(args), env=env)
        self.addCleanup(lambda: ensureDeferred(process.stop(signal.SIGKILL)))
        await process.start()
        return process

    async def until(self, check: Any, what: str, tries: int = 60, pause: float = 0.1) -> Any:
        """
        Call C{check} (a coroutine function) until it gives a true value,
        at most C{tries} times.
        """
        for _ in range(tries):
            result = await check()
            if result:
                return result
            await deferLater(reactor, pause, lambda: None)
        self.fail(f"never: {what}")


class ProtectedModeTests(_AuthNodeTestCase):
    async def test_no_key_loopback_works(self) -> None:
        """
        A node without keys answers loopback clients on every route,
        changes included, with no token.
        """
        node = await self.node()
        status, headers, body = await _call(node.url + "/api/v1/agents")
        self.assertEqual((status, body["agents"]), (200, []))
        self.assertNotIn("x-ratelimit-limit", headers)
        status, _, body = await _call(node.url + "/api/v1/agents", "POST", body=_echo_body("echo"))
        self.assertEqual(status, 201, body)
        status, _, body = await _call(node.url + "/api/v1/audit")
        [change] = [e for e in body["entries"] if e["event"] == "change"]
        self.assertEqual((change["key_id"], change["route"], change["status"]),
                         ("loopback", "/api/v1/agents", 201))


class KeysTests(_AuthNodeTestCase):
    async def test_roles_audit_and_revocation(self) -> None:
        """
        The whole story: the first admin key from loopback; then no token
        401, a wrong token 401 and audited (read as admin), a viewer
        deploying 403, an operator deploying 201, an admin revoking the
        operator's key through the API, and that key then 401.  No secret
        reaches the audit log or the node's log.
        """
        node = await self.node()
        url = node.url
        status, _, body = await _call(url + "/api/v1/keys", "POST", body={"name": "root", "role": "admin"})
        self.assertEqual(status, 201, body)
        admin = body["token"]
        admin_id = parse_token(admin)[0]
        made = {}
        for role in ("viewer", "operator"):
            status, _, body = await _call(url + "/api/v1/keys", "POST", admin, {"name": role, "role": role})
            self.assertEqual(status, 201, body)
            made[role] = body["token"]
        viewer, operator = made["viewer"], made["operator"]

        status, headers, body = await _call(url + "/api/v1/agents")
        self.assertEqual((status, body["error"]["code"]), (401, "UNAUTHORIZED"))
        self.assertTrue(headers["www-authenticate"].startswith("Bearer"))

        # A body announced without a key is refused before it is read.
        answer = await _raw(url, b"POST /api/v1/agents HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 30000000\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer)

        wrong = format_token(admin_id, "W" * 43)
        status, _, body = await _call(url + "/api/v1/agents", token=wrong)
        self.assertEqual((status, body["error"]["code"]), (401, "UNAUTHORIZED"))

        status, headers, body = await _call(url + "/api/v1/agents", "POST", viewer, _echo_body("echo"))
        self.assertEqual((status, body["error"]["code"]), (403, "FORBIDDEN"))
        self.assertIn("x-ratelimit-remaining", headers)

        status, headers, body = await _call(url + "/api/v1/agents", "POST", operator, _echo_body("echo"))
        self.assertEqual(status, 201, body)
        self.assertEqual(body["status"], "running")
        self.assertEqual(headers["x-ratelimit-limit"], "100")

        status, _, body = await _call(url + "/api/v1/audit?limit=100", token=admin)
        self.assertEqual(status, 200, body)
        entries = body["entries"]
        refused = [e for e in entries if e["event"] == "refused"]
        self.assertIn(("wrong secret", admin_id, 401, "/api/v1/agents"),
                      [(e["reason"], e["key_id"], e["status"], e["route"]) for e in refused])
        self.assertIn((parse_token(viewer)[0], "viewer", 403),
                      [(e["key_id"], e["key_name"], e["status"]) for e in refused])
        deploys = [e for e in entries if e["event"] == "change" and e["route"] == "/api/v1/agents"]
        self.assertEqual([(e["key_id"], e["key_name"], e["status"], e["client"]) for e in deploys],
                         [(parse_token(operator)[0], "operator", 201, "127.0.0.1")])

        operator_id = parse_token(operator)[0]
        status, _, body = await _call(url + f"/api/v1/keys/{operator_id}", "DELETE", admin)
        self.assertEqual((status, body["key"]["revoked"]), (200, True))
        status, _, body = await _call(url + "/api/v1/agents", token=operator)
        self.assertEqual((status, body["error"]["code"]), (401, "UNAUTHORIZED"))
        self.assertEqual((await _call(url + "/api/v1/agents", token=viewer))[0], 200)

        status, _, body = await _call(url + "/api/v1/keys", token=admin)
        self.assertEqual({k["name"]: k["revoked"] for k in body["keys"]},
                         {"root": False, "viewer": False, "operator": True})
        with open(os.path.join(node.data_dir, "audit.log")) as f:
            audit_text = f.read()
        with open(os.path.join(node.data_dir, "keys.json")) as f:
            keys_text = f.read()
        for token in (admin, viewer, operator):
            secret = parse_token(token)[1]
            self.assertNotIn(secret, audit_text)
            self.assertNotIn(secret, keys_text)
            self.assertNotIn(secret, node.output)

    async def test_cli_key_on_running_node(self) -> None:
        """
        A key made with C{caxton keys create} on a running node's data
        directory works without a restart (and ends protected mode); one
        revoked with C{caxton keys revoke} stops working.
        """
        node = await self.node()
        self.assertEqual((await _call(node.url + "/api/v1/agents"))[0], 200)
        status, out, err = await _cli("keys", "create", "--name", "ops", "--role", "admin", "--json",
                                      data_dir=node.data_dir)
        self.assertEqual(status, 0, err)
        created = json.loads(out)
        token = created["token"]

        async def refused_without_token() -> bool:
            return (await _call(node.url + "/api/v1/agents"))[0] == 401

        await self.until(refused_without_token, "the node noticed the new key")
        status, _, body = await _call(node.url + "/api/v1/keys", token=token)
        self.assertEqual((status, [k["id"] for k in body["keys"]]), (200, [created["key"]["id"]]))

        status, out, err = await _cli("keys", "create", "--name", "spare", "--role", "viewer", "--json",
                                      data_dir=node.data_dir)
        self.assertEqual(status, 0, err)
        spare = json.loads(out)["token"]
        status, out, err = await _cli("keys", "revoke", created["key"]["id"], data_dir=node.data_dir)
        self.assertEqual(status, 0, err)

        async def revoked() -> bool:
            return (await _call(node.url + "/api/v1/agents", token=token))[0] == 401

        await self.until(revoked, "the node noticed the revocation")
        self.assertEqual((await _call(node.url + "/api/v1/agents", token=spare))[0], 200)


class RateLimitTests(_AuthNodeTestCase):
    async def test_429_while_other_key_unaffected(self) -> None:
        """
        With C{auth.burst} 3 and a slow C{auth.rate_limit}, a key's fourth
        request gets 429 RATE_LIMITED with C{Retry-After}, and another key
        is still served.
        """
        data_dir = os.path.abspath(self.mktemp())
        file = KeyFile.in_data_dir(data_dir)
        _, first = file.create("first", "viewer", 1.0)
        _, second = file.create("second", "viewer", 1.0)
        node = await self.node(env={"CAXTON_AUTH_RATE_LIMIT": "0.05", "CAXTON_AUTH_BURST": "3"},
                               data_dir=data_dir)
        remaining = []
        for _ in range(3):
            status, headers, _ = await _call(node.url + "/api/v1/agents", token=first)
            self.assertEqual(status, 200)
            remaining.append(headers["x-ratelimit-remaining"])
        self.assertEqual(remaining, ["2", "1", "0"])
        status, headers, body = await _call(node.url + "/api/v1/agents", token=first)
        self.assertEqual((status, body["error"]["code"]), (429, "RATE_LIMITED"))
        self.assertGreaterEqual(int(headers["retry-after"]), 1)
        self.assertEqual(headers["x-ratelimit-limit"], "3")
        status, headers, _ = await _call(node.url + "/api/v1/agents", token=second)
        self.assertEqual((status, headers["x-ratelimit-remaining"]), (200, "2"))
        self.assertEqual((await _call(node.url + "/health"))[0], 200)


_CLIENT = """
import json, sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        status, body = response.status, response.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
print(json.dumps({"status": status, "body": json.loads(body)}))
"""


def _ip(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=20)


class RemoteClientTests(_AuthNodeTestCase):
    """
    A client on another address, from a network namespace of its own.
    """

    def setUp(self) -> None:
        n = os.getpid() % 10_000
        self.namespace = f"cxauth{n}"
        host_side, ns_side = f"cxah{n}", f"cxan{n}"
        subnet = f"10.{200 + n % 50}.{n // 50 % 250}"
        self.host_address, self.client_address = f"{subnet}.1", f"{subnet}.2"
        # Left over from a run that was killed before its cleanup.
        _ip("netns", "del", self.namespace)
        _ip("link", "del", host_side)
        made = _ip("netns", "add", self.namespace)
        if made.returncode != 0:
            raise unittest.SkipTest(f"cannot make a network namespace here (ip netns add: {made.stderr.strip()})")
        self.addCleanup(_ip, "netns", "del", self.namespace)
        steps = [
            ("link", "add", host_side, "type", "veth", "peer", "name", ns_side),
            ("link", "set", ns_side, "netns", self.namespace),
            ("addr", "add", f"{self.host_address}/30", "dev", host_side),
            ("link", "set", host_side, "up"),
            ("netns", "exec", self.namespace, "ip", "addr", "add", f"{self.client_address}/30", "dev", ns_side),
            ("netns", "exec", self.namespace, "ip", "link", "set", ns_side, "up"),
            ("netns", "exec", self.namespace, "ip", "link", "set", "lo", "up"),
        ]
        for i, step in enumerate(steps):
            done = _ip(*step)
            if i == 0 and done.returncode == 0:
                # Deleting either end deletes the pair.
                self.addCleanup(_ip, "link", "del", host_side)
            if done.returncode != 0:
                raise unittest.SkipTest(f"cannot set up the veth pair here (ip {' '.join(step)}: {done.stderr.strip()})")

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind((self.host_address, 0))
            return s.getsockname()[1]

    async def remote(self, url: str, token: Optional[str] = None) -> Tuple[int, Any]:
        """
        GET C{url} from inside the namespace (address C{client_address}).
        """
        argv = ["netns", "exec", self.namespace, sys.executable, "-c", _CLIENT, url]
        if token is not None:
            argv.append(token)
        out, err, status = await getProcessOutputAndValue("ip", argv, env=dict(os.environ))
        self.assertEqual(status, 0, err.decode())
        answer = json.loads(out)
        return answer["status"], answer["body"]

    async def test_non_loopback_refused_without_keys(self) -> None:
        """
        With no key, a client from 10.x gets 403 FORBIDDEN saying to make
        a key, while loopback works, public routes stay open, and the
        refusal is audited with the client's address; once a key exists
        the remote client is served with it.
        """
        port = self.free_port()
        node = await self.node(args=("--api", f"tcp:{port}:interface={self.host_address}"))
        remote_url = f"http://{self.host_address}:{port}"
        status, body = await self.remote(remote_url + "/api/v1/agents")
        self.assertEqual((status, body["error"]["code"]), (403, "FORBIDDEN"))
        self.assertIn("caxton keys create", body["error"]["message"])
        self.assertEqual((await self.remote(remote_url + "/health"))[0], 200)
        self.assertEqual((await _call(node.url + "/api/v1/agents"))[0], 200)
        status, _, body = await _call(node.url + "/api/v1/audit")
        [refusal] = [e for e in body["entries"] if e["event"] == "refused"]
        self.assertEqual((refusal["client"], refusal["status"], refusal["route"]),
                         (self.client_address, 403, "/api/v1/agents"))

        status, out, err = await _cli("keys", "create", "--name", "far", "--role", "viewer", "--json",
                                      data_dir=node.data_dir)
        self.assertEqual(status, 0, err)
        token = json.loads(out)["token"]

        async def served() -> bool:
            return (await self.remote(remote_url + "/api/v1/agents", token))[0] == 200

        await self.until(served, "the remote client is served with its key", tries=30, pause=0.2)
        self.assertEqual((await self.remote(remote_url + "/api/v1/agents"))[0], 401)
