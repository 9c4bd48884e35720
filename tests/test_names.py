"""Map names and the segment names derived from them: no map's segment can
be another map's, a daemon removes only what it created, and the segments
an older shmmap (layout 2, "/shmmap-NAME-...") left are found and removed
unless its daemon still serves them."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import posix_ipc
import pytest

import shmmap
from shmmap._core import ffi, lib
from shmmap.cli import legacy
from shmmap.shared import segments
from shmmap.shared.errors import DaemonRunningError, InvalidNameError

from conftest import remove_map, unique_map_name

SHM = Path("/dev/shm")
# Every way layout 2 named a segment after its map: map X's readers and
# generations were the headers of maps "X-readers" and "X-g<N>".
SUFFIXES = ["-readers", "-g1", "-g12"]


def _entries_of(*names: str) -> set[str]:
    """The /dev/shm entries whose names hold one of names (other helpers'
    maps come and go meanwhile)."""
    return {e for e in os.listdir(SHM) if any(n in e for n in names)}


def _works(name: str, key: str) -> None:
    """A new client of map name reads what was written and writes anew."""
    with shmmap.connect(name) as m:
        assert m[key] == name
        m["after"] = key
        assert m["after"] == key


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    base = unique_map_name()
    names = (base, base + request.param)
    try:
        yield names
    finally:
        for n in names:
            remove_map(n)


@pytest.mark.parametrize("pair", SUFFIXES, indirect=True)
@pytest.mark.parametrize("suffixed_first", [False, True])
@pytest.mark.parametrize("stop_first", [0, 1])
def test_a_map_named_like_anothers_segment_is_a_map_of_its_own(
        pair: tuple[str, str], suffixed_first: bool, stop_first: int) -> None:
    order = list(reversed(pair)) if suffixed_first else list(pair)
    daemons = [shmmap.Daemon(n) for n in order]
    try:
        for d in daemons:
            d.start()
            with d.connect() as m:
                m["k"] = d.name
        for n in pair:
            _works(n, "k")
        whole = {n: set(segments.map_segments(n)) for n in pair}
        assert whole[pair[0]].isdisjoint(whole[pair[1]])

        stopped, kept = daemons[stop_first], daemons[1 - stop_first]
        assert stopped.stop() == 0
        assert segments.map_segments(stopped.name) == []          # a clean stop removes it
        assert set(segments.map_segments(kept.name)) >= {segments.header_name(kept.name)}
        _works(kept.name, "k")
        assert kept.stop() == 0
        assert _entries_of(*pair) == set()
    finally:
        for d in daemons:
            if d.process is not None:
                d.stop()


@pytest.mark.parametrize("name", ["x:readers", "x:g1", ":x", "x:"])
def test_a_name_with_the_separator_is_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        segments.check_map_name(name)
    with pytest.raises(InvalidNameError):
        shmmap.connect(name)
    with pytest.raises(InvalidNameError):
        shmmap.Daemon(name)


def test_a_start_refused_for_a_served_name_removes_nothing(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        with d.connect() as m:
            m["k"] = map_name
        before = _entries_of(map_name), d.socket_path.exists()
        with pytest.raises(DaemonRunningError):
            shmmap.Daemon(map_name).start()
        assert (_entries_of(map_name), d.socket_path.exists()) == before
        _works(map_name, "k")


def test_a_failed_start_removes_what_it_created_and_nothing_else(map_name: str) -> None:
    """Map B's daemon told to listen on map A's socket creates B's segments,
    then finds the socket in use: it removes B's segments and leaves A's
    socket (taking it over would cut A's clients off from their daemon)."""
    other = unique_map_name()
    try:
        with shmmap.Daemon(map_name) as a:
            with a.connect() as m:
                m["k"] = map_name
            before = _entries_of(map_name, other)
            with pytest.raises(DaemonRunningError, match="listens on this socket"):
                shmmap.Daemon(other, socket=str(a.socket_path)).start()
            assert _entries_of(map_name, other) == before
            assert segments.map_segments(other) == [] and a.socket_path.is_socket()
            _works(map_name, "k")
    finally:
        remove_map(other)


def test_a_daemon_leaves_a_segment_it_did_not_create(map_name: str) -> None:
    """A segment squatting on the name of the map's first generation makes
    the start fail; the daemon removes its header and leaves the squatter."""
    squatter = segments.gen_name(map_name, 1)
    posix_ipc.SharedMemory(squatter, posix_ipc.O_CREX, size=4096).close_fd()
    try:
        with pytest.raises(shmmap.DaemonStartError, match="exists"):
            shmmap.Daemon(map_name).start()
        assert segments.map_segments(map_name) == [squatter]
    finally:
        segments.unlink(squatter)


# -- layout 2's segments ------------------------------------------------------------

def _old_segment(name: str, data: bytes = b"\0" * 64) -> str:
    seg = legacy.PREFIX + name
    shm = posix_ipc.SharedMemory(seg, posix_ipc.O_CREX, size=len(data))
    try:
        os.pwrite(shm.fd, data, 0)
    finally:
        shm.close_fd()
    return seg


def _old_header(socket_path: str) -> bytes:
    h = ffi.new("struct shm_map_header *")
    h.magic = lib.SHM_MAGIC_MAP
    h.layout_version = 2
    h.header_size = ffi.sizeof(h[0])
    raw = socket_path.encode()
    ffi.memmove(h.socket_path, raw, len(raw))
    return bytes(ffi.buffer(h))


def _old_map(name: str, socket_path: str = "") -> list[str]:
    return [_old_segment(name, _old_header(socket_path)), _old_segment(name + "-g3"),
            _old_segment(name + "-readers")]


@dataclass
class OldMaps:
    held: str                 # its header flock-held, as a live older daemon holds it
    dead: str                 # no lock; its header names a socket nobody listens on
    socket: Path
    child: subprocess.Popen[str]       # holds held's lock until its stdin closes
    made: list[str]

    @property
    def served(self) -> set[str]:
        """held's segments. Map "held-readers" is one of its own (dead), but
        its header is also the name of held's reader slots."""
        return {legacy.PREFIX + self.held + part for part in ("", "-g3", "-readers")}


@pytest.fixture
def old_maps(tmp_path: Path) -> Iterator[OldMaps]:
    """Layout-2 maps: held, held-readers and dead (see OldMaps)."""
    held, dead = unique_map_name("held"), unique_map_name("dead")
    stale = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))                    # bound, never listening: as a dead daemon's
    made: list[str] = []
    child = None
    try:
        made += _old_map(held)
        made += [_old_segment(held + "-readers-g1"), _old_segment(held + "-readers-readers")]
        made += _old_map(dead, str(stale))
        child = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\n"
             "print('locked', flush=True)\n"
             "sys.stdin.read()\n", str(SHM / (legacy.PREFIX[1:] + held))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        yield OldMaps(held, dead, stale, child, made)
    finally:
        if child is not None:
            child.kill()
            child.wait()
        for seg in made:
            segments.unlink(seg)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shmmap", *args], capture_output=True,
                          text=True, timeout=60)


