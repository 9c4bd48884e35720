"""`shmmap bench` end to end at a tiny size: every installed peer runs
every scenario, the JSON holds what the README's table is made of, each
correctness check passes for shmmap, the plot is drawn, nothing is left
behind. No assertion is on speed."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shmmap import bench
from shmmap.bench import gopeer, threads, writes
from shmmap.bench.peers import LMDB_DIR_PREFIX, LMDB_PARENT, PEERS, LockedDictStore

WRITE_SCENARIOS = {"iteration under 1 writer", "writer under iteration", "1 writer together",
                   "2 writers together"}


# What the bench names in /dev/shm: its shmmap maps, LMDB directories,
# UltraDict's and shared-memory-dict's segments. Other entries that come and
# go meanwhile belong to other programs running on this machine.
_BENCH_MADE = re.compile(rf"^(shmmap-bench-|{LMDB_DIR_PREFIX}|ub\d+x\d+|sm_smd\d+x\d+)")


def _shm_entries() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if _BENCH_MADE.match(e)}


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shmmap", "bench", *args],
                          capture_output=True, text=True, timeout=timeout)


def _rows(results: list[dict[str, Any]], system: str) -> dict[str, dict[str, Any]]:
    return {r["scenario"]: r for r in results if r["system"] == system}


def test_bench_quick_run(tmp_path: Path) -> None:
    before = _shm_entries()
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    done = _bench("--quick", "--duration", "0.1", "--json", str(out), "--plot", str(png))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    results = report["results"]
    ran = {r["system"] for r in results}
    for cls in PEERS:
        if cls.available():
            assert cls.name in ran, f"{cls.name} is installed but did not run"
        else:
            assert any(cls.name in line for line in report["skipped"])
    if gopeer.why_missing() is None:
        assert gopeer.NAME in ran
    else:
        assert any(line.startswith(gopeer.NAME) for line in report["skipped"])

    shm = _rows(results, "shmmap")
    assert set(shm) >= {
        "iterate idle", "iterate under load", "get", "set, synchronous",
        "set, batches of 1000", "iteration vs keys", "insert + iterate fully",
        "insert + iterate first item", "delete + insert churn",
        "write latency during promotion"} | WRITE_SCENARIOS
    assert all(r["check"] == "ok" for r in results if r["system"] == "shmmap"), \
        [r for r in results if r["system"] == "shmmap" and r["check"] != "ok"]
    assert all(r["check"] == "ok" or r["check"].startswith(("n/a", "FAILED")) for r in results)

    iteration = shm["iteration under 1 writer"]
    extra = iteration["extra"]
    assert extra["idle_p50_ms"] > 0 and extra["under_load_vs_idle"] > 0
    assert extra["speed_drift"] >= 1.0
    assert extra["turns"] == writes.TURNS
    # The writer only adds keys: a median iteration saw at least the start.
    assert extra["keys_seen_p50"] >= iteration["keys"] and extra["whole_p50_ms"] > 0
    for scenario in WRITE_SCENARIOS - {"iteration under 1 writer"}:
        row = shm[scenario]
        assert row["value"] > 0 and row["unit"] == "writes/s", row
        # The daemon's CPU time is counted within the total. It comes from
        # /proc/PID/stat in clock ticks (10 ms), so a run this short may
        # give the daemon none at all.
        extra = row["extra"]
        assert 0 <= extra["server_cpu_us_per_write"] <= extra["cpu_us_per_write"], extra
        assert extra["cpu_us_per_write"] > 0, extra
    assert shm["2 writers together"]["extra"]["writers"] == 2
    assert len(shm["2 writers together"]["extra"]["per_writer"]) == 2

    for writers in (1, 2):              # --quick's thread shapes: 1x1, 2x2
        row = shm[threads.shape_name(writers, writers)]
        assert row["value"] > 0 and row["unit"] == "writes/s", row
        extra = row["extra"]
        assert extra["writers"] == extra["readers"] == writers == len(extra["per_writer"])
        assert extra["reader_iterations_per_s"] > 0 and extra["reader_gets_per_s"] > 0, extra
    assert {r["system"] for r in results if "reader_gets_per_s" in r["extra"]} <= set(
        threads.SYSTEMS)

    promotion = shm["write latency during promotion"]
    assert promotion["keys"] == 20_000                  # --quick's size
    assert len(promotion["extra"]["promotion_ms"]) == 3
    during = promotion["extra"]["during_promotion"]
    assert during["writes"] >= 1
    assert 0 < during["p50_us"] <= during["p99_us"] <= during["max_ms"] * 1000 + 1  # rounding
    assert promotion["value"] == during["max_ms"]

    for row in results:                 # every multi-process peer ran the writers, or says why not
        if row["scenario"] in WRITE_SCENARIOS and row["check"] == "ok":
            assert row["value"] > 0
            if row["unit"] == "writes/s":
                assert row["extra"]["cpu_us_per_write"] > 0
    assert report["options"]["writer_counts"] == "1,2"
    assert any(line.startswith(("PASS", "MISS")) for line in report["verdicts"])
    assert "scenario" in done.stdout and "writer under iteration" in done.stdout
    assert "\r" not in done.stderr and "\033[" not in done.stderr   # no TTY: no progress line
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    left = _shm_entries() - before
    assert not left, f"the bench left shared memory behind: {sorted(left)}"
    assert not list(Path(LMDB_PARENT).glob(f"{LMDB_DIR_PREFIX}*"))
    assert not list(Path("/tmp").glob("shmmap-bench-*"))


def test_iteration_times_compare_per_key() -> None:
    """The map grows under the writer: an iteration of twice the keys in
    twice the time costs what an idle one does, as ms for the start's keys."""
    idle = [(0.004, 0.003, 1000)] * 3
    grown = [(0.008, 0.006, 2000), (0.0088, 0.0066, 2200), (0.0125, 0.009, 2500)]
    assert writes._ms_at(idle, 1000, 0) == pytest.approx(4.0)
    assert writes._ms_at(grown, 1000, 0) == pytest.approx(4.0)     # the median per key
    assert writes._ms_at(grown, 1000, 1) == pytest.approx(3.0)


