"""How Redis' keys and values look in the map, and back.

A key is the Redis key's name: a ``str`` when it is UTF-8, else ``bytes``.
A Redis string is a value (its bytes, or decoded with ``--decode``); a
Redis hash is a ``dict`` of its fields, each named like a key and valued
like a string. Writing takes the same shapes back: a ``dict`` becomes a
hash, anything else a string."""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

import msgpack

from ...shared.errors import InvalidRequestError

DECODINGS = ("utf8", "json", "msgpack")


def key_name(raw: bytes) -> "str | bytes":
    """A Redis key (or hash field) name as the map holds it."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def redis_name(key: Any, what: str = "key") -> bytes:
    """The Redis name of a map key (or a hash field); InvalidRequestError
    for a key Redis cannot name."""
    if type(key) is str:
        return key.encode()
    if type(key) is bytes:
        return key
    raise InvalidRequestError(f"a {what} of a map served from Redis is str or bytes, "
                              f"not {type(key).__name__}")


class Values:
    """Turns Redis strings into the map's values and back, by --decode
    (None: the bytes as they are)."""

    def __init__(self, decode: Optional[str]) -> None:
        if decode is not None and decode not in DECODINGS:
            raise ValueError(f"--decode {decode!r}: one of {', '.join(DECODINGS)}")
        self.decode = decode
        loads: dict[Optional[str], Callable[[bytes], Any]] = {
            None: bytes, "utf8": bytes.decode, "json": json.loads,
            "msgpack": lambda raw: msgpack.unpackb(raw, raw=False, strict_map_key=False)}
        self._loads = loads[decode]

    def load(self, raw: bytes) -> Any:
        """A Redis string's value; ValueError if --decode cannot read it."""
        return self._loads(raw)

    def load_hash(self, fields: dict[bytes, bytes]) -> dict[Any, Any]:
        return {key_name(f): self.load(v) for f, v in fields.items()}

    def dump(self, value: Any) -> bytes:
        """The Redis string of a value written to the map;
        InvalidRequestError if --decode cannot write it."""
        d = self.decode
        try:
            if d is None:
                if type(value) is bytes:
                    return value
                raise TypeError(f"a {type(value).__name__}: without --decode a value is "
                                "bytes or a dict (a hash)")
            if d == "utf8":
                if type(value) is str:
                    return value.encode()
                raise TypeError(f"a {type(value).__name__}: with --decode utf8 a value is "
                                "str or a dict (a hash)")
            if d == "json":
                return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                                  allow_nan=False).encode()
            return msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidRequestError(f"value cannot be written to Redis: {exc}") from None

    def dump_hash(self, value: dict[Any, Any]) -> list[bytes]:
        """HSET's field-value arguments of a dict; InvalidRequestError for
        an empty one (Redis has no empty hash)."""
        if not value:
            raise InvalidRequestError("an empty dict cannot be written: Redis has no empty "
                                      "hash (delete the key instead)")
        out: list[bytes] = []
        for f, v in value.items():
            out += (redis_name(f, "hash field"), self.dump(v))
        return out
