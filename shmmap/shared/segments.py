"""POSIX shared-memory segments: their names, creation, mapping, removal.

A map NAME has a header segment ``/shmmap:NAME``, one segment per
generation ``/shmmap:NAME:g<gen>`` and a reader-slot segment
``/shmmap:NAME:readers`` (the affixes come from ``cext/shmmap.h``). A map
name has no ':', so a segment's name says which map it belongs to and what
it is: no map's segment can be another map's.
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


def is_map_name(name: object) -> bool:
    """Whether name is a valid map name: it has no ':' (see the module)."""
    return isinstance(name, str) and bool(_VALID_NAME.fullmatch(name)) \
        and len(name) <= lib.SHM_NAME_MAX


def check_map_name(name: str) -> str:
    """name, if it is a valid map name; InvalidNameError otherwise."""
    if not is_map_name(name):
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
    user's and other users', readable or not: the segments whose name is
    the prefix and a valid map name (listing /dev/shm needs no permission
    on the segments; a generation's or the readers' name has a ':' more)."""
    base = PREFIX[1:]
    names = (entry.name[len(base):] for entry in SHM_DIR.glob(base + "*"))
    return sorted(n for n in names if is_map_name(n))
