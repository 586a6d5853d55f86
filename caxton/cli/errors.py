"""
The two ways a C{caxton} command fails on purpose (SPEC 7 exit codes).
"""

from __future__ import annotations


class CommandError(Exception):
    """
    The command could not do its work (a server-side or operational
    error); C{str()} is the one line to print.  Exit status 1.
    """


class UsageError(Exception):
    """
    The command was called wrongly in a way argparse cannot check;
    C{str()} is the one line to print.  Exit status 2.
    """
