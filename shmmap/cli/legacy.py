"""Segments of layout 2, an older shmmap's: ``/shmmap-NAME``,
``/shmmap-NAME-g<gen>`` and ``/shmmap-NAME-readers``.

Layout 2 joined a map's name and a segment's kind with '-', which map
names may contain, so one map's segment could carry another map's name.
This shmmap neither reads nor serves those segments; it finds them, and
removes those that no daemon serves. A layout-2 daemon holds an exclusive
flock on its header for as long as it lives (as this one does, see
maplock), so a segment is served if it is a header so locked, or shaped
like a generation or readers segment of one: a name that is both a
part of a served map and a map of its own stays too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .._core import ffi, lib
from ..shared import maplock, segments
from ..shared.protocol import socket_in_use

PREFIX = ffi.string(lib.shm_legacy_prefix).decode()
_OLD_GEN_INFIX, _OLD_READERS_SUFFIX = "-g", "-readers"    # layout 2's affixes
_HEADER = "struct shm_map_header"


@dataclass(frozen=True)
class LegacySegment:
    segment: str              # its name, "/shmmap-..."
    served: bool              # a live layout-2 daemon's, or not ours to judge
    socket: str               # a header's socket path, "" if none is known


def find() -> list[LegacySegment]:
    """Every layout-2 segment in /dev/shm, and whether it is served."""
    with maplock.shm_dir_locked():
        return _find()


def remove(names: Sequence[str] = (), dry_run: bool = False
           ) -> tuple[list[LegacySegment], list[str]]:
    """Removes the layout-2 segments no daemon serves (of maps names only,
    if given), and the sockets their headers name if nothing listens
    there. Returns the segments found and what was removed (with dry_run:
    what would be). Under /dev/shm's lock, so no daemon starts meanwhile
    (a starting one locks its header under it)."""
    removed: list[str] = []
    with maplock.shm_dir_locked():
        found = _find()
        if names:
            of_names = _segments_of(PREFIX[1:] + n for n in names)
            found = [s for s in found if of_names.fullmatch(s.segment[1:])]
        for seg in found:
            if seg.served:
                continue
            if dry_run or segments.unlink(seg.segment):
                removed.append(seg.segment)
            sock = Path(seg.socket)
            if seg.socket and _stale_socket(sock) and (dry_run or _unlink(sock)):
                removed.append(seg.socket)
    return found, removed


def _find() -> list[LegacySegment]:
    base = PREFIX[1:]
    entries = sorted(p.name for p in segments.SHM_DIR.glob(base + "*"))
    served_by = _segments_of(e for e in entries if _held(segments.SHM_DIR / e) is not False)
    out = []
    for entry in entries:
        served = bool(served_by.fullmatch(entry))
        sock = "" if served else _socket_path(segments.SHM_DIR / entry)
        out.append(LegacySegment("/" + entry, served, sock))
    return out


def _segments_of(headers: Iterable[str]) -> re.Pattern[str]:
    """Matches the names of headers and of their generation and readers
    segments, as layout 2 named them (nothing if there are no headers)."""
    return re.compile("|".join(
        re.escape(h) + rf"(?:{_OLD_GEN_INFIX}\d+|{_OLD_READERS_SUFFIX})?" for h in headers)
        or r"(?!)")


def _held(path: Path) -> Optional[bool]:
    """Whether a process holds an exclusive flock on path; None if this
    user may not open it (another user's: left alone)."""
    try:
        return maplock.is_locked(path)
    except OSError:
        return None


def _socket_path(path: Path) -> str:
    """The socket path a layout-2 map header records ("" if path is no
    such header). Layout 2's header is this one's, field for field."""
    try:
        with path.open("rb") as f:
            raw = f.read(ffi.sizeof(_HEADER))
    except OSError:
        return ""
    if len(raw) < ffi.sizeof(_HEADER):
        return ""
    buf = ffi.new("char[]", raw)
    h = ffi.cast(f"{_HEADER} *", buf)
    if h.magic != lib.SHM_MAGIC_MAP or h.layout_version != lib.SHM_LAYOUT_VERSION - 1:
        return ""
    return ffi.string(h.socket_path, lib.SHM_SOCKET_PATH_MAX).decode(errors="replace")


def _stale_socket(path: Path) -> bool:
    """Whether path is a socket nobody listens on (a header's bytes are
    not trusted to name a socket, nor one that is not in use)."""
    try:
        return path.is_socket() and not socket_in_use(path)
    except OSError:
        return False


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except OSError:
        return False
    return True
