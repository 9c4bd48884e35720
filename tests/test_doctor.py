"""`shmmap doctor`: real daemons in the states it diagnoses -- a generation
pinned by an iteration in another process, a dead daemon, readers
missing, promotions in a loop -- and the host checks on their inputs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import shmmap
from shmmap.cli import doctor

KEYS = 1000

HOLDER = textwrap.dedent("""
    import sys, shmmap
    m = shmmap.connect(sys.argv[1], cache_keys=0)   # iterates a generation, not a cached dict
    it = iter(m.items())
    next(it)                                # an iteration, left open
    print(m.generation.gen, flush=True)
    sys.stdin.readline()                    # the test promotes meanwhile
    m.get(0)                                # reads on in the new generation
    print(m.generation.gen, flush=True)
    sys.stdin.readline()
    print(sum(1 for _ in it) + 1)           # the snapshot is still whole
""")


def doctor_cli(name: str, *args: str) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "shmmap", "doctor", name, "--interval", "0.2",
                           *args], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_doctor_finds_a_generation_pinned_by_an_iteration_in_another_process(
        map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update((i, i) for i in range(KEYS))
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, map_name],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdin is not None
            old = int(holder.stdout.readline())
            m.promote()
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert int(holder.stdout.readline()) == old + 1
            st = m.stats()
            status, out, err = doctor_cli(map_name, "--json")
            text_status, text, _ = doctor_cli(map_name)
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert int(holder.stdout.readline()) == KEYS
        finally:
            holder.kill()
            holder.wait()
    assert status == 1 and text_status == 1, err
    report = json.loads(out)
    assert report["healthy"] is False and report["daemon_pid"] == d.pid
    assert report["generation"] == st["generation"] == old + 1
    pinned = [f for f in report["findings"] if f["check"] == "pinned_generation"]
    assert len(pinned) == 1, report["findings"]
    f = pinned[0]
    assert f["severity"] == "problem"
    assert f["data"]["pid"] == holder.pid and f["data"]["generations"] == [old]
    assert f["data"]["bytes"] > 0 and f["data"]["slot"]["mapped_gens"] == 2
    # The daemon's own count agrees: one older generation is mapped.
    assert st["older_generations_mapped"] == 1
    assert f"problem: pid {holder.pid} (" in text
    assert f"holds superseded generation {old} of map {map_name!r}" in text
    assert "what to do: let the iteration end" in text


def test_doctor_says_a_dead_daemon_is_not_running(map_name: str) -> None:
    d = shmmap.Daemon(map_name).start()
    try:
        with d.connect() as m:
            m["k"] = 1
        os.kill(d.pid, signal.SIGKILL)
    finally:
        d.stop()
    status, out, _ = doctor_cli(map_name)
    assert status == 1
    assert f"problem: map {map_name!r} exists (1 keys, generation 1) but its daemon (pid " \
           f"{d.pid}) is not running" in out
    assert f"`shmmap serve {map_name}` adopts the map" in out


def test_a_quiet_map_is_healthy_and_no_map_is_an_error(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update((i, i) for i in range(KEYS))
        status, out, err = doctor_cli(map_name)
        assert status == 0, out + err
        assert out.startswith(f"map {map_name!r}: daemon pid {d.pid}, generation ")
        # The one note a quiet map may get is of segments an older shmmap
        # left on this host (other users', other runs').
        notes = [line for line in out.splitlines() if line.startswith("note:")]
        assert all("segments of an older shmmap" in n for n in notes), out
        assert out.endswith("no problems found" + (" (see the notes)" if notes else "") + "\n")
    status, out, err = doctor_cli(map_name)
    assert status == 1 and out == ""
    assert err == f"shmmap: no map named {map_name!r} on this host\n"


def _while(work: Any, name: str) -> doctor.Report:
    """doctor.diagnose(name) while work() runs in a thread, until it ends."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                work()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=loop)
    t.start()
    try:
        return doctor.diagnose(name, 0.5)
    finally:
        stop.set()
        t.join()
        assert not errors, errors


