"""Promotion beside the live generation, through a real daemon: writes go
on while a promotion is built and every acknowledged write is in the
generation it publishes; a build starts before the generation fills; a
clear cancels a build; a daemon killed mid-build leaves a map the next one
adopts whole."""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

import shmmap
from shmmap._core import lib
from shmmap.shared import segments
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.protocol import Op, batch_blob

BIG = 400_000           # keys of a map whose build takes long enough to catch
POLL_SECONDS = 60.0


def _load(m: shmmap.SharedMap, n: int, start: int = 0) -> None:
    for i in range(start, start + n, 50_000):
        m.update({k: k for k in range(i, min(start + n, i + 50_000))})


def _wait_building(m: shmmap.SharedMap) -> bool:
    """Polls stats until a build is under way; False if a promotion was
    published first."""
    published = m.stats()["promotions"]
    deadline = time.monotonic() + POLL_SECONDS
    while time.monotonic() < deadline:
        st = m.stats()
        if st["promotion_building"]:
            return True
        if st["promotions"] > published:
            return False
    raise AssertionError("no build started")


class Writer(threading.Thread):
    """Overwrites keys [0, n) one synchronous write at a time on its own
    connection, remembering what was acknowledged, until stopped."""

    def __init__(self, m: shmmap.SharedMap, n: int) -> None:
        super().__init__()
        self.m, self.n = m, n
        self.acked: dict[int, Any] = {}
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stopping.is_set():
                k = (i * 7919) % self.n
                self.m[k] = ["w", i]
                self.acked[k] = ["w", i]
                i += 1
        except shmmap.ShmmapError as exc:       # the daemon killed under it
            self.error = exc

    def finish(self) -> dict[int, Any]:
        self.stopping.set()
        self.join()
        return self.acked


