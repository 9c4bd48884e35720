"""Corrupt generation segments: a generation's bytes are untrusted input.

shm_gen_validate (what a daemon runs before it adopts segments) must refuse
every segment that is not sound, with a message -- CorruptSegmentError
naming the segment, through the Python layer -- and accept the sound ones.
Readers never validate whole segments, so lookups and exports on any
corrupted segment whose header passes shm_view_open must never crash or
read outside it; they run in a child process, where a crash is an exit
code and not a dead pytest.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import random
import struct
from typing import Any, Callable, Optional

import pytest

from shmmap._core import ffi, lib
from shmmap.client.reader import MapReader
from shmmap.server.writer import MapWriter
from shmmap.shared import segments
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.errors import CorruptSegmentError
from shmmap.shared.generation import Generation
from shmmap.shared.protocol import batch_blob

CTX = mp.get_context("spawn")
ERR_LEN = 256
LATEST = 2**64 - 1
SEED = (0x1111, 0x2222)
ROUNDS = 1200             # random corruptions each child reads
CHILDREN = 2
CHILD_TIMEOUT = 120

HDR = {f: ffi.offsetof("struct shm_gen_header", f) for f in (
    "magic", "layout_version", "header_size", "gen", "segment_size", "base_seq",
    "read_count", "dirty_cap", "read_slots", "dirty_slots", "entry_cap", "arena_cap",
    "read_index_off", "dirty_index_off", "entries_off", "arena_off", "committed_seq",
    "dirty_count", "arena_used", "live_count", "superseded")}
HEADER_SIZE = ffi.sizeof("struct shm_gen_header")
ENTRY = ffi.sizeof("struct shm_entry")
ENTRY_FIELD = {f: ffi.offsetof("struct shm_entry", f) for f in ("hash", "key_off", "key_len",
                                                                 "head")}
REC = {f: ffi.offsetof("struct shm_record", f) for f in ("seq", "prev", "len", "flags")}


def u64(b: bytes | bytearray, off: int) -> int:
    return int(struct.unpack_from("<Q", b, off)[0])


def put64(b: bytearray, off: int, v: int) -> None:
    struct.pack_into("<Q", b, off, v & (2**64 - 1))


def put32(b: bytearray, off: int, v: int) -> None:
    struct.pack_into("<I", b, off, v & (2**32 - 1))


class Layout:
    """Where the parts of a (sound) generation's bytes are."""

    def __init__(self, data: bytes | bytearray) -> None:
        h = {f: u64(data, off) for f, off in HDR.items() if f not in ("layout_version",
                                                                       "header_size")}
        self.h = h
        self.read_slots, self.dirty_slots = h["read_slots"], h["dirty_slots"]
        self.read_index, self.dirty_index = h["read_index_off"], h["dirty_index_off"]
        self.entries, self.arena = h["entries_off"], h["arena_off"]
        self.n_entries = h["read_count"] + h["dirty_count"]
        self.arena_end = self.arena + h["arena_used"]
        self.size = h["segment_size"]

    def entry(self, e: int, field: str) -> int:
        return self.entries + e * ENTRY + ENTRY_FIELD[field]

    def regions(self) -> list[tuple[int, int]]:
        """The parts in use: header, the indexes, the entries, the arena."""
        return [(0, HEADER_SIZE), (self.read_index, self.read_index + 8 * self.read_slots),
                (self.dirty_index, self.dirty_index + 8 * self.dirty_slots),
                (self.entries, self.entries + ENTRY * self.n_entries),
                (self.arena, self.arena_end)]

    def used_slots(self, data: bytes | bytearray, which: str) -> list[int]:
        base, n = ((self.read_index, self.read_slots) if which == "read"
                   else (self.dirty_index, self.dirty_slots))
        return [base + 8 * i for i in range(n) if u64(data, base + 8 * i)]


# -- a generation with some of everything -------------------------------------

