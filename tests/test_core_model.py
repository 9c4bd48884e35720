"""The C core against a dict: random stores, deletes, batches, commits,
promotions (requested, and forced by batches that fill the dirty table or
the arena), clears and crash-and-adopt sequences, on real shared memory.

Snapshots taken at random points must keep showing the map exactly as it
was when they were taken -- through lookups at the snapshot and through the
export -- however much is written, promoted or cleared afterwards.
"""
from __future__ import annotations

import os
import uuid
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from shmmap.client.reader import MapReader
from shmmap.server.writer import MapWriter
from shmmap.shared import segments
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.generation import Generation
from shmmap.shared.protocol import batch_blob

ABSENT = object()
MAX_SNAPSHOTS = 5
FULL_CHECK_KEYS = 400        # lookups per full check (the export checks them all)

# Small pools, so that keys come back to be updated and deleted, mixed with
# keys from the whole key space.
small_keys = st.one_of(st.integers(-3, 3), st.sampled_from(["", "a", "b", "é"]),
                       st.sampled_from([b"", b"a", b"\x00"]),
                       st.tuples(st.integers(0, 2), st.sampled_from(["x", b"x"])))
wide_keys = st.recursive(
    st.one_of(st.integers(-2**63, 2**64 - 1), st.text(max_size=12), st.binary(max_size=12),
              st.booleans()),
    lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=6)
keys = st.one_of(small_keys, wide_keys)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=10), st.binary(max_size=10))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=10)


