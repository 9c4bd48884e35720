"""A client's side of the reader slots (see shared/slotlayout.py)."""
from __future__ import annotations

from typing import Any

from .._core import ffi
from ..shared import segments
from ..shared.errors import CorruptSegmentError
from ..shared.slotlayout import HEADER_SIZE, SLOT, SLOT_SIZE, segment_size


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
        at = HEADER_SIZE + index * SLOT_SIZE
        self.counters: Any = ffi.from_buffer(f"{SLOT} *", memoryview(mm)[at:at + SLOT_SIZE],
                                             require_writable=True)

    def report_mapped(self, gens: list[int]) -> None:
        """Tells the daemon which generations this process holds mapped
        (iterations keep superseded ones alive until they end)."""
        if gens:
            c = self.counters
            c.gen = max(gens)
            c.oldest_gen = min(gens)
            c.mapped_gens = len(gens)
