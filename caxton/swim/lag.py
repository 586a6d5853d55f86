# -*- test-case-name: tests.test_swim_lag -*-
"""
Reactor lag as a Lifeguard health signal.

A Python node is "slow" when its event loop is late: a long garbage
collection, a blocking call, a starved process.  Timers then fire late,
acks go out late, and the node would wrongly accuse healthy peers
(notes/swim.md section 8.4).  L{LagMonitor} measures how late a periodic
timer fires and reports it, so the SWIM core can count it against its own
local health, as missed nacks are.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

log = Logger()


class LagMonitor:
    """
    Calls C{report(lag_seconds)} every C{interval} with how late the timer
    fired (0 when on time).

    @param clock: an C{IReactorTime}.
    @param interval: seconds between measurements.
    @param report: told each measurement.
    """

    def __init__(self, clock: Any, interval: float, report: Callable[[float], None]) -> None:
        self._clock = clock
        self._interval = interval
        self._report = report
        self._call: Optional[Any] = None
        self._due = 0.0
        #: The largest lag seen, in seconds.
        self.max_lag = 0.0
        #: The last lag measured, in seconds.
        self.last_lag = 0.0

    def start(self) -> None:
        """
        Begin measuring.
        """
        self._schedule()

    def stop(self) -> None:
        """
        Stop measuring.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        lag = max(0.0, self._clock.seconds() - self._due)
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)
        self._schedule()
        try:
            self._report(lag)
        except Exception:
            log.failure("reporting reactor lag")
