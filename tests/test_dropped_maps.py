"""Maps dropped without close() (or aclose()) release what they hold:
their sockets, channels (a memfd mapping and an eventfd each), mappings
and reader slots go with them when they are collected."""
from __future__ import annotations

import asyncio
import gc
import time

import shmmap
import shmmap.aio
from conftest import mappings_of, open_fds


def _until_one_client(name: str) -> None:
    """Until the daemon counts one client, the one asking: it saw every
    dropped map's connection close (and freed its reader slot)."""
    deadline = time.monotonic() + 30
    with shmmap.connect(name) as m:
        while m.stats()["clients"] != 1:
            assert time.monotonic() < deadline, m.stats()["clients"]
            time.sleep(0.01)


async def _collected() -> None:
    """Collects garbage and lets the loop run the aborts that dropped
    maps' finalizers scheduled (an abort closes the socket a turn later)."""
    gc.collect()
    for _ in range(2):
        await asyncio.sleep(0)


def test_asyncio_maps_dropped_without_aclose_release_what_they_hold(map_name: str) -> None:
    """The same for asyncio maps, never aclose()d: the socket of each is
    aborted in its loop."""
    cycles = 2000

    async def main() -> tuple[tuple[int, int], tuple[int, int]]:
        m = await shmmap.aio.connect(map_name)
        await m.set("k", -1)
        del m
        await _collected()
        before = open_fds(), mappings_of(map_name)
        for i in range(cycles):
            m = await shmmap.aio.connect(map_name)
            await m.set("k", i)
            assert m["k"] == i
        del m
        await _collected()
        return before, (open_fds(), mappings_of(map_name))

    with shmmap.Daemon(map_name):
        before, after = asyncio.run(main())
        assert after == before
        _until_one_client(map_name)


def test_maps_dropped_without_close_release_what_they_hold(map_name: str) -> None:
    """2,000 maps connected, written, read and dropped without close():
    their sockets, channels (a memfd mapping and an eventfd each) and
    mappings go with them."""
    def channels() -> int:
        with open("/proc/self/maps") as maps:
            return sum("memfd:shmmap-channel" in line for line in maps)

    with shmmap.Daemon(map_name):
        m = shmmap.connect(map_name)
        m["k"] = -1
        del m
        gc.collect()
        before = open_fds(), channels(), mappings_of(map_name)
        for i in range(2000):
            m = shmmap.connect(map_name)
            m["k"] = i
            assert m["k"] == i
        del m
        gc.collect()
        assert (open_fds(), channels(), mappings_of(map_name)) == before
        _until_one_client(map_name)