def populated(name: str) -> tuple[bytes, list[bytes]]:
    """A generation's bytes: a read table and a dirty table, version chains,
    tombstones, keys and values of every kind, and writes applied but not
    committed. Returns the bytes and the encoded keys it has ever held."""
    w = MapWriter(name, seed=SEED)
    try:
        keys = ([*range(-20, 150), *(f"s{i}é" for i in range(60)), *(b"b%d" % i for i in range(20)),
                 *((i, ("t", b"u")) for i in range(20)), 2**64 - 1, -2**63])
        kb = [encode_key(k) for k in keys]

        def write(pairs: list[tuple[bytes, Optional[bytes]]], commit: bool = True) -> None:
            w.apply(batch_blob(pairs))
            if commit:
                w.commit()

        write([(k, encode_value({"i": i, "l": [i, None, 1.5, "x" * (i % 7)]}))
               for i, k in enumerate(kb)])
        w.promote()                                            # the read table
        write([(k, encode_value(i)) for i, k in enumerate(kb[::3])])          # chains
        write([(k, encode_value([b"v" * (i % 50)])) for i, k in enumerate(kb[::5])])
        write([(k, None) for k in kb[1::7]])                                  # tombstones
        fresh = [encode_key(("new", i)) for i in range(40)]
        write([(k, encode_value({"new": i})) for i, k in enumerate(fresh)])  # dirty table
        write([(k, None) for k in fresh[::4]])
        write([(k, encode_value("back")) for k in kb[1::14]])                 # after deletion
        write([(k, encode_value("uncommitted")) for k in kb[::11]] +
              [(encode_key("only-uncommitted"), encode_value(1))], commit=False)
        g = w.generation
        g.validate()
        assert int(g.header.dirty_count) > 0 and int(g.header.read_count) > 0
        return bytes(g.mm), kb + fresh + [encode_key("only-uncommitted")]
    finally:
        w.close()


@pytest.fixture(scope="module")
def sound() -> tuple[bytes, list[bytes]]:
    from conftest import remove_map, unique_map_name
    name = unique_map_name("c")
    try:
        return populated(name)
    finally:
        remove_map(name)


def open_and_validate(seg: str, mm: Any) -> None:
    """Generation(seg, mm).validate(), unmapping mm in every case."""
    g = Generation(seg, mm)          # closes mm itself when the header is bad
    try:
        g.validate()
    finally:
        g.close()


def validate(b: bytes | bytearray) -> tuple[int, str]:
    err = ffi.new("char[]", ERR_LEN)
    rc = lib.shm_gen_validate(ffi.from_buffer(b), len(b), err, ERR_LEN)
    return rc, ffi.string(err).decode(errors="replace")


def test_the_sound_segment_passes(sound: tuple[bytes, list[bytes]]) -> None:
    data, _ = sound
    assert validate(bytearray(data)) == (0, "")
    lay = Layout(data)
    assert lay.h["committed_seq"] > lay.h["base_seq"] > 0
    # The writes applied but not committed are there, above committed_seq.
    heads = [u64(data, lay.entry(e, "head")) for e in range(lay.n_entries)]
    assert any(u64(data, at + REC["seq"]) > lay.h["committed_seq"] for at in heads if at)


# -- corruptions whose reason is known ------------------------------------------

def _str_key_entry(data: bytes, lay: Layout) -> int:
    for e in range(lay.n_entries):
        off = u64(data, lay.entry(e, "key_off"))
        if 0xA2 <= data[off] <= 0xBF:                # a fixstr of 2+ bytes
            return e
    raise AssertionError("no str key")


def _u32(b: bytes | bytearray, off: int) -> int:
    return int(struct.unpack_from("<I", b, off)[0])


def _record_with_value(data: bytes | bytearray, lay: Layout, versions: int = 1) -> int:
    """The head record of an entry whose head holds a value (not a
    tombstone) and whose chain has at least versions records."""
    for e in range(lay.n_entries):
        head = at = u64(data, lay.entry(e, "head"))
        n = 0
        while at:
            n += 1
            at = u64(data, at + REC["prev"])
        if head and n >= versions and _u32(data, head + REC["len"]) > 0 \
                and _u32(data, head + REC["flags"]) == 0:
            return head
    raise AssertionError("no such record")


Mutation = Callable[[bytearray, Layout], None]


def _set(field: str, value: Callable[[Layout], int]) -> Mutation:
    return lambda b, lay: put64(b, HDR[field], value(lay))


def _slot(which: str, value: Callable[[int, Layout], int]) -> Mutation:
    def m(b: bytearray, lay: Layout) -> None:
        at = lay.used_slots(b, which)[0]
        put64(b, at, value(u64(b, at), lay))
    return m


