"""Writes per second of one client process: the synchronous SharedMap
(through its channel, and on the socket alone) beside shmmap.aio (one
task awaiting each write, and many tasks at once), in the same run,
against one daemon, in turns.

    .venv/bin/python tools/aio_write_rate.py [SECONDS] [ROUNDS]   # default 1.0 5

Each round runs every client for SECONDS; the median round is printed,
with the CPU time this process spent per write. Rates move with the
machine's load: compare the rows of one run, not runs.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

import shmmap
import shmmap.aio

KEYS = 1000
TASKS = 16


def _sync(m: shmmap.SharedMap, seconds: float) -> int:
    writes, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for k in range(100):
            m[k] = writes
            writes += 1
    return writes


async def _aio(m: shmmap.aio.AsyncMap, seconds: float, tasks: int) -> int:
    deadline = time.monotonic() + seconds

    async def one(base: int) -> int:
        writes = 0
        while time.monotonic() < deadline:
            for k in range(100 // tasks or 1):
                await m.set(base + k, writes)
                writes += 1
        return writes

    return sum(await asyncio.gather(*(one(t * 100) for t in range(tasks))))


def _clocks() -> tuple[float, float]:
    return time.process_time(), time.monotonic()


def _rate(writes: int, since: tuple[float, float]) -> tuple[float, float]:
    """(writes per second, CPU microseconds per write) since _clocks() said since."""
    cpu, wall = (now - then for now, then in zip(_clocks(), since))
    return writes / wall, cpu / writes * 1e6


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    results: dict[str, list[tuple[float, float]]] = {}
    with shmmap.Daemon(f"aiorate{os.getpid()}") as daemon:
        chan = daemon.connect()
        sock = daemon.connect(channel=False)

        async def aio_rounds() -> None:
            async with shmmap.aio.connect(daemon.name) as m:
                for _ in range(rounds):
                    for label, tasks in (("aio, 1 task", 1), (f"aio, {TASKS} tasks", TASKS)):
                        since = _clocks()
                        results.setdefault(label, []).append(
                            _rate(await _aio(m, seconds, tasks), since))
                    for label, sync_map in (("sync, channel", chan), ("sync, socket", sock)):
                        since = _clocks()
                        results.setdefault(label, []).append(
                            _rate(_sync(sync_map, seconds), since))

        asyncio.run(aio_rounds())
        chan.close()
        sock.close()
    print(f"{'client':<18} {'writes/s':>10} {'CPU us/write':>13}   (median of {rounds} rounds "
          f"of {seconds:g} s, {os.cpu_count()} cores)")
    for label in ("sync, channel", "sync, socket", "aio, 1 task", f"aio, {TASKS} tasks"):
        rate = statistics.median(r for r, _ in results[label])
        cpu = statistics.median(c for _, c in results[label])
        print(f"{label:<18} {rate:>10,.0f} {cpu:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
