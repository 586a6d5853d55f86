"""
The example agents (examples/agents/) and the test agents (tests/agents/),
built from source and driven directly through the Caxton agent ABI with
wasmtime, without a node: a tiny host in this module provides the four
``caxton`` imports, records every call, and feeds messages the way the node
does (caxton_alloc, write, caxton_handle).
"""

import json
import random
import threading
from datetime import datetime, timedelta, timezone

import wasmtime
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.wasmbuild import (
    EXAMPLES,
    TEST_AGENTS,
    c_module,
    example,
    testing_agent,
    wat_module,
    zig_available,
)

I32 = wasmtime.ValType.i32()
I64 = wasmtime.ValType.i64()

NOW = 1_763_805_600_123  # 2025-11-22T10:00:00.123Z
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

ABI_EXPORTS = {
    "caxton_alloc": ([I32], [I32]),
    "caxton_handle": ([I32, I32], [I32]),
    "caxton_init": ([I32, I32], [I32]),
}
ABI_IMPORTS = {
    "send": ([I32, I32], [I32]),
    "reply": ([I32, I32, I32, I32], [I32]),
    "log": ([I32, I32, I32], []),
    "now_ms": ([], [I64]),
}


def compact(obj):
    """A message as the node delivers it: compact JSON, UTF-8."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def rfc3339(ms):
    """Unix milliseconds as RFC 3339 UTC with millisecond precision."""
    d = EPOCH + timedelta(milliseconds=ms)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
        d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond // 1000)


def abi_problems(module):
    """
    What is wrong with *module* as a Caxton core module (empty if nothing):
    the exports the ABI requires, with the right types, and imports only
    from module "caxton" with the ABI's types.
    """
    problems = []
    exports = {e.name: e.type for e in module.exports}
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        problems.append("no memory export")
    for name, (params, results) in ABI_EXPORTS.items():
        ty = exports.get(name)
        if ty is None:
            if name != "caxton_init":
                problems.append("missing export %s" % name)
            continue
        if not isinstance(ty, wasmtime.FuncType) or (
                list(ty.params), list(ty.results)) != (params, results):
            problems.append("export %s has the wrong type" % name)
    for imp in module.imports:
        expected = ABI_IMPORTS.get(imp.name) if imp.module == "caxton" else None
        if expected is None:
            problems.append("import outside the ABI: %s.%s" % (imp.module, imp.name))
        elif not isinstance(imp.type, wasmtime.FuncType) or (
                list(imp.type.params), list(imp.type.results)) != expected:
            problems.append("import caxton.%s has the wrong type" % imp.name)
    return problems


class Agent:
    """
    One instance of an agent module with a recording host.

    ``sent`` holds the raw bytes given to ``send``; ``replies`` holds
    ``(performative, content bytes)`` pairs; ``logs`` holds ``(level, text)``.
    ``clock`` is called for ``now_ms``; ``send_result`` is what ``send``
    returns.
    """

    def __init__(self, wasm, engine=None, store_setup=None, clock=None):
        self.engine = engine or wasmtime.Engine()
        self.store = wasmtime.Store(self.engine)
        if store_setup is not None:
            store_setup(self.store)
        self.module = wasmtime.Module(self.engine, wasm)
        self.sent = []
        self.replies = []
        self.logs = []
        self.send_result = 0
        self.clock = clock or (lambda: NOW)
        linker = wasmtime.Linker(self.engine)
        linker.define_func("caxton", "send", wasmtime.FuncType([I32, I32], [I32]),
                           self._send, access_caller=True)
        linker.define_func("caxton", "reply", wasmtime.FuncType([I32, I32, I32, I32], [I32]),
                           self._reply, access_caller=True)
        linker.define_func("caxton", "log", wasmtime.FuncType([I32, I32, I32], []),
                           self._log, access_caller=True)
        linker.define_func("caxton", "now_ms", wasmtime.FuncType([], [I64]),
                           lambda: self.clock())
        self.instance = linker.instantiate(self.store, self.module)
        exports = self.instance.exports(self.store)
        names = set(exports)
        self.memory = exports["memory"]
        self._alloc = exports["caxton_alloc"]
        self._handle = exports["caxton_handle"]
        self._init = exports["caxton_init"] if "caxton_init" in names else None

    @staticmethod
    def _read(caller, ptr, length):
        return bytes(caller["memory"].read(caller, ptr, ptr + length))

    def _send(self, caller, ptr, length):
        self.sent.append(self._read(caller, ptr, length))
        return self.send_result

    def _reply(self, caller, pptr, plen, cptr, clen):
        self.replies.append((self._read(caller, pptr, plen).decode("utf-8"),
                             self._read(caller, cptr, clen)))
        return 0

    def _log(self, caller, level, ptr, length):
        self.logs.append((level, self._read(caller, ptr, length).decode("utf-8")))

    def _write(self, data):
        if not isinstance(data, (bytes, bytearray)):
            data = compact(data)
        ptr = self._alloc(self.store, len(data))
        self.memory.write(self.store, data, ptr)
        return ptr, len(data)

    def init(self, config):
        """Call caxton_init with *config* (an object or raw bytes)."""
        return self._init(self.store, *self._write(config))

    def handle(self, message):
        """Call caxton_handle with *message* (an object or raw bytes)."""
        return self._handle(self.store, *self._write(message))

    def sent_json(self):
        return [json.loads(m) for m in self.sent]

    def replies_json(self):
        return [(perf, json.loads(content)) for perf, content in self.replies]

    def pages(self):
        return self.memory.size(self.store)


def request(**extra):
    msg = {
        "performative": "request",
        "message_id": "m1",
        "sender": "client:alice",
        "receiver": "agent",
        "conversation_id": "c1",
        "reply_with": "r1",
        "protocol": "fipa-request",
        "content": {"x": 1},
    }
    msg.update(extra)
    return msg


# ---------------------------------------------------------------------------
# Every module is a valid core module


class ModuleShapeTests(SynchronousTestCase):
    """The shape (exports, imports) of every agent module."""

    GOOD_WAT = [
        example("wat", "echo.wat"),
        example("wat", "clock.wat"),
        example("wat", "cnp_bidder.wat"),
        example("wat", "cnp_manager.wat"),
        testing_agent("spin.wat"),
        testing_agent("membomb.wat"),
        testing_agent("badsend.wat"),
        testing_agent("silent.wat"),
        testing_agent("trap.wat"),
        testing_agent("failing.wat"),
        testing_agent("ping.wat"),
    ]

    def module(self, wasm):
        return wasmtime.Module(wasmtime.Engine(), wasm)

    def test_paths(self):
        """EXAMPLES and TEST_AGENTS point at the directories holding the sources."""
        self.assertTrue(EXAMPLES.endswith("examples/agents"))
        self.assertTrue(TEST_AGENTS.endswith("tests/agents"))
        for path in self.GOOD_WAT:
            with open(path):
                pass

    def test_wat_agents_follow_the_abi(self):
        """Every WAT agent meant to deploy exports what the ABI requires and imports only caxton.*."""
        for path in self.GOOD_WAT:
            self.assertEqual(abi_problems(self.module(wat_module(path))), [], path)

    def test_wat_module_is_cached(self):
        """wat_module compiles a file once per process and returns the same bytes."""
        path = example("wat", "echo.wat")
        self.assertIs(wat_module(path), wat_module(path))
        self.assertEqual(wat_module(path)[:4], b"\0asm")

    def test_bad_import(self):
        """bad_import.wat imports wasi_snapshot_preview1.fd_write, which validation must refuse."""
        module = self.module(wat_module(testing_agent("bad_import.wat")))
        imports = [(i.module, i.name) for i in module.imports]
        self.assertEqual(imports, [("wasi_snapshot_preview1", "fd_write")])
        self.assertEqual(abi_problems(module),
                         ["import outside the ABI: wasi_snapshot_preview1.fd_write"])

    def test_no_handle(self):
        """no_handle.wat exports memory and caxton_alloc but lacks caxton_handle."""
        module = self.module(wat_module(testing_agent("no_handle.wat")))
        self.assertEqual(sorted(e.name for e in module.exports), ["caxton_alloc", "memory"])
        self.assertEqual(abi_problems(module), ["missing export caxton_handle"])


# ---------------------------------------------------------------------------
# echo and clock


class EchoMixin:
    def agent(self):
        raise NotImplementedError

    def test_replies_inform_with_the_message(self):
        """echo answers any message with reply("inform", <the message itself>) and returns 0."""
        agent = self.agent()
        msg = compact(request())
        self.assertEqual(agent.handle(msg), 0)
        self.assertEqual(agent.replies, [("inform", msg)])
        self.assertEqual(agent.sent, [])

    def test_many_messages_do_not_leak(self):
        """The bump allocator is reset per message: 2000 messages do not grow memory."""
        agent = self.agent()
        agent.handle(request())
        pages = agent.pages()
        for i in range(2000):
            msg = compact(request(message_id="m%d" % i, content={"i": i}))
            self.assertEqual(agent.handle(msg), 0)
            self.assertEqual(agent.replies[-1], ("inform", msg))
        self.assertEqual(agent.pages(), pages)

    def test_large_message(self):
        """A 200 KiB message (under the 256 KiB default cap) is echoed intact."""
        agent = self.agent()
        msg = compact(request(content={"blob": "x" * (200 * 1024)}))
        self.assertEqual(agent.handle(msg), 0)
        self.assertEqual(agent.replies, [("inform", msg)])


class WatEchoTests(EchoMixin, SynchronousTestCase):
    """examples/agents/wat/echo.wat"""

    def agent(self):
        return Agent(wat_module(example("wat", "echo.wat")))


class ClockTests(SynchronousTestCase):
    """examples/agents/wat/clock.wat"""

    def test_logs_tick_and_replies_now(self):
        """clock logs "tick" at info and replies inform {"now_ms": now_ms()}."""
        agent = Agent(wat_module(example("wat", "clock.wat")))
        self.assertEqual(agent.handle(request()), 0)
        self.assertEqual(agent.logs, [(1, "tick")])
        self.assertEqual(agent.replies_json(), [("inform", {"now_ms": NOW})])

    def test_any_clock_value(self):
        """now_ms values of every size, negative ones included, are written as exact JSON integers."""
        values = [0, 1, 9, 10, -1, -1234, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)]
        it = iter(values)
        agent = Agent(wat_module(example("wat", "clock.wat")), clock=lambda: next(it))
        for value in values:
            agent.handle(request())
            perf, content = agent.replies[-1]
            self.assertEqual(content, b'{"now_ms":%d}' % value)


# ---------------------------------------------------------------------------
# contract-net bidder (WAT and C)


def cnp(performative, content=None, sender="manager", **extra):
    msg = {
        "performative": performative,
        "message_id": "x1",
        "sender": sender,
        "receiver": "bidder",
        "conversation_id": "cnp-1",
        "protocol": "fipa-contract-net",
    }
    if content is not None:
        msg["content"] = content
    msg.update(extra)
    return msg


class BidderMixin:
    def agent(self):
        raise NotImplementedError

    def test_default_price(self):
        """Without caxton_init the bidder proposes the default price 100."""
        agent = self.agent()
        self.assertEqual(agent.handle(cnp("cfp", {"task": "t"})), 0)
        self.assertEqual(agent.replies_json(), [("propose", {"price": 100})])

    def test_configured_price(self):
        """caxton_init {"price": N} sets the price proposed on cfp."""
        agent = self.agent()
        self.assertEqual(agent.init({"price": 42}), 0)
        agent.handle(cnp("cfp", {"task": "t"}))
        self.assertEqual(agent.replies_json(), [("propose", {"price": 42})])

    def test_config_parsing(self):
        """The price is found among other members, with whitespace, and may be negative."""
        agent = self.agent()
        agent.init(b'{ "name" : "b\\"1", "nested": {"price": 5}, "price" : -7 }')
        agent.handle(cnp("cfp"))
        self.assertEqual(agent.replies_json(), [("propose", {"price": -7})])

    def test_bad_config_keeps_default(self):
        """A config without a numeric price (or not an object) leaves the default."""
        for config in [b"{}", b"null", b'{"price":"cheap"}', b""]:
            agent = self.agent()
            self.assertEqual(agent.init(config), 0)
            agent.handle(cnp("cfp"))
            self.assertEqual(agent.replies_json(), [("propose", {"price": 100})], config)

    def test_accept(self):
        """accept-proposal is answered inform {"done":true,"price":N}."""
        agent = self.agent()
        agent.init({"price": 80})
        self.assertEqual(agent.handle(cnp("accept-proposal", {"price": 80})), 0)
        self.assertEqual(agent.replies_json(), [("inform", {"done": True, "price": 80})])

    def test_reject(self):
        """reject-proposal is handled silently."""
        agent = self.agent()
        self.assertEqual(agent.handle(cnp("reject-proposal", {"reason": "price"})), 0)
        self.assertEqual(agent.replies, [])
        self.assertEqual(agent.sent, [])

    def test_unexpected(self):
        """Anything else gets not-understood {"reason":"unexpected"}; performative order in the object does not matter."""
        agent = self.agent()
        msg = b'{"content":{"performative":"cfp"},"sender":"client:alice","performative":"request"}'
        self.assertEqual(agent.handle(msg), 0)
        self.assertEqual(agent.replies_json(), [("not-understood", {"reason": "unexpected"})])

    def test_no_not_understood_loops(self):
        """not-understood and the node's own notices are not answered."""
        agent = self.agent()
        agent.handle(cnp("not-understood", {"reason": "unexpected"}, sender="other"))
        agent.handle(cnp("failure", {"reason": "TIMEOUT"}, sender="caxton"))
        self.assertEqual(agent.replies, [])

    def test_performative_last(self):
        """A cfp whose performative comes after a nested content object is still a cfp."""
        agent = self.agent()
        agent.init({"price": 3})
        msg = b'{"content":{"a":[1,{"b":"}"}],"performative":"x"},"reply_by":"2026-11-22T10:00:00.500Z","performative":"cfp"}'
        agent.handle(msg)
        self.assertEqual(agent.replies_json(), [("propose", {"price": 3})])


