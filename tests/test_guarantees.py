"""What survives what: daemon crashes, client crashes, neighbours. Real
daemons, real client processes, kill -9; bounded in time, synchronised on
pipes and replies."""
from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import signal
import stat
import subprocess
import sys
import tempfile
import termios
import threading
import time
from typing import Any

import pytest

import shmmap
from shmmap._core import ffi
from shmmap.shared import segments

GROUP = 8          # keys written together by one batch
CTX = mp.get_context("spawn")


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("options,mode", [({}, 0o600), ({"mode": 0o660}, 0o660)])
def test_segments_and_socket_modes(map_name: str, options: dict[str, int], mode: int) -> None:
    """Private to the daemon's user by default; --mode shares with a group,
    which may write only the readers' segment (the data is the daemon's)."""
    with shmmap.Daemon(map_name, **options) as d:
        with d.connect() as m:
            m["k"] = 1
            for seg in segments.map_segments(map_name):
                want = mode if seg == segments.readers_name(map_name) else mode & ~0o022
                assert _mode("/dev/shm" + seg) == want, seg
            assert _mode(str(d.socket_path)) == mode


def _write_through_mapping(name: str) -> None:
    m = shmmap.connect(name)
    ffi.cast("uint64_t *", m.generation.buf)[0] = 0     # PROT_READ: SIGSEGV


def test_a_client_cannot_write_the_map_through_its_mapping(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        with d.connect() as m:
            m["k"] = "v"
            assert memoryview(m.generation.mm).readonly
            with pytest.raises(TypeError):
                m.generation.mm[0] = 0
            child = CTX.Process(target=_write_through_mapping, args=(map_name,))
            child.start()
            child.join(60)
            assert child.exitcode == -signal.SIGSEGV
            assert m["k"] == "v"
            m.generation.validate()


def _batch_writer(name: str, acks: Any, go_on: Any) -> None:
    """Writes batch after batch; reports each acknowledged batch number;
    after a failure waits for the parent's word, then goes on with the
    same batch (its store is idempotent)."""
    m = shmmap.connect(name, timeout=20)
    n = 0
    while True:
        try:
            with m.batch() as b:
                for i in range(GROUP):
                    b[("g", n % 50, i)] = n
        except shmmap.DaemonUnavailableError:
            acks.send(("down", n))
            if go_on.recv() == "stop":
                break
            continue
        acks.send(("ack", n))
        n += 1
        if n % 64 == 0 and go_on.poll() and go_on.recv() == "stop":
            break
    m.close()


def _group_checker(name: str, stop: Any, out: Any, connected: Any) -> None:
    """Iterates continuously: every group carries one batch number."""
    m = shmmap.connect(name, timeout=20)
    connected.set()
    scans = 0
    try:
        while not stop.is_set():
            groups: dict[int, set[int]] = {}
            for key, value in m.items():
                groups.setdefault(key[1], set()).add(value)
            bad = {g: v for g, v in groups.items() if len(v) != 1}
            if bad:
                out.put(("torn", bad))
                return
            scans += 1
        out.put(("ok", scans))
    except Exception as exc:
        out.put(("error", repr(exc)))
    finally:
        m.close()


def test_daemon_killed_mid_writes_loses_no_acknowledged_write(map_name: str) -> None:
    d = shmmap.Daemon(map_name).start()
    acks_r, acks_w = CTX.Pipe(duplex=False)
    go_r, go_w = CTX.Pipe(duplex=False)
    stop, out, connected = CTX.Event(), CTX.Queue(), CTX.Event()
    writer = CTX.Process(target=_batch_writer, args=(map_name, acks_w, go_r))
    reader = CTX.Process(target=_group_checker, args=(map_name, stop, out, connected))
    d2 = None
    try:
        writer.start()
        reader.start()
        acked = []
        while len(acked) < 300:
            assert acks_r.poll(60), "the writer stopped acknowledging"
            kind, n = acks_r.recv()
            assert kind == "ack"
            acked.append(n)
        assert connected.wait(60), "the checker did not connect"   # before the daemon dies
        d.process.send_signal(signal.SIGKILL)
        d.process.wait()
        while True:                 # acks in flight, then the failure
            assert acks_r.poll(60)
            kind, n = acks_r.recv()
            if kind == "down":
                break
            acked.append(n)
        d2 = shmmap.Daemon(map_name).start()     # adopts the segments
        assert "adopted" in d2.log()
        go_w.send("continue")
        for _ in range(100):
            assert acks_r.poll(60)
            kind, n = acks_r.recv()
            assert kind == "ack", "writes go on after the restart without reconnecting by hand"
            acked.append(n)
        go_w.send("stop")
        writer.join(60)
        while acks_r.poll(0):       # what it acknowledged before it stopped
            kind, n = acks_r.recv()
            assert kind == "ack"
            acked.append(n)
        stop.set()
        result = out.get(timeout=60)
        assert result[0] == "ok" and result[1] > 0, result
        with d2.connect() as m:
            snap = m.snapshot()
            last = {}
            for n in acked:
                last[n % 50] = n
            for group, n in last.items():
                assert [snap[("g", group, i)] for i in range(GROUP)] == [n] * GROUP
    finally:
        stop.set()
        go_w.send("stop")
        for p in (writer, reader):
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        if d2 is not None:
            d2.stop()
        d.stop()


def _unread_by_peer(sock: Any) -> int:
    """Bytes sent on a Unix socket that its peer has not read (SIOCOUTQ)."""
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), sys.byteorder)


