"""``shmmap trace NAME --duration S --output FILE``: asks the daemon to
record, waits, merges the daemon's events with the clients' lines of the
same time span and writes a trace Perfetto opens (see shared/tracing.py)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ..client.map import connect
from ..shared.protocol import Op
from ..shared.tracing import ENV, now_us

DEFAULT_SLOW_MS = 1.0


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


def trace_files(named: Iterable[str]) -> list[Path]:
    """The client trace files to merge: those named, else $SHMMAP_TRACE."""
    files = [Path(p) for p in named]
    if not files and os.environ.get(ENV):
        files = [Path(os.environ[ENV])]
    return files
