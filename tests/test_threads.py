"""Threads of one process sharing one map: lookups and iterations must never
touch a generation that another thread let go of while generations come
and go; writer threads beside reader threads, whose waits keep the GIL for
a while (shmmap/client/gil.py), must have every write acknowledged, readable and
whole. The heavy cases run in a child process, so that a crash fails the
test instead of killing the run."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from typing import Any

import pytest

import shmmap

CTX = mp.get_context("spawn")
KEYS = 3000


def _hammer(name: str, rounds: int, out: mp.Queue[object]) -> None:
    m = shmmap.connect(name)
    stop = threading.Event()
    errors: list[str] = []
    work = [0]

    def read() -> None:
        while not stop.is_set():
            try:
                for k in range(0, KEYS, 7):
                    v = m.get(k)
                    assert v is None or v[0] == k, (k, v)
                seen = dict(m.items())
                assert all(v[0] == k for k, v in seen.items())
                work[0] += 1
            except Exception as exc:     # reported to the parent
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for r in range(rounds):
        m.update({k: (k, r) for k in range(r % 3, KEYS, 3)})
        m.promote()
    stop.set()
    for t in threads:
        t.join()
    m.close()
    out.put((errors, work[0]))


def test_promotions_under_reader_threads(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update({k: (k, -1) for k in range(KEYS)})
        out = CTX.Queue()
        child = CTX.Process(target=_hammer, args=(map_name, 60, out))
        child.start()
        child.join(120)
        assert child.exitcode == 0, f"child ended with {child.exitcode}"
        errors, work = out.get(timeout=10)
        assert errors == []
        assert work > 0
        assert m.stats()["promotions"] >= 60


# -- writer threads beside reader threads ---------------------------------------------

WRITERS, READERS, ROUNDS = 4, 4, 240


def _writer(m: shmmap.SharedMap, w: int, written: dict[Any, int]) -> None:
    """ROUNDS writes of every kind there is; each read back at once."""
    count = ("count", w)
    m[count] = written[count] = 0
    for i in range(ROUNDS):
        kind = i % 4
        keys: list[Any]
        if kind == 0:
            keys = [("set", w, i)]
            m[keys[0]] = i
        elif kind == 1:
            keys = [("batch", w, i, 0), ("batch", w, i, 1)]
            with m.batch() as b:
                for k in keys:
                    b[k] = i
        elif kind == 2:
            keys = [("pipeline", w, i, 0), ("pipeline", w, i, 1)]
            with m.pipeline() as p:
                for k in keys:
                    p[k] = i
        else:
            keys = []
            if not m.compare_and_swap(count, written[count], written[count] + 1):
                raise AssertionError(f"compare_and_swap of {count} lost to nobody")
            written[count] += 1
        for k in keys:
            written[k] = i
        for k in keys + [count]:
            if m[k] != written[k]:      # acknowledged: readable now
                raise AssertionError(f"{k!r} read {m[k]!r} after writing {written[k]!r}")


def _reader(m: shmmap.SharedMap, r: int, stop: threading.Event) -> int:
    """Iterates until stopped; checks that no batch is seen half applied
    and that no counter goes back. The iterations made."""
    counts: dict[Any, int] = {}
    made = 0
    while not stop.is_set():
        seen = dict(m.items())
        for k, v in seen.items():
            if k[0] == "batch" and seen.get(k[:3] + (1 - k[3],)) != v:
                raise AssertionError(f"half a batch: {k!r} = {v!r} without its pair")
            if k[0] == "count":
                if v < counts.get(k, 0):
                    raise AssertionError(f"{k!r} went back from {counts[k]} to {v}")
                counts[k] = v
        m.get(("set", r, 0))
        made += 1
    return made


def _write_beside_readers(name: str, out: mp.Queue[object]) -> None:
    sys.setswitchinterval(1e-5)         # the GIL changes hands as often as it can
    m = shmmap.connect(name)
    stop = threading.Event()
    errors: list[str] = []
    written: list[dict[Any, int]] = [{} for _ in range(WRITERS)]
    made = [0] * READERS

    def guarded(job: Any, *args: Any) -> None:
        try:
            job(*args)
        except Exception as exc:        # reported to the parent
            errors.append(repr(exc))

    def read(r: int) -> None:
        made[r] = _reader(m, r, stop)

    readers = [threading.Thread(target=guarded, args=(read, r)) for r in range(READERS)]
    writers = [threading.Thread(target=guarded, args=(_writer, m, w, written[w]))
               for w in range(WRITERS)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    m.close()
    out.put((errors, {k: v for mine in written for k, v in mine.items()}, made))


def test_writer_threads_beside_reader_threads_lose_no_write(map_name: str) -> None:
    """4 threads writing through every path (store, batch, pipeline,
    compare_and_swap) beside 4 threads iterating, in a child process whose
    GIL changes hands every 10 us: each write reads back at once in its
    thread, no iteration sees half a batch or a counter going back, and
    another process reads exactly what the writers wrote."""
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        out = CTX.Queue()
        child = CTX.Process(target=_write_beside_readers, args=(map_name, out))
        child.start()
        errors, written, made = out.get(timeout=300)
        child.join(60)
        assert child.exitcode == 0, f"child ended with {child.exitcode}"
        assert errors == []
        assert all(made), made
        assert len(written) == WRITERS * (1 + ROUNDS // 4 * 5)
        assert m.snapshot() == written


def _inside(t: threading.Thread, function: str) -> None:
    """Until thread t runs function (seen from this thread, which must
    hold the GIL to look)."""
    for _ in range(10000):
        frame = sys._current_frames().get(t.ident or 0)
        while frame is not None:
            if frame.f_code.co_name == function:
                return
            frame = frame.f_back
        time.sleep(0.001)
    raise AssertionError(f"the thread never got into {function}")


@pytest.mark.parametrize("op, wait", [("store", "batch"), ("compare_and_swap", "_recv_some")])
def test_a_reply_later_than_the_held_wait_lets_the_other_threads_run(
        map_name: str, op: str, wait: str) -> None:
    """The daemon stopped: a thread's wait for it (the channel's for a
    store, the socket's for compare_and_swap) outlasts the part that keeps
    the GIL, so this thread runs and sees it waiting; once the daemon goes
    on, the reply is taken and the write is there."""
    with shmmap.Daemon(map_name) as d, d.connect(timeout=30) as m:
        m["k"] = 0
        got: dict[str, Any] = {}

        def write() -> None:
            try:
                if op == "store":
                    m.store("k", 1)
                    got["result"] = None
                else:
                    got["result"] = m.compare_and_swap("k", 0, 1)
            except Exception as exc:    # reported to the test
                got["result"] = exc

        os.kill(d.pid, signal.SIGSTOP)
        t = threading.Thread(target=write)
        try:
            t.start()
            _inside(t, wait)
        finally:
            os.kill(d.pid, signal.SIGCONT)
            t.join(30)
        assert got["result"] is (None if op == "store" else True)
        assert m["k"] == 1
