# -*- test-case-name: tests.test_config -*-
"""
The node's configuration: YAML file, C{CAXTON_*} environment, options.

Every key is declared once in L{KEYS}, with its parser and default.  The
same table reads the YAML file, the environment (C{agents.wall_clock} is
C{CAXTON_AGENTS_WALL_CLOCK}) and the command line, and a bad value anywhere
becomes one L{ConfigError} naming the key and what is wrong.  Precedence:
option > environment > file > default (SPEC 2).
"""

from __future__ import annotations

import math
import os
import re
import socket
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import attr
import yaml


class ConfigError(Exception):
    """
    A configuration value is wrong; C{str()} is the one line to show.
    """


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kib|kb|mib|mb|gib|gb)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """
    C{200ms}, C{1s}, C{5m}, C{2h}, C{7d} (or a bare number of seconds) in
    seconds.
    """
    if isinstance(value, bool):
        raise ValueError("is not a duration (write 200ms, 1s, 5m)")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a duration (write 200ms, 1s, 5m)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a finite time longer than zero")
    return seconds


def parse_size(value: Any) -> int:
    """
    C{256KiB}, C{16MiB}, C{1GB} (or a bare number of bytes) in bytes.
    """
    if isinstance(value, bool):
        raise ValueError("is not a size (write 256KiB, 16MiB)")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a size (write 256KiB, 16MiB)")
        unit = match.group(2).lower() if match.group(2) else None
        size = int(match.group(1)) * _SIZE_UNITS[unit]
    if size <= 0:
        raise ValueError("must be larger than zero")
    return size