class MapMachine(RuleBasedStateMachine):
    """``pending`` is the writer's state (every applied write), ``committed``
    what readers see; ``seq`` and ``committed_seq`` are the model's."""

    def __init__(self) -> None:
        super().__init__()
        self.name = f"t{os.getpid()}-m{uuid.uuid4().hex[:8]}"
        self.writer: Any = None
        self.reader: Any = None
        self.committed: dict[Any, Any] = {}
        self.pending: dict[Any, Any] = {}
        self.seq = 0
        self.committed_seq = 0
        self.gone: list[Any] = []               # deleted keys, to look up again
        self.snapshots: list[tuple[Generation, int, dict[Any, Any]]] = []

    @initialize(seed=st.one_of(st.none(), st.tuples(st.integers(0, 2**64 - 1),
                                                     st.integers(0, 2**64 - 1))))
    def open_map(self, seed: Any) -> None:
        self.writer = MapWriter(self.name, seed=seed)
        self.reader = MapReader(self.name)
        if seed is not None:
            assert (self.writer.header.seed0, self.writer.header.seed1) == seed

    def teardown(self) -> None:
        try:
            self.snapshots.clear()
            if self.writer is not None:
                self.writer.generation.validate()
        finally:
            if self.reader is not None:
                self.reader.close()
            if self.writer is not None:
                self.writer.close()
            for seg in segments.map_segments(self.name):
                segments.unlink(seg)

    # -- writes -------------------------------------------------------------

    def _apply(self, ops: list[tuple[Any, Any]]) -> None:
        """ops: (key, value) stores and (key, ABSENT) deletes, one batch."""
        w = self.writer
        promotions = w.stats.promotions
        before = dict(self.pending)
        seq = w.apply(batch_blob((encode_key(k), None if v is ABSENT else encode_value(v))
                                 for k, v in ops))
        self.seq += 1
        assert seq == self.seq == w.seq
        if w.stats.promotions > promotions:
            # Promoting for room commits what came before the batch.
            assert w.stats.promotions == promotions + 1
            self.committed = before
            self.committed_seq = self.seq - 1
        self._model_apply(ops)

    def _model_apply(self, ops: list[tuple[Any, Any]]) -> None:
        """The writer's state after the batch ops."""
        for k, v in ops:
            if v is ABSENT:
                if self.pending.pop(k, ABSENT) is not ABSENT:
                    self.gone.append(k)
            else:
                self.pending[k] = v
        del self.gone[:-20]

    def _existing(self, data: st.DataObject) -> Any:
        if self.pending and data.draw(st.booleans()):
            return data.draw(st.sampled_from(list(self.pending)))
        return data.draw(keys)

    @rule(k=keys, v=values)
    def store(self, k: Any, v: Any) -> None:
        self._apply([(k, v)])

    @rule(data=st.data(), v=values)
    def update(self, data: st.DataObject, v: Any) -> None:
        self._apply([(self._existing(data), v)])

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        self._apply([(self._existing(data), ABSENT)])

    @rule(data=st.data(), n=st.integers(1, 12))
    def batch(self, data: st.DataObject, n: int) -> None:
        """Stores and deletes, new and old keys, the same key more than once:
        the last write of a key in a batch wins."""
        ops = []
        for _ in range(n):
            k = self._existing(data)
            ops.append((k, data.draw(st.one_of(st.just(ABSENT), values))))
        self._apply(ops)

    @precondition(lambda self: len(self.pending) < 6000)
    @rule(tag=st.integers(0, 2**32), extra=st.integers(1, 40), data=st.data())
    def fill_dirty_table(self, tag: int, extra: int, data: st.DataObject) -> None:
        """One batch of more new keys than the dirty table has room for: the
        writer promotes by itself before applying it."""
        h = self.writer.generation.header
        room = int(h.dirty_cap) - int(h.dirty_count)
        kind = data.draw(st.sampled_from(["int", "str", "tuple"]))
        make = {"int": lambda i: tag * 100_000 + i, "str": lambda i: f"bulk{tag}-{i}",
                "tuple": lambda i: ("bulk", tag, i)}[kind]
        promotions = dict(self.writer.stats.promotions_by_reason)
        ops = [(make(i), i) for i in range(room + extra)]
        ops += [(make(i), ABSENT) for i in range(0, room + extra, 7)]    # some go again
        self._apply(ops)
        assert (self.writer.stats.promotions_by_reason.get("full", 0)
                == promotions.get("full", 0) + 1)

    @precondition(lambda self: self._arena_free() < 300_000)
    @rule(data=st.data())
    def fill_arena(self, data: st.DataObject) -> None:
        """A value bigger than the arena's free bytes: a promotion first.
        (The arena grows with the live bytes, so only while it is small.)"""
        free = self._arena_free()
        k = self._existing(data)
        full = self.writer.stats.promotions_by_reason.get("full", 0)
        self._apply([(k, b"\xab" * (free + 1))])
        assert self.writer.stats.promotions_by_reason.get("full", 0) == full + 1

    def _arena_free(self) -> int:
        h = self.writer.generation.header
        return int(h.arena_cap) - int(h.arena_used)

    @rule()
    def commit(self) -> None:
        assert self.writer.commit() == self.seq
        self.committed = dict(self.pending)
        self.committed_seq = self.seq
        self.check_current(full=True)
        self.take_snapshot()

    @rule()
    def promote(self) -> None:
        old = self.writer.generation.gen
        new = self.writer.promote()
        assert new.gen == old + 1 and self.writer.generation is new
        assert int(new.header.read_count) == len(self.pending)
        assert int(new.header.dirty_count) == 0
        self.committed = dict(self.pending)
        self.committed_seq = self.seq
        self.check_current(full=True)
        self.take_snapshot()

    @rule()
    def clear(self) -> None:
        self.seq += 1
        assert self.writer.clear() == self.seq
        self.gone.extend(list(self.pending)[:10])
        self.committed, self.pending = {}, {}
        self.committed_seq = self.seq
        self.check_current(full=True)
        self.take_snapshot()

    @rule()
    def crash_and_adopt(self) -> None:
        """The writer goes away without committing its last writes; a new
        one adopts the segments: what was committed stays, nothing else."""
        self.writer.close(remove=False)
        self.writer = None
        self.writer = MapWriter.adopt(self.name)
        self.pending = dict(self.committed)
        self.seq = self.committed_seq
        assert self.writer.seq == self.seq
        self.check_current(full=True)
        self.take_snapshot()

    # -- snapshots ----------------------------------------------------------

    @rule()
    def take_snapshot(self) -> None:
        gen, snap = self.reader.pin()
        assert snap == self.committed_seq
        assert gen.gen == self.writer.generation.gen
        assert self.writer.generation.snapshot() == snap
        # Keep the first snapshot for the whole run and the latest few.
        self.snapshots.append((gen, snap, dict(self.committed)))
        del self.snapshots[1:-MAX_SNAPSHOTS]

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    def check_snapshot(self, data: st.DataObject) -> None:
        gen, snap, model = data.draw(st.sampled_from(self.snapshots))
        self._check_at(gen, snap, model, lookups=FULL_CHECK_KEYS)

    @invariant()
    def snapshots_do_not_change(self) -> None:
        for gen, snap, model in self.snapshots:
            self._check_at(gen, snap, model, lookups=20)

    def _check_at(self, gen: Generation, snap: int, model: dict[Any, Any],
                  lookups: int) -> None:
        pairs = list(gen.items(snap))
        assert len(pairs) == len(model), "a key missing or exported twice"
        assert dict(pairs) == model
        for k in list(model)[-lookups:]:
            assert gen.lookup_raw(encode_key(k), snap) == encode_value(model[k]), k
        for k in self.gone + list(self.pending)[:50]:
            if k not in model:
                assert gen.lookup_raw(encode_key(k), snap) is None, k

    # -- what readers see now ------------------------------------------------

    def check_current(self, full: bool) -> None:
        r, model = self.reader, self.committed
        assert len(r) == len(model)
        sample = list(model) if full else list(model)[-10:]
        for k in sample[:FULL_CHECK_KEYS]:
            assert r.lookup(k, ABSENT) == model[k], k
        for k in self.gone:
            if k not in model:
                assert r.lookup(k, ABSENT) is ABSENT, k
        if full:
            gen, snap = r.pin()
            assert snap == self.committed_seq
            self._check_at(gen, snap, model, lookups=FULL_CHECK_KEYS)

    @invariant()
    def readers_see_the_committed_state(self) -> None:
        if self.reader is not None:
            self.check_current(full=False)

    @invariant()
    def the_writer_sees_its_own_writes(self) -> None:
        w = self.writer
        if w is None:
            return
        for k in list(self.pending)[-10:]:
            assert w.lookup_raw(encode_key(k)) == encode_value(self.pending[k]), k
        for k in self.gone:
            if k not in self.pending:
                assert w.lookup_raw(encode_key(k)) is None, k
        assert int(w.generation.view.live_count) == len(self.pending)

    @invariant()
    def the_generation_is_sound(self) -> None:
        if self.writer is not None and len(self.pending) < 2000:
            self.writer.generation.validate()


