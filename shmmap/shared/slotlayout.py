"""The reader-slots segment (/shmmap-NAME-readers): one cache line per
connected client where it counts its lookups, misses and export batches,
and says which generations it still holds mapped. The daemon assigns slots
(server/slots.py) and reads them as untrusted statistics; each client
writes its own (client/slot.py). Nothing in them steers the map's
consistency."""
from __future__ import annotations

from typing import Any

from .._core import ffi

SLOT = "struct shm_reader_slot"
HEADER_SIZE = ffi.sizeof("struct shm_readers_header")
SLOT_SIZE = ffi.sizeof(SLOT)
COUNTERS = ("lookups", "misses", "iterations")


def segment_size(count: int) -> int:
    return HEADER_SIZE + count * SLOT_SIZE


def slot_at(buf: Any, index: int) -> Any:
    return ffi.cast(f"{SLOT} *", buf + HEADER_SIZE + index * SLOT_SIZE)
