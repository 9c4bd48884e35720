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

# A Packer keeps the bytes of the object it is packing in its own buffer,
# and packing can run Python code halfway through (a dict subclass's
# items(), a list subclass's __iter__), where the GIL may pass to another
# thread. So a Packer must never serve two packs at once: each pack takes
# one from the idle ones for itself and gives it back when done. list.pop()
# and list.append() are atomic under the GIL, so no two packs ever hold the
# same Packer, even when one runs inside another on the same thread. There
# are as many as packs were ever in progress at once (the threads that
# write). A pack that raises leaves its Packer to the garbage collector (a
# new one is made when none is idle), so nothing needs a finally; only
# encode_pair, which handles the TypeError itself, gives its Packer back
# (a Packer empties its buffer after an error).
_idle: list[msgpack.Packer] = []
_take = _idle.pop
_give = _idle.append


def _packer() -> msgpack.Packer:
    """A Packer no pack is using."""
    try:
        return _take()
    except IndexError:
        return msgpack.Packer(use_bin_type=True, autoreset=True)


def _pack(obj: Any) -> bytes:
    """obj as msgpack."""
    packer = _packer()
    data = packer.pack(obj)
    _give(packer)
    return data


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
            packer = _take()            # _packer(), inline: the hottest write
        except IndexError:
            packer = _packer()
        try:
            pair = packer.pack(key) + packer.pack(value)
        except (TypeError, ValueError, OverflowError):
            _give(packer)       # encode_key and encode_value say what is wrong
        else:
            _give(packer)
            return pair
    return encode_key(key) + encode_value(value)


def decode_value(data: Any) -> Any:
    """The value encoded in data (lists as lists, any map key allowed)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