def _entry(field: str, value: Callable[[int, Layout, bytearray], int], e: int = 0) -> Mutation:
    def m(b: bytearray, lay: Layout) -> None:
        at = lay.entry(e, field)
        if field == "key_len":
            put32(b, at, value(int(struct.unpack_from("<I", b, at)[0]), lay, b))
        else:
            put64(b, at, value(u64(b, at), lay, b))
    return m


def _head_record(field: str, value: Callable[[int, int], int], versions: int = 1
                 ) -> Mutation:
    """Sets a field of a head record to value(old, record offset)."""
    def m(b: bytearray, lay: Layout) -> None:
        at = _record_with_value(b, lay, versions)
        if field in ("len", "flags"):
            put32(b, at + REC[field], value(_u32(b, at + REC[field]), at))
        else:
            put64(b, at + REC[field], value(u64(b, at + REC[field]), at))
    return m


def _key_byte(b: bytearray, lay: Layout) -> None:
    off = u64(b, lay.entry(_str_key_entry(bytes(b), lay), "key_off"))
    b[off + 1] = 0xFF                               # not UTF-8 any more


def _key_other(b: bytearray, lay: Layout) -> None:
    off = u64(b, lay.entry(_str_key_entry(bytes(b), lay), "key_off"))
    b[off + 1] = ord("Z") if b[off + 1] != ord("Z") else ord("Y")     # another valid key


def _value_byte(b: bytearray, lay: Layout) -> None:
    b[_record_with_value(bytes(b), lay) + lib.SHM_REC_HEADER] = 0xC1


def _duplicate_entry(b: bytearray, lay: Layout) -> None:
    """Entry 1 becomes a copy of entry 0, and its slot carries the copied
    hash's tag: two entries, one key."""
    b[lay.entry(1, "hash"):lay.entry(1, "hash") + ENTRY] = \
        b[lay.entry(0, "hash"):lay.entry(0, "hash") + ENTRY]
    for at in lay.used_slots(b, "read"):
        if u64(b, at) & 0xFFFF_FFFF == 2:
            put64(b, at, (u64(b, lay.entry(0, "hash")) & ~0xFFFF_FFFF) | 2)
            return
    raise AssertionError("entry 1 has no slot")


def _unindexed(b: bytearray, lay: Layout) -> None:
    """The slot of entry 0 is emptied: nothing leads to it."""
    for at in lay.used_slots(b, "read"):
        if u64(b, at) & 0xFFFF_FFFF == 1:
            put64(b, at, 0)
            return
    raise AssertionError("entry 0 has no slot")


