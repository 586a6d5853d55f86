# -*- test-case-name: tests.test_cli_agents -*-
"""
C{caxton agents}: list, show, deploy, update, stop, start and remove a
node's agents through its API (SPEC 7).

Deploys and updates send the module as C{multipart/form-data} (a C{wasm}
file part and a C{spec} JSON part), so a large component is not inflated
by base64.  A C{.wat} file is compiled to a module first, with
C{wasmtime.wat2wasm}.  Components take tens of seconds to compile on the
node: when stderr is a terminal, the upload and then the wait are shown
on one line there.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import uuid
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple
from urllib.parse import quote

from caxton.cli import output
from caxton.cli.errors import CommandError, UsageError
from caxton.cli.http import NodeClient, node_command, node_parent

#: The time limit of a deploy or an update unless C{--timeout} is given:
#: compiling a large component takes tens of seconds on a busy machine.
DEPLOY_TIMEOUT = 600.0

#: How many agents one page of the list asks for (the API's largest).
PAGE = 1000

#: The most pages C{agents list} follows (a million agents).
MAX_PAGES = 1000


def _path(name: str) -> str:
    return "/api/v1/agents/" + quote(name, safe="")


# Reading what the command line names ---------------------------------------------------------


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None


def _checked(parse_name: str, what: str) -> Callable[[str], str]:
    """
    An argparse type that checks a limit with the node's own parser
    (C{caxton.config.parse_size}, ...) and keeps the text as written, for
    the node to read the same way.
    """

    def check(text: str) -> str:
        import caxton.config

        try:
            getattr(caxton.config, parse_name)(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{e}") from None
        return text.strip()

    check.__name__ = what
    return check


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def read_module(path: str) -> Tuple[bytes, str]:
    """
    The module's bytes from C{path}, compiling WAT text to a module; and
    the file name to send.

    @raise UsageError: if the file cannot be read, or is WAT that does not
        compile (nothing is sent to the node).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    name = os.path.basename(path)
    is_binary = data[:4] == b"\0asm"
    if not is_binary and (path.endswith(".wat") or _is_text(data)):
        import wasmtime

        try:
            data = bytes(wasmtime.wat2wasm(data.decode("utf-8")))
        except (UnicodeDecodeError, wasmtime.WasmtimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"{path} is not valid WAT: {first}") from None
        name = os.path.splitext(name)[0] + ".wasm"
    return data, name


def _is_text(data: bytes) -> bool:
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in data[:4096]


