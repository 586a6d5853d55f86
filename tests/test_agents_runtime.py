"""
Tests for L{caxton.agents.runtime} and L{caxton.agents._fastcall}: the ABI,
its validation, the limits, and the raw C road agreeing with the checked
one.
"""

from __future__ import annotations

import os
import threading
import time

import wasmtime
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caxton.acl.message import decode_message
from caxton.agents import _fastcall
from caxton.agents.executor import ThreadWorkers
from caxton.agents.runtime import InvalidWasm, Limits, SendError, WasmRuntime
from tests.wasmbuild import example, testing_agent, wat_module

LIMITS = Limits(memory=16 * 2**20, fuel=10**9, wall_clock=1.0, max_message=2**16, max_sends=4)
REQUEST = b'{"performative":"request","sender":"client:a","receiver":"x","conversation_id":"c","reply_with":"r","content":7}'

# An agent that calls send with (ptr, len) taken from the message's first
# bytes... simpler: it sends the fixed message at offset 16 of length given
# by the data segment, then an out-of-bounds one, then a huge one, and
# returns 0; each call's result is stored at offsets 0, 4, 8, 12.
SENDER = r"""
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{\"performative\":\"inform\",\"receiver\":\"client:a\",\"content\":1}")
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 4096)
  (func (export "caxton_handle") (param i32 i32) (result i32)
    (i32.store (i32.const 0) (call $send (i32.const 16) (i32.const 59)))
    (i32.store (i32.const 4) (call $send (i32.const 65530) (i32.const 100)))
    (i32.store (i32.const 8) (call $send (i32.const 16) (i32.const 70000)))
    (i32.store (i32.const 12) (call $send (i32.const 16) (i32.const 10)))
    i32.const 0))
"""

LOOPING_SENDER = r"""
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{\"performative\":\"inform\",\"receiver\":\"client:a\",\"content\":1}")
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 4096)
  (func (export "caxton_handle") (param i32 i32) (result i32)
    (local $i i32)
    (loop $again
      (i32.store (i32.const 0) (call $send (i32.const 16) (i32.const 59)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 10))))
    i32.const 0))
"""


def compile_wat(runtime: WasmRuntime, text: str):
    return runtime.compile(wasmtime.wat2wasm(text))


class RoadsTests(SynchronousTestCase):
    """
    The raw C road and the checked road give the same results.
    """

    def test_available(self) -> None:
        """
        The pinned wasmtime has the raw symbols this shim binds.
        """
        self.assertTrue(_fastcall.raw_calls_available)

    def run_echo(self, fast: bool):
        runtime = WasmRuntime(fast=fast)
        compiled = runtime.compile(wat_module(example("wat", "echo.wat")))
        instance = runtime.instantiate(compiled, "echo", LIMITS)
        return instance.deliver(REQUEST, decode_message(REQUEST))

    def test_echo_agrees(self) -> None:
        """
        Echo's reply is the same message on both roads.
        """
        fast, checked = self.run_echo(True), self.run_echo(False)
        self.assertTrue(fast.ok and checked.ok)
        self.assertEqual(fast.sent, checked.sent)
        self.assertEqual(fast.sent[0].performative, "inform")
        self.assertEqual(fast.sent[0].in_reply_to, "r")

    def test_trap_agrees(self) -> None:
        """
        A trap surfaces as the same trap kind on both roads, and the
        instance is flagged for replacement.
        """
        kinds = []
        for fast in (True, False):
            runtime = WasmRuntime(fast=fast)
            instance = runtime.instantiate(
                runtime.compile(wat_module(testing_agent("trap.wat"))), "t", LIMITS
            )
            outcome = instance.deliver(REQUEST, decode_message(REQUEST))
            self.assertTrue(outcome.trapped)
            kinds.append(outcome.trap)
        self.assertEqual(kinds, ["unreachable", "unreachable"])