KNOWN: list[tuple[str, Mutation, str]] = [
    ("magic", _set("magic", lambda lay: 0x1234), "bad magic"),
    ("version", lambda b, lay: put32(b, HDR["layout_version"], 99), "layout version 99"),
    ("header size", lambda b, lay: put32(b, HDR["header_size"], 64), "header size"),
    ("segment size", _set("segment_size", lambda lay: lay.size + 8), "the segment has"),
    ("read slots", _set("read_slots", lambda lay: lay.read_slots + 1), "powers of two"),
    ("dirty slots", _set("dirty_slots", lambda lay: 8), "powers of two"),
    ("read count", _set("read_count", lambda lay: lay.read_slots), "entry counts"),
    ("dirty cap", _set("dirty_cap", lambda lay: lay.dirty_slots), "entry counts"),
    ("entry cap", _set("entry_cap", lambda lay: lay.h["read_count"]), "entry counts"),
    ("huge entry cap", _set("entry_cap", lambda lay: 2**40), "entry counts"),
    ("arena cap", _set("arena_cap", lambda lay: lay.size), "overlap or run past"),
    ("arena off", _set("arena_off", lambda lay: lay.size + 8), "overlap or run past"),
    ("misaligned arena", _set("arena_off", lambda lay: lay.arena + 1), "overlap or run past"),
    ("entries over index", _set("entries_off", lambda lay: lay.dirty_index),
     "overlap or run past"),
    ("huge read slots", _set("read_slots", lambda lay: 2**62), "overlap or run past"),
    ("dirty count", _set("dirty_count", lambda lay: lay.h["dirty_cap"] + 1), "dirty_count"),
    ("arena used", _set("arena_used", lambda lay: lay.h["arena_cap"] + 8), "arena_used"),
    ("committed seq", _set("committed_seq", lambda lay: lay.h["base_seq"] - 1),
     "below base_seq"),
    ("superseded", _set("superseded", lambda lay: 2), "superseded is 2"),
    ("slot entry", _slot("read", lambda s, lay: (s & ~0xFFFF_FFFF) | 0xFFFF_FFF0),
     "read index slot"),
    ("slot into dirty", _slot("read", lambda s, lay: (s & ~0xFFFF_FFFF)
                              | (lay.h["read_count"] + 1)), "read index slot"),
    ("dirty slot", _slot("dirty", lambda s, lay: (s & ~0xFFFF_FFFF) | 1), "dirty index slot"),
    ("slot tag", _slot("read", lambda s, lay: s ^ (1 << 40)), "does not match entry"),
    ("entry hash", _entry("hash", lambda v, lay, b: v ^ 1), "stored hash does not match"),
    ("key utf-8", _key_byte, "UTF-8"),
    ("key replaced", _key_other, "stored hash does not match"),
    ("key off", _entry("key_off", lambda v, lay, b: lay.size), "key at offset"),
    ("key off below arena", _entry("key_off", lambda v, lay, b: lay.entries), "key at offset"),
    ("key len", _entry("key_len", lambda v, lay, b: 2**32 - 1), "runs past the arena"),
    ("key len short", _entry("key_len", lambda v, lay, b: 0), "truncated"),
    ("head outside", _entry("head", lambda v, lay, b: lay.arena_end + 8),
     "outside the arena"),
    ("head misaligned", _entry("head", lambda v, lay, b: v + 1), "outside the arena"),
    ("record len", _head_record("len", lambda v, at: 2**31), "runs past the arena"),
    ("record flags", _head_record("flags", lambda v, at: 2), "bad flags"),
    ("tombstone with bytes", _head_record("flags", lambda v, at: 1), "bad flags"),
    ("chain to itself", _head_record("prev", lambda v, at: at, versions=2),
     "chain goes forward"),
    ("chain forward", _head_record("prev", lambda v, at: at + 8, versions=2),
     "chain goes forward"),
    ("chain order", _head_record("seq", lambda v, at: 0, versions=2),
     "versions out of order"),
    ("value byte", _value_byte, "never used"),
    ("duplicate entry", _duplicate_entry, "its index does not lead to it"),
    ("unindexed entry", _unindexed, "its index does not lead to it"),
]


@pytest.mark.parametrize("what,mutate,why", KNOWN, ids=[k[0] for k in KNOWN])
def test_each_kind_of_corruption_is_refused_with_its_reason(
        sound: tuple[bytes, list[bytes]], what: str, mutate: Mutation, why: str) -> None:
    data, _ = sound
    b = bytearray(data)
    mutate(b, Layout(data))
    assert b != bytearray(data)
    rc, msg = validate(b)
    assert rc == lib.SHM_ECORRUPT, what
    assert why in msg, msg


def test_a_corrupt_segment_is_named_in_the_error(map_name: str,
                                                  sound: tuple[bytes, list[bytes]]) -> None:
    """Through Generation: header faults when it opens, body faults when it
    validates; both name the segment."""
    data, _ = sound
    for i, (what, mutate, why) in enumerate(KNOWN):
        b = bytearray(data)
        mutate(b, Layout(data))
        seg = segments.gen_name(map_name, 100 + i)
        mm = segments.create(seg, len(b), 0o600)
        try:
            mm[:] = bytes(b)
            with pytest.raises(CorruptSegmentError) as info:
                open_and_validate(seg, mm)
            assert seg in str(info.value) and why in str(info.value), (what, str(info.value))
        finally:
            segments.unlink(seg)


def test_a_reader_and_an_adopting_writer_refuse_a_corrupt_map(map_name: str) -> None:
    w = MapWriter(map_name)
    w.apply(batch_blob([(encode_key(i), encode_value(i)) for i in range(50)]))
    w.commit()
    gen = w.generation.gen
    w.close(remove=False)                       # the daemon died
    seg = segments.gen_name(map_name, gen)
    mm = segments.open_readwrite(seg)
    try:
        lay = Layout(mm)
        put64(mm, lay.entry(3, "hash"), u64(mm, lay.entry(3, "hash")) ^ 4)    # body fault
        with pytest.raises(CorruptSegmentError, match=f"{seg}: entry 3: stored hash"):
            MapWriter.adopt(map_name)
        r = MapReader(map_name)                 # readers do not validate the body
        try:
            assert r.lookup(10) == 10
        finally:
            r.close()
        put64(mm, HDR["magic"], 0)              # header fault
        with pytest.raises(CorruptSegmentError, match=f"{seg}: bad magic"):
            MapReader(map_name)
        with pytest.raises(CorruptSegmentError, match=seg):
            MapWriter.adopt(map_name)
        assert seg in segments.map_segments(map_name), "a refused map is left as it was"
    finally:
        mm.close()


