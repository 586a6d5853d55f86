"""
Tests for L{caxton.agents.components}: WebAssembly component agents built
from Python source with componentize-py, run through the runtime and
through a whole L{LocalNode} next to core-module (WAT) agents.

Building a Python component takes tens of seconds and compiling it about as
long; both are cached on disk under the system temp dir (built components
by their sources' hash, compiled artifacts by the runtime's own cache keyed
by the component's hash and the engine's settings), so only the first run
is slow.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from caxton.acl.message import ACLMessage, encode_message, message_to_dict
from caxton.agents import components
from caxton.agents.runtime import InvalidWasm, Limits, WasmRuntime
from tests.localnode import LocalNodeTestCase
from tests.wasmbuild import (
    componentize_py_available,
    example,
    py_component,
    testing_agent,
    wat_module,
)

#: Compiled artifacts shared by these tests and between runs.
ARTIFACTS = os.path.join(tempfile.gettempdir(), "caxton-test-artifacts")

#: Building and compiling a component from scratch on a small machine.
SLOW = 1200


def _require() -> None:
    if not componentize_py_available():
        raise SkipTest("componentize-py is not installed (pip install componentize-py)")


def echo() -> bytes:
    _require()
    return py_component(example("python", "echo"))


def bidder() -> bytes:
    _require()
    return py_component(example("python", "bidder"))


def tester() -> bytes:
    _require()
    return py_component(testing_agent("python", "tester"))


def sneaky() -> bytes:
    _require()
    return py_component(
        testing_agent("python", "sneaky"),
        wit=testing_agent("python", "sneaky", "wit"),
        world="sneaky",
    )


LIMITS = Limits(memory=16 * 1024**2, fuel=1_000_000_000, wall_clock=5.0, max_message=256 * 1024, max_sends=10)


def request(content: Any, **fields: Any) -> ACLMessage:
    fields.setdefault("sender", "client:alice")
    fields.setdefault("receiver", ("py",))
    fields.setdefault("reply_with", "r1")
    return ACLMessage("request", content=content, **fields)


def raw(message: ACLMessage) -> bytes:
    return encode_message(message)


class DetectionTests(SynchronousTestCase):
    """
    Telling components from core modules, and the import policy, without
    building anything.
    """

    def test_mistyped_host_import_refused(self) -> None:
        """
        A component importing a host function with the wrong type is
        refused at compile (so at deploy) with INVALID_WASM naming it,
        rather than failing, with a host exception, on every call.
        """
        runtime = WasmRuntime()
        with self.assertRaises(InvalidWasm) as caught:
            runtime.compile(wat_module(testing_agent("mistyped_host.wat")))
        self.assertIn("caxton:agent/host@0.1.0#now-ms with the wrong type", str(caught.exception))

    def test_is_component(self) -> None:
        """
        A component's preamble has version 0x0d and layer 1; a core
        module's has version 1.
        """
        self.assertTrue(components.is_component(b"\0asm\x0d\x00\x01\x00rest"))
        self.assertFalse(components.is_component(b"\0asm\x01\x00\x00\x00rest"))
        self.assertFalse(components.is_component(wat_module(example("wat", "echo.wat"))))

    def test_import_policy(self) -> None:
        """
        The host interface and WASI 0.2's harmless interfaces are allowed;
        wasi:http, other versions and anything unknown are not.
        """
        for name in (
            "caxton:agent/host@0.1.0",
            "wasi:io/streams@0.2.9",
            "wasi:cli/stdout@0.2.0",
            "wasi:filesystem/preopens@0.2.3",
            "wasi:random/random@0.2.9",
            "wasi:sockets/tcp@0.2.9",
        ):
            self.assertTrue(components.import_allowed(name), name)
        for name in (
            "wasi:http/outgoing-handler@0.2.0",
            "wasi:http/types@0.2.9",
            "wasi:keyvalue/store@0.2.0-draft",
            "wasi:io/streams@0.3.0",
            "wasi:cli/stdout",
            "caxton:agent/host@0.2.0",
            "evil:net/raw@1.0.0",
        ):
            self.assertFalse(components.import_allowed(name), name)


class ComponentRuntimeTests(SynchronousTestCase):
    """
    Python components deployed straight through the runtime.
    """

    timeout = SLOW

    def setUp(self) -> None:
        self.runtime = WasmRuntime(cache_dir=ARTIFACTS)
        self.runtime.start()
        self.addCleanup(self.runtime.stop)

    def instance(self, wasm: bytes, limits: Limits = LIMITS) -> Any:
        compiled = self.runtime.compile(wasm)
        instance = self.runtime.instantiate(compiled, "py", limits)
        init = instance.run_init(b"{}")
        self.assertTrue(init.ok, init.detail)
        return instance

    def test_request_inform(self) -> None:
        """
        The Python echo answers a request with an inform whose content is
        the request, threaded by the host's reply.
        """
        instance = self.instance(echo())
        self.assertEqual(instance.kind, "component")
        message = request({"n": 1})
        outcome = instance.deliver(raw(message), message)
        self.assertTrue(outcome.ok, outcome.detail)
        self.assertFalse(outcome.trapped)
        [reply] = outcome.sent
        self.assertEqual(reply.performative, "inform")
        self.assertEqual(reply.sender, "py")
        self.assertEqual(reply.receiver, ("client:alice",))
        self.assertEqual(reply.in_reply_to, "r1")
        self.assertEqual(reply.content, message_to_dict(message))
        # The instance keeps working, and quacks like a core instance.
        again = instance.deliver(raw(message), message)
        self.assertTrue(again.ok)
        self.assertEqual(instance.memory.data_len(instance.store), 0)

    def test_err_fails_message(self) -> None:
        """
        An C{err} result fails just that message, with its text, without a
        trap: the instance goes on.
        """
        instance = self.instance(tester())
        message = request({"do": "fail"})
        outcome = instance.deliver(raw(message), message)
        self.assertFalse(outcome.ok)
        self.assertFalse(outcome.trapped)
        self.assertEqual(outcome.detail, "not today")
        ok = instance.deliver(raw(request({})), request({}))
        self.assertTrue(ok.ok, ok.detail)

    def test_init_err(self) -> None:
        """
        An C{err} from C{init} fails the start with its text.
        """
        compiled = self.runtime.compile(tester())
        instance = self.runtime.instantiate(compiled, "py", LIMITS)
        outcome = instance.run_init(b'{"refuse": true}')
        self.assertFalse(outcome.ok)
        self.assertEqual(outcome.detail, "refused to start")

    def test_stdout_stderr_log(self) -> None:
        """
        stdout lines become info log lines, stderr lines warnings, in the
        outcome of the call that wrote them; host.log keeps its levels.
        """
        instance = self.instance(tester())
        outcome = instance.deliver(raw(request({"do": "print"})), request({"do": "print"}))
        self.assertTrue(outcome.ok, outcome.detail)
        self.assertEqual(
            [(line.level, line.text) for line in outcome.logs],
            [(1, "hello from stdout"), (2, "hello from stderr")],
        )
        outcome = instance.deliver(raw(request({"do": "log"})), request({"do": "log"}))
        self.assertEqual([(line.level, line.text) for line in outcome.logs], [(i, f"level {i}") for i in range(4)])

    def test_send_and_clock(self) -> None:
        """
        host.send takes a whole message (the node makes the agent its
        sender) and answers -1 for what is not a valid message; now-ms is
        the wall clock.
        """
        instance = self.instance(tester())
        message = request({"do": "send", "to": "client:bob"})
        outcome = instance.deliver(raw(message), message)
        self.assertTrue(outcome.ok, outcome.detail)
        sent, reply = outcome.sent
        self.assertEqual((sent.sender, sent.receiver, sent.content), ("py", ("client:bob",), {"hi": 1}))
        self.assertEqual(reply.content, {"codes": [0, -1, -1]})
        self.assertEqual(len(outcome.refused), 2)
        before = int(time.time() * 1000)
        outcome = instance.deliver(raw(request({"do": "clock"})), request({"do": "clock"}))
        [reply] = outcome.sent
        self.assertLessEqual(abs(reply.content["now_ms"] - before), 5000)

    def test_crash_traps(self) -> None:
        """
        An uncaught exception traps the instance; the traceback is in the
        log.
        """
        instance = self.instance(tester())
        outcome = instance.deliver(raw(request({"do": "crash"})), request({"do": "crash"}))
        self.assertFalse(outcome.ok)
        self.assertTrue(outcome.trapped)
        self.assertEqual(outcome.trap, "unreachable")
        self.assertIn("ValueError: boom", [line.text for line in outcome.logs])

    def test_wall_clock(self) -> None:
        """
        A component spinning forever is stopped by the wall-clock limit
        (epoch interruption), however much fuel it has.
        """
        limits = Limits(memory=16 * 1024**2, fuel=10**15, wall_clock=0.2, max_message=256 * 1024, max_sends=10)
        instance = self.instance(tester(), limits)
        started = time.monotonic()
        outcome = instance.deliver(raw(request({"do": "spin"})), request({"do": "spin"}))
        self.assertLess(time.monotonic() - started, 30)
        self.assertTrue(outcome.trapped)
        self.assertEqual(outcome.trap, "interrupt")
        self.assertEqual(outcome.detail, "wall-clock limit of 0.2s exceeded")

    def test_sleep_refused(self) -> None:
        """
        A component that sleeps (a wait inside the WASI host, where no
        epoch can interrupt it) traps at once instead of holding its worker
        past the wall-clock limit; the node replaces the monotonic clock's
        subscribe functions with ones that refuse.
        """
        limits = Limits(memory=16 * 1024**2, fuel=10**12, wall_clock=1.0, max_message=256 * 1024, max_sends=10)
        instance = self.instance(tester(), limits)
        message = request({"do": "sleep", "s": 60})
        outcome = instance.deliver(raw(message), message)
        self.assertTrue(outcome.trapped)
        self.assertIn("agents cannot sleep", outcome.detail)

    def test_fuel(self) -> None:
        """
        Fuel bounds a component's work per message as it does a module's.
        """
        limits = Limits(memory=16 * 1024**2, fuel=50_000_000, wall_clock=60.0, max_message=256 * 1024, max_sends=10)
        instance = self.instance(tester(), limits)
        outcome = instance.deliver(raw(request({"do": "spin"})), request({"do": "spin"}))
        self.assertTrue(outcome.trapped)
        self.assertEqual(outcome.trap, "out-of-fuel")

    def test_nothing_opened(self) -> None:
        """
        WASI is there with nothing opened: no file system, no environment,
        no arguments.
        """
        instance = self.instance(tester())
        outcome = instance.deliver(raw(request({"do": "sandbox"})), request({"do": "sandbox"}))
        self.assertTrue(outcome.ok, outcome.detail)
        [reply] = outcome.sent
        seen = reply.content
        self.assertIsInstance(seen["/"], str)
        self.assertIn("Error", seen["/"])
        self.assertIsInstance(seen["."], str)
        self.assertEqual(seen["env"], {})
        self.assertEqual(seen["argv"], [])

    def test_refuses_wasi_keyvalue(self) -> None:
        """
        A component importing wasi:keyvalue is refused, naming the import.
        """
        with self.assertRaises(InvalidWasm) as caught:
            self.runtime.compile(sneaky())
        self.assertIn("wasi:keyvalue/store@0.2.0-draft", str(caught.exception))

    def test_artifact_cache(self) -> None:
        """
        A second runtime with the same cache directory loads the compiled
        component from disk instead of compiling it.
        """
        wasm = echo()
        self.runtime.compile(wasm)
        second = WasmRuntime(cache_dir=ARTIFACTS)
        compiled = second.compile(wasm)
        self.assertEqual((second.artifacts_loaded, second.artifacts_compiled), (1, 0))
        self.assertIsInstance(compiled, components.CompiledComponent)
        instance = second.instantiate(compiled, "py", LIMITS)
        message = request({"n": 2})
        self.assertTrue(instance.deliver(raw(message), message).ok)


class ComponentNodeTests(LocalNodeTestCase):
    """
    Python components in a whole node, next to WAT agents: the router, the
    manager and the store treat them alike.
    """

    timeout = SLOW

    def setUp(self) -> None:
        super().setUp()
        self.node.runtime.cache_dir = ARTIFACTS

    def test_request_inform(self) -> None:
        """
        A request to the Python echo comes back as an inform in the
        client's mailbox, in the same conversation.
        """
        self.deploy("pyecho", echo())
        sent = self.send(performative="request", receiver=("pyecho",), content={"n": 1}, reply_with="r1")
        [reply] = self.mailbox()
        self.assertEqual(reply["performative"], "inform")
        self.assertEqual(reply["sender"], "pyecho")
        self.assertEqual(reply["conversation_id"], sent.conversation_id)
        self.assertEqual(reply["in_reply_to"], "r1")
        self.assertEqual(reply["content"]["content"], {"n": 1})

    def test_contract_net_wat_manager_python_bidders(self) -> None:
        """
        The WAT contract-net manager runs a round with Python bidders and a
        WAT bidder: the cheapest wins, whatever it is written in.
        """
        for name, wasm, price in (
            ("b1", bidder(), 30),
            ("b2", bidder(), 10),
            ("b3", wat_module(example("wat", "cnp_bidder.wat")), 20),
        ):
            self.deploy(name, wasm, capabilities=["bid"], config={"price": price})
        self.deploy(
            "manager",
            wat_module(example("wat", "cnp_manager.wat")),
            config={"bidders": 3, "deadline_ms": 5000},
        )
        self.send(performative="request", receiver=("manager",), protocol="fipa-request", content={"task": "t"})
        [result] = self.mailbox()
        self.assertEqual(result["performative"], "inform")
        self.assertEqual(result["content"], {"winner": "b2", "price": 10})

    def test_refused_at_deploy(self) -> None:
        """
        Deploying a component that imports wasi:keyvalue fails with
        L{InvalidWasm} naming the import (the API's INVALID_WASM).
        """
        d = Deferred.fromCoroutine(self.agents.deploy("sneaky", sneaky(), {}))
        self.node.pump()
        failure = self.failureResultOf(d, InvalidWasm)
        self.assertIn("wasi:keyvalue/store@0.2.0-draft", str(failure.value))

    def test_update_between_kinds(self) -> None:
        """
        Messages queued before and after updates from a WAT agent to a
        Python component and back are all answered, in order, each by the
        version current when it ran; the version goes 1, 2, 3.
        """
        silent = wat_module(testing_agent("silent.wat"))
        self.deploy("shifty", silent)
        for i in range(3):
            self.router.send(ACLMessage("request", sender="client:alice", receiver=("shifty",), content=i))
        self.node.pump()
        self.assertEqual(self.mailbox(), [])
        for i in range(3, 6):
            self.router.send(ACLMessage("request", sender="client:alice", receiver=("shifty",), content=i))
        update = Deferred.fromCoroutine(self.agents.update("shifty", echo(), None))
        for i in range(6, 9):
            self.router.send(ACLMessage("request", sender="client:alice", receiver=("shifty",), content=i))
        self.node.pump()
        self.assertEqual(self.successResultOf(update).version, 2)
        answered = [m["content"]["content"] for m in self.mailbox()]
        # 3 was already running on the silent version when the update
        # began; 4-8, still queued, run on the Python echo.
        self.assertEqual(answered, [4, 5, 6, 7, 8])
        update = Deferred.fromCoroutine(self.agents.update("shifty", wat_module(example("wat", "echo.wat")), None))
        self.node.pump()
        self.assertEqual(self.successResultOf(update).version, 3)
        self.send(performative="request", receiver=("shifty",), content=9)
        self.assertEqual(self.mailbox()[-1]["content"]["content"], 9)
        self.assertEqual(self.node.agents.get("shifty").compiled.module_hash, self.node.agents.get("shifty").module_hash)
