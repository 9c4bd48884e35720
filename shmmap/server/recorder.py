"""The daemon's trace recorder (see shared/tracing.py for the whole).

A TRACE request turns it on for S seconds; it keeps each round (a group
commit, with its request count), each request slower than a threshold,
each promotion (reason, entries, bytes, phases when the writer reports
them), client connects and disconnects, refusals and errors, and a few
counters; a second TRACE request takes the events. It learns of
promotions and connections from the daemon's log records, so the trace and
the log never disagree.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

from ..shared.errors import InvalidRequestError
from ..shared.tracing import MAX_EVENTS, OP_NAMES, now_us

MAX_SECONDS = 3600.0
COUNTER_EVERY_US = 10_000       # counters (keys, clients) at most every 10 ms
_LOGGED = frozenset({"connect", "disconnect", "refuse", "adopt", "error", "protocol_error",
                     "promotion_failed", "fresh"})

daemon_log = logging.getLogger("shmmap.daemon")


class Recorder:
    """Records the daemon's events while a trace is on (see the module).

    Events are kept as short lists [ph, name, ts, dur, args] and turned into
    trace-event objects by the command (chrome_events), which keeps the
    daemon's cost per event to one list."""

    def __init__(self, timings: Any, counters: Callable[[], dict[str, int]]) -> None:
        self.timings = timings
        self.counters = counters
        self.owner: Any = None              # the connection that started it
        self.events: list[list[Any]] = []
        self.dropped = 0
        self.deadline = 0.0
        self.slow_us = 0.0
        self._last_counter = 0.0
        self._handler = _LogEvents(self)
        self._log_level = logging.NOTSET

    @property
    def on(self) -> bool:
        return self.timings.recorder is self

    def op_trace(self, conn: Any, seconds: Any, slow_seconds: Any) -> tuple[Any, int]:
        """The handler of Op.TRACE: [S, slow] starts recording for S
        seconds; [0, 0] stops and returns what was recorded."""
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0
                   for x in (seconds, slow_seconds)) or seconds > MAX_SECONDS:
            raise InvalidRequestError(f"TRACE takes seconds (0 to {MAX_SECONDS:g}) and slow "
                                      f"seconds (0 or more), not {seconds!r}, {slow_seconds!r}")
        if self.owner is not None and self.owner is not conn:
            raise InvalidRequestError(f"pid {self.owner.peer.pid} is recording a trace of this "
                                      "map already: one at a time")
        if seconds == 0:
            if self.owner is None:
                raise InvalidRequestError("no trace is being recorded on this connection")
            events, dropped = self.events, self.dropped
            self.forget(conn)
            return {"pid": os.getpid(), "events": events, "dropped": dropped}, 0
        self.owner = conn
        self.events, self.dropped = [], 0
        started = now_us()
        self.deadline = started + seconds * 1e6
        self.slow_us = slow_seconds * 1e6
        self._attach()
        return {"pid": os.getpid(), "started_us": started}, 0

    def forget(self, conn: Any) -> None:
        """Drops the recording conn started (its client left, or took it)."""
        if self.owner is conn:
            self._detach()
            self.owner = None
            self.events = []

    def _attach(self) -> None:
        self.timings.recorder = self
        if self._handler not in daemon_log.handlers:
            # Info records are made while recording whatever -v says; the
            # terminal's handler keeps its own level (logs.configure).
            self._log_level = daemon_log.level
            daemon_log.setLevel(logging.INFO)
            daemon_log.addHandler(self._handler)

    def _detach(self) -> None:
        if self.timings.recorder is self:
            self.timings.recorder = None
        if self._handler in daemon_log.handlers:
            daemon_log.removeHandler(self._handler)
            daemon_log.setLevel(self._log_level)

    def add(self, ph: str, name: str, ts: float, dur: float, args: dict[str, Any]) -> None:
        if ts + dur > self.deadline:
            self._detach()                  # the recording's time is up
            return
        if len(self.events) >= MAX_EVENTS:
            self.dropped += 1
            return
        self.events.append([ph, name, ts, dur, args])

    # Called by stats.Timings while recording:

    def request(self, op: int, seconds: float, conn: Any = None) -> None:
        dur = seconds * 1e6
        if dur >= self.slow_us:
            name = OP_NAMES.get(op, str(op))
            args: dict[str, Any] = {"op": name}
            if conn is not None:
                args["pid"] = conn.peer.pid
            self.add("X", f"slow {name}", now_us() - dur, dur, args)

    def commit(self, requests: int, seconds: float) -> None:
        end = now_us()
        dur = seconds * 1e6
        self.add("X", "round", end - dur, dur, {"requests": requests})
        if end - self._last_counter >= COUNTER_EVERY_US:
            self._last_counter = end
            self.add("C", "map", end, 0, self.counters())


class _LogEvents(logging.Handler):
    """Turns the daemon's log records into trace events."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(logging.INFO)
        self.recorder = recorder

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        fields = {k: v for k, v in vars(record).items() if k in _EVENT_FIELDS}
        end = now_us()
        if event == "promotion":
            self._promotion(record, fields, end)
        elif event in _LOGGED:
            fields["message"] = record.getMessage()
            self.recorder.add("i", event, end, 0, fields)

    def _promotion(self, record: logging.LogRecord, fields: dict[str, Any], end: float) -> None:
        """A slice as long as the promotion, ending now (the daemon logs it
        at the end of the round it happened in), with its phases inside if
        the record carries them ({"phases": {name: ms}}, in order)."""
        dur = float(getattr(record, "ms", 0.0)) * 1000
        start = end - dur
        self.recorder.add("X", f"promotion ({fields.get('reason', '?')})", start, dur, fields)
        at = start
        for phase, ms in dict(getattr(record, "phases", None) or {}).items():
            self.recorder.add("X", str(phase), at, float(ms) * 1000, {})
            at += float(ms) * 1000


_EVENT_FIELDS = frozenset({"pid", "uid", "clients", "reason", "generation", "entries", "bytes",
                           "ms", "promotions", "seq", "keys", "op", "segment"})
