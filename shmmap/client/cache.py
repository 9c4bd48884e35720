"""A client's cache of decoded objects: reads at a local dict's speed.

The cache is a dict of the whole map as of one committed seq S, kept with
the map header's version word as it was when the dict was brought up to
date. A read compares that word with the header's (one 8-byte load through
a memoryview); equal, nothing was committed or published since, and the
dict answers. Different, the cache refreshes first: the C core scans the
generation's arena from where the last scan stopped and reports each key
whose value changed (generation.Changes), so a refresh costs the writes
since, not the map. After a promotion, the old generation up to the new
one's base_seq (if the dict is not past it), then the new generation from
there, carry it on -- also when the promotion was built while writes went
on; after anything else (a clear, several promotions at once) it loads the
map again.

Every snapshot guarantee of the uncached reads holds:
- a refresh brings every changed key to S at once, then publishes the new
  version with the dict in one tuple (``hot``): a batch is seen whole or
  not at all, and a read after a write acknowledged to anyone sees it;
- an iteration walks the dict as of its start: a refresh that finds the
  dict referenced by anything but the cache (an iterator) copies it first
  (copy on write), so an iteration never sees a change.

Memory is bounded: a map with more than ``max_keys`` keys, or more than
``max_bytes`` bytes of encoded keys and values, is read uncached (the
shared memory directly) until an iteration finds that it fits again. Decoded objects take several
times their encoded bytes (an int->int pair about 100 bytes in Python).

Values are shared: every read of a key returns the same object until the
key changes. Do not change a value read from the map; copy it first.
"""
from __future__ import annotations

import sys
import threading
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional

from .._core import ffi, lib
from ..shared.errors import CorruptSegmentError, MapClosedError
from ..shared.generation import Changes, Generation

if TYPE_CHECKING:
    from .reader import MapReader

# Defaults of connect(): a map up to a million keys and 256 MiB of encoded
# bytes is cached (a million int->int pairs take about 100 MB decoded);
# bigger ones are read from shared memory unless the caller raises the
# limits, so 64 processes on a 10M-key map keep no private copies.
DEFAULT_CACHE_KEYS = 1 << 20
DEFAULT_CACHE_BYTES = 256 << 20
# Lookups the cache takes uncached before it loads the map: at least this
# many, and one per LOOKUPS_PER_LOAD_KEY keys of the map, so that loading
# (which decodes every key) costs a bounded share of the lookups' time.
LOAD_AFTER_LOOKUPS = 1024
LOOKUPS_PER_LOAD_KEY = 8

_VERSION_OFF = ffi.offsetof("struct shm_map_header", "version")
_superseded = lib.shm_superseded
_version = lib.shm_map_version
# A version word no cache ever matches: seen is -1, a word is unsigned.
_NO_WORD = memoryview(array("Q", [0]))
_NOT_CURRENT = -1
# A word that always matches _ALWAYS_SEEN: the hot tuple of a map read
# uncached, which is current by construction.
_ALWAYS_WORD = memoryview(array("Q", [0]))
_ALWAYS_SEEN = 0
_MISSING = object()


def _calibrate_refcount() -> int:
    """The references a dict held only by a cache's ``hot`` tuple has, as
    sys.getrefcount sees it from a local in a method (the tuple, the local,
    the argument): more means something else (an iterator) holds it."""
    hot: tuple[Any, Any, dict[Any, Any]] = (_NOT_CURRENT, _NO_WORD, {})
    data = hot[2]
    return sys.getrefcount(data)


_UNSHARED_REFS = _calibrate_refcount()


@dataclass(frozen=True)
class CacheLimits:
    """Up to how big a map a client caches (0 keys: never)."""

    max_keys: int = DEFAULT_CACHE_KEYS
    max_bytes: int = DEFAULT_CACHE_BYTES

    def fits(self, keys: int, nbytes: int) -> bool:
        """Whether a map of keys keys and nbytes encoded bytes is cached."""
        return keys <= self.max_keys and nbytes <= self.max_bytes and self.max_keys > 0


class NoCache:
    """The cache of a map not yet opened: never current, so every read
    takes the slow path, which opens the map."""

    __slots__ = ("hot",)

    def __init__(self) -> None:
        """A hot tuple that never matches."""
        self.hot: tuple[int, memoryview, dict[Any, Any]] = (_NOT_CURRENT, _NO_WORD, {})


class UncachedReads:
    """What the read fast path finds in the hot tuple of a map read
    uncached (over the limits, or the cache off): the dict operations it
    makes, as lookups in shared memory (always current, so the tuple's
    version check always passes). get is the reader's lookup itself."""

    __slots__ = ("get",)

    def __init__(self, reader: MapReader) -> None:
        """Reads through reader (which raises MapClosedError once closed)."""
        self.get = reader.lookup

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _MISSING) is not _MISSING