def test_doctor_explains_misses_and_the_promotion_they_cause(map_name: str) -> None:
    live = 50 * KEYS        # the daemon promotes after 4 misses per live key: 200,000
    # uncached: reads the cache serves never reach shared memory, so count nothing
    with shmmap.Daemon(map_name) as d, d.connect(cache_keys=0) as m:
        m.update((i, i) for i in range(live))
        m.promote()
        m.update((("new", i), i) for i in range(200))     # in the dirty table
        keys = [("new", i) for i in range(200)]

        def lookups() -> None:          # at most 100,000 a second
            for k in keys:
                m.get(k)
            time.sleep(0.002)

        report = _while(lookups, map_name)
        assert m.stats()["promotions_by_reason"].get("misses", 0) == 0
    (f,) = [f for f in report.findings if f.check == "miss_rate"]
    assert f.data["miss_ratio"] > 0.99
    assert f.data["promotion_after_misses"] == (live + 200) * doctor.lib.SHM_MISSES_PER_LIVE
    assert "readers missed the read table on" in f.problem
    assert "The daemon promotes for misses after" in f.problem


def test_doctor_tells_lookups_of_absent_keys_from_misses_that_promote(map_name: str) -> None:
    # uncached: reads the cache serves never reach shared memory, so count nothing
    with shmmap.Daemon(map_name) as d, d.connect(cache_keys=0) as m:
        m.update((i, i) for i in range(KEYS))
        m.promote()
        absent = [("absent", i) for i in range(200)]
        report = _while(lambda: [m.get(k) for k in absent], map_name)
    assert not [f for f in report.findings if f.check in ("miss_rate", "promotion_rate")]
    (f,) = [f for f in report.findings if f.check == "absent_lookups"]
    assert f.severity == "note" and f.data["miss_ratio"] > 0.99
    assert "lookups of keys not in the map" in f.problem


