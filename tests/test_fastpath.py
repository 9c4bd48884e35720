"""The daemon's C hot path (cext/serve.c) over a real socket: batch requests
served from the received bytes however they are cut, the requests it leaves
answered by Python in order, a failed apply answered by Python with nothing
applied, and the counters counting both."""
from __future__ import annotations

import os
import random
import socket
import time
from typing import Any

import msgpack
import pytest

import shmmap
from shmmap._core import ffi, lib
from shmmap.shared import protocol
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.protocol import MAX_REQUEST, OK, Err, Op, batch_request, delete_item, store_item
from test_protocol_fuzz import connect_raw, read_replies

# Every form msgpack has for a request id: the daemon echoes it as it came.
IDS = [0, 5, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1,
       -1, -32, -33, -128, -129, -2**15 - 1, -2**31 - 1, -2**63]


def _closed(sock: socket.socket) -> list[Any]:
    """The replies until the daemon closes the connection."""
    up = msgpack.Unpacker(raw=False)
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return list(up)
        up.feed(data)


def _store(key: Any, value: Any) -> bytes:
    return store_item(encode_key(key), encode_value(value))


def test_batches_cut_anywhere_are_answered_in_order_with_every_id_form(map_name: str) -> None:
    rng = random.Random(7)
    reqs, model = [], {}
    for i, rid in enumerate(IDS * 3):
        if i % 5 == 4:      # now and then a request the C path leaves to Python
            reqs.append([Op.LOAD_OR_STORE, rid, encode_key(("los", i)), encode_value(i)])
            model[("los", i)] = i
        else:
            reqs.append([Op.BATCH, rid, _store(i % 7, i) + _store(("k", i), [i] * (i % 4))])
            model[i % 7] = i
            model[("k", i)] = [i] * (i % 4)
    data = b"".join(msgpack.packb(r, use_bin_type=True) for r in reqs)
    with shmmap.Daemon(map_name) as d:
        sock = connect_raw(str(d.socket_path))
        try:
            pos = 0
            while pos < len(data):          # 1 to 9 bytes a send: every cut
                step = rng.randrange(1, 10)
                sock.sendall(data[pos:pos + step])
                pos += step
            replies = read_replies(sock, len(reqs))
        finally:
            sock.close()
        assert [r[0] for r in replies] == [r[1] for r in reqs]
        assert all(r[1] == OK for r in replies), replies
        seqs = [r[3] for r in replies]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        with d.connect() as m:
            assert m.snapshot() == model
            stats = m.stats()
            assert stats["writes"] == len(reqs)
            # the hello and this stats request besides
            assert stats["requests"] >= len(reqs) + 2
            assert stats["errors"] == 0


def test_failed_apply_is_answered_by_python_and_applies_nothing(map_name: str) -> None:
    good = _store("a", 1)
    bad_key = store_item(b"\xc1", encode_value(1))          # no msgpack
    too_big = _store("big", "x" * 200)
    reqs = [
        batch_request(1, good),
        batch_request(2, good + bad_key),                 # one bad item: none applied
        batch_request(3, too_big),                        # over --max-value
        batch_request(4, _store("b", 2) + delete_item(encode_key("a"))),
    ]
    with shmmap.Daemon(map_name, max_value=100) as d:
        sock = connect_raw(str(d.socket_path))
        try:
            sock.sendall(b"".join(reqs))
            r1, r2, r3, r4 = read_replies(sock, 4)
        finally:
            sock.close()
        assert r1[:3] == [1, OK, None]
        assert r2[:2] == [2, Err.INVALID] and "item 1" in r2[2]
        assert r3[:2] == [3, Err.LIMIT] and "exceeds --max-value 100" in r3[2]
        assert r4[:3] == [4, OK, None] and r4[3] == r1[3] + 1   # the failures took no seq
        with d.connect() as m:
            assert m.snapshot() == {"b": 2}
            assert m.stats()["errors"] == 2


def test_full_generation_is_promoted_between_fast_batches(map_name: str) -> None:
    """More new keys in one burst than a first generation holds: the C
    path stops at the request that does not fit, Python promotes and
    applies it, and the C path goes on after it."""
    n = 5000
    reqs = [batch_request(i + 1, _store(i, i)) for i in range(n)]
    with shmmap.Daemon(map_name) as d:
        sock = connect_raw(str(d.socket_path))
        try:
            sock.sendall(b"".join(reqs))
            replies = read_replies(sock, n)
        finally:
            sock.close()
        assert [r[:3] for r in replies] == [[i + 1, OK, None] for i in range(n)]
        with d.connect() as m:
            assert m.snapshot() == {i: i for i in range(n)}
            assert m.stats()["promotions"] >= 2      # adoption's first, then at least one


