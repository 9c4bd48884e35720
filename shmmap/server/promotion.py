"""Promotion beside the live generation: the daemon's side of it.

The daemon builds generation g+1 in a thread while its loop goes on
applying writes to g (the core releases the GIL while it copies, and logs
every write applied meanwhile, see MapWriter.begin_build). When the build
is done, the thread wakes the loop, which replays those writes into g+1,
commits and publishes it -- before it acknowledges any write made in g+1.
A write waits only for that replay and publish, unless g fills before the
build is done (then it waits for the build: see MapWriter.apply).

Builds start when the current generation's room runs low
(SHM_PROMOTE_RUNWAY), when readers' misses pay for one, or on request; a
request is answered once the promotion is published.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from .._core import lib
from ..shared.errors import MapFullError
from ..shared.generation import Generation
from ..shared.protocol import Err
from .transport import Later
from .writer import Build, MapWriter

log = logging.getLogger("shmmap.daemon")

# Logged writes replayed into a built generation per loop round (a few
# microseconds each): the most a write waits for the catching up.
REPLAY_SLICE = 256

# What each reason of a background build means, for log lines.
_WHY = {"misses": "readers' misses", "requested": "a request",
        "runway": "room before the generation fills"}


class BackgroundPromoter:
    """Starts background builds, and finishes them from the daemon's loop
    (check(), once per round). wake() makes the loop's poll return; the
    build's thread calls it when the build is done."""

    def __init__(self, writer: MapWriter, wake: Callable[[], None]) -> None:
        self.writer = writer
        self.wake = wake
        # One long-lived thread builds, then unmaps the generation a build
        # superseded: submitting costs the loop no thread start.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shmmap-promotion")
        writer.unmap = self._unmap_later
        self._build: Optional[Build] = None       # the build this promoter started
        self._waiting: list[Later] = []           # requests the build under way answers
        self._queued: list[Later] = []            # requests for the build after it
        # A runway build that failed (/dev/shm full, say) is not tried again
        # for the same generation: when it fills, the write that finds it
        # full promotes, or gets the error.
        self._runway_failed_gen = 0

    @property
    def building(self) -> bool:
        return self.writer.building is not None

    def start(self, reason: str) -> bool:
        """Starts a background build unless one is under way; whether it
        started one. Commits first (the build copies the snapshot)."""
        if self.writer.building is not None:
            return False
        build = self.writer.begin_build(reason, background=True)
        self._build = build
        self._worker.submit(self._run, build)
        return True

    def _run(self, build: Build) -> None:
        build.run()             # the copying, with the GIL released
        self.wake()

    def _unmap_later(self, gen: Generation) -> None:
        # Unmapping a big generation takes tens of milliseconds (its page
        # tables go, and its pages with them if no reader maps it); no
        # write waits for that. munmap releases the GIL.
        self._worker.submit(gen.close)

    def request(self, later: Later) -> None:
        """A client's promotion request: answered (later) with the new
        generation and seq once a promotion that started after it is
        published -- one that copies every write made before it. A build
        already under way copies an older snapshot: the request waits for
        the build after it."""
        if self.start("requested"):
            self._waiting.append(later)
        else:
            self._queued.append(later)

    def check(self) -> None:
        """The loop's look, once a round: finishes a build that is done,
        answers the requests it satisfies, and starts a build when the
        current generation's room runs low. Costs a few compares when
        nothing is due."""
        build = self._build
        if build is not None:
            if self.writer.building is build:
                # Done: catch up with the writes made meanwhile a slice per
                # round, then replay the rest and publish in one.
                if not build.done.is_set() or not self.writer.catch_up(build, REPLAY_SLICE):
                    return
                self._finish(build)
            else:
                # Finished by a write that waited for it, or cancelled by
                # clear() or a synchronous promote(): either way a newer
                # generation is published now.
                self._build = None
                self._answer()
        if self.writer.building is None:
            if self._queued:
                self._waiting, self._queued = self._queued, []
                self.start("requested")
            elif self.runway_may_start() and self.writer.runway_short():
                self.start("runway")

    def runway_may_start(self) -> bool:
        """Whether short room may start a build: not in a generation where
        one failed for lack of room already."""
        return self.writer.generation.gen != self._runway_failed_gen

    def runway_watch(self) -> tuple[int, int, int]:
        """What the C loop watches to return for a runway build (struct
        shm_loop): the live keys from which, and the dirty entries and
        arena bytes at or below which, writer.runway_short() holds; no
        live count reaches the first when no build may start."""
        live_min = lib.SHM_BACKGROUND_MIN_LIVE if self.runway_may_start() else 2**64 - 1
        return (live_min, *self.writer.runway_room())

    def _finish(self, build: Build) -> None:
        self._build = None
        if build.error is not None and build.reason == "runway":
            self._runway_failed_gen = self.writer.generation.gen
        try:
            self.writer.finish_build(build)
        except MapFullError as exc:
            log.error("promotion for %s failed, serving on: %s",
                      _WHY.get(build.reason, build.reason), exc,
                      extra={"event": "promotion_failed", "reason": build.reason})
            self._answer(Err.FULL, str(exc))
            return
        except Exception as exc:
            log.exception("promotion for %s failed, serving on",
                          _WHY.get(build.reason, build.reason),
                          extra={"event": "promotion_failed", "reason": build.reason})
            self._answer(Err.INTERNAL, f"promotion failed: {type(exc).__name__}: {exc}")
            return
        self._answer()

    def _answer(self, code: Optional[Err] = None, message: str = "") -> None:
        waiting, self._waiting = self._waiting, []
        gen, seq = self.writer.generation.gen, self.writer.seq
        for later in waiting:
            if code is None:
                later.ok(gen, seq)
            else:
                later.error(code, message)

    def stop(self) -> None:
        """Cancels a build under way and waits for its thread to let go of
        the generation (at most SHM_CANCEL_EVERY entries) and for pending
        unmaps. Removes only the unpublished generation; g stays current
        and whole."""
        if self.writer.building is not None:
            self.writer.abort_build(self.writer.building)
        self._worker.shutdown(wait=True)
        self.writer.unmap = Generation.close
        self._build = None
        self._waiting = []
        self._queued = []