def test_doctor_finds_promotions_too_frequent_for_the_writes(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update((i, i) for i in range(20 * KEYS))
        report = _while(m.promote, map_name)
    (f,) = [f for f in report.findings if f.check == "promotion_rate"]
    # (20 * KEYS keys are enough for a build before the generation fills:
    # one for the runway besides the requested ones, at most.)
    by_reason = dict(f.data["by_reason"])
    assert by_reason.pop("runway", 0) <= 1 and by_reason == {"requested": by_reason["requested"]}
    assert f.data["promotions"] >= 2 and by_reason["requested"] >= f.data["promotions"] - 1
    assert "promotions in" in f.problem and "(" in f.problem
    assert f.advice.startswith("a client calls promote() this often")


def test_remove_ipc_is_found_from_logind_configuration(tmp_path: Path) -> None:
    running = tmp_path / "seats"
    running.mkdir()
    conf = tmp_path / "logind.conf"
    dropins = tmp_path / "logind.conf.d"
    dropins.mkdir()
    defs = tmp_path / "login.defs"
    defs.write_text("SYS_UID_MAX 999\n")
    linger = tmp_path / "linger"
    linger.mkdir()
    kw: dict[str, Any] = dict(configs=[conf, dropins], logind_running=running,
                              linger_dir=linger, login_defs=defs)
    conf.write_text("[Login]\n#RemoveIPC=yes\n")
    (f,) = doctor.remove_ipc(1000, **kw)
    assert f.check == "remove_ipc" and "systemd's default" in f.problem
    assert "uid 1000" in f.problem and "enable-linger" in f.advice
    conf.write_text("[Login]\nRemoveIPC=no\n")
    assert doctor.remove_ipc(1000, **kw) == []
    (dropins / "50-shm.conf").write_text("[Login]\nRemoveIPC=yes\n")
    (f,) = doctor.remove_ipc(1000, **kw)
    assert str(dropins / "50-shm.conf") in f.problem
    assert doctor.remove_ipc(998, **kw) == []                   # a system user
    assert doctor.remove_ipc(1000, **{**kw, "logind_running": tmp_path / "none"}) == []
    (linger / f.data["user"]).touch()
    assert doctor.remove_ipc(1000, **kw) == []


def test_host_checks_say_what_they_measured() -> None:
    free = os.statvfs("/dev/shm")
    assert doctor.shm_space(10, 100) == []
    (f,) = doctor.shm_space(10 ** 8, 10 ** 11)          # far beyond any /dev/shm here
    assert f.data["free"] == pytest.approx(free.f_bavail * free.f_frsize, rel=0.5)
    assert f.data["needed"] > f.data["free"] and "the next promotion will fail" in f.problem
    assert doctor.cpu_contention(ran_ns=500_000_000, waited_ns=100_000_000, seconds=1.0,
                                 runnable=3, cores=2, p99=1e-4) == []
    # An idle daemon that waited for a core to wake up now and then.
    assert doctor.cpu_contention(ran_ns=2_000_000, waited_ns=10_000_000, seconds=0.2,
                                 runnable=7, cores=2, p99=2e-4) == []
    (f,) = doctor.cpu_contention(ran_ns=200_000_000, waited_ns=400_000_000, seconds=1.0,
                                 runnable=7, cores=2, p99=2e-3)
    assert "waited 0.40 s for a CPU in 1.0 s and ran 0.20 s (7 processes runnable on 2 " \
           "cores; p99 request latency in the daemon 2.00 ms)" in f.problem


def test_doctor_says_a_stopped_daemon_does_not_answer(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        os.kill(d.pid, signal.SIGSTOP)
        try:
            status, out, err = doctor_cli(map_name, "--json")
        finally:
            os.kill(d.pid, signal.SIGCONT)
    assert status == 1, err
    (f,) = [f for f in json.loads(out)["findings"] if f["check"] == "daemon_not_answering"]
    assert f["data"] == {"pid": d.pid, "state": "T"}
    assert f"daemon pid {d.pid} runs (state: T) but does not answer" in f["problem"]
    assert "kill -CONT" in f["advice"]


def _stats_once(m: shmmap.SharedMap, ready: Any, seconds: float = 30.0) -> dict[str, Any]:
    """m.stats() once ready(stats) holds; the last stats after seconds."""
    deadline = time.monotonic() + seconds
    while True:
        st = m.stats()
        if ready(st) or time.monotonic() > deadline:
            return st


READER = textwrap.dedent("""
    import sys, shmmap
    m = shmmap.connect(sys.argv[1])
    m.get(0)                                # maps the current generation, and says so
    print(m.generation.gen, flush=True)
    sys.stdin.readline()                    # idle (or stopped) while the test promotes
    m.get(0)
    print(m.generation.gen, flush=True)
""")


@pytest.mark.parametrize("stopped", [True, False])
def test_a_reader_that_has_not_read_since_promotions_is_counted_and_a_problem(
        map_name: str, stopped: bool) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update((i, i) for i in range(KEYS))
        reader = subprocess.Popen([sys.executable, "-c", READER, map_name],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert reader.stdout is not None and reader.stdin is not None
            old = int(reader.stdout.readline())
            if stopped:
                os.kill(reader.pid, signal.SIGSTOP)
            m.promote()
            # The daemon counts it once it kept the generation for longer
            # than a reader that reads would (UNNOTICED_SECONDS).
            first = _stats_once(m, lambda st: st["older_generations_mapped"] > 0)
            # One promotion behind and small: worth a note, no more.
            status_one, out_one, err = doctor_cli(map_name, "--json")
            for _ in range(doctor.STALE_PROMOTIONS - 1):
                m.promote()
            st = m.stats()
            status, out, err = doctor_cli(map_name, "--json")
            if stopped:
                os.kill(reader.pid, signal.SIGCONT)
            reader.stdin.write("\n")
            reader.stdin.flush()
            assert int(reader.stdout.readline()) == st["generation"]
            after = m.stats()
        finally:
            reader.kill()
            reader.wait()
    # The daemon counts the generation the reader still maps, although its
    # slot names that generation as its newest.
    assert first["older_generations_mapped"] == 1
    assert st["older_generations_mapped"] == 1 and st["generation"] == old + 4
    assert after["older_generations_mapped"] == 0
    one = [f for f in json.loads(out_one)["findings"] if f["data"].get("pid") == reader.pid]
    found = [f for f in json.loads(out)["findings"] if f["data"].get("pid") == reader.pid]
    assert len(found) == 1 and len(one) == 1, (one, found)
    assert found[0]["severity"] == "problem" and status == 1, err
    assert found[0]["data"]["generations"] == [old]
    assert found[0]["data"]["promotions_behind"] == doctor.STALE_PROMOTIONS
    if stopped:
        assert one[0]["check"] == found[0]["check"] == "stopped_reader"
        assert one[0]["severity"] == "problem" and status_one == 1
        assert f"kill -CONT {reader.pid}" in found[0]["advice"]
    else:
        assert one[0]["check"] == "idle_generation" and one[0]["severity"] == "note"
        assert found[0]["check"] == "stale_generation"
