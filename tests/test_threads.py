"""Threads of one process sharing one map while generations come and go:
lookups and iterations must never touch a generation that another thread
let go of. Runs in a child process, so that a crash fails the test instead
of killing the run."""
from __future__ import annotations

import multiprocessing as mp
import threading

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