class WatBidderTests(BidderMixin, SynchronousTestCase):
    """examples/agents/wat/cnp_bidder.wat"""

    def agent(self):
        return Agent(wat_module(example("wat", "cnp_bidder.wat")))


# ---------------------------------------------------------------------------
# C agents


class CMixin:
    def setUp(self):
        if not zig_available():
            raise SkipTest("ziglang is not installed")


class CModuleTests(CMixin, SynchronousTestCase):
    """The C agents build with the documented command into exact ABI modules."""

    def test_exact_exports_and_imports(self):
        """C echo imports only caxton.reply, C bidder too; both export exactly memory + the 3 ABI functions."""
        for source in ("echo.c", "bidder.c"):
            module = wasmtime.Module(wasmtime.Engine(), c_module(example("c", source)))
            self.assertEqual(abi_problems(module), [], source)
            self.assertEqual([(i.module, i.name) for i in module.imports],
                             [("caxton", "reply")], source)
            self.assertEqual(sorted(e.name for e in module.exports),
                             ["caxton_alloc", "caxton_handle", "caxton_init", "memory"], source)

    def test_c_module_is_cached(self):
        """c_module compiles each source once per process."""
        path = example("c", "echo.c")
        self.assertIs(c_module(path), c_module(path))

    def test_build_error_is_clear(self):
        """A C file that does not compile raises BuildError carrying zig's diagnostics."""
        import os
        import tempfile

        from tests.wasmbuild import BuildError

        with tempfile.TemporaryDirectory() as tmp:
            bad = os.path.join(tmp, "bad.c")
            with open(bad, "w") as f:
                f.write("int caxton_handle(int p, int n) { return nope; }\n")
            e = self.assertRaises(BuildError, c_module, bad)
        self.assertIn("nope", str(e))


