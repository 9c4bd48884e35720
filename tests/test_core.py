"""The C core through its Python binding, without the daemon: a writer
(MapWriter) and readers (MapReader, Generation) on real shared memory."""
from __future__ import annotations

import multiprocessing as mp
import random
import uuid
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shmmap._core import ffi, lib
from shmmap.client.reader import MapReader
from shmmap.server.writer import MapWriter
from shmmap.shared import segments
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.errors import CorruptSegmentError
from shmmap.shared.generation import Generation
from shmmap.shared.protocol import batch_blob

CTX = mp.get_context("spawn")

keys = st.one_of(
    st.integers(-2**63, 2**64 - 1), st.text(max_size=6), st.binary(max_size=6),
    st.tuples(st.integers(0, 3), st.text(max_size=2)),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=6)


def _blob(ops: list[tuple[Any, Any, bool]]) -> bytes:
    return batch_blob((encode_key(k), None if delete else encode_value(v))
                      for k, v, delete in ops)


class MapModel(RuleBasedStateMachine):
    """Random stores, deletes, batches, commits and promotions against a
    dict; snapshots taken at random points must keep showing the map as it
    was when they were taken."""

    def __init__(self) -> None:
        super().__init__()
        self.name = f"hyp-{uuid.uuid4().hex[:10]}"
        self.writer = MapWriter(self.name)
        self.reader = MapReader(self.name)
        self.committed: dict[Any, Any] = {}
        self.pending: dict[Any, Any] = {}
        self.snapshots: list[tuple[Generation, int, dict[Any, Any]]] = []

    def teardown(self) -> None:
        self.snapshots.clear()
        self.reader.close()
        self.writer.generation.validate()
        self.writer.close()

    def _apply(self, ops: list[tuple[Any, Any, bool]]) -> None:
        promotions, before = self.writer.stats.promotions, dict(self.pending)
        self.writer.apply(_blob(ops))
        if self.writer.stats.promotions > promotions:
            self.committed = before     # a promotion commits what came before
        for k, v, delete in ops:
            if delete:
                self.pending.pop(k, None)
            else:
                self.pending[k] = v

    @rule(k=keys, v=values)
    def store(self, k: Any, v: Any) -> None:
        self._apply([(k, v, False)])

    @rule(k=keys)
    def delete(self, k: Any) -> None:
        self._apply([(k, None, True)])

    @rule(ops=st.lists(st.tuples(keys, values, st.booleans()), min_size=1, max_size=8))
    def batch(self, ops: list[tuple[Any, Any, bool]]) -> None:
        self._apply(ops)

    @rule(first=st.integers(0, 10**6), n=st.integers(500, 3000))
    def many_new_keys(self, first: int, n: int) -> None:
        """Enough new keys to fill the dirty table: promotes by itself."""
        self._apply([(("bulk", first + i), i, False) for i in range(n)])

    @rule()
    def commit(self) -> None:
        self.writer.commit()
        self.committed = dict(self.pending)

    @rule()
    def promote(self) -> None:
        self.writer.promote()
        self.committed = dict(self.pending)

    @rule()
    def take_snapshot(self) -> None:
        gen, snap = self.reader.pin()
        self.snapshots.append((gen, snap, dict(self.committed)))
        del self.snapshots[:-4]

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    def check_snapshot(self, data: st.DataObject) -> None:
        gen, snap, model = data.draw(st.sampled_from(self.snapshots))
        assert dict(gen.items(snap)) == model
        assert sum(1 for _ in gen.items(snap)) == len(model)      # no duplicate key
        for k in list(model)[:20]:
            assert gen.lookup_raw(encode_key(k), snap) == encode_value(model[k])

    @invariant()
    def reader_sees_committed_state(self) -> None:
        for k in list(self.committed)[:10]:
            assert self.reader.lookup(k, KeyError) == self.committed[k]
        assert len(self.reader) == len(self.committed)


TestMapModel = MapModel.TestCase
TestMapModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                 suppress_health_check=[HealthCheck.too_slow])


# -- writer and readers in different processes --------------------------------

GROUPS, GROUP_SIZE, ACCOUNTS, TOTAL = 20, 8, 10, 10_000


