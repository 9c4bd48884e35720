"""The read side of a map: the header segment and the current generation,
mapped read-only, followed as the daemon publishes new generations."""
from __future__ import annotations

import threading
import weakref
from typing import Any, Iterator, Optional

import msgpack

from .._core import ffi, lib
from ..shared import segments
from ..shared.codec import CODEC, Codec, encode_key
from ..shared.errors import CorruptSegmentError, MapClosedError, MapNotFoundError
from ..shared.generation import Generation
from .slot import ClientSlot

_SUPERSEDED = lib.SHM_SUPERSEDED
_LEN_BITS = lib.SHM_FOUND_LEN_BITS
_LEN_MASK = (1 << _LEN_BITS) - 1
_LEN_LONG = lib.SHM_FOUND_LEN_LONG
_lookup = lib.shm_lookup
_lookup_int = lib.shm_lookup_int
_superseded = lib.shm_superseded
_unpackb = msgpack.unpackb
# How often a reader re-reads current_gen when the generation it names has
# already been unlinked, or was superseded by the time it was mapped: each
# retry means the daemon published again meanwhile, so this bounds only
# pathological churn (or a corrupt header).
_REMAP_TRIES = 1000


def open_header(name: str) -> Any:
    """The header segment of map name, mapped read-only and checked, as a
    ``struct shm_map_header *`` that owns its mapping (ffi.from_buffer with
    a type): the mapping lives as long as the pointer is referenced."""
    seg = segments.header_name(name)
    try:
        mm = segments.open_readonly(seg)
    except FileNotFoundError:
        raise MapNotFoundError(f"no map named {name!r} on this host") from None
    if len(mm) < ffi.sizeof("struct shm_map_header"):
        mm.close()
        raise CorruptSegmentError(f"{seg}: too short for a shmmap map header")
    header = ffi.from_buffer("struct shm_map_header *", mm)
    if header.magic != lib.SHM_MAGIC_MAP or header.layout_version != lib.SHM_LAYOUT_VERSION:
        raise CorruptSegmentError(
            f"{seg}: not a shmmap map header of layout version {lib.SHM_LAYOUT_VERSION}")
    return header


