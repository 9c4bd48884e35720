"""A client's trace events (see shared/tracing.py for the whole): its
iterations and its waits for the daemon, appended to a file as JSON lines in
its own process lane, when it opts in (SHMMAP_TRACE=FILE, or
``connect(name, trace=FILE)``)."""
from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from typing import Any, Iterator, Optional

from ..shared.tracing import ENV, OP_NAMES, now_us

CLIENT_FLUSH_EVENTS = 256       # a client writes its buffer at this many events,
CLIENT_FLUSH_US = 200_000       # or when its oldest waits this long, and at exit


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
        self.span(f"wait {OP_NAMES.get(ops[0], 'OP')}", start, now_us(),
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