class CEchoTests(CMixin, EchoMixin, SynchronousTestCase):
    """examples/agents/c/echo.c behaves like echo.wat."""

    def agent(self):
        return Agent(c_module(example("c", "echo.c")))


class CBidderTests(CMixin, BidderMixin, SynchronousTestCase):
    """examples/agents/c/bidder.c behaves like cnp_bidder.wat."""

    def agent(self):
        return Agent(c_module(example("c", "bidder.c")))


# ---------------------------------------------------------------------------
# contract-net manager


def propose(sender, price, conversation="cnp-1"):
    return cnp("propose", {"price": price}, sender=sender, receiver="manager",
               conversation_id=conversation, in_reply_to="cfp")


def timeout(conversation="cnp-1", missing=("b3",)):
    return cnp("failure", {"reason": "TIMEOUT", "message": "reply_by passed",
                           "missing": list(missing)},
               sender="caxton", receiver="manager", conversation_id=conversation)


class ManagerTests(SynchronousTestCase):
    """examples/agents/wat/cnp_manager.wat"""

    def manager(self, config=None, clock=None):
        agent = Agent(wat_module(example("wat", "cnp_manager.wat")), clock=clock)
        if config is not None:
            self.assertEqual(agent.init(config), 0)
        return agent

    def start(self, agent, **extra):
        """Send the manager a request; return the cfp it sent."""
        self.assertEqual(agent.handle(request(**extra)), 0)
        self.assertEqual(len(agent.sent), 1)
        cfp = agent.sent_json()[0]
        del agent.sent[:]
        return cfp

    def test_cfp(self):
        """A request makes the manager send one cfp to every "bid" agent, without conversation_id."""
        agent = self.manager({"bidders": 3, "deadline_ms": 500})
        cfp = self.start(agent, content={"item": "widget"})
        self.assertEqual(cfp, {
            "performative": "cfp",
            "protocol": "fipa-contract-net",
            "receiver": {"capability": "bid", "all": True},
            "reply_by": rfc3339(NOW + 500),
            "content": {"task": {"item": "widget"}},
        })
        self.assertEqual(agent.replies, [])
        self.assertIn((1, "cfp sent"), agent.logs)

    def test_full_round(self):
        """Three proposals: accept to the cheapest, reject to the others, then inform the requester."""
        agent = self.manager({"bidders": 3, "deadline_ms": 500})
        self.start(agent)
        self.assertEqual(agent.handle(propose("b1", 120)), 0)
        self.assertEqual(agent.handle(propose("b2", 80)), 0)
        self.assertEqual(agent.sent, [], "decided before all bidders answered")
        self.assertEqual(agent.handle(propose("b3", 95)), 0)
        self.assertEqual(agent.sent_json(), [
            {"performative": "accept-proposal", "protocol": "fipa-contract-net",
             "conversation_id": "cnp-1", "receiver": "b2", "content": {"price": 80}},
            {"performative": "reject-proposal", "protocol": "fipa-contract-net",
             "conversation_id": "cnp-1", "receiver": "b1", "content": {"reason": "price"}},
            {"performative": "reject-proposal", "protocol": "fipa-contract-net",
             "conversation_id": "cnp-1", "receiver": "b3", "content": {"reason": "price"}},
        ])
        del agent.sent[:]
        done = cnp("inform", {"done": True, "price": 80}, sender="b2", receiver="manager")
        self.assertEqual(agent.handle(done), 0)
        self.assertEqual(agent.sent_json(), [
            {"performative": "inform", "protocol": "fipa-request", "receiver": "client:alice",
             "conversation_id": "c1", "in_reply_to": "r1",
             "content": {"winner": "b2", "price": 80}},
        ])
        self.assertEqual(agent.replies, [])

    def test_second_round(self):
        """After a round the manager takes the next request and forgets the old bids."""
        agent = self.manager({"bidders": 2})
        self.start(agent)
        agent.handle(propose("b1", 5))
        agent.handle(propose("b2", 6))
        agent.handle(cnp("inform", {"done": True}, sender="b1"))
        del agent.sent[:]
        self.start(agent, conversation_id="c2", reply_with="r2")
        agent.handle(propose("b2", 60, conversation="cnp-2"))
        agent.handle(propose("b3", 50, conversation="cnp-2"))
        sent = agent.sent_json()
        self.assertEqual([(m["performative"], m["receiver"], m["conversation_id"]) for m in sent],
                         [("accept-proposal", "b3", "cnp-2"), ("reject-proposal", "b2", "cnp-2")])
        del agent.sent[:]
        agent.handle(cnp("inform", {"done": True}, sender="b3"))
        final = agent.sent_json()[0]
        self.assertEqual((final["conversation_id"], final["in_reply_to"], final["content"]),
                         ("c2", "r2", {"winner": "b3", "price": 50}))

    def test_refuse_counts(self):
        """A refuse counts as an answer: two proposals and one refuse end the round."""
        agent = self.manager({"bidders": 3})
        self.start(agent)
        agent.handle(propose("b1", 10))
        agent.handle(cnp("refuse", {"reason": "busy"}, sender="b2"))
        agent.handle(propose("b3", 9))
        self.assertEqual([(m["performative"], m["receiver"]) for m in agent.sent_json()],
                         [("accept-proposal", "b3"), ("reject-proposal", "b1")])

    def test_tie_goes_to_the_first(self):
        """With equal prices the first proposer wins."""
        agent = self.manager({"bidders": 2})
        self.start(agent)
        agent.handle(propose("b1", 7))
        agent.handle(propose("b2", 7))
        self.assertEqual([(m["performative"], m["receiver"]) for m in agent.sent_json()],
                         [("accept-proposal", "b1"), ("reject-proposal", "b2")])

    def test_timeout(self):
        """The node's TIMEOUT failure ends the round with the proposals that arrived."""
        agent = self.manager({"bidders": 3, "deadline_ms": 500})
        self.start(agent)
        agent.handle(propose("b1", 120))
        agent.handle(propose("b2", 99))
        self.assertEqual(agent.sent, [])
        self.assertEqual(agent.handle(timeout()), 0)
        self.assertEqual([(m["performative"], m["receiver"], m["content"]) for m in agent.sent_json()],
                         [("accept-proposal", "b2", {"price": 99}),
                          ("reject-proposal", "b1", {"reason": "price"})])
        del agent.sent[:]
        agent.handle(cnp("inform", {"done": True, "price": 99}, sender="b2"))
        self.assertEqual(agent.sent_json()[0]["content"], {"winner": "b2", "price": 99})

    def test_timeout_without_bids(self):
        """A TIMEOUT with no proposal at all sends the requester failure {"reason":"no-bids"}."""
        agent = self.manager()
        self.start(agent)
        agent.handle(cnp("refuse", {}, sender="b1"))
        agent.handle(timeout())
        self.assertEqual(agent.sent_json(), [
            {"performative": "failure", "protocol": "fipa-request", "receiver": "client:alice",
             "conversation_id": "c1", "in_reply_to": "r1", "content": {"reason": "no-bids"}},
        ])
        # the round is over: a new request starts a new one
        del agent.sent[:]
        self.assertEqual(self.start(agent)["performative"], "cfp")

    def test_decides_once(self):
        """Late proposals and a second TIMEOUT after the decision send nothing more."""
        agent = self.manager({"bidders": 2})
        self.start(agent)
        agent.handle(propose("b1", 3))
        agent.handle(timeout())
        self.assertEqual(len(agent.sent), 1)
        agent.handle(propose("b2", 1))
        agent.handle(timeout())
        agent.handle(propose("b3", 0))
        self.assertEqual(len(agent.sent), 1)
        self.assertEqual(agent.sent_json()[0]["receiver"], "b1")

    def test_other_conversation_ignored(self):
        """Answers from another conversation than the cfp's do not count."""
        agent = self.manager({"bidders": 2})
        self.start(agent)
        agent.handle(propose("b1", 10))
        agent.handle(propose("old", 1, conversation="cnp-0"))
        self.assertEqual(agent.sent, [])
        agent.handle(propose("b2", 20))
        self.assertEqual([m["receiver"] for m in agent.sent_json()], ["b1", "b2"])

    def test_no_reply_with(self):
        """Without reply_with in the request, the final inform has no in_reply_to; reply_to is honoured."""
        agent = self.manager({"bidders": 1})
        msg = request(reply_to="client:bob")
        del msg["reply_with"]
        agent.handle(msg)
        agent.handle(propose("b1", 4))
        agent.handle(cnp("inform", {"done": True}, sender="b1"))
        final = agent.sent_json()[-1]
        self.assertNotIn("in_reply_to", final)
        self.assertEqual(final["receiver"], "client:bob")
        self.assertEqual(final["conversation_id"], "c1")

    def test_only_the_winner_informs(self):
        """An inform from someone other than the winner does not finish the round."""
        agent = self.manager({"bidders": 2})
        self.start(agent)
        agent.handle(propose("b1", 1))
        agent.handle(propose("b2", 2))
        del agent.sent[:]
        agent.handle(cnp("inform", {"done": True}, sender="b2"))
        self.assertEqual(agent.sent, [])
        agent.handle(cnp("inform", {"done": True}, sender="b1"))
        self.assertEqual(agent.sent_json()[0]["content"], {"winner": "b1", "price": 1})

    def test_winner_failure(self):
        """A failure from the winner is passed on to the requester as contractor-failed."""
        agent = self.manager({"bidders": 1})
        self.start(agent)
        agent.handle(propose("b1", 1))
        del agent.sent[:]
        agent.handle(cnp("failure", {"reason": "oops"}, sender="b1"))
        self.assertEqual(agent.sent_json(), [
            {"performative": "failure", "protocol": "fipa-request", "receiver": "client:alice",
             "conversation_id": "c1", "in_reply_to": "r1",
             "content": {"reason": "contractor-failed"}},
        ])

    def test_busy(self):
        """A second request during a round is refused with {"reason":"busy"}."""
        agent = self.manager()
        self.start(agent)
        self.assertEqual(agent.handle(request(sender="client:bob")), 0)
        self.assertEqual(agent.sent, [])
        self.assertEqual(agent.replies_json(), [("refuse", {"reason": "busy"})])

    def test_many_bidders(self):
        """With 40 bidders the cheapest wins and the first 32 proposers (minus the winner) are rejected."""
        agent = self.manager({"bidders": 40})
        self.start(agent)
        prices = [(i * 37) % 41 + 10 for i in range(40)]
        for i, price in enumerate(prices):
            agent.handle(propose("bidder-%d" % i, price))
        sent = agent.sent_json()
        best = prices.index(min(prices))
        self.assertEqual(sent[0]["receiver"], "bidder-%d" % best)
        self.assertEqual(sent[0]["content"], {"price": min(prices)})
        self.assertEqual([m["receiver"] for m in sent[1:]],
                         ["bidder-%d" % i for i in range(32) if i != best])

    def test_reply_by_is_now_plus_deadline(self):
        """reply_by parses as RFC 3339 (UTC, ms, Z) and equals now_ms() + deadline_ms."""
        agent = self.manager({"deadline_ms": 1500})
        cfp = self.start(agent)
        reply_by = cfp["reply_by"]
        self.assertRegex(reply_by, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        parsed = datetime.fromisoformat(reply_by.replace("Z", "+00:00"))
        self.assertEqual(parsed, EPOCH + timedelta(milliseconds=NOW + 1500))

    def test_date_algorithm(self):
        """The WAT civil-from-days conversion matches Python for thousands of timestamps, leap days included."""
        day = 86_400_000

        def ms(*args):
            return int((datetime(*args, tzinfo=timezone.utc) - EPOCH).total_seconds() * 1000)

        chosen = [0, -1, 1, 999, 1000, day - 1, day, -day, -day - 1, NOW]
        for year in (1, 4, 100, 400, 1600, 1900, 1969, 1970, 1972, 2000, 2023,
                     2024, 2100, 2400, 9996, 9999):
            for month, dd in ((1, 1), (2, 28), (3, 1), (12, 31)):
                chosen.append(ms(year, month, dd))
                chosen.append(ms(year, month, dd) - 1)
            if year % 4 == 0 and (year % 100 or year % 400 == 0):
                chosen.append(ms(year, 2, 29, 23, 59, 59, 999000))
        chosen.append(ms(9999, 12, 31, 23, 59, 59, 999000))
        rng = random.Random(20261122)
        low, high = ms(1, 1, 1), ms(9999, 12, 31, 23, 59, 59, 999000)
        chosen += [rng.randint(low, high) for _ in range(2000)]
        chosen += [rng.randint(ms(1960, 1, 1), ms(2200, 1, 1)) for _ in range(1000)]
        chosen = [value for value in chosen if value >= low]  # Python's datetime starts at year 1
        self.assertGreater(len(chosen), 3000)

        clock = iter(chosen)
        agent = self.manager({"deadline_ms": 0}, clock=lambda: next(clock))
        for value in chosen:
            cfp = self.start(agent)
            self.assertEqual(cfp["reply_by"], rfc3339(value), value)
            agent.handle(timeout())  # no bids: the round ends, the next one can start
            del agent.sent[:]

    def test_year_zero(self):
        """The proleptic year 0 (before Python's datetime range) is written as 0000."""
        agent = self.manager({"deadline_ms": 0}, clock=lambda: -62_167_219_200_000)
        self.assertEqual(self.start(agent)["reply_by"], "0000-01-01T00:00:00.000Z")

    def test_defaults(self):
        """Without config the manager waits for 3 answers and gives bidders 500 ms."""
        agent = self.manager()
        self.assertEqual(self.start(agent)["reply_by"], rfc3339(NOW + 500))
        agent.handle(propose("b1", 1))
        agent.handle(propose("b2", 2))
        self.assertEqual(agent.sent, [])
        agent.handle(propose("b3", 3))
        self.assertEqual(len(agent.sent), 3)

    def test_send_error(self):
        """If the cfp cannot be sent the requester is told at once (failure cfp-not-sent)."""
        agent = self.manager()
        agent.send_result = -3
        self.assertEqual(agent.handle(request()), 0)
        self.assertEqual(agent.replies_json(), [("failure", {"reason": "cfp-not-sent"})])


# ---------------------------------------------------------------------------
# test-only agents


class TestAgentTests(SynchronousTestCase):
    """The hostile and helper agents under tests/agents/."""

    def test_spin_is_interrupted(self):
        """spin.wat never returns; epoch interruption stops it with an INTERRUPT trap."""
        config = wasmtime.Config()
        config.epoch_interruption = True
        engine = wasmtime.Engine(config)
        agent = Agent(wat_module(testing_agent("spin.wat")), engine=engine,
                      store_setup=lambda store: store.set_epoch_deadline(1))
        stop = threading.Event()

        def tick():
            while not stop.wait(0.01):
                engine.increment_epoch()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            e = self.assertRaises(wasmtime.Trap, agent.handle, request())
        finally:
            stop.set()
            ticker.join()
        self.assertEqual(e.trap_code, wasmtime.TrapCode.INTERRUPT)

    def test_membomb_hits_the_cap(self):
        """membomb.wat grows memory until the 16 MiB store limit refuses, then traps (unreachable)."""
        agent = Agent(wat_module(testing_agent("membomb.wat")),
                      store_setup=lambda store: store.set_limits(memory_size=16 * 1024 * 1024))
        e = self.assertRaises(wasmtime.Trap, agent.handle, request())
        self.assertEqual(e.trap_code, wasmtime.TrapCode.UNREACHABLE)
        self.assertEqual(agent.pages(), 256)

    def test_badsend(self):
        """badsend.wat sends the bytes {not json and still returns 0."""
        agent = Agent(wat_module(testing_agent("badsend.wat")))
        agent.send_result = -1
        self.assertEqual(agent.handle(request()), 0)
        self.assertEqual(agent.sent, [b"{not json"])

    def test_silent(self):
        """silent.wat returns 0 and calls nothing."""
        agent = Agent(wat_module(testing_agent("silent.wat")))
        self.assertEqual(agent.handle(request()), 0)
        self.assertEqual((agent.sent, agent.replies, agent.logs), ([], [], []))

    def test_trap(self):
        """trap.wat traps (unreachable) on every message."""
        agent = Agent(wat_module(testing_agent("trap.wat")))
        for _ in range(2):
            e = self.assertRaises(wasmtime.Trap, agent.handle, request())
            self.assertEqual(e.trap_code, wasmtime.TrapCode.UNREACHABLE)

    def test_failing(self):
        """failing.wat returns 1 (the agent failed the message) without trapping."""
        agent = Agent(wat_module(testing_agent("failing.wat")))
        self.assertEqual(agent.handle(request()), 1)
        self.assertEqual(agent.replies, [])

    def test_ping(self):
        """ping.wat answers request with inform {} and ignores informs, even ones whose content mentions request."""
        agent = Agent(wat_module(testing_agent("ping.wat")))
        self.assertEqual(agent.handle(request()), 0)
        self.assertEqual(agent.replies, [("inform", b"{}")])
        inform = b'{"content":{"performative":"request"},"performative":"inform","sender":"x"}'
        self.assertEqual(agent.handle(inform), 0)
        self.assertEqual(agent.handle(b'{"performative":"requests"}'), 0)
        self.assertEqual(len(agent.replies), 1)
        for _ in range(1000):
            agent.handle(request())
        self.assertEqual(len(agent.replies), 1001)
        self.assertEqual(agent.pages(), 2)

    def test_big_messages_fit(self):
        """The fixed-buffer test agents grow memory for a message larger than their buffer."""
        msg = compact(request(content="y" * (300 * 1024)))
        for name in ("silent.wat", "ping.wat", "failing.wat"):
            agent = Agent(wat_module(testing_agent(name)))
            agent.handle(msg)
            self.assertGreater(agent.pages() * 65536, 65536 + len(msg) - 1, name)
