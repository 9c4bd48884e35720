"""The daemon's log next to the new ways of watching it: lines captured from
real daemons."""
from __future__ import annotations

import json
from pathlib import Path

import shmmap
from shmmap.cli import trace


def test_a_trace_records_events_without_printing_them(map_name: str, tmp_path: Path) -> None:
    """A daemon without -v logs nothing below warnings, also while a trace
    makes it produce every event for the recording."""
    out = tmp_path / "t.json"
    with shmmap.Daemon(map_name) as d:
        done: list[float] = []
        with d.connect() as m:
            def during(left: float) -> None:
                if not done:            # once, while recording
                    done.append(left)
                    with d.connect() as other:
                        other["k"] = 1
                    m.promote()
            trace.record(map_name, 1.0, out, progress=during)
    assert d.log() == ""
    names = [e["name"] for e in json.loads(out.read_text())["traceEvents"]]
    assert "connect" in names and "disconnect" in names and "promotion (requested)" in names


def test_verbose_logs_say_where_metrics_are_served(map_name: str) -> None:
    with shmmap.Daemon(map_name, verbose=True, metrics="0") as d, d.connect() as m:
        url = m.stats()["metrics_url"]
    assert f"shmmap INFO: serving metrics on {url}\n" in d.log()
    with shmmap.Daemon(map_name, verbose=True, metrics="0", log_format="json") as d, \
            d.connect() as m:
        url = m.stats()["metrics_url"]
    records = [json.loads(line) for line in d.log().splitlines()]
    (metrics,) = [r for r in records if r.get("event") == "metrics"]
    assert metrics["url"] == url and metrics["level"] == "info"
