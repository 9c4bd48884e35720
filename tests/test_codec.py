"""Keys and values as bytes: the canonical key encoding (shmmap.shared.codec
and the C core's check of it), the checks the daemon makes on every key
and value before it stores them, and a writer that rejects a bad batch
whole.

The safety property behind the checks: whatever shm_check_value accepts,
every reader can decode; whatever shm_check_key accepts is the one
encoding encode_key gives that key (keys are hashed and compared as bytes).
"""
from __future__ import annotations

import enum
import random
import struct
from typing import Any, Optional

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmmap._core import ffi, lib
from shmmap.client.reader import MapReader
from shmmap.server.writer import MapWriter
from shmmap.shared.codec import decode_key, decode_value, encode_key, encode_pair, encode_value
from shmmap.shared.config import Limits
from shmmap.shared.errors import InvalidRequestError, LimitError, MapFullError
from shmmap.shared.protocol import DELETE, STORE, batch_blob

ERR_LEN = 256
MAX_DEPTH = lib.SHM_MAX_DEPTH


def check_key(kb: bytes) -> tuple[int, str]:
    err = ffi.new("char[]", ERR_LEN)
    rc = lib.shm_check_key(kb, len(kb), err, ERR_LEN)
    return rc, ffi.string(err).decode(errors="replace") if rc else ""


def check_value(vb: bytes) -> tuple[int, str]:
    err = ffi.new("char[]", ERR_LEN)
    rc = lib.shm_check_value(vb, len(vb), err, ERR_LEN)
    return rc, ffi.string(err).decode(errors="replace") if rc else ""


def nested_list(depth: int, leaf: Any = 0) -> Any:
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


def nested_tuple(depth: int, leaf: Any = 0) -> Any:
    v = leaf
    for _ in range(depth):
        v = (v,)
    return v


# -- encode_key: which Python objects are keys ------------------------------

class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


INT_BOUNDARIES = sorted({s * (2**n) + d for n in range(64) for s in (1, -1) for d in (-1, 0, 1)
                         if -2**63 <= s * (2**n) + d <= 2**64 - 1}
                        | {0, 2**64 - 1, 2**64 - 2, -2**63, -32, -33, 127, 128})

ACCEPTED_KEYS = [
    0, 1, -1, 127, 128, 255, 256, -32, -33, -128, -129, 2**31, -2**31 - 1, 2**63 - 1, 2**63,
    2**64 - 1, -2**63, "", "a", "é", "€uro", "\U0001F600", "x" * 31, "x" * 32, "y" * 255,
    "y" * 256, "z" * 70_000, b"", b"\x00", b"\xff" * 255, b"\x00" * 256, b"b" * 70_000, (),
    (1,), (1, "a", b"b"), ((1,), ("x", (2,))), tuple(range(15)), tuple(range(16)),
    tuple(range(70_000)), nested_tuple(MAX_DEPTH),
]


@pytest.mark.parametrize("key", ACCEPTED_KEYS, ids=lambda k: repr(k)[:30])
def test_keys_encode_canonically_and_round_trip(key: Any) -> None:
    kb = encode_key(key)
    assert decode_key(kb) == key
    assert type(decode_key(kb)) is type(key)
    assert check_key(kb) == (0, "")
    # The canonical form is msgpack-python's own, with bin for bytes.
    assert kb == msgpack.packb(key, use_bin_type=True)


def test_int_subclasses_and_bools_are_their_int() -> None:
    assert encode_key(True) == encode_key(1) == encode_key(Color.RED)
    assert encode_key(False) == encode_key(0)
    assert encode_key((False, "a", (True,))) == encode_key((0, "a", (1,)))
    assert decode_key(encode_key(True)) == 1 and type(decode_key(encode_key(True))) is int
    assert encode_key(Name("n")) == encode_key("n")


