"""Promotion beside the live generation, against the dict model of
test_core_model: random writes (stores, deletes, batches, batches that
overflow the dirty table), requested promotions, clears and crash-and-adopt
sequences run while a build copies generation g in a real thread, with
random catching up and publication. Snapshots readers took keep showing
exactly what they showed, readers see the committed state, and every write
applied before a publication is in the generation it publishes.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from shmmap.shared import segments
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.protocol import batch_blob
from test_core_model import ABSENT, MapMachine


class BackgroundMachine(MapMachine):
    def __init__(self) -> None:
        super().__init__()
        self.build: Any = None
        self.thread: Optional[threading.Thread] = None

    def teardown(self) -> None:
        try:
            super().teardown()          # the writer's close cancels a build under way
        finally:
            if self.thread is not None:
                self.thread.join()

    def _building(self) -> bool:
        return self.build is not None and self.writer.building is self.build

    def _apply(self, ops: list[tuple[Any, Any]]) -> None:
        """MapMachine._apply, except that a batch that finds g full during a
        build waits for the build and publishes it, then may promote once
        more for room: both commit exactly what came before the batch."""
        w = self.writer
        promotions, before, seq = w.stats.promotions, dict(self.pending), self.seq
        building = self._building()
        got = w.apply(batch_blob((encode_key(k), None if v is ABSENT else encode_value(v))
                                 for k, v in ops))
        self.seq += 1
        assert got == self.seq == w.seq
        if w.stats.promotions > promotions:
            assert w.stats.promotions <= promotions + 2
            self.committed = before
            self.committed_seq = seq
        if building and not self._building():
            assert w.stats.writes_waited_for_build >= 1
        self._model_apply(ops)

    def _promoted_for_room(self, write: Any) -> None:
        """Runs write (which cannot fit g); it promoted for room, or, with a
        build under way, waited for the build and went to g+1."""
        st_ = self.writer.stats
        full, waited = st_.promotions_by_reason.get("full", 0), st_.writes_waited_for_build
        building = self._building()
        write()
        if building and st_.writes_waited_for_build == waited + 1:
            assert st_.promotions_by_reason.get("full", 0) in (full, full + 1)
        else:
            assert st_.promotions_by_reason.get("full", 0) == full + 1

    @precondition(lambda self: len(self.pending) < 6000)
    @rule(tag=st.integers(0, 2**32), extra=st.integers(1, 40), data=st.data())
    def fill_dirty_table(self, tag: int, extra: int, data: st.DataObject) -> None:
        """One batch of more new keys than the dirty table has room for."""
        h = self.writer.generation.header
        room = int(h.dirty_cap) - int(h.dirty_count)
        make = {"int": lambda i: tag * 100_000 + i, "str": lambda i: f"bulk{tag}-{i}",
                "tuple": lambda i: ("bulk", tag, i)}[
            data.draw(st.sampled_from(["int", "str", "tuple"]))]
        ops = [(make(i), i) for i in range(room + extra)]
        ops += [(make(i), ABSENT) for i in range(0, room + extra, 7)]    # some go again
        self._promoted_for_room(lambda: self._apply(ops))

    @precondition(lambda self: self._arena_free() < 300_000)
    @rule(data=st.data())
    def fill_arena(self, data: st.DataObject) -> None:
        """A value bigger than the arena's free bytes."""
        k = self._existing(data)
        value = b"\xab" * (self._arena_free() + 1)
        self._promoted_for_room(lambda: self._apply([(k, value)]))

    # -- the background build -------------------------------------------------

    @precondition(lambda self: not self._building())
    @rule()
    def start_build(self) -> None:
        """Commits and starts copying g in a thread (as the daemon does)."""
        if self.thread is not None:
            self.thread.join()
        self.build = self.writer.begin_build("test", background=True)
        self.committed = dict(self.pending)
        self.committed_seq = self.seq
        self.thread = threading.Thread(target=self.build.run)
        self.thread.start()

    @precondition(lambda self: self._building())
    @rule(slices=st.lists(st.integers(1, 5), max_size=4))
    def publish_build(self, slices: list[int]) -> None:
        """Waits for the copy, catches up a few slices, then replays the
        rest and publishes: g+1 holds every write applied so far, as of
        the writer's seq, and its read table the snapshot's live keys."""
        assert self.thread is not None
        self.thread.join()
        build, w = self.build, self.writer
        for n in slices:
            if w.catch_up(build, n):
                break
        old = w.generation.gen
        snapshot_keys = build.new.view.read_count
        new = w.finish_build(build)
        assert new.gen == old + 1 and w.generation is new and w.building is None
        assert int(snapshot_keys) == int(new.header.read_count)
        assert w.stats.last_promotion.replayed == build.replayed
        assert w.stats.last_promotion.background
        assert set(w.stats.last_promotion.phases_ms) == {"measure", "create", "build",
                                                         "replay", "publish"}
        self.committed = dict(self.pending)
        self.committed_seq = self.seq
        self.check_current(full=True)
        self.take_snapshot()

    @precondition(lambda self: self._building())
    @rule()
    def cancel_build(self) -> None:
        """Thrown away: g stays current and whole, g+1's segment goes."""
        w = self.writer
        gen = w.generation.gen
        new = self.build.new
        w.abort_build(self.build)
        assert w.generation.gen == gen and w.building is None
        assert new is None or new.segment not in segments.map_segments(self.name)
        self.check_current(full=False)


TestBackgroundPromotion = BackgroundMachine.TestCase
TestBackgroundPromotion.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
