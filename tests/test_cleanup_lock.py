"""`shmmap cleanup` and `shmmap ls` decide whether a map is served by the
daemon's lock on the map's header, not by a pid (pids are reused)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

import shmmap
from shmmap.launcher import cleanup
from shmmap.shared import segments
from shmmap.shared.maplock import is_served


def _kill_and_wait(d: shmmap.Daemon) -> None:
    assert d.process is not None
    d.process.send_signal(signal.SIGKILL)
    d.process.wait()


def test_cleanup_refuses_a_served_map_and_removes_a_dead_ones(map_name: str) -> None:
    d = shmmap.Daemon(map_name).start()
    try:
        with d.connect() as m:
            m["k"] = 1
        assert is_served(map_name)
        with pytest.raises(shmmap.DaemonRunningError):
            cleanup(map_name)
        assert segments.map_segments(map_name), "a served map lost segments"
        with d.connect() as m:
            assert m["k"] == 1
        _kill_and_wait(d)                  # the crash path leaves the map
        assert not is_served(map_name)
        assert segments.map_segments(map_name)
        removed = cleanup(map_name)
        assert any(r.endswith(map_name) for r in removed)
        assert segments.map_segments(map_name) == []
    finally:
        d.stop()


def test_ls_says_live_only_while_the_lock_is_held(map_name: str) -> None:
    """A killed daemon's pid stays in the map's header; the map is stale
    because nothing holds its lock, whatever process has that pid now."""
    d = shmmap.Daemon(map_name).start()
    try:
        run = [sys.executable, "-m", "shmmap", "ls", "--json"]
        out = subprocess.run(run, capture_output=True, text=True, check=True, cwd="/").stdout
        row = next(r for r in json.loads(out) if r["name"] == map_name)
        assert row["state"] == "live" and row["daemon_pid"] == d.pid
        _kill_and_wait(d)
        out = subprocess.run(run, capture_output=True, text=True, check=True, cwd="/").stdout
        row = next(r for r in json.loads(out) if r["name"] == map_name)
        assert row["state"] == "stale" and row["daemon_alive"] is False
        assert row["daemon_pid"] == d.pid           # still written there
    finally:
        d.stop()
