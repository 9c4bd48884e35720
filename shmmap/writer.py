"""The write side of a map: the one process (the daemon) that creates its
segments, applies batches of writes, commits them and promotes."""
from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from . import segments, status
from ._core import ffi, lib
from .errors import CorruptSegmentError, LimitError, MapFullError
from .generation import Generation

_LATEST = (1 << 64) - 1
# Only the readers' segment (the daemon creates it) needs group or other
# write: the header and generations are the daemon's alone.
_NOT_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH


@dataclass
class WriterStats:
    """What the writer did since it started (the daemon reports these)."""

    promotions: int = 0
    compactions: int = 0                 # promotions that dropped dead versions
    bytes_copied: int = 0
    promotions_by_reason: dict[str, int] = field(default_factory=dict)
    last_promotion_ms: float = 0.0


@dataclass
class Limits:
    max_key: int = lib.SHM_DEFAULT_MAX_KEY
    max_value: int = lib.SHM_DEFAULT_MAX_VALUE
    max_live_bytes: int = 0              # 0: no limit but /dev/shm's size


def data_mode(mode: int) -> int:
    """The mode of the header and generation segments of a map served with
    mode: the same readers, but no one else may write them."""
    return mode & ~_NOT_SHARED_WRITE


class MapWriter:
    """Owns map ``name`` read-write: creates it, or adopts it (see adopt).

    The writer trusts nothing it reads back from shared memory: its counters
    (entries and arena bytes used, live keys and bytes) live in its private
    view (struct shm_view), and the segments it writes are created without
    group or other write permission whatever mode says."""

    def __init__(self, name: str, *, mode: int = 0o600, group: Optional[int] = None,
                 limits: Optional[Limits] = None, socket_path: str = "",
                 seed: Optional[tuple[int, int]] = None) -> None:
        """Creates map name; FileExistsError if its header segment exists."""
        self._setup(name, mode, group, limits)
        self._header_mm = segments.create(segments.header_name(name),
                                          ffi.sizeof("struct shm_map_header"), data_mode(mode),
                                          group)
        try:
            self._header_buf = ffi.from_buffer(self._header_mm)
            self.header: Any = ffi.cast("struct shm_map_header *", self._header_buf)
            h = self.header
            s0, s1 = seed if seed is not None else (
                int.from_bytes(os.urandom(8), "little"), int.from_bytes(os.urandom(8), "little"))
            h.magic = lib.SHM_MAGIC_MAP
            h.layout_version = lib.SHM_LAYOUT_VERSION
            h.header_size = ffi.sizeof("struct shm_map_header")
            h.seed0, h.seed1 = s0, s1
            h.created_ns = time.time_ns()
            self.set_socket_path(socket_path)
            self.generation = self._new_generation(1, 0, 0, 0, 0, base_seq=0)
            lib.shm_map_publish_gen(self.header, 1)
        except BaseException:
            self._remove_all()
            raise
        self.seq = 0

    def _setup(self, name: str, mode: int, group: Optional[int],
               limits: Optional[Limits]) -> None:
        self.name = segments.check_map_name(name)
        self.mode = mode
        self.group = group
        self.limits = limits or Limits()
        self.stats = WriterStats()
        self._info = ffi.new("struct shm_apply_info *")   # apply()'s, reused
        self._err = status.err_buffer()

    @classmethod
    def adopt(cls, name: str, *, mode: int = 0o600, group: Optional[int] = None,
              limits: Optional[Limits] = None, socket_path: str = "") -> "MapWriter":
        """Takes over the segments a dead daemon left: validates them as
        untrusted bytes (CorruptSegmentError if they are not sound), retires
        every other generation, and rebuilds the current one at its
        committed_seq -- which drops whatever a write in flight at the crash
        had appended, so no half-applied batch ever becomes visible. The
        rebuilt generation is current and not superseded, which also
        repairs a current generation wrongly marked superseded (readers
        would otherwise keep looking for a newer one)."""
        self = cls.__new__(cls)
        self._setup(name, mode, group, limits)
        seg = segments.header_name(name)
        self._header_mm = segments.open_readwrite(seg)
        self._header_buf = ffi.from_buffer(self._header_mm)
        self.header = ffi.cast("struct shm_map_header *", self._header_buf)
        h = self.header
        if (len(self._header_mm) < ffi.sizeof("struct shm_map_header")
                or h.magic != lib.SHM_MAGIC_MAP or h.layout_version != lib.SHM_LAYOUT_VERSION
                or h.header_size != ffi.sizeof("struct shm_map_header")):
            self._release_header()
            raise CorruptSegmentError(f"{seg}: not a shmmap map header of layout version "
                                      f"{lib.SHM_LAYOUT_VERSION}")
        current = int(lib.shm_map_current_gen(h))
        try:
            self._retire_others(current)
            gseg = segments.gen_name(name, current)
            g = Generation(gseg, segments.open_readwrite(gseg))
        except (FileNotFoundError, CorruptSegmentError) as exc:
            self._release_header()
            raise CorruptSegmentError(f"map {name!r}: current generation {current}: {exc}") from None
        try:
            g.validate()
            if (g.header.gen != current or g.header.seed0 != h.seed0
                    or g.header.seed1 != h.seed1):
                raise CorruptSegmentError(f"{gseg}: does not belong to map {name!r}")
        except CorruptSegmentError:
            g.close()
            self._release_header()
            raise
        self._take(g)
        self.generation = g
        self.seq = int(g.header.committed_seq)
        self.set_socket_path(socket_path)
        self.promote("adopted")
        return self

    def _retire_others(self, current: int) -> None:
        """Marks older generations superseded (a crash between publishing
        current_gen and marking them would leave readers on them) and
        removes newer ones (a promotion the crash cut short)."""
        prefix = segments.gen_name(self.name, 0)[:-1]
        for seg in segments.map_segments(self.name):
            if not seg.startswith(prefix) or not seg[len(prefix):].isdigit():
                continue
            gen = int(seg[len(prefix):])
            if gen < current:
                try:
                    old = Generation(seg, segments.open_readwrite(seg))
                except (FileNotFoundError, CorruptSegmentError):
                    pass            # nothing a reader could be using
                else:
                    lib.shm_mark_superseded(old.view)
                    old.close()
            if gen != current:
                segments.unlink(seg)

    def _release_header(self) -> None:
        ffi.release(self._header_buf)
        self._header_mm.close()

    # -- segments -------------------------------------------------------

    def set_socket_path(self, path: str) -> None:
        raw = path.encode()
        if len(raw) >= lib.SHM_SOCKET_PATH_MAX:
            raise ValueError(f"socket path {path!r} is longer than "
                             f"{lib.SHM_SOCKET_PATH_MAX - 1} bytes")
        ffi.memmove(self.header.socket_path, raw + b"\0", len(raw) + 1)

    def _new_generation(self, gen: int, live_keys: int, live_bytes: int,
                        reserve_keys: int, reserve_bytes: int, base_seq: int) -> Generation:
        geo = ffi.new("struct shm_geometry *")
        status.check(lib.shm_plan(geo, live_keys, live_bytes, reserve_keys, reserve_bytes),
                     context=f"map {self.name!r}: a generation for {live_keys} keys and "
                             f"{live_bytes} bytes", cls=MapFullError)
        seg = segments.gen_name(self.name, gen)
        mm = segments.create(seg, geo.segment_size, data_mode(self.mode), self.group)
        h = self.header
        try:
            buf = ffi.from_buffer(mm)
            rc = lib.shm_gen_init(buf, geo, gen, h.seed0, h.seed1, base_seq)
            ffi.release(buf)
            status.check(rc, context=f"{seg}: could not lay out the generation",
                         cls=CorruptSegmentError)
            g = Generation(seg, mm)
        except BaseException:
            segments.unlink(seg)
            raise
        self._take(g)
        return g

    def _take(self, g: Generation) -> None:
        """Makes g one this writer writes: its limits, and the map header
        whose version word its commits and its retirement move on (which
        tells clients' caches to refresh: see shmmap.h)."""
        g.view.map = self.header
        g.view.max_key = self.limits.max_key
        g.view.max_value = self.limits.max_value
        g.view.max_live_bytes = self.limits.max_live_bytes

    def _remove_all(self) -> None:
        for seg in segments.map_segments(self.name):
            segments.unlink(seg)

    # -- writes -----------------------------------------------------------

    def check_key(self, key: bytes) -> None:
        """Raises unless key is one canonical msgpack key within the limit."""
        self._check_one(lib.shm_check_key, "key", key, self.limits.max_key)

    def check_value(self, value: bytes) -> None:
        """Raises unless value is one well-formed msgpack object within the
        limit."""
        self._check_one(lib.shm_check_value, "value", value, self.limits.max_value)

    def _check_one(self, fn: Any, what: str, data: bytes, limit: int) -> None:
        if len(data) > limit:
            raise LimitError(f"{what} of {len(data)} bytes is over the limit of {limit} bytes")
        status.check(fn(data, len(data), self._err, status.ERR_LEN), self._err)

    def apply(self, blob: bytes) -> int:
        """Applies a batch (items made by store_item/delete_item) as one
        atomic write with the next seq, promoting first if it does not fit.
        Returns its seq; it is visible to readers after commit(). The core
        validates the blob once, and applies all of it or none; a bad item
        raises InvalidRequestError or LimitError naming it, a store over
        the live-bytes limit MapFullError."""
        if self.seq >= lib.SHM_MAX_SEQ:
            raise MapFullError(f"map {self.name!r}: seq {self.seq} is the highest a map takes")
        seq = self.seq + 1
        info = self._info
        info.validated = 0                  # a new blob
        rc = lib.shm_apply(self.generation.view, blob, len(blob), seq, info, self._err,
                           status.ERR_LEN)
        if rc == lib.SHM_ENOSPACE:
            self.promote("full", reserve_keys=info.new_keys_max,
                         reserve_bytes=info.arena_need)
            # info.validated is 1: the blob is not validated again.
            rc = lib.shm_apply(self.generation.view, blob, len(blob), seq, info, self._err,
                               status.ERR_LEN)
        status.check(rc, self._err, f"map {self.name!r}")
        self.seq = seq
        return seq

    def commit(self) -> int:
        """Makes every applied write visible; returns committed_seq."""
        lib.shm_commit(self.generation.view, self.seq)
        return self.seq

    def lookup_raw(self, key: bytes) -> Optional[bytes]:
        """The encoded latest value of key, committed or not (the writer's
        own view, for conditional operations)."""
        return self.generation.lookup_raw(key, _LATEST)

    # -- promotion --------------------------------------------------------

    def promote(self, reason: str = "requested", *, reserve_keys: int = 0,
                reserve_bytes: int = 0) -> Generation:
        """Commits, builds the next generation from the live entries,
        publishes it, marks the old one superseded and unlinks its name."""
        started = time.perf_counter()
        self.commit()
        old = self.generation
        snap = self.seq
        keys, nbytes = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        status.check(lib.shm_measure(old.view, snap, keys, nbytes), context=old.segment)
        new = self._new_generation(old.gen + 1, keys[0], nbytes[0], reserve_keys,
                                   reserve_bytes, base_seq=snap)
        try:
            status.check(lib.shm_build(old.view, snap, new.view),
                         context=f"{new.segment}: building from {old.segment}")
        except BaseException:
            new.close()
            segments.unlink(new.segment)
            raise
        dead = int(old.view.arena_used) - nbytes[0]
        self._publish(new)
        st = self.stats
        st.promotions += 1
        st.compactions += dead > 0
        st.bytes_copied += int(new.view.arena_used)
        st.promotions_by_reason[reason] = st.promotions_by_reason.get(reason, 0) + 1
        st.last_promotion_ms = (time.perf_counter() - started) * 1000
        return new

    def _publish(self, new: Generation) -> None:
        """Makes new current: publish its number, mark the old generation
        superseded, unlink the old name. Readers that hold the old one keep
        it until they unmap it; the kernel frees it after the last."""
        old = self.generation
        lib.shm_map_publish_gen(self.header, new.gen)
        lib.shm_mark_superseded(old.view)
        segments.unlink(old.segment)
        self.generation = new
        old.close()

    def clear(self) -> int:
        """Removes every key as one write: an empty generation whose
        committed_seq is the clear's seq. Returns that seq."""
        self.commit()
        self.seq += 1
        self._publish(self._new_generation(self.generation.gen + 1, 0, 0, 0, 0,
                                           base_seq=self.seq))
        return self.seq

    def should_promote_for_misses(self, misses: int) -> bool:
        """The sync.Map rule, scaled: promote once the misses readers
        counted since the last promotion cost about one promotion."""
        view = self.generation.view         # the writer's own counters
        if int(view.dirty_count) == 0:
            return False
        live = max(int(view.live_count), lib.SHM_MIN_DIRTY)
        return misses >= live * lib.SHM_MISSES_PER_LIVE

    # -- teardown ---------------------------------------------------------

    def close(self, *, remove: bool = True) -> None:
        """Unmaps; with remove, also unlinks every segment of the map."""
        self.generation.close()
        self._release_header()
        if remove:
            self._remove_all()