def test_large_other_requests_arriving_in_pieces(map_name: str) -> None:
    """Requests the C path leaves, larger than one receive, their bytes
    arriving in pieces: one whose bulk is a bin, and one of 60,000 small
    objects, whose scan resumes where it stopped as its bytes arrive."""
    value = {"list": list(range(30_000)), "s": "é" * 1000}
    swap = msgpack.packb([Op.SWAP, 9, encode_key("big"), encode_value(value)], use_bin_type=True)
    many = msgpack.packb([Op.STATS, 10, list(range(60_000))])     # a wrong argument
    assert len(swap) > protocol.RECV_SIZE and len(many) > protocol.RECV_SIZE
    with shmmap.Daemon(map_name) as d:
        sock = connect_raw(str(d.socket_path))
        try:
            for req in (swap, many):
                for i in range(0, len(req), 4096):
                    sock.sendall(req[i:i + 4096])
            sock.sendall(batch_request(11, _store("after", 1)))
            swapped, wrong, after = read_replies(sock, 3)
        finally:
            sock.close()
        assert swapped[:3] == [9, OK, [False, None]]
        assert wrong[:2] == [10, Err.INVALID] and "STATS takes 0 arguments" in wrong[2]
        assert after[:3] == [11, OK, None]
        with d.connect() as m:
            assert m["big"] == value and m["after"] == 1


@pytest.mark.parametrize("garbage", [
    b"\xc6" + (MAX_REQUEST + 1).to_bytes(4, "big"),          # a bin over the limit
    b"\x93\x01\x05\xc6" + (MAX_REQUEST).to_bytes(4, "big"),  # a batch over the limit
    b"\xdd\xff\xff\xff\xff",                                 # more elements than bytes
    b"\x93\x01\x05\xc1",                                     # the byte msgpack never uses
    b"\x05",                                                 # not an array
])
def test_bytes_that_are_no_request_after_batches(map_name: str, garbage: bytes) -> None:
    """The batches before the garbage are answered and applied; then the
    protocol error, and the connection is closed."""
    with shmmap.Daemon(map_name) as d:
        sock = connect_raw(str(d.socket_path))
        try:
            sock.sendall(batch_request(1, _store("a", 1)) + batch_request(2, _store("b", 2))
                         + garbage)
            replies = _closed(sock)
        finally:
            sock.close()
        assert [r[:3] for r in replies[:2]] == [[1, OK, None], [2, OK, None]]
        assert replies[2][:2] == [None, Err.PROTOCOL]
        assert len(replies) == 3
        with d.connect() as m:
            assert m.snapshot() == {"a": 1, "b": 2}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_daemon_and_client_sleep_after_a_burst(map_name: str) -> None:
    """Spinning is bounded: once the writes stop, neither the daemon nor
    the client that wrote burns a core."""
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        for i in range(2000):
            m[i] = i
        pid = m.daemon_info["pid"]
        daemon0, client0 = _cpu_seconds(pid), time.process_time()
        wall = time.monotonic()
        time.sleep(1.0)
        wall = time.monotonic() - wall
        assert _cpu_seconds(pid) - daemon0 < 0.2 * wall
        assert time.process_time() - client0 < 0.2 * wall
        assert m[1999] == 1999


class _Uncrowded(protocol.Spin):
    CORES = 10**9           # the load average is always below it


class _Crowded(protocol.Spin):
    CORES = 0               # ... always at least it


def test_no_spin_while_processes_outnumber_cores() -> None:
    spin = _Crowded(100e-6)
    for _ in range(10):
        spin.won()
    assert [spin.budget() for _ in range(200)] == [0.0] * 200


def test_a_client_polls_while_processes_outnumber_cores() -> None:
    """A client's poll yields its core on every turn to the processes it
    would wait for anyway: crowded cores do not stop it (in_crowds)."""
    spin = _Crowded(100e-6, in_crowds=True)
    assert lib.shm_spin_crowded(spin.c)
    assert [spin.budget() for _ in range(10)] == [100e-6] * 10


@pytest.mark.parametrize("runnable, active, polls", [
    (1, 0, True), (2, 1, True),         # no more runnable than cores
    (3, 1, False),                      # one writer beside an iterating process
    (4, 2, False),                      # two writers beside one
    (9, 8, True),                       # 8 writers and the daemon: its own crowd
    (10, 8, True),                      # ... and one other process: 1 in 8
    (11, 8, True),                      # ... and two: 1 in 4, the most allowed
    (12, 8, False),                     # ... and three
    (5, 0, False),                      # no client writes: nothing to poll for
])
def test_the_daemon_polls_in_a_crowd_of_its_own_clients(runnable: int, active: int,
                                                      polls: bool) -> None:
    """On 2 cores the daemon polls between rounds when the processes
    beyond it are mostly its active clients, whose waits its polling
    shortens; not when other processes would lose the core."""
    assert bool(lib.shm_daemon_polls(runnable, 2, active)) is polls


