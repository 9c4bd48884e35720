"""Reader slots (/shmmap-NAME-readers): one cache line per connected client
where it counts its lookups, misses and export batches, and says which
generations it still holds mapped. The daemon assigns slots and reads them
as untrusted statistics; nothing in them steers the map's consistency."""
from __future__ import annotations

import mmap
from typing import Any, Optional

from . import segments
from ._core import ffi, lib
from .errors import CorruptSegmentError

SLOT = "struct shm_reader_slot"
_HEADER_SIZE = ffi.sizeof("struct shm_readers_header")
_SLOT_SIZE = ffi.sizeof(SLOT)
COUNTERS = ("lookups", "misses", "iterations")


def segment_size(count: int) -> int:
    return _HEADER_SIZE + count * _SLOT_SIZE


def slot_at(buf: Any, index: int) -> Any:
    return ffi.cast(f"{SLOT} *", buf + _HEADER_SIZE + index * _SLOT_SIZE)


class ReaderSlots:
    """The daemon's side: creates the segment, hands out and reclaims slots
    and sums what clients counted (including clients that have left)."""

    def __init__(self, name: str, mode: int, group: Optional[int] = None,
                 count: int = lib.SHM_MAX_READERS) -> None:
        self.segment = segments.readers_name(name)
        self.count = count
        segments.unlink(self.segment)   # a previous daemon's: slots restart
        self.mm: mmap.mmap = segments.create(self.segment, segment_size(count), mode, group)
        self.buf = ffi.from_buffer(self.mm)
        h = ffi.cast("struct shm_readers_header *", self.buf)
        h.magic = lib.SHM_MAGIC_READERS
        h.layout_version = lib.SHM_LAYOUT_VERSION
        h.slot_count = count
        self.free = list(range(count - 1, -1, -1))
        self.retired = dict.fromkeys(COUNTERS, 0)

    def assign(self, pid: int) -> int:
        """A free slot for client pid, or -1 when all are taken."""
        if not self.free:
            return -1
        index = self.free.pop()
        slot = slot_at(self.buf, index)
        ffi.memmove(slot, b"\0" * _SLOT_SIZE, _SLOT_SIZE)
        slot.pid = pid
        return index

    def release(self, index: int) -> None:
        slot = slot_at(self.buf, index)
        for name in COUNTERS:
            self.retired[name] += int(getattr(slot, name))
        ffi.memmove(slot, b"\0" * _SLOT_SIZE, _SLOT_SIZE)
        self.free.append(index)

    def totals(self, in_use: list[int]) -> dict[str, int]:
        """Counters summed over the slots in use and those retired."""
        out = dict(self.retired)
        for index in in_use:
            slot = slot_at(self.buf, index)
            for name in COUNTERS:
                out[name] += int(getattr(slot, name))
        return out

    def older_generations(self, in_use: list[int], current_gen: int) -> int:
        """How many generations older than current_gen the clients of the
        slots in use still hold mapped.

        A client reports what it maps only when it reads, so one that has
        not read since a promotion (idle, or stopped) still names the
        superseded generation as its newest: then all it maps is older."""
        older = 0
        for index in in_use:
            slot = slot_at(self.buf, index)
            mapped = int(slot.mapped_gens)
            older += max(mapped - 1 if int(slot.gen) >= current_gen else mapped, 0)
        return older

    def close(self) -> None:
        ffi.release(self.buf)
        self.mm.close()
        segments.unlink(self.segment)


class ClientSlot:
    """A client's side: its one slot, mapped read-write.

    ``counters`` is a typed pointer made by ffi.from_buffer, so it holds the
    mapping itself: whoever points a C view at it keeps a reference to it
    (see Generation.count_into), and the mapping goes with the last
    reference, never while a view still counts into it. There is no close().
    """

    __slots__ = ("index", "counters")

    def __init__(self, name: str, index: int) -> None:
        """Maps slot index of map name's readers segment read-write."""
        mm = segments.open_readwrite(segments.readers_name(name))
        if index < 0 or segment_size(index + 1) > len(mm):
            mm.close()
            raise CorruptSegmentError(f"reader slot {index} is outside the readers segment")
        self.index = index
        at = _HEADER_SIZE + index * _SLOT_SIZE
        self.counters: Any = ffi.from_buffer(f"{SLOT} *", memoryview(mm)[at:at + _SLOT_SIZE],
                                             require_writable=True)

    def report_mapped(self, gens: list[int]) -> None:
        """Tells the daemon which generations this process holds mapped
        (iterations keep superseded ones alive until they end)."""
        if gens:
            c = self.counters
            c.gen = max(gens)
            c.oldest_gen = min(gens)
            c.mapped_gens = len(gens)