@pytest.mark.parametrize("key", [
    1.5, 0.0, float("nan"), None, [1], [], {"a": 1}, {}, {1}, frozenset(), bytearray(b"x"),
    memoryview(b"x"), 2**64, 2**100, -2**63 - 1, -2**80, (1, [2]), (1.0,), (None,),
    ("a", {"b": 1}), (1, 2**64), ((-2**63 - 1,),), (bytearray(b"x"),), object(), 1j,
], ids=lambda k: type(k).__name__ + ":" + repr(k)[:20])
def test_other_keys_raise_type_error(key: Any) -> None:
    with pytest.raises(TypeError):
        encode_key(key)


@pytest.mark.parametrize("key", ACCEPTED_KEYS[:30] + [True, Color.RED, Name("n"), (True, "a")],
                         ids=lambda k: repr(k)[:30])
def test_a_store_pair_is_the_key_then_the_value(key: Any) -> None:
    for value in (1, None, "v", b"\x00" * 300, [1, {"a": 2.5}]):
        assert encode_pair(key, value) == encode_key(key) + encode_value(value)


@pytest.mark.parametrize("key, value, says", [
    (1.5, 1, "keys must be"),
    (2**64, 1, "does not fit in 64 bits"),
    ("k", object(), "value cannot be encoded as msgpack"),
    (7, 2**64, "value cannot be encoded as msgpack"),
    (b"k", 1j, "value cannot be encoded as msgpack"),
])
def test_a_bad_store_pair_raises_what_its_part_does(key: Any, value: Any, says: str) -> None:
    with pytest.raises(TypeError, match=says):
        encode_pair(key, value)


# -- shm_check_key: the canonical form, byte by byte -------------------------

NON_CANONICAL_KEYS = [
    (b"\xcc\x05", "5 as uint8"),
    (b"\xcc\x7f", "127 as uint8"),
    (b"\xcd\x00\x80", "128 as uint16"),
    (b"\xcd\x00\xff", "255 as uint16"),
    (b"\xce\x00\x00\xff\xff", "65535 as uint32"),
    (b"\xcf\x00\x00\x00\x00\xff\xff\xff\xff", "2**32-1 as uint64"),
    (b"\xd0\x05", "5 as int8"),
    (b"\xd0\xf0", "-16 as int8"),
    (b"\xd0\xe0", "-32 as int8"),
    (b"\xd1\xff\x80", "-128 as int16"),
    (b"\xd1\x00\x05", "5 as int16"),
    (b"\xd2\xff\xff\x80\x00", "-32768 as int32"),
    (b"\xd3\xff\xff\xff\xff\x80\x00\x00\x00", "-2**31 as int64"),
    (b"\xd3\x00\x00\x00\x00\x00\x00\x00\x05", "5 as int64"),
    (b"\xd3\x7f\xff\xff\xff\xff\xff\xff\xff", "2**63-1 as int64"),
    (b"\xd9\x01a", "'a' as str8"),
    (b"\xd9\x1f" + b"a" * 31, "31 chars as str8"),
    (b"\xda\x00\x05hello", "'hello' as str16"),
    (b"\xda\x00\xff" + b"a" * 255, "255 chars as str16"),
    (b"\xdb\x00\x00\x00\x01a", "'a' as str32"),
    (b"\xc5\x00\x01a", "b'a' as bin16"),
    (b"\xc6\x00\x00\x00\x01a", "b'a' as bin32"),
    (b"\xdc\x00\x03\x01\x02\x03", "3 elements as array16"),
    (b"\xdc\x00\x00", "() as array16"),
    (b"\xdd\x00\x00\x00\x01\x01", "1 element as array32"),
    (b"\x92\x01\xcc\x05", "non-canonical int inside a tuple"),
    (b"\x91\xd9\x01a", "non-canonical str inside a tuple"),
    (b"\xa1a".replace(b"\xa1", b"\xd9\x01"), "str8 again, built differently"),
]


