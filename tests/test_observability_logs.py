"""
Tests for L{caxton.observability.logs}: the JSON line format, and how
C{--log-format} / C{log.format} reaches C{twist} and C{twistd}, whose real
option objects are used.
"""

from __future__ import annotations

import io
import json
import os

from twisted.application.twist._options import TwistOptions
from twisted.logger import (
    FileLogObserver,
    LogLevel,
    Logger,
    eventsFromJSONLogFile,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from caxton.observability import logs
from caxton.observability.logs import event_as_json_line, json_lines_observer, select
from caxton.tap import Options


def emitted(**kwargs: object) -> dict:
    """
    One event as a L{Logger} makes it (with its logger and source).
    """
    events: list = []
    logger = Logger(namespace="caxton.test", source=object(), observer=events.append)
    failure = kwargs.pop("failure", None)
    if failure is not None:
        logger.failure("it broke in {place}", failure, **kwargs)
    else:
        logger.info("agent {agent} deployed (version {version})", **kwargs)
    return events[0]


class JSONLineTests(SynchronousTestCase):
    """
    One event, one line of JSON.
    """

    def test_line(self) -> None:
        """
        The line is a JSON object ending in one newline, with no record
        separator, the fields, the level, and C{log_text} formatted as the
        text log has it; live objects are left out.
        """
        line = event_as_json_line(emitted(agent="echo", version=2))
        self.assertTrue(line.endswith("}\n"))
        self.assertEqual(line.count("\n"), 1)
        self.assertNotIn("\x1e", line)
        record = json.loads(line)
        self.assertEqual(record["log_text"], "agent echo deployed (version 2)")
        self.assertEqual((record["agent"], record["version"]), ("echo", 2))
        self.assertEqual(record["log_level"]["name"], "info")
        self.assertEqual(record["log_namespace"], "caxton.test")
        self.assertNotIn("log_logger", record)
        self.assertNotIn("log_source", record)

    def test_round_trip(self) -> None:
        """
        Twisted reads the lines back as events that format the same.
        """
        out = io.StringIO()
        observer = json_lines_observer(out)
        event = emitted(agent="echo", version=1)
        observer(event)
        observer(emitted(agent="other", version=3))
        out.seek(0)
        back = list(eventsFromJSONLogFile(out))
        self.assertEqual([formatEvent(e) for e in back],
                         ["agent echo deployed (version 1)", "agent other deployed (version 3)"])
        self.assertEqual(back[0]["log_level"], LogLevel.info)

    def test_failure(self) -> None:
        """
        An error's traceback is in C{log_traceback}, as text.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        record = json.loads(event_as_json_line(emitted(failure=failure, place="the test")))
        self.assertEqual(record["log_text"], "it broke in the test")
        self.assertIn("ZeroDivisionError", record["log_traceback"])
        self.assertEqual(record["log_level"]["name"], "critical")


class SelectTests(SynchronousTestCase):
    """
    The format is chosen by changing the runner's options.
    """

    def twist(self) -> TwistOptions:
        options = TwistOptions()
        options["logFile"] = io.StringIO()
        options.selectDefaultLogObserver()
        return options

    def test_twist_json(self) -> None:
        """
        For twist, json installs the JSON line observer factory.
        """
        options = self.twist()
        select(options, "json")
        self.assertIs(options["fileLogObserverFactory"], json_lines_observer)
        self.assertEqual(options["logFormat"], "json")

    def test_twist_text(self) -> None:
        """
        For twist, text is text even when the log is not a terminal.
        """
        options = self.twist()
        self.assertIs(options["fileLogObserverFactory"], jsonFileLogObserver)
        select(options, "text")
        self.assertIs(options["fileLogObserverFactory"], textFileLogObserver)

    def test_twist_default(self) -> None:
        """
        Unset, twist's own choice stays, except that its JSON becomes
        Caxton's JSON lines.
        """
        options = self.twist()
        select(options, None)
        self.assertIs(options["fileLogObserverFactory"], json_lines_observer)
        options["fileLogObserverFactory"] = textFileLogObserver
        select(options, None)
        self.assertIs(options["fileLogObserverFactory"], textFileLogObserver)

    def test_twistd(self) -> None:
        """
        For twistd, json names L{logs.twistd_observer} as the C{--logger},
        which twistd resolves and calls: JSON lines on stdout in the
        foreground, else in the log file.
        """
        self.patch(logs, "_twistd_target", {})
        options = ServerOptions()
        options["nodaemon"] = True
        select(options, "json")
        options.postOptions()
        factory = options["logger"]
        self.assertIs(factory, logs.twistd_observer)
        self.assertIsInstance(factory(), FileLogObserver)
        path = os.path.abspath(self.mktemp())
        options = ServerOptions()
        options["logfile"] = path
        select(options, "json")
        options.postOptions()
        observer = options["logger"]()
        observer(emitted(agent="echo", version=1))
        with open(path) as f:
            self.assertEqual(json.loads(f.read())["log_text"], "agent echo deployed (version 1)")

    def test_twistd_leaves_choices(self) -> None:
        """
        twistd's text stays twistd's own observer, and a --logger or
        --syslog the operator gave is kept.
        """
        options = ServerOptions()
        select(options, "text")
        self.assertIsNone(options["logger"])
        options["logger"] = "my.observer"
        select(options, "json")
        self.assertEqual(options["logger"], "my.observer")

    def test_from_options(self) -> None:
        """
        caxton's C{--log-format}, or C{CAXTON_LOG_FORMAT}, reaches its
        parent's options when they are parsed; a bad value is one line.
        """
        parent = self.twist()
        options = Options()
        options.parent = parent
        options.parseOptions(["--data-dir", self.mktemp(), "--log-format", "json"])
        self.assertEqual(options.config["log.format"], "json")
        self.assertIs(parent["fileLogObserverFactory"], json_lines_observer)
        self.patch(os, "environ", {"CAXTON_LOG_FORMAT": "text"})
        parent = self.twist()
        options = Options()
        options.parent = parent
        options.parseOptions(["--data-dir", self.mktemp()])
        self.assertIs(parent["fileLogObserverFactory"], textFileLogObserver)
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--log-format", "xml"])
        self.assertIn("log.format", str(caught.exception.code))