def _present(made: list[str]) -> set[str]:
    return {seg for seg in made if (SHM / seg[1:]).exists()}


def test_legacy_cleanup_removes_only_what_no_older_daemon_serves(old_maps: OldMaps) -> None:
    o = old_maps
    names = (o.held, o.held + "-readers", o.dead)
    found = {s.segment: s for s in legacy.find()}
    assert {seg for seg in o.made if found[seg].served} == o.served
    assert found[legacy.PREFIX + o.dead].socket == str(o.socket)

    out = _cli("cleanup", "--legacy", "--dry-run", *names)
    assert out.returncode == 0, out.stderr
    assert _present(o.made) == set(o.made) and o.socket.exists()   # a dry run removes nothing
    assert f"would remove {legacy.PREFIX}{o.dead}\n" in out.stdout
    assert f"would remove {legacy.PREFIX}{o.held}-readers-g1\n" in out.stdout
    assert f"would remove {o.socket}\n" in out.stdout
    assert f"left {legacy.PREFIX}{o.held}-readers: served" in out.stdout

    out = _cli("cleanup", "--legacy", *names)
    assert out.returncode == 0, out.stderr
    assert _present(o.made) == o.served
    assert not o.socket.exists()
    assert f"removed {legacy.PREFIX}{o.dead}-g3\n" in out.stdout

    o.child.communicate("")                   # the older daemon stops: its lock goes
    _, removed = legacy.remove(names)
    assert set(removed) == o.served and _present(o.made) == set()


def test_ls_and_doctor_mention_older_segments(old_maps: OldMaps, map_name: str) -> None:
    out = _cli("ls")
    assert out.returncode == 0, out.stderr
    assert "segments of an older shmmap" in out.stdout
    assert "`shmmap cleanup --legacy`" in out.stdout
    with shmmap.Daemon(map_name):
        out = _cli("doctor", map_name, "--interval", "0.1", "--json")
    # 1 if a problem (CPU contention, say) is found beside the note.
    assert out.returncode in (0, 1), out.stderr
    (note,) = [f for f in json.loads(out.stdout)["findings"] if f["check"] == "legacy_segments"]
    assert note["severity"] == "note" and "shmmap cleanup --legacy" in note["advice"]
    assert note["data"]["segments"] >= len(old_maps.made)
    assert note["data"]["served"] >= len(old_maps.served)
