"""The read side of a map: the header segment and the current generation,
mapped read-only, followed as the daemon publishes new generations."""
from __future__ import annotations

import weakref
from typing import Any, Iterator, Optional

import msgpack

from . import segments
from ._core import ffi, lib
from .codec import encode_key
from .errors import CorruptSegmentError, MapNotFoundError
from .generation import Generation

_SUPERSEDED = lib.SHM_SUPERSEDED
_LEN_BITS = lib.SHM_FOUND_LEN_BITS
_LEN_MASK = (1 << _LEN_BITS) - 1
_LEN_LONG = lib.SHM_FOUND_LEN_LONG
_lookup = lib.shm_lookup
_lookup_int = lib.shm_lookup_int
_unpackb = msgpack.unpackb
# How often a reader re-reads current_gen when the generation it names has
# already been unlinked (a newer one is being published): each miss means
# the daemon published again meanwhile, so this bounds only pathological
# churn.
_REMAP_TRIES = 1000
_MISSING = object()


class MapReader:
    """Lock-free, syscall-free reads of map ``name``.

    Lookups and iteration never write the map and never wait; the only
    system calls are those that map a newer generation after promotion.
    """

    def __init__(self, name: str) -> None:
        self.name = segments.check_map_name(name)
        try:
            self._header_mm = segments.open_readonly(segments.header_name(name))
        except FileNotFoundError:
            raise MapNotFoundError(f"no map named {name!r} on this host") from None
        self._header_buf = ffi.from_buffer(self._header_mm)
        self.header: Any = ffi.cast("struct shm_map_header *", self._header_buf)
        if (len(self._header_mm) < ffi.sizeof("struct shm_map_header")
                or self.header.magic != lib.SHM_MAGIC_MAP
                or self.header.layout_version != lib.SHM_LAYOUT_VERSION):
            raise CorruptSegmentError(
                f"{segments.header_name(name)}: not a shmmap map header of layout "
                f"version {lib.SHM_LAYOUT_VERSION}")
        self.counters: Any = None      # a reader slot, once the client has one
        self._mapped: set[int] = set()  # generations this process holds mapped
        self.generation: Generation = self._map_current()

    def _map_current(self) -> Generation:
        for _ in range(_REMAP_TRIES):
            gen = lib.shm_map_current_gen(self.header)
            try:
                mm = segments.open_readonly(segments.gen_name(self.name, gen))
            except FileNotFoundError:
                continue                # superseded meanwhile: read again
            g = Generation(segments.gen_name(self.name, gen), mm)
            self._mapped.add(g.gen)
            weakref.finalize(g, _unmapped, weakref.ref(self), g.gen)
            if self.counters is not None:
                g.view.counters = self.counters
            self._report_mapped()
            return g
        raise MapNotFoundError(f"map {self.name!r} has no current generation")

    def refresh(self) -> Generation:
        """The current generation, mapping a newer one if it was superseded.

        Every C call and header read goes through a local reference to its
        Generation, as here: another thread may replace self.generation at
        any moment, and the last reference to a Generation unmaps it."""
        gen = self.generation
        if lib.shm_superseded(gen.view):
            gen = self.generation = self._map_current()
        return gen

    def set_counters(self, slot: Any) -> None:
        """Counts this reader's lookups and misses in slot (a reader slot),
        or, with None, in the view's own private counters."""
        self.counters = slot
        view = self.generation.view
        view.counters = slot if slot is not None else ffi.addressof(view, "own")
        self._report_mapped()

    def _report_mapped(self) -> None:
        """Tells the reader slot which generations this process still maps
        (iterations keep superseded ones alive until they end)."""
        c = self.counters
        if c is not None and self._mapped:
            c.gen = max(self._mapped)
            c.oldest_gen = min(self._mapped)
            c.mapped_gens = len(self._mapped)

    def lookup(self, key: Any, default: Any = None) -> Any:
        """The value of key now, or default. The hot path: one cffi call
        (it costs more than the C lookup it makes), one slice, one decode."""
        # The local reference keeps the mapping alive through the C call
        # even if another thread maps a newer generation meanwhile.
        gen = self.generation
        if type(key) is int:
            try:
                packed = _lookup_int(gen.view, key)
            except OverflowError:
                kb = encode_key(key)
                packed = _lookup(gen.view, kb, len(kb))
        else:
            kb = encode_key(key)
            packed = _lookup(gen.view, kb, len(kb))
        if packed >= 0:
            n = packed & _LEN_MASK
            if n != _LEN_LONG:
                off = packed >> _LEN_BITS
                return _unpackb(gen.mm[off:off + n], strict_map_key=False)
            return gen.value_at(packed)
        if packed == _SUPERSEDED:
            self.refresh()
            return self.lookup(key, default)
        return default

    def contains(self, key: Any) -> bool:
        return self.lookup(key, _MISSING) is not _MISSING

    def pin(self) -> tuple[Generation, int]:
        """The current generation and its committed seq: a consistent view
        that stays readable for as long as the Generation is referenced."""
        gen = self.refresh()
        return gen, gen.snapshot()

    def items(self) -> Iterator[tuple[Any, Any]]:
        gen, snap = self.pin()
        return gen.items(snap)

    def __len__(self) -> int:
        # live_count is exact at committed_seq; the daemon updates it with
        # the writes of a commit, so it is a best-effort figure in between.
        gen = self.refresh()
        return int(gen.header.live_count)

    def close(self) -> None:
        self.generation = None  # type: ignore[assignment]
        ffi.release(self._header_buf)
        self._header_mm.close()


def _unmapped(reader_ref: "weakref.ref[MapReader]", gen: int) -> None:
    reader = reader_ref()
    if reader is not None:
        reader._mapped.discard(gen)
        reader._report_mapped()


def lookup_in(gen: Generation, key: Any, snap: int, default: Optional[Any] = None) -> Any:
    """The value of key in gen at snapshot snap (for snapshot reads)."""
    kb = encode_key(key)
    packed = lib.shm_lookup_at(gen.view, kb, len(kb), snap)
    return gen.value_at(packed) if packed >= 0 else default
