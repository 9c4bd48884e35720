"""Request channels: a client's synchronous writes through shared memory
(shmmap.client.channel, cext/chan.c), against real daemons and real processes.

What a channel must keep: every guarantee of the socket (acknowledged only
once visible, errors as errors, nothing resent that may have been applied,
adoption after kill -9), and a daemon that no client can crash or corrupt
through the memory it shares with it -- the fuzz below writes garbage into
every byte of a channel while honest clients write beside it.
"""
from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import random
import signal
import socket
import threading
import time
from typing import Any

import msgpack
import pytest

import shmmap
from shmmap._core import ffi, lib
from shmmap.client.channel import receive_fds
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.protocol import OK, STORE, Err, Op, batch_request

from test_misuse_client import in_child

SEED = int(os.environ.get("SHMMAP_FUZZ_SEED", "20261130"))
FUZZ_POSTS = 20000


def test_writes_go_through_a_channel_and_are_seen_by_other_processes(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        m = d.connect()
        other = d.connect(channel=False)
        assert m.stats()["channels"] == 1 and m.stats()["clients"] == 2
        for i in range(500):
            m[i] = {"n": i}
            if i % 100 == 0:            # visible to another process once it returned
                assert in_child(_read, map_name, i) == {"n": i}
        del m[0]
        with m.batch() as b:
            b["x"] = 1
            b["y"] = 2
        assert other.snapshot() == {**{i: {"n": i} for i in range(1, 500)}, "x": 1, "y": 2}
        other["z"] = 3          # the socket path, beside
        assert m["z"] == 3
        m.close()
        other.close()


def _read(name: str, key: Any) -> Any:
    with shmmap.connect(name) as m:
        return m.get(key)


def test_a_request_over_the_channels_size_goes_on_the_socket(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        m = d.connect()
        big = "v" * (lib.SHM_CHAN_REQUEST + 1000)
        m["big"] = big
        with m.batch() as b:
            for i in range(2000):
                b[i] = "w" * 64
        assert m["big"] == big and len(m) == 2001
        m["small"] = 1                  # the channel again, after the socket
        assert m.stats()["channels"] == 1 and m["small"] == 1
        m.close()


def test_the_daemons_errors_come_back_through_the_channel(map_name: str) -> None:
    with shmmap.Daemon(map_name, max_value=100) as d:
        m = d.connect()
        m["a"] = 1
        with pytest.raises(shmmap.LimitError, match="100"):
            m["b"] = "x" * 500
        assert "b" not in m
        m["c"] = 2                      # the channel still serves
        assert m.snapshot() == {"a": 1, "c": 2}
        m.close()


HAMMERS = 4         # writer processes on channels


def _hammer(name: str, base: int, stop: Any) -> None:
    with shmmap.connect(name) as m:
        i = 0
        while not stop.is_set():
            m[base + i % 1000] = i
            i += 1


def test_socket_requests_are_served_while_channel_writes_keep_coming(map_name: str) -> None:
    """While writer processes keep the daemon busy with their channels, and
    it polls and peeks at them between rounds, it still serves the
    sockets: a client without a channel gets every write through, each
    within its timeout."""
    ctx = mp.get_context("fork")
    with shmmap.Daemon(map_name) as d, d.connect(channel=False, timeout=10.0) as plain:
        stop = ctx.Event()
        hammers = [ctx.Process(target=_hammer, args=(map_name, 10_000 * (k + 1), stop))
                   for k in range(HAMMERS)]
        for p in hammers:
            p.start()
        try:
            while len(plain) < 1000 * HAMMERS:  # every hammer is writing
                pass
            for i in range(300):
                plain[f"s{i}"] = i
        finally:
            stop.set()
            for p in hammers:
                p.join(60)
                if p.is_alive():
                    p.kill()
                    p.join()
        assert [p.exitcode for p in hammers] == [0] * HAMMERS
        snap = plain.snapshot()
        assert all(snap[f"s{i}"] == i for i in range(300))


def test_channel_false_sends_every_write_on_the_socket(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        m = d.connect(channel=False)
        for i in range(100):
            m[i] = i
        assert m.stats()["channels"] == 0 and len(m) == 100
        m.close()


def test_a_forked_child_gets_its_own_channel(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        m = d.connect()
        m["parent"] = 0
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_write_range, args=(m, 1000 * (i + 1), 300))
                 for i in range(3)]
        for p in procs:
            p.start()
        for i in range(300):            # the parent writes meanwhile, on its channel
            m[("p", i)] = i
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        snap = m.snapshot()
        assert all(snap[1000 * (i + 1) + j] == j for i in range(3) for j in range(300))
        assert all(snap[("p", i)] == i for i in range(300))
        m.close()


def _write_range(m: shmmap.SharedMap, first: int, count: int) -> None:
    for j in range(count):
        m[first + j] = j
    assert m.stats()["channels"] >= 2       # its own, beside the parent's


# -- a stopped, a killed daemon -------------------------------------------------------

def test_a_write_waiting_on_a_killed_daemon_ends_at_once_and_the_map_is_adopted(
        map_name: str) -> None:
    """kill -9 while a write waits in the channel: the client sees the
    socket close within a futex slice, not at its 30 s timeout; its store
    (idempotent) goes once more to whichever daemon serves the map -- none
    yet, so it says so. The next daemon adopts every acknowledged write, and
    the same map object writes on through it."""
    d = shmmap.Daemon(map_name).start()
    try:
        m = d.connect(timeout=30)
        m["before"] = 1
        os.kill(d.pid, signal.SIGSTOP)
        done: dict[str, Any] = {}
        t = threading.Thread(target=_timed_store, args=(m, "during", 2, done))
        t.start()
        _wait_posted(m)
        d.process.send_signal(signal.SIGKILL)
        d.process.wait()
        t.join(30)
        assert isinstance(done["error"], shmmap.DaemonUnavailableError), done
        assert done["seconds"] < 5
        d = shmmap.Daemon(map_name).start()     # adopts the map
        m["after"] = 3
        assert m.snapshot() == {"before": 1, "after": 3}
        assert m.stats()["channels"] == 1
        m.close()
    finally:
        d.stop()


def _timed_store(m: shmmap.SharedMap, key: Any, value: Any, out: dict[str, Any]) -> None:
    started = time.monotonic()
    try:
        m[key] = value
        out["error"] = None
    except Exception as exc:    # reported to the test
        out["error"] = exc
    out["seconds"] = time.monotonic() - started


def _wait_posted(m: shmmap.SharedMap) -> None:
    """Until m's channel holds a request the daemon has not answered."""
    for _ in range(10000):
        chan = m._chan
        if chan is not None and chan.outstanding is not None:
            return
        time.sleep(0.001)
    raise AssertionError("the write was never posted")


def test_a_write_after_one_that_timed_out_waits_for_it_or_is_not_sent(map_name: str) -> None:
    """A stopped daemon: the first write times out (its outcome unknown);
    the next is not sent while the first is unanswered (the daemon would
    apply them in order anyway: the channel holds one request), and says
    so; once the daemon runs again, the first is applied and writes go on."""
    with shmmap.Daemon(map_name) as d:
        m = d.connect(timeout=0.5)
        m["a"] = 1
        os.kill(d.pid, signal.SIGSTOP)
        try:
            with pytest.raises(shmmap.WriteTimeoutError):
                m["b"] = 1
            with pytest.raises(shmmap.DaemonUnavailableError, match="still unanswered"):
                m["c"] = 1
        finally:
            os.kill(d.pid, signal.SIGCONT)
        m["d"] = 1
        assert m.snapshot() == {"a": 1, "b": 1, "d": 1}
        m.close()


def test_signals_during_a_channel_wait_run_their_handlers_and_the_write_completes(
        map_name: str) -> None:
    """A timer signal interrupts the write's futex wait again and again
    while the daemon is stopped; each time its handler runs and the wait
    goes on (shm_chan_batch_wait), and the fifth lets the daemon go on: the
    write is acknowledged once, as a write, and nothing is sent twice."""
    with shmmap.Daemon(map_name) as d:
        m = d.connect(timeout=10)
        m["a"] = 1
        seen = []

        def tick(signum: int, frame: Any) -> None:
            seen.append(signum)
            if len(seen) == 5:
                os.kill(d.pid, signal.SIGCONT)
                signal.setitimer(signal.ITIMER_REAL, 0)

        old = signal.signal(signal.SIGALRM, tick)
        os.kill(d.pid, signal.SIGSTOP)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
            m["b"] = 2
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            os.kill(d.pid, signal.SIGCONT)
        assert len(seen) == 5
        m["c"] = 3
        assert m.snapshot() == {"a": 1, "b": 2, "c": 3}
        assert m.stats()["writes"] == 3
        m.close()


# -- a hostile client ---------------------------------------------------------------

class RawChannel:
    """A client that speaks the protocol by hand and owns its channel's
    memory, to write into it what no honest client would."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.sendall(msgpack.packb([Op.HELLO, 1, 1]) + msgpack.packb([Op.CHANNEL, 2]))
        unpacker = msgpack.Unpacker()
        fds: list[int] = []
        replies: list[Any] = []
        while len(replies) < 2:
            data, passed = receive_fds(self.sock, 65536)
            assert data, "the daemon closed the connection"
            fds += passed
            unpacker.feed(data)
            replies += list(unpacker)
        assert replies[1][:2] == [2, OK] and len(fds) == 2
        self.memfd, self.efd = fds
        self.chan = lib.shm_chan_attach(self.memfd)
        assert self.chan != ffi.NULL
        self.raw = ffi.buffer(self.chan, ffi.sizeof("struct shm_chan"))
        self.ticket = 0

    def post(self, request: bytes) -> int:
        """Posts request; the reply's length or -errno."""
        self.ticket += 1
        assert lib.shm_chan_post(self.chan, self.efd, request, len(request), self.ticket) == 0
        return lib.shm_chan_wait(self.chan, self.sock.fileno(), self.ticket, ffi.NULL, 5000)

    def claim(self, length: int) -> int:
        """Posts whatever the request area holds, claiming length bytes."""
        self.chan.request_len = length
        self.ticket += 1
        self.chan.posted = self.ticket
        os.write(self.efd, (1).to_bytes(8, "little"))
        return lib.shm_chan_wait(self.chan, self.sock.fileno(), self.ticket, ffi.NULL, 5000)

    def reply(self, n: int) -> Any:
        return msgpack.unpackb(bytes(ffi.buffer(self.chan.reply, n)), raw=False)

    def close(self) -> None:
        lib.shm_chan_detach(self.chan)
        for fd in (self.memfd, self.efd):
            os.close(fd)
        self.sock.close()


def test_the_channel_memfd_is_sealed_against_shrinking(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        raw = RawChannel(str(d.socket_path))
        try:
            with pytest.raises(PermissionError):
                os.ftruncate(raw.memfd, 0)          # would SIGBUS the daemon
            with pytest.raises(PermissionError):
                os.ftruncate(raw.memfd, 1 << 30)
            with pytest.raises(PermissionError):    # and no seal can be added or taken
                fcntl.fcntl(raw.memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
            got = raw.post(batch_request(7, STORE + encode_key("k") + encode_value(1)))
            assert got > 0 and raw.reply(got)[:2] == [7, OK]
        finally:
            raw.close()
        with d.connect() as m:
            assert m["k"] == 1


def test_msgpack_that_is_no_request_on_a_channel_is_a_protocol_error(map_name: str) -> None:
    """Each of these decodes (nil, an int, an empty array, a map), and none is
    a request: the daemon answers PROTOCOL through the channel and serves on."""
    with shmmap.Daemon(map_name) as d:
        for data in (b"\xc0", b"\x01", b"\x90", b"\x81\x01\x02"):
            raw = RawChannel(str(d.socket_path))
            try:
                got = raw.post(data)
                assert got > 0 and raw.reply(got)[1] == Err.PROTOCOL, data
            finally:
                raw.close()
        assert d.process.poll() is None
        with d.connect() as m:
            m["k"] = 1
            assert m["k"] == 1


def _garbage_request(rng: random.Random) -> bytes:
    good = batch_request(rng.randrange(1 << 30), STORE + encode_key(rng.randrange(50))
                         + encode_value(rng.randrange(1000)))
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:                       # a valid request, mutated
        b = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 2:                       # two requests in one post
        return good + good
    if kind == 3:                       # another op than a batch
        return msgpack.packb([Op.STATS, 1])
    return good[:rng.randrange(len(good))]


def test_garbage_in_a_channel_never_hurts_the_daemon_or_other_clients(map_name: str) -> None:
    """FUZZ_POSTS posts of random and mutated bytes, lengths past the
    request area, and words the daemon owns overwritten, on channels of
    their own, while an honest client writes beside them. Each post gets a
    reply or ends its connection; the daemon stays up; the honest client's
    writes all hold."""
    rng = random.Random(SEED)
    with shmmap.Daemon(map_name) as d:
        honest = d.connect()
        stop = threading.Event()
        written: dict[int, int] = {}
        writer = threading.Thread(target=_honest_writes, args=(honest, stop, written))
        writer.start()
        replies = closed = 0
        try:
            raw = RawChannel(str(d.socket_path))
            for i in range(FUZZ_POSTS):
                if rng.random() < 0.1:          # the daemon's words, scribbled on
                    raw.chan.done = rng.randrange(1 << 32)
                    raw.chan.daemon_sleeps = rng.randrange(2)
                    raw.chan.beat = rng.randrange(1 << 32)
                    raw.chan.reply_len = rng.randrange(1 << 64)
                if rng.random() < 0.05:
                    got = raw.claim(rng.choice([lib.SHM_CHAN_REQUEST + 1, 1 << 40, 2**64 - 1,
                                                rng.randrange(lib.SHM_CHAN_REQUEST)]))
                else:
                    got = raw.post(_garbage_request(rng))
                assert got > 0, f"post {i}: {got}"
                reply = raw.reply(got)
                assert isinstance(reply, list) and len(reply) >= 3
                replies += 1
                if reply[1] == Err.PROTOCOL:    # the daemon closes this connection
                    closed += 1
                    raw.close()
                    raw = RawChannel(str(d.socket_path))
            raw.close()
        finally:
            stop.set()
            writer.join(60)
        assert d.process.poll() is None, "the daemon died"
        assert replies > FUZZ_POSTS // 4 and closed > 100
        snap = honest.snapshot()
        assert all(snap[("honest", k)] == v for k, v in written.items())
        honest.close()


def _honest_writes(m: shmmap.SharedMap, stop: threading.Event, written: dict[int, int]) -> None:
    i = 0
    while not stop.is_set():
        m[("honest", i % 500)] = i
        written[i % 500] = i
        i += 1


def test_a_client_killed_with_a_request_posted_leaves_the_daemon_serving(
        map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        m = d.connect()
        for _ in range(20):
            pid = os.fork()
            if pid == 0:                # post a request, and die at once
                try:
                    raw = RawChannel(str(d.socket_path))
                    raw.chan.request_len = 30
                    raw.chan.posted = 1
                    os.write(raw.efd, (1).to_bytes(8, "little"))
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
        m["after"] = 1
        assert m["after"] == 1 and d.process.poll() is None
        deadline = time.monotonic() + 10
        while m.stats()["channels"] != 1:       # the dead clients' channels closed
            assert time.monotonic() < deadline, m.stats()["channels"]
            time.sleep(0.01)
        m.close()
