"""The daemon's side of the reader slots (see shared/slotlayout.py)."""
from __future__ import annotations

import mmap
import time
from typing import Optional

from .._core import ffi, lib
from ..shared import segments
from ..shared.slotlayout import COUNTERS, SLOT_SIZE, segment_size, slot_at

# A reader that reads lets go of a superseded generation at its next read,
# within microseconds while it is busy; one that has kept it this long since
# the promotion is idle, stopped, or only writes.
UNNOTICED_SECONDS = 0.5


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
        ffi.memmove(slot, b"\0" * SLOT_SIZE, SLOT_SIZE)
        slot.pid = pid
        return index

    def release(self, index: int) -> None:
        slot = slot_at(self.buf, index)
        for name in COUNTERS:
            self.retired[name] += int(getattr(slot, name))
        ffi.memmove(slot, b"\0" * SLOT_SIZE, SLOT_SIZE)
        self.free.append(index)

    def totals(self, in_use: list[int]) -> dict[str, int]:
        """Counters summed over the slots in use and those retired."""
        out = dict(self.retired)
        for index in in_use:
            slot = slot_at(self.buf, index)
            for name in COUNTERS:
                out[name] += int(getattr(slot, name))
        return out

    def older_generations(self, in_use: list[int], current_gen: int,
                          superseded_at: dict[int, float]) -> int:
        """How many generations older than current_gen the clients of the
        slots in use still hold mapped.

        A client reports what it maps only when it reads, so one that has
        not read since a promotion (idle, or stopped) still names the
        superseded generation as its newest: then all it maps is older.
        A client that reads lets go at its next read, so that generation
        counts only once it was superseded UNNOTICED_SECONDS ago
        (superseded_at: when each recent one was; an older one counts)."""
        older = 0
        now = time.monotonic()
        for index in in_use:
            slot = slot_at(self.buf, index)
            mapped, newest = int(slot.mapped_gens), int(slot.gen)
            since = superseded_at.get(newest)
            if newest >= current_gen or (since is not None and now - since < UNNOTICED_SECONDS):
                mapped -= 1
            older += max(mapped, 0)
        return older

    def close(self) -> None:
        ffi.release(self.buf)
        self.mm.close()
        segments.unlink(self.segment)