def spec_from_args(args: argparse.Namespace, base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """
    The spec fields the command line gives, over those of C{--spec-file}
    (the options win, each field as a whole).

    @raise UsageError: if the spec file cannot be read or is not a JSON
        object.
    """
    spec: Dict[str, Any] = dict(base or {})
    spec_file = getattr(args, "spec_file", None)
    if spec_file:
        try:
            with open(spec_file, "rb") as f:
                loaded = json.loads(f.read())
        except OSError as e:
            raise UsageError(f"cannot read {spec_file}: {e.strerror or e}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"{spec_file} is not valid JSON: {e}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"{spec_file} must hold a JSON object of spec fields")
        spec.update(loaded)
    if getattr(args, "name", None):
        spec["name"] = args.name
    if args.capability:
        spec["capabilities"] = list(args.capability)
    if args.tool:
        spec["tools"] = list(args.tool)
    if args.config is not None:
        spec["config"] = args.config
    limits = {
        key: getattr(args, key)
        for key in ("memory", "fuel", "wall_clock", "max_message", "max_sends")
        if getattr(args, key) is not None
    }
    if limits:
        merged = dict(spec.get("limits") or {}) if isinstance(spec.get("limits"), dict) else {}
        merged.update(limits)
        spec["limits"] = merged
    if getattr(args, "relocatable", False):
        spec["relocatable"] = True
    return spec


def multipart(spec: Dict[str, Any], module: Optional[Tuple[bytes, str]]) -> Tuple[bytes, str]:
    """
    A C{multipart/form-data} body with a C{spec} JSON part and, if given,
    a C{wasm} file part; and its content type.
    """
    spec_bytes = json.dumps(spec).encode("utf-8")
    while True:
        boundary = "caxton-" + uuid.uuid4().hex
        mark = boundary.encode("ascii")
        if mark not in spec_bytes and (module is None or mark not in module[0]):
            break
    parts = [
        b"--" + mark + b"\r\n"
        b'Content-Disposition: form-data; name="spec"\r\n'
        b"Content-Type: application/json\r\n\r\n" + spec_bytes + b"\r\n"
    ]
    if module is not None:
        data, filename = module
        safe = filename.replace('"', "").replace("\r", "").replace("\n", "")
        parts.append(
            b"--" + mark + b"\r\n"
            b'Content-Disposition: form-data; name="wasm"; filename="' + safe.encode("utf-8") + b'"\r\n'
            b"Content-Type: application/wasm\r\n\r\n" + data + b"\r\n"
        )
    parts.append(b"--" + mark + b"--\r\n")
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# Progress ----------------------------------------------------------------------------------------


class Progress:
    """
    One line on a terminal saying how a deploy goes: the bytes uploaded,
    then the time spent waiting for the node to compile and start the
    agent.  Silent unless its stream is a terminal.

    @param stream: where the line goes (stderr).
    @param clock: a reactor, for the once-a-second update and the time.
    @param enabled: whether to show anything (default: C{stream} is a TTY).
    """

    def __init__(self, stream: TextIO, clock: Any, enabled: Optional[bool] = None) -> None:
        self._stream = stream
        self._clock = clock
        if enabled is None:
            isatty = getattr(stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self._what = ""
        self._total = 0
        self._sent = 0
        self._shown = -1.0
        self._waiting_since: Optional[float] = None
        self._timer: Any = None
        self._width = 0

    def start(self, what: str, total: int) -> None:
        """
        Begin the upload of C{total} bytes of C{what}.
        """
        self._what, self._total = what, total
        self._show(f"{what}: uploading 0 B of {output.size(total)}")

    def sent(self, count: int) -> None:
        """
        C{count} more bytes went out; once all have, start the wait.
        """
        self._sent += count
        now = self._clock.seconds()
        if self._sent >= self._total:
            self._wait()
        elif now - self._shown >= 0.1:
            self._shown = now
            percent = 100 * self._sent // max(1, self._total)
            self._show(
                f"{self._what}: uploading {output.size(self._sent)} of {output.size(self._total)} ({percent}%)"
            )

    def _wait(self) -> None:
        if self._waiting_since is not None:
            return
        self._waiting_since = self._clock.seconds()
        self._tick()

    def _tick(self) -> None:
        elapsed = self._clock.seconds() - (self._waiting_since or 0.0)
        self._show(f"{self._what}: uploaded {output.size(self._total)}; the node is compiling… {round(elapsed)}s")
        if self.enabled:
            self._timer = self._clock.callLater(1.0, self._tick)

    def _show(self, line: str) -> None:
        if not self.enabled:
            return
        pad = max(0, self._width - len(line))
        self._stream.write("\r" + line + " " * pad)
        self._stream.flush()
        self._width = len(line)

    def finish(self) -> None:
        """
        The answer came (or the command ends): clear the line.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


class _Counting(io.BytesIO):
    """
    A body that tells L{Progress} how much of it has been read to be sent.
    """

    def __init__(self, data: bytes, progress: Progress) -> None:
        super().__init__(data)
        self._progress = progress

    def read(self, size: Optional[int] = -1) -> bytes:  # type: ignore[override]
        chunk = super().read(size)
        if chunk:
            self._progress.sent(len(chunk))
        return chunk


async def _upload(
    client: NodeClient, method: str, path: str, body: bytes, content_type: str, what: str, err: TextIO
) -> Any:
    from twisted.web.client import FileBodyProducer

    progress = Progress(err, client.reactor)
    progress.start(what, len(body))
    producer = FileBodyProducer(_Counting(body, progress), readSize=64 * 1024)
    timeout = client.settings.timeout or DEPLOY_TIMEOUT
    try:
        return await client.request(
            method, path, data=producer, headers={"content-type": content_type}, timeout=timeout
        )
    finally:
        progress.finish()


# Rendering ---------------------------------------------------------------------------------------


def _local(agent: Dict[str, Any]) -> bool:
    return not agent.get("remote")


def _counter(name: str) -> Callable[[Dict[str, Any]], Any]:
    return lambda agent: (agent.get("counters") or {}).get(name) if _local(agent) else None


def _columns(with_node: bool) -> List[output.Column]:
    columns = [output.Column("name", "name")]
    if with_node:
        columns.append(output.Column("node", "node"))
    columns += [
        output.Column("status", "status"),
        output.Column("version", "version", right=True),
        output.Column("queue", lambda a: (a.get("usage") or {}).get("queue_depth") if _local(a) else None, right=True),
        output.Column("handled", _counter("handled"), right=True),
        output.Column("failed", _counter("failed"), right=True),
        output.Column("capabilities", "capabilities"),
    ]
    return columns


def render_list(agents: List[Dict[str, Any]], by_node: bool = False, filtered: bool = False) -> str:
    """
    The table of C{agents list}; with C{by_node}, one table per node.
    """
    empty = "no agents match" if filtered else "no agents"
    if not by_node or not agents:
        return output.table(agents, _columns(True), empty)
    nodes: Dict[str, List[Dict[str, Any]]] = {}
    for agent in agents:
        nodes.setdefault(str(agent.get("node")), []).append(agent)
    blocks = []
    for node in sorted(nodes):
        count = len(nodes[node])
        blocks.append(
            f"node {node}: {count} agent{'s' if count != 1 else ''}\n"
            + output.table(nodes[node], _columns(False), empty)
        )
    return "\n\n".join(blocks)


def _limits(limits: Dict[str, Any]) -> str:
    parts = []
    if "memory" in limits:
        parts.append(f"memory {output.size(limits['memory'])}")
    if "fuel" in limits:
        parts.append(f"fuel {limits['fuel']:,}" if isinstance(limits["fuel"], int) else f"fuel {limits['fuel']}")
    if "wall_clock" in limits:
        parts.append(f"wall clock {output.duration(limits['wall_clock'])}")
    if "max_message" in limits:
        parts.append(f"max message {output.size(limits['max_message'])}")
    if "max_sends" in limits:
        parts.append(f"max sends {limits['max_sends']}")
    known = {"memory", "fuel", "wall_clock", "max_message", "max_sends"}
    parts += [f"{key} {output.text(value)}" for key, value in sorted(limits.items()) if key not in known]
    return ", ".join(parts) or output.NONE


def render_agent(agent: Dict[str, Any], now: Optional[float] = None) -> str:
    """
    The fields of C{agents show} (and of a deploy's answer).
    """
    pairs: List[Tuple[str, Any]] = [
        ("name", agent.get("name")),
        ("node", agent.get("node")),
        ("status", agent.get("status")),
    ]
    if agent.get("reason"):
        pairs.append(("reason", agent["reason"]))
    if agent.get("status") == "deploying":
        pairs.append(("since", output.when_and_age(agent.get("since"), now)))
        module = agent.get("module") or {}
        pairs.append(("module", output.size(module.get("size"))))
        return output.fields(pairs)
    pairs += [
        ("version", agent.get("version")),
        ("capabilities", agent.get("capabilities")),
    ]
    if agent.get("remote"):
        pairs.append(("remote", f"yes: its limits, usage and counters are on node {agent.get('node')}"))
        return output.fields(pairs)
    module = agent.get("module") or {}
    counters = agent.get("counters") or {}
    usage = agent.get("usage") or {}
    pairs += [
        ("tools", agent.get("tools")),
        ("module", f"{output.size(module.get('size'))}, sha256 {module.get('hash') or output.NONE}"),
        ("limits", _limits(agent.get("limits") or {})),
        ("config", json.dumps(agent.get("config"), ensure_ascii=False) if "config" in agent else None),
        ("created", output.when_and_age(agent.get("created_at"), now)),
        ("updated", output.when_and_age(agent.get("updated_at"), now)),
        ("memory", output.size(usage.get("memory_bytes"))),
        ("queue", usage.get("queue_depth")),
        ("handled", counters.get("handled")),
        ("failed", counters.get("failed")),
        ("traps", counters.get("traps")),
        ("last error", counters.get("last_error")),
    ]
    return output.fields(pairs)



# Commands ------------------------------------------------------------------------------------------


@node_command
async def list_agents(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{agents list}: every page of the cluster's agents.
    """
    agents: List[Dict[str, Any]] = []
    cursor: Optional[str] = None
    for _ in range(MAX_PAGES):
        page = await client.get(
            "/api/v1/agents",
            [
                ("node", args.node),
                ("capability", args.capability),
                ("status", args.status),
                ("limit", PAGE),
                ("cursor", cursor),
            ],
        )
        agents += page.get("agents") or []
        following = page.get("next_cursor")
        if not following or following == cursor:
            break
        cursor = following
    filtered = any(v is not None for v in (args.node, args.capability, args.status))
    output.answer(
        client.settings.json,
        {"agents": agents, "next_cursor": None},
        lambda: render_list(agents, args.by_node, filtered),
        out,
    )
    return 0


@node_command
async def show_agent(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{agents show NAME}.
    """
    agent = await client.get(_path(args.agent))
    output.answer(client.settings.json, agent, lambda: render_agent(agent), out)
    return 0


@node_command
async def deploy(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{agents deploy FILE --name N ...}: 201 and the agent's view.
    """
    spec = spec_from_args(args)
    if not spec.get("name"):
        raise UsageError("agents deploy needs --name (or a name in --spec-file)")
    module = read_module(args.file)
    body, content_type = multipart(spec, module)
    from twisted.internet.defer import CancelledError

    try:
        agent = await _upload(client, "POST", "/api/v1/agents", body, content_type, module[1], err)
    except CancelledError:
        raise CommandError(
            f"interrupted; the node finishes the deploy anyway: see 'caxton agents show {spec['name']}'"
        ) from None
    output.answer(
        client.settings.json,
        agent,
        lambda: f"deployed agent {agent.get('name')} version {agent.get('version')} "
        f"on node {agent.get('node')}: {agent.get('status')}",
        out,
    )
    return 0


@node_command
async def update(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{agents update NAME [FILE] ...}: a new module and/or spec fields.
    """
    spec = spec_from_args(args)
    spec.pop("name", None)
    if args.file is None and not spec:
        raise UsageError("agents update needs a FILE or spec options (--capability, --config, limits, ...)")
    module = read_module(args.file) if args.file is not None else None
    body, content_type = multipart(spec, module)
    what = module[1] if module else "spec"
    from twisted.internet.defer import CancelledError

    try:
        agent = await _upload(client, "PUT", _path(args.agent), body, content_type, what, err)
    except CancelledError:
        raise CommandError(
            f"interrupted; the node finishes the update anyway: see 'caxton agents show {args.agent}'"
        ) from None
    output.answer(
        client.settings.json,
        agent,
        lambda: f"updated agent {agent.get('name')} to version {agent.get('version')}: {agent.get('status')}",
        out,
    )
    return 0


async def _lifecycle(action: str, args: argparse.Namespace, client: NodeClient, out: TextIO) -> int:
    agent = await client.post(_path(args.agent) + "/" + action)
    output.answer(client.settings.json, agent, lambda: f"agent {agent.get('name')}: {agent.get('status')}", out)
    return 0


@node_command
async def stop(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{agents stop NAME}.
    """
    return await _lifecycle("stop", args, client, out)


@node_command
async def start(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{agents start NAME}.
    """
    return await _lifecycle("start", args, client, out)


@node_command
async def remove(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    C{agents remove NAME}: 204, nothing to show but the fact.
    """
    await client.request("DELETE", _path(args.agent))
    output.answer(
        client.settings.json, {"name": args.agent, "removed": True}, lambda: f"removed agent {args.agent}", out
    )
    return 0


# The parser ----------------------------------------------------------------------------------------


def _spec_options(parser: argparse.ArgumentParser, deploying: bool) -> None:
    group = parser.add_argument_group("spec (see docs/agents.md#deploying)")
    if deploying:
        group.add_argument("--name", help="the agent's name (required, unless in --spec-file)")
    group.add_argument(
        "--capability",
        action="append",
        metavar="C",
        help="a capability it offers (repeatable; replaces the list)",
    )
    group.add_argument(
        "--tool", action="append", metavar="T", help="an MCP tool it may call: server/tool, server/*, * (repeatable)"
    )
    group.add_argument("--config", type=_json_value, metavar="JSON", help="its config, any JSON value")
    group.add_argument("--memory", type=_checked("parse_size", "size"), metavar="SIZE", help="memory limit (16MiB)")
    group.add_argument("--fuel", type=_count, metavar="N", help="fuel per message")
    group.add_argument(
        "--wall-clock", type=_checked("parse_duration", "duration"), metavar="DURATION", help="time per message (1s)"
    )
    group.add_argument(
        "--max-message", type=_checked("parse_size", "size"), metavar="SIZE", help="largest message (256KiB)"
    )
    group.add_argument("--max-sends", type=_count, metavar="N", help="sends per message")
    group.add_argument(
        "--spec-file",
        metavar="FILE",
        help="a JSON object of spec fields; the options above replace its fields",
    )
    if deploying:
        group.add_argument(
            "--relocatable",
            action="store_true",
            help="restart the agent on another node of the cluster when its node dies",
        )


def register(subparsers: Any) -> None:
    """
    Add C{agents list|show|deploy|update|stop|start|remove}.
    """
    agents = subparsers.add_parser(
        "agents",
        help="list, deploy and manage agents",
        description="List, deploy, update, stop, start and remove a node's agents.",
    )
    commands = agents.add_subparsers(dest="agents_command", metavar="COMMAND")
    commands.required = True

    listing = commands.add_parser(
        "list",
        parents=[node_parent()],
        help="list the cluster's agents",
        description="List the agents of the whole cluster (every page), sorted by name and node.",
    )
    listing.add_argument("--by-node", action="store_true", help="one table per node")
    listing.add_argument("--node", metavar="N", help="only the agents on node N")
    listing.add_argument("--capability", metavar="C", help="only the agents offering C")
    listing.add_argument(
        "--status", metavar="S", help="only the agents in state S (running, stopped, failed, deploying)"
    )
    listing.set_defaults(handler=list_agents)

    show = commands.add_parser(
        "show", parents=[node_parent()], help="show one agent", description="Show an agent: limits, usage, counters."
    )
    show.add_argument("agent", metavar="NAME")
    show.set_defaults(handler=show_agent)

    dep = commands.add_parser(
        "deploy",
        parents=[node_parent()],
        help="deploy an agent from a .wasm or .wat file",
        description=(
            "Deploy FILE (a core module or component, or WAT text, compiled here) as a new agent. "
            "The node compiles, checks, instantiates and initialises it before answering; a "
            "component can take tens of seconds (the time limit is 10 minutes unless --timeout)."
        ),
    )
    dep.add_argument("file", metavar="FILE")
    _spec_options(dep, deploying=True)
    dep.set_defaults(handler=deploy)

    upd = commands.add_parser(
        "update",
        parents=[node_parent()],
        help="give an agent a new module or spec",
        description=(
            "Update NAME with a new module (FILE) and/or spec fields; the version goes up by one. "
            "Spec fields given replace the current ones, each as a whole."
        ),
    )
    upd.add_argument("agent", metavar="NAME")
    upd.add_argument("file", metavar="FILE", nargs="?")
    _spec_options(upd, deploying=False)
    upd.set_defaults(handler=update)

    for name, handler, text in (
        ("stop", stop, "stop an agent (its messages wait in its queue)"),
        ("start", start, "start a stopped or failed agent"),
        ("remove", remove, "remove an agent"),
    ):
        command = commands.add_parser(name, parents=[node_parent()], help=text, description=text[0].upper() + text[1:] + ".")
        command.add_argument("agent", metavar="NAME")
        command.set_defaults(handler=handler)