TestMapMachine = MapMachine.TestCase
TestMapMachine.settings = settings(
    max_examples=60, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_a_snapshot_survives_everything(map_name: str) -> None:
    """A fixed sequence through every kind of change, with the snapshots it
    takes checked at the end: all of them still read the same."""
    w = MapWriter(map_name)
    r = MapReader(map_name)
    try:
        model: dict[Any, Any] = {}
        snaps: list[tuple[Generation, int, dict[Any, Any]]] = []

        def write(ops: dict[Any, Any], commit: bool = True) -> None:
            w.apply(batch_blob((encode_key(k), None if v is ABSENT else encode_value(v))
                               for k, v in ops.items()))
            if commit:
                w.commit()
                for k, v in ops.items():
                    if v is ABSENT:
                        model.pop(k, None)
                    else:
                        model[k] = v
                snaps.append((*r.pin(), dict(model)))

        write({i: [i, {"sq": i * i}] for i in range(100)})
        write({i: None for i in range(0, 100, 3)})
        write({i: ABSENT for i in range(0, 100, 5)})
        w.promote()
        snaps.append((*r.pin(), dict(model)))
        write({("t", i): b"x" * i for i in range(2000)})         # promotes for room
        write({"uncommitted": 1}, commit=False)                   # never seen by snapshots
        w.commit()
        model["uncommitted"] = 1
        w.clear()
        model = {}
        snaps.append((*r.pin(), {}))
        write({"after clear": 1.5, (): -2**63, 2**64 - 1: {"é": [None, b""]}})
        gens = {g.gen for g, _, _ in snaps}
        assert len(gens) >= 4, gens
        for gen, snap, expect in snaps:
            assert dict(gen.items(snap)) == expect
            for k, v in expect.items():
                assert gen.lookup_raw(encode_key(k), snap) == encode_value(v)
            assert gen.lookup_raw(encode_key("uncommitted"), snap) is None
        w.generation.validate()
        for gen, _, _ in snaps:
            gen.validate()          # superseded, unlinked, still mapped and sound
    finally:
        r.close()
        w.close()
