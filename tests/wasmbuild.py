"""
Build the example and test agents from source for the test suite.

``wat_module(path)`` turns a ``.wat`` file into module bytes with
``wasmtime.wat2wasm``; ``c_module(path)`` compiles a C agent with zig's clang
(``python -m ziglang cc``, the ``ziglang`` wheel) exactly as
``examples/agents/c/README.md`` documents. Results are cached per process,
keyed by the resolved path.
"""

import os
import subprocess
import sys
import tempfile

import wasmtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples", "agents")
TEST_AGENTS = os.path.join(REPO, "tests", "agents")

# The documented build command for C agents (see examples/agents/c/README.md),
# minus the output and source arguments.
C_FLAGS = [
    "--target=wasm32-freestanding",
    "-nostdlib",
    "-O2",
    "-Wl,--no-entry",
    "-Wl,--export-memory",
    "-Wl,--export=caxton_alloc",
    "-Wl,--export=caxton_handle",
    "-Wl,--export=caxton_init",
]

_wat_cache = {}
_c_cache = {}
_zig = None


class BuildError(Exception):
    """A C agent did not compile; the message carries the compiler output."""


def example(*parts):
    """Path of a file under examples/agents/."""
    return os.path.join(EXAMPLES, *parts)


def testing_agent(*parts):
    """Path of a file under tests/agents/."""
    return os.path.join(TEST_AGENTS, *parts)


def wat_module(path):
    """Bytes of the module written in the WAT file at *path* (cached)."""
    key = os.path.realpath(path)
    if key not in _wat_cache:
        with open(key, encoding="utf-8") as f:
            _wat_cache[key] = bytes(wasmtime.wat2wasm(f.read()))
    return _wat_cache[key]


def zig_available():
    """Is ``python -m ziglang`` usable in this interpreter?"""
    global _zig
    if _zig is None:
        try:
            result = subprocess.run(
                [sys.executable, "-m", "ziglang", "version"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError):
            _zig = False
        else:
            _zig = result.returncode == 0
    return _zig


def c_module(path, extra_flags=()):
    """
    Bytes of the C agent at *path*, compiled to wasm32-freestanding with zig's
    clang (cached per process). Raises BuildError with zig's stderr if the
    compilation fails.
    """
    key = (os.path.realpath(path), tuple(extra_flags))
    if key in _c_cache:
        return _c_cache[key]
    with tempfile.TemporaryDirectory(prefix="caxton-cc-") as tmp:
        out = os.path.join(tmp, "agent.wasm")
        cmd = [sys.executable, "-m", "ziglang", "cc", *C_FLAGS, *extra_flags,
               "-o", out, key[0]]
        env = dict(os.environ)
        # zig keeps a global cache; give it one under the temp dir if HOME is
        # unusable (sandboxes), otherwise let it use its default.
        if not os.access(os.path.expanduser("~"), os.W_OK):
            env.setdefault("ZIG_GLOBAL_CACHE_DIR", os.path.join(tempfile.gettempdir(), "caxton-zig-cache"))
        try:
            result = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=600
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise BuildError("could not run zig for %s: %s" % (path, e)) from e
        if result.returncode != 0:
            raise BuildError(
                "zig cc failed for %s (exit %d):\n%s%s"
                % (path, result.returncode,
                   result.stdout.decode("utf-8", "replace"),
                   result.stderr.decode("utf-8", "replace"))
            )
        with open(out, "rb") as f:
            data = f.read()
    _c_cache[key] = data
    return data