def test_garbage_of_any_size_is_not_a_generation() -> None:
    rng = random.Random(1)
    for size in (0, 1, 8, HEADER_SIZE - 1, HEADER_SIZE, 4096, 65536):
        b = bytearray(rng.randbytes(size))
        err = ffi.new("char[]", ERR_LEN)
        assert lib.shm_gen_validate(ffi.from_buffer(b) if size else ffi.NULL, size, err,
                                    ERR_LEN) == lib.SHM_ECORRUPT
        assert ffi.string(err)
        view = ffi.new("struct shm_view *")
        assert lib.shm_view_open(view, ffi.from_buffer(b) if size else ffi.NULL, size,
                                 ffi.NULL, 0) == lib.SHM_ECORRUPT


# -- random corruption, read in a child process ----------------------------------

PLAUSIBLE = [0, 1, 2, 7, 8, 16, 24, 255, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1]


def corrupt(data: bytes, seed: int) -> bytearray:
    """A copy of data with a few bytes or words changed, mostly in the parts
    in use, often to values that look right (offsets, slot words, counts)."""
    rng = random.Random(seed)
    lay = Layout(data)
    b = bytearray(data)
    regions = lay.regions()
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        lo, hi = rng.choice(regions) if rng.random() < 0.9 else (0, len(b))
        if hi <= lo:
            continue
        at = rng.randrange(lo, hi)
        kind = rng.randrange(5)
        if kind == 0:
            b[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            b[at] = rng.randrange(256)
        else:
            at -= at % 8
            old = u64(b, at)
            if kind == 2:
                word = rng.choice(PLAUSIBLE + [old + rng.choice([-8, -1, 1, 8, 24])])
            elif kind == 3:         # an offset somewhere in the segment
                word = rng.choice([lay.arena, lay.entries, lay.arena_end, lay.size]) + \
                    8 * rng.randrange(-4, 64)
            else:                   # a word from elsewhere: a real slot, offset, seq...
                word = u64(b, rng.randrange(0, len(b) - 8) & ~7)
            put64(b, at, word)
    return b


def _export_c(view: Any, snap: int, cap: int) -> list[tuple[bytes, bytes]]:
    """The whole export at snap, through small buffers; the raw bytes."""
    x = ffi.new("struct shm_export *")
    x.snap, x.max_items = snap, 16
    out: list[tuple[bytes, bytes]] = []
    kb, vb = ffi.new("uint8_t[]", cap), ffi.new("uint8_t[]", cap)
    x.keys, x.keys_cap, x.values, x.values_cap = kb, cap, vb, cap
    while True:
        rc = lib.shm_export_batch(view, x)
        if rc == lib.SHM_EBUFSMALL:
            assert x.need > cap
            cap = int(x.need)
            kb, vb = ffi.new("uint8_t[]", cap), ffi.new("uint8_t[]", cap)
            x.keys, x.keys_cap, x.values, x.values_cap = kb, cap, vb, cap
            continue
        assert rc in (0, 1), rc
        assert x.keys_len <= cap and x.values_len <= cap
        out.append((bytes(ffi.buffer(kb, x.keys_len)), bytes(ffi.buffer(vb, x.values_len))))
        if rc == 1:
            return out


def read_corrupted(data: bytes, keys: list[bytes], first_seed: int, rounds: int,
                   out: Any) -> None:
    """In a child: for each corruption, validate; if the header opens, look
    every key up and export everything, in C and through Generation; if the
    whole segment validated, the export and the lookups must agree."""
    stats = {"rounds": 0, "rejected": 0, "opened": 0, "accepted": 0, "python_errors": 0}
    failures: list[str] = []
    rejected_seeds: list[int] = []
    err = ffi.new("char[]", ERR_LEN)
    for seed in range(first_seed, first_seed + rounds):
        b = corrupt(data, seed)
        buf = ffi.from_buffer(b)
        rc = lib.shm_gen_validate(buf, len(b), err, ERR_LEN)
        stats["rounds"] += 1
        if rc not in (0, lib.SHM_ECORRUPT) or (rc and not ffi.string(err)):
            failures.append(f"seed {seed}: validate returned {rc} without a reason")
        if rc:
            stats["rejected"] += 1
            rejected_seeds.append(seed)
        else:
            stats["accepted"] += 1
        view = ffi.new("struct shm_view *")
        if lib.shm_view_open(view, buf, len(b), ffi.NULL, 0) != 0:
            if rc == 0:
                failures.append(f"seed {seed}: validated, but its header does not open")
            continue
        stats["opened"] += 1
        snap = int(lib.shm_snapshot(view))
        found = {}
        for k in keys:
            for s in (snap, LATEST):
                packed = lib.shm_lookup_at(view, k, len(k), s)
                if packed >= 0 and s == snap:
                    found[k] = packed
        lib.shm_lookup_int(view, 5)
        lib.shm_lookup(view, b"\xa1x", 2)
        exported = _export_c(view, snap, 16)
        _export_c(view, LATEST, 1 << 16)
        try:
            g = Generation(f"/corrupt-{seed}", b)           # the Python layer, on a copy
            pairs = list(g.items(snap))
            for packed in found.values():
                g.value_at(packed)
        except Exception as exc:                            # garbage may not decode
            stats["python_errors"] += 1
            if rc == 0:
                failures.append(f"seed {seed}: validated, but reading it raised {exc!r}")
            continue
        if rc == 0:
            # Sound by validation: the export has no key twice, and each key
            # it has is found by lookup with the same value.
            raw_keys = [k for kb, _ in exported for k in _split(kb)]
            if len(set(raw_keys)) != len(raw_keys) or len(pairs) != len(raw_keys):
                failures.append(f"seed {seed}: export has {len(raw_keys)} keys, "
                                f"{len(set(raw_keys))} distinct, {len(pairs)} decoded")
            for (k, v) in pairs:
                kb = encode_key(k)
                packed = lib.shm_lookup_at(view, kb, len(kb), snap)
                if packed < 0 or repr(g.value_at(packed)) != repr(v):     # NaN-proof
                    failures.append(f"seed {seed}: key {k!r} exported, lookup disagrees")
                    break
    out.put((stats, failures[:20], rejected_seeds[:60]))


def _split(keys_batch: bytes) -> list[bytes]:
    """The encoded keys in one export batch (an array32 of them)."""
    import msgpack
    items = msgpack.unpackb(keys_batch, use_list=False, raw=False)
    return [encode_key(k) for k in items]


def test_random_corruption_is_refused_and_never_crashes_a_reader(
        map_name: str, sound: tuple[bytes, list[bytes]]) -> None:
    data, keys = sound
    out = CTX.Queue()
    children = [CTX.Process(target=read_corrupted, args=(data, keys, 1 + i * ROUNDS, ROUNDS, out))
                for i in range(CHILDREN)]
    results = []
    try:
        for c in children:
            c.start()
        for _ in children:
            try:
                results.append(out.get(timeout=CHILD_TIMEOUT))
            except queue.Empty:
                codes = [c.exitcode for c in children]
                pytest.fail(f"a reading child gave no result: exit codes {codes} (a negative "
                            "one is the signal that killed it)")
        for c in children:
            c.join(CHILD_TIMEOUT)
            assert c.exitcode == 0, f"reading corrupted segments crashed: exit {c.exitcode}"
    finally:
        for c in children:
            if c.is_alive():
                c.kill()
                c.join()
    failures = [f for _, fs, _ in results for f in fs]
    assert not failures, failures
    stats = {k: sum(st[k] for st, _, _ in results) for k in results[0][0]}
    rejected = [seed for _, _, seeds in results for seed in seeds]
    # It did the work: most corruptions are caught, many still open (and were
    # read), some are harmless (unused bytes, or a value changed to another).
    total = CHILDREN * ROUNDS
    assert stats["rounds"] == total
    assert stats["rejected"] > total // 3, stats
    assert stats["opened"] > total // 2, stats
    assert stats["accepted"] > total // 50, stats

    # The refused ones, as real segments: the error names the segment.
    for i, seed in enumerate(rejected[:25]):
        seg = segments.gen_name(map_name, 1000 + i)
        b = corrupt(data, seed)
        mm = segments.create(seg, len(b), 0o600)
        try:
            mm[:] = bytes(b)
            with pytest.raises(CorruptSegmentError, match=seg):
                open_and_validate(seg, mm)
        finally:
            segments.unlink(seg)
