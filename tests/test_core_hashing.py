"""Hashing: shm_hash is SipHash-1-3 keyed with the map's seed, and keys that
collide under one seed -- the same start slot in every index, even the same
32-bit tag -- stay correct through inserts, updates, deletes and
promotions, while under another seed the same keys scatter.
"""
from __future__ import annotations

import random
from itertools import count
from typing import Any, Iterable, Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import remove_map, unique_map_name
from shmmap._core import lib
from shmmap.client.reader import MapReader
from shmmap.server.writer import MapWriter
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.protocol import batch_blob

M64 = (1 << 64) - 1
ABSENT = object()
# A seed under which two int keys below 20,000 share their 32-bit tag and
# their start slot in a 16-slot index (found by search once; the test
# searches again, so with another hash it is only slower).
SEED = (0x5EED0000 + 270, 0xC0FFEE)
OTHER_SEED = (0x0123456789ABCDEF, 0xFEDCBA9876543210)
TAG_SHIFT = lib.SHM_SLOT_TAG_SHIFT
INDEX_MASK = lib.SHM_SLOT_INDEX_MASK


# -- a reference SipHash ------------------------------------------------------

def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & M64


def _round(v: list[int]) -> None:
    v[0] = (v[0] + v[1]) & M64
    v[1] = _rotl(v[1], 13) ^ v[0]
    v[0] = _rotl(v[0], 32)
    v[2] = (v[2] + v[3]) & M64
    v[3] = _rotl(v[3], 16) ^ v[2]
    v[0] = (v[0] + v[3]) & M64
    v[3] = _rotl(v[3], 21) ^ v[0]
    v[2] = (v[2] + v[1]) & M64
    v[1] = _rotl(v[1], 17) ^ v[2]
    v[2] = _rotl(v[2], 32)


def siphash(k0: int, k1: int, data: bytes, c: int, d: int) -> int:
    """SipHash-c-d as the paper (Aumasson, Bernstein 2012) defines it."""
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D,
         k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]
    n = len(data)
    tail = data[n - n % 8:] + bytes(7 - n % 8) + bytes([n & 0xFF])
    blocks = [data[i:i + 8] for i in range(0, n - n % 8, 8)] + [tail]
    for block in blocks:
        m = int.from_bytes(block, "little")
        v[3] ^= m
        for _ in range(c):
            _round(v)
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(d):
        _round(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def test_the_reference_is_siphash() -> None:
    """The paper's test vector: key 00..0f, message 00..0e, SipHash-2-4."""
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    assert siphash(k0, k1, bytes(range(15)), 2, 4) == 0xA129CA6149BE45E5


def shm_hash(seed: tuple[int, int], kb: bytes) -> int:
    return int(lib.shm_hash(seed[0], seed[1], kb, len(kb)))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, M64), st.integers(0, M64), st.binary(max_size=80))
def test_shm_hash_is_siphash_1_3_keyed_with_the_seed(s0: int, s1: int, data: bytes) -> None:
    assert shm_hash((s0, s1), data) == siphash(s0, s1, data, 1, 3)


def test_the_hash_depends_on_the_seed_and_on_every_byte() -> None:
    rng = random.Random(3)
    for n in list(range(0, 20)) + [63, 64, 65, 300]:
        data = rng.randbytes(n)
        h = shm_hash(SEED, data)
        assert shm_hash(OTHER_SEED, data) != h
        assert shm_hash((SEED[0], SEED[1] ^ 1), data) != h
        assert shm_hash((SEED[0] ^ (1 << 63), SEED[1]), data) != h
        assert shm_hash(SEED, data + b"\x00") != h          # trailing zeros count
        for i in range(n):
            flipped = bytearray(data)
            flipped[i] ^= 1 << rng.randrange(8)
            assert shm_hash(SEED, bytes(flipped)) != h


# -- finding keys that collide ---------------------------------------------------

def candidates() -> Iterable[Any]:
    """Keys of every kind, endlessly."""
    for i in count():
        yield (i, -i - 1, f"k{i}", f"é{i}".encode(), ("t", i), (i, (b"x", str(i))))[i % 6]


def colliding(seed: tuple[int, int], mask: int, want: int,
              source: Optional[Iterable[Any]] = None) -> tuple[int, list[Any]]:
    """want keys whose hashes agree on the bits of mask: one start slot in
    every index of up to mask + 1 slots. Returns (those bits, keys)."""
    first: Optional[int] = None
    found: list[Any] = []
    for k in source if source is not None else candidates():
        bits = shm_hash(seed, encode_key(k)) & mask
        if first is None:
            first = bits
        if bits == first:
            found.append(k)
            if len(found) == want:
                return first, found
    raise AssertionError("ran out of candidates")


