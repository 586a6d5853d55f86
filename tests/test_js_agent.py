"""
The JavaScript example agents (examples/agents/js/, componentize-js) built
from source and driven directly with wasmtime.component.

The harness here stands in for the node: an engine configured as
caxton.agents.runtime configures its own (component model on, fuel and epoch
interruption on, no multi-memory/GC/threads/memory64), a Store per instance
with the node's default per-agent limits, and a component Linker whose
``caxton:agent/host@0.1.0`` instance is four Python functions that record
their calls. The agents are built without any WASI feature, so nothing else
is linked: if a build ever imported WASI again, instantiation would fail
(and the import tests say which interface appeared).
"""

import json
import os

import wasmtime
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from wasmtime import component as wc

from caxton.agents import components
from caxton.agents.runtime import MAX_TABLE_ELEMENTS, WasmRuntime
from caxton.config import load
from tests import jsbuild

HOST = components.HOST_INTERFACE

#: The node's default per-agent limits and its component limits.
_DEFAULTS = load({}, {}, None).agent_defaults
MEMORY_CAP = _DEFAULTS.memory
DEFAULT_FUEL = _DEFAULTS.fuel
TABLE_ELEMENTS = MAX_TABLE_ELEMENTS
MAX_INSTANCES = components.COMPONENT_MAX_INSTANCES
MAX_TABLES = components.COMPONENT_MAX_TABLES
MAX_MEMORIES = components.COMPONENT_MAX_MEMORIES

_runtime = None


def runtime():
    """
    One node runtime for the module: the node's own engine settings, and its
    compiled-artifact cache (next to the build cache), so that a compile
    here is a compile (and a deploy validation) as the node does it.
    """
    global _runtime
    if _runtime is None:
        _runtime = WasmRuntime(cache_dir=os.path.join(jsbuild.cache_dir(), "compiled"))
    return _runtime


def engine():
    """The node's engine."""
    return runtime().engine


def skip_without_node():
    """Skip the calling test when node/npm are missing."""
    if not jsbuild.node_available():
        raise SkipTest("node (>= %d) and npm are needed to build the JS agents"
                       % jsbuild.MIN_NODE_MAJOR)


def compiled(name):
    """
    The compiled component for examples/agents/js/<name>.js, compiled and
    validated by the node's runtime.  Compiling a 12 MB SpiderMonkey
    component takes tens of seconds; the runtime's disk cache keeps it.
    """
    skip_without_node()
    return runtime().compile(jsbuild.js_component(name)).component



def imports_of(component):
    """Names of the component's imports, e.g. ``caxton:agent/host@0.1.0``."""
    return sorted(component.type.imports(engine()))