class HostCallTests(SynchronousTestCase):
    """
    What C{send} answers the guest.
    """

    def test_send_codes(self) -> None:
        """
        A good send returns 0; out-of-bounds, too large and malformed sends
        return their negative codes; only the good one is sent, with the
        agent as sender.
        """
        for fast in (True, False):
            runtime = WasmRuntime(fast=fast)
            instance = runtime.instantiate(compile_wat(runtime, SENDER), "sender", LIMITS)
            outcome = instance.deliver(REQUEST, decode_message(REQUEST))
            codes = [
                int.from_bytes(instance.memory.read(instance.store, i, i + 4), "little", signed=True)
                for i in (0, 4, 8, 12)
            ]
            self.assertEqual(
                codes,
                [SendError.OK, SendError.BAD_POINTER, SendError.TOO_LARGE, SendError.INVALID_MESSAGE],
            )
            self.assertEqual([m.sender for m in outcome.sent], ["sender"])
            self.assertEqual(len(outcome.refused), 1)

    def test_send_limit(self) -> None:
        """
        Past C{max_sends} messages in one handler, send returns SEND_LIMIT.
        """
        runtime = WasmRuntime()
        instance = runtime.instantiate(compile_wat(runtime, LOOPING_SENDER), "flood", LIMITS)
        outcome = instance.deliver(REQUEST, decode_message(REQUEST))
        self.assertEqual(len(outcome.sent), LIMITS.max_sends)
        last = int.from_bytes(instance.memory.read(instance.store, 0, 4), "little", signed=True)
        self.assertEqual(last, SendError.SEND_LIMIT)

    def test_clock_and_log(self) -> None:
        """
        now_ms is the wall clock in ms, and log lines come back with levels.
        """
        runtime = WasmRuntime()
        instance = runtime.instantiate(runtime.compile(wat_module(example("wat", "clock.wat"))), "clock", LIMITS)
        before = int(time.time() * 1000)
        outcome = instance.deliver(REQUEST, decode_message(REQUEST))
        after = int(time.time() * 1000)
        self.assertTrue(before <= outcome.sent[0].content["now_ms"] <= after)
        self.assertEqual([(line.level, line.text) for line in outcome.logs], [(1, "tick")])


class ValidationTests(SynchronousTestCase):
    """
    Deploy-time validation against the ABI.
    """

    def refuse(self, text_or_bytes, reason: str) -> None:
        runtime = WasmRuntime()
        wasm = text_or_bytes if isinstance(text_or_bytes, bytes) else wasmtime.wat2wasm(text_or_bytes)
        with self.assertRaises(InvalidWasm) as caught:
            runtime.compile(wasm)
        self.assertIn(reason, str(caught.exception))

    def test_refusals(self) -> None:
        """
        Each way of not fitting the ABI is refused with its reason.
        """
        self.refuse(b"\0asm\x01\0\0\0garbage", "does not compile")
        self.refuse(b"hello", "no \\0asm header")
        self.refuse('(module (import "env" "f" (func)))', "env.f")
        self.refuse('(module (import "caxton" "send" (func (param i32) (result i32))))', "wrong type")
        self.refuse("(module)", "memory")
        self.refuse('(module (memory (export "memory") 1) (func (export "caxton_alloc") (param i32) (result i32) i32.const 0))', "caxton_handle")
        self.refuse(
            '(module (memory (export "memory") 1) (func (export "caxton_alloc") (result i32) i32.const 0)'
            ' (func (export "caxton_handle") (param i32 i32) (result i32) i32.const 0))',
            "caxton_alloc with the wrong type",
        )

    def test_memory_minimum_over_cap(self) -> None:
        """
        A module whose memory minimum exceeds the agent's cap cannot start.
        """
        runtime = WasmRuntime()
        compiled = runtime.compile(
            wasmtime.wat2wasm(
                '(module (memory (export "memory") 100) (func (export "caxton_alloc") (param i32) (result i32) i32.const 0)'
                ' (func (export "caxton_handle") (param i32 i32) (result i32) i32.const 0))'
            )
        )
        with self.assertRaises(InvalidWasm):
            runtime.instantiate(compiled, "big", Limits(2**20, 10**9, 1.0, 2**16, 10))


class LimitTests(SynchronousTestCase):
    """
    Fuel and wall-clock limits end a spinning guest.
    """

    def test_fuel(self) -> None:
        """
        With little fuel, a spinning handler traps out-of-fuel.
        """
        runtime = WasmRuntime()
        instance = runtime.instantiate(
            runtime.compile(wat_module(testing_agent("spin.wat"))), "spin", Limits(2**20, 10_000, 5.0, 2**16, 1)
        )
        outcome = instance.deliver(REQUEST, decode_message(REQUEST))
        self.assertEqual(outcome.trap, "out-of-fuel")
        self.assertIn("fuel limit", outcome.detail)

    def test_wall_clock(self) -> None:
        """
        With plenty of fuel, the epoch deadline interrupts a spinning
        handler near its wall-clock limit, and the store serves again.
        """
        runtime = WasmRuntime()
        runtime.start()
        self.addCleanup(runtime.stop)
        limits = Limits(2**20, 10**12, 0.1, 2**16, 1)
        instance = runtime.instantiate(runtime.compile(wat_module(testing_agent("spin.wat"))), "spin", limits)
        outcome = instance.deliver(REQUEST, decode_message(REQUEST))
        self.assertEqual(outcome.trap, "interrupt")
        self.assertIn("wall-clock", outcome.detail)