def same_tag_pair(seed: tuple[int, int], mask: int, limit: int) -> tuple[int, int]:
    """Two int keys whose hashes share the 32-bit tag and the start slot
    under mask, but differ (the probe must compare whole hashes)."""
    seen: dict[tuple[int, int], int] = {}
    for i in range(limit):
        h = shm_hash(seed, encode_key(i))
        k = (h >> TAG_SHIFT, h & mask)
        if k in seen:
            return seen[k], i
        seen[k] = i
    raise AssertionError(f"no pair among {limit} keys")


# -- looking at the index itself ---------------------------------------------------

def index_of(view: Any, which: str) -> tuple[Any, int]:
    if which == "read":
        return view.read_index, int(view.read_mask) + 1
    return view.dirty_index, int(view.dirty_mask) + 1


def run_at(view: Any, which: str, start: int, key_bits: int, mask: int) -> int:
    """How many consecutive slots from start hold entries whose hash has
    key_bits under mask: the cluster the colliding keys form."""
    index, slots = index_of(view, which)
    n = 0
    while n < slots:
        slot = int(index[(start + n) % slots])
        if slot == 0:
            break
        e = (slot & INDEX_MASK) - 1
        h = int(view.entries[e].hash)
        assert (slot >> TAG_SHIFT) == (h >> TAG_SHIFT), "a slot's tag is its entry's"
        if h & mask != key_bits:
            break
        n += 1
    return n


def longest_run(view: Any, which: str) -> int:
    index, slots = index_of(view, which)
    best = cur = 0
    for i in range(2 * slots):
        cur = cur + 1 if int(index[i % slots]) != 0 else 0
        best = max(best, min(cur, slots))
    return best


class Harness:
    """A writer, a reader and the model they must agree with."""

    def __init__(self, name: str, seed: tuple[int, int]) -> None:
        self.w = MapWriter(name, seed=seed)
        self.r = MapReader(name)
        self.model: dict[Any, Any] = {}
        self.gone: set[Any] = set()

    def write(self, ops: dict[Any, Any]) -> None:
        self.w.apply(batch_blob((encode_key(k), None if v is ABSENT else encode_value(v))
                                for k, v in ops.items()))
        self.w.commit()
        for k, v in ops.items():
            if v is ABSENT:
                self.model.pop(k, None)
                self.gone.add(k)
            else:
                self.model[k] = v
                self.gone.discard(k)

    def check(self, also_absent: Iterable[Any] = ()) -> None:
        r, model = self.r, self.model
        for k, v in model.items():
            assert r.lookup(k, ABSENT) == v, k
        for k in set(also_absent) | self.gone:
            if k not in model:
                assert r.lookup(k, ABSENT) is ABSENT, k
        gen, snap = r.pin()
        pairs = list(gen.items(snap))
        assert len(pairs) == len(model) and dict(pairs) == model
        assert len(r) == len(model)
        self.w.generation.validate()
        for k, v in list(model.items())[:20]:
            assert gen.lookup_raw(encode_key(k), snap) == encode_value(v)

    def close(self) -> None:
        self.r.close()
        self.w.close()


def test_keys_with_one_start_slot_stay_correct(map_name: str) -> None:
    mask = 0x7FF            # the dirty index of a new generation has 2048 slots
    bits, keys = colliding(SEED, mask, 60)
    inserted, spare = keys[:45], keys[45:]
    hz = Harness(map_name, SEED)
    try:
        view = hz.w.generation.view
        assert int(view.dirty_mask) == mask and int(view.read_mask) + 1 == lib.SHM_MIN_SLOTS
        hz.write({k: [i, str(k)] for i, k in enumerate(inserted)})
        # They really sit in one cluster that starts at their common slot.
        assert run_at(view, "dirty", bits, bits, mask) == len(inserted)
        hz.check(also_absent=spare)

        hz.write({k: {"v": -i} for i, k in enumerate(inserted[::2])})       # updates
        hz.write({k: ABSENT for k in inserted[1::3]})                      # deletes
        hz.write({k: None for k in inserted[1::9]})                        # back again
        hz.check(also_absent=spare)

        # Promotion: a read index small enough that they share a start slot.
        g = hz.w.promote()
        view = g.view
        assert int(g.header.read_count) == len(hz.model)
        read_mask = int(view.read_mask)
        assert read_mask < mask
        assert run_at(view, "read", bits & read_mask, bits & read_mask, read_mask) \
            == len(hz.model)
        hz.check(also_absent=spare)

        # New colliding keys go to the dirty index, old ones are updated in
        # place in the read table, some deleted, then all promoted again.
        hz.write({k: i for i, k in enumerate(spare)})
        hz.write({k: ABSENT for k in list(hz.model)[::4]})
        hz.write({k: "again" for k in list(hz.model)[1::4]})
        assert run_at(view, "dirty", bits, bits, mask) == len(spare)
        hz.check()
        hz.w.promote()
        hz.check()
    finally:
        hz.close()


