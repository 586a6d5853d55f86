"""
The C{caxton} command: the client of a node's REST API (SPEC 7: C{agents},
C{send}, C{conversations}, C{cluster}, C{events}) and offline tools
(C{certs}, C{gossip-key}).

L{caxton.cli.main.main} is the console script.  Each group of commands
lives in its own module with a C{register(subparsers)} function; see
L{caxton.cli.main} for how to add one.  The node commands share
L{caxton.cli.http} (options, client, errors) and L{caxton.cli.output}
(tables, JSON, times).
"""