def test_conditional_write_cut_off_by_a_crash_reports_outcome_unknown(map_name: str) -> None:
    d = shmmap.Daemon(map_name).start()
    try:
        m = d.connect(timeout=30)
        m["k"] = 1
        os.kill(d.pid, signal.SIGSTOP)          # the request will be in flight
        raised: list[BaseException] = []

        def cas() -> None:
            try:
                m.compare_and_swap("k", 1, 2)
            except BaseException as exc:
                raised.append(exc)

        t = threading.Thread(target=cas)
        t.start()
        # Kill the daemon once the request waits, unread, in its socket (a
        # request that never left would be sent again to a new daemon).
        deadline = time.monotonic() + 60
        while _unread_by_peer(m._sock) == 0:
            assert time.monotonic() < deadline and not raised, raised
            time.sleep(0.001)
        d.process.send_signal(signal.SIGKILL)
        t.join(60)
        assert len(raised) == 1 and isinstance(raised[0], shmmap.OutcomeUnknownError)
        assert m["k"] == 1                      # readers keep the last state
        m.close()
    finally:
        d.stop()


def _crashing_client(name: str, ready: Any, mode: str) -> None:
    m = shmmap.connect(name)
    ready.send("ready")
    while True:
        if mode == "iterate":
            for _ in m.items():
                pass
        else:
            m.update({i: i for i in range(1000)})


