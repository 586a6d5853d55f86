# -*- test-case-name: tests.test_cli_certs -*-
"""
C{caxton certs init-ca} and C{caxton certs issue}: a working PKI for a new
cluster (SPEC 5.3), on the local disk, with no node running.

  - C{caxton certs init-ca --dir caxton-ca} makes the cluster CA;
  - C{caxton certs issue NODE_ID --ca-dir caxton-ca --out DIR} makes a
    node's TLS directory (C{ca.pem}, C{node.pem}, C{node.key}): point the
    node's C{tls_dir} at it.  Issuing again renews the certificate; a
    running node picks it up for its next connections.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, TextIO

from caxton.cli.errors import CommandError, UsageError
from caxton.cluster import pki

#: Where the CA lives unless told otherwise (relative to the working
#: directory; keep it off the nodes).
DEFAULT_CA_DIR = "caxton-ca"

_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if days < 1:
        raise argparse.ArgumentTypeError("must be at least 1 day")
    return days


def init_ca(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    Make the cluster CA in C{--dir}.
    """
    if not _CLUSTER_NAME.match(args.cluster):
        raise UsageError(f"{args.cluster!r} is not a cluster name (letters, digits, '.', '_', '-')")
    try:
        cert = pki.init_ca(args.dir, cluster_name=args.cluster, days=args.days, force=args.force)
    except pki.PKIError as e:
        raise CommandError(str(e)) from None
    print(
        f"created the CA of cluster {args.cluster} in {args.dir} "
        f"({pki.CA_CERT}, {pki.CA_KEY}; valid until {cert.not_valid_after_utc:%Y-%m-%d})",
        file=out,
    )
    print(f"keep {os.path.join(args.dir, pki.CA_KEY)} secret and off the nodes", file=out)
    return 0


def issue(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    Issue a node certificate and write its TLS directory.
    """
    if not pki.NODE_ID.match(args.node_id):
        raise UsageError(
            f"{args.node_id!r} is not a node id "
            "(letters, digits, '.', '_', '-', starting with a letter or digit, at most 63)"
        )
    out_dir = args.out or os.path.join("caxton-tls", args.node_id)
    try:
        cert = pki.issue(args.ca_dir, args.node_id, out_dir, days=args.days, hosts=args.host)
    except pki.PKIError as e:
        raise CommandError(str(e)) from None
    print(
        f"issued a certificate for node {args.node_id} in {out_dir} "
        f"({pki.CA_CERT}, {pki.NODE_CERT}, {pki.NODE_KEY}; "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d})",
        file=out,
    )
    return 0


def register(subparsers: Any) -> None:
    """
    Add C{certs init-ca} and C{certs issue} to the C{caxton} parser.
    """
    certs = subparsers.add_parser(
        "certs",
        help="make the cluster CA and node certificates",
        description="Make a cluster CA and node certificates for mutual TLS between nodes.",
    )
    commands = certs.add_subparsers(dest="certs_command", metavar="COMMAND")
    commands.required = True

    init = commands.add_parser(
        "init-ca",
        help="make a new cluster CA",
        description="Make a new cluster CA (ca.pem and ca.key) in DIR.",
    )
    init.add_argument(
        "--dir", default=DEFAULT_CA_DIR, help="where to put the CA (default %(default)s)"
    )
    init.add_argument(
        "--cluster", default="caxton", help="the cluster's name (default %(default)s)"
    )
    init.add_argument(
        "--days", type=_days, default=pki.DEFAULT_CA_DAYS, help="validity (default %(default)s)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=init_ca)

    iss = commands.add_parser(
        "issue",
        help="issue a node certificate",
        description=(
            "Issue a certificate naming NODE_ID, signed by the cluster CA, and write "
            "the node's TLS directory (ca.pem, node.pem, node.key)."
        ),
    )
    iss.add_argument("node_id", metavar="NODE_ID", help="the node's id (its node_id setting)")
    iss.add_argument(
        "--ca-dir", default=DEFAULT_CA_DIR, help="the CA's directory (default %(default)s)"
    )
    iss.add_argument("--out", help="the node's TLS directory (default caxton-tls/NODE_ID)")
    iss.add_argument(
        "--days", type=_days, default=pki.DEFAULT_NODE_DAYS, help="validity (default %(default)s)"
    )
    iss.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="H",
        help="a host name or IP address to add to the certificate (repeatable)",
    )
    iss.set_defaults(handler=issue)
