"""shmmap.aio, the asyncio client, against real daemons: its writes and
synchronous reads, cancellation at random points (no await ever gets
another request's reply), a daemon that stops answering or is killed
mid-await, the event loop a map belongs to, and what connecting and
closing leave behind (test_dropped_maps.py: maps never closed)."""
from __future__ import annotations

import asyncio
import fcntl
import os
import random
import signal
import socket
import sys
import termios
import threading
import time

import pytest

import shmmap
import shmmap.aio
from conftest import mappings_of, open_fds


def _socket(m: shmmap.aio.AsyncMap) -> socket.socket:
    stream = m._stream
    assert stream is not None and stream.transport is not None
    sock: socket.socket = stream.transport.get_extra_info("socket")
    return sock


def _unread_by_peer(sock: socket.socket) -> int:
    """Bytes sent on a Unix socket that its peer has not read (SIOCOUTQ)."""
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), sys.byteorder)


async def _until_sent(m: shmmap.aio.AsyncMap) -> None:
    """Until requests wait, unread, in the (stopped) daemon's socket."""
    deadline = time.monotonic() + 30
    while _unread_by_peer(_socket(m)) == 0:
        assert time.monotonic() < deadline, "the requests never left"
        await asyncio.sleep(0.001)


def test_writes_await_and_reads_do_not(map_name: str) -> None:
    async def main() -> None:
        async with shmmap.aio.connect(map_name) as m:
            await m.set("a", 1)
            assert m["a"] == 1 and m.get("b", 0) == 0 and "a" in m and len(m) == 1
            await m.store("b", [1, 2])
            assert await m.swap("a", 2) == (1, True)
            assert await m.load_or_store("c", 3) == (3, False)
            assert await m.load_or_store("c", 4) == (3, True)
            assert await m.compare_and_swap("a", 2, 5) is True
            assert await m.compare_and_swap("a", 2, 6) is False
            assert await m.compare_and_delete("c", 3) is True
            async with m.batch() as b:
                b["x"] = 1
                del b["b"]
            async with m.pipeline() as p:
                for i in range(600):        # more than one burst
                    p[i] = i
                del p[0]
            await m.update({"u": 1}, v=2)
            await m.delete("x")
            assert await m.load_and_delete("v") == (2, True)
            assert await m.load_and_delete("v") == (None, False)
            assert dict(m.items()) == {"a": 5, "u": 1, **{i: i for i in range(1, 600)}}
            gen = await m.promote()
            stats = await m.stats()
            assert stats["generation"] == gen and stats["cache"]["keys"] == 601
            with shmmap.connect(map_name) as other:     # another connection reads it all
                assert other.snapshot() == m.snapshot()
            await m.clear()
            assert len(m) == 0
        assert m.closed
        with pytest.raises(shmmap.MapClosedError):
            m["a"]
        with pytest.raises(shmmap.MapClosedError):
            await m.set("a", 1)
        await m.aclose()                    # twice: nothing

    with shmmap.Daemon(map_name):
        asyncio.run(main())


def test_a_bad_key_or_value_raises_before_a_byte_is_sent(map_name: str) -> None:
    async def main() -> None:
        m = await shmmap.aio.connect(map_name)
        with pytest.raises(TypeError):
            await m.set("k", object())
        with pytest.raises(TypeError):
            await m.swap(object(), 1)
        with pytest.raises(shmmap.LimitError):
            await m.set("k", b"x" * (2 << 20))
        await m.set("k", 1)                 # the connection is as it was
        assert m["k"] == 1
        await m.aclose()

    with shmmap.Daemon(map_name, max_value=1 << 20):
        asyncio.run(main())


def test_cancelled_awaits_never_hand_their_replies_to_later_ones(map_name: str) -> None:
    """Thousands of requests whose replies name them (key i holds "v<i>";
    load_and_delete(i) and swap(i, ...) return it), cancelled at random
    points: before they are sent, while in flight, as their reply
    arrives. Every one that completes returns its own key's value."""
    count = 4000
    rng = random.Random(1)

    async def one(m: shmmap.aio.AsyncMap, i: int) -> None:
        if i % 3 == 0:
            got = await m.load_and_delete(i)
        elif i % 3 == 1:
            got = await m.swap(i, "taken")
        else:
            await m.set(f"other{i}", i)     # acknowledgements, between the others
            return
        assert got == (f"v{i}", True), (i, got)

    async def main() -> tuple[int, int]:
        completed = cancelled = 0
        async with shmmap.aio.connect(map_name, timeout=60) as m:
            await m.update({i: f"v{i}" for i in range(count)})
            for start in range(0, count, 50):
                tasks = [asyncio.ensure_future(one(m, i)) for i in range(start, start + 50)]
                for _ in range(rng.randrange(6)):       # a random point of their lives
                    await asyncio.sleep(0)
                for t in tasks:
                    if rng.random() < 0.4:
                        t.cancel()
                for t in tasks:
                    try:
                        await t
                        completed += 1
                    except asyncio.CancelledError:
                        cancelled += 1
            # And sequentially afterwards, on the same connection.
            await m.update({"after": "mine"})
            assert await m.swap("after", "x") == ("mine", True)
        return completed, cancelled

    with shmmap.Daemon(map_name):
        completed, cancelled = asyncio.run(main())
    assert completed > count // 3 and cancelled > count // 4     # both happened, often


