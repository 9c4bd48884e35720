"""Traces Perfetto opens: ``shmmap trace NAME --duration S --output FILE``.

Three parts, one file format (Chrome's trace-event JSON, which
ui.perfetto.dev and chrome://tracing open):

- the daemon's **Recorder**: a TRACE request turns it on for S seconds;
  it keeps each round (a group commit, with its request count), each
  request slower than a threshold, each promotion (reason, entries, bytes,
  phases when the writer reports them), client connects and disconnects,
  refusals and errors, and a few counters; a second TRACE request takes
  the events. It learns of promotions and connections from the daemon's
  log records, so the trace and the log never disagree.
- a **ClientTracer** in each client that opts in (SHMMAP_TRACE=FILE, or
  ``connect(name, trace=FILE)``): its iterations and its waits for the
  daemon, appended to FILE as JSON lines, in its own process lane.
- ``record()``, the command: asks the daemon, waits, merges the daemon's
  events with the clients' lines of the same time span, writes the file.

Every timestamp is CLOCK_MONOTONIC in microseconds, one clock for every
process of the host, so the lanes line up.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from .errors import InvalidRequestError
from .protocol import Op

ENV = "SHMMAP_TRACE"
_OP_NAMES = {int(op): op.name for op in Op}
MAX_SECONDS = 3600.0
MAX_EVENTS = 500_000            # the daemon's buffer; beyond it events are counted, not kept
COUNTER_EVERY_US = 10_000       # counters (keys, clients) at most every 10 ms
DEFAULT_SLOW_MS = 1.0
CLIENT_FLUSH_EVENTS = 256       # a client writes its buffer at this many events,
CLIENT_FLUSH_US = 200_000       # or when its oldest waits this long, and at exit
_LOGGED = frozenset({"connect", "disconnect", "refuse", "adopt", "error", "protocol_error",
                     "promotion_failed", "fresh"})

daemon_log = logging.getLogger("shmmap.daemon")


def now_us() -> float:
    """CLOCK_MONOTONIC in microseconds: the same clock in every process."""
    return time.monotonic_ns() / 1000


# -- the daemon's side ---------------------------------------------------------

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
            name = _OP_NAMES.get(op, str(op))
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


# -- turning records into trace-event JSON ----------------------------------------

def chrome_events(raw: Iterable[list[Any]], pid: int, map_name: str) -> list[dict[str, Any]]:
    """The daemon's recorded events as trace-event objects in its lane."""
    out: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": pid,
         "args": {"name": f"shmmap daemon: map {map_name!r} (pid {pid})"}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": pid,
         "args": {"name": "event loop"}},
    ]
    for ph, name, ts, dur, args in raw:
        ev: dict[str, Any] = {"ph": ph, "name": name, "pid": pid, "tid": pid, "ts": ts,
                              "args": args}
        if ph == "X":
            ev["dur"] = dur
            ev["cat"] = name.split(" ")[0]
        elif ph == "i":
            ev["s"] = "p"           # an instant across the daemon's lane
            ev["cat"] = "client" if name in ("connect", "disconnect", "refuse") else "daemon"
        out.append(ev)
    return out


