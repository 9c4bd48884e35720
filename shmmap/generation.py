"""One mapped generation: the C view on it, lookups and snapshot export."""
from __future__ import annotations

import mmap
from itertools import chain
from typing import Any, Iterator, Optional

import msgpack

from . import status
from ._core import ffi, lib

_LEN_BITS = lib.SHM_FOUND_LEN_BITS
_LEN_MASK = (1 << _LEN_BITS) - 1
# The length field of a record sits 8 bytes before its value (shm_record:
# seq, prev, len, flags).
_REC_LEN_BACK = lib.SHM_REC_HEADER - ffi.offsetof("struct shm_record", "len")
# Pairs per export call: the first batch is small, so that taking a few
# items costs little whatever the map's size; later ones grow to amortize
# the calls.
EXPORT_FIRST_BATCH = 64
EXPORT_BATCH = 4096
EXPORT_GROWTH = 4
EXPORT_BUFFER = 4096         # initial bytes of each export buffer; grows

_unpackb = msgpack.unpackb


class Generation:
    """A generation segment mapped into this process, with its C view.

    Opening validates the header (O(1)); ``validate()`` checks every byte.
    The mapping lives as long as this object: an iteration holds it, so a
    superseded generation stays readable until its last iterator ends.
    """

    __slots__ = ("segment", "mm", "buf", "view", "mv", "gen", "__weakref__")

    def __init__(self, segment: str, mm: mmap.mmap) -> None:
        self.segment = segment
        self.mm = mm
        self.buf = ffi.from_buffer(mm)
        self.view = ffi.new("struct shm_view *")
        err = status.err_buffer()
        rc = lib.shm_view_open(self.view, self.buf, len(mm), err, status.ERR_LEN)
        if rc != lib.SHM_OK:
            self.close()
            raise status.error(rc, err, segment)
        self.mv = memoryview(mm)
        self.gen: int = self.view.hdr.gen

    def close(self) -> None:
        """Unmaps now (the GC would later). Only when nothing uses it."""
        if getattr(self, "mv", None) is not None:
            self.mv.release()
        ffi.release(self.buf)
        self.mm.close()

    def validate(self) -> None:
        """Checks every entry, record and slot; CorruptSegmentError if bad."""
        err = status.err_buffer()
        status.check(lib.shm_gen_validate(self.buf, len(self.mm), err, status.ERR_LEN), err,
                     self.segment)

    @property
    def header(self) -> Any:
        return self.view.hdr

    def snapshot(self) -> int:
        return lib.shm_snapshot(self.view)

    def raw_at(self, packed: int) -> bytes:
        """The msgpack bytes of the value a lookup found (its packed
        location: offset, and length unless it did not fit)."""
        off = packed >> _LEN_BITS
        n = packed & _LEN_MASK
        if n == lib.SHM_FOUND_LEN_LONG:
            n = int.from_bytes(self.mm[off - _REC_LEN_BACK:off - _REC_LEN_BACK + 4], "little")
        return self.mm[off:off + n]

    def value_at(self, packed: int) -> Any:
        """Decodes the value a lookup found."""
        return _unpackb(self.raw_at(packed), raw=False, strict_map_key=False)

    def lookup_raw(self, key: bytes, snap: int) -> Optional[bytes]:
        """The encoded value of encoded key at snapshot snap, or None."""
        packed = lib.shm_lookup_at(self.view, key, len(key), snap)
        return self.raw_at(packed) if packed >= 0 else None

    def batches(self, snap: int) -> Iterator[tuple[tuple, list]]:
        """Yields (keys, values) of the entries visible at snap, a batch at
        a time, each batch decoded by two msgpack calls."""
        x = ffi.new("struct shm_export *")
        x.snap = snap
        x.max_items = EXPORT_FIRST_BATCH
        cap = EXPORT_BUFFER
        while True:
            keys = ffi.new("uint8_t[]", cap)
            values = ffi.new("uint8_t[]", cap)
            x.keys, x.keys_cap, x.values, x.values_cap = keys, cap, values, cap
            while True:
                rc = lib.shm_export_batch(self.view, x)
                if rc == lib.SHM_EBUFSMALL:
                    cap = max(cap * 2, x.need)
                    break
                if x.count:
                    yield (
                        _unpackb(ffi.buffer(keys, x.keys_len), use_list=False, raw=False),
                        _unpackb(ffi.buffer(values, x.values_len), raw=False,
                                 strict_map_key=False),
                    )
                if rc == 1:
                    return
                if x.max_items < EXPORT_BATCH:
                    x.max_items = min(x.max_items * EXPORT_GROWTH, EXPORT_BATCH)
                    if x.keys_len * 2 > cap or x.values_len * 2 > cap:
                        cap *= EXPORT_GROWTH    # room for the bigger batches
                        break

    def items(self, snap: int) -> Iterator[tuple[Any, Any]]:
        """Every (key, value) visible at snap, in the entries' order."""
        return chain.from_iterable(zip(k, v) for k, v in self.batches(snap))
