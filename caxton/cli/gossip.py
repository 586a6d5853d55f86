# -*- test-case-name: tests.test_cli_certs -*-
"""
C{caxton gossip-key}: print a new key for the gossip keyring.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO


def _generate_key() -> str:
    """
    A new AES-256 key in base64, as the keyring file holds it.
    """
    from caxton.swim.keyring import generate_key

    return generate_key()


def gossip_key(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    Print one new base64 key of 32 random bytes.
    """
    print(_generate_key(), file=out)
    return 0


def register(subparsers: Any) -> None:
    """
    Add C{gossip-key} to the C{caxton} parser.
    """
    parser = subparsers.add_parser(
        "gossip-key",
        help="print a new gossip encryption key",
        description=(
            "Print a new random AES-256 key (base64).  Put it in the file named by "
            "gossip.key_file on every node; the first line of that file is the key "
            "that encrypts, every line decrypts, so keys rotate without downtime."
        ),
    )
    parser.set_defaults(handler=gossip_key)