class Agent:
    """
    One instance of a component agent in a Store of its own, with the host
    interface recording every call in C{calls} as tuples:
    C{("send", message)}, C{("reply", performative, content)},
    C{("log", level, text)}, C{("now-ms",)}.
    """

    NOW_MS = 1_700_000_000_000

    def __init__(self, name, config="{}", memory=MEMORY_CAP):
        self.calls = []
        self.component = compiled(name)
        linker = wc.Linker(engine())
        with linker.root() as root:
            with root.add_instance(HOST) as host:
                host.add_func("send", self._send)
                host.add_func("reply", self._reply)
                host.add_func("log", self._log)
                host.add_func("now-ms", self._now_ms)
        self.store = wasmtime.Store(engine())
        self.store.set_limits(
            memory_size=memory,
            table_elements=TABLE_ELEMENTS,
            instances=MAX_INSTANCES,
            tables=MAX_TABLES,
            memories=MAX_MEMORIES,
        )
        self.store.set_fuel(DEFAULT_FUEL)
        self.store.set_epoch_deadline(1_000_000)
        self.instance = linker.instantiate(self.store, self.component)
        self._handle = self.instance.get_func(self.store, "handle")
        self._init = self.instance.get_func(self.store, "init")
        self.init_result = self._call(self._init, config)

    def _send(self, store, message):
        self.calls.append(("send", message))
        return 0

    def _reply(self, store, performative, content):
        self.calls.append(("reply", performative, content))
        return 0

    def _log(self, store, level, text):
        self.calls.append(("log", level, text))

    def _now_ms(self, store):
        self.calls.append(("now-ms",))
        return self.NOW_MS

    def _call(self, func, arg):
        self.store.set_fuel(DEFAULT_FUEL)
        result = func(self.store, arg)
        func.post_return(self.store)
        self.fuel_used = DEFAULT_FUEL - self.store.get_fuel()
        return result

    def handle(self, message):
        """
        Deliver C{message} (a dict, sent as JSON, or a str as it is); return
        C{None} for C{ok} or the C{err} string, and the host calls it made.
        """
        if not isinstance(message, str):
            message = json.dumps(message)
        self.calls = []
        return self._call(self._handle, message), self.calls

    def replies(self, message):
        """The (performative, parsed content) replies to C{message}; ok expected."""
        result, calls = self.handle(message)
        if result is not None:
            raise AssertionError("handle returned err(%r)" % (result,))
        out = []
        for call in calls:
            if call[0] == "reply":
                out.append((call[1], json.loads(call[2])))
            elif call[0] == "send":
                raise AssertionError("unexpected send: %r" % (call,))
        return out


class ImportTests(SynchronousTestCase):
    """What the built components import and export."""

    def test_echo_imports_only_the_host_interface(self):
        """echo.js imports caxton:agent/host@0.1.0 and nothing else: no WASI at all."""
        self.assertEqual(imports_of(compiled("echo")), [HOST])

    def test_bidder_imports_only_the_host_interface(self):
        """bidder.js imports caxton:agent/host@0.1.0 and nothing else."""
        self.assertEqual(imports_of(compiled("bidder")), [HOST])

    def test_no_http_or_sockets(self):
        """Neither agent imports any wasi:http or wasi:sockets interface."""
        for name in ("echo", "bidder"):
            for imported in imports_of(compiled(name)):
                self.assertFalse(imported.startswith(("wasi:http/", "wasi:sockets/")),
                                 "%s imports %s" % (name, imported))

    def test_host_interface_matches_the_wit(self):
        """The imported host instance has the WIT's four functions and signatures."""
        host = compiled("echo").type.imports(engine())[HOST].ty
        self.assertIsInstance(host, wc.ComponentInstanceType)
        funcs = {name: item.ty for name, item in host.exports(engine()).items()}
        self.assertEqual(sorted(funcs), ["log", "now-ms", "reply", "send"])

        def shape(fty):
            params = [(n, type(t).__name__) for n, t in fty.params]
            result = fty.result
            return params, None if result is None else type(result).__name__

        self.assertEqual(shape(funcs["send"]), ([("message", "String")], "S32"))
        self.assertEqual(shape(funcs["reply"]),
                         ([("performative", "String"), ("content", "String")], "S32"))
        self.assertEqual(shape(funcs["log"]), ([("level", "S32"), ("text", "String")], None))
        self.assertEqual(shape(funcs["now-ms"]), ([], "S64"))

    def test_exports_handle_and_init(self):
        """Both agents export handle(message) and init(config), each returning a result."""
        for name in ("echo", "bidder"):
            exports = {n: e.ty for n, e in compiled(name).type.exports(engine()).items()}
            self.assertEqual(sorted(exports), ["handle", "init"])
            self.assertEqual([n for n, _ in exports["handle"].params], ["message"])
            self.assertEqual([n for n, _ in exports["init"].params], ["config"])
            for fty in exports.values():
                self.assertIsInstance(fty.result, wc.ResultType)
                self.assertIsNone(fty.result.ok)
                self.assertIsInstance(fty.result.err, wc.String)


