"""Writes/s of 1, 2, 4, 8 writer processes, shmmap beside LMDB, in one run.

    .venv/bin/python tools/writes_vs_lmdb.py [COUNTS] [SECONDS]   # default 1,2,4,8 3

Each writer overwrites random keys of a 100,000-key map as fast as it can:
shmmap one synchronous write at a time (``m[k] = 1``), shmmap pipelined
(``with m.pipeline() as p``, 256 writes per round trip), and LMDB (py-lmdb
on /dev/shm, one write transaction per put, no fsync: its fastest
comparable configuration). Each rate comes with the CPU time per write:
the writers' own plus, for shmmap, the daemon's. Needs lmdb
(``pip install lmdb``); removes everything it creates.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import lmdb

import shmmap

KEYS = 100_000
BURST = 64                  # writes between two looks at the clock
PIPELINE_BURST = 256        # writes per pipeline block
CTX = mp.get_context("fork")


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(go: Any, q: Any, seconds: float, write_some: Callable[[], int]) -> None:
    go.wait()
    cpu, started, writes = time.process_time(), time.perf_counter(), 0
    end = started + seconds
    while time.perf_counter() < end:
        writes += write_some()
    q.put((writes, time.perf_counter() - started, time.process_time() - cpu))


def shmmap_writer(name: str, seconds: float, pipelined: bool, go: Any, q: Any) -> None:
    rng = random.Random(os.getpid())
    with shmmap.connect(name) as m:
        def sync() -> int:
            for _ in range(BURST):
                m[rng.randrange(KEYS)] = 1
            return BURST

        def pipeline() -> int:
            with m.pipeline() as p:
                for _ in range(PIPELINE_BURST):
                    p[rng.randrange(KEYS)] = 1
            return PIPELINE_BURST

        _timed(go, q, seconds, pipeline if pipelined else sync)


def lmdb_writer(path: str, seconds: float, _: bool, go: Any, q: Any) -> None:
    rng = random.Random(os.getpid())
    env = lmdb.open(path, map_size=1 << 30, sync=False, metasync=False)
    one = (1).to_bytes(8, "little")

    def puts() -> int:
        for _ in range(BURST):
            with env.begin(write=True) as txn:
                txn.put(rng.randrange(KEYS).to_bytes(8, "little"), one)
        return BURST

    try:
        _timed(go, q, seconds, puts)
    finally:
        env.close()


def measure(target: Callable[..., None], where: str, k: int, seconds: float,
            pipelined: bool = False, server_pid: int = 0) -> tuple[float, float]:
    """(total writes/s, CPU us per write) of k writer processes."""
    q, go = CTX.Queue(), CTX.Event()
    procs = [CTX.Process(target=target, args=(where, seconds, pipelined, go, q))
             for _ in range(k)]
    for p in procs:
        p.start()
    try:
        server0 = _cpu_of(server_pid) if server_pid else 0.0
        go.set()
        results = [q.get(timeout=seconds + 60) for _ in procs]
        server = _cpu_of(server_pid) - server0 if server_pid else 0.0
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    writes = sum(r[0] for r in results)
    rate = sum(r[0] / r[1] for r in results)
    return rate, (sum(r[2] for r in results) + server) / writes * 1e6


def main() -> None:
    counts = [int(c) for c in (sys.argv[1] if len(sys.argv) > 1 else "1,2,4,8").split(",")]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    name = f"writes-vs-lmdb-{os.getpid()}"
    path = tempfile.mkdtemp(prefix="writes-vs-lmdb-", dir="/dev/shm")
    try:
        env = lmdb.open(path, map_size=1 << 30, sync=False, metasync=False)
        with env.begin(write=True) as txn:
            for i in range(KEYS):
                txn.put(i.to_bytes(8, "little"), (1).to_bytes(8, "little"))
        env.close()
        with shmmap.Daemon(name) as d:
            with d.connect() as m:
                m.update({i: 1 for i in range(KEYS)})
                daemon = m.daemon_info["pid"]
            print(f"{'writers':>7}  {'shmmap sync':>22}  {'shmmap pipelined':>22}  "
                  f"{'LMDB, txn per put':>22}   (writes/s, CPU us/write)")
            for k in counts:
                row = [measure(shmmap_writer, name, k, seconds, False, daemon),
                       measure(shmmap_writer, name, k, seconds, True, daemon),
                       measure(lmdb_writer, path, k, seconds)]
                print(f"{k:>7}  " + "  ".join(f"{rate:>11,.0f} {cpu:6.1f} us" for rate, cpu in row),
                      flush=True)
    finally:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