def test_a_timed_out_await_leaves_its_late_reply_to_no_one(map_name: str) -> None:
    """The daemon stops answering: a write times out (its outcome
    unknown), a read reports the daemon unavailable. Once it answers again
    the late replies come first, and the next await still gets its own."""
    async def main(d: shmmap.Daemon) -> None:
        async with shmmap.aio.connect(map_name, timeout=0.5) as m:
            await m.update({"k": "first", "j": "second"})
            os.kill(d.pid, signal.SIGSTOP)
            try:
                with pytest.raises(shmmap.WriteTimeoutError):
                    await m.swap("k", "changed")
                with pytest.raises(shmmap.DaemonUnavailableError):
                    await m.stats()
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(m.load_and_delete("k"), 0.05)
            finally:
                os.kill(d.pid, signal.SIGCONT)
            assert await m.load_and_delete("j") == ("second", True)
            assert "k" not in m             # the late ones were applied, in order

    with shmmap.Daemon(map_name) as d:
        asyncio.run(main(d))


def test_a_daemon_killed_mid_await_fails_each_await_as_the_retry_table_says(map_name: str) -> None:
    """Writes in flight when the daemon dies: an idempotent store is sent
    once more, finds no daemon and raises DaemonUnavailableError; a swap,
    which may have been applied, raises OutcomeUnknownError and is never
    resent. Later awaits find no daemon."""
    async def main(d: shmmap.Daemon) -> None:
        m = await shmmap.aio.connect(map_name, timeout=30)
        await m.set("k", 0)
        os.kill(d.pid, signal.SIGSTOP)          # the requests stay in flight
        stores = [asyncio.ensure_future(m.set(f"s{i}", i)) for i in range(5)]
        swaps = [asyncio.ensure_future(m.swap("k", i)) for i in range(5)]
        await _until_sent(m)
        d.process.send_signal(signal.SIGKILL)
        d.process.wait()
        for t in stores:
            with pytest.raises(shmmap.DaemonUnavailableError):
                await t
        for t in swaps:
            with pytest.raises(shmmap.OutcomeUnknownError):
                await t
        with pytest.raises(shmmap.DaemonUnavailableError):
            await m.set("later", 1)
        assert m["k"] == 0                      # readers keep the last state
        await m.aclose()

    d = shmmap.Daemon(map_name).start()
    try:
        asyncio.run(main(d))
    finally:
        d.stop()


def test_asyncio_run_twice_and_a_map_of_another_loop(map_name: str) -> None:
    """Each asyncio.run() connects its own map; a map used in a loop that
    is not its own raises EventLoopError, and reads work anywhere."""
    async def write(value: int) -> shmmap.aio.AsyncMap:
        m = await shmmap.aio.connect(map_name)
        await m.set("k", value)
        return m

    async def misuse(m: shmmap.aio.AsyncMap) -> None:
        with pytest.raises(shmmap.aio.EventLoopError, match="another event loop"):
            await m.set("k", 3)
        with pytest.raises(shmmap.aio.EventLoopError):
            await m.aclose()
        assert m["k"] == 2                  # reads never wait for the daemon, nor its loop

    with shmmap.Daemon(map_name):
        first = asyncio.run(write(1))
        second = asyncio.run(write(2))
        assert first["k"] == second["k"] == 2
        asyncio.run(misuse(second))
        failed: list[BaseException] = []

        def other_thread() -> None:
            try:
                asyncio.run(misuse(first))
            except BaseException as exc:    # reported to the test
                failed.append(exc)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join(60)
        assert not failed, failed


def test_connect_and_close_ten_thousand_times_leaves_no_fd(map_name: str) -> None:
    async def main() -> tuple[int, int, int]:
        async with shmmap.aio.connect(map_name) as m:
            await m.set("k", 0)
        before = open_fds()
        for _ in range(10_000):
            m = await shmmap.aio.connect(map_name)
            await m.aclose()
        return before, open_fds(), mappings_of(map_name)

    with shmmap.Daemon(map_name):
        before, after, mapped = asyncio.run(main())
    assert after == before
    assert mapped == 0


def test_a_daemon_that_refuses_the_connection_says_why(map_name: str) -> None:
    async def main() -> None:
        async with shmmap.aio.connect(map_name) as m:
            with pytest.raises(shmmap.LimitError, match="limit of 1 connections"):
                await shmmap.aio.connect(map_name)
            await m.set("x", 1)                 # the first is served on
            assert m["x"] == 1

    with shmmap.Daemon(map_name, max_connections=1):
        asyncio.run(main())


def test_no_daemon_is_a_clear_error(map_name: str) -> None:
    async def main() -> None:
        with pytest.raises(shmmap.MapNotFoundError):
            await shmmap.aio.connect(map_name)

    asyncio.run(main())