def test_the_metronome_reads_the_machines_speed() -> None:
    """A local dict's iteration, timed: positive, and about proportional
    to its keys, however the machine runs. Two readings compare either way."""
    small, big = writes._metronome(10_000), writes._metronome(100_000)
    assert 0 < small < big
    assert writes._drift(0.004, 0.0064) == pytest.approx(1.6) == writes._drift(0.0064, 0.004)
    assert writes._drift(0.004, 0.0064) > writes.UNSTEADY_DRIFT >= writes._drift(0.004, 0.0045)


def test_the_writer_under_iteration_writes_only_in_its_turns() -> None:
    """The iterating side takes idle and loaded stretches in turn: while
    the turn is cleared the writer adds nothing, and the seconds it reports
    are those it wrote for."""
    lock = threading.Lock()
    d = dict.fromkeys(range(1000), 1)
    stop, turn, out = threading.Event(), threading.Event(), []
    store = LockedDictStore(d, lock)
    th = threading.Thread(target=lambda: out.append(
        writes.mixed_writes_in_turns(store, stop, 1000, 7, turn)))
    th.start()
    try:
        turn.set()
        while len(d) < 2000:
            pass
        turn.clear()
        with lock:                      # a burst in flight ends at the turn's end
            pass
        time.sleep(3 * writes.TURN_WAIT_SECONDS)
        paused = len(d)
        time.sleep(3 * writes.TURN_WAIT_SECONDS)
        assert len(d) == paused, "the writer wrote out of its turn"
    finally:
        stop.set()
        turn.set()
        th.join(30)
    (count, seconds), = out
    assert count >= 1000 and 0 < seconds < 60   # 1000 new keys, about as many overwrites


def test_lmdb_runs_on_dev_shm_without_fsync() -> None:
    """The peer's fastest comparable configuration: tmpfs, no fsync."""
    if not (cls := next(c for c in PEERS if c.name.startswith("LMDB"))).available():
        pytest.skip("py-lmdb not installed")
    peer = cls()
    try:
        peer.setup(10)
        assert Path(peer.spec()).parent == Path("/dev/shm")
        store = peer.open()
        try:
            flags = store.env.flags()               # type: ignore[attr-defined]
            assert flags["sync"] is False and flags["metasync"] is False
            store.set(3, 7)
            assert store.get(3) == 7
        finally:
            store.close()
    finally:
        peer.teardown()
    assert not Path(peer.spec()).exists()


def test_plot_without_matplotlib_fails_before_running(tmp_path: Path) -> None:
    png = tmp_path / "bench.png"
    code = ("import sys; sys.modules['matplotlib'] = None; from shmmap.cli.main import main; "
            f"sys.exit(main(['bench', '--quick', '--plot', {str(png)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "--plot needs matplotlib" in done.stderr and "pip install" in done.stderr
    assert done.stdout == "" and not png.exists()


def test_thread_shapes_are_writers_x_readers() -> None:
    assert threads.parse_shapes("1x0, 4x4") == [(1, 0), (4, 4)]
    for bad in ("4", "0x4", "4x", "ax1", "4x4,"):
        with pytest.raises(ValueError, match="WRITERSxREADERS"):
            threads.parse_shapes(bad)
    done = _bench("--scenarios", "threads", "--thread-shapes", "4by4", timeout=60)
    assert done.returncode == 2 and "thread shape '4by4'" in done.stderr
    assert done.stdout == ""


def test_unknown_scenario_is_an_error() -> None:
    done = _bench("--scenarios", "iterate-idle,nonsense", timeout=60)
    assert done.returncode == 2
    assert "unknown scenario nonsense" in done.stderr


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(list(argv))


def test_go_peer_skipped_with_a_note_when_go_is_absent(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(gopeer, "find_go", lambda: None)
    assert bench.run(_args("--quick", "--systems", "go", "--scenarios", "iterate-write")) == 1
    err = capsys.readouterr().err
    assert f"{gopeer.NAME}: skipped, no Go toolchain" in err
    assert "no system to run" in err


@pytest.mark.skipif(gopeer.why_missing() is not None, reason="no Go toolchain")
def test_go_sync_map_peer(tmp_path: Path) -> None:
    out = tmp_path / "go.json"
    done = _bench("--quick", "--duration", "0.2", "--systems", "go", "--scenarios",
                  "iterate-write", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(json.loads(out.read_text())["results"], gopeer.NAME)
    assert set(rows) == {"iteration under 1 writer", "writer under iteration"}
    assert all(r["check"] == "ok" for r in rows.values()), rows
    iteration, writer = rows["iteration under 1 writer"], rows["writer under iteration"]
    assert iteration["extra"]["go_version"].startswith("go")
    assert iteration["value"] > 0 and iteration["extra"]["idle_p50_ms"] > 0
    assert iteration["extra"]["keys_seen_p50"] >= iteration["keys"]
    assert writer["value"] > 0 and writer["extra"]["cpu_us_per_write"] > 0
    assert not list(Path("/tmp").glob("shmmap-bench-go-*"))
