# -*- test-case-name: tests.test_observability_logs -*-
"""
The node's log format: C{--log-format text|json} (config key C{log.format},
environment C{CAXTON_LOG_FORMAT}).

JSON is one line per twisted.logger event: Twisted's own serialisation
(L{eventAsJSON}, so L{twisted.logger.eventsFromJSONLogFile} reads it back),
without the record separator Twisted's L{jsonFileLogObserver} puts in front
of each event, without the unserialisable C{log_logger} and C{log_source}
objects, and with two fields added for people and log shippers:
C{log_text}, the event formatted as the text log shows it, and for an
error C{log_traceback}, the traceback as text.

Both runners set up logging I{before} the node is built but I{after} the
command line is parsed, so L{select} is called from the caxton options'
C{postOptions} and changes the runner's own options, which are the parent
of the subcommand's:

  - C{twist} (and C{python -m twisted}) reads C{fileLogObserverFactory}
    from its options: a callable taking the log file;
  - C{twistd} reads C{logger}: the fully qualified name of a callable
    taking no arguments, resolved after the subcommand is parsed.  It names
    L{twistd_observer}, which opens the log file twistd would have used.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, IO, Optional

from twisted.logger import FileLogObserver, eventAsJSON, formatEvent, jsonFileLogObserver, textFileLogObserver

#: Event keys that hold live objects, not data.
_OBJECT_KEYS = ("log_logger", "log_source", "log_observer")


def event_as_json_line(event: Dict[str, Any]) -> str:
    """
    One log event as a line of JSON (with its newline).
    """
    record = {key: value for key, value in event.items() if key not in _OBJECT_KEYS}
    record["log_text"] = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["log_traceback"] = failure.getTraceback()
        except Exception:
            record["log_traceback"] = "(the traceback could not be formatted)"
    return eventAsJSON(record) + "\n"


def json_lines_observer(out: IO[Any]) -> FileLogObserver:
    """
    A log observer writing L{event_as_json_line} lines to C{out}.
    """
    return FileLogObserver(out, event_as_json_line)


#: What L{twistd_observer} builds: set by L{select}, once per process.
_twistd_target: Dict[str, Any] = {}


def twistd_observer() -> FileLogObserver:
    """
    The JSON observer twistd's C{--logger} names: on stdout when twistd
    runs in the foreground without C{--logfile} (or with C{--logfile -}),
    else in the log file twistd would have used (C{twistd.log} by default),
    rotated as twistd rotates it.
    """
    logfile = _twistd_target.get("logfile") or ""
    nodaemon = _twistd_target.get("nodaemon", True)
    if logfile == "-" or (not logfile and nodaemon):
        if logfile == "-" and not nodaemon:
            raise SystemExit("Daemons cannot log to stdout, exiting!")
        return json_lines_observer(sys.stdout)
    from twisted.python.logfile import LogFile

    return json_lines_observer(LogFile.fromFullPath(logfile or "twistd.log"))


def select(runner_options: Any, log_format: Optional[str]) -> None:
    """
    Make the runner log in C{log_format}, by changing its options.

    @param runner_options: the options of C{twist} or C{twistd} (the
        parent of caxton's own); anything else (caxton's options parsed on
        their own, in tests) is left alone.
    @param log_format: C{"json"}, C{"text"}, or C{None} to keep the
        runner's default, except that Twisted's JSON becomes Caxton's JSON
        lines: C{twist} picks JSON by itself when its log is not a
        terminal (under systemd, say).
    """
    if runner_options is None:
        return
    try:
        keys = set(runner_options.keys())
    except Exception:
        return
    if "fileLogObserverFactory" in keys:
        _select_twist(runner_options, log_format)
    elif "logger" in keys and "nodaemon" in keys:
        _select_twistd(runner_options, log_format)


def _select_twist(options: Any, log_format: Optional[str]) -> None:
    factories: Dict[str, Callable[[IO[Any]], FileLogObserver]] = {
        "json": json_lines_observer,
        "text": textFileLogObserver,
    }
    if log_format is None:
        if options["fileLogObserverFactory"] is not jsonFileLogObserver:
            return
        log_format = "json"
    options["fileLogObserverFactory"] = factories[log_format]
    options["logFormat"] = log_format


def _select_twistd(options: Any, log_format: Optional[str]) -> None:
    if log_format != "json" or options.get("logger") or options.get("syslog"):
        # Text is twistd's own format; a --logger or --syslog the operator
        # chose stays.
        return
    _twistd_target["logfile"] = options.get("logfile")
    _twistd_target["nodaemon"] = bool(options.get("nodaemon"))
    options["logger"] = f"{__name__}.twistd_observer"