def test_a_16_slot_index_full_of_one_start_slot_and_one_tag(map_name: str) -> None:
    """A read table of 16 slots whose keys all start at one slot, two of
    them with the same 32-bit tag: a probe must compare whole hashes."""
    mask = 0xF
    a, b = same_tag_pair(SEED, mask, 1_000_000)
    ha, hb = shm_hash(SEED, encode_key(a)), shm_hash(SEED, encode_key(b))
    assert ha != hb and ha >> TAG_SHIFT == hb >> TAG_SHIFT and ha & mask == hb & mask
    bits = ha & mask
    _, others = colliding(SEED, mask, 6, (k for k in candidates() if k not in (a, b)
                                          and shm_hash(SEED, encode_key(k)) & mask == bits))
    hz = Harness(map_name, SEED)
    try:
        hz.write({a: "a"})
        g = hz.w.promote()
        assert int(g.view.read_mask) == mask
        # b's probe starts at a's slot: the tag matches, the entry does not.
        slot = int(g.view.read_index[bits])
        assert slot >> TAG_SHIFT == hb >> TAG_SHIFT
        assert int(g.view.entries[(slot & INDEX_MASK) - 1].hash) == ha
        hz.check(also_absent=[b])

        hz.write({b: "b"})                          # into the dirty index
        hz.check()
        hz.write({k: i for i, k in enumerate(others)})
        g = hz.w.promote()                          # 8 keys: still 16 slots
        assert int(g.view.read_mask) == mask and int(g.header.read_count) == 8
        assert run_at(g.view, "read", bits, bits, mask) == 8
        hz.check()
        hz.write({a: ABSENT})
        assert hz.r.lookup(b) == "b"
        hz.write({b: "b2", a: "a2"})
        hz.check()
        hz.write({a: ABSENT, b: ABSENT})
        hz.w.promote()
        hz.check(also_absent=[a, b])
    finally:
        hz.close()


def test_another_seed_scatters_the_same_keys(map_name: str) -> None:
    mask = 0x7FF
    bits, keys = colliding(SEED, mask, 45)
    assert {shm_hash(SEED, encode_key(k)) & mask for k in keys} == {bits}
    # Under another seed their low bits differ: many start slots.
    assert len({shm_hash(OTHER_SEED, encode_key(k)) & 0xF for k in keys}) >= 10
    assert len({shm_hash(OTHER_SEED, encode_key(k)) & mask for k in keys}) >= 40
    # And in a real map with that seed, no cluster forms.
    hz = Harness(map_name, OTHER_SEED)
    try:
        hz.write({k: 1 for k in keys})
        assert longest_run(hz.w.generation.view, "dirty") < 8
        hz.check()
    finally:
        hz.close()


def test_entries_carry_the_keyed_hash_of_their_key(map_name: str) -> None:
    keys = [0, -1, 2**64 - 1, "", "é", b"\x00", (1, ("a", b"b"))]
    hz = Harness(map_name, SEED)
    try:
        w = hz.w
        assert (int(w.header.seed0), int(w.header.seed1)) == SEED
        hz.write({k: repr(k) for k in keys})
        for promote in (False, True):
            # (The writer unmaps the generation it promotes from: take the
            # current one each time, never hold on to an old one.)
            g = w.promote() if promote else w.generation
            view = g.view
            assert (int(g.header.seed0), int(g.header.seed1)) == SEED
            n = int(g.header.read_count) + int(g.header.dirty_count)
            hashes = {bytes(g.mm[int(view.entries[e].key_off):int(view.entries[e].key_off)
                                 + int(view.entries[e].key_len)]): int(view.entries[e].hash)
                      for e in range(n)}
            assert hashes == {encode_key(k): shm_hash(SEED, encode_key(k)) for k in keys}
        hz.check()
    finally:
        hz.close()


@settings(max_examples=12, deadline=None)
@given(seed=st.tuples(st.integers(0, M64), st.integers(0, M64)),
       mask=st.sampled_from([0xF, 0x3F, 0xFF]), n=st.integers(2, 30),
       ops=st.lists(st.tuples(st.integers(0, 29), st.sampled_from(["set", "del", "promote"])),
                    max_size=40))
def test_colliding_keys_under_any_seed(seed: tuple[int, int], mask: int, n: int,
                                       ops: list[tuple[int, str]]) -> None:
    bits, keys = colliding(seed, mask, n)
    name = unique_map_name("h")
    hz: Optional[Harness] = None
    try:
        hz = Harness(name, seed)
        hz.write({k: 0 for k in keys})
        view = hz.w.promote().view
        rm = int(view.read_mask)
        if rm <= mask:          # the read index is small enough for one start slot
            assert run_at(view, "read", bits & rm, bits & rm, rm) == n
        for i, (j, op) in enumerate(ops):
            k = keys[j % n]
            if op == "set":
                hz.write({k: i})
            elif op == "del":
                hz.write({k: ABSENT})
            else:
                hz.w.promote()
        hz.check(also_absent=keys)
        hz.w.promote()
        hz.check(also_absent=keys)
    finally:
        if hz is not None:
            hz.close()
        remove_map(name)

