"""
Build the JavaScript example agents (``examples/agents/js/``) into
WebAssembly components for the test suite, exactly as that directory's
README documents: ``npm ci`` (``npm install`` if there is no lock file),
then ``node build.mjs`` (what ``npm run build`` runs), which uses the pinned
``@bytecodealliance/componentize-js``.

``js_component(name)`` returns the bytes of ``examples/agents/js/<name>.wasm``
built from ``<name>.js``. Builds are cached on disk under the system temp dir
(``caxton-js-cache``), keyed by the hash of the agent's source, ``build.mjs``,
``package.json``, ``package-lock.json`` and the WIT package, so a second run
neither installs nor builds anything. ``npm ci`` runs at most once per lock
file: a stamp in ``node_modules`` records which lock it installed.
``node_available()`` says whether node and npm are there (tests skip when
not).

Several trial workers (``trial -j``) may build at once: installs and builds
are serialised with a lock file in the cache directory.
"""

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JS_DIR = os.path.join(REPO, "examples", "agents", "js")
WIT_DIR = os.path.join(REPO, "wit")

#: The oldest Node.js major version componentize-js 0.23 is used with here.
MIN_NODE_MAJOR = 18

#: Bumped when the build procedure changes in a way the inputs do not show.
_CACHE_VERSION = b"caxton-js-build-1"
_STAMP = ".caxton-lock-sha256"

_node = None
_installed = False
_memory_cache = {}


class BuildError(Exception):
    """An npm install or a JS agent build failed; the message has its output."""


def cache_dir():
    """The on-disk build cache (created private to this user)."""
    path = os.path.join(tempfile.gettempdir(), "caxton-js-cache")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def node_available():
    """
    Are ``node`` (at least MIN_NODE_MAJOR) and ``npm`` on PATH and runnable?
    """
    global _node
    if _node is None:
        _node = _probe_node()
    return _node


def _probe_node():
    if shutil.which("node") is None or shutil.which("npm") is None:
        return False
    try:
        result = subprocess.run(
            ["node", "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return False
    match = re.match(rb"v(\d+)\.", result.stdout.strip())
    return result.returncode == 0 and bool(match) and int(match.group(1)) >= MIN_NODE_MAJOR


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def _wit_bytes():
    parts = []
    for name in sorted(os.listdir(WIT_DIR)):
        if name.endswith(".wit"):
            parts.append(name.encode("utf-8") + b"\0" + _read(os.path.join(WIT_DIR, name)))
    return b"\0\0".join(parts)


def _source_path(name):
    if not re.match(r"^[A-Za-z0-9_-]+$", name):
        raise ValueError("bad JS agent name %r" % (name,))
    return os.path.join(JS_DIR, name + ".js")


def build_key(name):
    """The cache key of agent *name*: a hash of everything its build reads."""
    h = hashlib.sha256(_CACHE_VERSION)
    for part in (
        _read(_source_path(name)),
        _read(os.path.join(JS_DIR, "build.mjs")),
        _read(os.path.join(JS_DIR, "package.json")),
        _read(os.path.join(JS_DIR, "package-lock.json")),
        _wit_bytes(),
    ):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


@contextlib.contextmanager
def _locked():
    """Hold an exclusive lock shared by every process building JS agents."""
    path = os.path.join(cache_dir(), "lock")
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def _env():
    env = dict(os.environ)
    # npm keeps a cache in ~/.npm; give it one under the temp dir when HOME
    # is not writable (sandboxes).
    if not os.access(os.path.expanduser("~"), os.W_OK):
        env.setdefault("npm_config_cache", os.path.join(cache_dir(), "npm-cache"))
    env.setdefault("npm_config_fund", "false")
    env.setdefault("npm_config_audit", "false")
    env.setdefault("npm_config_update_notifier", "false")
    return env


def _run(cmd, what, timeout):
    try:
        result = subprocess.run(
            cmd, cwd=JS_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=_env(), timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError("could not run %s: %s" % (what, e)) from e
    if result.returncode != 0:
        raise BuildError(
            "%s failed (exit %d):\n%s%s"
            % (what, result.returncode,
               result.stdout.decode("utf-8", "replace"),
               result.stderr.decode("utf-8", "replace"))
        )
    return result


def ensure_node_modules():
    """
    Install examples/agents/js's dependencies into its node_modules: ``npm
    ci`` when package-lock.json exists (``npm install`` otherwise), skipped
    when node_modules was already installed from this very lock file. Call
    with the build lock held.
    """
    global _installed
    if _installed:
        return
    lock = _read(os.path.join(JS_DIR, "package-lock.json"))
    want = hashlib.sha256(lock + b"\0" + _read(os.path.join(JS_DIR, "package.json"))).hexdigest()
    stamp = os.path.join(JS_DIR, "node_modules", _STAMP)
    if lock and _read(stamp).decode("ascii", "replace").strip() == want:
        _installed = True
        return
    if lock:
        _run(["npm", "ci", "--no-audit", "--no-fund"], "npm ci", 1800)
    else:
        _run(["npm", "install", "--no-audit", "--no-fund"], "npm install", 1800)
    if lock:
        with open(stamp, "w") as f:
            f.write(want + "\n")
    _installed = True


def js_component(name):
    """
    Bytes of the component built from ``examples/agents/js/<name>.js`` with
    the documented build (cached in memory and on disk). Raises BuildError
    with npm's or node's output when the install or build fails.
    """
    key = build_key(name)
    if key in _memory_cache:
        return _memory_cache[key]
    cached = os.path.join(cache_dir(), "%s-%s.wasm" % (name, key))
    data = _read(cached)
    if not data:
        with _locked():
            data = _read(cached)  # another worker may have built it meanwhile
            if not data:
                if not node_available():
                    raise BuildError("node and npm are needed to build JS agents")
                ensure_node_modules()
                with tempfile.TemporaryDirectory(prefix="caxton-js-") as tmp:
                    _run(["node", "build.mjs", "--out-dir", tmp, name],
                         "node build.mjs %s" % name, 1800)
                    data = _read(os.path.join(tmp, name + ".wasm"))
                if not data:
                    raise BuildError("node build.mjs %s wrote no %s.wasm" % (name, name))
                partial = cached + ".%d.tmp" % os.getpid()
                with open(partial, "wb") as f:
                    f.write(data)
                os.replace(partial, cached)
    _memory_cache[key] = data
    return data
