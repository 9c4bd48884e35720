"""Encoding of keys and values as msgpack.

Keys are compared and hashed as bytes, so each has exactly one encoding:
msgpack-python's, with ``bin`` for bytes. Allowed keys are ``str``,
``bytes``, ``int`` (64-bit signed or unsigned) and tuples of those; a bool
key is its int, as in a dict. Values are anything msgpack encodes; arrays
in values decode as lists, tuples in keys as tuples.
"""
from __future__ import annotations

from typing import Any

import msgpack

Key = Any  # str | bytes | int | tuple of those
_KEY_HINT = "keys must be str, bytes, int or tuples of them"

# Packer.pack is not reentrant across threads in principle, but it runs
# without releasing the GIL (no default= callback), so one module instance
# serves every thread.
_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
_pack = _packer.pack


def _check_key(key: object) -> object:
    """Returns key with int/str subclasses (bool, IntEnum) made plain."""
    t = type(key)
    if t is int or t is str or t is bytes:
        return key
    if isinstance(key, tuple) and t is tuple:
        return tuple(_check_key(k) for k in key)
    if isinstance(key, int):
        return int(key)
    if isinstance(key, str):
        return str(key)
    if isinstance(key, bytes):
        return bytes(key)
    raise TypeError(f"{_KEY_HINT}, not {t.__name__}")


def encode_key(key: Key) -> bytes:
    """The canonical msgpack encoding of key; TypeError for other types."""
    t = type(key)
    if t is not str and t is not bytes and t is not int:
        key = _check_key(key)
    try:
        return _pack(key)
    except OverflowError:
        raise TypeError(f"int key {key!r} does not fit in 64 bits") from None


def decode_key(data: bytes) -> Key:
    """The key whose canonical encoding is data (a tuple key as a tuple)."""
    return msgpack.unpackb(data, use_list=False, raw=False)


def encode_value(value: Any) -> bytes:
    """The msgpack encoding of value; TypeError if msgpack cannot encode it."""
    try:
        return _pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"value cannot be encoded as msgpack: {exc}") from None


def encode_pair(key: Key, value: Any) -> bytes:
    """encode_key(key) + encode_value(value) in one call, as a store sends
    them: keys of the common types are canonical as they are, so they skip
    the checks."""
    t = type(key)
    if t is int or t is str or t is bytes:
        try:
            return _pack(key) + _pack(value)
        except (TypeError, ValueError, OverflowError):
            pass                # encode_key and encode_value say what is wrong
    return encode_key(key) + encode_value(value)


def decode_value(data: Any) -> Any:
    """The value encoded in data (lists as lists, any map key allowed)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