@pytest.mark.parametrize("kb,what", NON_CANONICAL_KEYS, ids=[w for _, w in NON_CANONICAL_KEYS])
def test_non_canonical_keys_are_rejected(kb: bytes, what: str) -> None:
    # Each decodes, to a key whose canonical form is other bytes.
    assert encode_key(decode_key(kb)) != kb
    rc, why = check_key(kb)
    assert rc == lib.SHM_EKEY and "canonical" in why, (what, why)


BAD_KEYS = [
    (b"", "truncated"),
    (b"\xa2\xff\xfe", "UTF-8"),              # not UTF-8 at all
    (b"\xa2\xc0\x80", "UTF-8"),              # overlong NUL
    (b"\xa3\xe0\x80\x80", "UTF-8"),          # overlong
    (b"\xa3\xed\xa0\x80", "UTF-8"),          # a surrogate
    (b"\xa4\xf4\x90\x80\x80", "UTF-8"),      # above U+10FFFF
    (b"\xa4\xf5\x80\x80\x80", "UTF-8"),
    (b"\xa1\x80", "UTF-8"),                  # lone continuation byte
    (b"\xa2\xe2\x82", "UTF-8"),              # cut-off sequence
    (b"\xa1\xe2", "UTF-8"),
    (b"\x91\xa1\xff", "UTF-8"),              # inside a tuple
    (b"\x01\x02", "after"),                  # trailing bytes
    (b"\xa1a\x00", "after"),
    (b"\x90\x90", "after"),
    (b"\xc0", "not None"),
    (b"\xc2", "bool"),
    (b"\xc3", "bool"),
    (b"\xcb" + bytes(8), "float"),
    (b"\xca" + bytes(4), "float"),
    (b"\x81\x01\x02", "dict"),
    (b"\x80", "dict"),
    (b"\xd4\x01\x00", "ext"),
    (b"\x91\xc0", "None"),                   # None inside a tuple
    (b"\xa5ab", "truncated"),
    (b"\xcd\x01", "truncated"),
    (b"\x93\x01\x02", "truncated"),
    (b"\xdc\xff\xff", "truncated"),
    (b"\xc4\x05ab", "truncated"),
    (b"\xc1", "never used"),
    (msgpack.packb(nested_tuple(MAX_DEPTH + 1)), "nested"),
    (msgpack.packb(nested_tuple(200)), "nested"),
]


@pytest.mark.parametrize("kb,why", BAD_KEYS, ids=[repr(k)[:24] for k, _ in BAD_KEYS])
def test_bad_keys_are_rejected_with_the_reason(kb: bytes, why: str) -> None:
    rc, msg = check_key(kb)
    assert rc == lib.SHM_EKEY
    assert why in msg, msg


def test_every_boundary_int_key_is_canonical_in_c_as_in_python() -> None:
    for k in INT_BOUNDARIES:
        kb = encode_key(k)
        assert check_key(kb) == (0, ""), k
        # Every longer form of the same int is refused.
        for fmt, code in (("B", 0xcc), ("H", 0xcd), ("I", 0xce), ("Q", 0xcf),
                          ("b", 0xd0), ("h", 0xd1), ("i", 0xd2), ("q", 0xd3)):
            try:
                other = bytes([code]) + struct.pack(">" + fmt, k)
            except struct.error:
                continue
            if other != kb:
                assert check_key(other)[0] == lib.SHM_EKEY, (k, other)


# -- shm_check_value ---------------------------------------------------------

