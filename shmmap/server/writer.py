"""The write side of a map: the one process (the daemon) that creates its
segments, applies batches of writes, commits them and promotes."""
from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .._core import ffi, lib
from ..shared import corestatus, segments
from ..shared.config import Limits
from ..shared.errors import CorruptSegmentError, LimitError, MapFullError
from ..shared.generation import Generation

_LATEST = (1 << 64) - 1
# Only the readers' segment (the daemon creates it) needs group or other
# write: the header and generations are the daemon's alone.
_NOT_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH
RECENT_PROMOTIONS = 64       # PromotionRecords the stats keep
SUPERSEDED_KEPT = 64         # generations whose time of supersession is kept
_ALL = (1 << 64) - 1         # shm_replay: no bound on the blobs


@dataclass(frozen=True)
class PromotionRecord:
    """One promotion: why, what it copied, and how long each phase took.
    measure, create (the segment) and build ran beside the live generation
    when background is True (writes went on meanwhile); replay (summed over
    the loop rounds it took) and publish ran in the daemon's loop, which is
    all the time a write could wait for it."""

    reason: str
    generation: int                      # the generation it published
    entries: int                         # live entries copied (read table)
    bytes: int                           # arena bytes of the new generation
    replayed: int                        # writes made during the build, replayed
    background: bool
    ms: float                            # from its start to its publication
    phases_ms: dict[str, float]          # measure, create, build, replay, publish


