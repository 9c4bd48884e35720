"""Threads of one process sharing one handle: N writer threads, each
overwriting keys of its own one synchronous write at a time, beside M
reader threads that iterate the whole map and get keys. What a web server's
worker threads do to a map, and where the GIL decides who runs: a thread
that waits with the GIL released must win it back from threads that run
Python. Reported: the writers' total writes/s, the readers' iterations/s
and gets/s beside it."""
from __future__ import annotations

import random
import threading
import time
from functools import partial
from typing import Any, Callable

from .peers import Peer, Store
from .scenarios import CheckFailed, Result, full_iteration

# The systems this scenario compares: shmmap and the two whose handles
# threads share as they are (an LMDB environment, a redis-py client).
SYSTEMS = ("shmmap", "LMDB (py-lmdb, /dev/shm)", "Redis (Unix socket)")
GETS_PER_ITERATION = 100    # gets a reader makes after each full iteration
START_TIMEOUT = 60.0        # seconds a thread may take to make its next operation


def parse_shapes(spec: str) -> list[tuple[int, int]]:
    """"1x0,4x4" -> [(1, 0), (4, 4)]: writer and reader threads; ValueError
    for anything else."""
    shapes = []
    for part in spec.split(","):
        writers, sep, readers = part.strip().partition("x")
        if not sep or not writers.isdigit() or not readers.isdigit() or int(writers) < 1:
            raise ValueError(f"thread shape {part.strip()!r}: WRITERSxREADERS, at least one "
                             f"writer, e.g. 4x4")
        shapes.append((int(writers), int(readers)))
    return shapes


def shape_name(writers: int, readers: int) -> str:
    """The scenario's name for a shape: "4 writer + 4 reader threads"."""
    if not readers:
        return f"{writers} writer thread{'s' if writers > 1 else ''} alone"
    return f"{writers} writer + {readers} reader threads"


class _Counts:
    """Each thread's operations so far, in a slot of its own (only its
    thread writes it), and the first error any thread met."""

    def __init__(self, threads: int) -> None:
        self.ops = [0] * threads
        self.gets = [0] * threads
        self.errors: list[str] = []
        self.started = threading.Semaphore(0)


def _writer(store: Store, n: int, writers: int, slot: int, counts: _Counts,
            stop: threading.Event) -> None:
    rng = random.Random(slot)
    own = range(slot, n, writers)       # overwrites with 1: n keys summing to n stay
    keys = [own[rng.randrange(len(own))] for _ in range(1 << 12)]
    mask = len(keys) - 1
    done = 0
    store.set(keys[0], 1)
    counts.started.release()
    while not stop.is_set():
        store.set(keys[done & mask], 1)
        done += 1
        counts.ops[slot] = done


def _reader(store: Store, n: int, slot: int, counts: _Counts, stop: threading.Event) -> None:
    rng = random.Random(-slot)
    keys = [rng.randrange(n) for _ in range(GETS_PER_ITERATION)]
    store.get(keys[0])
    counts.started.release()
    while not stop.is_set():
        full_iteration(store, n)        # CheckFailed unless n keys summing to n
        for k in keys:
            if store.get(k) != 1:
                raise CheckFailed(f"get({k}) read {store.get(k)!r}, not 1")
        counts.ops[slot] += 1
        counts.gets[slot] += len(keys)


def _guarded(counts: _Counts, stop: threading.Event, work: Callable[[], None]) -> None:
    try:
        work()
    except Exception as exc:            # reported as the row's check
        counts.errors.append(f"{exc!r}")
        stop.set()
        counts.started.release()


def _window(counts: _Counts, duration: float) -> tuple[list[int], list[int], float]:
    """The operations each thread made over at least duration seconds, and
    the seconds they took: the window lasts until every thread made one
    more operation, so that a thread the others kept from the GIL for the
    whole duration shows in a longer window rather than as a rate of 0."""
    ops0, gets0, t0 = list(counts.ops), list(counts.gets), time.perf_counter()
    time.sleep(duration)
    deadline = time.monotonic() + START_TIMEOUT
    while any(a == b for a, b in zip(ops0, counts.ops)) and not counts.errors:
        if time.monotonic() > deadline:
            raise RuntimeError(f"a thread made no operation for {START_TIMEOUT} s")
        time.sleep(0.001)
    ops1, gets1, t1 = list(counts.ops), list(counts.gets), time.perf_counter()
    return ([b - a for a, b in zip(ops0, ops1)], [b - a for a, b in zip(gets0, gets1)], t1 - t0)


def _one_shape(store: Store, n: int, duration: float, writers: int, readers: int
               ) -> tuple[list[int], list[int], float, list[str]]:
    counts, stop = _Counts(writers + readers), threading.Event()
    jobs: list[Callable[[], None]] = [
        partial(_writer, store, n, writers, slot, counts, stop) for slot in range(writers)]
    jobs += [partial(_reader, store, n, slot, counts, stop)
             for slot in range(writers, writers + readers)]
    threads = [threading.Thread(target=_guarded, args=(counts, stop, job), daemon=True)
               for job in jobs]
    for t in threads:
        t.start()
    try:
        for _ in threads:               # each made one operation (or failed)
            if not counts.started.acquire(timeout=START_TIMEOUT):
                raise RuntimeError(f"the threads did not start within {START_TIMEOUT} s")
        ops, gets, seconds = _window(counts, duration) if not counts.errors else ([], [], 0.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return ops, gets, seconds, counts.errors


def threads_together(peer: Peer, n: int, duration: float, shapes: list[tuple[int, int]]
                     ) -> list[Result]:
    """For each (writers, readers) in shapes, a row: the writers' total
    writes/s over duration seconds, with the readers' rates beside it."""
    rows = []
    for writers, readers in shapes:
        name = shape_name(writers, readers)
        store = peer.open()
        try:
            ops, gets, seconds, errors = _one_shape(store, n, duration, writers, readers)
            if not errors:
                full_iteration(store, n)    # still n keys summing to n
        except (CheckFailed, RuntimeError) as exc:
            errors = [f"{exc}"]
        finally:
            store.close()
        if errors:
            rows.append(Result(name, peer.name, n, None, "writes/s", f"FAILED: {errors[0]}"))
            continue
        rows.append(Result(name, peer.name, n, round(sum(ops[:writers]) / seconds), "writes/s",
                           extra=_readers_extra(ops, gets, seconds, writers)))
    return rows


def _readers_extra(ops: list[int], gets: list[int], seconds: float, writers: int
                   ) -> dict[str, Any]:
    iterations, got = sum(ops[writers:]), sum(gets[writers:])
    per_writer = [round(w / seconds) for w in ops[:writers]]
    extra: dict[str, Any] = {"writers": writers, "readers": len(ops) - writers,
                             "seconds": round(seconds, 3), "per_writer": per_writer,
                             "reader_iterations_per_s": round(iterations / seconds, 1),
                             "reader_gets_per_s": round(got / seconds)}
    extra["summary"] = (f"readers: {extra['reader_iterations_per_s']:,} iterations/s, "
                        f"{extra['reader_gets_per_s']:,} gets/s" if len(ops) > writers
                        else "no readers")
    return extra