class MapReader:
    """Lock-free, syscall-free reads of map ``name``.

    Lookups and iteration never write the map and never wait; the only
    system calls are those that map a newer generation after promotion.

    Lifetimes hold by construction: the header pointer owns its mapping, a
    Generation owns its mapping and the reader slots its view counts into,
    an iterator owns its Generation. Nothing here unmaps explicitly: close()
    lets go, and the last reference unmaps. So a thread or an iteration that
    still uses a mapping keeps it, and nothing of it is ever used unmapped.
    """

    def __init__(self, name: str, codec: Codec = CODEC) -> None:
        """Maps map name's header and current generation (no daemon
        needed); its values decode with codec's types."""
        self.name = segments.check_map_name(name)
        self.codec = codec
        # Maps and slot changes; never taken by a lookup or an iteration.
        self._lock = threading.Lock()
        self._slot: Optional[ClientSlot] = None
        # Generations mapped by this reader and not yet collected; a dying
        # one removes its own entry (a single dict operation: GIL-atomic).
        self._live: dict[int, weakref.ref[Generation]] = {}
        self.header: Any = open_header(name)
        self.generation: Optional[Generation] = self._map_current(self.header)

    # -- the closed state ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self.generation is None

    def _current(self) -> Generation:
        """The generation mapped now; MapClosedError after close()."""
        gen = self.generation
        if gen is None:
            raise MapClosedError(f"map {self.name!r} is closed")
        return gen

    def close(self) -> None:
        """Lets go of the map: every later call raises MapClosedError. Nothing
        is unmapped under a running lookup or iteration: each mapping goes
        with its last user (an iteration started before close() finishes)."""
        with self._lock:
            self.generation = None
            self.header = None
            self._slot = None

    # -- generations ----------------------------------------------------------------

    def _map_current(self, header: Any) -> Generation:
        """Maps the generation that header names current. Caller holds no
        lock (in __init__) or self._lock."""
        for _ in range(_REMAP_TRIES):
            gen = lib.shm_map_current_gen(header)
            seg = segments.gen_name(self.name, gen)
            try:
                mm = segments.open_readonly(seg)
            except FileNotFoundError:
                continue                # superseded meanwhile: read again
            return self._adopt(Generation(seg, mm, self.codec))
        raise MapNotFoundError(f"map {self.name!r} has no current generation")

    def _adopt(self, g: Generation) -> Generation:
        """Counts g's reads in this reader's slot and tracks it as mapped."""
        slot = self._slot
        g.count_into(slot.counters if slot is not None else None)
        ref = weakref.ref(g, _forget_generation(weakref.ref(self)))
        self._live[id(ref)] = ref
        self._report_mapped()
        return g

    def _live_generations(self) -> list[Generation]:
        # list() of a dict's values runs in C without allocating tracked
        # objects: no other thread and no weakref callback runs meanwhile.
        refs = list(self._live.values())
        return [g for g in (r() for r in refs) if g is not None]

    def _report_mapped(self) -> None:
        slot = self._slot
        if slot is not None:
            slot.report_mapped([g.gen for g in self._live_generations()])

    def refresh(self) -> Generation:
        """The current generation, mapping a newer one if it was superseded.

        The Generation returned owns its mapping: hold it, not its view."""
        gen = self._current()
        if not _superseded(gen.view):
            return gen
        with self._lock:
            header, now = self.header, self.generation
            if now is None or header is None:
                raise MapClosedError(f"map {self.name!r} is closed")
            if now is not gen and not _superseded(now.view):
                return now              # another thread mapped it meanwhile
            new = self._map_current(header)
            if new.gen <= gen.gen:
                raise CorruptSegmentError(
                    f"map {self.name!r}: generation {new.gen} is current but marked superseded")
            self.generation = new
            return new

    def use_slot(self, slot: Optional[ClientSlot]) -> None:
        """Counts this reader's lookups, misses and iterations in slot (the
        one the daemon assigned to this client), or, with None, privately."""
        with self._lock:
            self._slot = slot
            counters = slot.counters if slot is not None else None
            for g in self._live_generations():
                g.count_into(counters)
            self._report_mapped()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (a thread of the parent may have
        held it) and no counting into the parent's reader slot."""
        self._lock = threading.Lock()
        self.use_slot(None)

    # -- reads ------------------------------------------------------------------------

    def lookup(self, key: Any, default: Any = None) -> Any:
        """The value of key now, or default. The hot path: one cffi call
        (it costs more than the C lookup it makes), one slice, one decode."""
        # The local reference keeps the mapping alive through the C call,
        # whatever other threads do meanwhile (promote, close).
        gen = self.generation
        if gen is None:
            raise MapClosedError(f"map {self.name!r} is closed")
        if type(key) is int:
            try:
                packed = _lookup_int(gen.view, key)
            except OverflowError:
                packed = _locate(gen, key)
        else:
            kb = encode_key(key)
            packed = _lookup(gen.view, kb, len(kb))
        if packed >= 0:
            n = packed & _LEN_MASK
            if n != _LEN_LONG:
                off = packed >> _LEN_BITS
                # gen.decode(...) inline (Codec.decode_value): a call less
                # on the hottest read.
                return _unpackb(gen.mm[off:off + n], strict_map_key=False,
                                ext_hook=gen.ext_hook)
            return gen.value_at(packed)
        if packed == _SUPERSEDED:
            return self._lookup_after_promotion(key, default)
        return default

    def _lookup_after_promotion(self, key: Any, default: Any) -> Any:
        """lookup() when its generation was superseded: looks in the current
        one, a bounded number of times (each retry means yet another
        promotion meanwhile, or a corrupt map)."""
        for _ in range(_REMAP_TRIES):
            gen = self.refresh()
            packed = _locate(gen, key)
            if packed >= 0:
                return gen.value_at(packed)
            if packed != _SUPERSEDED:
                return default
        raise CorruptSegmentError(
            f"map {self.name!r}: superseded {_REMAP_TRIES} times during one lookup")

    def pin(self) -> tuple[Generation, int]:
        """The current generation and its committed seq: a consistent view
        that stays readable for as long as the Generation is referenced."""
        gen = self.refresh()
        return gen, gen.snapshot()

    def items(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs of one snapshot, taken now; the iterator holds
        its generation, so it runs to its end whatever happens meanwhile."""
        gen, snap = self.pin()
        return gen.items(snap)

    def __len__(self) -> int:
        # live_count is exact at committed_seq; the daemon updates it with
        # the writes of a commit, so it is a best-effort figure in between.
        gen = self.refresh()
        return int(gen.header.live_count)

    @property
    def socket_path(self) -> str:
        """The daemon's socket, as the map header names it."""
        header = self.header
        if header is None:
            raise MapClosedError(f"map {self.name!r} is closed")
        return ffi.string(header.socket_path).decode()


def _locate(gen: Generation, key: Any) -> int:
    """shm_lookup's packed result for key in gen (latest committed)."""
    kb = encode_key(key)
    return _lookup(gen.view, kb, len(kb))


def _forget_generation(reader_ref: weakref.ref[MapReader]) -> Any:
    """The weakref callback of a generation: drops it from its reader's live
    generations and reports the rest to the reader slot."""
    def forget(ref: weakref.ref[Generation]) -> None:
        reader = reader_ref()
        if reader is not None:
            reader._live.pop(id(ref), None)
            reader._report_mapped()
    return forget