def _writer_process(name: str, ready: Any, stop: Any, out: Any) -> None:
    w = MapWriter(name)
    try:
        rng = random.Random(1)
        accounts = [TOTAL // ACCOUNTS] * ACCOUNTS
        w.apply(_blob([(("acct", i), accounts[i], False) for i in range(ACCOUNTS)]))
        w.commit()
        ready.set()
        n = 0
        while not stop.is_set():
            n += 1
            g = rng.randrange(GROUPS)
            a, b = rng.randrange(ACCOUNTS), rng.randrange(ACCOUNTS)
            amount = rng.randint(0, accounts[a])
            accounts[a] -= amount
            accounts[b] += amount
            ops = [(("g", g, i), n, False) for i in range(GROUP_SIZE)]
            ops += [(("acct", a), accounts[a], False), (("acct", b), accounts[b], False),
                    (("latest",), n, False)]
            ops += [(("x", rng.randrange(500)), "y" * rng.randrange(50), rng.random() < 0.3)
                    for _ in range(3)]
            w.apply(_blob(ops))
            if n % 3 == 0:
                w.commit()
            if n % 200 == 0:
                w.promote()
        w.commit()
        out.put(("writer", n, w.stats.promotions))
    finally:
        ready.set()             # never leave the parent waiting
        w.close()


def _reader_process(name: str, rounds: int, out: Any) -> None:
    r = MapReader(name)
    checks = 0
    try:
        for _ in range(rounds):
            gen, snap = r.pin()
            pairs = list(gen.items(snap))
            seen = dict(pairs)
            assert len(seen) == len(pairs), "a key came twice"
            latest = seen.get(("latest",), 0)
            groups: dict[int, set[int]] = {}
            for k, v in pairs:
                if k[0] == "g":
                    groups.setdefault(k[1], set()).add(v)
                    assert v <= latest, "a value from after the snapshot"
            assert all(len(vs) == 1 for vs in groups.values()), groups
            assert sum(seen[("acct", i)] for i in range(ACCOUNTS)) == TOTAL
            for k in list(seen)[:30]:
                assert gen.lookup_raw(encode_key(k), snap) == encode_value(seen[k])
            now = r.lookup(("acct", 0))
            assert isinstance(now, int)
            checks += 1
        out.put(("reader", checks, None))
    except Exception as exc:
        out.put(("error", repr(exc), None))
    finally:
        r.close()


def test_writer_and_readers_in_separate_processes(map_name: str) -> None:
    ready, stop, out = CTX.Event(), CTX.Event(), CTX.Queue()
    writer = CTX.Process(target=_writer_process, args=(map_name, ready, stop, out))
    writer.start()
    readers: list[Any] = []
    try:
        assert ready.wait(60)
        readers = [CTX.Process(target=_reader_process, args=(map_name, 150, out))
                   for _ in range(2)]
        for p in readers:
            p.start()
        results = [out.get(timeout=120) for _ in readers]
        assert all(kind == "reader" and checks == 150 for kind, checks, _ in results), results
        stop.set()
        kind, batches, promotions = out.get(timeout=60)
        assert kind == "writer" and batches > 0 and promotions > 0
    finally:
        stop.set()
        for p in readers + [writer]:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()


# -- corruption ----------------------------------------------------------------

def _populated_bytes(name: str) -> tuple[bytes, list[bytes]]:
    w = MapWriter(name)
    try:
        ks = [encode_key(k) for k in [*range(300), *(f"s{i}" for i in range(100)), (1, "t")]]
        w.apply(batch_blob((k, encode_value({"v": i, "l": [i] * 3})) for i, k in enumerate(ks)))
        w.commit()
        w.promote()
        w.apply(batch_blob((k, encode_value(i)) for i, k in enumerate(ks[::3])))
        w.apply(batch_blob((k, None) for k in ks[1::7]))
        w.apply(batch_blob((encode_key(("new", i)), encode_value(i)) for i in range(50)))
        w.commit()
        w.generation.validate()
        return bytes(w.generation.mm), ks
    finally:
        w.close()


def _corrupt(data: bytes, rng: random.Random) -> bytearray:
    b = bytearray(data)
    header = ffi.sizeof("struct shm_gen_header")
    for _ in range(rng.randrange(1, 12)):
        where = rng.randrange(header) if rng.random() < 0.3 else rng.randrange(len(b))
        if rng.random() < 0.5:
            b[where] = rng.randrange(256)
        else:                               # a plausible-looking word
            word = rng.choice([0, 1, 2**63, 2**64 - 1, rng.randrange(len(b))])
            where -= where % 8
            b[where:where + 8] = word.to_bytes(8, "little")
    return b


def _read_everything(data: bytes, ks: list[bytes], seed: int, rounds: int, out: Any) -> None:
    """In a child: on every corrupted copy whose header opens, look up every
    key and export everything. A crash shows as the exit code."""
    rng = random.Random(seed)
    opened = 0
    for _ in range(rounds):
        b = _corrupt(data, rng)
        buf = ffi.from_buffer(b)
        view = ffi.new("struct shm_view *")
        if lib.shm_view_open(view, buf, len(b), ffi.NULL, 0) != 0:
            continue
        opened += 1
        for k in ks:
            lib.shm_lookup_at(view, k, len(k), 2**64 - 1)
        x = ffi.new("struct shm_export *")
        x.snap, x.max_items = 2**64 - 1, 64
        kb, vb = ffi.new("uint8_t[]", 1 << 16), ffi.new("uint8_t[]", 1 << 16)
        x.keys, x.keys_cap, x.values, x.values_cap = kb, 1 << 16, vb, 1 << 16
        while lib.shm_export_batch(view, x) == 0:
            pass
        lib.shm_gen_validate(buf, len(b), ffi.NULL, 0)
    out.put(opened)


def test_corruption_is_reported_and_never_crashes(map_name: str) -> None:
    data, ks = _populated_bytes(map_name)
    rng = random.Random(7)
    rejected = 0
    err = ffi.new("char[]", 256)
    for _ in range(400):
        b = _corrupt(data, rng)
        rc = lib.shm_gen_validate(ffi.from_buffer(b), len(b), err, 256)
        if rc != 0:
            rejected += 1
            assert rc == lib.SHM_ECORRUPT and ffi.string(err)
    assert rejected > 200

    # The message names the segment.
    seg = segments.gen_name(map_name, 99)
    mm = segments.create(seg, len(data), 0o600)
    try:
        bad = bytearray(data)
        bad[ffi.sizeof("struct shm_gen_header") + 3] ^= 0xFF     # a read-index slot
        mm[:] = bytes(bad)
        g = Generation(seg, mm)
        with pytest.raises(CorruptSegmentError, match=seg):
            g.validate()
        g.close()
    finally:
        segments.unlink(seg)

    out = CTX.Queue()
    child = CTX.Process(target=_read_everything, args=(data, ks, 11, 1500, out))
    child.start()
    child.join(300)
    assert child.exitcode == 0, f"reading corrupted segments crashed: exit {child.exitcode}"
    assert out.get(timeout=10) > 100


def test_garbage_is_not_a_generation() -> None:
    err = ffi.new("char[]", 256)
    for size in (0, 10, 4096):
        b = bytearray(random.Random(size).randbytes(size))
        assert lib.shm_gen_validate(ffi.from_buffer(b) if size else ffi.NULL, size, err,
                                    256) == lib.SHM_ECORRUPT


# -- hashing -----------------------------------------------------------------------

def _colliding(seed: tuple[int, int], mask: int, want: int) -> list[int]:
    found, target, i = [], None, 0
    while len(found) < want:
        kb = encode_key(i)
        h = lib.shm_hash(seed[0], seed[1], kb, len(kb)) & mask
        if target is None:
            target = h
        if h == target:
            found.append(i)
        i += 1
    return found


def _slot_bits(seed: tuple[int, int], ks: list[int], mask: int) -> set[int]:
    return {lib.shm_hash(seed[0], seed[1], encode_key(k), len(encode_key(k))) & mask
            for k in ks}


def test_colliding_keys_stay_correct_and_another_seed_scatters_them(map_name: str) -> None:
    seed = (0x1234, 0x5678)
    same_start = _colliding(seed, 0xF, 300)          # one start slot in a 16-slot index
    same_16_bits = _colliding(seed, 0xFFFF, 12)      # one slot even at 65536 slots
    ks = same_start + same_16_bits
    w = MapWriter(map_name, seed=seed)
    r: Optional[MapReader] = None
    try:
        w.apply(batch_blob((encode_key(k), encode_value(k * 2)) for k in ks))
        w.commit()
        r = MapReader(map_name)
        assert all(r.lookup(k) == k * 2 for k in ks)
        w.apply(batch_blob((encode_key(k), encode_value(-k)) for k in ks[::2]))
        w.apply(batch_blob((encode_key(k), None) for k in ks[1::5]))
        w.commit()
        w.promote()
        model = {k: (-k if i % 2 == 0 else k * 2) for i, k in enumerate(ks) if i % 5 != 1}
        assert {k: r.lookup(k) for k in model} == model
        assert all(r.lookup(k) is None for i, k in enumerate(ks) if i % 5 == 1)
        assert dict(r.items()) == model
        w.generation.validate()
    finally:
        if r is not None:
            r.close()
        w.close()
    other = (0x9999, 0x1111)
    assert len(_slot_bits(other, same_start, 0xF)) > 8
    assert len(_slot_bits(other, same_16_bits, 0xFFFF)) > 8
    assert len(_slot_bits(seed, same_16_bits, 0xFFFF)) == 1
