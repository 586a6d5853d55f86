# -*- test-case-name: tests.test_cli_certs -*-
"""
The C{caxton} console script.

C{main(argv)} parses the command line with argparse and runs one command.
Exit codes follow SPEC 7: 0 on success, 1 when the command could not do
its work (the reason printed as one line, C{caxton: ...}), 2 on misuse
(argparse's usage message, or a L{UsageError}).

Adding commands
===============

A command module defines C{register(subparsers)}, which adds its parser(s)
and sets C{handler=} to a function C{(args, out, err) -> int} (or an
C{async def} one: it is run on a reactor, for the treq-based commands
that talk to a node).  Add the module to L{COMMAND_MODULES}.  A handler
raises L{caxton.cli.errors.CommandError} for an operational failure (exit 1) and
L{UsageError} for misuse that argparse cannot see (exit 2); any other
exception is a bug and is reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import sys
from typing import Any, Callable, List, Optional, Sequence, TextIO

from caxton.cli.errors import CommandError, UsageError

__all__ = ["main", "run", "build_parser", "CommandError", "UsageError"]

#: Modules that register commands, in the order their help lists them.
COMMAND_MODULES: Sequence[str] = (
    "caxton.cli.agents",
    "caxton.cli.messages",
    "caxton.cli.cluster",
    "caxton.cli.events",
    "caxton.cli.certs",
    "caxton.cli.gossip",
    "caxton.cli.keys",
)

PROG = "caxton"


class _Parser(argparse.ArgumentParser):
    """
    An argparse parser that raises instead of exiting, so that L{main}
    returns its status rather than calling C{sys.exit} (tests call it).
    """

    def exit(self, status: int = 0, message: Optional[str] = None) -> Any:  # type: ignore[override]
        if message:
            self._print_message(message, sys.stderr)
        raise _Exit(status)


class _Exit(Exception):
    """
    argparse is done (C{--help}, or a usage error already printed).
    """

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    """
    The full C{caxton} parser, with every command module registered.
    """
    parser = _Parser(
        prog=PROG,
        description=(
            "Caxton: drive a node through its API (agents, messages, conversations, "
            "cluster, events), and make a cluster's certificates and keys."
        ),
    )
    # --url, --token, --json, --timeout before the command too (each
    # command that talks to a node takes them after it as well).
    from caxton.cli.http import add_node_options

    add_node_options(parser)
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser
    )
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _report(error: Exception, err: TextIO) -> int:
    print(f"{PROG}: {error}", file=err)
    return 2 if isinstance(error, UsageError) else 1


def _run_async(
    handler: Callable[..., Any], args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    # Only commands that talk to a node need a reactor: import it here.
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    status: List[int] = [1]

    async def run(reactor: Any) -> None:
        try:
            status[0] = int(await handler(args, out, err) or 0)
        except (CommandError, UsageError) as e:
            status[0] = _report(e, err)

    try:
        react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        # react always exits: 0 when run() finished (the status is ours),
        # else it failed unexpectedly and has logged why.
        if e.code not in (0, None):
            return 1
    return status[0]


def main(
    argv: Optional[Sequence[str]] = None,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """
    Run C{caxton} with C{argv} (default: C{sys.argv[1:]}) and return the
    exit status.

    @param out: where results go (default stdout).
    @param err: where error lines go (default stderr).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser()
    try:
        # argparse writes usage, errors and --help to sys.std*: send them
        # where this call was told to.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except _Exit as e:
        return e.status
    handler = args.handler
    try:
        if inspect.iscoroutinefunction(handler):
            return _run_async(handler, args, out, err)
        return int(handler(args, out, err) or 0)
    except (CommandError, UsageError) as e:
        return _report(e, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 1


def run() -> None:
    """
    The C{caxton} entry point: run L{main} and exit with its status.
    """
    sys.exit(main())


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it.
    from caxton.cli.main import run as _run

    _run()
