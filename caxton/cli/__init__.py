"""
The C{caxton} command: offline tools (C{certs}, C{gossip-key}) and, later,
the client of a node's REST API (SPEC 7).

L{caxton.cli.main.main} is the console script.  Each group of commands
lives in its own module with a C{register(subparsers)} function; see
L{caxton.cli.main} for how to add one.
"""
