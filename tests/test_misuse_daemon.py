"""Misusing the daemon never loses a map: a second daemon on a served name,
a bad option, a start from a source tree, a daemon that fails mid-run or is
killed. Only a clean stop (SIGTERM, SIGINT, Daemon.stop()) removes a map.
Every daemon here is a real process; logs are the daemon's own lines."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import pytest

import shmmap
from shmmap.shared import segments
from shmmap.shared.errors import DaemonStartError
from shmmap.shared.protocol import READY, Err, Op

KEYS = 5000


def _fill(m: shmmap.SharedMap) -> dict[Any, Any]:
    items = {("k", i): i for i in range(KEYS)}
    m.update(items)
    return items


def _spawn(name: str, *extra: str, prelude: str = "") -> tuple[subprocess.Popen[str], int]:
    """Starts `shmmap serve name` (after prelude, Python run in the daemon
    process first); returns it and the read end of its --ready-fd."""
    r, w = os.pipe()
    code = f"{prelude}\nimport sys\nfrom shmmap.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", name, "--ready-fd", str(w), *extra],
        pass_fds=(w,), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.close(w)
    return proc, r


def _said(ready_fd: int) -> str:
    """What a daemon wrote to its --ready-fd, once it closed it."""
    with os.fdopen(ready_fd, "rb") as ready:
        return ready.read().decode()


def _serve(name: str, *extra: str, prelude: str = "") -> tuple[subprocess.Popen[str], str]:
    """Starts `shmmap serve name`; returns it and what it said on --ready-fd."""
    proc, ready_fd = _spawn(name, *extra, prelude=prelude)
    return proc, _said(ready_fd)


def _wait(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out


def test_second_daemon_on_a_served_name_raises_and_removes_nothing(map_name: str) -> None:
    with shmmap.Daemon(map_name) as first, first.connect() as m:
        items = _fill(m)
        before = segments.map_segments(map_name)
        with pytest.raises(shmmap.DaemonRunningError, match=f"served by daemon pid {first.pid}"):
            shmmap.Daemon(map_name).start()
        second = shmmap.Daemon(map_name)
        with pytest.raises(shmmap.DaemonRunningError):
            with second:
                pass
        assert second.stop() != 0          # stopping the failed one again: harmless
        proc, said = _serve(map_name)      # the command line says so too
        status, out = _wait(proc)
        assert said.startswith("error DaemonRunningError") and status == 1, out
        assert f"already served by daemon pid {first.pid}" in out
        assert segments.map_segments(map_name) == before
        assert first.socket_path.exists()
        with first.connect() as fresh:     # new clients still find the map, whole
            assert fresh.snapshot() == items
        m["after"] = 1                     # and the first daemon still writes
        assert m["after"] == 1


def test_daemons_started_at_once_for_one_name_one_serves(map_name: str) -> None:
    """Whether a map is served is decided by a lock, not by a pid read
    before creating it: of daemons racing to start, exactly one serves."""
    for round in range(3):
        started = [_spawn(map_name) for _ in range(4)]
        try:
            said = [_said(fd) for _, fd in started]
            assert sorted(said)[-1] == READY.decode() and said.count(READY.decode()) == 1, said
            for (proc, _), words in zip(started, said):
                if words != READY.decode():
                    assert words.startswith("error DaemonRunningError"), words
                    assert _wait(proc)[0] == 1
            with shmmap.connect(map_name) as m:
                m["round"] = round
                assert m["round"] == round and len(m) == 1
        finally:
            for proc, _ in started:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    assert _wait(proc)[0] == 0
        assert segments.map_segments(map_name) == []


def test_unknown_option_is_a_type_error_naming_it(map_name: str) -> None:
    with pytest.raises(TypeError, match="unknown option 'mdoe' .did you mean 'mode'"):
        shmmap.Daemon(map_name, mdoe=0o660)


@pytest.mark.parametrize("options,cause", [
    ({"group": "no-such-group-here"}, "no group named 'no-such-group-here'"),
    ({"max_connections": 0}, "--max-connections: 0 is below 1"),
    ({"mode": 0o1777}, "--mode"),
    ({"socket": "/proc/no/such/dir/s.sock"}, "No such file or directory|Permission denied"),
])
def test_a_failed_start_raises_with_the_daemons_own_message(
        map_name: str, options: dict[str, Any], cause: str) -> None:
    d = shmmap.Daemon(map_name, **options)
    with pytest.raises(DaemonStartError, match=cause) as raised:
        d.start()
    assert "did not start (exit status" in str(raised.value)
    assert isinstance(raised.value, shmmap.DaemonUnavailableError)
    assert cause.split("|")[0] in d.log() or "|" in cause     # the log is kept
    assert d.stop() != 0
    assert segments.map_segments(map_name) == []              # it made nothing


FAKE_PACKAGE = 'raise ImportError("the source tree was imported, not the installed shmmap")\n'


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the test's own process needs -P")
def test_daemon_starts_from_a_directory_with_a_shmmap_source_tree(
        map_name: str, tmp_path: Path) -> None:
    """From a clone's root, `python -m shmmap` would import ./shmmap (no
    compiled core): shmmap.Daemon's child must import the caller's."""
    (tmp_path / "shmmap").mkdir()
    (tmp_path / "shmmap" / "__init__.py").write_text(FAKE_PACKAGE)
    script = textwrap.dedent(f"""
        import shmmap
        with shmmap.Daemon({map_name!r}) as d, d.connect() as m:
            m["k"] = 1
            print("ok", m["k"])
    """)
    done = subprocess.run([sys.executable, "-P", "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok 1\n"


def test_sigterm_removes_the_map_and_socket(map_name: str) -> None:
    d = shmmap.Daemon(map_name, verbose=True).start()
    with d.connect() as m:
        _fill(m)
    assert segments.map_segments(map_name)
    assert d.stop() == 0
    assert segments.map_segments(map_name) == []
    assert not d.socket_path.exists()
    assert f"stopped; map '{map_name}' removed" in d.log()


def test_sigint_is_a_clean_stop_too(map_name: str) -> None:
    proc, said = _serve(map_name)
    assert said == READY.decode()
    with shmmap.connect(map_name) as m:
        m["k"] = 1
    proc.send_signal(signal.SIGINT)
    status, out = _wait(proc)
    assert status == 0, out
    assert segments.map_segments(map_name) == []


def test_sigkill_leaves_the_map_and_a_new_daemon_adopts_it(map_name: str) -> None:
    d = shmmap.Daemon(map_name).start()
    with d.connect() as m:
        items = _fill(m)
        os.kill(d.pid, signal.SIGKILL)
        assert d.stop() == -signal.SIGKILL
        assert segments.map_segments(map_name)          # Daemon.stop() removed nothing
        assert m[("k", 7)] == 7                         # readers go on without a daemon
        with shmmap.Daemon(map_name) as again:
            assert "adopted map" in again.log()
            m["after"] = "restart"                      # the client reconnects by itself
            with again.connect() as m2:
                assert m2.snapshot() == {**items, "after": "restart"}
    assert segments.map_segments(map_name) == []


def test_killed_after_the_stop_timeout_leaves_the_map(
        map_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon that does not exit on SIGTERM (here: stopped) is killed
    after STOP_TIMEOUT; that is not a clean stop, so the map stays."""
    monkeypatch.setattr(shmmap.launcher, "STOP_TIMEOUT", 0.5)
    d = shmmap.Daemon(map_name).start()
    with d.connect() as m:
        items = _fill(m)
    os.kill(d.pid, signal.SIGSTOP)
    assert d.stop() == -signal.SIGKILL
    with shmmap.Daemon(map_name) as again, again.connect() as m2:
        assert m2.snapshot() == items


