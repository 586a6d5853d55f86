# -*- test-case-name: tests.test_auth_cli -*-
"""
C{caxton keys create|list|revoke}: API keys, on a node's data directory.

These commands work offline, on the files, and also while the node runs:
they change C{keys.json} under its lock, and the node picks the change up
within a second (docs/security.md).  Each change is also written to the
node's audit log, as made by C{cli}.

The data directory is C{--data-dir}, else C{$CAXTON_DATA_DIR}, else the
C{data_dir} of the file given with C{--config}, else C{./caxton-data}: the
node's own order (option > environment > file > default).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List, Optional, TextIO

from caxton.cli.errors import CommandError, UsageError
from caxton.errors import InvalidRequest

DEFAULT_DATA_DIR = "./caxton-data"


def data_dir(args: argparse.Namespace, environ: Optional[Dict[str, str]] = None) -> str:
    """
    The data directory the command works on.
    """
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    if args.data_dir:
        return args.data_dir
    if "CAXTON_DATA_DIR" in environ and environ["CAXTON_DATA_DIR"]:
        return environ["CAXTON_DATA_DIR"]
    if args.config:
        from caxton.config import ConfigError, read_file

        try:
            value = read_file(args.config).get("data_dir")
        except ConfigError as e:
            raise CommandError(str(e)) from None
        if value:
            return str(value)
    return DEFAULT_DATA_DIR


def _key_file(args: argparse.Namespace) -> Any:
    from caxton.auth.keys import KeyFile

    return KeyFile.in_data_dir(data_dir(args))


def _audit(args: argparse.Namespace, err: TextIO, route: str, status: int,
           arguments: Dict[str, str], detail: Optional[Dict[str, Any]] = None) -> None:
    """
    Add the change to the audit log; a log that cannot be written is
    reported but does not undo the change.
    """
    from caxton.auth.audit import AUDIT_FILE, append_entries, entry
    from caxton.config import KEYS

    max_size = next(k.default for k in KEYS if k.path == "audit.max_size")
    path = os.path.join(data_dir(args), AUDIT_FILE)
    value = entry("change", "cli", "CLI", route, arguments, status=status, key_id="cli", detail=detail)
    try:
        append_entries(path, [value], max_size, time.time())
    except OSError as e:
        print(f"caxton: warning: could not write the audit log {path}: {e.strerror}", file=err)


def create(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    Make a key and print its token, once.
    """
    from caxton.auth.keys import KeyFileError, check_name, check_role

    try:
        name = check_name(args.name)
        role = check_role(args.role)
    except InvalidRequest as e:
        raise UsageError(str(e)) from None
    try:
        record, token = _key_file(args).create(name, role, time.time())
    except KeyFileError as e:
        raise CommandError(str(e)) from None
    _audit(args, err, "keys create", 201, {}, {"created_key_id": record.key_id, "role": record.role.name.lower()})
    if args.json:
        print(json.dumps({"key": record.view(), "token": token}), file=out)
    else:
        print(f"created key {record.key_id} ({record.name}, {record.role.name.lower()})", file=out)
        print(f"token: {token}", file=out)
    print(
        "Store this token now: it is shown only this once, and the node keeps only its hash.",
        file=err,
    )
    return 0


def _when(timestamp: Optional[float]) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _table(rows: List[List[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


def list_keys(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    Print every key (a table, or JSON), newest first.
    """
    from caxton.auth.keys import KeyFileError

    try:
        records = _key_file(args).read().records
    except KeyFileError as e:
        raise CommandError(str(e)) from None
    views = [r.view() for r in sorted(reversed(records), key=lambda r: r.created_at, reverse=True)]
    if args.json:
        print(json.dumps({"keys": views}), file=out)
        return 0
    if not views:
        print("no keys: the node is in protected mode (loopback clients only)", file=out)
        return 0
    rows = [["ID", "NAME", "ROLE", "TOKEN", "CREATED", "REVOKED"]]
    for view in views:
        rows.append([
            view["id"],
            view["name"],
            view["role"],
            f"cxk_{view['id']}_...{view['hint']}",
            _when(view["created_at"]),
            _when(view["revoked_at"]) if view["revoked"] else "-",
        ])
    print(_table(rows), file=out)
    return 0


def revoke(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    Revoke a key by id.
    """
    from caxton.auth.keys import KeyFileError, KeyNotFound

    try:
        record = _key_file(args).revoke(args.key_id, time.time())
    except KeyNotFound as e:
        raise CommandError(str(e)) from None
    except KeyFileError as e:
        raise CommandError(str(e)) from None
    _audit(args, err, "keys revoke", 200, {"key_id": record.key_id})
    print(f"revoked key {record.key_id} ({record.name}, {record.role.name.lower()})", file=out)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="the node's data directory (default: $CAXTON_DATA_DIR, or data_dir in --config, "
        f"or {DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--config", help="the node's YAML config file, for its data_dir")


def register(subparsers: Any) -> None:
    """
    Add C{keys create}, C{keys list} and C{keys revoke} to the C{caxton}
    parser.
    """
    keys = subparsers.add_parser(
        "keys",
        help="make, list and revoke API keys",
        description=(
            "API keys for the management API, on a node's data directory (works while "
            "the node runs; it sees changes within a second)."
        ),
    )
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND")
    commands.required = True

    make = commands.add_parser(
        "create",
        help="make a key and print its token",
        description="Make an API key and print its token. The token is shown only this once.",
    )
    make.add_argument("--name", required=True, help="what the key is for (1-64 characters)")
    make.add_argument(
        "--role", required=True, help="admin, operator (deploy, lifecycle, send) or viewer (read)"
    )
    make.add_argument("--json", action="store_true", help="print the key and token as JSON")
    _common(make)
    make.set_defaults(handler=create)

    show = commands.add_parser("list", help="list the keys", description="List the API keys, newest first.")
    show.add_argument("--json", action="store_true", help="print JSON")
    _common(show)
    show.set_defaults(handler=list_keys)

    drop = commands.add_parser(
        "revoke",
        help="revoke a key",
        description="Revoke an API key: requests with it are refused within a second.",
    )
    drop.add_argument("key_id", metavar="KEY_ID", help="the key's id (caxton keys list)")
    _common(drop)
    drop.set_defaults(handler=revoke)
