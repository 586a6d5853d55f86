"""
Build the example and test agents from source for the test suite.

``wat_module(path)`` turns a ``.wat`` file into module bytes with
``wasmtime.wat2wasm``; ``c_module(path)`` compiles a C agent with zig's clang
(``python -m ziglang cc``, the ``ziglang`` wheel) exactly as
``examples/agents/c/README.md`` documents; ``py_component(directory)``
builds a Python agent (``app.py`` in *directory*) into a WebAssembly
component with componentize-py (the ``componentize-py`` wheel) exactly as
``examples/agents/python/README.md`` documents. Results are cached per
process, keyed by the resolved path; Python components (tens of seconds to
build) are also cached on disk under the system temp dir, keyed by the
sources' hash and componentize-py's version.
"""

import hashlib
import os
import shutil
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
_py_cache = {}
_zig = None
_componentize_py = None

WIT = os.path.join(REPO, "wit")

#: Where built Python components are kept between test runs.
PY_COMPONENT_CACHE = os.path.join(tempfile.gettempdir(), "caxton-py-components")


class BuildError(Exception):
    """An agent did not build; the message carries the tool's output."""


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


def _componentize_py_command():
    """
    How to run componentize-py from this interpreter: its console script
    next to ``sys.executable``, else ``python -m componentize_py``.
    """
    script = os.path.join(os.path.dirname(sys.executable), "componentize-py")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "componentize_py"]


def componentize_py_version():
    """componentize-py's version, or None when it is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version("componentize-py")
    except PackageNotFoundError:
        return None


def componentize_py_available():
    """Can this interpreter run componentize-py?"""
    global _componentize_py
    if _componentize_py is None:
        if componentize_py_version() is None:
            _componentize_py = False
        else:
            try:
                result = subprocess.run(
                    _componentize_py_command() + ["--version"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    timeout=120,
                )
            except (OSError, subprocess.SubprocessError):
                _componentize_py = False
            else:
                _componentize_py = result.returncode == 0
    return _componentize_py


def _tree_files(root):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".pyc", ".wasm")):
                continue
            path = os.path.join(dirpath, name)
            found.append((os.path.relpath(path, root), path))
    return found


def _sources_digest(app_dir, wit, world):
    digest = hashlib.sha256()
    digest.update(("componentize-py %s world %s\n" % (componentize_py_version(), world)).encode())
    for label, root in (("app", app_dir), ("wit", wit)):
        for rel, path in _tree_files(root):
            with open(path, "rb") as f:
                data = f.read()
            digest.update(("%s/%s %d\n" % (label, rel, len(data))).encode())
            digest.update(data)
    return digest.hexdigest()


def py_component(path, wit=WIT, world="agent", app="app"):
    """
    Bytes of the Python agent in directory *path* (module ``app``),
    componentized against *wit* and *world* with componentize-py:

        componentize-py -d <wit> -w <world> componentize app -o <out>

    run in a copy of *path* (componentize-py writes ``__pycache__`` next to
    the sources). Cached per process and on disk (L{PY_COMPONENT_CACHE}).
    Raises BuildError with componentize-py's output if the build fails.
    """
    app_dir = os.path.realpath(path)
    wit = os.path.realpath(wit)
    key = (app_dir, wit, world, app)
    if key in _py_cache:
        return _py_cache[key]
    digest = _sources_digest(app_dir, wit, world)
    cached = os.path.join(PY_COMPONENT_CACHE, digest + ".wasm")
    if os.path.exists(cached):
        with open(cached, "rb") as f:
            data = f.read()
        _py_cache[key] = data
        return data
    if not componentize_py_available():
        raise BuildError("componentize-py is not installed (pip install componentize-py)")
    with tempfile.TemporaryDirectory(prefix="caxton-py-") as tmp:
        src = os.path.join(tmp, "src")
        shutil.copytree(app_dir, src, ignore=shutil.ignore_patterns("__pycache__", "*.wasm"))
        out = os.path.join(tmp, "agent.wasm")
        cmd = _componentize_py_command() + [
            "-d", wit, "-w", world, "componentize", app, "-o", out,
        ]
        try:
            result = subprocess.run(
                cmd, cwd=src, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise BuildError("could not run componentize-py for %s: %s" % (path, e)) from e
        if result.returncode != 0 or not os.path.exists(out):
            raise BuildError(
                "componentize-py failed for %s (exit %d):\n%s%s"
                % (path, result.returncode,
                   result.stdout.decode("utf-8", "replace"),
                   result.stderr.decode("utf-8", "replace"))
            )
        with open(out, "rb") as f:
            data = f.read()
    try:
        os.makedirs(PY_COMPONENT_CACHE, exist_ok=True)
        partial = "%s.%d.tmp" % (cached, os.getpid())
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, cached)
    except OSError:
        pass
    _py_cache[key] = data
    return data
