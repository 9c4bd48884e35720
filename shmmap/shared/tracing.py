"""What every process's part of a trace shares (``shmmap trace NAME``).

Three parts write one file format, Chrome's trace-event JSON, which
ui.perfetto.dev and chrome://tracing open:

- the daemon's recorder (server/recorder.py): a TRACE request turns it on
  for S seconds; a second TRACE request takes its events;
- a tracer in each client that opts in (SHMMAP_TRACE=FILE, or
  ``connect(name, trace=FILE)``; client/tracer.py): its iterations and its
  waits for the daemon, appended to FILE as JSON lines, in its own lane;
- the command (cli/trace.py): asks the daemon, waits, merges the daemon's
  events with the clients' lines of the same time span, writes the file.

Every timestamp is CLOCK_MONOTONIC in microseconds, one clock for every
process of the host, so the lanes line up.
"""
from __future__ import annotations

import time

from .protocol import Op

ENV = "SHMMAP_TRACE"
OP_NAMES = {int(op): op.name for op in Op}
MAX_EVENTS = 500_000            # the daemon's buffer; beyond it events are counted, not kept


def now_us() -> float:
    """CLOCK_MONOTONIC in microseconds: the same clock in every process."""
    return time.monotonic_ns() / 1000