def test_writes_go_on_while_a_requested_promotion_is_built(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m, d.connect() as m2:
        _load(m, BIG)
        writer = Writer(m2, BIG)
        writer.start()
        try:
            gens = [m.promote() for _ in range(3)]
        finally:
            acked = writer.finish()
        assert writer.error is None
        assert gens == sorted(gens) and len(set(gens)) == 3
        st = m.stats()
        assert st["background_promotions"] >= 3 and not st["promotion_building"]
        last = st["last_promotion"]
        assert last["reason"] == "requested" and last["background"]
        assert last["entries"] == BIG and last["generation"] == gens[-1]
        assert set(last["phases_ms"]) == {"measure", "create", "build", "replay", "publish"}
        # The writer went on during the builds: its writes were replayed.
        assert acked and st["writes"] > len(acked)
        snap = m.snapshot()
        assert len(snap) == BIG
        for k, v in acked.items():
            assert snap[k] == v, k


def test_a_readers_cache_follows_promotions_built_under_writes(map_name: str) -> None:
    """The writes g took while g+1 was built are in g+1 too, with their
    seqs: a reader's cache carries on through such a promotion, from a
    refresh made while it was built or from one before it, without loading
    the map again, and reads what a reader without a cache reads."""
    with shmmap.Daemon(map_name) as d, d.connect() as m, d.connect() as m2, \
            d.connect() as promoter, d.connect() as reader:
        _load(m, BIG)
        assert sum(1 for _ in reader.items()) == BIG       # loads the cache
        loads = reader.stats()["cache"]["loads"]
        writer = Writer(m2, BIG)
        writer.start()
        try:
            promoting = threading.Thread(target=promoter.promote)
            promoting.start()
            if _wait_building(m):
                reader.get(0)           # the cache moves past the build's base
            promoting.join()
            reader.get(0)               # ... and follows the promotion
            replayed = [m.stats()["last_promotion"]["replayed"]]
            promoter.promote()          # the cache still at a seq before it
            replayed.append(m.stats()["last_promotion"]["replayed"])
        finally:
            acked = writer.finish()
        assert writer.error is None
        assert all(replayed), f"no writes during a build to replay: {replayed}"
        with d.connect(cache_keys=0) as plain:
            truth = plain.snapshot()
        assert dict(reader.items()) == truth
        for k, v in acked.items():
            assert truth[k] == v, k
        assert reader.stats()["cache"]["loads"] == loads


def test_a_build_starts_before_the_generation_fills(map_name: str) -> None:
    n = lib.SHM_BACKGROUND_MIN_LIVE + 1000
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        _load(m, n)
        m.promote()
        base = m.stats()
        deadline = time.monotonic() + POLL_SECONDS
        key = n
        while m.stats()["promotions_by_reason"].get("runway", 0) == 0:
            assert time.monotonic() < deadline, "no build for the runway"
            with m.batch() as b:
                for k in range(key, key + 100):
                    b[k] = k
            key += 100
        st = m.stats()
        # It started with room left: no write found the generation full.
        assert st["promotions_by_reason"].get("full", 0) == \
            base["promotions_by_reason"].get("full", 0)
        assert st["writes_waited_for_build"] == 0
        assert len(m) == key and m[key - 1] == key - 1


def test_clear_during_a_build_cancels_it(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m, d.connect() as m2:
        _load(m, BIG)
        result: list[Any] = []
        for _ in range(5):
            asker = threading.Thread(target=lambda: result.append(m2.promote()))
            asker.start()
            try:
                building = _wait_building(m)
                if building:
                    m.clear()
            finally:
                asker.join()
            if building:
                break
            _load(m, BIG)
        else:
            pytest.skip("every build was published before the clear came")
        st = m.stats()
        assert st["builds_cancelled"] == 1 and not st["promotion_building"]
        assert len(m) == 0 and result[-1] == st["generation"]    # answered by the clear's
        gen = segments.gen_name(map_name, st["generation"])
        assert [s for s in segments.map_segments(map_name) if segments.GEN_INFIX in s[len(map_name):]] \
            == [gen]
        m["after"] = 1
        assert dict(m.items()) == {"after": 1}


def test_a_daemon_killed_mid_build_leaves_an_adoptable_map(map_name: str) -> None:
    d = shmmap.Daemon(map_name).start()
    try:
        with d.connect() as m, d.connect(timeout=30) as m2:
            _load(m, BIG)
            m["mark"] = "before the build"
            writer = Writer(m, BIG)
            asker = threading.Thread(target=lambda: _ignore_errors(m2.promote))
            asker.start()
            writer.start()
            try:
                with d.connect() as watcher:
                    building = _wait_building(watcher)
                    os.kill(d.pid, signal.SIGKILL)
            finally:
                acked = writer.finish()
                asker.join()
        d.stop()
        left = segments.map_segments(map_name)
        assert left, "a killed daemon leaves its map"
        with shmmap.Daemon(map_name) as again, again.connect() as m3:
            assert "adopted" in again.log()
            snap = m3.snapshot()
            assert snap["mark"] == "before the build" and len(snap) == BIG + 1
            for k, v in acked.items():     # every acknowledged write
                assert snap[k] == v, k
            st = m3.stats()
            gens = [s for s in segments.map_segments(map_name) if segments.GEN_INFIX in s[len(map_name):]]
            assert gens == [segments.gen_name(map_name, st["generation"])]
        if not building:
            pytest.skip("the build was published before the kill (the adoption was checked)")
    finally:
        if d.process is not None and d.process.poll() is None:
            d.process.kill()
            d.process.wait()


def _ignore_errors(call: Any) -> None:
    try:
        call()
    except shmmap.ShmmapError:
        pass                    # the daemon was killed before it answered


def test_replies_after_a_promotion_request_keep_their_order(map_name: str) -> None:
    """A promotion request is answered once published; the requests the
    same connection sent after it are applied meanwhile, but their replies
    come after its reply, in request order."""
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        _load(m, 50_000)
        gen = m.promote()               # after it, the map has room: no build of its own
        blob = batch_blob([(encode_key("during"), encode_value(1))])
        promoted, written, stats = m._pipeline([[Op.PROMOTE], [Op.BATCH, blob], [Op.STATS]])
        assert promoted == gen + 1 and written is None
        assert stats["generation"] in (gen, gen + 1)
        assert m["during"] == 1 and len(m) == 50_001