# Makes the daemon's loop raise once the map has been promoted on request:
# a daemon bug outside any request's handling.
FAULT = """
from shmmap.server import stats
_check = stats.PromotionLog.check
def check(self):
    _check(self)
    if self.writer.stats.promotions_by_reason.get("requested"):
        raise RuntimeError("injected fault in the daemon's loop")
stats.PromotionLog.check = check
"""


def test_a_daemon_that_fails_mid_run_leaves_an_adoptable_map(map_name: str) -> None:
    proc, said = _serve(map_name, "-v", prelude=FAULT)
    try:
        assert said == READY.decode()
        with shmmap.connect(map_name, timeout=10) as m:
            items = _fill(m)
            m.promote()                         # acknowledged; then the loop fails
            status, out = _wait(proc)
            assert status == 1, out
            assert "RuntimeError: injected fault in the daemon's loop" in out
            assert (f"CRITICAL: daemon failed; map '{map_name}' is left for the next "
                    f"`shmmap serve {map_name}` to adopt") in out
            assert "removed" not in out
            with shmmap.Daemon(map_name) as again, again.connect() as m2:
                assert "adopted map" in again.log()
                assert m2.snapshot() == items
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_daemon_bug_in_a_request_is_internal_not_invalid(map_name: str) -> None:
    """A TypeError inside a handler is the daemon's fault: INTERNAL, logged
    with its traceback; the client's request is not called invalid."""
    fault = textwrap.dedent("""
        from shmmap.server import handlers
        def op_swap(self, conn, key, value):
            raise TypeError("injected bug")
        handlers.MapOps.op_swap = op_swap
    """)
    proc, said = _serve(map_name, prelude=fault)
    try:
        assert said == READY.decode()
        with shmmap.connect(map_name, timeout=10) as m:
            with pytest.raises(shmmap.ShmmapError, match="daemon error in SWAP: TypeError: "
                               "injected bug") as raised:
                m.swap("k", 1)
            assert not isinstance(raised.value, shmmap.InvalidRequestError)
            m["k"] = 2                                  # and it keeps serving
            assert m["k"] == 2
        proc.send_signal(signal.SIGTERM)
        status, out = _wait(proc)
        assert status == 0
        assert "ERROR: request SWAP from pid" in out and "a daemon bug" in out
        assert "TypeError: injected bug" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_protocol_error_behind_many_unread_replies_still_arrives(map_name: str) -> None:
    """A client that pipelines requests without reading, then sends bytes
    that are no request, gets every reply and the error, then EOF: the
    daemon keeps sending a closing connection's replies as its socket
    drains, rather than stop and wait for a request that never comes."""
    with shmmap.Daemon(map_name) as d:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(str(d.socket_path))
        count = 3000                  # ~2 MB of replies: more than socket buffers hold
        sock.sendall(b"".join(msgpack.packb([Op.STATS, i]) for i in range(count)) + b"\xc1")
        unpacker = msgpack.Unpacker(raw=False)
        replies = []
        while True:
            data = sock.recv(1 << 16)
            if not data:
                break
            unpacker.feed(data)
            replies.extend(unpacker)
        sock.close()
        assert [r[0] for r in replies[:-1]] == list(range(count))
        assert replies[-1][:2] == [None, Err.PROTOCOL]
        with d.connect() as m:
            m["still"] = "serving"