class EchoTests(SynchronousTestCase):
    """examples/agents/js/echo.js behaves like echo.wat."""

    def test_init_ok(self):
        """init returns ok and calls nothing."""
        agent = Agent("echo", config='{"anything": [1, 2]}')
        self.assertIsNone(agent.init_result)
        self.assertEqual(agent.calls, [])

    def test_replies_inform_with_the_message(self):
        """handle returns ok after one reply: inform, content the whole message."""
        agent = Agent("echo")
        message = {
            "performative": "request",
            "sender": "alice",
            "receiver": "echo",
            "content": {"n": 1, "list": [True, None, 2.5]},
            "conversation_id": "c-1",
            "reply_with": "r-1",
        }
        self.assertEqual(agent.replies(message), [("inform", message)])

    def test_unicode_round_trip(self):
        """Non-ASCII content (accents, CJK, astral emoji) comes back unchanged."""
        agent = Agent("echo")
        message = {"performative": "inform", "sender": "bob", "content": "h\u00e9\u4e16\U0001F600"}
        self.assertEqual(agent.replies(message), [("inform", message)])

    def test_many_messages_one_instance(self):
        """One instance answers message after message, each with its own content."""
        agent = Agent("echo")
        for i in range(20):
            message = {"performative": "request", "sender": "s", "content": i}
            self.assertEqual(agent.replies(message), [("inform", message)])

    def test_large_message_within_memory_cap(self):
        """A 64 KB message is echoed under the node's default 16 MiB memory cap."""
        agent = Agent("echo", memory=MEMORY_CAP)
        message = {"performative": "inform", "sender": "s", "content": "x" * 64_000}
        self.assertEqual(agent.replies(message), [("inform", message)])

    def test_largest_message_needs_32_mib(self):
        """
        Echoing a message of the node's largest size (256 KiB) works with a
        32 MiB memory cap and within the default fuel. (componentize-js
        encodes outgoing strings in interpreted JS: about 2,600 fuel and
        well over 50 bytes of heap per byte sent, so at the default 16 MiB a
        reply above roughly 85 KB fails with err("out of memory").)
        """
        agent = Agent("echo", memory=32 * 1024 * 1024)
        message = {"performative": "inform", "sender": "s", "content": ""}
        message["content"] = "x" * (256 * 1024 - len(json.dumps(message)))
        self.assertEqual(len(json.dumps(message)), 256 * 1024)
        self.assertEqual(agent.replies(message), [("inform", message)])
        self.assertLess(agent.fuel_used, DEFAULT_FUEL)

    def test_large_incoming_message_is_cheap(self):
        """Receiving (not replying with) a 256 KiB message fits the default 16 MiB cap."""
        agent = Agent("bidder", memory=MEMORY_CAP)
        message = {"performative": "cfp", "sender": "m", "content": ""}
        message["content"] = "x" * (256 * 1024 - len(json.dumps(message)))
        self.assertEqual(agent.replies(message), [("propose", {"price": 100})])
        self.assertLess(agent.fuel_used, DEFAULT_FUEL // 10)

    def test_not_json_is_err(self):
        """Text that is not JSON makes handle return err (no trap); the instance goes on."""
        agent = Agent("echo")
        result, calls = agent.handle("not json")
        self.assertIsInstance(result, str)
        self.assertIn("not JSON", result)
        self.assertEqual(calls, [])
        message = {"performative": "request", "sender": "s"}
        self.assertEqual(agent.replies(message), [("inform", message)])

    def test_fuel_per_message(self):
        """Handling a small message costs far less than the node's default fuel."""
        agent = Agent("echo")
        agent.replies({"performative": "request", "sender": "s", "content": "hi"})
        self.assertLess(agent.fuel_used, DEFAULT_FUEL // 100)


class BidderTests(SynchronousTestCase):
    """examples/agents/js/bidder.js behaves like cnp_bidder.wat."""

    def test_default_price(self):
        """With no price in the config, a cfp gets propose {"price": 100}."""
        agent = Agent("bidder", config="{}")
        self.assertIsNone(agent.init_result)
        self.assertEqual(agent.replies({"performative": "cfp", "sender": "m"}),
                         [("propose", {"price": 100})])

    def test_configured_price(self):
        """init {"price": 42}: a cfp gets propose {"price": 42}."""
        agent = Agent("bidder", config='{"price": 42, "other": "ignored"}')
        self.assertIsNone(agent.init_result)
        self.assertEqual(agent.replies({"performative": "cfp", "sender": "m", "content": {}}),
                         [("propose", {"price": 42})])

    def test_accept_informs_done(self):
        """accept-proposal gets inform {"done": true, "price": N}."""
        agent = Agent("bidder", config='{"price": 7}')
        self.assertEqual(agent.replies({"performative": "accept-proposal", "sender": "m"}),
                         [("inform", {"done": True, "price": 7})])

    def test_reply_content_text(self):
        """The reply contents are byte-for-byte what the WAT bidder writes."""
        agent = Agent("bidder", config='{"price": 42}')
        _, calls = agent.handle({"performative": "cfp", "sender": "m"})
        self.assertEqual(calls, [("reply", "propose", '{"price":42}')])
        _, calls = agent.handle({"performative": "accept-proposal", "sender": "m"})
        self.assertEqual(calls, [("reply", "inform", '{"done":true,"price":42}')])
        _, calls = agent.handle({"performative": "request", "sender": "m"})
        self.assertEqual(calls, [("reply", "not-understood", '{"reason":"unexpected"}')])

    def test_reject_is_silent(self):
        """reject-proposal is handled (ok) with no reply."""
        agent = Agent("bidder")
        self.assertEqual(agent.handle({"performative": "reject-proposal", "sender": "m"}),
                         (None, []))

    def test_not_understood_is_silent(self):
        """A not-understood is never answered (no bouncing between agents)."""
        agent = Agent("bidder")
        self.assertEqual(agent.handle({"performative": "not-understood", "sender": "m"}),
                         (None, []))

    def test_node_notices_are_silent(self):
        """Anything unexpected from sender "caxton" (the node) gets no reply."""
        agent = Agent("bidder")
        self.assertEqual(agent.handle({"performative": "failure", "sender": "caxton"}),
                         (None, []))

    def test_unexpected_gets_not_understood(self):
        """Any other performative gets not-understood {"reason": "unexpected"}."""
        agent = Agent("bidder")
        self.assertEqual(agent.replies({"performative": "request", "sender": "m"}),
                         [("not-understood", {"reason": "unexpected"})])

    def test_no_performative_is_err(self):
        """A message without a performative makes handle return err, without replying."""
        agent = Agent("bidder")
        result, calls = agent.handle({"sender": "m"})
        self.assertEqual(result, "message has no performative")
        self.assertEqual(calls, [])

    def test_unusable_config_keeps_default(self):
        """A non-numeric price or a config that is not JSON leaves the price at 100."""
        for config in ('{"price": "cheap"}', "not json", "[1]", "null"):
            agent = Agent("bidder", config=config)
            self.assertIsNone(agent.init_result)
            self.assertEqual(agent.replies({"performative": "cfp", "sender": "m"}),
                             [("propose", {"price": 100})], config)

    def test_fractional_price_truncated(self):
        """Like the WAT bidder, a fraction in the price is dropped: 42.9 -> 42, -7.5 -> -7."""
        for config, price in (('{"price": 42.9}', 42), ('{"price": -7.5}', -7)):
            agent = Agent("bidder", config=config)
            self.assertEqual(agent.replies({"performative": "cfp", "sender": "m"}),
                             [("propose", {"price": price})])

    def test_init_logs_price(self):
        """init logs the price it will bid at debug level through host log."""
        agent = Agent("bidder", config='{"price": 5}')
        self.assertEqual(agent.calls, [("log", 0, "bidder: price 5")])
