"""Which daemon serves a map, decided by a lock and not by a pid.

A daemon holds an exclusive flock on its map's header segment for as long
as it lives; the kernel drops it when the daemon exits, however it exits,
so "the lock is held" means "served" and cannot name another process the
way a reused pid can. Finding, creating and locking a header happens under
a short flock on /dev/shm itself, so two daemons starting at once for one
name cannot both create it."""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator, Optional

from .._core import ffi, lib
from . import segments
from .errors import DaemonRunningError

DIR_LOCK_SECONDS = 10.0      # longest wait for /dev/shm's lock (see shm_dir_locked)


def _header_path(name: str) -> Path:
    return segments.SHM_DIR / segments.header_name(name)[1:]


def _open(path: Path) -> Optional[int]:
    """A read-only descriptor of path, or None if it does not exist."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def shm_dir_locked() -> Iterator[None]:
    """Holds an exclusive flock on /dev/shm itself while a daemon finds,
    creates and locks a map's header, so that two daemons starting at once
    for one name cannot both see "no map" and both create it, or one lock
    a header the other has created but not yet locked. Held for
    milliseconds (no adoption inside it)."""
    fd = os.open(segments.SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + DIR_LOCK_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DaemonRunningError(
                        f"{segments.SHM_DIR} stayed locked for {DIR_LOCK_SECONDS:g} s: another "
                        "process holds its flock (a shmmap daemon holds it for milliseconds)"
                    ) from None
                time.sleep(0.001)
        yield
    finally:
        os.close(fd)                      # releases the lock


def claim(name: str) -> Optional[int]:
    """Locks map name's header segment for this daemon (an flock, which the
    kernel drops when the daemon exits, however it exits). Returns the
    locked descriptor, or None if the map has no header. Raises
    DaemonRunningError if another daemon holds it: the lock, not a pid
    (pids are reused), says whether a map is served."""
    path = _header_path(name)
    fd = _open(path)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = daemon_pid(name)
        raise DaemonRunningError(f"map {name!r} is already served by daemon pid {pid}" if pid
                                 else f"map {name!r} is being started by another daemon") from None
    try:
        current = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        current = False
    if not current:             # removed by a clean stop since we opened it
        os.close(fd)
        return None
    return fd


def is_served(name: str) -> bool:
    """Whether a daemon holds map name's lock (see claim): the kernel drops
    the lock when the daemon exits, however it exits, so unlike a pid this
    cannot name another process. False if the map has no header.
    PermissionError if this user may not open the header."""
    return is_locked(_header_path(name))


def is_locked(path: Path) -> bool:
    """Whether a process holds an exclusive flock on path (False if it does
    not exist; PermissionError if this user may not open it)."""
    fd = _open(path)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)                      # releases a lock taken here
    return False


@contextlib.contextmanager
def unserved(name: str) -> Iterator[bool]:
    """Holds map name as a starting daemon would, so that no daemon can
    start on it meanwhile: for removing a dead daemon's map. Yields whether
    the map has a header; DaemonRunningError if a daemon serves it."""
    with shm_dir_locked():
        fd = claim(name)
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)


def daemon_pid(name: str) -> int:
    """The pid a live daemon of name wrote in its header, or 0."""
    try:
        mm = segments.open_readonly(segments.header_name(name))
    except FileNotFoundError:
        return 0
    try:
        if len(mm) < ffi.sizeof("struct shm_map_header"):
            return 0
        buf = ffi.from_buffer(mm)
        h = ffi.cast("struct shm_map_header *", buf)
        pid = int(lib.shm_map_daemon_pid(h)) if h.magic == lib.SHM_MAGIC_MAP else 0
        ffi.release(buf)
    finally:
        mm.close()
    return pid if pid and process_alive(pid) else 0


def process_alive(pid: int) -> bool:
    """Whether a process pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