# -- logs --------------------------------------------------------------------

def test_verbose_logs_connects_promotions_adoption_and_stop(map_name: str) -> None:
    d = shmmap.Daemon(map_name, verbose=True).start()
    with d.connect() as m:
        _fill(m)
        m.promote()
    me = os.getpid()
    with d.connect() as other:
        # The daemon has seen the first client go once a request of a
        # later one says so (one loop, arrival order).
        for _ in range(1000):
            if other.stats()["clients"] == 1:
                break
        assert other.stats()["clients"] == 1
        os.kill(d.pid, signal.SIGKILL)
        d.stop()
    lines = d.log().splitlines()
    assert f"shmmap INFO: serving map '{map_name}' on {d.socket_path}" in lines
    assert any(line.startswith(f"shmmap INFO: client connected: pid {me} uid {os.getuid()}")
               for line in lines), lines
    assert any(line.startswith(f"shmmap INFO: client disconnected: pid {me} uid "
                               f"{os.getuid()} (closed") for line in lines), lines
    promoted = [line for line in lines if "promoted (requested)" in line]
    assert len(promoted) == 1 and f"{KEYS} entries" in promoted[0] and " ms" in promoted[0]
    with shmmap.Daemon(map_name, verbose=True) as again:
        pass
    log = again.log()
    assert f"WARNING: adopted map '{map_name}' at seq" in log and f"{KEYS} keys" in log
    assert "promoted (adopted)" in log
    assert f"stopped; map '{map_name}' removed" in log