class ReadCache:
    """The decoded map of one client, kept current by deltas.

    ``hot`` is the one attribute the read fast path loads:
    (version seen, the header's version word, the dict). The tuple is
    replaced whole, so a reader that took it uses one consistent pair;
    a refresh changes the dict in place only when nothing else references
    it (see _sync), so no iteration, and no read in another thread, sees
    it change.

    Owns what its views point into: the version word's memoryview holds
    the header mapping, the Changes scan its Generation.
    """

    __slots__ = ("hot", "name", "limits", "_reader", "_header", "_word", "_lock", "_changes",
                 "_closed", "_lookups", "_load_after", "_over_limit", "loads", "refreshes",
                 "changed_keys", "copies", "drops")

    def __init__(self, reader: MapReader, limits: CacheLimits) -> None:
        """An empty cache of reader's map (a MapReader); it loads on first
        iteration, or after enough lookups."""
        self.name: str = reader.name
        self.limits = limits
        self._reader: Optional[MapReader] = reader
        self._header = reader.header            # owns the header mapping
        self._word = memoryview(ffi.buffer(self._header))[
            _VERSION_OFF:_VERSION_OFF + 8].cast("Q")
        self.hot: tuple[int, memoryview, Any] = (_NOT_CURRENT, self._word, {})
        if limits.max_keys == 0:
            self._serve_uncached(reader)
        self._lock = threading.Lock()
        self._changes: Optional[Changes] = None     # None: not loaded
        self._closed = False
        self._lookups: float = 0
        # Lookups before the next try to load: none ever with the cache off.
        self._load_after = LOAD_AFTER_LOOKUPS if limits.max_keys > 0 else float("inf")
        self._over_limit = False
        self.loads = self.refreshes = self.changed_keys = self.copies = self.drops = 0

    # -- state --------------------------------------------------------------

    def close(self) -> None:
        """Drops the dict and the generation: every later call raises
        MapClosedError; a read already past its check finishes on the
        tuple it took."""
        with self._lock:
            self._closed = True
            self._changes = None
            self.hot = (_NOT_CURRENT, _NO_WORD, {})
            self._word = _NO_WORD
            self._reader = None
            self._header = None

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent's thread may hold it).
        The dict and mappings are the child's copy and stay valid."""
        self._lock = threading.Lock()

    def _check_open(self) -> Any:
        reader = self._reader
        if self._closed or reader is None:
            raise MapClosedError(f"map {self.name!r} is closed")
        return reader

    def stats(self) -> dict[str, Any]:
        """What the cache holds and did (SharedMap.stats()["cache"])."""
        with self._lock:
            changes = self._changes
            if self.limits.max_keys == 0:
                state = "off"
            elif changes is not None:
                state = "cached"
            else:
                state = "over limit" if self._over_limit else "not loaded"
            return {
                "state": state,
                "keys": len(self.hot[2]) if changes is not None else 0,
                "encoded_bytes": int(changes.gen.header.live_bytes) if changes else 0,
                "max_keys": self.limits.max_keys,
                "max_bytes": self.limits.max_bytes,
                "generation": changes.gen.gen if changes is not None else None,
                "seq": changes.since if changes is not None else None,
                "loads": self.loads,
                "refreshes": self.refreshes,
                "changed_keys": self.changed_keys,
                "copies": self.copies,
                "drops": self.drops,
            }

    # -- reads (the slow paths; SharedMap inlines the fast one) --------------

    def current(self) -> Optional[dict[Any, Any]]:
        """The dict, brought up to date, or None if the map is not cached."""
        with self._lock:
            self._check_open()
            if self._changes is None:
                return None
            return self._sync()

    def lookup(self, key: Any, default: Any) -> Any:
        """The value of key now, or default: from the dict if the map is
        cached (refreshing it first), else from shared memory (loading the
        cache once enough lookups went there)."""
        if self._changes is not None:
            data = self.current()
            if data is not None:
                return data.get(key, default)
        reader = self._reader
        if reader is None:
            raise MapClosedError(f"map {self.name!r} is closed")
        self._lookups += 1      # racy between threads: a count, not a bound
        if self._lookups >= self._load_after and self._load_for_lookups():
            return self.lookup(key, default)
        return reader.lookup(key, default)

    def _load_for_lookups(self) -> bool:
        """Loads the map if it fits and enough lookups went uncached since
        the last try: one per LOOKUPS_PER_LOAD_KEY keys of the map."""
        with self._lock:
            self._check_open()
            if self._changes is not None:
                return True
            gen = self._check_open().refresh()
            due = max(LOAD_AFTER_LOOKUPS, int(gen.header.live_count) // LOOKUPS_PER_LOAD_KEY)
            if self._lookups < due:
                self._load_after = due
                return False
            self._lookups = 0
            return self._load()

    def iterate(self, what: str) -> Optional[Iterator[Any]]:
        """An iterator over the dict now ("items", "keys" or "values"),
        loading or refreshing it first; None if the map is not cached.
        The iterator holds the dict: later refreshes copy it instead."""
        with self._lock:
            self._check_open()
            if self._changes is None and not self._load():
                return None
            data = self._sync()
            if data is None:
                return None
            if what == "items":
                return iter(data.items())
            if what == "values":
                return iter(data.values())
            return iter(data)

    def copy(self) -> Optional[dict[Any, Any]]:
        """A private dict of the map now, or None if it is not cached."""
        with self._lock:
            self._check_open()
            if self._changes is None and not self._load():
                return None
            data = self._sync()
            return data.copy() if data is not None else None

    # -- loading and refreshing (caller holds self._lock) --------------------

    def _load(self) -> bool:
        """Decodes the whole map at one snapshot, if it fits the limits."""
        version = _version(self._header)      # before anything it covers
        gen: Generation = self._check_open().refresh()
        if not self.limits.fits(int(gen.header.live_count), int(gen.header.live_bytes)):
            self._over_limit = True
            self._serve_uncached(self._check_open())
            return False
        snap = gen.snapshot()
        data: dict[Any, Any] = {}
        for keys, values in gen.batches(snap):
            data.update(zip(keys, values))
        self._changes = Changes(gen, snap)
        self._over_limit = False
        self.loads += 1
        self.hot = (version, self._word, data)
        return True

    def _drop(self) -> None:
        """Lets go of the dict (over the limits): reads go to shared memory."""
        self._changes = None
        self._over_limit = True
        self._lookups = 0
        self.drops += 1
        self._serve_uncached(self._check_open())

    def _serve_uncached(self, reader: MapReader) -> None:
        """Reads go straight to shared memory, at no cost but the version
        check, until an iteration finds that the map fits the limits."""
        self.hot = (_ALWAYS_SEEN, _ALWAYS_WORD, UncachedReads(reader))

    def _sync(self) -> Optional[dict[Any, Any]]:
        """Brings the dict to the map's state now (it is loaded); None if
        the map no longer fits the limits (the dict is dropped)."""
        seen, word, data = self.hot
        version = _version(self._header)      # acquire, before what it covers
        if seen == version:
            return data
        changes = self._changes
        assert changes is not None
        try:
            found = self._scan(changes)
        except CorruptSegmentError:
            found = None                        # not what the daemon writes: reload
        except BaseException:
            # Cut short (an interrupt, no memory): the scans may have moved
            # past changes the dict lacks. Load again on the next read.
            self._changes = None
            self._lookups = self._load_after
            self.hot = (_NOT_CURRENT, word, {})
            raise
        if found is None:
            self._changes = None
            if not self._load():
                self._drop()
                return None
            return self.hot[2]
        changes, phases = found
        if any(keys or dead for keys, _, dead in phases):
            # Referenced by more than the hot tuple and this frame: an
            # iteration holds it, and must not see it change.
            if sys.getrefcount(data) > _UNSHARED_REFS:
                data = data.copy()
                self.copies += 1
            for stored_keys, stored_values, dead in phases:     # in seq order
                for keys, values in zip(stored_keys, stored_values):
                    data.update(zip(keys, values))
                    self.changed_keys += len(keys)
                for keys in dead:
                    for key in keys:
                        data.pop(key, None)
                    self.changed_keys += len(keys)
        self._changes = changes
        self.refreshes += 1
        if not self.limits.fits(len(data), int(changes.gen.header.live_bytes)):
            self._drop()
            return None
        self.hot = (version, word, data)
        return data

    def _scan(self, changes: Changes
              ) -> Optional[tuple[Changes, list[tuple[list[Any], list[Any], list[Any]]]]]:
        """The changes since the dict's seq up to now, a phase per
        generation (one promotion is followed); None if the dict must be
        loaded again."""
        gen = changes.gen
        phases = []
        if _superseded(gen.view):
            new = self._check_open().refresh()
            base = new.base_seq()
            # A promotion built g+1 from g at base, at or below what g
            # committed: the writes g took after base are in g+1 too, with
            # their seqs (a build under writes replays them). A clear's
            # base is past all of g. So: a clear, or several promotions at
            # once, load again; one promotion scans g up to base if the dict
            # is not there yet, then g+1 from base -- which reports again,
            # with its value now, each key the dict already took from g
            # after base.
            if new.gen != gen.gen + 1 or base > gen.snapshot():
                return None
            if changes.since < base:
                phases.append(changes.scan(base))
            changes = Changes(new, base)
        phases.append(changes.scan(changes.gen.snapshot()))
        return changes, phases