def test_killed_clients_leave_daemon_and_others_unaffected(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        with d.connect() as m:
            m.update({i: i for i in range(20000)})
            procs = []
            for mode in ("iterate", "iterate", "write", "write"):
                r, w = CTX.Pipe(duplex=False)
                p = CTX.Process(target=_crashing_client, args=(map_name, w, mode))
                p.start()
                assert r.poll(60) and r.recv() == "ready"
                procs.append(p)
            assert m.stats()["clients"] == 5
            for p in procs:
                p.kill()
                p.join()
            # The daemon sees each connection end; a request of ours after
            # that is served after it (one loop, arrival order).
            for _ in range(1000):
                if m.stats()["clients"] == 1:
                    break
            assert m.stats()["clients"] == 1
            m["after"] = "fine"
            assert m["after"] == "fine" and len(m) == 20001
            again = [shmmap.connect(map_name) for _ in range(4)]
            assert m.stats()["clients"] == 5     # slots were reclaimed and reused
            for c in again:
                c.close()


def test_connection_limit_gives_a_clear_error(map_name: str) -> None:
    with shmmap.Daemon(map_name, max_connections=2) as d:
        a, b = d.connect(), d.connect()
        with pytest.raises(shmmap.LimitError, match="limit of 2 connections"):
            d.connect()
        a["x"] = 1
        assert b["x"] == 1
        a.close()
        b.close()


NOBODY = 65534


def _connect_as_nobody(name: str, out: Any) -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    try:
        m = shmmap.connect(name, timeout=10)
    except shmmap.ShmmapError as exc:
        out.put((type(exc).__name__, str(exc)))
        return
    m["from-nobody"] = 1
    out.put(("ok", m["from-nobody"]))
    m.close()


def _as_nobody(name: str) -> tuple[str, Any]:
    out = CTX.Queue()
    p = CTX.Process(target=_connect_as_nobody, args=(name, out))
    p.start()
    result = out.get(timeout=60)
    p.join(60)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_daemon_checks_the_peer_uid(map_name: str) -> None:
    with tempfile.TemporaryDirectory() as where:      # a directory nobody can reach
        os.chmod(where, 0o755)
        sock = os.path.join(where, "s.sock")
        with shmmap.Daemon(map_name, socket=sock, mode=0o666):
            kind, message = _as_nobody(map_name)
            assert kind == "AccessDeniedError", message
            assert f"uid {NOBODY}" in message
        with shmmap.Daemon(map_name, socket=sock, mode=0o666, allow_uid=[NOBODY]):
            assert _as_nobody(map_name) == ("ok", 1)
        with shmmap.Daemon(map_name, socket=sock):        # 0600: not even readable
            kind, message = _as_nobody(map_name)
            assert kind == "AccessDeniedError" and "no permission to read" in message


def test_an_error_reply_is_raised_not_retried(map_name: str) -> None:
    with shmmap.Daemon(map_name, max_value=100) as d, d.connect() as m:
        m["k"] = "small"
        with pytest.raises(shmmap.LimitError, match="exceeds --max-value 100"):
            m["k"] = b"x" * 200
        with pytest.raises(TypeError):
            m[1.5] = 1                          # refused before anything is sent
        st = m.stats()
        assert st["errors"] == 1 and st["clients"] == 1   # sent once, not resent
        assert m["k"] == "small"


FULL_SHM_SCRIPT = r"""
import shmmap
with shmmap.Daemon("full") as d, d.connect() as m:
    i = 0
    try:
        while True:
            m.update({(i, j): "x" * 200 for j in range(1000)})
            i += 1
    except shmmap.MapFullError as exc:
        print("full:", exc)
    assert m[(0, 0)] == "x" * 200 and len(m) == i * 1000, (len(m), i)
    print("kept", len(m))
"""


def test_full_dev_shm_fails_the_write_with_a_clear_error() -> None:
    """In a mount namespace of its own, /dev/shm is an 8 MiB tmpfs."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a mount namespace here (needs root or user namespaces)")
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount -t tmpfs -o size=8m tmpfs /dev/shm && exec {sys.executable} -c '{FULL_SHM_SCRIPT}'"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "full: /dev/shm is full" in done.stdout
    assert "kept" in done.stdout


FAILED_PROMOTION_SCRIPT = r"""
import atexit, os, signal, time
import shmmap

def fill_dev_shm():
    fd = os.open("/dev/shm/ballast", os.O_WRONLY | os.O_CREAT, 0o600)
    for chunk in (1 << 16, 1 << 12):
        try:
            while True:
                os.write(fd, bytes(chunk))
        except OSError:
            pass
    os.close(fd)

d = shmmap.Daemon("full").start()
# Should an assertion below fail, the daemon must not outlive the test.
atexit.register(lambda: d.process.poll() is None and d.process.kill())
m = d.connect(cache_keys=0)     # its lookups must reach shared memory to count misses
acked = {}
batch = 0
def write_batch():
    global batch
    items = {("k", batch, j): "x" * 200 for j in range(100)}
    m.update(items)
    acked.update(items)
    batch += 1

for _ in range(20):
    write_batch()
fill_dev_shm()
try:
    while True:                 # the generation fills; the promotion it needs cannot
        write_batch()
except shmmap.MapFullError as exc:
    print("full:", exc)
newest = [("k", batch - 1, j) for j in range(100)]
gen = m.stats()["generation"]
# Readers' misses: lookups that probe the dirty table. Enough of them make
# the daemon promote on its own, outside any request -- and that fails.
deadline = time.monotonic() + 60
while "promotion for readers' misses failed" not in d.log():
    assert time.monotonic() < deadline, d.log()
    for key in newest * 50:
        assert m[key] == "x" * 200
print("logged:", [l for l in d.log().splitlines() if "misses failed" in l][0])
st = m.stats()                  # still serving, nothing lost
assert d.process.poll() is None and st["generation"] == gen, st
assert len(m) == len(acked)
del m[("k", 0, 0)]              # a delete fits: writes that fit go on
acked.pop(("k", 0, 0))
m.close()
os.kill(d.pid, signal.SIGKILL)
d.process.wait()
d.stop()
left = shmmap.shared.segments.map_segments("full")
assert left, "a killed daemon leaves its map"
try:                            # no room to adopt: refused, and nothing removed
    shmmap.Daemon("full").start()
except shmmap.DaemonStartError as exc:
    assert "/dev/shm is full" in str(exc), exc
    print("no room to adopt:", exc)
assert shmmap.shared.segments.map_segments("full") == left
os.unlink("/dev/shm/ballast")   # room again: the next daemon adopts
with shmmap.Daemon("full") as d2, d2.connect() as m2:
    assert "adopted" in d2.log(), d2.log()
    snap = m2.snapshot()
    assert snap == acked, (len(snap), len(acked))
    print("adopted", len(snap))
assert shmmap.shared.segments.map_segments("full") == [], "a clean stop removes the map"
"""


def test_failed_promotion_on_full_dev_shm_is_logged_and_nothing_is_lost() -> None:
    """/dev/shm (an 8 MiB tmpfs in a mount namespace) fills up; a promotion
    the daemon starts for readers' misses fails: it is logged and serving
    goes on; killed, the daemon leaves a map the next one adopts whole."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a mount namespace here (needs root or user namespaces)")
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=8m tmpfs /dev/shm && exec '
         f'{sys.executable} -c "$SCRIPT"'],
        env={**os.environ, "SCRIPT": FAILED_PROMOTION_SCRIPT},
        capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "full: /dev/shm is full" in done.stdout
    assert "logged: shmmap ERROR: promotion for readers' misses failed, serving on: " \
        "/dev/shm is full" in done.stdout
    assert ("no room to adopt: daemon for map 'full' did not start (exit status 1): "
            "shmmap: /dev/shm is full") in done.stdout
    assert "adopted " in done.stdout


def test_live_bytes_limit_refuses_growth_but_not_shrinking(map_name: str) -> None:
    with shmmap.Daemon(map_name, max_live_bytes=20_000) as d, d.connect() as m:
        m.update({i: "v" * 100 for i in range(100)})
        with pytest.raises(shmmap.MapFullError, match="live bytes would exceed"):
            m.update({("more", i): "v" * 100 for i in range(200)})
        assert len(m) == 100 and ("more", 0) not in m     # nothing of it applied
        filled = 0
        with pytest.raises(shmmap.MapFullError):
            while filled < 1000:                               # up to the limit
                m[("fill", filled)] = "v" * 100
                filled += 1
        assert 0 < filled < 1000
        with m.batch() as b:                                   # a full map still empties
            for i in range(filled):
                del b[("fill", i)]
        for i in range(50):
            del m[i]                                        # deletes always go through
        m.update({("more", i): "v" * 100 for i in range(40)})
        assert len(m) == 90