def test_without_verbose_only_warnings_and_errors(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m["k"] = 1
        m.promote()
    assert d.log() == ""


def test_json_logs_are_one_object_per_line_with_the_events_fields(map_name: str) -> None:
    d = shmmap.Daemon(map_name, verbose=True, log_format="json").start()
    with d.connect() as m:
        _fill(m)
        m.promote()
    assert d.stop() == 0
    records = [json.loads(line) for line in d.log().splitlines()]
    events = [r.get("event") for r in records]
    assert events[0] == "serving" and events[-1] == "stopped", events
    connect = next(r for r in records if r.get("event") == "connect")
    assert connect["pid"] == os.getpid() and connect["uid"] == os.getuid()
    assert connect["level"] == "info" and connect["logger"] == "shmmap.daemon"
    assert connect["time"].endswith("+00:00")
    promotion = next(r for r in records if r.get("event") == "promotion"
                     and r["reason"] == "requested")
    assert promotion["entries"] == KEYS
    assert promotion["bytes"] > 0 and promotion["ms"] >= 0
    assert any(r.get("event") == "disconnect" for r in records)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_refusals_are_logged(map_name: str) -> None:
    script = textwrap.dedent(f"""
        import os, shmmap
        os.setgid(65534); os.setuid(65534)
        try:
            shmmap.connect({map_name!r}, timeout=10)
        except shmmap.AccessDeniedError as exc:
            print("refused:", exc)
    """)
    with tempfile.TemporaryDirectory() as where:     # one that uid 65534 can reach
        os.chmod(where, 0o755)
        with shmmap.Daemon(map_name, socket=os.path.join(where, "s.sock"), mode=0o666,
                           log_format="json") as d:
            done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                  text=True, timeout=60)
            assert "refused: " in done.stdout, done.stderr
    refusal = json.loads(d.log().splitlines()[0])
    assert refusal["event"] == "refuse" and refusal["uid"] == 65534
    assert refusal["level"] == "warning" and refusal["reason"] == "denied"


# -- open files --------------------------------------------------------------

def test_daemon_raises_its_open_file_limit_or_refuses(map_name: str) -> None:
    limit = "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))"
    proc, said = _serve(map_name, "--max-connections", "4000", prelude=limit)
    status, out = _wait(proc)
    assert said.startswith("error LimitError") and status == 1
    # Two descriptors a client (its socket, its channel's doorbell), and 64.
    assert ("--max-connections 4000 needs 8064 file descriptors, but this process may open "
            "at most 2048") in out
    assert segments.map_segments(map_name) == []
    proc, said = _serve(map_name, "-v", "--max-connections", "900", prelude=limit)
    try:
        assert said == READY.decode()
        with shmmap.connect(map_name) as m:
            m["k"] = 1
        proc.send_signal(signal.SIGTERM)
        status, out = _wait(proc)
        assert status == 0
        assert "raised the open-file limit from 256 to 1864 for --max-connections 900" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
