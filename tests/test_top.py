"""`shmmap top`: frames of a real daemon under load, checked against
stats(); the quantile estimate it shows."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Iterator

import pytest

import shmmap
from shmmap.cli.format import quantile
from shmmap.shared.protocol import BUCKET_BOUNDS

KEYS = 1000
Busy = tuple[shmmap.Daemon, shmmap.SharedMap]


@pytest.fixture
def busy_map(map_name: str) -> Iterator[Busy]:
    """A daemon of KEYS keys with a thread writing and reading them until
    the test ends."""
    # uncached: reads the cache serves never reach shared memory, so count nothing
    with shmmap.Daemon(map_name) as d, d.connect(cache_keys=0) as m:
        m.update((i, i) for i in range(KEYS))
        m.promote()
        stop = threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set():
                m[i % 100] = i
                m.get(i % KEYS)
                i += 1

        t = threading.Thread(target=load)
        t.start()
        try:
            yield d, m
        finally:
            stop.set()
            t.join()


def top(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "shmmap", "top", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_top_once_prints_one_frame_that_matches_stats(busy_map: Busy) -> None:
    d, m = busy_map
    before = m.stats()
    text = top(d.name, "--once", "--interval", "0.3")
    after = m.stats()
    lines = text.splitlines()
    assert lines[0].startswith(f"shmmap top - map '{d.name}', daemon pid {d.pid}, up ")
    assert f"live keys  {KEYS:>14,}" in text
    # The load promotes now and then (its writes fill the dirty table).
    gen = int(text.split("(generation ")[1].split(")")[0])
    assert before["generation"] <= gen <= after["generation"]
    promotions = int(text.split("promotions ")[1].split(" ")[0].replace(",", ""))
    assert before["promotions"] <= promotions <= after["promotions"]
    assert "requested 1" in text
    # The test's connection and top's own.
    assert "clients 2 " in text
    assert "older generations still mapped 0" in text
    writes = next(line for line in lines if line.startswith("writes/s"))
    assert int(writes.split()[1].replace(",", "")) > 0
    latency = next(line for line in lines if line.startswith("request latency"))
    assert " us" in latency and "p99" in latency
    assert any(line.strip().startswith("BATCH") for line in lines)
    assert not text.startswith("\x1b")          # not a terminal: no redrawing


def test_top_json_frames_hold_the_numbers(busy_map: Busy) -> None:
    d, m = busy_map
    before = m.stats()
    frames = [json.loads(line) for line in
              top(d.name, "--json", "--count", "2", "--interval", "0.2").splitlines()]
    after = m.stats()
    assert len(frames) == 2
    for f in frames:
        assert f["map"] == d.name and f["pid"] == d.pid == after["pid"]
        assert f["live_keys"] == KEYS == after["live_keys"]
        assert before["generation"] <= f["generation"] <= after["generation"]
        assert before["promotions"] <= f["promotions"] <= after["promotions"]
        assert f["promotions_in_interval"] <= f["promotions"] - before["promotions"]
        assert f["clients"] == 2
        assert f["writes_per_s"] > 0 and f["lookups_per_s"] > 0
        assert 0 <= f["miss_ratio"] <= 1
        assert f["request_p50_us"] <= f["request_p99_us"]
        batch = next(o for o in f["ops"] if o["op"] == "BATCH")
        assert batch["per_s"] > 0 and batch["p50_us"] > 0


def test_top_of_a_map_without_daemon_is_an_error(map_name: str) -> None:
    done = subprocess.run([sys.executable, "-m", "shmmap", "top", map_name, "--once"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"shmmap: no map named {map_name!r} on this host\n"


def test_quantile_interpolates_inside_the_bucket() -> None:
    counts = [0] * (len(BUCKET_BOUNDS) + 1)
    assert quantile(counts, 0.5) is None
    i = BUCKET_BOUNDS.index(1e-4)           # the bucket (5e-5, 1e-4]
    counts[i] = 100
    assert quantile(counts, 0.5) == pytest.approx(7.5e-5)
    assert quantile(counts, 1.0) == pytest.approx(1e-4)
    counts[-1] = 100                        # past the last bound
    assert quantile(counts, 0.99) == BUCKET_BOUNDS[-1]
    assert quantile(counts, 0.25) == pytest.approx(7.5e-5)
