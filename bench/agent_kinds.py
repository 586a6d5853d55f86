"""
Start time and per-message runtime cost per kind of agent: a core module
(WAT), a Python component (componentize-py) and a JavaScript component
(componentize-js), each the echo example built from source.

For each kind: instantiate + init of an already compiled agent (1,000
starts for core, 100 for components), and AgentInstance.deliver of a small
request (which answers with one reply host call), on a warm instance.
Compiled components are cached under the system temp dir, so only the
first run pays the compile (reported as compile_s).

    python bench/agent_kinds.py
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Dict, List

import _common  # noqa: F401  (puts the repo on sys.path)

from caxton.acl.message import decode_message
from caxton.agents.runtime import Limits, WasmRuntime
from tests import jsbuild
from tests.wasmbuild import example, py_component, wat_module

REQUEST = (
    b'{"performative":"request","message_id":"m1","sender":"client:a","receiver":"echo",'
    b'"conversation_id":"c1","reply_with":"r1","content":{"n":1}}'
)
LIMITS = Limits(memory=16 * 2**20, fuel=10**9, wall_clock=1.0, max_message=256 * 1024, max_sends=1000)


def timed(function: Any, count: int) -> List[float]:
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        function()
        samples.append((time.perf_counter() - t) * 1e6)
    return sorted(samples)


def main() -> None:
    cache = os.path.join(tempfile.gettempdir(), "caxton-bench-compiled")
    runtime = WasmRuntime(cache_dir=cache)
    runtime.start()
    kinds = {
        "core (WAT echo)": (lambda: wat_module(example("wat", "echo.wat")), 1000, 20000),
        "python component (echo)": (lambda: py_component(example("python", "echo")), 100, 2000),
        "javascript component (echo)": (lambda: jsbuild.js_component("echo"), 100, 2000),
    }
    message = decode_message(REQUEST)
    figures: Dict[str, Any] = {}
    try:
        for kind, (build, starts, calls) in kinds.items():
            wasm = build()
            t = time.perf_counter()
            compiled = runtime.compile(wasm)
            compile_s = time.perf_counter() - t
            start_us = timed(lambda: runtime.instantiate(compiled, "echo", LIMITS).run_init(b"null"), starts)
            instance = runtime.instantiate(compiled, "echo", LIMITS)
            instance.run_init(b"null")
            assert instance.deliver(REQUEST, message).ok
            deliver_us = timed(lambda: instance.deliver(REQUEST, message), calls)
            figures[kind] = {
                "size_bytes": len(wasm),
                "compile_s": round(compile_s, 3),
                "start_us": _common.summarize(start_us),
                "deliver_us": _common.summarize(deliver_us),
            }
            start, deliver = figures[kind]["start_us"], figures[kind]["deliver_us"]
            print(
                f"{kind:30s} {len(wasm) / 2**20:6.1f} MiB  compile {compile_s:6.2f} s  "
                f"start p50 {start['p50_us'] / 1000:7.2f} ms p99 {start['p99_us'] / 1000:7.2f} ms  "
                f"deliver p50 {deliver['p50_us']:8.1f} us p99 {deliver['p99_us']:8.1f} us"
            )
    finally:
        runtime.stop()
    _common.emit("agent_kinds", {"limits": LIMITS.__class__.__name__, "cache_dir": "system temp"}, figures)


if __name__ == "__main__":
    main()
