"""shmmap from asyncio: writes await the daemon, reads do not.

    python clients/aio_example.py [NAME]      # NAME defaults to "aio-example"

It uses the daemon that serves NAME if there is one, and otherwise starts
its own (a child process, stopped at the end, which removes the map).
Twenty tasks count page views at once with compare_and_swap; a reader
reads the counters meanwhile without awaiting anything; a batch and a
pipeline write many keys; and an await cancelled by its timeout shows
what a cancelled write means.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Iterator

import shmmap
import shmmap.aio

PAGES = ["/", "/about", "/shop"]


async def count_view(m: shmmap.aio.AsyncMap, page: str) -> None:
    """One view of page: an atomic increment, retried if another task won."""
    await m.load_or_store(page, 0)
    while True:
        views = m[page]                     # a read: no await, no message
        if await m.compare_and_swap(page, views, views + 1):
            return


async def visitors(m: shmmap.aio.AsyncMap, task: int) -> None:
    for i in range(30):
        await count_view(m, PAGES[(task + i) % len(PAGES)])


async def main(name: str) -> None:
    async with shmmap.aio.connect(name) as m:
        for page in PAGES:
            await m.delete(page)
        await asyncio.gather(*(visitors(m, t) for t in range(20)))
        print("views:", {page: m[page] for page in PAGES})          # 200 each

        async with m.batch() as b:          # other processes see all of it or none
            b["menu"] = PAGES
            b["title"] = "shop"
        async with m.pipeline() as p:       # many writes, few round trips
            for i in range(1000):
                p[f"item:{i}"] = {"id": i, "price": i * 0.5}
        items = sum(1 for k in m if isinstance(k, str) and k.startswith("item:"))
        print(f"{items} items, {len(m)} keys")

        # A write whose await is cancelled (here by a timeout) may or may
        # not be applied: the next await is unaffected either way.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(m.set("maybe", 1), timeout=1e-6)
        print("the write after a cancelled one:", await m.swap("title", "store"))
        stats = await m.stats()
        print(f"generation {stats['generation']}, {stats['clients']} client(s)")


@contextlib.contextmanager
def served(name: str) -> Iterator[None]:
    """The daemon that serves name already, or one started for the while."""
    try:
        shmmap.connect(name).close()
    except (shmmap.MapNotFoundError, shmmap.DaemonUnavailableError):
        with shmmap.Daemon(name):
            yield
        return
    yield


if __name__ == "__main__":
    map_name = sys.argv[1] if len(sys.argv) > 1 else "aio-example"
    with served(map_name):
        asyncio.run(main(map_name))