def read_client_events(path: Path, start: float, end: float) -> list[dict[str, Any]]:
    """The events clients appended to path (JSON lines) within [start,
    end], with every process's metadata; lines cut short are skipped."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(ev, dict):
            continue
        if ev.get("ph") == "M" or start <= float(ev.get("ts", 0)) + float(ev.get("dur", 0)) \
                and float(ev.get("ts", 0)) <= end:
            out.append(ev)
    return out


def write_trace(path: Path, events: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Writes a trace-event JSON file whole (a temporary file, renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms", "otherData": meta}, f)
    os.replace(tmp, path)


def record(name: str, seconds: float, output: Path, *, slow_ms: float = DEFAULT_SLOW_MS,
           client_files: Iterable[Path] = (), progress: Optional[Callable[[float], None]] = None
           ) -> dict[str, Any]:
    """Records map name's daemon for seconds into output, merged with the
    client events of client_files; returns a summary (event counts)."""
    from .client import connect
    with connect(name) as m:
        started = m._request(Op.TRACE, seconds, slow_ms / 1000)
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                if progress is not None:
                    progress(left)
                time.sleep(min(left, 0.25))
        finally:
            # Ctrl-C included: what was recorded so far is still written.
            got = m._request(Op.TRACE, 0, 0)
    end = now_us()
    events = chrome_events(got["events"], got["pid"], name)
    clients: list[dict[str, Any]] = []
    for path in client_files:
        clients += read_client_events(Path(path), started["started_us"], end)
    meta = {"map": name, "seconds": seconds, "slow_ms": slow_ms, "dropped": got["dropped"],
            "started_us": started["started_us"]}
    write_trace(output, events + clients, meta)
    return {"output": str(output), "daemon_events": len(got["events"]),
            "client_events": sum(1 for e in clients if e.get("ph") != "M"),
            "dropped": got["dropped"]}


# -- a client's side ----------------------------------------------------------------

class ClientTracer:
    """One process's trace events (iterations, waits for the daemon), kept
    in memory and appended to path as JSON lines now and then: one write()
    of whole lines in O_APPEND mode each, so processes sharing the file
    never cut each other's lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._oldest = 0.0
        self._pid = 0               # whose process lane the metadata went to

    def _meta(self) -> None:
        pid = os.getpid()
        if self._pid != pid:        # first event, or a fork's child
            self._pid = pid
            self._lines = []
            label = " ".join(os.path.basename(a) for a in sys.argv[:2]) or "python"
            self._oldest = now_us()
            self._lines.append(json.dumps({"ph": "M", "name": "process_name", "pid": pid,
                                           "tid": pid, "args": {"name": f"shmmap client: "
                                                                f"{label} (pid {pid})"}}))

    def span(self, name: str, start: float, end: float, args_json: str) -> None:
        """A slice [start, end] (microseconds) in this thread's lane; name
        a JSON-safe word or two, args a JSON object already encoded. The
        line is formatted directly: json.dumps would cost more than the
        wait it records."""
        tid = threading.get_native_id()
        with self._lock:
            self._meta()
            if not self._lines:
                self._oldest = end
            self._lines.append(
                f'{{"ph":"X","name":"{name}","cat":"{name.split(" ")[0]}","pid":{self._pid},'
                f'"tid":{tid},"ts":{start:.3f},"dur":{end - start:.3f},"args":{args_json}}}')
            if len(self._lines) >= CLIENT_FLUSH_EVENTS or end - self._oldest >= CLIENT_FLUSH_US:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode()
        self._lines = []
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            print(f"shmmap: {ENV}={self.path}: cannot write trace events: {exc}",
                  file=sys.stderr)

    def iterate(self, items: Iterator[Any], map_name: str) -> Iterator[Any]:
        """items (pairs, keys or values), recorded as one slice from the first item to the end (or
        to the moment the iteration is dropped unfinished)."""
        start = now_us()
        count = 0
        finished = False
        try:
            for item in items:
                count += 1
                yield item
            finished = True
        finally:
            self.span("iterate", start, now_us(), json.dumps(
                {"map": map_name, "items": count, "finished": finished}))

    def wait(self, map_name: str, ops: list[Any], start: float) -> None:
        """A slice for a request (or pipeline) from sending to its reply."""
        self.span(f"wait {_OP_NAMES.get(ops[0], 'OP')}", start, now_us(),
                  f'{{"map":{json.dumps(map_name)},"requests":{len(ops)}}}')


_tracers: dict[str, ClientTracer] = {}


def _after_fork_in_child() -> None:
    for tracer in _tracers.values():
        tracer._lock = threading.Lock()     # a parent's thread may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)


def client_tracer(path: Optional[str]) -> Optional[ClientTracer]:
    """The tracer for path, or for $SHMMAP_TRACE if path is None; None if
    neither is set. One per file per process, flushed at exit."""
    path = path if path is not None else os.environ.get(ENV) or None
    if path is None:
        return None
    path = os.path.abspath(path)
    tracer = _tracers.get(path)
    if tracer is None:
        tracer = _tracers[path] = ClientTracer(path)
        atexit.register(tracer.flush)
    return tracer


def trace_files(named: Iterable[str]) -> list[Path]:
    """The client trace files to merge: those named, else $SHMMAP_TRACE."""
    files = [Path(p) for p in named]
    if not files and os.environ.get(ENV):
        files = [Path(os.environ[ENV])]
    return files

