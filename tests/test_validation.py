"""Keys and values as bytes: the canonical key encoding, and the checks the
daemon makes on everything a client sends before it stores it."""
from __future__ import annotations

import enum

import msgpack
import pytest

from shmmap._core import ffi, lib
from shmmap.client.reader import MapReader
from shmmap.server.writer import MapWriter
from shmmap.shared.codec import decode_key, encode_key, encode_value
from shmmap.shared.config import Limits
from shmmap.shared.errors import InvalidRequestError, LimitError
from shmmap.shared.protocol import batch_blob


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize("key", [0, -1, 127, 128, -33, 2**63, 2**64 - 1, -2**63, "", "é",
                                 "x" * 40, "y" * 300, b"", b"\x00" * 300, (), (1, "a", b"b"),
                                 ((1,), ("x", (2,))), tuple(range(20))])
def test_keys_round_trip_in_canonical_form(key: object) -> None:
    kb = encode_key(key)
    assert decode_key(kb) == key
    assert lib.shm_check_key(kb, len(kb), ffi.NULL, 0) == 0


def test_bool_and_int_subclasses_are_their_int() -> None:
    assert encode_key(True) == encode_key(1)
    assert encode_key(Color.RED) == encode_key(1)
    assert encode_key((False, "a")) == encode_key((0, "a"))


@pytest.mark.parametrize("key", [1.5, None, [1], {"a": 1}, bytearray(b"x"), {1}, 2**64,
                                 -2**63 - 1, (1, [2]), (1.0,)])
def test_other_keys_raise_type_error(key: object) -> None:
    with pytest.raises(TypeError):
        encode_key(key)


def _key_error(kb: bytes) -> str:
    err = ffi.new("char[]", 256)
    assert lib.shm_check_key(kb, len(kb), err, 256) == lib.SHM_EKEY
    return ffi.string(err).decode()


@pytest.mark.parametrize("kb", [
    b"\xcc\x05",                       # 5 as uint8
    b"\xcd\x00\x80",                   # 128 as uint16
    b"\xd0\x05",                       # 5 as int8
    b"\xd0\xf0",                       # -16 as int8 (fixint)
    b"\xd1\xff\x80",                   # -128 as int16
    b"\xd9\x01a",                      # "a" as str8
    b"\xc5\x00\x01a",                  # b"a" as bin16
    b"\xdc\x00\x03\x01\x02\x03",       # 3 elements as array16
])
def test_non_canonical_keys_are_rejected(kb: bytes) -> None:
    assert "canonical" in _key_error(kb)


@pytest.mark.parametrize("kb,why", [
    (b"\xa2\xff\xfe", "UTF-8"), (b"\xa3\xed\xa0\x80", "UTF-8"), (b"\x01\x02", "after"),
    (b"\xc0", "not None"), (b"\xcb" + bytes(8), "float"), (b"\x81\x01\x02", "dict"),
    (b"\xa5ab", "truncated"), (b"\xc1", "never used"), (b"", "truncated"),
])
def test_bad_keys_say_why(kb: bytes, why: str) -> None:
    assert why in _key_error(kb)


@pytest.mark.parametrize("vb,why", [
    (b"\x92\x01", "truncated"), (b"\xc1", "never used"), (b"\xa2\xc3\x28", "UTF-8"),
    (b"\x91" * 40 + b"\x00", "nested"), (b"\x81\x91\x01\x02", "scalar"),
    (b"\xc7\x05\xff" + bytes(5), "timestamp"), (b"\xd7\xff" + b"\xff" * 8, "nanoseconds"),
    (b"\xd4\x80\x00", "reserved"), (b"\x01\x01", "after"),
])
def test_bad_values_are_rejected(vb: bytes, why: str) -> None:
    err = ffi.new("char[]", 256)
    assert lib.shm_check_value(vb, len(vb), err, 256) == lib.SHM_EVALUE
    assert why in ffi.string(err).decode()


def test_values_msgpack_python_writes_are_accepted() -> None:
    for v in [None, True, 1.5, -7, "s", b"b", [1, [2]], {"a": {"b": None}}, {1: 2},
              msgpack.Timestamp(5, 7), msgpack.ExtType(5, b"x"), list(range(100))]:
        vb = encode_value(v)
        assert lib.shm_check_value(vb, len(vb), ffi.NULL, 0) == 0, v


def test_writer_rejects_bad_batches_whole(map_name: str) -> None:
    w = MapWriter(map_name, limits=Limits(max_key=64, max_value=100))
    r = None
    try:
        w.apply(batch_blob([(encode_key("a"), encode_value(1))]))
        w.commit()
        good = (encode_key("b"), encode_value(2))
        with pytest.raises(InvalidRequestError, match="item 1: .*canonical"):
            w.apply(batch_blob([good, (b"\xcc\x05", encode_value(3))]))
        with pytest.raises(LimitError, match="item 1: value of 201 bytes"):
            w.apply(batch_blob([good, (encode_key("c"), encode_value(b"x" * 199))]))
        with pytest.raises(LimitError, match="key of"):
            w.apply(batch_blob([(encode_key("k" * 70), encode_value(1))]))
        with pytest.raises(InvalidRequestError, match="unknown operation"):
            w.apply(b"\x07" + encode_key("z"))
        w.commit()
        r = MapReader(map_name)
        assert dict(r.items()) == {"a": 1}
    finally:
        if r is not None:
            r.close()
        w.close()
