"""The C core's side of the cache, without a daemon: the map header's
version word, and the delta scan (shm_delta_batch through
generation.Changes) -- each changed key once, at its snapshot, nothing
past it -- and a scan of garbage that ends in an error, never in a read or
a write out of bounds."""
from __future__ import annotations

import random
from typing import Any, Iterator

import pytest

from shmmap._core import ffi, lib
from shmmap.client.reader import MapReader
from shmmap.server.writer import MapWriter
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.generation import Changes
from shmmap.shared.protocol import batch_blob
from test_core_trust import _in_child

GUARD = 64                      # bytes past each buffer that must stay untouched


def _blob(items: dict[Any, Any]) -> bytes:
    return batch_blob((encode_key(k), None if v is None else encode_value(v))
                      for k, v in items.items())


def _flat(found: tuple[list, list, list]) -> tuple[dict[Any, Any], set[Any]]:
    stored_keys, stored_values, dead = found
    pairs = [p for ks, vs in zip(stored_keys, stored_values) for p in zip(ks, vs)]
    keys = [k for k, _ in pairs] + [k for ks in dead for k in ks]
    assert len(keys) == len(set(keys)), "a key reported twice"
    return dict(pairs), {k for ks in dead for k in ks}


def test_the_version_word_moves_on_every_commit_and_publication(map_name: str) -> None:
    w = MapWriter(map_name)
    try:
        seen = [lib.shm_map_version(w.header)]
        w.apply(_blob({1: 1}))
        assert lib.shm_map_version(w.header) == seen[-1]   # applied, not committed
        w.commit()
        seen.append(lib.shm_map_version(w.header))
        w.commit()                                          # nothing new: unchanged
        assert lib.shm_map_version(w.header) == seen[-1]
        w.promote()
        seen.append(lib.shm_map_version(w.header))
        w.clear()
        seen.append(lib.shm_map_version(w.header))
        assert seen == sorted(set(seen)), seen
        version = seen[-1]
        w.close(remove=False)
        w = MapWriter.adopt(map_name)                       # a restarted daemon goes on
        assert lib.shm_map_version(w.header) > version
    finally:
        w.close()


@pytest.fixture
def writer_reader(map_name: str) -> Iterator[tuple[MapWriter, MapReader]]:
    w = MapWriter(map_name)
    r = MapReader(map_name)
    try:
        yield w, r
    finally:
        r.close()
        w.close()


def test_a_scan_reports_each_changed_key_once_as_of_its_snapshot(
        writer_reader: tuple[MapWriter, MapReader]) -> None:
    w, r = writer_reader
    w.apply(_blob({i: i for i in range(100)}))
    w.commit()
    gen = r.refresh()
    changes = Changes(gen, gen.snapshot())
    assert _flat(changes.scan(gen.snapshot())) == ({}, set())
    w.apply(_blob({1: "a", 2: None, 200: "new"}))
    w.apply(_blob({1: "b", 201: "gone"}))
    w.apply(_blob({201: None, 3: [1, 2]}))
    snap = gen.snapshot()                   # nothing committed yet
    assert _flat(changes.scan(snap)) == ({}, set())
    w.commit()
    w.apply(_blob({4: "later"}))            # applied after: not in this scan
    stored, dead = _flat(changes.scan(gen.snapshot()))
    assert stored == {1: "b", 200: "new", 3: [1, 2]}
    assert dead == {2, 201}
    w.commit()
    assert _flat(changes.scan(gen.snapshot())) == ({4: "later"}, set())
    # Big values and many keys: the buffers grow, every key still once.
    big = {i: "x" * (i % 120) for i in range(500)}      # over 16 KiB of values
    w.apply(_blob(big))
    w.commit()
    assert not lib.shm_superseded(gen.view)             # the same generation took it
    stored, dead = _flat(changes.scan(gen.snapshot()))
    assert stored == big and dead == set()


def test_a_scan_from_a_promoted_generation_starts_past_its_build(
        writer_reader: tuple[MapWriter, MapReader]) -> None:
    w, r = writer_reader
    w.apply(_blob({i: i for i in range(50)}))
    w.promote()
    gen = r.refresh()
    changes = Changes(gen, gen.base_seq())
    w.apply(_blob({7: "seven", 60: "sixty", 8: None}))
    w.commit()
    assert _flat(changes.scan(gen.snapshot())) == ({7: "seven", 60: "sixty"}, {8})


def _guarded(cap: int) -> Any:
    buf = ffi.new("uint8_t[]", cap + GUARD)
    ffi.memmove(ffi.cast("uint8_t *", buf) + cap, b"\xa5" * GUARD, GUARD)
    return buf


def _scan_garbage(data: bytes, seed: int, rounds: int) -> None:
    """Flips bytes of a copy of a generation (header kept) and scans it
    with small guarded buffers: each scan ends with a status, and writes
    nothing past a buffer."""
    rng = random.Random(seed)
    h = ffi.cast("struct shm_gen_header *", ffi.from_buffer(data))
    # Mostly where the scan reads: the dirty entries and the arena's tail.
    spans = [(int(h.entries_off) + int(h.read_count) * ffi.sizeof("struct shm_entry"),
              int(h.arena_off)),
             (int(h.arena_off) + int(h.base_arena), int(h.arena_off) + int(h.committed_arena))]
    ok = {0, 1, lib.SHM_EBUFSMALL, lib.SHM_ECORRUPT}
    refused = 0
    for _ in range(rounds):
        copy = bytearray(data)
        for _ in range(rng.randrange(1, 40)):
            lo, hi = rng.choice(spans)
            copy[rng.randrange(lo, hi)] = rng.randrange(256)
        base = ffi.from_buffer(copy)
        view = ffi.new("struct shm_view *")
        assert lib.shm_view_open(view, base, len(copy), ffi.NULL, 0) == lib.SHM_OK
        x = ffi.new("struct shm_delta *")
        lib.shm_delta_start(view, x)
        x.since, x.snap = 0, (1 << 63) - 1
        cap = rng.choice([8, 64, 512])
        bufs = [_guarded(cap) for _ in range(3)]
        x.keys, x.values, x.dead = bufs
        x.keys_cap = x.values_cap = x.dead_cap = cap
        for _ in range(10_000):                 # each call moves on, or ends
            rc = lib.shm_delta_batch(view, x)
            assert rc in ok, rc
            for b in bufs:
                assert ffi.buffer(b, cap + GUARD)[cap:] == b"\xa5" * GUARD
            if rc != 0:
                refused += rc == lib.SHM_ECORRUPT
                break
    assert refused > rounds // 10, f"only {refused} of {rounds} scans found the garbage"


def test_a_scan_of_garbage_ends_in_a_status_never_out_of_bounds(map_name: str) -> None:
    w = MapWriter(map_name)
    try:
        w.apply(_blob({i: "v" * (i % 7) for i in range(300)}))
        w.commit()
        for i in range(200):
            w.apply(_blob({i % 50: i, (i, "k"): None if i % 3 else [i]}))
        w.commit()
        data = bytes(w.generation.mm)
    finally:
        w.close()
    _in_child(_scan_garbage, data, 1, 300)
