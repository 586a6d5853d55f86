# -*- test-case-name: tests.test_tap -*-
"""
C{twistd caxton}: the command-line options and the node they build.

L{makeService} reads the configuration (options > environment > file >
defaults), then assembles one node: store, wasm runtime and workers, agent
manager, router and API listeners, under one L{CaxtonService}.  It does no
I/O itself: directories, files, threads and sockets are opened when the
service starts.  A bad value ends start-up with one line naming the key.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List

from twisted.python import usage

from caxton import __version__
from caxton.config import Config, ConfigError, load


class Options(usage.Options):
    """
    Options for C{twistd caxton}; each one sets the config key of its name.
    """

    optParameters = [
        ["config", "c", None, "YAML configuration file (see etc/caxton.yaml)."],
        ["node-id", None, None, "This node's id (default: the host name)."],
        ["data-dir", "d", None, "Where the node keeps its state (default ./caxton-data)."],
        ["bind", None, None, "HOST:PORT for SWIM (UDP) and node streams (TCP); joins a cluster."],
        ["advertise", None, None, "HOST:PORT other nodes reach this one at (default: --bind)."],
        ["join", None, None, "Seed addresses HOST:PORT[,HOST:PORT...] to join through."],
        ["tls-dir", None, None, "The cluster CA and this node's certificate (ca.pem, node.pem, node.key)."],
        ["gossip-key-file", None, None, "Gossip encryption keys, base64, one per line (first encrypts)."],
        ["profile", None, None, "SWIM timing profile: lan (default), wan or local."],
        ["log-format", None, None, "Log format: text, or json (one JSON object per line)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["api"]: List[str] = []

    def opt_api(self, endpoint: str) -> None:
        """
        A Twisted server endpoint string for the REST API, e.g.
        tcp:8080:interface=0.0.0.0, or onion:80 for a Tor onion service
        (repeatable; default tcp:8080:interface=127.0.0.1).
        """
        self["api"].append(endpoint)

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"caxton {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        """
        Read the configuration from every source; one line and exit on a
        bad value.
        """
        given: Dict[str, Any] = {
            "node_id": self["node-id"],
            "data_dir": self["data-dir"],
            "api": list(self["api"]) or None,
            "bind": self["bind"],
            "advertise": self["advertise"],
            "gossip.seeds": self["join"],
            "tls_dir": self["tls-dir"],
            "gossip.key_file": self["gossip-key-file"],
            "gossip.profile": self["profile"],
            "log.format": self["log-format"],
        }
        try:
            self.config: Config = load(given, os.environ, self["config"])
        except ConfigError as e:
            # One line, no usage text and no traceback (SPEC 2).
            raise SystemExit(f"caxton: configuration error: {e}")
        # twistd and twist start logging after parsing their command line
        # and before building the node: the format is chosen now.
        from caxton.observability.logs import select

        select(getattr(self, "parent", None), self.config["log.format"])


def makeService(options: Options) -> Any:
    """
    Build a node from parsed L{Options}.
    """
    from twisted.internet import reactor

    # Imported here, not at the top: twistd imports this module to list its
    # options, and the node pulls in wasmtime, Klein and SQLite.
    from caxton.node import build_node

    try:
        return build_node(options.config, reactor)
    except ConfigError as e:
        raise SystemExit(f"caxton: configuration error: {e}")
