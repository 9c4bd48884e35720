"""POSIX shared-memory segments: their names, creation, mapping, removal.

A map NAME has a header segment ``/shmmap-NAME``, one segment per
generation ``/shmmap-NAME-g<gen>`` and a reader-slot segment
``/shmmap-NAME-readers`` (the affixes come from ``cext/shmmap.h``).
Readers map segments ``PROT_READ``; only the daemon maps them writable.
"""
from __future__ import annotations

import errno
import mmap
import os
import re
from pathlib import Path
from typing import Optional

import posix_ipc

from .._core import ffi, lib
from .errors import AccessDeniedError, InvalidNameError, MapFullError

PREFIX = ffi.string(lib.shm_name_prefix).decode()
GEN_INFIX = ffi.string(lib.shm_gen_infix).decode()
READERS_SUFFIX = ffi.string(lib.shm_readers_suffix).decode()
SHM_DIR = Path("/dev/shm")
_VALID_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")


def check_map_name(name: str) -> str:
    """name, if it is a valid map name; InvalidNameError otherwise."""
    if not isinstance(name, str) or not _VALID_NAME.fullmatch(name) or len(name) > lib.SHM_NAME_MAX:
        raise InvalidNameError(
            f"map name {name!r} must be 1-{lib.SHM_NAME_MAX} characters of "
            "letters, digits, '.', '_' and '-', not starting with '-'"
        )
    return name


def header_name(name: str) -> str:
    """The header segment's name of map name (checked)."""
    return PREFIX + check_map_name(name)


def gen_name(name: str, gen: int) -> str:
    """The segment name of map name's generation gen."""
    return f"{PREFIX}{name}{GEN_INFIX}{gen}"


def readers_name(name: str) -> str:
    """The reader-slot segment's name of map name."""
    return f"{PREFIX}{name}{READERS_SUFFIX}"


def create(seg: str, size: int, mode: int, group: Optional[int] = None) -> mmap.mmap:
    """Creates seg exclusively with exactly mode (and group, if given),
    reserves all its pages (so touching them later cannot SIGBUS on a full
    /dev/shm) and maps it read-write."""
    try:
        shm = posix_ipc.SharedMemory(seg, posix_ipc.O_CREX, mode=mode, size=size)
    except posix_ipc.ExistentialError:
        raise FileExistsError(errno.EEXIST, "shared-memory segment exists", seg) from None
    try:
        if group is not None:
            os.fchown(shm.fd, -1, group)
        os.fchmod(shm.fd, mode)
        try:
            os.posix_fallocate(shm.fd, 0, size)
        except OSError as exc:
            shm.unlink()
            if exc.errno == errno.ENOSPC:
                raise MapFullError(
                    f"/dev/shm is full: cannot reserve {size} bytes for {seg}"
                ) from None
            raise
        return mmap.mmap(shm.fd, size)
    finally:
        shm.close_fd()


def open_readonly(seg: str) -> mmap.mmap:
    """Maps an existing segment PROT_READ; FileNotFoundError if absent."""
    try:
        shm = posix_ipc.SharedMemory(seg, 0, read_only=True)
    except posix_ipc.ExistentialError:
        raise FileNotFoundError(errno.ENOENT, "no shared-memory segment", seg) from None
    except posix_ipc.PermissionsError:
        raise AccessDeniedError(f"no permission to read {seg} (see the daemon's --mode and "
                                "--group)") from None
    try:
        return mmap.mmap(shm.fd, 0, prot=mmap.PROT_READ)
    finally:
        shm.close_fd()


def open_readwrite(seg: str) -> mmap.mmap:
    """Maps an existing segment read-write (the daemon adopting a map);
    FileNotFoundError if absent, AccessDeniedError if not permitted."""
    try:
        shm = posix_ipc.SharedMemory(seg, 0)
    except posix_ipc.ExistentialError:
        raise FileNotFoundError(errno.ENOENT, "no shared-memory segment", seg) from None
    except posix_ipc.PermissionsError:
        raise AccessDeniedError(f"no permission to open {seg} read-write (see the daemon's "
                                "--mode and --group)") from None
    try:
        return mmap.mmap(shm.fd, 0)
    finally:
        shm.close_fd()


def unlink(seg: str) -> bool:
    """Removes seg's name; False if it was already gone."""
    try:
        posix_ipc.unlink_shared_memory(seg)
    except posix_ipc.ExistentialError:
        return False
    return True


def map_segments(name: str) -> list[str]:
    """The names of every segment of map name present now."""
    base = header_name(name)[1:]
    found = []
    for entry in SHM_DIR.glob(f"{base}*"):
        rest = entry.name[len(base):]
        if rest == "" or rest == READERS_SUFFIX or (
            rest.startswith(GEN_INFIX) and rest[len(GEN_INFIX):].isdigit()
        ):
            found.append("/" + entry.name)
    return sorted(found)


def map_names() -> list[str]:
    """Names of the maps whose header segment exists on this host, this
    user's and other users', readable or not.

    A header this user can read is told apart from generation and reader
    segments by its magic number. One it may not read is told by its name:
    it is a header if the map's reader segment exists beside it, or if its
    name is not that of a generation or reader segment. (Listing /dev/shm
    needs no permission on the segments.)"""
    base = PREFIX[1:]
    present = {entry.name for entry in SHM_DIR.glob(base + "*")}
    names = []
    for entry in sorted(present):
        magic = _magic(SHM_DIR / entry)
        if magic == lib.SHM_MAGIC_MAP or (
                magic is None and (entry + READERS_SUFFIX in present
                                   or not _looks_like_part(entry[len(base):]))):
            names.append(entry[len(base):])
    return [n for n in names if _VALID_NAME.fullmatch(n)]


def _magic(path: Path) -> Optional[int]:
    """The first word of a segment (0 if it went away meanwhile); None if
    this user may not read it."""
    try:
        with path.open("rb") as f:
            return int.from_bytes(f.read(8), "little")
    except FileNotFoundError:
        return 0
    except OSError:
        return None


def _looks_like_part(name: str) -> bool:
    """Whether name is shaped like a generation or reader segment's name."""
    head, infix, gen = name.rpartition(GEN_INFIX)
    return name.endswith(READERS_SUFFIX) or bool(infix and head and gen.isdigit())