@dataclass
class WriterStats:
    """What the writer did since it started (the daemon reports these)."""

    promotions: int = 0
    compactions: int = 0                 # promotions that dropped dead versions
    bytes_copied: int = 0
    promotions_by_reason: dict[str, int] = field(default_factory=dict)
    last_promotion_ms: float = 0.0
    background_promotions: int = 0       # built beside the live generation
    builds_cancelled: int = 0            # background builds thrown away (clear, stop)
    builds_failed: int = 0               # background builds that hit an error
    writes_waited_for_build: int = 0     # writes that found the generation full mid-build
    replay_fallbacks: int = 0            # replays that did not fit: promoted in the loop
    last_promotion: Optional[PromotionRecord] = None
    recent_promotions: deque[PromotionRecord] = field(
        default_factory=lambda: deque(maxlen=RECENT_PROMOTIONS))

    def record(self, rec: PromotionRecord, dead_bytes: int) -> None:
        self.promotions += 1
        self.compactions += dead_bytes > 0
        self.bytes_copied += rec.bytes
        self.promotions_by_reason[rec.reason] = self.promotions_by_reason.get(rec.reason, 0) + 1
        self.background_promotions += rec.background
        self.last_promotion_ms = rec.ms
        self.last_promotion = rec
        self.recent_promotions.append(rec)


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
        seg = segments.header_name(name)
        self._header_mm = segments.create(seg, ffi.sizeof("struct shm_map_header"),
                                          data_mode(mode), group)
        self._owned.add(seg)
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
            self._note_room()
            lib.shm_map_publish_gen(self.header, 1)
        except BaseException:
            self._remove_owned()
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
        self.building: Optional[Build] = None             # a promotion under way
        # Unmaps a superseded generation: the daemon hands that to a thread
        # (tens of milliseconds for a big one, see promotion.py).
        self.unmap: Callable[[Generation], None] = Generation.close
        self._room_at_start = (0, 0)     # the current generation's room when it became current
        # When each recent generation was superseded (time.monotonic()):
        # ReaderSlots.older_generations' grace for readers yet to notice.
        self.superseded_at: dict[int, float] = {}
        self._err = corestatus.err_buffer()
        # The segments this writer created or adopted, and so the only ones
        # it ever removes: the map's name alone is no proof of whose they are.
        self._owned: set[str] = set()

    @classmethod
    def adopt(cls, name: str, *, mode: int = 0o600, group: Optional[int] = None,
              limits: Optional[Limits] = None, socket_path: str = "") -> MapWriter:
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
        self._owned.update((seg, gseg))
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
        corestatus.check(lib.shm_plan(geo, live_keys, live_bytes, reserve_keys, reserve_bytes),
                     context=f"map {self.name!r}: a generation for {live_keys} keys and "
                             f"{live_bytes} bytes", cls=MapFullError)
        seg = segments.gen_name(self.name, gen)
        mm = segments.create(seg, geo.segment_size, data_mode(self.mode), self.group)
        self._owned.add(seg)
        h = self.header
        try:
            buf = ffi.from_buffer(mm)
            rc = lib.shm_gen_init(buf, geo, gen, h.seed0, h.seed1, base_seq)
            ffi.release(buf)
            corestatus.check(rc, context=f"{seg}: could not lay out the generation",
                         cls=CorruptSegmentError)
            g = Generation(seg, mm)
        except BaseException:
            self.remove_segment(seg)
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

    def remove_segment(self, seg: str) -> None:
        """Unlinks seg, one this writer created or adopted."""
        self._owned.remove(seg)
        segments.unlink(seg)

    def _remove_owned(self) -> None:
        for seg in sorted(self._owned):
            self.remove_segment(seg)

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
            raise LimitError(f"encoded {what} of {len(data)} bytes exceeds --max-{what} {limit}")
        corestatus.check(fn(data, len(data), self._err, corestatus.ERR_LEN), self._err)

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
                           corestatus.ERR_LEN)
        if rc == lib.SHM_ENOSPACE and self.building is not None:
            # The runway ran out before the build did: this write waits
            # for it, then goes to the new generation if it fits there.
            self.stats.writes_waited_for_build += 1
            build = self.building
            build.done.wait()
            with contextlib.suppress(Exception):
                # A failed build (counted in builds_failed) leaves g current:
                # the promotion below raises what still stands in the way.
                self.finish_build(build)
            rc = lib.shm_apply(self.generation.view, blob, len(blob), seq, info, self._err,
                               corestatus.ERR_LEN)
        if rc == lib.SHM_ENOSPACE:
            self.promote("full", reserve_keys=info.new_keys_max,
                         reserve_bytes=info.arena_need)
            # info.validated is 1: the blob is not validated again.
            rc = lib.shm_apply(self.generation.view, blob, len(blob), seq, info, self._err,
                               corestatus.ERR_LEN)
        corestatus.check(rc, self._err, f"map {self.name!r}")
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
    #
    # A promotion has four phases: measure and build copy the entries live
    # at a committed snapshot S of generation g into a new, unpublished
    # g+1; replay applies to g+1 the writes g took since S (with their
    # seqs); publish commits g+1 and makes it current. begin_build and
    # finish_build run in the daemon's thread; Build.run may run in another
    # thread while the daemon goes on applying writes to g: the core reads
    # g as a reader does, and logs every blob shm_apply applies to g in the
    # build's replay log (so the daemon's C request path logs too).

    def begin_build(self, reason: str, *, background: bool = False, reserve_keys: int = 0,
                    reserve_bytes: int = 0) -> Build:
        """Commits and starts a promotion at that snapshot: returns the Build
        whose run() does the copying. With background, g+1 gets room for
        the writes that may arrive while it is built (at most
        1/SHM_REPLAY_RESERVE of g's room: more waits, see apply)."""
        if self.building is not None:
            raise RuntimeError(f"map {self.name!r}: a promotion is being built already")
        self.commit()
        view = self.generation.view
        if background:
            arena = int(view.arena_hi) - int(view.arena_lo)
            reserve_keys += min(int(view.dirty_cap) - int(view.dirty_count),
                                int(view.dirty_cap) // lib.SHM_REPLAY_RESERVE)
            reserve_bytes += min(arena - int(view.arena_used), arena // lib.SHM_REPLAY_RESERVE)
        build = Build(self, reason, background, reserve_keys, reserve_bytes)
        view.replay = build.log             # from here on, shm_apply logs
        self.building = build
        return build

    def catch_up(self, build: Build, max_blobs: int) -> bool:
        """Replays at most max_blobs more of the writes logged since the
        build's snapshot into the built g+1 (run() must be done): the
        daemon's loop does this a slice per round while writes go on, so
        that finish_build has little left. True when none is left (or the
        replay failed: finish_build falls back)."""
        if build.error is not None or build.replay_failed:
            return True
        assert build.new is not None
        t = time.perf_counter()
        n = lib.shm_replay(build.new.view, build.log, build.cursor, max_blobs, self._err,
                           corestatus.ERR_LEN)
        build.replay_s += time.perf_counter() - t
        if n < 0:
            build.replay_failed = True
            return True
        build.replayed += n
        return n < max_blobs

    def finish_build(self, build: Build) -> Generation:
        """Replays the writes the build has not yet caught up with into
        g+1, commits it at the writer's seq and publishes it. Raises what
        run() raised (g stays current, nothing lost). If the writes do not
        fit g+1, promotes again from g here, synchronously (correctness
        first)."""
        assert build is self.building and build.done.is_set()
        if build.error is None:
            self.catch_up(build, _ALL)
        self._detach(build)
        if build.error is not None:
            self.stats.builds_failed += build.background
            build.discard()
            raise build.error
        if build.replay_failed:
            build.discard()
            self.stats.replay_fallbacks += 1
            return self.promote(build.reason)
        new = build.new
        assert new is not None
        t = time.perf_counter()
        lib.shm_commit(new.view, self.seq)
        dead = build.arena_at_snap - build.measured_bytes
        self._publish(new)
        done = time.perf_counter()
        build.free_log()
        phases = dict(build.phases_ms, replay=_ms(build.replay_s), publish=_ms(done - t))
        self.stats.record(PromotionRecord(
            reason=build.reason, generation=new.gen, entries=int(new.view.read_count),
            bytes=build.copied_bytes, replayed=build.replayed, background=build.background,
            ms=_ms(done - build.started), phases_ms=phases), dead)
        return new

    def abort_build(self, build: Build) -> None:
        """Stops a build and throws its generation away (g stays current
        and whole). Waits for run() to notice: at most one
        SHM_CANCEL_EVERY entries, or the creation of the segment."""
        build.cancel()
        build.done.wait()
        self._detach(build)
        build.discard()
        self.stats.builds_cancelled += 1

    def _detach(self, build: Build) -> None:
        # shm_apply stops logging into the build's replay log.
        build.source.view.replay = ffi.NULL
        self.building = None

    def promote(self, reason: str = "requested", *, reserve_keys: int = 0,
                reserve_bytes: int = 0) -> Generation:
        """Commits, builds the next generation from the live entries,
        publishes it, marks the old one superseded and unlinks its name --
        all now, in this thread. A background build under way is
        cancelled first (this promotion covers what it would have)."""
        if self.building is not None:
            self.abort_build(self.building)
        build = self.begin_build(reason, reserve_keys=reserve_keys, reserve_bytes=reserve_bytes)
        build.run()
        return self.finish_build(build)

    def runway_room(self) -> tuple[int, int]:
        """The dirty entries and arena bytes left at which runway_short
        becomes true (from SHM_BACKGROUND_MIN_LIVE live keys on): the C
        loop's thresholds (struct shm_loop)."""
        keys, nbytes = self._room_at_start
        return keys // lib.SHM_PROMOTE_RUNWAY, nbytes // lib.SHM_PROMOTE_RUNWAY

    def runway_short(self) -> bool:
        """Whether a background build should start now: the current
        generation holds SHM_BACKGROUND_MIN_LIVE live keys or more, and has
        less than 1/SHM_PROMOTE_RUNWAY left of the dirty entries or of the
        arena bytes it started with -- the rest is for the writes made
        while the build runs."""
        view = self.generation.view
        if int(view.live_count) < lib.SHM_BACKGROUND_MIN_LIVE:
            return False
        keys_room, bytes_room = self.runway_room()
        return (int(view.dirty_cap) - int(view.dirty_count) <= keys_room
                or int(view.arena_hi) - int(view.arena_lo) - int(view.arena_used) <= bytes_room)

    def _publish(self, new: Generation) -> None:
        """Makes new current: publish its number, mark the old generation
        superseded, unlink the old name. Readers that hold the old one keep
        it until they unmap it; the kernel frees it after the last."""
        old = self.generation
        lib.shm_map_publish_gen(self.header, new.gen)
        lib.shm_mark_superseded(old.view)
        self.superseded_at[old.gen] = time.monotonic()
        while len(self.superseded_at) > SUPERSEDED_KEPT:
            del self.superseded_at[next(iter(self.superseded_at))]
        self.remove_segment(old.segment)
        self.generation = new
        self._note_room()
        self.unmap(old)

    def _note_room(self) -> None:
        view = self.generation.view
        self._room_at_start = (int(view.dirty_cap) - int(view.dirty_count),
                               int(view.arena_hi) - int(view.arena_lo) - int(view.arena_used))

    def clear(self) -> int:
        """Removes every key as one write: an empty generation whose
        committed_seq is the clear's seq. Returns that seq. A build under
        way is cancelled: it copies what the clear removes."""
        if self.building is not None:
            self.abort_build(self.building)
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
        """Unmaps; with remove, also unlinks every segment of the map that
        this writer created or adopted (and no other). A build under way is
        cancelled first."""
        if self.building is not None:
            self.abort_build(self.building)
        self.generation.close()
        self._release_header()
        if remove:
            self._remove_owned()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Build:
    """A promotion under way (MapWriter.begin_build): the snapshot it
    copies, its replay log, and, once run() returns, the new generation or
    the error. run() may be called in another thread; every other method
    belongs to the daemon's thread."""

    def __init__(self, writer: MapWriter, reason: str, background: bool, reserve_keys: int,
                 reserve_bytes: int) -> None:
        self.writer = writer
        self.reason = reason
        self.background = background
        self.source = writer.generation
        self.snap = writer.seq
        self.reserve = (reserve_keys, reserve_bytes)
        self.log: Any = ffi.new("struct shm_replay *")
        self.cursor: Any = ffi.new("uint64_t *")  # how far the log is replayed
        self.replayed = 0
        self.replay_s = 0.0                       # time spent replaying, in all rounds
        self.replay_failed = False
        self._cancel = ffi.new("uint64_t *")
        self.done = threading.Event()
        self.new: Optional[Generation] = None
        self.error: Optional[BaseException] = None
        self.measured_bytes = 0
        self.copied_bytes = 0
        self.arena_at_snap = int(self.source.view.arena_used)
        self.phases_ms: dict[str, float] = {}
        self.started = time.perf_counter()

    def run(self) -> None:
        """Measures and builds g+1 from the snapshot; never raises (the
        error is kept for finish_build). Sets done when it returns."""
        try:
            self._run()
        except BaseException as exc:        # reported by finish_build, in the daemon
            self.error = exc
        finally:
            self.done.set()

    def _run(self) -> None:
        src, w = self.source, self.writer
        t0 = time.perf_counter()
        keys, nbytes = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        rc = lib.shm_measure(src.view, self.snap, self._cancel, keys, nbytes)
        if rc == lib.SHM_ECANCELED:
            return
        corestatus.check(rc, context=src.segment)
        self.measured_bytes = int(nbytes[0])
        t1 = time.perf_counter()
        new = w._new_generation(src.gen + 1, keys[0], nbytes[0], *self.reserve,
                                base_seq=self.snap)
        self.new = new
        t2 = time.perf_counter()
        rc = lib.shm_build(src.view, self.snap, new.view, self._cancel)
        if rc == lib.SHM_ECANCELED:
            return
        corestatus.check(rc, context=f"{new.segment}: building from {src.segment}")
        self.copied_bytes = int(new.view.arena_used)
        self.phases_ms = {"measure": _ms(t1 - t0), "create": _ms(t2 - t1),
                          "build": _ms(time.perf_counter() - t2)}

    def cancel(self) -> None:
        """Asks run() to stop (it looks every SHM_CANCEL_EVERY entries)."""
        lib.shm_cancel(self._cancel)

    def discard(self) -> None:
        """Removes the unpublished generation and frees the log."""
        if self.new is not None:
            self.new.close()
            self.writer.remove_segment(self.new.segment)
            self.new = None
        self.free_log()

    def free_log(self) -> None:
        lib.shm_replay_free(self.log)