def _beat(m: shmmap.SharedMap) -> int:
    return int(m._chan._chan.beat)          # type: ignore[union-attr]


def test_the_daemons_beat_moves_while_it_polls_and_stands_still_asleep(map_name: str) -> None:
    """A client waiting for a reply polls without yielding while the
    daemon's beat moves (cext/chan.c). The daemon beats on each polling
    turn between a client's writes, and not once it sleeps."""
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m[0] = 0
        before, deadline = _beat(m), time.monotonic() + 30
        while True:
            for i in range(100):
                m[i] = i
            if _beat(m) != before:
                break
            # The machine may be crowded a while: then the daemon sleeps.
            assert time.monotonic() < deadline, "the daemon never polled between writes"
        chan = m._chan._chan                # type: ignore[union-attr]
        while not chan.daemon_sleeps:       # its spin runs out
            assert time.monotonic() < deadline, "the daemon never slept"
        asleep = _beat(m)
        time.sleep(0.2)                     # it wakes only for its timers meanwhile
        assert _beat(m) == asleep
        assert m[99] == 99


def test_spin_budget_follows_what_spinning_bought() -> None:
    spin = _Uncrowded(100e-6)
    assert spin.budget() == 100e-6
    for _ in range(10):                 # waits that had to sleep: down to nothing
        spin.lost()
    assert spin.seconds == 0.0
    budgets = [spin.budget() for _ in range(protocol.Spin.PROBE_EVERY)]
    assert budgets.count(0.0) == protocol.Spin.PROBE_EVERY - 1    # one probe
    assert max(budgets) == protocol.Spin.MIN_SECONDS
    for _ in range(10):                 # spins that paid: back up to the limit
        spin.won()
    assert spin.seconds == 100e-6


def test_spin_budget_covers_the_waits_it_sees() -> None:
    """A wait that slept sets the budget to cover such a wait, with half
    again as margin, if that is within the limit; a longer one, or a
    yield that found the cores contended, halves it."""
    spin = _Uncrowded(100e-6)
    lib.shm_spin_waited(spin.c, 20_000, lib.SHM_WAIT_SLEPT)
    assert spin.seconds == 30e-6
    lib.shm_spin_waited(spin.c, 1_000, lib.SHM_WAIT_SLEPT_ONLY)    # at least the minimum
    assert spin.seconds == protocol.Spin.MIN_SECONDS
    lib.shm_spin_waited(spin.c, 80_000, lib.SHM_WAIT_SLEPT)        # 1.5x is past the limit
    assert spin.seconds == 100e-6
    lib.shm_spin_waited(spin.c, 200_000, lib.SHM_WAIT_SLEPT)       # the wait itself is
    assert spin.seconds == 50e-6
    lib.shm_spin_waited(spin.c, 1_000, lib.SHM_WAIT_CONTENDED)
    assert spin.seconds == 25e-6


@pytest.mark.parametrize("rid", [0, 1, 127, 1 << 32, (1 << 64) - 1])
@pytest.mark.parametrize("blob_len", [0, 3, 65535, 1 << 20])
def test_python_and_c_frame_a_batch_request_alike(rid: int, blob_len: int) -> None:
    """The socket's requests are framed in Python, a channel's in C
    (shm_batch_frame): the daemon must read the same bytes."""
    header = ffi.new("uint8_t[]", protocol.BATCH_HEADER)
    lib.shm_batch_frame(header, rid, blob_len)
    blob = (bytes(range(256)) * (blob_len // 256 + 1))[:blob_len]
    framed = batch_request(rid, blob)
    assert framed == bytes(header) + blob
    assert msgpack.unpackb(framed) == [Op.BATCH, rid, blob]


@pytest.mark.parametrize("seq", [0, 5, 200, 70_000, 1 << 40])
def test_an_acknowledgement_is_recognised_exactly(seq: int) -> None:
    """The daemon's [id, OK, nil, seq] to request id, and nothing else."""
    rid = 1 << 40                           # packed as a uint64, as requests carry it
    ack = msgpack.packb([rid, OK, None, seq])
    assert protocol.is_batch_ack(rid, ack)
    assert not protocol.is_batch_ack(rid + 1, ack)              # another request's
    assert not protocol.is_batch_ack(rid, ack + b"\x00")        # something after it
    assert not protocol.is_batch_ack(rid, ack[:-1])             # cut short
    assert not protocol.is_batch_ack(rid, msgpack.packb([rid, Err.PROTOCOL, None, seq]))
    assert not protocol.is_batch_ack(rid, msgpack.packb([rid, OK, None, -1]))