class CacheTests(SynchronousTestCase):
    """
    Compiled artifacts are kept on disk between runtimes.
    """

    def test_artifact_reused(self) -> None:
        """
        A second runtime loads the artifact the first wrote; a corrupt
        artifact is recompiled rather than trusted.
        """
        cache = self.mktemp()
        wasm = wat_module(example("wat", "echo.wat"))
        WasmRuntime(cache_dir=cache).compile(wasm)
        [artifact] = os.listdir(cache)
        self.assertTrue(artifact.endswith(".cwasm"))
        second = WasmRuntime(cache_dir=cache).compile(wasm)
        self.assertEqual(second.module_hash, artifact.split("-")[0])
        with open(os.path.join(cache, artifact), "wb") as f:
            f.write(b"corrupt")
        third = WasmRuntime(cache_dir=cache)
        instance = third.instantiate(third.compile(wasm), "echo", LIMITS)
        self.assertTrue(instance.deliver(REQUEST, decode_message(REQUEST)).ok)


class IsolationTests(TestCase):
    """
    A spinning agent on a worker thread leaves the reactor free.
    """

    async def test_reactor_free_while_agent_spins(self) -> None:
        """
        While an agent spins to its 300 ms wall-clock limit on a worker,
        reactor timers keep firing (at least ten 10 ms ticks), and the
        outcome arrives on the reactor thread.
        """
        runtime = WasmRuntime()
        runtime.start()
        workers = ThreadWorkers(reactor, 1)
        workers.start()
        self.addCleanup(runtime.stop)
        self.addCleanup(workers.stop)
        instance = runtime.instantiate(
            runtime.compile(wat_module(testing_agent("spin.wat"))), "spin", Limits(2**20, 10**12, 0.3, 2**16, 1)
        )
        ticks = []
        from twisted.internet.task import LoopingCall

        ticker = LoopingCall(lambda: ticks.append(time.monotonic()))
        ticker.start(0.01)
        done: Deferred = Deferred()
        workers.schedule(lambda: instance.deliver(REQUEST, decode_message(REQUEST)), done.callback, done.errback)
        outcome = await done
        ticker.stop()
        self.assertEqual(outcome.trap, "interrupt")
        self.assertGreaterEqual(len(ticks), 10)
        self.assertIs(threading.current_thread(), threading.main_thread())


TABLE_BOMB = r"""
(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "caxton_handle") (param i32 i32) (result i32)
    (table.grow $t (ref.null func) (i32.const 20000000))))
"""

# Sends the same 1 MiB message (a small JSON object padded with spaces)
# twenty times, storing the last send's result at offset 0.
BIG_SENDER = r"""
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (memory (export "memory") 20)
  (data (i32.const 16) "{\"performative\":\"inform\",\"receiver\":\"client:a\"}")
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 4096)
  (func (export "caxton_handle") (param i32 i32) (result i32)
    (local $i i32)
    (memory.fill (i32.const 63) (i32.const 32) (i32.const 1048513))
    (loop $again
      (i32.store (i32.const 0) (call $send (i32.const 16) (i32.const 1048560)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 20))))
    i32.const 0))
"""


class ResourceBoundTests(SynchronousTestCase):
    """
    What a guest can take is bounded beyond its linear memory too.
    """

    def test_table_growth_capped(self) -> None:
        """
        table.grow past the table cap fails (returns -1) instead of
        allocating outside the memory cap.
        """
        runtime = WasmRuntime()
        instance = runtime.instantiate(compile_wat(runtime, TABLE_BOMB), "tables", LIMITS)
        outcome = instance.deliver(REQUEST, decode_message(REQUEST))
        self.assertEqual(outcome.detail, "handler returned -1")

    def test_second_memory_refused(self) -> None:
        """
        A module with two memories does not compile on the node's engine.
        """
        runtime = WasmRuntime()
        with self.assertRaises(InvalidWasm):
            runtime.compile(bytes.fromhex("0061736d01000000050501020001000100"))

    def test_send_budget(self) -> None:
        """
        Past SEND_BUDGET bytes in one call, send returns SEND_LIMIT even
        under max_sends: a handler cannot pile up unbounded messages.
        """
        runtime = WasmRuntime()
        limits = Limits(32 * 2**20, 10**10, 10.0, 2 * 2**20, 1000)
        instance = runtime.instantiate(compile_wat(runtime, BIG_SENDER), "big", limits)
        outcome = instance.deliver(REQUEST, decode_message(REQUEST))
        self.assertEqual(len(outcome.sent), 8)
        last = int.from_bytes(instance.memory.read(instance.store, 0, 4), "little", signed=True)
        self.assertEqual(last, SendError.SEND_LIMIT)


class WorkerStopTests(TestCase):
    """
    Stopping the workers is bounded.
    """

    async def test_stuck_worker_does_not_block_stop(self) -> None:
        """
        A worker stuck in a call (here, waiting on an event) does not keep
        stop() from firing once its timeout passes; the thread is left
        behind (a daemon) and freed afterwards.
        """
        workers = ThreadWorkers(reactor, 1)
        workers.start()
        release = threading.Event()
        self.addCleanup(release.set)
        workers.schedule(release.wait, lambda _: None, lambda _: None)
        await workers.stop(timeout=0.2)
        self.assertFalse(release.is_set())