BAD_VALUES = [
    (b"", "truncated"),
    (b"\x92\x01", "truncated"),
    (b"\xa5ab", "truncated"),
    (b"\xcb\x00", "truncated"),
    (b"\xdd\xff\xff\xff\xff", "truncated"),
    (b"\xdf\xff\xff\xff\xff", "truncated"),
    (b"\xc6\xff\xff\xff\xff", "truncated"),
    (b"\xc9\xff\xff\xff\xff\x05", "truncated"),
    (b"\x81\xa1a", "truncated"),                         # map without its value
    (b"\xc1", "never used"),
    (b"\x92\x01\xc1", "never used"),
    (b"\x81\xa1a\xc1", "never used"),
    (b"\xa2\xc3\x28", "UTF-8"),
    (b"\x91\xa3\xed\xa0\x80", "UTF-8"),                  # surrogate inside a list
    (b"\x81\xa2\xff\xfe\x01", "UTF-8"),                  # as a map key
    (msgpack.packb(nested_list(MAX_DEPTH + 1)), "nested"),
    (msgpack.packb(nested_list(100)), "nested"),
    (b"\x81\xa1a" * 60 + b"\x01", "nested"),             # maps nested in maps
    (b"\x81\x91\x01\x02", "hashable"),                     # array as a map key
    (b"\x81\x90\x02", "hashable"),                         # empty array as a map key
    (b"\x81\x80\x02", "hashable"),                         # map as a map key
    (b"\x82\x01\x02\x91\x01\x02", "hashable"),             # second key is an array
    (b"\xd4\x80\x00", "reserved"),                       # ext type -128
    (b"\xd5\xfe\x00\x00", "reserved"),                   # ext type -2
    (b"\xc7\x05\xff" + bytes(5), "timestamp"),           # timestamp of 5 bytes
    (b"\xd4\xff\x00", "timestamp"),                      # of 1 byte
    (b"\xd8\xff" + bytes(16), "timestamp"),              # of 16 bytes
    (b"\xd7\xff" + b"\xff" * 8, "nanoseconds"),          # 64-bit, ns >= 1e9
    (b"\xc7\x0c\xff" + struct.pack(">Iq", 10**9, 0), "nanoseconds"),    # 96-bit
    (b"\xc7\x0c\xff" + struct.pack(">Iq", 2**32 - 1, -1), "nanoseconds"),
    (b"\x01\x01", "after"),
    (b"\x90\xc0", "after"),
    # shmmap's own ext types (SHM_EXT_*): payloads its decoder would fail on
    (b"\xd4\x64\x01", "does not hold an array"),          # a tuple of 1
    (b"\xc7\x00\x64", "does not hold an array"),          # a tuple of nothing
    (b"\xd5\x64\x92\x01", "truncated"),                    # a tuple of a truncated array
    (b"\xc7\x03\x64\x91\x01\x02", "after its array"),
    (b"\xd5\x64\x91\xc1", "never used"),
    (b"\xc7\x04\x65\x91\xd4\x65\x90", "hashable, not a set"),    # a set in a set
    (b"\xc7\x03\x66\x91\x91\x01", "hashable, not a list"),         # a list in a frozenset
    (b"\x81\xc7\x01\x65\x90\x01", "hashable, not a set"),          # a set as a map key
    (b"\x81\xc7\x03\x64\x91\x91\x01\x01", "hashable, not a list"),  # a tuple holding a list
    (b"\xd6\x68" + bytes(4), "not a date"),                # ordinal 0
    (b"\xd6\x68" + (3652060).to_bytes(4, "big"), "not a date"),
    (b"\xc7\x0d\x67" + (1).to_bytes(4, "big") + (86_400_000_000).to_bytes(8, "big") + b"\x00",
     "not a datetime"),                                    # a day's microseconds
    (b"\xc7\x0d\x67" + (1).to_bytes(4, "big") + bytes(8) + b"\x02", "not a datetime"),
    (b"\xc7\x15\x67" + (1).to_bytes(4, "big") + bytes(9) + (86_400_000_000).to_bytes(8, "big"),
     "not a datetime"),                                    # an offset of a day
    (b"\xc7\x16\x67" + (1).to_bytes(4, "big") + bytes(17) + b"\xff", "not a datetime"),
    (b"\xc7\x03\x69abc", "not a Decimal"),
    (b"\xc7\x0f\x6a" + bytes(15), "not a UUID"),
    (b"\xc7\x11\x6a" + bytes(17), "not a UUID"),
    (b"\xc7\x00\x69", "not a Decimal"),
]
# Refused, though the decoder would not fail on them: forms the encoder
# never writes, and values a reader could not use.
STRICTER_THAN_THE_DECODER = [
    (b"\xd5\x68\x00\x01", "not a date"),                   # 2 bytes
    (b"\xc7\x0e\x67" + (1).to_bytes(4, "big") + bytes(8) + b"\x00\x00", "not a datetime"),
    (b"\xc7\x02\x69\x31\x2e", "not a Decimal"),             # "1."
    (b"\xc7\x02\x69\x2e\x31", "not a Decimal"),             # ".1"
    (b"\xc7\x03\x69\x31\x45\x35", "not a Decimal"),         # "1E5": str() signs it
    (b"\xc7\x04\x69sNaN", "signaling NaN"),               # compares raise
    (b"\xc7\x15\x691E+999999999999999999", "exponent"),
    (b"\xd4\x6b\x00", "reserved by shmmap"),               # ext type 107
    (b"\xd4\x7f\x00", "reserved by shmmap"),               # ext type 127
]


