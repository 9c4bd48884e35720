"""`shmmap trace`: a real daemon recorded while a client process that opted
in iterates and writes; the file is loaded as JSON and checked against
stats()."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import shmmap
from shmmap.cli import trace
from shmmap.server.recorder import Recorder, daemon_log
from shmmap.shared.errors import InvalidRequestError
from shmmap.shared.protocol import Op
from shmmap.shared.tracing import ENV

KEYS = 1000

CLIENT = textwrap.dedent("""
    import sys, shmmap
    m = shmmap.connect(sys.argv[1])
    assert sum(1 for _ in m.items()) == int(sys.argv[2])
    it = iter(m.items()); next(it); del it          # an iteration dropped unfinished
    m["from-client"] = 1
    m.close()
    print("done")
""")


def test_trace_has_rounds_promotions_connects_and_client_lanes(map_name: str,
                                                               tmp_path: Path) -> None:
    out, events = tmp_path / "trace.json", tmp_path / "client-events.jsonl"
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update((i, i) for i in range(KEYS))
        before = m.stats()
        recording = threading.Event()
        summary: dict[str, Any] = {}

        def record() -> None:
            summary.update(trace.record(map_name, 3.0, out, slow_ms=0.0, client_files=[events],
                                        progress=lambda left: recording.set()))

        recorder = threading.Thread(target=record)
        recorder.start()
        try:
            assert recording.wait(60)
            child = subprocess.run([sys.executable, "-c", CLIENT, map_name, str(KEYS)],
                                   env={**os.environ, ENV: str(events)},
                                   capture_output=True, text=True, timeout=60)
            assert child.stdout == "done\n", child.stderr
            m.promote()
        finally:
            recorder.join()
        after = m.stats()
    doc = json.loads(out.read_text())
    evs = doc["traceEvents"]
    assert doc["otherData"]["map"] == map_name and doc["otherData"]["dropped"] == 0
    daemon = [e for e in evs if e["pid"] == d.pid]
    names = {e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"}
    assert f"shmmap daemon: map {map_name!r} (pid {d.pid})" in names
    # Each promotion of the time span, a slice with a duration, reason and size.
    promotions = [e for e in daemon if e["name"].startswith("promotion")]
    assert len(promotions) == after["promotions"] - before["promotions"] == 1
    p = promotions[0]
    assert p["ph"] == "X" and p["dur"] > 0 and p["name"] == "promotion (requested)"
    assert p["args"]["entries"] == KEYS + 1 == after["live_keys"]
    assert p["args"]["bytes"] > 0
    assert p["dur"] == pytest.approx(after["last_promotion_ms"] * 1000, abs=1)
    # The rounds (group commits) with their request counts; with --slow-ms 0
    # every request is also a slow one.
    rounds = [e for e in daemon if e["name"] == "round"]
    assert rounds and all(e["args"]["requests"] >= 1 and e["dur"] >= 0 for e in rounds)
    assert any(e["name"] == "slow PROMOTE" for e in daemon)
    slow_batches = [e for e in daemon if e["name"] == "slow BATCH"]
    assert slow_batches and all(e["args"]["op"] == "BATCH" for e in slow_batches)
    assert any(e["ph"] == "C" and e["args"]["live_keys"] >= KEYS for e in daemon)
    # The client's connect and disconnect, in the daemon's lane.
    connects = [e for e in daemon if e["name"] in ("connect", "disconnect")]
    pids = {e["args"]["pid"] for e in connects}
    assert len(pids) == 1 and {e["name"] for e in connects} == {"connect", "disconnect"}
    (child_pid,) = pids
    # The client's one write, among the slow ones by pid.
    assert [e["args"]["pid"] for e in slow_batches].count(child_pid) == 1
    # The client's own lane: its iterations and its wait for the daemon.
    lane = [e for e in evs if e["pid"] == child_pid]
    assert any(e["ph"] == "M" and f"(pid {child_pid})" in e["args"]["name"] for e in lane)
    iterations = [e for e in lane if e["name"] == "iterate"]
    assert [(e["args"]["items"], e["args"]["finished"]) for e in iterations] == \
        [(KEYS, True), (1, False)]
    assert all(e["dur"] >= 0 and e["tid"] > 0 for e in iterations)
    waits = [e for e in lane if e["name"] == "wait BATCH"]
    assert len(waits) == 1 and waits[0]["args"]["requests"] == 1
    assert summary["client_events"] == 3 and summary["daemon_events"] == len(daemon) - 2
    # Every event of the daemon's lane ends within the recording (the round
    # of the request that started it began a little before).
    start = doc["otherData"]["started_us"]
    assert all(e["ts"] + e.get("dur", 0) >= start for e in daemon if e["ph"] != "M")


def test_one_recording_at_a_time_and_a_departed_recorder_is_forgotten(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        first = d.connect()
        first._request(Op.TRACE, 60, 0.001)
        with d.connect() as second:
            with pytest.raises(InvalidRequestError, match=r"is recording a trace .* one at a time"):
                second._request(Op.TRACE, 1, 0.001)
            with pytest.raises(InvalidRequestError, match="TRACE takes seconds"):
                second._request(Op.TRACE, -1, 0)
            first.close()
            # The daemon forgets a recording whose client left: the next may start.
            for _ in range(1000):
                try:
                    second._request(Op.TRACE, 1, 0.001)
                    break
                except InvalidRequestError:
                    pass        # the daemon has not yet read the first one's goodbye
            got = second._request(Op.TRACE, 0, 0)
            assert got["pid"] == d.pid and got["dropped"] == 0
            with pytest.raises(InvalidRequestError, match="no trace is being recorded"):
                second._request(Op.TRACE, 0, 0)


def test_trace_command_writes_the_file_and_says_so(map_name: str, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    with shmmap.Daemon(map_name):
        done = subprocess.run([sys.executable, "-m", "shmmap", "trace", map_name, "--duration",
                               "0.5", "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}: ") and "ui.perfetto.dev" in done.stdout
    evs = json.loads(out.read_text())["traceEvents"]
    # Its own connection is in the trace (the stop request's round at least).
    assert any(e["name"] == "round" for e in evs)
    missing = subprocess.run([sys.executable, "-m", "shmmap", "trace", map_name, "-o",
                              str(tmp_path / "no" / "t.json")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1 and "no directory" in missing.stderr


def test_promotion_phases_become_slices_inside_the_promotion() -> None:
    """When the writer reports a promotion's phases (a "phases" field of its
    log record, in order), the trace nests one slice per phase in it."""
    from shmmap.server.stats import Timings

    class Conn:
        peer = None

    conn = Conn()
    recorder = Recorder(Timings(), lambda: {})
    recorder.op_trace(conn, 10, 0.001)
    try:
        daemon_log.info("promoted", extra={
            "event": "promotion", "reason": "full", "entries": 5, "bytes": 80, "ms": 3.0,
            "phases": {"measure": 1.0, "build": 1.5, "publish": 0.5}})
    finally:
        got, _ = recorder.op_trace(conn, 0, 0)
    promotion, *phases = got["events"]
    assert promotion[:2] == ["X", "promotion (full)"] and promotion[3] == pytest.approx(3000)
    assert promotion[4] == {"reason": "full", "entries": 5, "bytes": 80, "ms": 3.0}
    assert [(p[1], p[3]) for p in phases] == [("measure", 1000), ("build", 1500),
                                              ("publish", 500)]
    assert phases[0][2] == promotion[2]
    assert phases[-1][2] + phases[-1][3] == pytest.approx(promotion[2] + promotion[3])
    assert daemon_log.handlers == [] and not recorder.on
