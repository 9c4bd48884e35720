"""One mapped generation: the C view on it, lookups and snapshot export."""
from __future__ import annotations

import mmap
from itertools import chain
from typing import Any, Iterator, Optional

from .._core import ffi, lib
from . import corestatus
from .codec import CODEC, Codec, decode_key

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
DELTA_BUFFER = 16384         # initial bytes of each of a delta scan's buffers
DELTA_BUFFER_MAX = 4 << 20   # ... grown while a scan has more than they take



class Generation:
    """A generation segment mapped into this process, with its C view.

    Opening validates the header (O(1)); ``validate()`` checks every byte.
    The object owns everything its view points into: the mapping (through
    ``buf``) and every reader slot it has counted into. So whoever holds a
    Generation -- a lookup's local reference, an iterator -- can call C on
    its view, and the mapping goes with the last reference (a superseded
    generation stays readable until its last iterator ends).
    """

    __slots__ = ("segment", "mm", "buf", "view", "header", "gen", "_counted_into",
                 "decode", "ext_hook", "__weakref__")

    def __init__(self, segment: str, mm: mmap.mmap, codec: Codec = CODEC) -> None:
        """Opens a view on mm, the mapping of segment, whose values decode
        with codec's types; CorruptSegmentError (and mm closed) if its
        header is not sound."""
        self.segment = segment
        self.mm = mm
        self.decode = codec.decode_value
        self.ext_hook = codec.ext_hook      # for MapReader.lookup's inline decode
        self.buf = ffi.from_buffer(mm)
        self.view = ffi.new("struct shm_view *")
        self._counted_into: list[Any] = []
        self.header: Any = None
        err = corestatus.err_buffer()
        rc = lib.shm_view_open(self.view, self.buf, len(mm), err, corestatus.ERR_LEN)
        if rc != lib.SHM_OK:
            self.close()
            raise corestatus.error(rc, err, segment)
        # The generation header (view.hdr) as a pointer that owns the
        # mapping: ``gen.header.live_count`` stays safe even if nothing
        # else holds gen by the time the field is read.
        self.header = ffi.from_buffer("struct shm_gen_header *", mm)
        self.gen: int = self.header.gen

    def close(self) -> None:
        """Unmaps now. The writer's tool (it alone knows nothing else uses
        the generation); readers let go and the last reference unmaps."""
        if self.header is not None:
            ffi.release(self.header)
        ffi.release(self.buf)
        self.mm.close()

    def count_into(self, counters: Any) -> None:
        """Counts lookups, misses and export batches made through this view
        in counters (a ClientSlot's, which owns its mapping), or, with None,
        in the view's own. Keeps every slot it ever counted into: a C call
        in another thread may still be counting into the previous one."""
        if counters is None:
            self.view.counters = ffi.addressof(self.view, "own")
            return
        if not any(c is counters for c in self._counted_into):
            self._counted_into.append(counters)
        # One aligned 8-byte store into private memory (the view): a C call
        # in another thread loads the old pointer or the new one, and both
        # stay mapped, since both are in _counted_into. The counts are
        # statistics, so it does not matter which one it loads.
        self.view.counters = counters

    def validate(self) -> None:
        """Checks every entry, record and slot; CorruptSegmentError if bad."""
        err = corestatus.err_buffer()
        corestatus.check(lib.shm_gen_validate(self.buf, len(self.mm), err, corestatus.ERR_LEN), err,
                     self.segment)

    def snapshot(self) -> int:
        """The committed seq now: read at it, a view of one instant."""
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
        return self.decode(self.raw_at(packed))

    def lookup_raw(self, key: bytes, snap: int) -> Optional[bytes]:
        """The encoded value of encoded key at snapshot snap, or None."""
        packed = lib.shm_lookup_at(self.view, key, len(key), snap)
        return self.raw_at(packed) if packed >= 0 else None

    def batches(self, snap: int) -> Iterator[tuple[tuple[Any, ...], list[Any]]]:
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
                        decode_key(ffi.buffer(keys, x.keys_len)),
                        self.decode(ffi.buffer(values, x.values_len)),
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

    def base_seq(self) -> int:
        """The seq the generation was built at (its state then is the
        previous generation's at that seq)."""
        return int(self.header.base_seq)


class Changes:
    """What changed in one generation since a snapshot, scan after scan:
    each scan reads the arena from where the last one stopped (core.h,
    shm_delta_batch), so it costs the writes since, not the map.

    Holds its Generation (the view its C calls use)."""

    __slots__ = ("gen", "since", "_x", "_bufs", "_cap")

    def __init__(self, gen: Generation, snap: int) -> None:
        """A scan of gen that has seen everything up to snap, a snapshot
        loaded from gen (at or after its base_seq)."""
        self.gen = gen
        self._x = ffi.new("struct shm_delta *")
        self._cap = 0
        self._bufs: tuple[Any, Any, Any] = (None, None, None)
        self._reserve(DELTA_BUFFER)
        lib.shm_delta_start(gen.view, self._x)
        self.since = gen.base_seq()
        self.scan(snap)         # moves past what snap holds; reports nothing new

    def _reserve(self, cap: int) -> None:
        x = self._x
        self._cap = cap
        self._bufs = (ffi.new("uint8_t[]", cap), ffi.new("uint8_t[]", cap),
                      ffi.new("uint8_t[]", cap))
        x.keys, x.values, x.dead = self._bufs
        x.keys_cap = x.values_cap = x.dead_cap = cap

    def scan(self, snap: int) -> tuple[list[tuple[Any, ...]], list[list[Any]], list[tuple[Any, ...]]]:
        """The keys stored after the last scan up to snap (a snapshot the
        caller loaded from this generation) with their values at snap, as
        decoded batches, and the keys deleted. CorruptSegmentError if the
        arena is not what the daemon writes (the scan is then unusable)."""
        x = self._x
        x.since, x.snap = self.since, snap
        stored_keys: list[tuple[Any, ...]] = []
        stored_values: list[list[Any]] = []
        dead: list[tuple[Any, ...]] = []
        while True:
            rc = lib.shm_delta_batch(self.gen.view, x)
            if rc == lib.SHM_EBUFSMALL:
                self._reserve(max(self._cap * 2, x.need))
                continue
            corestatus.check(rc, context=f"{self.gen.segment}: scanning for changes")
            keys, values, gone = self._bufs
            if x.count:
                stored_keys.append(decode_key(ffi.buffer(keys, x.keys_len)))
                stored_values.append(self.gen.decode(ffi.buffer(values, x.values_len)))
            if x.dead_count:
                dead.append(decode_key(ffi.buffer(gone, x.dead_len)))
            if rc == 1:
                self.since = snap
                return stored_keys, stored_values, dead
            if self._cap < DELTA_BUFFER_MAX:
                self._reserve(self._cap * EXPORT_GROWTH)