@pytest.mark.parametrize("vb,why", BAD_VALUES + STRICTER_THAN_THE_DECODER,
                         ids=[repr(v)[:24] for v, _ in BAD_VALUES + STRICTER_THAN_THE_DECODER])
def test_bad_values_are_rejected_with_the_reason(vb: bytes, why: str) -> None:
    rc, msg = check_value(vb)
    assert rc == lib.SHM_EVALUE
    assert why in msg, msg
    # The reasons are real: the decoder does not give these back either
    # (except trailing bytes, depth and unhashable map keys, which
    # msgpack-python would tolerate or fail on only later).
    if why not in ("after", "nested", "hashable") and (vb, why) not in STRICTER_THAN_THE_DECODER:
        with pytest.raises((ValueError, TypeError, ArithmeticError)):  # Decimal raises the last
            decode_value(vb)


GOOD_VALUES = [
    None, True, False, 0, -1, 2**64 - 1, -2**63, 1.5, float("inf"), -0.0, "", "s" * 40,
    "é€\U0001F600", b"", b"b" * 300, [], [1, [2, [3]]], {}, {"a": {"b": None}}, {1: 2},
    {None: 1, 1.5: 2, b"k": 3, True: 4}, msgpack.Timestamp(5, 7),
    msgpack.Timestamp(2**34 + 1, 999_999_999), msgpack.Timestamp(-1, 0),
    msgpack.ExtType(5, b"x"), msgpack.ExtType(99, b""), list(range(70_000)),
    {str(i): i for i in range(70_000)}, nested_list(MAX_DEPTH),
    [{"deep": nested_list(MAX_DEPTH - 2)}],
]


@pytest.mark.parametrize("value", GOOD_VALUES, ids=lambda v: repr(v)[:30])
def test_values_msgpack_python_writes_are_accepted(value: Any) -> None:
    vb = encode_value(value)
    assert check_value(vb) == (0, "")
    assert decode_value(vb) == value or value != value


def test_timestamp_of_four_bytes_is_always_valid() -> None:
    for secs in (0, 1, 2**32 - 1):
        vb = b"\xd6\xff" + secs.to_bytes(4, "big")
        assert check_value(vb) == (0, "")
        assert msgpack.unpackb(vb) == msgpack.Timestamp(secs, 0)


# Keys and values drawn from everything the codec allows.
keys = st.recursive(
    st.one_of(st.integers(-2**63, 2**64 - 1), st.text(), st.binary(), st.booleans()),
    lambda inner: st.lists(inner, max_size=5).map(tuple), max_leaves=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=False), st.text(), st.binary())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5),
    st.dictionaries(st.one_of(st.text(max_size=5), st.integers(-2**63, 2**64 - 1),
                              st.binary(max_size=3)),
                    inner, max_size=5)), max_leaves=20)