def parse_count(value: Any) -> int:
    """
    A whole number of at least 1 (fuel, message counts, workers).
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(f"{value!r} is not a whole number")
    try:
        number = value if isinstance(value, int) else int(str(value).strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number")
    if number <= 0:
        raise ValueError("must be at least 1")
    return number


def parse_rate(value: Any) -> float:
    """
    A number larger than zero, fractions allowed (requests per second).
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value) if isinstance(value, (int, float)) else float(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a number")
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a finite number larger than zero")
    return number


def _string(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        raise ValueError("must be a non-empty string")
    return str(value)


def _node_id(value: Any) -> str:
    text = _string(value)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", text):
        raise ValueError(f"{text!r} is not a node id (letters, digits, '.', '_', '-')")
    return text


def _endpoints(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list):
        items = [_string(v) for v in value]
    else:
        raise ValueError("must be an endpoint string or a list of them")
    if not items:
        raise ValueError("needs at least one endpoint")
    return tuple(items)


def _extra_endpoints(value: Any) -> Tuple[str, ...]:
    # Like _endpoints, but none at all is fine (streams.listen: []).
    if value == [] or (isinstance(value, str) and not value.strip()):
        return ()
    return _endpoints(value)


#: The port SWIM and the node stream use when an address names none.
DEFAULT_CLUSTER_PORT = 7946


def parse_host_port(value: Any, default_port: int = DEFAULT_CLUSTER_PORT) -> Tuple[str, int]:
    """
    C{HOST:PORT}, C{HOST} (the default port) or C{[V6]:PORT} as a pair.
    """
    text = _string(value).strip()
    match = re.match(r"^\[([0-9A-Fa-f:.]+)\](?::(\d+))?$", text) or re.match(
        r"^([^:\s\[\]]+)(?::(\d+))?$", text
    )
    if match is None:
        raise ValueError(f"{text!r} is not HOST:PORT")
    port = int(match.group(2)) if match.group(2) is not None else default_port
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port must be 0-65535")
    return match.group(1), port


def _host_ports(value: Any) -> Tuple[Tuple[str, int], ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list):
        items = [_string(v) for v in value]
    else:
        raise ValueError("must be HOST:PORT, a comma-separated list of them, or a YAML list")
    return tuple(parse_host_port(item) for item in items)


def _advertise(value: Any) -> Tuple[str, int]:
    # Without a port, the port bind gave (0 here; the node fills it in).
    return parse_host_port(value, default_port=0)


def parse_count_or_zero(value: Any) -> int:
    """
    A whole number of at least 0.
    """
    if str(value).strip() == "0" and not isinstance(value, bool):
        return 0
    return parse_count(value)


def parse_duration_or_zero(value: Any) -> float:
    """
    A duration that may also be zero (C{0}, C{0s}).
    """
    if not isinstance(value, bool) and str(value).strip().rstrip("msdh").strip() in ("0", "0.0"):
        return 0.0
    return parse_duration(value)


def parse_bool(value: Any) -> bool:
    """
    C{true}/C{false} (also C{yes}/C{no}, C{on}/C{off}, C{1}/C{0}).
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _string(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _cluster_name(value: Any) -> str:
    text = _string(value)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", text):
        raise ValueError(f"{text!r} is not a cluster name (letters, digits, '.', '_', '-')")
    return text


_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _mcp_servers(value: Any) -> Tuple[Tuple[str, str, Optional[str]], ...]:
    """
    MCP servers as C{(name, url, token_file)}: a YAML list of mappings with
    C{name}, C{url} and optionally C{token_file}, or (in the environment)
    C{name=url,name=url}.
    """
    if isinstance(value, str):
        items: list = []
        for part in (p.strip() for p in value.split(",") if p.strip()):
            name, sep, url = part.partition("=")
            if not sep:
                raise ValueError(f"{part!r} is not name=url")
            items.append({"name": name.strip(), "url": url.strip()})
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError("must be a list of {name, url, token_file} mappings")
    servers = []
    seen = set()
    for item in items:
        if not isinstance(item, dict) or set(item) - {"name", "url", "token_file"}:
            raise ValueError("each server is a mapping of name, url and optionally token_file")
        name, url, token_file = item.get("name"), item.get("url"), item.get("token_file")
        if not isinstance(name, str) or not _SERVER_NAME.match(name):
            raise ValueError(f"server name {name!r} must be letters, digits, '.', '_' or '-'")
        if name in seen:
            raise ValueError(f"server {name!r} is listed twice")
        seen.add(name)
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
            raise ValueError(f"server {name}: url must be an http:// or https:// URL")
        if token_file is not None and not isinstance(token_file, str):
            raise ValueError(f"server {name}: token_file must be a path")
        servers.append((name, url, token_file))
    return tuple(servers)


def default_node_id(hostname: str) -> str:
    """
    A node id made from a host name: its first label, with anything a node
    id may not hold replaced by C{-}; C{caxton} if nothing is left.
    """
    label = re.sub(r"[^A-Za-z0-9._-]", "-", hostname.split(".")[0]).strip("-._")[:63]
    return label or "caxton"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Key:
    """
    One configuration key.

    @ivar path: dotted path in the YAML file (C{agents.wall_clock}).
    @ivar parse: turns a raw value into the typed one or raises ValueError.
    @ivar default: the typed default, or a callable returning it.
    """

    path: str
    parse: Callable[[Any], Any]
    default: Any

    @property
    def env(self) -> str:
        """
        The environment variable that sets this key.
        """
        return "CAXTON_" + self.path.replace(".", "_").upper()


KEYS: Tuple[Key, ...] = (
    Key("node_id", _node_id, lambda: default_node_id(socket.gethostname())),
    Key("data_dir", _string, "./caxton-data"),
    Key("api", _endpoints, ("tcp:8080:interface=127.0.0.1",)),
    Key("shutdown_grace", parse_duration, 10.0),
    Key("http.max_body", parse_size, 32 * 1024**2),
    Key("http.timeout", parse_duration, 60.0),
    Key("http.invoke_timeout", parse_duration, 30.0),
    Key("http.max_wait", parse_duration, 60.0),
    Key("agents.memory", parse_size, 16 * 1024**2),
    Key("agents.fuel", parse_count, 1_000_000_000),
    Key("agents.wall_clock", parse_duration, 1.0),
    Key("agents.max_message", parse_size, 256 * 1024),
    Key("agents.max_sends", parse_count, 1000),
    Key("agents.max_traps", parse_count, 5),
    Key("agents.trap_window", parse_duration, 60.0),
    Key("agents.workers", parse_count, 4),
    Key("agents.max_queue", parse_count, 10_000),
    Key("conversations.max_messages", parse_count, 1000),
    Key("conversations.retention", parse_duration, 7 * 86400.0),
    Key("dead_letters.max", parse_count, 100_000),
    # The cluster (SPEC 5).  Without a bind address the node runs alone.
    Key("bind", parse_host_port, None),
    Key("advertise", _advertise, None),
    Key("tls_dir", _string, None),
    Key("gossip.seeds", _host_ports, ()),
    Key("gossip.cluster", _cluster_name, "caxton"),
    Key("gossip.key_file", _string, None),
    Key("gossip.profile", _one_of("lan", "wan", "local"), "lan"),
    Key("gossip.join_retry_max", parse_duration, 30.0),
    # Every SWIM knob; unset means the profile's value (docs/cluster.md).
    Key("gossip.probe_interval", parse_duration, None),
    Key("gossip.probe_timeout", parse_duration, None),
    Key("gossip.indirect_checks", parse_count_or_zero, None),
    Key("gossip.retransmit_mult", parse_count, None),
    Key("gossip.suspicion_mult", parse_count, None),
    Key("gossip.suspicion_max_timeout_mult", parse_count, None),
    Key("gossip.push_pull_interval", parse_duration, None),
    Key("gossip.gossip_interval", parse_duration, None),
    Key("gossip.gossip_nodes", parse_count_or_zero, None),
    Key("gossip.gossip_to_the_dead_time", parse_duration, None),
    Key("gossip.awareness_max_multiplier", parse_count, None),
    Key("gossip.dead_node_reclaim_time", parse_duration_or_zero, None),
    Key("gossip.tcp_timeout", parse_duration, None),
    Key("gossip.lifeguard", parse_bool, None),
    Key("gossip.fast_fail_refused", parse_bool, None),
    Key("gossip.stream_ping", parse_bool, None),
    Key("gossip.lag_threshold", parse_duration, None),
    Key("gossip.reconnect_interval", parse_duration, None),
    Key("gossip.reconnect_timeout", parse_duration_or_zero, None),
    Key("gossip.max_packet", parse_size, None),
    # Messages between nodes and partitions (SPEC 5.4, docs/cluster.md).
    Key("cluster.queue_ttl", parse_duration, 3600.0),
    Key("cluster.max_queue", parse_count, 10_000),
    Key("cluster.lookup_timeout", parse_duration, 1.0),
    Key("cluster.bootstrap_expect", parse_count_or_zero, 0),
    # Slow clients, rate limits and the audit log (SPEC 6, docs/security.md).
    Key("http.request_timeout", parse_duration, 30.0),
    Key("http.min_body_rate", parse_size, 64 * 1024),
    Key("http.max_connections_per_client", parse_count, 32),
    Key("auth.rate_limit", parse_rate, 50.0),
    Key("auth.burst", parse_count, 100),
    Key("audit.max_size", parse_size, 16 * 1024**2),
    # MCP servers agents may use (SPEC 8, docs/tools.md).
    Key("mcp.servers", _mcp_servers, ()),
    Key("mcp.timeout", parse_duration, 30.0),
    # Observability (SPEC 10, docs/operations.md).  No log.format: the
    # runner's default (text; twist: JSON lines when not on a terminal).
    Key("log.format", _one_of("text", "json"), None),
    Key("events.buffer", parse_count, 1000),
    Key("events.max_subscribers", parse_count, 64),
    Key("events.max_pending", parse_size, 1024**2),
    Key("events.keepalive", parse_duration, 15.0),
    # Tor (SPEC 9, docs/tor.md): onion services and onion seeds.
    Key("streams.listen", _extra_endpoints, ()),
    Key("tor.control", _string, None),
    Key("tor.socks", _string, None),
    Key("tor.binary", _string, None),
    Key("tor.torrc", _string, None),
    Key("tor.timeout", parse_duration, 120.0),
)

#: The C{gossip.*} keys that are SWIM knobs, named as in
#: L{caxton.swim.config.SwimConfig}.
SWIM_KNOBS = (
    "probe_interval",
    "probe_timeout",
    "indirect_checks",
    "retransmit_mult",
    "suspicion_mult",
    "suspicion_max_timeout_mult",
    "push_pull_interval",
    "gossip_interval",
    "gossip_nodes",
    "gossip_to_the_dead_time",
    "awareness_max_multiplier",
    "dead_node_reclaim_time",
    "tcp_timeout",
    "lifeguard",
    "fast_fail_refused",
    "stream_ping",
    "lag_threshold",
    "reconnect_interval",
    "reconnect_timeout",
    "max_packet",
)

_BY_PATH = {key.path: key for key in KEYS}


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AgentDefaults:
    """
    The node's default limits for an agent (SPEC 3.2); a deploy may lower
    or raise them per agent.
    """

    memory: int
    fuel: int
    wall_clock: float
    max_message: int
    max_sends: int
    max_traps: int
    trap_window: float
    max_queue: int


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Config:
    """
    The whole, validated configuration of one node.
    """

    values: Mapping[str, Any]

    def __getitem__(self, path: str) -> Any:
        """
        The value of key C{path} (C{agents.wall_clock}).
        """
        return self.values[path]

    @property
    def agent_defaults(self) -> AgentDefaults:
        """
        The C{agents.*} keys as one value.
        """
        v = self.values
        return AgentDefaults(
            memory=v["agents.memory"],
            fuel=v["agents.fuel"],
            wall_clock=v["agents.wall_clock"],
            max_message=v["agents.max_message"],
            max_sends=v["agents.max_sends"],
            max_traps=v["agents.max_traps"],
            trap_window=v["agents.trap_window"],
            max_queue=v["agents.max_queue"],
        )


    @property
    def clustered(self) -> bool:
        """
        Whether this node joins a cluster (it has a bind address).
        """
        return self.values["bind"] is not None

    @property
    def swim_overrides(self) -> Dict[str, Any]:
        """
        The SWIM knobs set explicitly, to apply over the profile.
        """
        return {
            knob: self.values[f"gossip.{knob}"]
            for knob in SWIM_KNOBS
            if self.values[f"gossip.{knob}"] is not None
        }


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for name, value in data.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        elif value is None and any(key.path.startswith(path + ".") for key in KEYS):
            # A section whose keys are all commented out.
            continue
        else:
            flat[path] = value
    return flat


def read_file(path: str) -> Dict[str, Any]:
    """
    Read a YAML config file into a flat C{{dotted.path: raw value}} dict.

    @raise ConfigError: when it cannot be read or is not a mapping.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}")
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{line}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of keys to values")
    flat = _flatten(data)
    for path_ in flat:
        if path_ not in _BY_PATH:
            raise ConfigError(f"config file {path}: unknown key {path_!r}")
    return {k: v for k, v in flat.items() if v is not None}


def load(
    options: Mapping[str, Any],
    environ: Optional[Mapping[str, str]] = None,
    config_file: Optional[str] = None,
) -> Config:
    """
    Build the configuration from every source.

    @param options: values given on the command line, by dotted path; a
        value of C{None} means not given.
    @param environ: the environment (default C{os.environ}).
    @param config_file: the YAML file to read, if any.
    @raise ConfigError: naming the first bad key.
    """
    environ = os.environ if environ is None else environ
    from_file = read_file(config_file) if config_file else {}
    values: Dict[str, Any] = {}
    for key in KEYS:
        if options.get(key.path) is not None:
            raw, source = options[key.path], "option"
        elif key.env in environ:
            raw, source = environ[key.env], key.env
        elif key.path in from_file:
            raw, source = from_file[key.path], "config file"
        else:
            default = key.default
            values[key.path] = default() if callable(default) else default
            continue
        try:
            values[key.path] = key.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{key.path} (from {source}): {e}")
    return Config(values)
