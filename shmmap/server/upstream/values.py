"""How Redis' keys and values look in the map, and back.

A key is the Redis key's name: a ``str`` when it is UTF-8, else ``bytes``.
A Redis string is a value (its bytes, or decoded with ``--decode``); a
Redis hash is a ``dict`` of its fields, each named like a key and valued
like a string. Writing takes the same shapes back, and keeps a key's
type: a ``dict`` written to a hash replaces the hash; to any other key it
is a string when --decode can write one (json, msgpack), else a hash;
anything else is a string."""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

import msgpack

from ...shared.errors import InvalidRequestError
from .base import Fetched

DECODINGS = ("utf8", "json", "msgpack")
ABSENT: Any = object()      # Values.view of a key Redis does not hold


# Stores a dict as STORE_DICT_ARGS made its arguments, keeping a hash a
# hash: ARGV[1] is '1' when ARGV[2] is the dict as a string; field-value
# pairs follow from ARGV[3] (HSET in slices: Lua's unpack() has a limit).
STORE_DICT_SCRIPT = """
local t = redis.call('TYPE', KEYS[1])['ok']
if ARGV[1] == '1' and (t ~= 'hash' or #ARGV == 2) then
  redis.call('SET', KEYS[1], ARGV[2])
  return 'string'
end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 'hash'
"""


class Unheld(ValueError):
    """A key of a type the map does not hold (a list, a set...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"it holds a {kind}, which the map does not")
        self.kind = kind


def key_name(raw: bytes) -> str | bytes:
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

    def view(self, f: Fetched) -> Any:
        """A fetched key's value as the map holds it, or ABSENT; Unheld for
        a type the map does not hold, ValueError if --decode cannot read
        it."""
        if f.kind == "none":
            return ABSENT
        if f.kind == "string":
            return self.load(f.value)
        if f.kind == "hash":
            return self.load_hash(f.value)
        raise Unheld(f.kind)

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

    def store_dict(self, name: bytes, value: dict[Any, Any]) -> tuple[Any, ...]:
        """The command that stores a dict at key name (STORE_DICT_SCRIPT);
        InvalidRequestError if it can be neither a string nor a hash."""
        as_string: Optional[bytes] = None
        if self.decode in ("json", "msgpack"):
            try:
                as_string = self.dump(value)
            except InvalidRequestError:
                pass                # bytes field names, say: a hash only
        fields: list[bytes] = []
        for f, v in value.items():
            fields += (redis_name(f, "hash field"), self.dump(v))
        if as_string is None and not fields:
            raise InvalidRequestError("an empty dict cannot be written: Redis has no empty "
                                      "hash (delete the key instead)")
        return ("EVAL", STORE_DICT_SCRIPT, 1, name, b"1" if as_string is not None else b"0",
                as_string or b"", *fields)