def _depth(x: Any) -> int:
    if isinstance(x, (list, tuple)):
        return 1 + max((_depth(e) for e in x), default=0)
    if isinstance(x, dict):
        return 1 + max((_depth(e) for e in x.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(keys)
def test_every_encoded_key_is_accepted_and_decodes_to_itself(key: Any) -> None:
    kb = encode_key(key)
    assert check_key(kb) == (0, "")
    assert decode_key(kb) == key


@settings(max_examples=300, deadline=None)
@given(values)
def test_every_encoded_value_is_accepted(value: Any) -> None:
    vb = encode_value(value)
    assert check_value(vb) == (0, "")
    assert decode_value(vb) == value


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        elif op == 2:
            b.insert(rng.randrange(len(b) + 1), rng.choice([0xc1, 0xd9, 0xcc, 0x91, 0x81,
                                                            0xff, 0xa1, 0xd6, 0xc7]))
        elif b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(keys.map(encode_key), values.map(encode_value), st.binary(max_size=40)),
       st.randoms(use_true_random=False))
def test_whatever_the_checks_accept_decodes(data: bytes, rng: random.Random) -> None:
    """Mutated and random bytes: an accepted value always decodes; an
    accepted key always decodes to a key whose encoding is those bytes."""
    for b in (data, _mutate(data, rng), _mutate(data, rng)):
        if check_value(b)[0] == 0:
            msgpack.unpackb(b, raw=False, strict_map_key=False)
        else:
            assert check_value(b)[0] == lib.SHM_EVALUE
        rc, why = check_key(b)
        if rc == 0:
            key = decode_key(b)
            assert encode_key(key) == b
            assert check_value(b)[0] == 0, "a key is also a value"
        else:
            assert rc == lib.SHM_EKEY and why


def test_deep_keys_and_values_stop_at_the_limit() -> None:
    assert check_key(encode_key(nested_tuple(MAX_DEPTH)))[0] == 0
    assert check_key(encode_key(nested_tuple(MAX_DEPTH + 1)))[0] == lib.SHM_EKEY
    assert check_value(encode_value(nested_list(MAX_DEPTH)))[0] == 0
    assert check_value(msgpack.packb(nested_list(MAX_DEPTH + 1)))[0] == lib.SHM_EVALUE
    with pytest.raises(TypeError, match=f"nested deeper than {MAX_DEPTH} levels"):
        encode_value(nested_list(MAX_DEPTH + 1))       # refused before it is sent
    assert _depth(nested_list(MAX_DEPTH)) == MAX_DEPTH


# -- the int fast path of lookups: C's encoding of an int64 -------------------

def test_int_lookups_from_c_find_what_python_encoded(map_name: str) -> None:
    """MapReader.lookup encodes int64 keys in C (shm_lookup_int); the keys
    were stored as Python encoded them. Every boundary of every msgpack int
    form must give the same bytes, or the key is not found."""
    rng = random.Random(5)
    stored = [0, 1] + INT_BOUNDARIES[::2] + [rng.randrange(-2**63, 2**64) for _ in range(300)]
    absent = [k for k in INT_BOUNDARIES[1::2] if k not in set(stored)]
    assert len(absent) > 100
    w = MapWriter(map_name)
    r: Optional[MapReader] = None
    try:
        w.apply(batch_blob((encode_key(k), encode_value(str(k))) for k in stored))
        w.commit()
        r = MapReader(map_name)
        for k in stored:
            assert r.lookup(k) == str(k), k
        for k in absent:
            assert r.lookup(k, "absent") == "absent", k
        w.promote()                     # now from the read table
        for k in stored:
            assert r.lookup(k) == str(k), k
            gen = r.generation
            assert gen.lookup_raw(encode_key(k), gen.snapshot()) == encode_value(str(k))
        assert r.lookup(True) == "1" and r.lookup(False) == "0" and r.lookup(Color.RED) == "1"
        with pytest.raises(TypeError):
            r.lookup(2**64)
        with pytest.raises(TypeError):
            r.lookup(-2**63 - 1)
        with pytest.raises(TypeError):
            r.lookup(1.0)
    finally:
        if r is not None:
            r.close()
        w.close()


# -- a writer rejects a bad batch whole ---------------------------------------

SMALL = Limits(max_key=64, max_value=100)


def _state(w: MapWriter) -> tuple[int, ...]:
    h = w.generation.header
    return (w.seq, w.generation.gen, int(h.committed_seq), int(h.dirty_count),
            int(h.arena_used), int(h.live_count), int(h.live_bytes),
            int(w.generation.view.live_count), int(w.generation.view.live_bytes))


def _good(i: int) -> tuple[bytes, bytes]:
    return encode_key(("good", i)), encode_value(i)


BAD_BATCHES = [
    # (blob, exception, message fragment)
    (batch_blob([_good(0), _good(1)]) + b"\x07" + encode_key("z"), InvalidRequestError,
     "item 2: unknown operation byte 0x07"),
    (batch_blob([_good(0)]) + b"\x05", InvalidRequestError, "item 1: unknown operation"),
    (batch_blob([_good(0)]) + STORE, InvalidRequestError, "item 1: truncated"),
    (batch_blob([_good(0)]) + DELETE, InvalidRequestError, "item 1: truncated"),
    (batch_blob([_good(0)]) + STORE + encode_key("k"), InvalidRequestError,
     "item 1: truncated"),
    (batch_blob([_good(0), (b"\xcc\x05", encode_value(3))]), InvalidRequestError,
     "item 1: key is not in canonical"),
    (batch_blob([_good(0), (b"\xd9\x01a", None)]), InvalidRequestError,
     "item 1: key is not in canonical"),
    (batch_blob([(b"\xcb" + bytes(8), encode_value(1))]), InvalidRequestError,
     "item 0: keys must be str, bytes, int or tuples of them, not a float"),
    (batch_blob([_good(0), (b"\xc0", encode_value(1))]), InvalidRequestError, "item 1: "),
    (batch_blob([_good(0), (b"\x91\xc2", encode_value(1))]), InvalidRequestError, "bool"),
    (batch_blob([_good(0), (encode_key("v"), b"\xc1")]), InvalidRequestError,
     "item 1: byte 0xc1"),
    (batch_blob([_good(0), (encode_key("v"), b"\xa2\xc3\x28")]), InvalidRequestError,
     "item 1: string at byte"),
    (batch_blob([_good(0), (encode_key("v"), b"\x81\x91\x01\x02")]), InvalidRequestError,
     "item 1: a map key or set element inside a value must be hashable"),
    (batch_blob([_good(0), (b"\xa2\xff\xfe", None)]), InvalidRequestError, "UTF-8"),
    (batch_blob([_good(i) for i in range(5)] + [(encode_key("v"), b"\x92\x01")]),
     InvalidRequestError, "item 5: truncated"),
    (batch_blob([_good(0), (encode_key("k" * 70), encode_value(1))]), LimitError,
     "item 1: encoded key of 72 bytes exceeds --max-key 64"),
    (batch_blob([_good(0), (encode_key("k" * 70), None)]), LimitError,
     "item 1: encoded key of 72 bytes"),
    (batch_blob([_good(0), (encode_key("c"), encode_value(b"x" * 99))]), LimitError,
     "item 1: encoded value of 101 bytes exceeds --max-value 100"),
]


@pytest.mark.parametrize("blob,exc,msg", BAD_BATCHES, ids=[m[:40] for _, _, m in BAD_BATCHES])
def test_a_bad_batch_raises_and_changes_nothing(map_name: str, blob: bytes, exc: type,
                                                msg: str) -> None:
    w = MapWriter(map_name, limits=SMALL)
    r: Optional[MapReader] = None
    try:
        w.apply(batch_blob([(encode_key("a"), encode_value(1)), (encode_key(("good", 0)),
                                                                 encode_value("old"))]))
        w.commit()
        w.apply(batch_blob([(encode_key("pending"), encode_value(2))]))   # not committed
        r = MapReader(map_name)
        before = _state(w)
        with pytest.raises(exc) as info:
            w.apply(blob)
        assert msg in str(info.value)
        assert _state(w) == before
        assert w.lookup_raw(encode_key(("good", 0))) == encode_value("old")
        assert w.lookup_raw(encode_key(("good", 1))) is None
        assert dict(r.items()) == {"a": 1, ("good", 0): "old"}
        w.generation.validate()
        # The writer carries on, with the next seq.
        assert w.apply(batch_blob([_good(7)])) == before[0] + 1
        w.commit()
        assert dict(r.items()) == {"a": 1, ("good", 0): "old", "pending": 2, ("good", 7): 7}
        w.generation.validate()
    finally:
        if r is not None:
            r.close()
        w.close()


def test_keys_and_values_at_exactly_the_limits_are_accepted(map_name: str) -> None:
    w = MapWriter(map_name, limits=SMALL)
    r: Optional[MapReader] = None
    try:
        key, value = "k" * 62, b"v" * 98          # 64 and 100 bytes encoded
        assert len(encode_key(key)) == 64 and len(encode_value(value)) == 100
        w.check_key(encode_key(key))
        w.check_value(encode_value(value))
        w.apply(batch_blob([(encode_key(key), encode_value(value))]))
        w.commit()
        r = MapReader(map_name)
        assert r.lookup(key) == value
        with pytest.raises(LimitError):
            w.check_key(encode_key(key + "k"))
        with pytest.raises(LimitError):
            w.check_value(encode_value(value + b"v"))
        with pytest.raises(InvalidRequestError, match="canonical"):
            w.check_key(b"\xcc\x05")
        with pytest.raises(InvalidRequestError, match="after"):
            w.check_value(b"\x01\x02")
    finally:
        if r is not None:
            r.close()
        w.close()


def test_default_limits_and_the_biggest_value(map_name: str) -> None:
    """The default value limit is 16 MiB; values of 2**24 - 1 bytes and more
    have a length that no longer fits the packed lookup result."""
    w = MapWriter(map_name)
    r: Optional[MapReader] = None
    try:
        limit = lib.SHM_DEFAULT_MAX_VALUE
        sizes = {"long-1": lib.SHM_FOUND_LEN_LONG - 1, "long": lib.SHM_FOUND_LEN_LONG,
                 "max": limit}
        for name, size in sizes.items():
            vb = b"\xc6" + (size - 5).to_bytes(4, "big") + bytes([len(name)]) * (size - 5)
            assert len(vb) == size
            w.apply(batch_blob([(encode_key(name), vb)]))
        w.commit()
        with pytest.raises(LimitError, match="value of 16777217 bytes"):
            w.apply(batch_blob([(encode_key("over"), b"\xc6" + (limit - 4).to_bytes(4, "big")
                                 + bytes(limit - 4))]))
        r = MapReader(map_name)
        for name, size in sizes.items():
            got = r.lookup(name)
            assert len(got) == size - 5 and got[:1] == got[-1:] == bytes([len(name)])
        items = dict(r.items())
        assert {k: len(v) for k, v in items.items()} == {k: s - 5 for k, s in sizes.items()}
        w.generation.validate()
    finally:
        if r is not None:
            r.close()
        w.close()


def test_the_live_bytes_limit_refuses_stores_and_changes_nothing(map_name: str) -> None:
    w = MapWriter(map_name, limits=Limits(max_live_bytes=1000))
    try:
        w.apply(batch_blob([(encode_key(i), encode_value(b"x" * 80)) for i in range(9)]))
        w.commit()
        before = _state(w)
        with pytest.raises(MapFullError):
            w.apply(batch_blob([(encode_key("more"), encode_value(b"y" * 300))]))
        assert _state(w) == before
        w.apply(batch_blob([(encode_key(i), None) for i in range(9)]))   # deletes pass
        w.commit()
        assert int(w.generation.header.live_count) == 0
    finally:
        w.close()
